//! Starts a whole chatmesh (every target, in this process, on loopback ports) against either
//! the embedded defaults or the real servers that `e2e/test.sh` starts. More processes (a
//! second gateway, a storage service to restart) can join the same backends.
//!
//! Or, with `CHATMESH_E2E_GATEWAY_HTTP` and `CHATMESH_E2E_GATEWAY_WS` set, the `Real` stacks
//! talk to a chatmesh that runs elsewhere (a Kubernetes cluster: `e2e/kind/run.sh`); see
//! [`external`] at the end of this file.

#![allow(dead_code)]

pub mod certs;
pub mod fake_aliyun;
pub mod stream;

use std::net::TcpListener;
use std::time::Duration;

use chatmesh_e2e::Client;
use clap::Parser;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite + in-memory sessions and queue + a temporary directory: no servers.
    Standalone,
    /// MariaDB, Redis, RabbitMQ, Elasticsearch from `CHATMESH_TEST_{MYSQL,REDIS,AMQP,ES}_URL`.
    Real,
    /// MariaDB with the embedded search (the database answers searches itself) and in-memory
    /// sessions and queue: the SQL the embedded search writes, on MySQL's dialect.
    MariaDbEmbedded,
}

/// One running `chatmesh::run`, as a separate process would be.
pub struct Proc {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Proc {
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    fn alive(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub struct Stack {
    pub client: Client,
    pub http: String,
    pub ws: String,
    /// The main process's admin address (`/metrics`, `/readyz`); empty for an external system.
    pub admin: String,
    pub sms: fake_aliyun::FakeAliyun,
    pub backend: Backend,
    /// Flags every process of this stack shares (backends, service addresses).
    shared: Vec<String>,
    main: Proc,
    _dir: tempfile::TempDir,
    /// Set for a stack on an external gateway (its turn: one such stack at a time).
    external: Option<external::Turn>,
}

/// A port nothing listens on. Taken from 12000-31999, below the kernel's ephemeral range
/// (where port 0 binds land, so two stacks asking the kernel could be handed the same port
/// between its release and our bind), counting up from a start that depends on the process
/// so parallel test binaries rarely collide, and wrapping around at the top (a start near it
/// had run out of ports in a CI run).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 12000;
    const SPAN: u32 = 20000;
    static NEXT: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id() % 400 * 50));
    for _ in 0..SPAN {
        let port = (FIRST + next.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free test port in {FIRST}-{}", FIRST + SPAN - 1);
}

/// A registered, logged-in user of a test.
pub struct Person {
    pub id: String,
    pub nickname: String,
    pub session: String,
}

pub async fn person(s: &Stack, prefix: &str) -> Person {
    let (nickname, session) = s.user(prefix).await;
    let id = s.client.user_info(&session).await.unwrap().user_id;
    Person { id, nickname, session }
}

/// Makes `a` and `b` friends; returns their one-to-one session id.
pub async fn befriend(c: &Client, a: &Person, b: &Person) -> String {
    let event = c.apply(&a.session, &b.id).await.unwrap();
    c.process(&b.session, &event, &a.id, true).await.unwrap();
    let sessions = c.chat_sessions(&a.session).await.unwrap();
    sessions.into_iter().find(|s| s.single_chat_friend_id.as_deref() == Some(&b.id)).unwrap().chat_session_id
}

/// The server's words when it refused; panics on anything else.
pub fn refused<T: std::fmt::Debug>(result: Result<T, chatmesh_e2e::ClientError>) -> String {
    match result {
        Err(chatmesh_e2e::ClientError::Refused(msg)) => msg,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Retries `check` until it returns `Some` (storage and indexing are asynchronous: a message
/// is acknowledged once queued, and readable once the storage service has written it).
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    for _ in 0..300 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The URL of a real server, or `None` (skip) when unset and not required.
pub fn real_url(var: &str) -> Option<String> {
    chatmesh_common::test_url(var)
}

/// The test binary's trace pipeline, when a stack asked for one.
pub static TRACES: std::sync::OnceLock<chatmesh_common::trace::Traces> = std::sync::OnceLock::new();

fn launch(args: Vec<String>) -> Proc {
    let cli = chatmesh::Cli::try_parse_from(&args).expect("test flags parse");
    // Warnings and errors show in a failing test's output. The first process of a test binary
    // sets up tracing for all (one subscriber per process), with its `--otlp-endpoint` if any.
    let mut logs = cli.clone();
    logs.log = "warn".into();
    logs.log_format = chatmesh_common::telemetry::LogFormat::Text;
    if let Some(traces) = logs.init_telemetry().expect("telemetry") {
        let _ = TRACES.set(traces);
    }
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(async move {
        let result = chatmesh::run(cli, shutdown).await;
        if let Err(e) = &result {
            eprintln!("chatmesh stopped: {e:#}");
        }
        result
    });
    Proc { stop, task: Some(task) }
}

impl Stack {
    /// Every target with default settings; `None` when the real backend is not configured.
    pub async fn start(backend: Backend) -> Option<Stack> {
        Self::start_with(backend, &[]).await
    }

    /// Every target, with extra command-line flags (e.g. `--session-ttl 2s`).
    pub async fn start_with(backend: Backend, extra: &[&str]) -> Option<Stack> {
        Self::start_parts(backend, "all", extra).await
    }

    /// Only `targets` (comma-separated) in the main process; the rest can join with `spawn`.
    pub async fn start_parts(backend: Backend, targets: &str, extra: &[&str]) -> Option<Stack> {
        if backend == Backend::Real
            && let Some(gateway) = external::gateway()
        {
            return external::start(gateway, targets, extra).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let sms = fake_aliyun::FakeAliyun::start().await;
        let mut shared: Vec<String> = vec![
            "chatmesh".into(),
            format!("--data-dir={}", dir.path().display()),
            "--admin-listen=127.0.0.1:0".into(),
            "--sms-provider=aliyun".into(),
            format!("--aliyun-endpoint={}", sms.endpoint()),
            format!("--aliyun-access-key-id={}", fake_aliyun::KEY_ID),
            format!("--aliyun-access-key-secret={}", fake_aliyun::KEY_SECRET),
            "--aliyun-sign-name=chatmesh".into(),
            "--aliyun-template-code=SMS_0001".into(),
            // Short so one test can ask twice for the same phone; the default is a minute.
            "--sms-resend-interval=1s".into(),
        ];
        for service in ["user", "file", "friend", "transmit", "message", "speech"] {
            let port = free_port();
            shared.push(format!("--{service}-listen=127.0.0.1:{port}"));
            shared.push(format!("--{service}-addr=http://127.0.0.1:{port}"));
        }
        if backend == Backend::MariaDbEmbedded {
            let mysql = real_url("CHATMESH_TEST_MYSQL_URL")?;
            let name = format!("chatmesh_t_{}", &chatmesh_common::new_id()[..12]);
            create_database(&mysql, &name).await;
            shared.push(format!("--database-url={}/{name}", mysql.trim_end_matches('/')));
            shared.push("--search-url=embedded://".into());
        }
        if backend == Backend::Real {
            let mysql = real_url("CHATMESH_TEST_MYSQL_URL")?;
            let redis = real_url("CHATMESH_TEST_REDIS_URL")?;
            let search = real_url("CHATMESH_TEST_ES_URL")?;
            let amqp = real_url("CHATMESH_TEST_AMQP_URL")?;
            let name = format!("chatmesh_t_{}", &chatmesh_common::new_id()[..12]);
            create_database(&mysql, &name).await;
            shared.push(format!("--database-url={}/{name}", mysql.trim_end_matches('/')));
            shared.push(format!("--redis-url={redis}"));
            shared.push(format!("--redis-namespace={name}"));
            shared.push(format!("--search-url={search}"));
            shared.push(format!("--search-index-prefix={name}"));
            shared.push(format!("--amqp-url={amqp}"));
            shared.push(format!("--amqp-queue={name}"));
        }
        if backend == Backend::Real && !extra.iter().any(|f| f.starts_with("--tls-")) {
            // The deployment people run: every call between processes is mutual TLS.
            let ca = certs::TestCa::new("chatmesh test CA");
            shared.extend(ca.write(dir.path(), "mesh", &certs::ALL_SERVICES).flags());
        }
        shared.extend(extra.iter().map(|s| s.to_string()));
        let (http_port, ws_port, admin_port) = (free_port(), free_port(), free_port());
        let mut args = shared.clone();
        args.push(format!("--target={targets}"));
        args.push(format!("--http-listen=127.0.0.1:{http_port}"));
        args.push(format!("--ws-listen=127.0.0.1:{ws_port}"));
        // A known port to scrape, instead of the shared `:0` (other processes keep theirs).
        args.retain(|a| !a.starts_with("--admin-listen="));
        args.push(format!("--admin-listen=127.0.0.1:{admin_port}"));
        let http = format!("http://127.0.0.1:{http_port}");
        let ws = format!("ws://127.0.0.1:{ws_port}");
        let stack = Stack {
            client: Client::new(&http, &ws),
            http,
            ws,
            admin: format!("http://127.0.0.1:{admin_port}"),
            sms,
            backend,
            shared,
            main: launch(args),
            _dir: dir,
            external: None,
        };
        if targets == "all" || targets.contains("gateway") {
            stack.wait_ready(&stack.client).await;
        }
        Some(stack)
    }

    /// Another process on the same backends running `targets` (its gateway ports are new).
    pub async fn spawn(&self, targets: &str) -> (Proc, Client) {
        if self.external.is_some() {
            return external::spawn(targets).await;
        }
        let (http_port, ws_port) = (free_port(), free_port());
        let mut args = self.shared.clone();
        args.push(format!("--target={targets}"));
        args.push(format!("--http-listen=127.0.0.1:{http_port}"));
        args.push(format!("--ws-listen=127.0.0.1:{ws_port}"));
        let proc = launch(args);
        let client = Client::new(&format!("http://127.0.0.1:{http_port}"), &format!("ws://127.0.0.1:{ws_port}"));
        if targets.contains("gateway") {
            self.wait_ready(&client).await;
        }
        (proc, client)
    }

    /// The address flag of an internal service (`http://127.0.0.1:<port>`).
    pub fn internal_addr(&self, service: &str) -> String {
        let prefix = format!("--{service}-addr=");
        self.shared.iter().find_map(|f| f.strip_prefix(&prefix)).expect("a service of this stack").to_string()
    }

    async fn wait_ready(&self, client: &Client) {
        for _ in 0..200 {
            assert!(self.main.alive(), "chatmesh stopped during start-up");
            // A login attempt goes through the gateway and the user service.
            if client.login("nobody", "nothing").await.is_err_and(|e| e.to_string().contains("wrong")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("chatmesh did not become ready");
    }

    /// Registers and logs in a fresh user; returns (nickname, session).
    pub async fn user(&self, prefix: &str) -> (String, String) {
        let nickname = format!("{prefix}{}", &chatmesh_common::new_id()[..8]);
        self.client.register(&nickname, "pass_word-1").await.unwrap();
        let session = self.client.login(&nickname, "pass_word-1").await.unwrap();
        (nickname, session)
    }

    /// Asks for a code for `phone` and returns (code id, code) as the fake SMS provider got it.
    pub async fn code(&self, phone: &str) -> (String, String) {
        let id = self.client.phone_code(phone).await.unwrap();
        (id, self.sms.last_code(phone).expect("the provider received a code"))
    }

    pub async fn stop(self) {
        self.main.stop().await;
    }
}

pub async fn create_database(server_url: &str, name: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::MySqlConnection::connect(server_url).await.expect("connect to MariaDB");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")))
        .execute(&mut conn)
        .await
        .expect("create test database");
}

/// Runs an async test body against both backends, as two tests.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod standalone {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if $crate::support::external::gateway().is_some() {
                    $crate::support::external::skip("the standalone variant runs in this process, not on the external gateway");
                    return;
                }
                let stack = $crate::support::Stack::start($crate::support::Backend::Standalone).await.unwrap();
                super::$name(&stack).await;
                stack.stop().await;
            })*
        }
        mod real {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(stack) = $crate::support::Stack::start($crate::support::Backend::Real).await else { return };
                super::$name(&stack).await;
                stack.stop().await;
            })*
        }
    };
}

