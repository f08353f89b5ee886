//! The notification WebSocket: the client authenticates with one binary
//! `ClientAuthenticationReq` (no reply, as in the seed), then receives binary `NotifyMessage`
//! frames. A bad or expired session closes the socket; the server pings to detect dead peers.

use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use chatmesh_common::telemetry::Hop;
use chatmesh_proto::ClientAuthenticationReq;
use futures_util::{SinkExt, StreamExt};
use prost::Message;

use crate::Gateway;
use crate::push::Eviction;

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
    let registration = gw.push.register(&user_id, &session_id);
    tracing::debug!(%user_id, conn = registration.id, "websocket authenticated");
    let (tx, mut rx) = socket.split();
    // Pings and closes go through the writer too, but the reader below never waits for it:
    // a full control queue means the writer is stuck, and the connection ends.
    let (control, control_rx) = tokio::sync::mpsc::channel::<WsMessage>(4);
    let mut writer = tokio::spawn(write_frames(tx, registration, control_rx, gw.args.ws_send_timeout));
    let interval = gw.args.ws_ping_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last_pong = Instant::now();
    loop {
        tokio::select! {
            _ = &mut writer => return,
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
                    let _ = control.try_send(close(CLOSE_UNAUTHORIZED, "session expired"));
                    break;
                }
                if control.try_send(WsMessage::Ping(Default::default())).is_err() {
                    break;
                }
            }
        }
    }
    // Give the writer a moment to send a close frame, then drop the connection regardless.
    drop(control);
    if tokio::time::timeout(gw.args.ws_send_timeout.min(std::time::Duration::from_secs(1)), &mut writer).await.is_err()
    {
        writer.abort();
    }
}

/// Sends queued pushes and control frames; each send gets `send_timeout`. Ends (closing the
/// socket with a reason where it still can) when the device is evicted or a send is stuck.
async fn write_frames(
    mut tx: futures_util::stream::SplitSink<WebSocket, WsMessage>,
    mut registration: crate::push::Registration,
    mut control: tokio::sync::mpsc::Receiver<WsMessage>,
    send_timeout: std::time::Duration,
) {
    let state = registration.state.clone();
    loop {
        let (message, cost, push) = tokio::select! {
            biased;
            _ = state.wake.notified() => {
                let (code, reason) = match state.eviction() {
                    Some(Eviction::Replaced) => (CLOSE_REPLACED, "too many devices; this one is the oldest"),
                    _ => (CLOSE_TOO_SLOW, "too slow: pushes were not read in time; reload history"),
                };
                let _ = tokio::time::timeout(send_timeout, tx.send(close(code, reason))).await;
                return;
            }
            ctl = control.recv() => match ctl {
                Some(message) => {
                    let closing = matches!(message, WsMessage::Close(_));
                    let _ = tokio::time::timeout(send_timeout, tx.send(message)).await;
                    if closing {
                        return;
                    }
                    continue;
                }
                None => return,
            },
            push = registration.frames.recv() => match push {
                Some(push) => (WsMessage::Binary(push.frame.clone()), push.cost(), push),
                None => return,
            },
        };
        let started = Instant::now();
        let sent = tokio::time::timeout(send_timeout, tx.send(message)).await;
        Hop::WebsocketWrite.record(started);
        state.sent(cost);
        match sent {
            Ok(Ok(())) => {
                metrics::histogram!("chatmesh_gateway_push_seconds", "path" => push.path.label())
                    .record(push.accepted.elapsed().as_secs_f64());
            }
            Ok(Err(_)) => return,
            Err(_) => {
                metrics::counter!("chatmesh_gateway_websocket_evictions_total", "reason" => "stuck").increment(1);
                return;
            }
        }
    }
}

/// Waits for the auth frame; on failure closes the socket with a reason and returns `None`.
async fn authenticate(gw: &Gateway, socket: &mut WebSocket) -> Option<(String, String)> {
    let first = tokio::time::timeout(gw.args.ws_auth_timeout, socket.recv()).await;
    let refusal = match first {
        Err(_) => "no ClientAuthenticationReq in time",
        Ok(Some(Ok(WsMessage::Binary(bytes)))) => match auth_session(&bytes) {
            Ok(session_id) => match gw.sessions.resolve(&session_id).await {
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
