//! gRPC plumbing: client channels that follow a DNS name (a headless Kubernetes Service resolves
//! to every pod), and serving a tonic router on a listener the caller bound.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

use crate::BackendError;
use crate::mesh::authz::AuthorizeLayer;
use crate::mesh::tls::MeshTls;
use crate::trace::{TraceClient, TraceServerLayer};
use tower::layer::util::{Identity, Stack};

/// Every client call goes through this: a load-balanced channel with a per-call deadline, so a
/// missing backend is an error rather than a hang.
/// Each call is traced and timed ([`TraceClient`]).
pub type GrpcChannel = TraceClient<tower::timeout::Timeout<Channel>>;

/// Largest gRPC message accepted or sent: files travel inside messages.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// A channel to `url` (`http://host:port`) balancing over every address `host` resolves to,
/// re-resolved every `refresh` so scaling a Deployment is picked up without restarts. With
/// `tls`, every connection is mutual TLS verifying that the server's certificate names `host`;
/// when the certificates are reloaded, connections with the new ones join before the old ones
/// leave, so no call waits for a connection.
pub fn channel(
    url: &str,
    timeout: Duration,
    refresh: Duration,
    tls: Option<&MeshTls>,
) -> Result<GrpcChannel, BackendError> {
    let bad = |why: &str| BackendError::Address(url.to_string(), why.to_string());
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|_| bad("not a URI"))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
    // Keyed by address and certificate generation, so a reload can add before it removes.
    let (channel, changes) = Channel::balance_channel::<(SocketAddr, u64)>(16);
    let target = url.to_string();
    let mut certs = tls.map(MeshTls::subscribe);
    tokio::spawn(async move {
        let mut known: HashSet<SocketAddr> = HashSet::new();
        let mut generation = 0u64;
        let mut reloaded = false;
        loop {
            let endpoint = |addr: SocketAddr| -> Option<Endpoint> {
                let base = match &certs {
                    None => Endpoint::from_shared(format!("http://{addr}")),
                    Some(_) => Endpoint::from_shared(format!("https://{addr}")),
                }
                .expect("socket address forms a valid URI")
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30));
                let Some(certs) = &certs else { return Some(base) };
                let config = certs.borrow().client.clone().domain_name(host.clone());
                match base.tls_config(config) {
                    Ok(ep) => Some(ep),
                    Err(e) => {
                        tracing::error!(%target, error = %e, "cannot use the TLS configuration");
                        None
                    }
                }
            };
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => {
                    let now: HashSet<SocketAddr> = addrs.collect();
                    let (old, current) = (generation, generation + u64::from(reloaded));
                    let added: Vec<SocketAddr> = if reloaded {
                        now.iter().copied().collect()
                    } else {
                        now.difference(&known).copied().collect()
                    };
                    for addr in added {
                        let Some(ep) = endpoint(addr) else { continue };
                        if changes.send(Change::Insert((addr, current), ep)).await.is_err() {
                            return; // channel dropped
                        }
                    }
                    let removed: Vec<SocketAddr> = if reloaded {
                        known.iter().copied().collect()
                    } else {
                        known.difference(&now).copied().collect()
                    };
                    for addr in removed {
                        if changes.send(Change::Remove((addr, old))).await.is_err() {
                            return;
                        }
                    }
                    known = now;
                    generation = current;
                    reloaded = false;
                }
                Err(e) => tracing::warn!(%target, error = %e, "cannot resolve service address; retrying"),
            }
            match &mut certs {
                Some(certs) => tokio::select! {
                    () = tokio::time::sleep(refresh) => {}
                    changed = certs.changed() => reloaded = changed.is_ok(),
                },
                None => tokio::time::sleep(refresh).await,
            }
        }
    });
    Ok(TraceClient::new(tower::timeout::Timeout::new(channel, timeout)))
}

/// The layers of every gRPC server: tracing and timing outermost (refusals count too), then
/// the authorization table.
pub type ServerLayers = Stack<AuthorizeLayer, Stack<TraceServerLayer, Identity>>;

/// A gRPC server whose every request is traced and passes the authorization table (when
/// `enforce`: the mesh is on).
pub fn server(enforce: bool) -> tonic::transport::Server<ServerLayers> {
    tonic::transport::Server::builder().tcp_nodelay(true).layer(TraceServerLayer).layer(AuthorizeLayer { enforce })
}

/// The routes of a [`server`].
pub type MeshRouter = tonic::transport::server::Router<ServerLayers>;

/// Serves `router` on `listener` until `shutdown` resolves: plaintext, or with `tls` mutual TLS
/// where only clients with a certificate of the mesh's CA get in (and the router's
/// [`AuthorizeLayer`](crate::mesh::authz::AuthorizeLayer) checks what each may call).
pub async fn serve(
    router: MeshRouter,
    listener: TcpListener,
    tls: Option<MeshTls>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    match tls {
        None => {
            // `Server::tcp_nodelay` applies only to listeners tonic binds itself; without it
            // small responses wait on Nagle and delayed ACKs (about a millisecond per call).
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
        Some(tls) => router.serve_with_incoming_shutdown(crate::mesh::tls::incoming(listener, tls), shutdown).await,
    }
}

/// Binds a TCP listener, with the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// An error a service reports to its caller inside the seed's response (`success=false`).
pub trait ServiceFailure: std::fmt::Display {
    /// Internal failures are logged in full and reported without their details.
    fn is_internal(&self) -> bool;
}

/// Turns a handler's result into the seed's reply: business errors travel as `success=false` +
/// `errmsg` in an OK gRPC response, as the original does.
pub fn reply<R: chatmesh_proto::Reply, E: ServiceFailure>(
    request_id: String,
    result: Result<R, E>,
) -> Result<tonic::Response<R>, tonic::Status> {
    let rsp = match result {
        Ok(mut rsp) => {
            rsp.set_outcome(request_id, true, String::new());
            rsp
        }
        Err(e) if e.is_internal() => {
            tracing::error!(%request_id, error = %e, "request failed");
            R::failure(request_id, "internal error, please retry later")
        }
        Err(e) => {
            tracing::debug!(%request_id, error = %e, "request refused");
            R::failure(request_id, e.to_string())
        }
    };
    Ok(tonic::Response::new(rsp))
}

/// A response from another service, or its error text when it said `success=false`.
pub fn expect_success<R: chatmesh_proto::Reply>(
    result: Result<tonic::Response<R>, tonic::Status>,
) -> Result<R, CallError> {
    let rsp = result.map_err(CallError::Unavailable)?.into_inner();
    if rsp.success() { Ok(rsp) } else { Err(CallError::Refused(rsp.errmsg().to_string())) }
}

/// Why a call to another service did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("service unavailable: {}", .0.message())]
    Unavailable(tonic::Status),
    #[error("{0}")]
    Refused(String),
}

/// A generated gRPC client or server allowed messages up to [`MAX_MESSAGE_BYTES`] both ways
/// (files travel inside messages; tonic's default is 4 MiB).
#[macro_export]
macro_rules! sized {
    ($e:expr) => {
        $e.max_decoding_message_size($crate::grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size($crate::grpc::MAX_MESSAGE_BYTES)
    };
}
