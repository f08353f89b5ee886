//! What every chatmesh service shares: backends chosen by URL (relational database, expiring
//! key-value store), login sessions, gRPC channels that follow DNS, telemetry.

pub mod db;
pub mod grpc;
pub mod kv;
pub mod search;
pub mod sessions;
pub mod telemetry;

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
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unsupported backend URL {0:?}")]
    UnsupportedUrl(String),
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
