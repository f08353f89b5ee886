//! gRPC plumbing: client channels that follow a DNS name (a headless Kubernetes Service resolves
//! to every pod), and serving a tonic router on a listener the caller bound.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tonic::codegen::http;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

use crate::BackendError;
use crate::mesh::authz::{AuthorizeLayer, authorize};
use crate::mesh::tls::MeshTls;
use crate::mesh::{Peer, Service};
use crate::trace::{self, Side, TraceClient, TraceServerLayer};
use tower::Layer;
use tower::layer::util::{Identity, Stack};
use tower::util::BoxCloneSyncService;
use tracing::Instrument;

/// Every client call goes through this: a load-balanced channel, or a service of this process
/// ([`Transport`]), with a per-call deadline, so a missing backend is an error rather than a
/// hang. Each call is traced and timed ([`TraceClient`]).
pub type GrpcChannel = TraceClient<tower::timeout::Timeout<Transport>>;

type Body = tonic::body::Body;
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A gRPC service of this process behind the layers of every server ([`ServerLayers`]: traces,
/// the authorization table), ready to be called without a connection.
pub type LocalService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// `service` (a generated `…Server`) behind the layers [`server`] gives it, for [`local_channel`].
pub fn local<S>(service: S, enforce: bool) -> LocalService
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S: Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(server_layers(enforce).layer(service))
}

/// How a client reaches a service: connections to every address of its name, or, when this
/// process runs it too, a direct call. A direct call skips HTTP/2, TLS and the kernel: on one
/// machine they cost more CPU than the work behind most calls.
#[derive(Clone)]
pub enum Transport {
    Network(Channel),
    /// The caller is this process, so it is proven: each request carries the [`Peer`] the
    /// mesh's TLS listener would have put there, naming only the calling service, and the
    /// authorization table judges it as it would a remote one.
    Local(LocalService, Peer),
}

impl tower::Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        match self {
            Transport::Network(channel) => channel.poll_ready(cx).map_err(Into::into),
            Transport::Local(service, _) => service.poll_ready(cx).map_err(|never| match never {}),
        }
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        match self {
            Transport::Network(channel) => {
                let call = channel.call(request);
                Box::pin(async move { call.await.map_err(Into::into) })
            }
            Transport::Local(service, peer) => {
                request.extensions_mut().insert(peer.clone());
                let call = service.call(request);
                Box::pin(async move { call.await.map_err(|never| match never {}) })
            }
        }
    }
}

/// A client of `service`, which this process runs, calling as `caller` with a per-call deadline.
pub fn local_channel(service: LocalService, caller: Service, timeout: Duration) -> GrpcChannel {
    let peer = Peer { addr: None, services: vec![caller] };
    TraceClient::new(tower::timeout::Timeout::new(Transport::Local(service, peer), timeout))
}

/// A service of this process called through its Rust interface. For the call made on every
/// message (gateway -> transmit): a [`Transport::Local`] call still encodes the request and the
/// reply and wraps each in an HTTP message, which cost more CPU than the work behind that call
/// (`perf`, standalone burst). The call is judged, traced and timed as a local one is: the
/// authorization table when enforced, the caller's [`Peer`] in the request, a client and a
/// server span, both RPC histograms, and the deadline.
pub struct Direct<S: ?Sized> {
    service: Arc<S>,
    peer: Peer,
    enforce: bool,
    timeout: Duration,
}

/// What a method of a generated service trait returns.
pub type DirectFuture<'a, Rsp> = BoxFuture<'a, Result<tonic::Response<Rsp>, tonic::Status>>;

impl<S: ?Sized + Send + Sync> Direct<S> {
    /// `service` called by `caller` (enforcing the authorization table when `enforce`).
    pub fn new(service: Arc<S>, caller: Service, enforce: bool, timeout: Duration) -> Self {
        Self { service, peer: Peer { addr: None, services: vec![caller] }, enforce, timeout }
    }

    /// Calls `method` of the service as the RPC at `path`.
    pub async fn call<'a, Req, Rsp>(
        &'a self,
        path: &'static str,
        request: Req,
        method: impl FnOnce(&'a S, tonic::Request<Req>) -> DirectFuture<'a, Rsp>,
    ) -> Result<tonic::Response<Rsp>, tonic::Status> {
        let started = Instant::now();
        let client = trace::client_span(path);
        let served = async {
            let server = trace::server_span(path);
            trace::record_trace_id(&server);
            let result = async {
                if self.enforce {
                    authorize(path, Some(&self.peer))?;
                }
                let mut request = tonic::Request::new(request);
                request.extensions_mut().insert(self.peer.clone());
                method(&self.service, request).await
            }
            .instrument(server)
            .await;
            trace::timed(Side::Server, path, code(&result), started);
            result
        };
        let result = match tokio::time::timeout(self.timeout, served.instrument(client)).await {
            Ok(result) => result,
            Err(_) => Err(tonic::Status::deadline_exceeded(format!("{path}: no answer within {:?}", self.timeout))),
        };
        trace::timed(Side::Client, path, code(&result), started);
        result
    }
}

fn code<T>(result: &Result<T, tonic::Status>) -> &'static str {
    trace::code_name(result.as_ref().map_or_else(tonic::Status::code, |_| tonic::Code::Ok))
}

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
    Ok(TraceClient::new(tower::timeout::Timeout::new(Transport::Network(channel), timeout)))
}