/// Like [`both_backends!`], plus MariaDB with the embedded search.
#[macro_export]
macro_rules! all_backends {
    ($($name:ident),* $(,)?) => {
        $crate::both_backends!($($name),*);
        mod mariadb_embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if $crate::support::external::gateway().is_some() {
                    $crate::support::external::skip("runs in this process, not on the external gateway");
                    return;
                }
                let Some(stack) = $crate::support::Stack::start($crate::support::Backend::MariaDbEmbedded).await
                else { return };
                super::$name(&stack).await;
                stack.stop().await;
            })*
        }
    };
}

/// The backends a test with its own flags runs on, one after the other (an external gateway
/// takes no flags: none then).
pub fn backends() -> Vec<Backend> {
    if external::gateway().is_some() {
        return Vec::new();
    }
    vec![Backend::Standalone, Backend::MariaDbEmbedded, Backend::Real]
}

// ---- External gateway mode -------------------------------------------------------------------

/// The `Real` stacks against a chatmesh that runs elsewhere, e.g. in a kind cluster
/// (`e2e/kind/run.sh`), reached at `CHATMESH_E2E_GATEWAY_HTTP` (`http://127.0.0.1:9000`) and
/// `CHATMESH_E2E_GATEWAY_WS` (`ws://127.0.0.1:9001`):
/// - `Stack::start(Backend::Real)` starts no process: its client talks to that gateway;
/// - the standalone variants of `both_backends!` skip, and so do `Real` stacks that need their
///   own flags or only some targets (`start_with` with flags, `start_parts`), with a message
///   (standalone stacks asked for directly, as in `limits` and `websocket`, still run here);
/// - `spawn("gateway")` returns a client of a second gateway instance,
///   `CHATMESH_E2E_GATEWAY2_HTTP`/`_WS` (e.g. a port-forward to one gateway pod), and panics
///   when that is unset (run such a test with it, or `--skip` it);
/// - SMS: the cluster's user service is configured with the Aliyun provider, endpoint
///   `http://<CHATMESH_E2E_SMS_LISTEN>`, access key `fake_aliyun::KEY_ID`/`KEY_SECRET`; a relay
///   listening there forwards each `SendSms` to the current stack's own `FakeAliyun`, so codes
///   and counts are per test as in-process. That is why external stacks take turns: a test
///   waits for the one before it to finish (in-process tests still run in parallel).
///   The system keeps its data between stacks: tests that register fixed phone numbers pass
///   once per fresh system.
pub mod external {
    use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
    use std::time::Duration;

