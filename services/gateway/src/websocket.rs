//! The notification WebSocket: the client authenticates with one binary
//! `ClientAuthenticationReq` (no reply, as in the seed), then receives binary `NotifyMessage`
//! frames. A bad or expired session closes the socket; the server pings to detect dead peers.

use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use chatmesh_proto::ClientAuthenticationReq;
use futures_util::{SinkExt, StreamExt};
use prost::Message;

use crate::Gateway;

/// Close code for a refused session (4000-4999 are the application's).
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// The auth frame is tiny; nothing else is expected from clients.
const MAX_CLIENT_FRAME: usize = 64 * 1024;

pub fn router(gateway: Gateway) -> Router {
    Router::new().fallback(upgrade).with_state(gateway)
}

pub async fn upgrade(State(gw): State<Gateway>, ws: WebSocketUpgrade) -> Response {
    // A small read buffer keeps idle connections at a few KB instead of ~130 KB each.
    ws.read_buffer_size(4096)
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| serve(gw, socket))
}

async fn serve(gw: Gateway, mut socket: WebSocket) {
    let Some((user_id, session_id)) = authenticate(&gw, &mut socket).await else {
        return;
    };
    let mut registration = gw.push.register(&user_id, &session_id);
    tracing::debug!(%user_id, conn = registration.id, "websocket authenticated");
    let (mut tx, mut rx) = socket.split();
    let interval = gw.args.ws_ping_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last_pong = Instant::now();
    loop {
        tokio::select! {
            frame = registration.frames.recv() => {
                let Some(frame) = frame else { break };
                if tx.send(WsMessage::Binary(frame.into())).await.is_err() {
                    break;
                }
            }
            incoming = rx.next() => match incoming {
                Some(Ok(WsMessage::Pong(_))) => last_pong = Instant::now(),
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {} // clients have nothing more to say; pings are answered by axum
            },
            _ = ticker.tick() => {
                if last_pong.elapsed() > interval * 2 + interval / 2 {
                    tracing::debug!(%user_id, "websocket missed its pongs; closing");
                    break;
                }
                // A session that expired (or was revoked) ends its connections too.
                if !matches!(gw.sessions.resolve(&session_id).await, Ok(Some(ref u)) if *u == user_id) {
                    let _ = tx.send(close(CLOSE_UNAUTHORIZED, "session expired")).await;
                    break;
                }
                if tx.send(WsMessage::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Waits for the auth frame; on failure closes the socket with a reason and returns `None`.
async fn authenticate(gw: &Gateway, socket: &mut WebSocket) -> Option<(String, String)> {
    let first = tokio::time::timeout(gw.args.ws_auth_timeout, socket.recv()).await;
    let refusal = match first {
        Err(_) => "no ClientAuthenticationReq in time",
        Ok(Some(Ok(WsMessage::Binary(bytes)))) => match ClientAuthenticationReq::decode(bytes.as_ref()) {
            Ok(req) => match gw.sessions.resolve(&req.session_id).await {
                Ok(Some(user_id)) => return Some((user_id, req.session_id)),
                Ok(None) => "invalid or expired session",
                Err(e) => {
                    tracing::error!(error = %e, "session store unavailable");
                    "session store unavailable"
                }
            },
            Err(_) => "first frame is not a ClientAuthenticationReq",
        },
        Ok(Some(Ok(_))) => "first frame must be a binary ClientAuthenticationReq",
        Ok(_) => return None,
    };
    let _ = socket.send(close(CLOSE_UNAUTHORIZED, refusal)).await;
    None
}

fn close(code: u16, reason: &str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame { code, reason: reason.into() }))
}
