//! Day-2 scenarios on a deployment that the test disrupts from outside: `e2e/kind/run.sh` runs
//! them against the kind cluster, one at a time, with `CHATMESH_E2E_DAY2` set to the command of
//! the operations (`bash e2e/kind/day2.sh`: delete pods, back up, drop a table, restore).
//! Without `CHATMESH_E2E_GATEWAY_HTTP`/`_WS` and `CHATMESH_E2E_DAY2` they skip with a line: a
//! local run has no cluster (e2e/tests/chaos.rs kills local processes and servers instead).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chatmesh_e2e::Client;
use chatmesh_proto::MessageInfo;
use chatmesh_proto::message_content::MsgContent;
use tokio::sync::watch;

/// Senders in parallel; each sends every `GAP` until stopped (or `MAX_SENDS`).
const WORKERS: usize = 3;
const GAP: Duration = Duration::from_millis(200);
const MAX_SENDS: usize = 600;
/// How long the stream runs before the disruption, and after its command returned.
const BEFORE: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_secs(30);
/// Every acknowledged message is in history by then (after the stream stopped).
const STORED_WITHIN: Duration = Duration::from_secs(120);

struct Setting {
    client: Client,
    day2: String,
}

fn setting() -> Option<Setting> {
    let vars = ["CHATMESH_E2E_GATEWAY_HTTP", "CHATMESH_E2E_GATEWAY_WS", "CHATMESH_E2E_DAY2"];
    match vars.map(std::env::var) {
        [Ok(http), Ok(ws), Ok(day2)] => Some(Setting { client: Client::new(&http, &ws), day2 }),
        _ => {
            eprintln!("skipped: needs {} (e2e/kind/run.sh sets them)", vars.join(", "));
            None
        }
    }
}

/// Runs the day-2 operation `args` (`$CHATMESH_E2E_DAY2 args...`); returns its stdout's last line.
async fn day2(s: &Setting, args: &[&str]) -> String {
    eprintln!("day-2 operation: {} {}", s.day2, args.join(" "));
    let script = format!("{} \"$@\"", s.day2);
    let out = tokio::process::Command::new("bash").args(["-c", &script, "day2"]).args(args).output().await.unwrap();
    // `output()` captures both streams: the operation's diagnostics go on with the test's.
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the day-2 operation {args:?} failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string()
}

/// Two friends (sender, recipient) and their one-to-one chat.
async fn chat(c: &Client) -> (String, String, String) {
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let nick = format!("k{}", &chatmesh_common::new_id()[..10]);
        c.register(&nick, "pass_word-1").await.unwrap();
        sessions.push(c.login(&nick, "pass_word-1").await.unwrap());
    }
    let (a, b) = (sessions[0].clone(), sessions[1].clone());
    let a_id = c.user_info(&a).await.unwrap().user_id;
    let b_id = c.user_info(&b).await.unwrap().user_id;
    let event = c.apply(&a, &b_id).await.unwrap();
    c.process(&b, &event, &a_id, true).await.unwrap();
    let chat =
        c.chat_sessions(&a).await.unwrap().into_iter().find(|s| s.single_chat_friend_id.as_deref() == Some(&b_id));
    (a, b, chat.unwrap().chat_session_id)
}

/// The acknowledged texts, each with the moment its send was acknowledged.
fn stream(
    c: &Client,
    session: &str,
    chat: &str,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<(String, Instant)>> {
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (c, session, chat, stop) = (c.clone(), session.to_string(), chat.to_string(), stop.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..MAX_SENDS {
                    if *stop.borrow() {
                        break;
                    }
                    let text = format!("podw{w} n{i}");
                    if c.send_text(&session, &chat, &text).await.is_ok() {
                        acked.push((text, Instant::now()));
                    }
                    tokio::time::sleep(GAP).await;
                }
                acked
            })
        })
        .collect();
    tokio::spawn(async move {
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap());
        }
        all
    })
}

