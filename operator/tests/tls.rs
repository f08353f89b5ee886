//! The internal CA and service certificates (`src/tls.rs`): what is made, what is kept, and
//! when a certificate is renewed, with time passed in. No API server.

use std::collections::BTreeMap;
use std::time::Duration;

use chatmesh_operator::build::Component;
use chatmesh_operator::reconcile::requeue_after;
use chatmesh_operator::tls::{self, KeyedCert, TlsError};
use time::OffsetDateTime;
use x509_parser::pem::Pem;

const DAY: Duration = Duration::from_secs(86400);

fn parse(pem: &str) -> Vec<u8> {
    Pem::iter_from_buffer(pem.as_bytes()).next().unwrap().unwrap().contents
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn ca_data(ca: &KeyedCert) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        ("tls.crt".to_string(), ca.cert_pem.clone().into_bytes()),
        ("tls.key".to_string(), ca.key_pem.clone().into_bytes()),
    ])
}

/// Asserts `cert` is signed by `ca` and names `component` of demo in chat.
fn assert_service_cert(cert: &KeyedCert, ca: &KeyedCert, component: Component) {
    let der = parse(&cert.cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let ca_der = parse(&ca.cert_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key())).expect("signed by the CA");
    assert!(!cert.is_ca());
    let svc = component.name();
    let mut want = vec![
        format!("demo-{svc}"),
        format!("demo-{svc}.chat"),
        format!("demo-{svc}.chat.svc"),
        format!("demo-{svc}.chat.svc.cluster.local"),
        format!("spiffe://chatmesh.io/service/{svc}"),
    ];
    want.sort();
    assert_eq!(tls::names(&cert), want);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth, "{svc}: usable as client and server");
}

