//! The relational store: MySQL/MariaDB or SQLite, chosen by URL, through sqlx's `Any` driver so
//! that every query is written once. Each dialect has its own migration folder.

use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, install_default_drivers};

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
}

static MYSQL: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");
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
        let mut options = AnyPoolOptions::new().max_connections(max_connections);
        if dialect == Dialect::Sqlite {
            // SQLite allows one writer; WAL and a busy timeout let readers proceed meanwhile.
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(&url).await?;
        Ok(Self { pool, dialect })
    }

    /// Brings the schema up to date (idempotent; the operator runs it as a Job before a rollout).
    pub async fn migrate(&self) -> Result<(), BackendError> {
        match self.dialect {
            Dialect::MySql => MYSQL.run(&self.pool).await?,
            Dialect::Sqlite => SQLITE.run(&self.pool).await?,
        }
        Ok(())
    }

    /// True when the database refused a row because of a UNIQUE key.
    pub fn is_unique_violation(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
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

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("mysql://u:secret@h:3306/db"), "mysql://u:***@h:3306/db");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
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
    async fn refuses_unknown_schemes() {
        assert!(matches!(Database::connect("postgres://x", 1).await, Err(BackendError::UnsupportedUrl(_))));
    }
}