    use chatmesh_e2e::Client;

    use super::{Backend, Proc, Stack, fake_aliyun};

    pub struct Gateway {
        pub http: String,
        pub ws: String,
    }

    fn gateway_from(prefix: &str) -> Option<Gateway> {
        let http = std::env::var(format!("{prefix}_HTTP")).ok().filter(|v| !v.is_empty());
        let ws = std::env::var(format!("{prefix}_WS")).ok().filter(|v| !v.is_empty());
        match (http, ws) {
            (Some(http), Some(ws)) => Some(Gateway { http, ws }),
            (None, None) => None,
            _ => panic!("set both {prefix}_HTTP and {prefix}_WS, or neither"),
        }
    }

    /// The external gateway, when this mode is on.
    pub fn gateway() -> Option<Gateway> {
        gateway_from("CHATMESH_E2E_GATEWAY")
    }

    pub fn skip(why: &str) {
        eprintln!("skipped against the external gateway: {why}");
    }

    /// A stack's turn; the next stack starts when it is dropped.
    pub struct Turn(());

    static BUSY: Mutex<bool> = Mutex::new(false);
    static FREED: Condvar = Condvar::new();

    fn take_turn() -> Turn {
        let mut busy = BUSY.lock().unwrap_or_else(PoisonError::into_inner);
        while *busy {
            busy = FREED.wait(busy).unwrap_or_else(PoisonError::into_inner);
        }
        *busy = true;
        Turn(())
    }

