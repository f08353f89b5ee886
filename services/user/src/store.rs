//! The `users` table, written once for MySQL/MariaDB and SQLite.

use chatmesh_common::Database;
use sqlx::AssertSqlSafe;

use crate::error::UserError;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub user_id: String,
    pub nickname: String,
    pub password_hash: Option<String>,
    pub phone: Option<String>,
    pub description: String,
    pub avatar_id: Option<String>,
    /// The small copy every profile carries (see `avatar.rs`).
    pub avatar_thumb_id: Option<String>,
}

const COLUMNS: &str = "user_id, nickname, password_hash, phone, description, avatar_id, avatar_thumb_id";

#[derive(Clone)]
pub struct UserStore {
    db: Database,
}

impl UserStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn insert(&self, user: &UserRow) -> Result<(), UserError> {
        let result = sqlx::query(
            "INSERT INTO users (user_id, nickname, password_hash, phone, description, avatar_id, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&user.user_id)
        .bind(&user.nickname)
        .bind(&user.password_hash)
        .bind(&user.phone)
        .bind(&user.description)
        .bind(&user.avatar_id)
        .bind(chatmesh_common::unix_now())
        .execute(&self.db.pool)
        .await;
        self.unique_to_taken(result, &user.nickname).await
    }

    /// Maps a UNIQUE violation to the field that caused it (the checks before the write can
    /// race with another registration; the constraint cannot).
    async fn unique_to_taken<T>(&self, result: Result<T, sqlx::Error>, nickname: &str) -> Result<(), UserError> {
        match result {
            Ok(_) => Ok(()),
            Err(e) if Database::is_unique_violation(&e) => {
                if self.by_nickname(nickname).await?.is_some() {
                    Err(UserError::NicknameTaken)
                } else {
                    Err(UserError::PhoneTaken)
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn one(&self, column: &'static str, value: &str) -> Result<Option<UserRow>, UserError> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE {column} = ?");
        Ok(sqlx::query_as(AssertSqlSafe(sql)).bind(value).fetch_optional(&self.db.pool).await?)
    }

    pub async fn by_id(&self, user_id: &str) -> Result<Option<UserRow>, UserError> {
        self.one("user_id", user_id).await
    }

    pub async fn by_nickname(&self, nickname: &str) -> Result<Option<UserRow>, UserError> {
        self.one("nickname", nickname).await
    }

    pub async fn by_phone(&self, phone: &str) -> Result<Option<UserRow>, UserError> {
        self.one("phone", phone).await
    }

    pub async fn by_ids(&self, ids: &[String]) -> Result<Vec<UserRow>, UserError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks = chatmesh_common::db::placeholders(ids.len());
        let sql = format!("SELECT {COLUMNS} FROM users WHERE user_id IN ({marks})");
        let mut query = sqlx::query_as(AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(id);
        }
        Ok(query.fetch_all(&self.db.pool).await?)
    }

    /// Updates one column of one user; false when the user does not exist.
    async fn set(&self, column: &'static str, user_id: &str, value: &str) -> Result<bool, sqlx::Error> {
        let sql = format!("UPDATE users SET {column} = ? WHERE user_id = ?");
        let done = sqlx::query(AssertSqlSafe(sql)).bind(value).bind(user_id).execute(&self.db.pool).await?;
        // MySQL counts changed rows only: an unchanged value still means the user exists.
        Ok(done.rows_affected() > 0 || self.by_id(user_id).await.ok().flatten().is_some())
    }

    /// Points the user at a new avatar and its thumbnail.
    pub async fn set_avatar(&self, user_id: &str, file_id: &str, thumb_id: &str) -> Result<bool, UserError> {
        let done = sqlx::query("UPDATE users SET avatar_id = ?, avatar_thumb_id = ? WHERE user_id = ?")
            .bind(file_id)
            .bind(thumb_id)
            .bind(user_id)
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn set_description(&self, user_id: &str, description: &str) -> Result<bool, UserError> {
        Ok(self.set("description", user_id, description).await?)
    }

    pub async fn set_nickname(&self, user_id: &str, nickname: &str) -> Result<bool, UserError> {
        let result = self.set("nickname", user_id, nickname).await;
        let found = matches!(result, Ok(true));
        self.unique_to_taken(result, nickname).await?;
        Ok(found)
    }

    pub async fn set_phone(&self, user_id: &str, phone: &str) -> Result<bool, UserError> {
        let result = self.set("phone", user_id, phone).await;
        let found = matches!(result, Ok(true));
        match result {
            Err(e) if Database::is_unique_violation(&e) => Err(UserError::PhoneTaken),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(found),
        }
    }
}
