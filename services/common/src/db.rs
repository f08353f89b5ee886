//! The relational store: MySQL/MariaDB or SQLite, chosen by URL, through sqlx's `Any` driver so
//! that every query is written once. Each dialect has its own migration folder.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Connection};

use crate::BackendError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Sqlite,
}

/// A pool plus the dialect, for the few statements whose syntax differs.
#[derive(Debug, Clone)]
pub struct Database {
    pub pool: AnyPool,
    pub dialect: Dialect,
    /// SQLite: the database file, whose neighbour `<file>.migrate-lock` serialises migrations.
    file: Option<PathBuf>,
    /// SQLite: [`checkpoints`], until the last clone is dropped.
    _checkpoints: Option<Arc<Background>>,
}

/// A task that ends when this is dropped.
#[derive(Debug)]
struct Background(tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often SQLite's write-ahead log is copied into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// SQLite: copies the write-ahead log into the database file in the background, so no commit
/// waits for it. SQLite's own checkpoints run inside the commit that crosses a size: at 1,000
/// pages (the default) they took 2.6% of the standalone burst's CPU, since every message's
/// pages (queued, read, stored, deleted) are copied again and again; at 8,000 pages each one
/// stalled the commits queued behind it, and p99.9 at 1,000 msg/s went from 9 to 32-38 ms. A
/// PASSIVE checkpoint blocks neither writers nor readers.
async fn checkpoints(pool: AnyPool) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            tracing::warn!(error = %e, "SQLite checkpoint failed; retrying");
        }
    }
}

/// Longest wait for a pooled connection: a dead database fails requests instead of queueing them.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for another process's migrations.
const MIGRATE_LOCK_TIMEOUT_S: i64 = 300;

static MYSQL: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");
#[cfg(feature = "kind-next-migration")]
static KIND_NEXT: sqlx::migrate::Migrator = sqlx::migrate!("../../e2e/kind/next-migration");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl Database {
    /// Connects to `mysql://...` or `sqlite://...` (created if missing).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, BackendError> {
        install_default_drivers();
        let dialect = if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Dialect::MySql
        } else if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            return Err(BackendError::UnsupportedUrl(redact(url)));
        };
        let url = url.replacen("mariadb://", "mysql://", 1);
        // Pooled connections are pinged before use (the default), so those a database restart
        // broke are replaced rather than handed out.
        let mut options = AnyPoolOptions::new().max_connections(max_connections).acquire_timeout(ACQUIRE_TIMEOUT);
        if dialect == Dialect::Sqlite {
            // SQLite allows one writer; WAL and a busy timeout let readers proceed meanwhile.
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                    // Checkpoints run in the background ([`checkpoints`]); this is a backstop.
                    sqlx::query("PRAGMA wal_autocheckpoint = 16000").execute(&mut *conn).await?;
                    // Reads from the page cache of the kernel without a system call each: a
                    // write by another connection empties every other connection's own cache.
                    sqlx::query("PRAGMA mmap_size = 268435456").execute(&mut *conn).await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(&url).await?;
        let file = (dialect == Dialect::Sqlite).then(|| sqlite_file(&url)).flatten();
        let checkpoints = file.is_some().then(|| Arc::new(Background(tokio::spawn(checkpoints(pool.clone())))));
        Ok(Self { pool, dialect, file, _checkpoints: checkpoints })
    }

    /// Brings the schema up to date (idempotent; the operator runs it as a Job before a rollout).
    /// Any number of processes may call it at once: a lock held across the whole run (MySQL's
    /// `GET_LOCK`, a file lock beside a SQLite database) lets one migrate while the others wait,
    /// then find nothing left to do.
    pub async fn migrate(&self) -> Result<(), BackendError> {
        match self.dialect {
            Dialect::MySql => {
                let mut conn = self.pool.acquire().await?;
                let (got,): (Option<i64>,) =
                    sqlx::query_as("SELECT GET_LOCK(CONCAT('chatmesh_migrate:', DATABASE()), ?)")
                        .bind(MIGRATE_LOCK_TIMEOUT_S)
                        .fetch_one(&mut *conn)
                        .await?;
                if got != Some(1) {
                    return Err(BackendError::MigrateLock("another process holds the migration lock".into()));
                }
                // `run_direct` on the connection that holds the lock (`run` would take another
                // from the pool; its generic form also makes the future not `Send`).
                let result = mysql_migrator().run_direct(None, &mut *conn, false).await;
                let released = sqlx::query("SELECT RELEASE_LOCK(CONCAT('chatmesh_migrate:', DATABASE()))")
                    .execute(&mut *conn)
                    .await;
                if released.is_err() {
                    // The lock dies with its session: do not hand this one back to the pool.
                    let _ = conn.detach().close().await;
                }
                result?;
            }
            Dialect::Sqlite => {
                let _lock = match &self.file {
                    Some(file) => Some(lock_file(file.with_extension("migrate-lock")).await?),
                    None => None, // in memory: private to this process
                };
                SQLITE.run(&self.pool).await?;
            }
        }
        Ok(())
    }

    /// True when the database refused a row because of a UNIQUE key.
    pub fn is_unique_violation(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
    }
}

