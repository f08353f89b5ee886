//! Crashes, not restarts: each dependency is killed with SIGKILL in the middle of a stream of
//! sends across two real chatmesh processes (everything but storage in one, `--target message`
//! in the other), then started again. Every acknowledged message must then be in history
//! exactly once within 30 s, search must find it once the index caught up, pushes must resume,
//! and neither process may need a restart. Also: SIGTERM while the broker hangs, many
//! processes migrating one empty database at once, and `kill -9` of a standalone process.
//!
//! The killed servers are dedicated instances (`e2e/infra/chaos.sh`, own ports and dirs), never
//! the shared ones the rest of the suite uses. Each is held by one test at a time (a file lock,
//! across test processes too).

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chatmesh_e2e::{Client, Event, Notifications};
use chatmesh_proto::NotifyType;
use support::stream::{Chat, PASSWORD, WORKERS, chat, login_new, stored, stored_once, stream, text};
use support::{create_database, free_port, real_url};
use tokio::sync::watch;

/// Drain time given to the processes; SIGTERM must end them within it (plus a little).
const GRACE: Duration = Duration::from_secs(3);
/// Sends each stream worker makes at most (4 workers: history and search pages stay < 1000).
const MAX_SENDS: usize = 220;

// ---- The real binary --------------------------------------------------------------------------

/// `target/debug/chatmesh` beside this test (e2e/test.sh builds it first), or `CHATMESH_BIN`.
fn binary() -> Option<PathBuf> {
    let path = match std::env::var("CHATMESH_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => std::env::current_exe().ok()?.parent()?.parent()?.join("chatmesh"),
    };
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CHATMESH_REQUIRE_REAL_BACKENDS").is_ok() {
        panic!("no chatmesh binary at {} (cargo build -p chatmesh, as e2e/test.sh does)", path.display());
    }
    eprintln!("no chatmesh binary at {}: skipping", path.display());
    None
}

/// One chatmesh process, killed when dropped.
struct Proc {
    child: tokio::process::Child,
    admin: String,
    log: PathBuf,
    name: String,
}

impl Proc {
    fn spawn(name: &str, bin: &PathBuf, dir: &std::path::Path, args: &[String]) -> Proc {
        let admin_port = free_port();
        let log = dir.join(format!("{name}-{}.log", &chatmesh_common::new_id()[..6]));
        let out = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(bin)
            .args(args)
            .arg(format!("--admin-listen=127.0.0.1:{admin_port}"))
            .arg(format!("--shutdown-grace={}s", GRACE.as_secs()))
            .arg("--log=info,sqlx=warn")
            .env_clear()
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("start chatmesh");
        Proc { child, admin: format!("http://127.0.0.1:{admin_port}"), log, name: name.to_string() }
    }

    fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The end of its log, for failure messages.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let keep = std::env::var("CHATMESH_CHAOS_SHOW_LOGS").map_or(40, |_| 400);
        format!("--- {} log ---\n{}", self.name, lines[lines.len().saturating_sub(keep)..].join("\n"))
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
        let rsp = http.get(format!("{}{path}", self.admin)).send().await.ok()?;
        Some((rsp.status().as_u16(), rsp.text().await.unwrap_or_default()))
    }

    /// Waits until `/readyz` says `ready` (true) or answers 503 (false).
    async fn wait_ready(&mut self, ready: bool, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            assert!(self.alive(), "{} exited\n{}", self.name, self.tail());
            match self.get("/readyz").await {
                Some((200, _)) if ready => return,
                Some((503, _)) if !ready => return,
                _ => {}
            }
            assert!(Instant::now() < deadline, "{}: /readyz never turned {ready}\n{}", self.name, self.tail());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The value of `chatmesh_backend_reconnects_total{backend="..."}` (0 when absent).
    async fn reconnects(&self, backend: &str) -> u64 {
        self.metric(&format!("chatmesh_backend_reconnects_total{{backend=\"{backend}\"}}")).await
    }

    async fn metric(&self, series: &str) -> u64 {
        let (_, text) = self.get("/metrics").await.unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse::<f64>().unwrap_or(0.0) as u64))
            .unwrap_or(0)
    }

    fn signal(&self, signal: i32) {
        let status =
            std::process::Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then how long it took to exit.
    async fn terminate(mut self) -> Duration {
        let start = Instant::now();
        self.signal(15);
        match tokio::time::timeout(GRACE + Duration::from_secs(10), self.child.wait()).await {
            Ok(_) => start.elapsed(),
            Err(_) => panic!("{} ignored SIGTERM\n{}", self.name, self.tail()),
        }
    }
}

