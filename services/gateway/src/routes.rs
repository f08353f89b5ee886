//! The seed's HTTP routes. Every route: read the body (size-limited), decode it, resolve the
//! login session into `user_id` (overwriting whatever the client sent), call the service, and
//! answer in the request's format. Failures are HTTP 200 with `success=false` and `errmsg`, as
//! the seed does them.

use std::future::Future;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chatmesh_common::telemetry::Hop;
use chatmesh_proto::{Envelope, Reply, UserLogoutReq, UserLogoutRsp};
use prost::Name;

use crate::codec::{self, Format};
use crate::edge::PeerAddr;
use crate::{Gateway, notify};

/// gRPC metadata in which the user service receives the client's address (for its limits).
pub const CLIENT_IP_METADATA: &str = "x-chatmesh-client-ip";

/// The route whose hops are timed (`chatmesh_message_hop_seconds`).
const NEW_MESSAGE: &str = "/service/message_transmit/new_message";

/// A request to a service, carrying the client's address.
fn with_client_ip<T>(req: T, ip: Option<std::net::IpAddr>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(req);
    if let Some(value) = ip.and_then(|ip| ip.to_string().parse().ok()) {
        request.metadata_mut().insert(CLIENT_IP_METADATA, value);
    }
    request
}

impl Gateway {
    fn client_ip(&self, parts: &axum::http::request::Parts) -> Option<std::net::IpAddr> {
        let peer = parts.extensions.get::<ConnectInfo<PeerAddr>>().map(|c| c.0.0);
        crate::edge::client_ip(&parts.headers, peer, self.args.trusted_proxy_header.as_deref())
    }

    /// The body limit of a route: large only where files travel.
    fn body_limit(&self, route: &str) -> usize {
        match route {
            "/service/file/put_single_file"
            | "/service/file/put_multi_file"
            | "/service/message_transmit/new_message"
            | "/service/speech/recognition" => self.args.max_body_bytes,
            "/service/user/set_avatar" => self.args.max_avatar_body_bytes,
            _ => self.args.max_small_body_bytes,
        }
    }
}

/// Declares `POST path => client.method [then hook]` routes; request and response types follow
/// from the generated client method. A hook runs after a successful call (notifications).
macro_rules! service_routes {
    ($router:expr, $($path:literal => $client:ident . $method:ident $(then $hook:path)?),* $(,)?) => {
        $router $(.route($path, post(|State(gw): State<Gateway>, request: Request| async move {
            let mut client = gw.$client.clone();
            #[allow(unused_mut, unused_assignments)]
            let mut hook = None;
            $(hook = Some($hook as Hook<_, _>);)?
            let (parts, body) = request.into_parts();
            let ip = gw.client_ip(&parts);
            let call = move |req| async move { client.$method(with_client_ip(req, ip)).await };
            handle(&gw, $path, &parts.headers, body, call, hook).await
        })))*
    };
}

/// Runs after a successful call with the (authenticated) request and the response.
pub type Hook<Req, Rsp> = fn(Gateway, Req, Rsp) -> futures_util::future::BoxFuture<'static, ()>;

pub fn router(gw: Gateway) -> Router {
    let mut router =
        Router::new().route("/healthz", get(|| async { "ok" })).route("/ws", get(crate::websocket::upgrade));
    // Operational detail stays off the public port unless asked for (the admin port has it).
    if gw.args.public_metrics {
        router = router
            .route("/readyz", get(ready))
            .route("/metrics", get(|| async { chatmesh_common::telemetry::metrics().render() }));
    }
    let router = service_routes!(router,
        "/service/user/get_phone_verify_code" => user.get_phone_verify_code,
        "/service/user/username_register" => user.user_register,
        "/service/user/username_login" => user.user_login,
        "/service/user/phone_register" => user.phone_register,
        "/service/user/phone_login" => user.phone_login,
        "/service/user/get_user_info" => user.get_user_info,
        "/service/user/set_avatar" => user.set_user_avatar,
        "/service/user/set_nickname" => user.set_user_nickname,
        "/service/user/set_description" => user.set_user_description,
        "/service/user/set_phone" => user.set_user_phone_number,
        "/service/file/get_single_file" => file.get_single_file,
        "/service/file/get_multi_file" => file.get_multi_file,
        "/service/file/put_single_file" => file.put_single_file,
        "/service/file/put_multi_file" => file.put_multi_file,
        "/service/friend/get_friend_list" => friend.get_friend_list,
        "/service/friend/add_friend_apply" => friend.friend_add then notify::friend_apply,
        "/service/friend/add_friend_process" => friend.friend_add_process then notify::friend_processed,
        "/service/friend/remove_friend" => friend.friend_remove then notify::friend_removed,
        "/service/friend/search_friend" => friend.friend_search,
        "/service/friend/get_chat_session_list" => friend.get_chat_session_list,
        "/service/friend/create_chat_session" => friend.chat_session_create then notify::group_created,
        "/service/friend/get_chat_session_member" => friend.get_chat_session_member,
        "/service/friend/get_pending_friend_events" => friend.get_pending_friend_event_list,
        "/service/message_storage/get_history" => message.get_history_msg,
        "/service/message_storage/get_recent" => message.get_recent_msg,
        "/service/message_storage/search_history" => message.msg_search,
        "/service/speech/recognition" => speech.speech_recognition,
    );
    // An addition to the seed's routes: ends one login session (the one in the body).
    let router = router.route(
        "/service/user/logout",
        post(|State(gw): State<Gateway>, headers: HeaderMap, body: Body| async move {
            let sessions = gw.sessions.clone();
            let call = move |req: UserLogoutReq| async move {
                let revoked = sessions.revoke(req.session_id.as_deref().unwrap_or_default()).await;
                let request_id = req.request_id;
                match revoked {
                    Ok(()) => {
                        Ok(tonic::Response::new(UserLogoutRsp { request_id, success: true, ..Default::default() }))
                    }
                    Err(e) => Err(tonic::Status::unavailable(e.to_string())),
                }
            };
            handle(&gw, "/service/user/logout", &headers, body, call, None).await
        }),
    );
    // Sending answers with NewMessageRsp but calls GetTransmitTarget, then pushes.
    let router = router.route(
        NEW_MESSAGE,
        post(|State(gw): State<Gateway>, headers: HeaderMap, body: Body| async move {
            let sender = gw.clone();
            let call = move |req| notify::new_message(sender, req);
            handle(&gw, NEW_MESSAGE, &headers, body, call, None).await
        }),
    );
    // Static files only where no route matched, so they can never shadow the API or `/ws`.
    let router = match &gw.args.web_dir {
        Some(dir) => {
            // Reads only: any other method on an unknown path stays 404, as without a web dir.
            let files = axum::routing::get_service(tower_http::services::ServeDir::new(dir))
                .fallback(|| async { StatusCode::NOT_FOUND });
            router.fallback_service(files)
        }
        None => router,
    };
    // Bodies are limited in `handle`, per route, so an oversized one still gets the seed's reply.
    router.layer(axum::extract::DefaultBodyLimit::disable()).with_state(gw)
}