/// The layers of every gRPC server: tracing and timing outermost (refusals count too), then
/// the authorization table.
pub type ServerLayers = Stack<AuthorizeLayer, Stack<TraceServerLayer, Identity>>;

/// [`ServerLayers`], enforcing the authorization table when `enforce` (the mesh is on).
fn server_layers(enforce: bool) -> ServerLayers {
    Stack::new(AuthorizeLayer { enforce }, Stack::new(TraceServerLayer, Identity::new()))
}

/// A gRPC server whose every request is traced and passes the authorization table (when
/// `enforce`: the mesh is on).
pub fn server(enforce: bool) -> tonic::transport::Server<Stack<ServerLayers, Identity>> {
    tonic::transport::Server::builder().tcp_nodelay(true).layer(server_layers(enforce))
}

/// The routes of a [`server`].
pub type MeshRouter = tonic::transport::server::Router<Stack<ServerLayers, Identity>>;

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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tower::ServiceExt;

    use super::*;

    type Seen = Arc<Mutex<Vec<Option<Peer>>>>;

    /// A service behind the server layers that records the peer of every request reaching it.
    fn recording(seen: &Seen, enforce: bool) -> LocalService {
        let seen = seen.clone();
        let svc = tower::service_fn(move |request: http::Request<Body>| {
            seen.lock().unwrap().push(request.extensions().get::<Peer>().cloned());
            std::future::ready(Ok::<_, Infallible>(http::Response::new(Body::empty())))
        });
        local(svc, enforce)
    }

    async fn call(channel: GrpcChannel, rpc: &str) -> Option<String> {
        let request = http::Request::builder().uri(rpc).body(Body::empty()).unwrap();
        let response = channel.oneshot(request).await.expect("a local call always answers");
        response.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_string())
    }

    /// A call inside the process names its calling service alone, and the authorization
    /// table judges it as it would a remote peer's: a service the table does not list for an
    /// RPC never reaches it.
    #[tokio::test]
    async fn local_calls_carry_their_caller_through_the_table() {
        let seen = Seen::default();
        let rpc = "/bite_im.UserService/SetUserNickname";
        let gateway = local_channel(recording(&seen, true), Service::Gateway, Duration::from_secs(1));
        assert_eq!(call(gateway, rpc).await, None, "the gateway may");
        let transmit = local_channel(recording(&seen, true), Service::Transmit, Duration::from_secs(1));
        assert_eq!(call(transmit, rpc).await.as_deref(), Some("7"), "transmit is refused (PERMISSION_DENIED)");
        let gateway_peer = Peer { addr: None, services: vec![Service::Gateway] };
        assert_eq!(*seen.lock().unwrap(), vec![Some(gateway_peer)], "only the gateway's call was served");

        // Without the mesh the table is not enforced, but the caller is still named, so
        // grants inside requests (`authz::may_grant`) are judged on it.
        let transmit = local_channel(recording(&seen, false), Service::Transmit, Duration::from_secs(1));
        assert_eq!(call(transmit, rpc).await, None);
        assert_eq!(seen.lock().unwrap()[1], Some(Peer { addr: None, services: vec![Service::Transmit] }));
    }

    /// Records the peer of every call reaching it, as a generated service trait's method would.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Option<Peer>>>);

    impl Recorder {
        fn serve(&self, request: tonic::Request<()>) -> DirectFuture<'_, ()> {
            self.0.lock().unwrap().push(request.extensions().get::<Peer>().cloned());
            Box::pin(async { Ok(tonic::Response::new(())) })
        }
    }

    /// A direct call is judged as a local one: the table refuses a caller it does not list
    /// before the service sees the call, the caller is named in the request with or without
    /// the mesh, and the deadline holds.
    #[tokio::test]
    async fn direct_calls_are_judged_as_local_ones() {
        let rpc = "/bite_im.UserService/SetUserNickname";
        let service = Arc::new(Recorder::default());
        let gateway = Direct::new(service.clone(), Service::Gateway, true, Duration::from_secs(1));
        gateway.call(rpc, (), Recorder::serve).await.expect("the gateway may");
        let transmit = Direct::new(service.clone(), Service::Transmit, true, Duration::from_secs(1));
        let refused = transmit.call(rpc, (), Recorder::serve).await.expect_err("transmit may not");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let gateway_peer = Peer { addr: None, services: vec![Service::Gateway] };
        assert_eq!(*service.0.lock().unwrap(), vec![Some(gateway_peer)], "only the gateway's call was served");

        let transmit = Direct::new(service.clone(), Service::Transmit, false, Duration::from_secs(1));
        transmit.call(rpc, (), Recorder::serve).await.expect("without the mesh the table is not enforced");
        assert_eq!(service.0.lock().unwrap()[1], Some(Peer { addr: None, services: vec![Service::Transmit] }));

        let slow = Direct::new(service, Service::Gateway, true, Duration::from_millis(50));
        let late = slow
            .call(rpc, (), |_, _| -> DirectFuture<()> { Box::pin(std::future::pending()) })
            .await
            .expect_err("never answers");
        assert_eq!(late.code(), tonic::Code::DeadlineExceeded);
    }
}