    impl Drop for Turn {
        fn drop(&mut self) {
            *BUSY.lock().unwrap_or_else(PoisonError::into_inner) = false;
            FREED.notify_one();
        }
    }

    pub async fn start(gateway: Gateway, targets: &str, extra: &[&str]) -> Option<Stack> {
        if targets != "all" || !extra.is_empty() {
            skip(&format!("needs its own processes or flags (targets {targets}, flags {extra:?})"));
            return None;
        }
        // Blocks this test's thread (not a runtime worker) until the previous stack is done.
        let turn = take_turn();
        let sms = fake_aliyun::FakeAliyun::start().await;
        match relay() {
            Some(relay) => *relay.lock().unwrap_or_else(PoisonError::into_inner) = Some(sms.endpoint()),
            None => eprintln!("CHATMESH_E2E_SMS_LISTEN is unset: tests that need SMS codes will fail"),
        }
        let client = Client::new(&gateway.http, &gateway.ws);
        wait_ready(&client).await;
        Some(Stack {
            client,
            http: gateway.http,
            ws: gateway.ws,
            admin: String::new(),
            sms,
            backend: Backend::Real,
            shared: vec![],
            main: detached(),
            _dir: tempfile::tempdir().unwrap(),
            external: Some(turn),
        })
    }

