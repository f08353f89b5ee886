//! `--web-dir`: the gateway serves the web client's files at `/` without shadowing any API
//! route, `/ws` or the health endpoints; without the flag nothing is served there.

mod support;

use std::time::Duration;

use chatmesh_e2e::Event;
use support::{Backend, Stack};

async fn get(url: &str) -> (u16, String) {
    let rsp = reqwest::get(url).await.unwrap();
    (rsp.status().as_u16(), rsp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_dir_serves_the_client_and_leaves_the_api_alone() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<!doctype html><title>chatmesh web</title>").unwrap();
    std::fs::create_dir(web.path().join("assets")).unwrap();
    std::fs::write(web.path().join("assets/app.js"), "console.log('hi')").unwrap();
    // Files named like API paths must not win over the routes.
    std::fs::create_dir_all(web.path().join("service/user")).unwrap();
    std::fs::write(web.path().join("service/user/username_login"), "shadowed").unwrap();
    std::fs::write(web.path().join("healthz"), "shadowed").unwrap();

    let flag = format!("--web-dir={}", web.path().display());
    let s = Stack::start_with(Backend::Standalone, &[&flag]).await.unwrap();
    let (status, body) = get(&format!("{}/", s.http)).await;
    assert_eq!((status, body.contains("<title>chatmesh web</title>")), (200, true), "{body}");
    let rsp = reqwest::get(format!("{}/index.html", s.http)).await.unwrap();
    assert_eq!(rsp.headers()["content-type"], "text/html");
    let rsp = reqwest::get(format!("{}/assets/app.js", s.http)).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(rsp.headers()["content-type"].to_str().unwrap().contains("javascript"));
    assert_eq!(get(&format!("{}/no/such/file", s.http)).await.0, 404);
    // Writes to an unknown path are 404 as without a web dir (the file server only reads).
    let post = reqwest::Client::new().post(format!("{}/service/user/no_such_route", s.http)).body("x").send().await;
    assert_eq!(post.unwrap().status(), 404);

    // A GET of an API path is still the route's (405), never the file of that name.
    let (status, body) = get(&format!("{}/service/user/username_login", s.http)).await;
    assert_eq!(status, 405, "{body}");
    assert_ne!(body, "shadowed");

    // The API, health and the WebSocket answer as before.
    assert_eq!(get(&format!("{}/healthz", s.http)).await, (200, "ok".to_string()));
    let (_, session) = s.user("web").await;
    assert!(!s.client.user_info(&session).await.unwrap().user_id.is_empty());
    let err = s.client.login("nobody-here", "pass_word-1").await.unwrap_err();
    assert!(err.to_string().contains("wrong"), "{err}");
    let http_ws = s.http.replace("http://", "ws://");
    let mut ws = s.client.websocket(&http_ws, "/ws").await.unwrap();
    ws.send_raw(vec![0xff, 0xff, 0xff]).await.unwrap();
    match ws.next(Duration::from_secs(3)).await {
        Event::Closed(Some((4001, why))) => assert!(why.contains("ClientAuthenticationReq"), "{why}"),
        other => panic!("expected the WebSocket's refusal, got {other:?}"),
    }
    s.stop().await;
}

#[test]
fn a_web_dir_without_index_html_is_refused_at_start_up() {
    use clap::Parser;
    let empty = tempfile::tempdir().unwrap();
    let flag = format!("--web-dir={}", empty.path().display());
    let err = chatmesh::Cli::try_parse_from(["chatmesh", "--target=gateway", flag.as_str()]).unwrap_err();
    assert!(err.to_string().contains("no index.html in"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_web_dir_nothing_is_served_at_the_root() {
    let s = Stack::start(Backend::Standalone).await.unwrap();
    assert_eq!(get(&format!("{}/", s.http)).await.0, 404);
    assert_eq!(get(&format!("{}/index.html", s.http)).await.0, 404);
    assert_eq!(get(&format!("{}/healthz", s.http)).await, (200, "ok".to_string()));
    s.stop().await;
}
