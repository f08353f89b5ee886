//! The trust boundary behind the gateway: every internal port accepts only peers with a
//! certificate of the system's CA, and each peer only the RPCs the authorization table gives
//! its service. Tried as an attacker who reaches the internal ports would: no certificate, a
//! certificate of another CA, plaintext, and a valid certificate of the wrong service. Then the
//! certificates are replaced on disk during a stream of calls, and no call fails.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chatmesh_e2e::rid;
use chatmesh_proto::file_service_client::FileServiceClient;
use chatmesh_proto::friend_service_client::FriendServiceClient;
use chatmesh_proto::msg_storage_service_client::MsgStorageServiceClient;
use chatmesh_proto::msg_transmit_service_client::MsgTransmitServiceClient;
use chatmesh_proto::speech_service_client::SpeechServiceClient;
use chatmesh_proto::user_service_client::UserServiceClient;
use chatmesh_proto::*;
use support::certs::{ALL_SERVICES, TestCa, TlsFiles};
use support::{Backend, Stack};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const SERVICES: [&str; 6] = ["user", "friend", "file", "message", "transmit", "speech"];

/// How a call to an internal port ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The service ran it (its answer may still be a business error).
    Served,
    /// Refused with this gRPC code by the server.
    Refused(tonic::Code),
    /// No connection could be made (handshake refused).
    NoConnection,
}

/// A stack running `targets` whose processes use certificates of `ca`, one file set per stack;
/// `None` when the real backends are not configured.
async fn mesh_stack(backend: Backend, targets: &str, ca: &TestCa, dir: &std::path::Path) -> Option<(Stack, TlsFiles)> {
    let files = ca.write(dir, "mesh", &ALL_SERVICES);
    let flags = files.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let stack = Stack::start_parts(backend, targets, &flags).await?;
    Some((stack, files))
}

async fn connect(addr: &str, ca: &str, identity: Option<&(String, String)>, tls: bool) -> Option<Channel> {
    let endpoint = if tls {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
        if let Some((cert, key)) = identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        Endpoint::from_shared(addr.replace("http://", "https://")).unwrap().tls_config(config).unwrap()
    } else {
        Endpoint::from_shared(addr.to_string()).unwrap()
    };
    endpoint.connect_timeout(Duration::from_secs(3)).timeout(Duration::from_secs(5)).connect().await.ok()
}

