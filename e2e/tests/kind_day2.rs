//! The kind suite's upgrade checks (`e2e/kind/upgrade.sh` runs them one at a time against the
//! cluster's gateway, `CHATMESH_E2E_GATEWAY_HTTP/_WS`); each skips unless its variable is set:
//!
//! - `record_history`, `record_history_to_lose`, `history_is_back`: around a backup and restore
//!   (`CHATMESH_E2E_KIND_HISTORY`: a JSON file that carries the chat and its texts from one
//!   step to the next): what was sent before the backup is back exactly once, what was sent
//!   after it is gone.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chatmesh_e2e::Client;
use serde::{Deserialize, Serialize};
use support::external;
use support::stream::{PASSWORD, chat, stored, stored_once};

/// The cluster's gateway and the value of `var`, or a skip.
fn setup(var: &str) -> Option<(Client, String)> {
    let value = std::env::var(var).ok().filter(|v| !v.is_empty());
    let gateway = external::gateway();
    match (value, gateway) {
        (Some(value), Some(g)) => Some((Client::new(&g.http, &g.ws), value)),
        (Some(_), None) => panic!("{var} is set but CHATMESH_E2E_GATEWAY_HTTP/_WS are not"),
        (None, _) => {
            eprintln!("{var} is unset: skipping (a step of e2e/kind/day2.sh)");
            None
        }
    }
}

/// What one step leaves for the next.
#[derive(Serialize, Deserialize)]
struct History {
    a_nick: String,
    b_nick: String,
    chat: String,
    since: i64,
    /// Sent before the backup: must be there after the restore.
    kept: Vec<String>,
    /// Sent after the backup: must be gone after the restore.
    lost: Vec<String>,
}

fn load(path: &PathBuf) -> History {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e} (run record_history first)", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn save(path: &PathBuf, h: &History) {
    std::fs::write(path, serde_json::to_string_pretty(h).unwrap()).unwrap();
}

/// `n` texts sent by a, each acknowledged.
async fn send(client: &Client, h: &History, what: &str, n: usize) -> Vec<String> {
    let a = client.login(&h.a_nick, PASSWORD).await.unwrap();
    let mut texts = Vec::new();
    for i in 0..n {
        let text = format!("{what} {i} {}", &chatmesh_common::new_id()[..8]);
        client.send_text(&a, &h.chat, &text).await.unwrap();
        texts.push(text);
    }
    texts
}

/// Logs in, retrying for a while as the gateway asks while the services it calls were just
/// rolled out (a "retry later" answer, never a refusal of the password).
async fn login_when_up(client: &Client, nick: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.login(nick, PASSWORD).await {
            Ok(session) => return session,
            Err(e) if format!("{e:?}").contains("retry later") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("{nick} logs in after the restore: {e:?}"),
        }
    }
}

#[tokio::test]
async fn record_history() {
    let Some((client, path)) = setup("CHATMESH_E2E_KIND_HISTORY") else { return };
    let path = PathBuf::from(path);
    let ch = chat(&client).await;
    let mut h = History {
        a_nick: ch.a_nick,
        b_nick: ch.b_nick,
        chat: ch.chat,
        since: chatmesh_common::unix_now() - 1,
        kept: vec![],
        lost: vec![],
    };
    h.kept = send(&client, &h, "kept", 20).await;
    // Stored (the storage consumer is asynchronous) before the backup is taken.
    let deadline = Instant::now() + Duration::from_secs(60);
    if let Err(e) = stored_once(&client, &ch.b, &h.chat, h.since, &h.kept, deadline).await {
        panic!("{e}");
    }
    save(&path, &h);
}

#[tokio::test]
async fn record_history_to_lose() {
    let Some((client, path)) = setup("CHATMESH_E2E_KIND_HISTORY") else { return };
    let path = PathBuf::from(path);
    let mut h = load(&path);
    h.lost = send(&client, &h, "lost", 5).await;
    let b = client.login(&h.b_nick, PASSWORD).await.unwrap();
    let mut all = h.kept.clone();
    all.extend(h.lost.iter().cloned());
    let deadline = Instant::now() + Duration::from_secs(60);
    if let Err(e) = stored_once(&client, &b, &h.chat, h.since, &all, deadline).await {
        panic!("{e}");
    }
    save(&path, &h);
}

#[tokio::test]
async fn history_is_back() {
    let Some((client, path)) = setup("CHATMESH_E2E_KIND_HISTORY") else { return };
    let h = load(&PathBuf::from(path));
    // The accounts are in the restored database too: both log in.
    let b = login_when_up(&client, &h.b_nick).await;
    login_when_up(&client, &h.a_nick).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    if let Err(e) = stored_once(&client, &b, &h.chat, h.since, &h.kept, deadline).await {
        panic!("after the restore: {e}");
    }
    let texts = stored(&client, &b, &h.chat, h.since).await.expect("history answers");
    let back: Vec<&String> = h.lost.iter().filter(|t| texts.contains(t)).collect();
    assert!(back.is_empty(), "sent after the backup, yet there after the restore: {back:?}");
    assert_eq!(texts.len(), h.kept.len(), "the history after the restore: {texts:?}");
    eprintln!("{} messages back exactly once, {} sent after the backup gone", h.kept.len(), h.lost.len());
}