async fn ready(State(gw): State<Gateway>) -> Response {
    match gw.kv.ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("session store: {e}")).into_response(),
    }
}

#[tracing::instrument(name = "http.request", skip_all, fields(otel.name = route, otel.kind = "server", http.route = route, trace_id = tracing::field::Empty))]
async fn handle<Req, Rsp, F, Fut>(
    gw: &Gateway,
    route: &'static str,
    headers: &HeaderMap,
    body: Body,
    call: F,
    hook: Option<Hook<Req, Rsp>>,
) -> Response
where
    Req: Envelope + Name + Clone,
    Rsp: Reply + Name + Clone,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Rsp>, tonic::Status>>,
{
    let started = Instant::now();
    chatmesh_common::trace::record_trace_id(&tracing::Span::current());
    let format = Format::of(headers);
    let rsp = match forward(gw, route, format, body, call, hook).await {
        Ok(rsp) => rsp,
        Err((request_id, errmsg)) => Rsp::failure(request_id, errmsg),
    };
    let outcome = if rsp.success() { "success" } else { "failure" };
    metrics::counter!("chatmesh_gateway_requests_total", "route" => route, "outcome" => outcome).increment(1);
    metrics::histogram!("chatmesh_gateway_request_seconds", "route" => route).record(started.elapsed().as_secs_f64());
    codec::encode(format, &rsp)
}

/// The happy path; `Err` carries the request id (if known) and the error text.
async fn forward<Req, Rsp, F, Fut>(
    gw: &Gateway,
    route: &'static str,
    format: Format,
    body: Body,
    call: F,
    hook: Option<Hook<Req, Rsp>>,
) -> Result<Rsp, (String, String)>
where
    Req: Envelope + Name + Clone,
    Rsp: Reply + Name + Clone,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Rsp>, tonic::Status>>,
{
    let started = Instant::now();
    let timed = route == NEW_MESSAGE;
    let limit = gw.body_limit(route);
    let read = crate::body::read::<Req>(gw, format, body, limit).await;
    let crate::body::Read { bytes, session: early } = read.map_err(|e| (String::new(), e.to_string()))?;
    let mut req: Req = codec::decode(format, &bytes).map_err(|e| (String::new(), e))?;
    drop(bytes);
    let request_id = req.request_id().to_string();
    req.clear_internal();
    if let Some(session_id) = req.session_id() {
        // Resolved once per request: by the early check when it saw this very session (a body
        // may repeat the field and the decoded value is the last: only an equal one counts).
        let resolved = match early.filter(|(s, _)| s == session_id) {
            Some((_, user_id)) => Ok(Some(user_id)),
            None => gw.sessions.resolve(session_id).await,
        };
        let user_id = match resolved {
            Ok(Some(user_id)) => user_id,
            Ok(None) => return Err((request_id, "login session is invalid or expired; please log in".into())),
            Err(e) => {
                tracing::error!(error = %e, "session store unavailable");
                return Err((request_id, "session store unavailable, please retry later".into()));
            }
        };
        req.set_user_id(user_id);
    }
    if timed {
        Hop::GatewaySession.record(started);
    }
    // Only routes with a hook pay for keeping a copy of the request.
    let kept = hook.map(|h| (h, req.clone()));
    match call(req).await {
        Ok(rsp) => {
            let rsp = rsp.into_inner();
            if let Some((hook, req)) = kept.filter(|_| rsp.success()) {
                hook(gw.clone(), req, rsp.clone()).await;
            }
            if timed {
                Hop::GatewayTotal.record(started);
            }
            Ok(rsp)
        }
        Err(status) => {
            tracing::error!(%request_id, code = ?status.code(), message = status.message(), "upstream call failed");
            Err((request_id, "service unavailable, please retry later".into()))
        }
    }
}