fn text(m: &MessageInfo) -> Option<String> {
    match m.message.as_ref()?.msg_content.as_ref()? {
        MsgContent::StringMessage(t) => Some(t.content.clone()),
        _ => None,
    }
}

/// Every stored text of the chat since `since` (Unix seconds), in 5-second pages.
async fn stored(c: &Client, session: &str, chat: &str, since: i64) -> Option<Vec<String>> {
    let mut texts = Vec::new();
    let now = chatmesh_common::unix_now() + 1;
    let mut t = since;
    while t <= now {
        texts.extend(c.history(session, chat, t, t + 4).await.ok()?.iter().filter_map(text));
        t += 5;
    }
    Some(texts)
}

/// Waits until every text of `want` is in the chat's history (since `since`), then checks none
/// is there twice; returns the history's texts.
async fn assert_stored_once(c: &Client, session: &str, chat: &str, since: i64, want: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    let texts = loop {
        let texts = stored(c, session, chat, since).await.unwrap_or_default();
        let have: HashSet<&String> = texts.iter().collect();
        let missing: Vec<&String> = want.iter().filter(|t| !have.contains(t)).collect();
        if missing.is_empty() {
            break texts;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} messages not in history within {} s: {:?}",
            missing.len(),
            want.len(),
            within.as_secs(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for t in &texts {
        *counts.entry(t).or_default() += 1;
    }
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
}

/// The pods that store and route messages are deleted (graceful: SIGTERM, then new pods) in the
/// middle of a stream of sends: every send that was acknowledged is in history exactly once,
/// and sends are acknowledged again after the pods were replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_deleted_mid_stream_lose_nothing_acknowledged() {
    let Some(s) = setting() else { return };
    let (a, b, chat) = chat(&s.client).await;
    let since = chatmesh_common::unix_now() - 1;
    let (stop_tx, stop) = watch::channel(false);
    let sending = stream(&s.client, &a, &chat, &stop);
    tokio::time::sleep(BEFORE).await;

    day2(&s, &["delete-pods"]).await;
    let disrupted = Instant::now();
    tokio::time::sleep(AFTER).await;
    stop_tx.send(true).unwrap();
    let acked = sending.await.unwrap();
    let after = acked.iter().filter(|(_, at)| *at > disrupted + AFTER / 2).count();
    eprintln!("{} sends acknowledged, {after} of them in the last {} s", acked.len(), AFTER.as_secs() / 2);
    assert!(after > 0, "no send was acknowledged in the {} s before the stream stopped", AFTER.as_secs() / 2);
    let acked: Vec<String> = acked.into_iter().map(|(t, _)| t).collect();
    assert_stored_once(&s.client, &b, &chat, since, &acked, STORED_WITHIN).await;
}

/// A backup (a Job from the operator's CronJob), the message table dropped, then the restore of
/// operator/README.md: the history written before the backup is back, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_dropped_table_then_restore_brings_history_back() {
    let Some(s) = setting() else { return };
    let (a, b, chat) = chat(&s.client).await;
    let since = chatmesh_common::unix_now() - 1;
    let texts: Vec<String> = (0..5).map(|i| format!("before the backup {i}")).collect();
    for t in &texts {
        s.client.send_text(&a, &chat, t).await.unwrap();
    }
    // Acknowledged is not yet stored (the message service consumes from the queue).
    assert_stored_once(&s.client, &b, &chat, since, &texts, Duration::from_secs(60)).await;
    let dump = day2(&s, &["backup"]).await;
    day2(&s, &["drop-table", "message"]).await;
    let gone = stored(&s.client, &b, &chat, since).await;
    assert!(gone.as_ref().is_none_or(|t| t.is_empty()), "history still there after DROP TABLE: {gone:?}");
    day2(&s, &["restore", &dump]).await;
    // The services come back (the operator scales them up again) with the restored history.
    assert_stored_once(&s.client, &b, &chat, since, &texts, Duration::from_secs(300)).await;
}