    /// A second gateway instance of the same system, for `Stack::spawn("gateway")`.
    pub async fn spawn(targets: &str) -> (Proc, Client) {
        let second = (targets == "gateway").then(|| gateway_from("CHATMESH_E2E_GATEWAY2")).flatten();
        let Some(second) = second else {
            panic!(
                "spawn({targets:?}) needs a process of its own, which an external system does not give; for a \
                 second gateway set CHATMESH_E2E_GATEWAY2_HTTP/_WS (e2e/kind/run.sh does), else --skip this test"
            )
        };
        let client = Client::new(&second.http, &second.ws);
        wait_ready(&client).await;
        (detached(), client)
    }

    /// Nothing to stop: the process belongs to the cluster.
    fn detached() -> Proc {
        Proc { stop: tokio::sync::watch::channel(false).0, task: None }
    }

    async fn wait_ready(client: &Client) {
        // A fresh name each time: failed logins of one name are limited, and this system
        // lives on from stack to stack.
        let nobody = format!("nobody{}", &chatmesh_common::new_id()[..8]);
        for _ in 0..240 {
            if client.login(&nobody, "nothing").await.is_err_and(|e| e.to_string().contains("wrong")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("the external gateway did not answer a login within 2 minutes");
    }

    /// Where the relay forwards now: the current stack's `FakeAliyun`.
    type Target = Mutex<Option<String>>;

    /// The SMS relay on `CHATMESH_E2E_SMS_LISTEN`, started once per test binary, on a thread
    /// and runtime of its own (each test's runtime ends with the test).
    fn relay() -> Option<&'static Target> {
        static RELAY: OnceLock<Option<&'static Target>> = OnceLock::new();
        *RELAY.get_or_init(|| {
            let addr = std::env::var("CHATMESH_E2E_SMS_LISTEN").ok().filter(|v| !v.is_empty())?;
            let target: &'static Target = Box::leak(Box::new(Mutex::new(None)));
            let listener = std::net::TcpListener::bind(&addr)
                .unwrap_or_else(|e| panic!("the SMS relay cannot listen on {addr}: {e}"));
            listener.set_nonblocking(true).unwrap();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(serve_relay(listener, target));
            });
            Some(target)
        })
    }

    async fn serve_relay(listener: std::net::TcpListener, target: &'static Target) {
        use axum::extract::RawQuery;
        use axum::http::header::CONTENT_TYPE;
        // No pooled connections: each stack's fake is a different server.
        let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let forward = move |RawQuery(query): RawQuery| {
            let http = http.clone();
            async move {
                let json = |body: String| ([(CONTENT_TYPE, "application/json")], body);
                let Some(endpoint) = target.lock().unwrap_or_else(PoisonError::into_inner).clone() else {
                    return json(r#"{"Code":"isv.NO_TEST","Message":"no test is running","RequestId":"relay"}"#.into());
                };
                let url = format!("{endpoint}/?{}", query.unwrap_or_default());
                match http.get(url).send().await {
                    Ok(rsp) => json(rsp.text().await.unwrap_or_default()),
                    Err(e) => json(serde_json::json!({"Code": "isp.RELAY", "Message": e.to_string()}).to_string()),
                }
            }
        };
        let app = axum::Router::new().fallback(forward);
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(listener, app).await.unwrap();
    }
}