#[test]
fn a_first_pass_makes_a_ca_and_a_certificate_per_service() {
    let made = tls::ensure("demo", "chat", None, &BTreeMap::new(), 90 * DAY, now()).unwrap();
    assert!(made.created_ca);
    assert_eq!(made.issued.len(), 7);
    assert!(made.issued.iter().all(|(_, why)| *why == "missing"));
    let m = &made.material;
    assert_eq!(m.trusted_pem, m.ca.cert_pem);
    assert_eq!(m.services.len(), 7);
    for (component, cert) in &m.services {
        assert_service_cert(cert, &m.ca, *component);
    }
    // ECDSA P-256 keys, PKCS#8.
    assert!(m.services[&Component::User].key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let der = parse(&m.ca.cert_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(ca.is_ca());
    assert_eq!(ca.public_key().algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1");
    let ca_years = (ca.validity().not_after.to_datetime() - now()).whole_days() / 365;
    assert_eq!(ca_years, 10);
    // Renewal is due when a third of the lifetime is left.
    let user = &m.services[&Component::User];
    let der = parse(&user.cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(cert.validity().not_after.to_datetime(), now() + 90 * DAY);
    assert!(cert.validity().not_before.to_datetime() < now(), "backdated for clock skew");
    assert_eq!(made.next_renewal, now() + 60 * DAY);
}

#[test]
fn good_certificates_are_kept_and_due_ones_renewed_under_the_same_ca() {
    let first = tls::ensure("demo", "chat", None, &BTreeMap::new(), 90 * DAY, now()).unwrap().material;
    let ca = ca_data(&first.ca);

    // A day later nothing changes.
    let again = tls::ensure("demo", "chat", Some(("demo-internal-ca", &ca)), &first.services, 90 * DAY, now() + DAY);
    let again = again.unwrap();
    assert!(!again.created_ca);
    assert!(again.issued.is_empty());
    assert_eq!(again.material.ca, first.ca);
    assert_eq!(again.material.services, first.services);

    // Just before the renewal point: kept. Just after: all renewed, CA unchanged.
    let before = now() + 60 * DAY - Duration::from_secs(1);
    let kept = tls::ensure("demo", "chat", Some(("demo-internal-ca", &ca)), &first.services, 90 * DAY, before).unwrap();
    assert!(kept.issued.is_empty());
    let after = now() + 60 * DAY + Duration::from_secs(1);
    let renewed =
        tls::ensure("demo", "chat", Some(("demo-internal-ca", &ca)), &first.services, 90 * DAY, after).unwrap();
    assert_eq!(renewed.issued.len(), 7);
    assert!(renewed.issued.iter().all(|(_, why)| *why == "expiring"));
    assert_eq!(renewed.material.ca, first.ca);
    for (component, cert) in &renewed.material.services {
        assert_ne!(cert, &first.services[component]);
        assert_service_cert(cert, &first.ca, *component);
    }
    assert_eq!(renewed.next_renewal, after + 60 * DAY);
}

#[test]
fn bad_certificates_are_replaced() {
    let first = tls::ensure("demo", "chat", None, &BTreeMap::new(), 90 * DAY, now()).unwrap().material;
    let ca = ca_data(&first.ca);
    let other = tls::ensure("demo", "chat", None, &BTreeMap::new(), 90 * DAY, now()).unwrap().material;

    let mut current = first.services.clone();
    // Signed by another CA; a key that is not the certificate's; garbage; a certificate of
    // another service; missing.
    current.insert(Component::User, other.services[&Component::User].clone());
    current.get_mut(&Component::File).unwrap().key_pem = first.services[&Component::Friend].key_pem.clone();
    current.get_mut(&Component::Message).unwrap().cert_pem = "not a certificate".into();
    current.insert(Component::Speech, first.services[&Component::Gateway].clone());
    current.remove(&Component::Transmit);
    let fixed = tls::ensure("demo", "chat", Some(("demo-internal-ca", &ca)), &current, 90 * DAY, now()).unwrap();
    let reasons: BTreeMap<Component, &str> = fixed.issued.iter().copied().collect();
    assert_eq!(
        reasons,
        BTreeMap::from([
            (Component::User, "other CA"),
            (Component::File, "key mismatch"),
            (Component::Message, "unreadable"),
            (Component::Speech, "names changed"),
            (Component::Transmit, "missing"),
        ])
    );
    for (component, cert) in &fixed.material.services {
        assert_service_cert(cert, &first.ca, *component);
    }

    // A shorter lifetime replaces certificates that would outlive a new one.
    let shorter = tls::ensure("demo", "chat", Some(("demo-internal-ca", &ca)), &first.services, DAY, now()).unwrap();
    assert_eq!(shorter.issued.len(), 7);
    assert!(shorter.issued.iter().all(|(_, why)| *why == "lifetime shortened"));
}

#[test]
fn an_unusable_ca_is_an_error_never_a_new_ca() {
    let first = tls::ensure("demo", "chat", None, &BTreeMap::new(), 90 * DAY, now()).unwrap().material;
    let other = tls::ensure("demo", "chat", None, &BTreeMap::new(), 90 * DAY, now()).unwrap().material;
    let cases: Vec<(&str, BTreeMap<String, Vec<u8>>)> = vec![
        ("no key tls.key", BTreeMap::from([("tls.crt".into(), first.ca.cert_pem.clone().into_bytes())])),
        ("tls.key is not the key of tls.crt", {
            let mut d = ca_data(&first.ca);
            d.insert("tls.key".into(), other.ca.key_pem.clone().into_bytes());
            d
        }),
        ("not a CA certificate", {
            let leaf = &first.services[&Component::User];
            ca_data(leaf)
        }),
        ("ca.crt does not contain tls.crt", {
            let mut d = ca_data(&first.ca);
            d.insert("ca.crt".into(), other.ca.cert_pem.clone().into_bytes());
            d
        }),
        ("holds no PEM certificate", {
            let mut d = ca_data(&first.ca);
            d.insert("tls.crt".into(), b"junk".to_vec());
            d
        }),
    ];
    for (want, data) in cases {
        let err = tls::ensure("demo", "chat", Some(("demo-internal-ca", &data)), &first.services, 90 * DAY, now())
            .unwrap_err();
        assert!(matches!(err, TlsError::BadCa { .. }), "{want}: {err}");
        let text = err.to_string();
        assert!(text.contains(want) && text.contains("demo-internal-ca"), "{want}: {text}");
    }
}

#[test]
fn several_trusted_cas_are_kept_for_a_rollover() {
    let first = tls::ensure("demo", "chat", None, &BTreeMap::new(), 90 * DAY, now()).unwrap().material;
    let next = tls::ensure("demo", "chat", None, &BTreeMap::new(), 90 * DAY, now()).unwrap().material;
    let mut data = ca_data(&first.ca);
    let bundle = format!("{}{}", first.ca.cert_pem, next.ca.cert_pem);
    data.insert("ca.crt".into(), bundle.clone().into_bytes());
    let kept =
        tls::ensure("demo", "chat", Some(("demo-internal-ca", &data)), &first.services, 90 * DAY, now()).unwrap();
    assert_eq!(kept.material.trusted_pem, bundle);
    assert!(kept.issued.is_empty());
}

#[test]
fn lifetimes_parse_within_bounds() {
    assert_eq!(tls::parse_lifetime(None), Ok(90 * DAY));
    assert_eq!(tls::parse_lifetime(Some("30d")), Ok(30 * DAY));
    assert_eq!(tls::parse_lifetime(Some("12h")), Ok(Duration::from_secs(12 * 3600)));
    assert_eq!(tls::parse_lifetime(Some("15s")), Ok(Duration::from_secs(15)));
    assert_eq!(tls::parse_lifetime(Some("3650d")), Ok(3650 * DAY));
    for bad in ["9s", "3651d", "99999999d", "d", "10", "1w", "-5d", ""] {
        assert!(tls::parse_lifetime(Some(bad)).is_err(), "{bad}");
    }
}

#[test]
fn the_next_pass_comes_in_time_for_the_renewal() {
    let resync = Duration::from_secs(300);
    assert_eq!(requeue_after(resync, None, now()), resync);
    assert_eq!(requeue_after(resync, Some(now() + DAY), now()), resync);
    assert_eq!(requeue_after(resync, Some(now() + Duration::from_secs(40)), now()), Duration::from_secs(40));
    assert_eq!(requeue_after(resync, Some(now() - DAY), now()), Duration::from_secs(1));
}

/// The services' own TLS loader (chatmesh-common's `MeshTls`) takes the operator's files as
/// mounted, names the right service, and its server accepts a peer service's certificate for
/// any of the headless Service's names, and nothing else.
#[tokio::test]
async fn the_services_accept_the_operators_certificates() {
    use chatmesh_common::mesh::Service;
    use chatmesh_common::mesh::tls::{MeshTls, TlsFiles};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;

    chatmesh_operator::install_tls_provider();
    let made = tls::ensure("demo", "chat", None, &BTreeMap::new(), 90 * DAY, OffsetDateTime::now_utc()).unwrap();
    let m = made.material;
    let stranger = tls::ensure("demo", "chat", None, &BTreeMap::new(), 90 * DAY, OffsetDateTime::now_utc());
    let stranger = stranger.unwrap().material;

    // The Secret's three keys as files, the way the pod sees them.
    let dir = std::env::temp_dir().join(format!("optls-{}", std::process::id()));
    let mut loaded = BTreeMap::new();
    for (component, cert) in &m.services {
        let sub = dir.join(component.name());
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("tls.crt"), &cert.cert_pem).unwrap();
        std::fs::write(sub.join("tls.key"), &cert.key_pem).unwrap();
        std::fs::write(sub.join("ca.crt"), &m.trusted_pem).unwrap();
        let files = TlsFiles { cert: sub.join("tls.crt"), key: sub.join("tls.key"), ca: sub.join("ca.crt") };
        let tls = MeshTls::load(files, Duration::from_secs(3600)).unwrap_or_else(|e| panic!("{component:?}: {e}"));
        assert_eq!(tls.current().identity, [Service::from_name(component.name()).unwrap()]);
        loaded.insert(*component, tls);
    }
    std::fs::remove_dir_all(&dir).unwrap();

    // A client as the gateway (or a stranger), a server as the user service, in memory.
    let handshake = |client_cert: &KeyedCert, name: &str| -> Result<Vec<u8>, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(m.trusted_pem.as_bytes()).unwrap()).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(client_cert.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(client_cert.key_pem.as_bytes()).unwrap();
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(chain, key);
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config.unwrap()), name).unwrap();
        let mut server = rustls::ServerConnection::new(loaded[&Component::User].current().server.clone()).unwrap();
        for _ in 0..10 {
            let mut bytes = vec![];
            while client.wants_write() {
                client.write_tls(&mut bytes).unwrap();
            }
            server.read_tls(&mut &bytes[..]).unwrap();
            server.process_new_packets().map_err(|e| format!("server: {e}"))?;
            let mut bytes = vec![];
            while server.wants_write() {
                server.write_tls(&mut bytes).unwrap();
            }
            client.read_tls(&mut &bytes[..]).unwrap();
            client.process_new_packets().map_err(|e| format!("client: {e}"))?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(server.peer_certificates().unwrap()[0].to_vec());
            }
        }
        Err("no handshake".into())
    };
    let gateway = &m.services[&Component::Gateway];
    for name in ["demo-user", "demo-user.chat", "demo-user.chat.svc", "demo-user.chat.svc.cluster.local"] {
        let peer = handshake(gateway, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(peer, parse(&gateway.cert_pem), "the server sees the gateway's certificate");
    }
    let wrong = handshake(gateway, "demo-file").unwrap_err();
    assert!(wrong.starts_with("client:") && wrong.contains("not valid for name"), "another service's name: {wrong}");
    let refused = handshake(&stranger.services[&Component::Gateway], "demo-user").unwrap_err();
    assert!(refused.starts_with("server: invalid peer certificate"), "a certificate of another CA: {refused}");
}