/// One user-facing call, acting as `victim`, on `service`'s internal port.
async fn try_service(
    stack: &Stack,
    service: &str,
    ca: &str,
    identity: Option<&(String, String)>,
    tls: bool,
    victim: &str,
) -> Outcome {
    let Some(ch) = connect(&stack.internal_addr(service), ca, identity, tls).await else {
        return Outcome::NoConnection;
    };
    let user_id = Some(victim.to_string());
    let result = match service {
        "user" => UserServiceClient::new(ch)
            .get_user_info(GetUserInfoReq { request_id: rid(), user_id, ..Default::default() })
            .await
            .map(drop),
        "friend" => FriendServiceClient::new(ch)
            .get_friend_list(GetFriendListReq { request_id: rid(), user_id, ..Default::default() })
            .await
            .map(drop),
        "file" => FileServiceClient::new(ch)
            .get_single_file(GetSingleFileReq { request_id: rid(), file_id: "f".into(), user_id, ..Default::default() })
            .await
            .map(drop),
        "message" => MsgStorageServiceClient::new(ch)
            .get_recent_msg(GetRecentMsgReq {
                request_id: rid(),
                chat_session_id: "c".into(),
                msg_count: 5,
                user_id,
                ..Default::default()
            })
            .await
            .map(drop),
        "transmit" => MsgTransmitServiceClient::new(ch)
            .get_transmit_target(NewMessageReq {
                request_id: rid(),
                user_id,
                chat_session_id: "c".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "speech" => SpeechServiceClient::new(ch)
            .speech_recognition(SpeechRecognitionReq { request_id: rid(), user_id, ..Default::default() })
            .await
            .map(drop),
        other => unreachable!("{other}"),
    };
    match result {
        Ok(()) => Outcome::Served,
        // A handshake refused after the client finished its side (TLS 1.3) surfaces here.
        Err(status) => Outcome::Refused(status.code()),
    }
}

/// Turned away before any service code ran: no connection, or the connection torn down (the
/// client learns of a refused certificate only at its first request under TLS 1.3; plaintext
/// meets a TLS alert that HTTP/2 reports as a protocol error). Never served, never a table decision.
fn refused_at_handshake(outcome: &Outcome) -> bool {
    use tonic::Code::*;
    match outcome {
        Outcome::NoConnection => true,
        Outcome::Refused(code) => matches!(code, Unavailable | Unknown | Cancelled | Internal),
        Outcome::Served => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_ports_refuse_everyone_but_allowed_services() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("system CA");
    let (stack, _files) = mesh_stack(Backend::Standalone, "all", &ca, dir.path()).await.expect("stack");
    // Ordinary use works (inside this one process, calls do not cross the internal ports).
    let (_, session) = stack.user("victim").await;
    let victim = stack.client.user_info(&session).await.unwrap();
    let ca_pem = ca.pem();
    let stranger = TestCa::new("another CA");

    for service in SERVICES {
        let no_cert = try_service(&stack, service, &ca_pem, None, true, &victim.user_id).await;
        assert!(refused_at_handshake(&no_cert), "{service}: a client without a certificate: {no_cert:?}");
        let foreign = stranger.issue(&["gateway"]);
        let other_ca = try_service(&stack, service, &ca_pem, Some(&foreign), true, &victim.user_id).await;
        assert!(refused_at_handshake(&other_ca), "{service}: a gateway certificate of another CA: {other_ca:?}");
        let plaintext = try_service(&stack, service, &ca_pem, None, false, &victim.user_id).await;
        assert!(refused_at_handshake(&plaintext), "{service}: plaintext: {plaintext:?}");
        // A real certificate of this system, but of a service the table does not allow.
        let wrong = ca.issue(&[if service == "speech" { "user" } else { "speech" }]);
        let denied = try_service(&stack, service, &ca_pem, Some(&wrong), true, &victim.user_id).await;
        assert_eq!(denied, Outcome::Refused(tonic::Code::PermissionDenied), "{service}: the wrong service");
        let nobody = ca.issue(&[]);
        let anonymous = try_service(&stack, service, &ca_pem, Some(&nobody), true, &victim.user_id).await;
        assert_eq!(
            anonymous,
            Outcome::Refused(tonic::Code::PermissionDenied),
            "{service}: a certificate naming no service"
        );
        let gateway = ca.issue(&["gateway"]);
        let allowed = try_service(&stack, service, &ca_pem, Some(&gateway), true, &victim.user_id).await;
        assert_eq!(allowed, Outcome::Served, "{service}: the gateway");
    }

    // The account takeover of the report: set the victim's phone from inside the cluster.
    let transmit = ca.issue(&["transmit"]);
    let ch = connect(&stack.internal_addr("user"), &ca_pem, Some(&transmit), true).await.unwrap();
    let takeover = UserServiceClient::new(ch.clone())
        .set_user_phone_number(SetUserPhoneNumberReq {
            request_id: rid(),
            user_id: Some(victim.user_id.clone()),
            phone_number: "13800000000".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(takeover.unwrap_err().code(), tonic::Code::PermissionDenied);
    assert_eq!(stack.client.user_info(&session).await.unwrap().phone, victim.phone, "nothing changed");
    // What transmit may do, it can: profiles of senders.
    let profiles = UserServiceClient::new(ch)
        .get_multi_user_info(GetMultiUserInfoReq { request_id: rid(), users_id: vec![victim.user_id.clone()] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(profiles.users_info.len(), 1);

    // Only transmit may store a file readable by a chat session's members.
    let gateway = ca.issue(&["gateway"]);
    let ch = connect(&stack.internal_addr("file"), &ca_pem, Some(&gateway), true).await.unwrap();
    let put = PutSingleFileReq {
        request_id: rid(),
        user_id: Some(victim.user_id.clone()),
        file_data: Some(FileUploadData { file_name: "x.txt".into(), file_size: 1, file_content: b"x".to_vec() }),
        access: Some(FileAccess { chat_session_id: Some("someone-elses-chat".into()), public_read: false }),
        ..Default::default()
    };
    let granted = FileServiceClient::new(ch).put_single_file(put).await;
    assert_eq!(granted.unwrap_err().code(), tonic::Code::PermissionDenied);
    stack.stop().await;
}

/// Certificates replaced on disk (as a mounted Secret is updated) while calls stream through
/// the gateway to the services: every call succeeds, and new connections get the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_failing_calls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("system CA");
    // The gateway in a process of its own: within one process calls do not use connections.
    let services = "user,friend,file,message,transmit,speech";
    let Some((stack, files)) = mesh_stack(Backend::Real, services, &ca, dir.path()).await else { return };
    let (gateway, client) = stack.spawn("gateway").await;
    let nickname = format!("reload{}", &chatmesh_common::new_id()[..8]);
    client.register(&nickname, "pass_word-1").await.unwrap();
    let session = client.login(&nickname, "pass_word-1").await.unwrap();
    let client = Arc::new(client);
    let done = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (client, session, done, calls, failures) =
            (client.clone(), session.clone(), done.clone(), calls.clone(), failures.clone());
        callers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                // gateway -> user over mutual TLS on every call.
                if let Err(e) = client.user_info(&session).await {
                    eprintln!("call failed during reload: {e}");
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let served_before = served_certificate(&stack.internal_addr("user"), &ca).await;
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Renewed certificates from the same CA, written as kubelet does (the whole set).
        let (cert, key) = ca.issue(&ALL_SERVICES);
        std::fs::write(&files.key, key).unwrap();
        std::fs::write(&files.cert, cert.clone()).unwrap();
        let expected = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let mut picked_up = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if served_certificate(&stack.internal_addr("user"), &ca).await == expected.to_vec() {
                picked_up = true;
                break;
            }
        }
        assert!(picked_up, "round {round}: the new certificate is served");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    assert_ne!(served_before, served_certificate(&stack.internal_addr("user"), &ca).await);
    let (calls, failures) = (calls.load(Ordering::Relaxed), failures.load(Ordering::Relaxed));
    assert!(calls > 20, "the calls streamed ({calls})");
    assert_eq!(failures, 0, "{failures} of {calls} calls failed during certificate reloads");
    gateway.stop().await;
    stack.stop().await;
}

use rustls::pki_types::pem::PemObject;

/// Metrics and readiness detail stay off the public port unless asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_leave_the_public_port() {
    let get = |url: String| async move { reqwest::get(url).await.unwrap().status().as_u16() };
    let stack = Stack::start(Backend::Standalone).await.unwrap();
    assert_eq!(get(format!("{}/metrics", stack.http)).await, 404);
    assert_eq!(get(format!("{}/readyz", stack.http)).await, 404);
    assert_eq!(get(format!("{}/healthz", stack.http)).await, 200);
    stack.stop().await;
    let stack = Stack::start_with(Backend::Standalone, &["--public-metrics=true"]).await.unwrap();
    assert_eq!(get(format!("{}/metrics", stack.http)).await, 200);
    assert_eq!(get(format!("{}/readyz", stack.http)).await, 200);
    stack.stop().await;
}

/// The certificate the server at `addr` presents to a new connection (DER).
async fn served_certificate(addr: &str, ca: &TestCa) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap()).unwrap();
    let (cert, key) = ca.issue(&["gateway"]);
    let chain = vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let host = addr.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}