/// MySQL's migrations; with the test-only feature `kind-next-migration`, the kind suite's extra
/// one as well (its `-next` image).
#[cfg(not(feature = "kind-next-migration"))]
fn mysql_migrator() -> &'static sqlx::migrate::Migrator {
    &MYSQL
}

#[cfg(feature = "kind-next-migration")]
fn mysql_migrator() -> &'static sqlx::migrate::Migrator {
    static BOTH: std::sync::LazyLock<sqlx::migrate::Migrator> = std::sync::LazyLock::new(|| {
        sqlx::migrate::Migrator::with_migrations(MYSQL.iter().chain(KIND_NEXT.iter()).cloned().collect())
    });
    &BOTH
}

/// The file of a `sqlite://path?...` URL (none for an in-memory database).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.contains(":memory:")).then(|| PathBuf::from(path))
}

/// An exclusive lock on `path` (created if missing), released when the file is dropped.
async fn lock_file(path: PathBuf) -> Result<std::fs::File, BackendError> {
    let lock = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    });
    match lock.await {
        Ok(Ok(file)) => Ok(file),
        Ok(Err(e)) => Err(BackendError::MigrateLock(e.to_string())),
        Err(e) => Err(BackendError::MigrateLock(e.to_string())),
    }
}

/// `?, ?, ...` for an `IN (...)` list of `n` values.
pub fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Whether `user_id` is a member of chat session `chat_session_id` (the friend service owns the
/// table; other services check membership with this one query).
pub async fn is_member(db: &Database, chat_session_id: &str, user_id: &str) -> Result<bool, BackendError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT user_id FROM chat_session_member WHERE chat_session_id = ? AND user_id = ?")
            .bind(chat_session_id)
            .bind(user_id)
            .fetch_optional(&db.pool)
            .await?;
    Ok(row.is_some())
}

/// The members of a chat session, sorted; empty for an unknown session.
pub async fn chat_members(db: &Database, chat_session_id: &str) -> Result<Vec<String>, BackendError> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT user_id FROM chat_session_member WHERE chat_session_id = ? ORDER BY user_id")
            .bind(chat_session_id)
            .fetch_all(&db.pool)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::AssertSqlSafe;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("mysql://u:secret@h:3306/db"), "mysql://u:***@h:3306/db");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
    }

    /// What is committed reaches the database file without any commit checkpointing it: the
    /// rows here are far below SQLite's own threshold.
    #[tokio::test]
    async fn sqlite_log_is_checkpointed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.db");
        let db = Database::connect(&format!("sqlite://{}?mode=rwc", file.display()), 2).await.unwrap();
        sqlx::query("CREATE TABLE blobs (b BLOB)").execute(&db.pool).await.unwrap();
        let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let before = size(&file);
        for _ in 0..500 {
            sqlx::query("INSERT INTO blobs (b) VALUES (?)").bind(vec![7u8; 4000]).execute(&db.pool).await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size(&file) < before + 2_000_000 {
            assert!(std::time::Instant::now() < deadline, "the database file stayed at {} bytes", size(&file));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn sqlite_migrates_and_detects_unique_violation() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let db = Database::connect(&url, 2).await.unwrap();
        db.migrate().await.unwrap();
        db.migrate().await.unwrap(); // idempotent
        let insert = "INSERT INTO users (user_id, nickname, description, created_at) VALUES (?, ?, '', 0)";
        sqlx::query(insert).bind("a").bind("nick").execute(&db.pool).await.unwrap();
        let err = sqlx::query(insert).bind("b").bind("nick").execute(&db.pool).await.unwrap_err();
        assert!(Database::is_unique_violation(&err));
    }

    #[tokio::test]
    async fn concurrent_migrations_on_one_sqlite_file_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/race.db?mode=rwc", dir.path().display());
        let mut runs = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let url = url.clone();
            runs.spawn(async move { Database::connect(&url, 2).await?.migrate().await });
        }
        while let Some(done) = runs.join_next().await {
            done.unwrap().unwrap();
        }
        assert_eq!(sqlite_file(&url), Some(dir.path().join("race.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
    }

    #[tokio::test]
    async fn concurrent_migrations_on_one_mysql_database_all_succeed() {
        let Some(server) = crate::test_url("CHATMESH_TEST_MYSQL_URL") else { return };
        let name = format!("chatmesh_t_{}", &crate::new_id()[..12]);
        let admin = Database::connect(&server, 1).await.unwrap();
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin.pool).await.unwrap();
        let url = format!("{}/{name}", server.trim_end_matches('/'));
        let mut runs = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let url = url.clone();
            runs.spawn(async move { Database::connect(&url, 2).await?.migrate().await });
        }
        while let Some(done) = runs.join_next().await {
            done.unwrap().unwrap();
        }
        let db = Database::connect(&url, 1).await.unwrap();
        let (applied,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations").fetch_one(&db.pool).await.unwrap();
        assert_eq!(applied as usize, MYSQL.iter().count(), "each migration applied once");
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE {name}"))).execute(&admin.pool).await.unwrap();
    }

    #[tokio::test]
    async fn refuses_unknown_schemes() {
        assert!(matches!(Database::connect("postgres://x", 1).await, Err(BackendError::UnsupportedUrl(_))));
    }
}
