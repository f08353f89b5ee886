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
use futures_util::SinkExt;
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
            if !send_pushes(&mut socket, &device, push, conn.send_timeout).await {
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

/// The most frames [`send_pushes`] gathers into one write, and their most bytes (the socket's
/// write buffer keeps the capacity a write needed).
const PUSH_BATCH: usize = 64;
const PUSH_BATCH_BYTES: usize = 64 * 1024;

/// Writes `first` and the pushes queued behind it (up to [`PUSH_BATCH`]) in one flush within
/// `send_timeout`, recording each one's latency; false ends the connection. One write per
/// frame cost a system call per push, and a busy device has many queued (`perf`, standalone
/// burst).
async fn send_pushes(socket: &mut WebSocket, device: &Registration, first: Push, send_timeout: Duration) -> bool {
    let started = Instant::now();
    let mut batch = vec![first];
    let mut bytes = batch[0].frame.len();
    while batch.len() < PUSH_BATCH && bytes < PUSH_BATCH_BYTES {
        let Some(push) = device.next_push() else { break };
        bytes += push.frame.len();
        batch.push(push);
    }
    let write = async {
        for push in &batch {
            socket.feed(WsMessage::Binary(push.frame.clone())).await?;
        }
        socket.flush().await
    };
    let sent = tokio::time::timeout(send_timeout, write).await;
    for push in &batch {
        Hop::WebsocketWrite.record(started);
        device.state.sent(push.cost());
    }
    match sent {
        Ok(Ok(())) => {
            for push in &batch {
                metrics::histogram!("chatmesh_gateway_push_seconds", "path" => push.path.label())
                    .record(push.accepted.elapsed().as_secs_f64());
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as Frame;

    /// Pushes queued faster than the socket is written go out in batches; every frame arrives,
    /// once and in order, across batches cut by count and by bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_pushes_arrive_complete_and_in_order() {
        let store = chatmesh_common::kv::open("memory://", "t").await.unwrap();
        let sessions = Arc::new(chatmesh_common::sessions::LoginSessions::new(store, Duration::from_secs(60)));
        let session = sessions.create("u").await.unwrap();
        let push = crate::push::Connections::default();
        push.configure(64 << 20, 4);
        let conn = {
            let (sessions, push) = (sessions.clone(), push.clone());
            move || Conn {
                sessions: sessions.clone(),
                push: push.clone(),
                auth_timeout: Duration::from_secs(5),
                ping_interval: Duration::from_secs(60),
                send_timeout: Duration::from_secs(5),
            }
        };
        let app = Router::new().route(
            "/",
            get(move |ws: WebSocketUpgrade| async move { ws.on_upgrade(move |socket| serve(conn(), socket)) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.unwrap();
        let auth = ClientAuthenticationReq { session_id: session, ..Default::default() };
        client.send(Frame::Binary(auth.encode_to_vec().into())).await.unwrap();
        while push.connected("u") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Small frames fill batches by count, 10 KB ones by bytes.
        let frames: Vec<Vec<u8>> = (0..500u32)
            .map(|i| {
                let mut f = i.to_be_bytes().to_vec();
                f.resize(if i % 7 == 0 { 10_000 } else { 4 + (i as usize % 50) }, i as u8);
                f
            })
            .collect();
        for f in &frames {
            assert_eq!(push.deliver_frame("u", &crate::push::Push::local(f.clone().into()), None), 1);
        }
        for (i, expected) in frames.iter().enumerate() {
            let got = tokio::time::timeout(Duration::from_secs(10), client.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(got, Frame::Binary(expected.clone().into()), "frame {i}");
        }
        let extra = tokio::time::timeout(Duration::from_millis(200), client.next()).await;
        assert!(extra.is_err(), "nothing more arrives: {extra:?}");
    }
}
