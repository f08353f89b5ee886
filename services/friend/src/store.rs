//! Friendships, applications, chat sessions and members, written once for MySQL/MariaDB and
//! SQLite. Multi-row changes run in transactions so a crash never leaves half a friendship.

use chatmesh_common::db::placeholders;
use chatmesh_common::{Database, unix_now};
use sqlx::AssertSqlSafe;

use crate::error::FriendError;

pub const SINGLE: i64 = 1;
pub const GROUP: i64 = 2;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub chat_session_id: String,
    pub chat_session_name: String,
    pub chat_session_type: i64,
}

#[derive(Clone)]
pub struct FriendStore {
    pub db: Database,
}

impl FriendStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The ones of `ids` that are registered users.
    pub async fn existing_users(&self, ids: &[String]) -> Result<Vec<String>, FriendError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT user_id FROM users WHERE user_id IN ({})", placeholders(ids.len()));
        let mut q = sqlx::query_as::<_, (String,)>(AssertSqlSafe(sql));
        for id in ids {
            q = q.bind(id);
        }
        Ok(q.fetch_all(&self.db.pool).await?.into_iter().map(|(id,)| id).collect())
    }

    pub async fn friends(&self, user_id: &str) -> Result<Vec<String>, FriendError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT peer_id FROM friend_relation WHERE user_id = ? ORDER BY created_at, peer_id")
                .bind(user_id)
                .fetch_all(&self.db.pool)
                .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    pub async fn are_friends(&self, a: &str, b: &str) -> Result<bool, FriendError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT peer_id FROM friend_relation WHERE user_id = ? AND peer_id = ?")
                .bind(a)
                .bind(b)
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(row.is_some())
    }

    /// Records an application from `from` to `to`; refused if one is already pending.
    pub async fn apply(&self, event_id: &str, from: &str, to: &str) -> Result<(), FriendError> {
        let result =
            sqlx::query("INSERT INTO friend_apply (event_id, user_id, peer_id, created_at) VALUES (?, ?, ?, ?)")
                .bind(event_id)
                .bind(from)
                .bind(to)
                .bind(unix_now())
                .execute(&self.db.pool)
                .await;
        match result {
            Err(e) if Database::is_unique_violation(&e) => Err(FriendError::AlreadyApplied),
            other => other.map(drop).map_err(Into::into),
        }
    }

    /// Pending applications addressed to `to`: (event id, applicant).
    pub async fn pending(&self, to: &str) -> Result<Vec<(String, String)>, FriendError> {
        Ok(sqlx::query_as("SELECT event_id, user_id FROM friend_apply WHERE peer_id = ? ORDER BY created_at, event_id")
            .bind(to)
            .fetch_all(&self.db.pool)
            .await?)
    }

    /// Settles application `event_id` from `from` to `to`. On agreement the two become friends
    /// and get a one-to-one session `session_id`. Fails if no such application is pending (so
    /// it can be processed once, and only by its addressee).
    pub async fn settle(
        &self,
        event_id: &str,
        from: &str,
        to: &str,
        agree: bool,
        session_id: &str,
    ) -> Result<(), FriendError> {
        let mut tx = self.db.pool.begin().await?;
        let taken = sqlx::query("DELETE FROM friend_apply WHERE event_id = ? AND user_id = ? AND peer_id = ?")
            .bind(event_id)
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        if taken.rows_affected() != 1 {
            return Err(FriendError::NoSuchApplication);
        }
        if agree {
            // An application the other way is answered by this one as well.
            sqlx::query("DELETE FROM friend_apply WHERE user_id = ? AND peer_id = ?")
                .bind(to)
                .bind(from)
                .execute(&mut *tx)
                .await?;
            let now = unix_now();
            for (a, b) in [(from, to), (to, from)] {
                let added = sqlx::query("INSERT INTO friend_relation (user_id, peer_id, created_at) VALUES (?, ?, ?)")
                    .bind(a)
                    .bind(b)
                    .bind(now)
                    .execute(&mut *tx)
                    .await;
                match added {
                    Err(e) if Database::is_unique_violation(&e) => return Err(FriendError::AlreadyFriends),
                    other => other?,
                };
            }
            insert_session(&mut tx, session_id, "", SINGLE, &[from.to_string(), to.to_string()]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Ends the friendship of `a` and `b` and deletes their one-to-one session (its messages
    /// stay stored). Returns the removed session's id.
    pub async fn unfriend(&self, a: &str, b: &str) -> Result<Option<String>, FriendError> {
        let mut tx = self.db.pool.begin().await?;
        let removed = sqlx::query(
            "DELETE FROM friend_relation WHERE (user_id = ? AND peer_id = ?) OR (user_id = ? AND peer_id = ?)",
        )
        .bind(a)
        .bind(b)
        .bind(b)
        .bind(a)
        .execute(&mut *tx)
        .await?;
        if removed.rows_affected() == 0 {
            return Err(FriendError::NotFriends);
        }
        let session: Option<(String,)> = sqlx::query_as(
            "SELECT s.chat_session_id FROM chat_session s \
             JOIN chat_session_member m1 ON m1.chat_session_id = s.chat_session_id AND m1.user_id = ? \
             JOIN chat_session_member m2 ON m2.chat_session_id = s.chat_session_id AND m2.user_id = ? \
             WHERE s.chat_session_type = ?",
        )
        .bind(a)
        .bind(b)
        .bind(SINGLE)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id,)) = &session {
            sqlx::query("DELETE FROM chat_session_member WHERE chat_session_id = ?").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM chat_session WHERE chat_session_id = ?").bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(session.map(|(id,)| id))
    }

    pub async fn create_group(&self, session_id: &str, name: &str, members: &[String]) -> Result<(), FriendError> {
        let mut tx = self.db.pool.begin().await?;
        insert_session(&mut tx, session_id, name, GROUP, members).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The sessions `user_id` belongs to, newest first.
    pub async fn sessions_of(&self, user_id: &str) -> Result<Vec<SessionRow>, FriendError> {
        Ok(sqlx::query_as(
            "SELECT s.chat_session_id, s.chat_session_name, s.chat_session_type FROM chat_session s \
             JOIN chat_session_member m ON m.chat_session_id = s.chat_session_id \
             WHERE m.user_id = ? ORDER BY s.created_at DESC, s.chat_session_id",
        )
        .bind(user_id)
        .fetch_all(&self.db.pool)
        .await?)
    }

    pub async fn members(&self, session_id: &str) -> Result<Vec<String>, FriendError> {
        Ok(chatmesh_common::db::chat_members(&self.db, session_id).await?)
    }
}

async fn insert_session(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    session_id: &str,
    name: &str,
    kind: i64,
    members: &[String],
) -> Result<(), FriendError> {
    sqlx::query(
        "INSERT INTO chat_session (chat_session_id, chat_session_name, chat_session_type, created_at) VALUES (?, ?, ?, ?)",
    )
    .bind(session_id)
    .bind(name)
    .bind(kind)
    .bind(unix_now())
    .execute(&mut **tx)
    .await?;
    for member in members {
        sqlx::query("INSERT INTO chat_session_member (chat_session_id, user_id) VALUES (?, ?)")
            .bind(session_id)
            .bind(member)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