// ---- Dedicated servers to kill ----------------------------------------------------------------

/// A dedicated instance of a test server, this test's alone while it lives; stopped on drop.
struct Server {
    name: &'static str,
    url: String,
    _turn: std::fs::File,
}

fn chaos_sh(action: &str, name: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/chaos.sh");
    let out = std::process::Command::new("bash").args([script, action, name]).output().expect("bash runs");
    assert!(out.status.success(), "chaos.sh {action} {name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Server {
    async fn start(name: &'static str) -> Server {
        tokio::task::spawn_blocking(move || {
            let dir = std::env::var("CHATMESH_INFRA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/chatmesh/infra"));
            let dir = dir.join("chaos");
            std::fs::create_dir_all(&dir).unwrap();
            let turn = std::fs::File::create(dir.join(format!("{name}.turn"))).unwrap();
            turn.lock().unwrap(); // another test (or test run) using this server finishes first
            let out = chaos_sh("start", name);
            let url = out.trim().rsplit_once('=').expect("an export line").1.to_string();
            Server { name, url, _turn: turn }
        })
        .await
        .unwrap()
    }

    async fn run(&self, action: &'static str) {
        let name = self.name;
        tokio::task::spawn_blocking(move || chaos_sh(action, name)).await.unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        chaos_sh("stop", self.name);
    }
}

// ---- Two processes on a set of backends -------------------------------------------------------

struct Backends {
    mysql: String,
    redis: String,
    search: String,
    amqp: String,
}

impl Backends {
    /// The shared servers, with `killed` (one of them) replaced by `server`'s URL.
    fn with(server: &Server) -> Option<Backends> {
        let mut b = Backends {
            mysql: real_url("CHATMESH_TEST_MYSQL_URL")?,
            redis: real_url("CHATMESH_TEST_REDIS_URL")?,
            search: real_url("CHATMESH_TEST_ES_URL")?,
            amqp: real_url("CHATMESH_TEST_AMQP_URL")?,
        };
        let slot = match server.name {
            "mariadb" => &mut b.mysql,
            "redis" => &mut b.redis,
            "elasticsearch" => &mut b.search,
            "rabbitmq" => &mut b.amqp,
            other => panic!("no such server {other}"),
        };
        *slot = server.url.clone();
        Some(b)
    }
}

/// The front process (gateway, user, friend, file, transmit), the storage process, and a
/// second gateway (`edge`) whose clients get their pushes from the front through Redis.
struct Pair {
    front: Proc,
    storage: Proc,
    edge: Proc,
    client: Client,
    edge_client: Client,
    _dir: tempfile::TempDir,
}

