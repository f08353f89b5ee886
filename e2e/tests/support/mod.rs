//! Starts a whole chatmesh (every target, in this process, on loopback ports) against either
//! the embedded defaults or the real servers that `e2e/test.sh` starts.

#![allow(dead_code)]

pub mod fake_aliyun;

use std::net::TcpListener;
use std::time::Duration;

use chatmesh_e2e::Client;
use clap::Parser;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite + in-memory sessions + a temporary directory: no servers.
    Standalone,
    /// MariaDB + Redis + Elasticsearch from `CHATMESH_TEST_{MYSQL,REDIS,ES}_URL`.
    Real,
}

pub struct Stack {
    pub client: Client,
    pub http: String,
    pub ws: String,
    pub sms: fake_aliyun::FakeAliyun,
    pub backend: Backend,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The URL of a real server, or `None` (skip) when unset and not required.
pub fn real_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CHATMESH_REQUIRE_REAL_BACKENDS").is_ok() => {
            panic!("{var} is unset but CHATMESH_REQUIRE_REAL_BACKENDS is set")
        }
        Err(_) => {
            eprintln!("{var} unset: skipping the real-backend case (run e2e/test.sh for it)");
            None
        }
    }
}

impl Stack {
    /// A stack with default settings; `None` when the real backend is not configured.
    pub async fn start(backend: Backend) -> Option<Stack> {
        Self::start_with(backend, &[]).await
    }

    /// A stack with extra command-line flags (e.g. `--session-ttl 2s`).
    pub async fn start_with(backend: Backend, extra: &[&str]) -> Option<Stack> {
        let dir = tempfile::tempdir().unwrap();
        let sms = fake_aliyun::FakeAliyun::start().await;
        let (http_port, ws_port, user_port, file_port, friend_port) =
            (free_port(), free_port(), free_port(), free_port(), free_port());
        let mut args: Vec<String> = vec![
            "chatmesh".into(),
            "--target=all".into(),
            format!("--data-dir={}", dir.path().display()),
            format!("--http-listen=127.0.0.1:{http_port}"),
            format!("--ws-listen=127.0.0.1:{ws_port}"),
            format!("--user-listen=127.0.0.1:{user_port}"),
            format!("--file-listen=127.0.0.1:{file_port}"),
            format!("--user-addr=http://127.0.0.1:{user_port}"),
            format!("--file-addr=http://127.0.0.1:{file_port}"),
            format!("--friend-listen=127.0.0.1:{friend_port}"),
            format!("--friend-addr=http://127.0.0.1:{friend_port}"),
            "--sms-provider=aliyun".into(),
            format!("--aliyun-endpoint={}", sms.endpoint()),
            format!("--aliyun-access-key-id={}", fake_aliyun::KEY_ID),
            format!("--aliyun-access-key-secret={}", fake_aliyun::KEY_SECRET),
            "--aliyun-sign-name=chatmesh".into(),
            "--aliyun-template-code=SMS_0001".into(),
            // Short so one test can ask twice for the same phone; the default is a minute.
            "--sms-resend-interval=1s".into(),
        ];
        if backend == Backend::Real {
            let mysql = real_url("CHATMESH_TEST_MYSQL_URL")?;
            let redis = real_url("CHATMESH_TEST_REDIS_URL")?;
            let search = real_url("CHATMESH_TEST_ES_URL")?;
            let name = format!("chatmesh_t_{}", &chatmesh_common::new_id()[..12]);
            create_database(&mysql, &name).await;
            args.push(format!("--database-url={}/{name}", mysql.trim_end_matches('/')));
            args.push(format!("--redis-url={redis}"));
            args.push(format!("--redis-namespace={name}"));
            args.push(format!("--search-url={search}"));
            args.push(format!("--search-index-prefix={name}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let cli = chatmesh::Cli::try_parse_from(&args).expect("test flags parse");
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(chatmesh::run(cli, shutdown));
        let http = format!("http://127.0.0.1:{http_port}");
        let ws = format!("ws://127.0.0.1:{ws_port}");
        let stack =
            Stack { client: Client::new(&http, &ws), http, ws, sms, backend, stop, task: Some(task), _dir: dir };
        stack.wait_ready().await;
        Some(stack)
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if let Some(task) = &self.task {
                assert!(!task.is_finished(), "chatmesh stopped during start-up");
            }
            let ready = http.get(format!("{}/readyz", self.http)).send().await.is_ok_and(|r| r.status().is_success());
            // A login attempt goes through the user service too.
            if ready && self.client.login("nobody", "nothing").await.is_err_and(|e| e.to_string().contains("wrong")) {
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

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn create_database(server_url: &str, name: &str) {
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