#[test]
fn provided_certificates_are_checked_before_use() {
    let m = tls::ensure("demo", "chat", None, &BTreeMap::new(), 90 * DAY, now()).unwrap().material;
    let other = tls::ensure("demo", "chat", None, &BTreeMap::new(), 90 * DAY, now()).unwrap().material;
    let user = &m.services[&Component::User];
    let check = |cert: &str, key: &str, ca: &str, at: OffsetDateTime| {
        tls::check_provided(cert, key, ca, "demo", Component::User, at)
    };
    assert_eq!(check(&user.cert_pem, &user.key_pem, &m.trusted_pem, now()), Ok(()));
    // Any CA of a bundle may have signed it (a rollover in progress).
    let bundle = format!("{}{}", other.trusted_pem, m.trusted_pem);
    assert_eq!(check(&user.cert_pem, &user.key_pem, &bundle, now()), Ok(()));

    let gateway = &m.services[&Component::Gateway];
    let cases = [
        (check(&user.cert_pem, &gateway.key_pem, &m.trusted_pem, now()), "the key is not the certificate's"),
        (
            check(&gateway.cert_pem, &gateway.key_pem, &m.trusted_pem, now()),
            "does not name spiffe://chatmesh.io/service/user",
        ),
        (check(&user.cert_pem, &user.key_pem, &other.trusted_pem, now()), "not signed by a CA in ca.crt"),
        (check(&user.cert_pem, &user.key_pem, "", now()), "ca.crt holds no PEM certificate"),
        (check("junk", &user.key_pem, &m.trusted_pem, now()), "holds no PEM certificate"),
        (check(&user.cert_pem, "junk", &m.trusted_pem, now()), "the key:"),
        (check(&user.cert_pem, &user.key_pem, &m.trusted_pem, now() + 91 * DAY), "the certificate expired"),
    ];
    for (result, want) in cases {
        let err = result.unwrap_err();
        assert!(err.contains(want), "{want}: {err}");
    }
    // Made for another ChatSystem: its callers would dial a name it lacks.
    let named_other = tls::ensure("prod", "chat", None, &BTreeMap::new(), 90 * DAY, now()).unwrap().material;
    let theirs = &named_other.services[&Component::User];
    let err = check(&theirs.cert_pem, &theirs.key_pem, &named_other.trusted_pem, now()).unwrap_err();
    assert!(err.contains("does not name demo-user"), "{err}");
}
