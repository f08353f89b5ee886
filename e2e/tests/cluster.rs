//! Day-2 scenarios on a deployment that the test disrupts from outside: `e2e/kind/run.sh` runs
//! them against the kind cluster, one at a time, with `CHATMESH_E2E_DAY2` set to the command of
//! the operations (`bash e2e/kind/day2.sh`: delete pods, back up, drop a table, restore).
//! Without `CHATMESH_E2E_GATEWAY_HTTP`/`_WS` and `CHATMESH_E2E_DAY2` they skip with a line: a
//! local run has no cluster (e2e/tests/chaos.rs kills local processes and servers instead).

mod support;

use std::time::{Duration, Instant};

use chatmesh_e2e::Client;
use support::stream::{self, stored, stored_once};
use tokio::sync::watch;

/// Most sends of each sender of a stream.
const MAX_SENDS: usize = 600;
/// How long the stream runs before the disruption, and after its command returned (half with
/// the first stream, half with a second one that shows the new pods take sends).
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

/// The pods that store and route messages are deleted (graceful: SIGTERM, then new pods) in the
/// middle of a stream of sends: every send that was acknowledged is in history exactly once,
/// and sends are acknowledged again after the pods were replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_deleted_mid_stream_lose_nothing_acknowledged() {
    let Some(s) = setting() else { return };
    let ch = stream::chat(&s.client).await;
    let since = chatmesh_common::unix_now() - 1;
    let (stop_tx, stop) = watch::channel(false);
    let sending = stream::stream(&s.client, &ch.a, &ch.chat, "pod", MAX_SENDS, &stop);
    tokio::time::sleep(BEFORE).await;
    day2(&s, &["delete-pods"]).await;
    tokio::time::sleep(AFTER / 2).await;
    stop_tx.send(true).unwrap();
    let mut acked = sending.await.unwrap();
    // The replaced pods take sends again.
    let (stop_tx, stop) = watch::channel(false);
    let again = stream::stream(&s.client, &ch.a, &ch.chat, "again", MAX_SENDS, &stop);
    tokio::time::sleep(AFTER / 2).await;
    stop_tx.send(true).unwrap();
    let again = again.await.unwrap();
    eprintln!(
        "{} sends acknowledged, {} of them in the last {} s",
        acked.len() + again.len(),
        again.len(),
        AFTER.as_secs() / 2
    );
    assert!(!again.is_empty(), "no send was acknowledged in the {} s before the stream stopped", AFTER.as_secs() / 2);
    acked.extend(again);
    stored_once(&s.client, &ch.b, &ch.chat, since, &acked, Instant::now() + STORED_WITHIN).await.unwrap();
}

/// A backup (a Job from the operator's CronJob), the message table dropped, then the restore of
/// operator/README.md: the history written before the backup is back, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_dropped_table_then_restore_brings_history_back() {
    let Some(s) = setting() else { return };
    let ch = stream::chat(&s.client).await;
    let (b, chat) = (&ch.b, &ch.chat);
    let since = chatmesh_common::unix_now() - 1;
    let texts: Vec<String> = (0..5).map(|i| format!("before the backup {i}")).collect();
    for t in &texts {
        s.client.send_text(&ch.a, chat, t).await.unwrap();
    }
    // Acknowledged is not yet stored (the message service consumes from the queue).
    let within = |secs| Instant::now() + Duration::from_secs(secs);
    stored_once(&s.client, b, chat, since, &texts, within(60)).await.unwrap();
    let dump = day2(&s, &["backup"]).await;
    day2(&s, &["drop-table", "message"]).await;
    let gone = stored(&s.client, b, chat, since).await;
    assert!(gone.as_ref().is_none_or(|t| t.is_empty()), "history still there after DROP TABLE: {gone:?}");
    day2(&s, &["restore", &dump]).await;
    // The services come back (the operator scales them up again) with the restored history.
    stored_once(&s.client, b, chat, since, &texts, within(300)).await.unwrap();
}