impl Pair {
    async fn start(bin: &PathBuf, b: &Backends) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("chatmesh_t_{}", &chatmesh_common::new_id()[..12]);
        create_database(&b.mysql, &name).await;
        let mut shared = vec![
            format!("--database-url={}/{name}", b.mysql.trim_end_matches('/')),
            format!("--redis-url={}", b.redis),
            format!("--redis-namespace={name}"),
            format!("--search-url={}", b.search),
            format!("--search-index-prefix={name}"),
            format!("--amqp-url={}", b.amqp),
            format!("--amqp-queue={name}"),
            "--publish-timeout=5s".into(),
            "--sms-provider=log".into(),
        ];
        for service in ["user", "file", "friend", "transmit", "message", "speech"] {
            let port = free_port();
            shared.push(format!("--{service}-listen=127.0.0.1:{port}"));
            shared.push(format!("--{service}-addr=http://127.0.0.1:{port}"));
        }
        let (http, ws) = (free_port(), free_port());
        let mut front_args = shared.clone();
        front_args.extend([
            "--target=gateway,user,friend,file,transmit".to_string(),
            format!("--data-dir={}", dir.path().join("front").display()),
            format!("--http-listen=127.0.0.1:{http}"),
            format!("--ws-listen=127.0.0.1:{ws}"),
        ]);
        let mut storage_args = shared.clone();
        storage_args
            .extend(["--target=message".to_string(), format!("--data-dir={}", dir.path().join("storage").display())]);
        let (edge_http, edge_ws) = (free_port(), free_port());
        let mut edge_args = shared;
        edge_args.extend([
            "--target=gateway".to_string(),
            format!("--data-dir={}", dir.path().join("edge").display()),
            format!("--http-listen=127.0.0.1:{edge_http}"),
            format!("--ws-listen=127.0.0.1:{edge_ws}"),
        ]);
        // Both at once on the empty database: the migration lock makes that safe.
        let mut front = Proc::spawn("front", bin, dir.path(), &front_args);
        let mut storage = Proc::spawn("storage", bin, dir.path(), &storage_args);
        let mut edge = Proc::spawn("edge", bin, dir.path(), &edge_args);
        front.wait_ready(true, Duration::from_secs(60)).await;
        storage.wait_ready(true, Duration::from_secs(60)).await;
        edge.wait_ready(true, Duration::from_secs(60)).await;
        let client = Client::new(&format!("http://127.0.0.1:{http}"), &format!("ws://127.0.0.1:{ws}"));
        let edge_client = Client::new(&format!("http://127.0.0.1:{edge_http}"), &format!("ws://127.0.0.1:{edge_ws}"));
        Pair { front, storage, edge, client, edge_client, _dir: dir }
    }

    fn tails(&self) -> String {
        format!("{}\n{}\n{}", self.front.tail(), self.storage.tail(), self.edge.tail())
    }
}

// ---- What was stored -------------------------------------------------------------------------

/// Every acknowledged text stored exactly once (by `deadline`), else the failure with the logs.
async fn assert_stored_once(p: &Pair, ch: &Chat, since: i64, acked: &[String], deadline: Instant) {
    if let Err(e) = stored_once(&p.client, &ch.b, &ch.chat, since, acked, deadline).await {
        panic!("{e}\n{}", p.tails());
    }
}

