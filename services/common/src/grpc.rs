//! gRPC plumbing: client channels that follow a DNS name (a headless Kubernetes Service resolves
//! to every pod), and serving a tonic router on a listener the caller bound.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

use crate::BackendError;

/// Every client call goes through this: a load-balanced channel with a per-call deadline, so a
/// missing backend is an error rather than a hang.
pub type GrpcChannel = tower::timeout::Timeout<Channel>;

/// Largest gRPC message accepted or sent: files travel inside messages.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// A channel to `url` (`http://host:port`) balancing over every address `host` resolves to,
/// re-resolved every `refresh` so scaling a Deployment is picked up without restarts.
pub fn channel(url: &str, timeout: Duration, refresh: Duration) -> Result<GrpcChannel, BackendError> {
    let bad = |why: &str| BackendError::Address(url.to_string(), why.to_string());
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|_| bad("not a URI"))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(16);
    let target = url.to_string();
    tokio::spawn(async move {
        let mut known = HashSet::new();
        loop {
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => {
                    let now: HashSet<SocketAddr> = addrs.collect();
                    for gone in known.difference(&now) {
                        if changes.send(Change::Remove(*gone)).await.is_err() {
                            return; // channel dropped
                        }
                    }
                    for new in now.difference(&known) {
                        let ep = Endpoint::from_shared(format!("http://{new}"))
                            .expect("socket address forms a valid URI")
                            .connect_timeout(Duration::from_secs(3))
                            .tcp_nodelay(true)
                            .http2_keep_alive_interval(Duration::from_secs(30));
                        if changes.send(Change::Insert(*new, ep)).await.is_err() {
                            return;
                        }
                    }
                    known = now;
                }
                Err(e) => tracing::warn!(%target, error = %e, "cannot resolve service address; retrying"),
            }
            tokio::time::sleep(refresh).await;
        }
    });
    Ok(tower::timeout::Timeout::new(channel, timeout))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    router.serve_with_incoming_shutdown(incoming, shutdown).await
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
