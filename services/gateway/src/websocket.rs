//! The notification WebSocket: the client authenticates with one binary
//! `ClientAuthenticationReq` (no reply, as in the seed), then receives binary `NotifyMessage`
//! frames. A bad or expired session closes the socket; the server pings to detect dead peers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use chatmesh_common::telemetry::Hop;
use chatmesh_proto::ClientAuthenticationReq;
use prost::Message;

use crate::Gateway;
use crate::push::{Eviction, Push, Registration};

/// Close code for a refused session (4000-4999 are the application's).
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// Close code for a client that does not read its pushes fast enough (its queue passed
/// `--ws-queue-bytes`, or one send took longer than `--ws-send-timeout`). Nothing is lost:
/// the messages are in the history; reconnect and load it.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Close code for the oldest connection of a user who opened more than `--ws-max-devices`.
pub const CLOSE_REPLACED: u16 = 4009;
/// The auth frame is tiny; nothing else is expected from clients.
const MAX_CLIENT_FRAME: usize = 64 * 1024;

pub fn router(gateway: Gateway) -> Router {
    Router::new().fallback(upgrade).with_state(gateway)
}

pub async fn upgrade(State(gw): State<Gateway>, ws: WebSocketUpgrade) -> Response {
    let conn = Conn {
        sessions: gw.sessions.clone(),
        push: gw.push.clone(),
        auth_timeout: gw.args.ws_auth_timeout,
        ping_interval: gw.args.ws_ping_interval,
        send_timeout: gw.args.ws_send_timeout,
    };
    // A small read buffer: clients send one auth frame and pongs (tungstenite allocates it up
    // front, 128 KB by default; a larger frame still reads, in more calls).
    ws.read_buffer_size(256)
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| serve(conn, socket))
}

/// What a connection needs from the gateway: an idle connection holds it, inline in its task,
/// for as long as it is open.
struct Conn {
    sessions: Arc<chatmesh_common::sessions::LoginSessions>,
    push: crate::push::Connections,
    auth_timeout: Duration,
    ping_interval: Duration,
    send_timeout: Duration,
}

/// One task per connection: it sends queued pushes, reads pongs, pings, and re-checks the
/// session on each tick (one task and no channels keep an idle connection at a few KB).
async fn serve(conn: Conn, mut socket: WebSocket) {
    // Boxed: this future exists only during the handshake, so its size stays out of the task's.
    let Some((user_id, session_id)) = Box::pin(authenticate(&conn, &mut socket)).await else {
        return;
    };
    let device = conn.push.register(&user_id, &session_id);
    tracing::debug!(%user_id, conn = device.id, "websocket authenticated");
    let interval = conn.ping_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last_pong = Instant::now();
    loop {
        if let Some(why) = device.state.eviction() {
            let (code, reason) = match why {
                Eviction::Replaced => (CLOSE_REPLACED, "too many devices; this one is the oldest"),
                Eviction::TooSlow => (CLOSE_TOO_SLOW, "too slow: pushes were not read in time; reload history"),
            };
            let _ = tokio::time::timeout(conn.send_timeout, socket.send(close(code, reason))).await;
            return;
        }
        if let Some(push) = device.next_push() {
            if !send_push(&mut socket, &device, push, conn.send_timeout).await {
                return;
            }
            continue;
        }
        // Every branch is cancel-safe: a wake-up lost to another branch is made up for by the
        // checks at the top of the loop.
        tokio::select! {
            biased;
            () = device.state.wake.notified() => {}
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Pong(_))) => last_pong = Instant::now(),
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {} // clients have nothing more to say; pings are answered by axum
            },
            _ = ticker.tick() => {
                if last_pong.elapsed() > interval * 2 + interval / 2 {
                    tracing::debug!(%user_id, "websocket missed its pongs; closing");
                    return;
                }
                // A session that expired (or was revoked) ends its connections too.
                let live = Box::pin(conn.sessions.resolve(&session_id)).await;
                let frame = if matches!(live, Ok(Some(ref u)) if *u == user_id) {
                    WsMessage::Ping(Default::default())
                } else {
                    close(CLOSE_UNAUTHORIZED, "session expired")
                };
                let closing = matches!(frame, WsMessage::Close(_));
                if !matches!(tokio::time::timeout(conn.send_timeout, socket.send(frame)).await, Ok(Ok(()))) || closing {
                    return;
                }
            }
        }
    }
}

/// Writes one push within `send_timeout`, recording its latency; false ends the connection.
async fn send_push(socket: &mut WebSocket, device: &Registration, push: Push, send_timeout: Duration) -> bool {
    let started = Instant::now();
    let sent = tokio::time::timeout(send_timeout, socket.send(WsMessage::Binary(push.frame.clone()))).await;
    Hop::WebsocketWrite.record(started);
    device.state.sent(push.cost());
    match sent {
        Ok(Ok(())) => {
            metrics::histogram!("chatmesh_gateway_push_seconds", "path" => push.path.label())
                .record(push.accepted.elapsed().as_secs_f64());
            true
        }
        Ok(Err(_)) => false,
        Err(_) => {
            metrics::counter!("chatmesh_gateway_websocket_evictions_total", "reason" => "stuck").increment(1);
            false
        }
    }
}

/// Waits for the auth frame; on failure closes the socket with a reason and returns `None`.
async fn authenticate(conn: &Conn, socket: &mut WebSocket) -> Option<(String, String)> {
    let first = tokio::time::timeout(conn.auth_timeout, socket.recv()).await;
    let refusal = match first {
        Err(_) => "no ClientAuthenticationReq in time",
        Ok(Some(Ok(WsMessage::Binary(bytes)))) => match auth_session(&bytes) {
            Ok(session_id) => match conn.sessions.resolve(&session_id).await {
                Ok(Some(user_id)) => return Some((user_id, session_id)),
                Ok(None) => "invalid or expired session",
                Err(e) => {
                    tracing::error!(error = %e, "session store unavailable");
                    "session store unavailable"
                }
            },
            Err(why) => why,
        },
        Ok(Some(Ok(_))) => "first frame must be a binary ClientAuthenticationReq",
        Ok(_) => return None,
    };
    let _ = socket.send(close(CLOSE_UNAUTHORIZED, refusal)).await;
    None
}

/// The login session an auth frame names, or why the frame is refused.
pub fn auth_session(frame: &[u8]) -> Result<String, &'static str> {
    let req = ClientAuthenticationReq::decode(frame).map_err(|_| "first frame is not a ClientAuthenticationReq")?;
    if req.session_id.is_empty() || req.session_id.len() > 128 {
        return Err("invalid or expired session");
    }
    Ok(req.session_id)
}

fn close(code: u16, reason: &str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame { code, reason: reason.into() }))
}