/// Waits until search finds every acknowledged text.
async fn assert_searchable(p: &Pair, ch: &Chat, acked: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    for w in 0..WORKERS {
        let key = format!("chaosw{w}");
        let want: HashSet<&String> = acked.iter().filter(|t| t.starts_with(&format!("{key} "))).collect();
        loop {
            let found: HashSet<String> = match p.client.search_messages(&ch.b, &ch.chat, &key).await {
                Ok(list) => list.iter().filter_map(text).collect(),
                Err(_) => HashSet::new(),
            };
            let missing = want.iter().filter(|t| !found.contains(**t)).count();
            if missing == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "search misses {missing} of {} messages of {key}\n{}",
                want.len(),
                p.tails()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Messages sent now reach the recipient's notification socket on the other gateway (opened
/// before the crash). Pushes are best effort (a send in the very moment of recovery may miss
/// its push), so this sends until one arrives.
async fn assert_push_arrives(p: &Pair, ch: &Chat, ws: &mut Notifications) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let marker = format!("after-{}", &chatmesh_common::new_id()[..8]);
        if let Err(e) = p.client.send_text(&ch.a, &ch.chat, &marker).await {
            assert!(Instant::now() < deadline, "no send accepted after the restart: {e}\n{}", p.tails());
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        let wait_until = (Instant::now() + Duration::from_secs(3)).min(deadline);
        loop {
            match ws.next(wait_until.saturating_duration_since(Instant::now())).await {
                Event::Notify(n) if n.notify_type() == NotifyType::ChatMessageNotify => {
                    let msg = n.notify_remarks.and_then(|r| match r {
                        chatmesh_proto::notify_message::NotifyRemarks::NewMessageInfo(m) => m.message_info,
                        _ => None,
                    });
                    if msg.as_ref().and_then(text).as_deref() == Some(marker.as_str()) {
                        return;
                    }
                }
                Event::Notify(_) => {}
                Event::Quiet => break,
                other => panic!("the notification socket closed: {other:?}\n{}", p.tails()),
            }
        }
        assert!(Instant::now() < deadline, "no push reached the other gateway after the restart\n{}", p.tails());
    }
}

/// A pseudo-random duration in `[lo, hi)`.
fn random_between(lo: Duration, hi: Duration) -> Duration {
    let r = u64::from_str_radix(&chatmesh_common::new_id()[..8], 16).unwrap();
    lo + Duration::from_millis(r % (hi - lo).as_millis().max(1) as u64)
}

/// The scenario: a stream of sends over two processes while `server` is SIGKILLed `kills` times
/// at random moments and started again each time (and, with `hang`, then stopped with SIGSTOP
/// for a while: open connections that answer nothing, which only deadlines and heartbeats
/// notice).
async fn crash(server_name: &'static str, kills: usize, hang: bool) -> Option<(Pair, Server)> {
    let bin = binary()?;
    let server = Server::start(server_name).await;
    let backends = Backends::with(&server)?;
    let mut p = Pair::start(&bin, &backends).await;
    let (front_pid, storage_pid, edge_pid) = (p.front.pid(), p.storage.pid(), p.edge.pid());
    let ch = chat(&p.client).await;
    let mut ws = p.edge_client.notifications("/ws", &ch.b).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // presence recorded
    let since = chatmesh_common::unix_now() - 1;
    let (stop, stopped) = watch::channel(false);
    let sender = stream(&p.client, &ch.a, &ch.chat, "chaos", MAX_SENDS, &stopped);

    let mut restarted = Instant::now();
    for _ in 0..kills {
        // A random moment while batches are in flight.
        tokio::time::sleep(random_between(Duration::from_millis(400), Duration::from_millis(2500))).await;
        server.run("kill").await;
        // Whoever needs this server reports it: /readyz turns false.
        match server_name {
            "rabbitmq" => {
                p.storage.wait_ready(false, Duration::from_secs(20)).await;
                p.front.wait_ready(false, Duration::from_secs(20)).await;
            }
            "mariadb" => {
                p.storage.wait_ready(false, Duration::from_secs(20)).await;
                p.front.wait_ready(false, Duration::from_secs(20)).await;
            }
            "redis" => {
                p.front.wait_ready(false, Duration::from_secs(20)).await;
                p.edge.wait_ready(false, Duration::from_secs(20)).await;
            }
            _ => tokio::time::sleep(Duration::from_secs(2)).await, // search is not required
        }
        server.run("restart").await;
        restarted = Instant::now();
        p.front.wait_ready(true, Duration::from_secs(30)).await;
        p.storage.wait_ready(true, Duration::from_secs(30)).await;
        p.edge.wait_ready(true, Duration::from_secs(30)).await;
    }
    if hang {
        tokio::time::sleep(random_between(Duration::from_millis(400), Duration::from_millis(1500))).await;
        server.run("freeze").await;
        p.storage.wait_ready(false, Duration::from_secs(30)).await;
        server.run("thaw").await;
        restarted = Instant::now();
        p.front.wait_ready(true, Duration::from_secs(30)).await;
        p.storage.wait_ready(true, Duration::from_secs(30)).await;
    }
    // Some sends after the last restart too, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true).unwrap();
    let acked = sender.await.unwrap();
    assert!(acked.len() >= 40, "too few sends succeeded to test anything: {}\n{}", acked.len(), p.tails());

    assert_stored_once(&p, &ch, since, &acked, restarted + Duration::from_secs(30)).await;
    let stored_after = restarted.elapsed();
    assert_searchable(&p, &ch, &acked, Duration::from_secs(60)).await;
    eprintln!(
        "{server_name}: {} acknowledged sends, all stored once {:.1} s and searchable {:.1} s after the last recovery",
        acked.len(),
        stored_after.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    assert_push_arrives(&p, &ch, &mut ws).await;
    // Nobody restarted a process: the same two have been running all along.
    assert!(p.front.alive() && p.storage.alive() && p.edge.alive(), "a process died\n{}", p.tails());
    assert_eq!((p.front.pid(), p.storage.pid(), p.edge.pid()), (front_pid, storage_pid, edge_pid));
    // Same login session: b's socket and session survived (b_nick only for failure messages).
    let _ = &ch.b_nick;
    Some((p, server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_killed_repeatedly_mid_stream() {
    let Some((p, server)) = crash("rabbitmq", 3, true).await else { return };
    assert!(
        p.storage.reconnects("amqp-consumer").await >= 4,
        "each crash and the hang: a counted reconnect\n{}",
        p.tails()
    );
    assert!(p.front.reconnects("amqp-publisher").await >= 1);
    // SIGTERM while the broker hangs (stopped, not dead: connections open, nothing answers):
    // both processes are out within the drain time.
    server.run("freeze").await;
    let busy = {
        let c = p.client.clone();
        tokio::spawn(async move { c.login("nobody", "nothing").await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tails = p.tails();
    if std::env::var("CHATMESH_CHAOS_SHOW_LOGS").is_ok() {
        eprintln!("{tails}");
    }
    let (front, storage) = (p.front, p.storage);
    let (f, s) = tokio::join!(front.terminate(), storage.terminate());
    p.edge.terminate().await;
    let limit = GRACE + Duration::from_secs(3);
    assert!(f <= limit && s <= limit, "SIGTERM took front {f:?}, storage {s:?} (grace {GRACE:?})\n{tails}");
    busy.abort();
    server.run("thaw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_killed_mid_stream() {
    let Some((p, _server)) = crash("mariadb", 1, false).await else { return };
    assert!(p.storage.reconnects("database").await >= 1, "{}", p.tails());
    assert!(p.front.reconnects("database").await >= 1, "{}", p.tails());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream() {
    let Some((p, _server)) = crash("redis", 1, false).await else { return };
    assert!(p.front.reconnects("session-store").await >= 1, "{}", p.tails());
    assert!(p.front.reconnects("redis-pubsub").await >= 1, "{}", p.tails());
    assert!(p.edge.reconnects("redis-pubsub").await >= 1, "{}", p.tails());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_killed_mid_stream() {
    let Some((p, _server)) = crash("elasticsearch", 1, false).await else { return };
    // Messages stored while the index was down went to the backlog (not lost silently) and
    // the backlog was indexed: assert_searchable above saw them.
    assert!(p.storage.metric("chatmesh_search_backlog_added_total").await >= 1, "{}", p.tails());
    assert!(p.storage.reconnects("search").await >= 1, "{}", p.tails());
}

// ---- Many processes on one empty database ------------------------------------------------------

async fn start_together(bin: &PathBuf, database_url: &str, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut procs: Vec<Proc> = (0..n)
        .map(|i| {
            let port = free_port();
            let args = vec![
                "--target=message".to_string(),
                format!("--database-url={database_url}"),
                format!("--data-dir={}", dir.path().join(format!("p{i}")).display()),
                format!("--message-listen=127.0.0.1:{port}"),
            ];
            Proc::spawn(&format!("p{i}"), bin, dir.path(), &args)
        })
        .collect();
    for p in &mut procs {
        p.wait_ready(true, Duration::from_secs(60)).await;
    }
    for p in procs {
        p.terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_at_once_on_an_empty_database_all_come_up() {
    let Some(bin) = binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    start_together(&bin, &format!("sqlite://{}/fresh.db?mode=rwc", dir.path().display()), 4).await;
    let Some(mysql) = real_url("CHATMESH_TEST_MYSQL_URL") else { return };
    let name = format!("chatmesh_t_{}", &chatmesh_common::new_id()[..12]);
    create_database(&mysql, &name).await;
    start_together(&bin, &format!("{}/{name}", mysql.trim_end_matches('/')), 4).await;
}

// ---- Standalone: kill -9 of the one process -----------------------------------------------------

fn standalone(bin: &PathBuf, data: &std::path::Path, extra: &[&str]) -> (Proc, Client) {
    let (http, ws) = (free_port(), free_port());
    let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    args.extend([
        "--target=all".to_string(),
        format!("--data-dir={}", data.display()),
        format!("--http-listen=127.0.0.1:{http}"),
        format!("--ws-listen=127.0.0.1:{ws}"),
    ]);
    for service in ["user", "file", "friend", "transmit", "message", "speech"] {
        let port = free_port();
        args.push(format!("--{service}-listen=127.0.0.1:{port}"));
        args.push(format!("--{service}-addr=http://127.0.0.1:{port}"));
    }
    let proc = Proc::spawn("standalone", bin, data.parent().unwrap(), &args);
    (proc, Client::new(&format!("http://127.0.0.1:{http}"), &format!("ws://127.0.0.1:{ws}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_killed_mid_stream_loses_nothing_acknowledged() {
    let Some(bin) = binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut first, client) = standalone(&bin, &data, &[]);
    first.wait_ready(true, Duration::from_secs(60)).await;
    let ch = chat(&client).await;
    let since = chatmesh_common::unix_now() - 1;
    let (stop, stopped) = watch::channel(false);
    let sender = stream(&client, &ch.a, &ch.chat, "chaos", MAX_SENDS, &stopped);
    tokio::time::sleep(random_between(Duration::from_millis(1000), Duration::from_millis(2000))).await;
    // Storage falls behind (another writer holds the database for a while), so at the crash
    // there are sends in flight that were not stored yet: an acknowledgement given before they
    // are on disk would show as a loss.
    let mut writer = {
        use sqlx::Connection;
        let url = format!("sqlite://{}/chatmesh.db", data.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await.unwrap();
        conn
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.signal(9);
    let _ = first.child.wait().await;
    sqlx::raw_sql("ROLLBACK").execute(&mut writer).await.unwrap();
    drop(writer);
    stop.send(true).unwrap();
    // The senders now fail (nobody listens); what they were told succeeded counts.
    let acked = sender.await.unwrap();
    assert!(acked.len() >= 20, "too few sends succeeded to test anything: {}", acked.len());

    let (mut second, client) = standalone(&bin, &data, &[]);
    second.wait_ready(true, Duration::from_secs(60)).await;
    let restarted = Instant::now();
    // Sessions lived in the dead process's memory: log in again.
    let b = client.login(&ch.b_nick, PASSWORD).await.unwrap();
    let texts = loop {
        let texts = stored(&client, &b, &ch.chat, since).await.unwrap_or_default();
        let have: HashSet<&String> = texts.iter().collect();
        if acked.iter().all(|t| have.contains(t)) {
            break texts;
        }
        let missing = acked.iter().filter(|t| !have.contains(t)).count();
        assert!(restarted.elapsed() < Duration::from_secs(30), "{missing} of {} lost\n{}", acked.len(), second.tail());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let unique: HashSet<&String> = texts.iter().collect();
    assert_eq!(unique.len(), texts.len(), "a message is stored twice");
    second.terminate().await;
}

/// SIGTERM with `--shutdown-delay` (the operator sets one: callers move to another pod at their
/// next DNS refresh): for the delay the process serves as before, new connections included,
/// while `/readyz` says it is stopping; then it drains and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_serves_on_for_the_shutdown_delay() {
    const DELAY: Duration = Duration::from_secs(4);
    let Some(bin) = binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let delay = format!("--shutdown-delay={}s", DELAY.as_secs());
    let (mut proc, client) = standalone(&bin, &dir.path().join("data"), &[&delay]);
    proc.wait_ready(true, Duration::from_secs(60)).await;
    let ch = chat(&client).await;
    let signalled = Instant::now();
    proc.signal(15);
    proc.wait_ready(false, Duration::from_secs(2)).await;
    // A send on the open connection, and a login on a new one (a client of its own).
    client.send_text(&ch.a, &ch.chat, "after the signal").await.expect("a send during the delay");
    let fresh = client.fresh();
    fresh.login(&ch.b_nick, PASSWORD).await.expect("a login on a new connection during the delay");
    let checked = signalled.elapsed();
    assert!(checked < DELAY, "the checks took {checked:?}, past the delay: they proved nothing");
    let (_, readyz) = proc.get("/readyz").await.expect("the admin port answers during the delay");
    assert!(readyz.contains("stopping"), "{readyz}");
    let waited = tokio::time::timeout(DELAY + GRACE + Duration::from_secs(5), proc.child.wait()).await;
    assert!(waited.is_ok(), "still running past the delay and the grace\n{}", proc.tail());
    assert!(signalled.elapsed() >= DELAY, "exited {:?} after SIGTERM, before the delay ended", signalled.elapsed());
}

// ---- Rebuilding the search index ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_rebuilds_the_search_index_from_the_database() {
    let Some(bin) = binary() else { return };
    let Some(es) = real_url("CHATMESH_TEST_ES_URL") else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let prefix = format!("chatmesh_t_{}", &chatmesh_common::new_id()[..12]);
    let backend = [format!("--search-url={es}"), format!("--search-index-prefix={prefix}")];
    let (mut proc, client) = {
        let (http, ws) = (free_port(), free_port());
        let mut args = vec![
            "--target=all".to_string(),
            format!("--data-dir={}", data.display()),
            format!("--http-listen=127.0.0.1:{http}"),
            format!("--ws-listen=127.0.0.1:{ws}"),
        ];
        args.extend(backend.iter().cloned());
        for service in ["user", "file", "friend", "transmit", "message", "speech"] {
            let port = free_port();
            args.push(format!("--{service}-listen=127.0.0.1:{port}"));
            args.push(format!("--{service}-addr=http://127.0.0.1:{port}"));
        }
        let proc = Proc::spawn("all", &bin, dir.path(), &args);
        (proc, Client::new(&format!("http://127.0.0.1:{http}"), &format!("ws://127.0.0.1:{ws}")))
    };
    proc.wait_ready(true, Duration::from_secs(60)).await;
    let ch = chat(&client).await;
    let (stranger, _) = login_new(&client).await;
    for i in 0..30 {
        client.send_text(&ch.a, &ch.chat, &format!("rebuildme n{i}")).await.unwrap();
    }
    let found = |c: Client, b: String, chat: String| async move {
        c.search_messages(&b, &chat, "rebuildme").await.map(|l| l.len()).unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while found(client.clone(), ch.b.clone(), ch.chat.clone()).await < 30 {
        assert!(Instant::now() < deadline, "messages never searchable\n{}", proc.tail());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The index is lost; the database still has everything.
    let http = reqwest::Client::new();
    let rsp = http.delete(format!("{es}/{prefix}-messages")).send().await.unwrap();
    assert!(rsp.status().is_success());
    let rsp = http.delete(format!("{es}/{prefix}-users")).send().await.unwrap();
    assert!(rsp.status().is_success());
    let out = tokio::process::Command::new(&bin)
        .args(["--target=reindex", &format!("--data-dir={}", data.display())])
        .args(&backend)
        .arg(format!("--admin-listen=127.0.0.1:{}", free_port()))
        .env_clear()
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "reindex failed: {}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    while found(client.clone(), ch.b.clone(), ch.chat.clone()).await < 30 {
        assert!(Instant::now() < deadline, "reindex did not restore message search\n{}", proc.tail());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!client.search(&ch.a, &stranger).await.unwrap().is_empty(), "users are indexed again");
    proc.terminate().await;
}
