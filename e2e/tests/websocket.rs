//! The notification WebSocket: authentication by `ClientAuthenticationReq` on the seed's port
//! (any path) and on `/ws` of the HTTP port, refusal of bad sessions and bad frames, pings.

mod support;

use std::time::Duration;

use chatmesh_e2e::Event;
use support::{Backend, Stack};

const FLAGS: &[&str] = &["--ws-ping-interval=200ms", "--ws-auth-timeout=1s"];

async fn stacks() -> Vec<Stack> {
    let mut out = vec![Stack::start_with(Backend::Standalone, FLAGS).await.unwrap()];
    out.extend(Stack::start_with(Backend::Real, FLAGS).await);
    out
}

fn closed_with(event: Event, reason: &str) {
    match event {
        Event::Closed(Some((code, why))) => {
            assert_eq!(code, 4001);
            assert!(why.contains(reason), "{why}");
        }
        other => panic!("expected a close with {reason:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_sessions_stay_connected_and_are_pinged() {
    for s in stacks().await {
        let (_, session) = s.user("ws").await;
        let mut on_seed_port = s.client.notifications("/any/path/at/all", &session).await.unwrap();
        let http_ws = s.http.replace("http://", "ws://");
        let mut on_http_port = s.client.websocket(&http_ws, "/ws").await.unwrap();
        on_http_port
            .send_raw(
                chatmesh_proto::ClientAuthenticationReq { request_id: "r".into(), session_id: session.clone() }
                    .encode(),
            )
            .await
            .unwrap();
        // Both read at once: a client that stops reading cannot answer pings and is dropped.
        let (a, b) =
            tokio::join!(on_seed_port.next(Duration::from_millis(900)), on_http_port.next(Duration::from_millis(900)));
        assert_eq!((a, b), (Event::Quiet, Event::Quiet));
        assert!(on_seed_port.pings >= 2 && on_http_port.pings >= 2, "{} / {}", on_seed_port.pings, on_http_port.pings);
        on_seed_port.close().await;
        on_http_port.close().await;
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sessions_and_frames_are_closed() {
    for s in stacks().await {
        let mut ws = s.client.notifications("/ws", "no-such-session").await.unwrap();
        closed_with(ws.next(Duration::from_secs(3)).await, "invalid or expired session");
        let mut ws = s.client.websocket(&s.ws, "/").await.unwrap();
        ws.send_raw(vec![0xff, 0xff, 0xff]).await.unwrap();
        closed_with(ws.next(Duration::from_secs(3)).await, "not a ClientAuthenticationReq");
        let mut ws = s.client.websocket(&s.ws, "/").await.unwrap();
        closed_with(ws.next(Duration::from_secs(3)).await, "in time");
        s.stop().await;
    }
}

/// A session that ends (here: logout) closes its open connections at the next ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ends_closes_its_websocket() {
    for s in stacks().await {
        let (_, session) = s.user("leaving").await;
        let mut ws = s.client.notifications("/ws", &session).await.unwrap();
        assert_eq!(ws.next(Duration::from_millis(500)).await, Event::Quiet, "a live session stays connected");
        let req = chatmesh_proto::UserLogoutReq {
            request_id: chatmesh_e2e::rid(),
            session_id: Some(session.clone()),
            ..Default::default()
        };
        let _: chatmesh_proto::UserLogoutRsp = s.client.ok("/service/user/logout", &req).await.unwrap();
        closed_with(ws.next(Duration::from_secs(3)).await, "session expired");
        s.stop().await;
    }
}

trait Encode {
    fn encode(&self) -> Vec<u8>;
}
impl<T: prost::Message> Encode for T {
    fn encode(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}
