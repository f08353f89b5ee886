//! What every chatmesh service shares: backends chosen by URL (relational database, expiring
//! key-value store), login sessions, gRPC channels that follow DNS, telemetry.

pub mod db;
pub mod followed;
pub mod grpc;
pub mod health;
pub mod kv;
pub mod members;
pub mod mesh;
pub mod messages;
pub mod queue;
pub mod search;
pub mod sessions;
pub mod telemetry;
pub mod trace;

pub use db::Database;
pub use kv::ExpiringStore;
pub use sessions::LoginSessions;

/// Failures of the shared backends; services wrap this in their own error types.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database migration lock: {0}")]
    MigrateLock(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unsupported backend URL {0:?}")]
    UnsupportedUrl(String),
    #[error("message queue: {0}")]
    Queue(String),
    #[error("search: {0}")]
    Search(String),
    #[error("invalid address {0:?}: {1}")]
    Address(String, String),
}

/// Unix seconds now, the seed's timestamp unit.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A new random identifier: 32 hex digits, unguessable (UUID v4).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The URL of a real test server from `var`; `None` (the test skips) when unset, unless
/// `CHATMESH_REQUIRE_REAL_BACKENDS` is set, as `e2e/test.sh` does.
#[doc(hidden)]
pub fn test_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CHATMESH_REQUIRE_REAL_BACKENDS").is_ok() => {
            panic!("{var} is unset but CHATMESH_REQUIRE_REAL_BACKENDS is set")
        }
        Err(_) => {
            eprintln!("{var} unset: skipping the real-backend case (e2e/test.sh sets it)");
            None
        }
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone). The guard `wait_for` returns is
/// dropped here, so callers' futures stay `Send`.
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// An error and its causes as one line (`outer: inner: ...`), for errors whose `Display` alone
/// drops the detail that explains them.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
