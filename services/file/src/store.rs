//! Bytes on disk under `<dir>/<id[..2]>/<id>`, written to a temporary name and renamed, so a
//! reader never sees half a file; metadata in the `files` table.

use std::path::PathBuf;

use chatmesh_common::Database;
use sqlx::AssertSqlSafe;

use crate::error::FileError;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FileRow {
    pub file_id: String,
    pub file_name: String,
    pub file_size: i64,
    pub owner_id: String,
    pub chat_session_id: Option<String>,
    pub public_read: i64,
}

#[derive(Clone)]
pub struct FileStore {
    db: Database,
    dir: PathBuf,
}

impl FileStore {
    pub fn new(db: Database, dir: PathBuf) -> Self {
        Self { db, dir }
    }

    fn path(&self, file_id: &str) -> PathBuf {
        self.dir.join(&file_id[..2]).join(file_id)
    }

    /// Stores bytes and metadata; the row is written only once the bytes are in place.
    pub async fn put(&self, row: &FileRow, content: &[u8]) -> Result<(), FileError> {
        let path = self.path(&row.file_id);
        let parent = path.parent().expect("file paths have a parent");
        tokio::fs::create_dir_all(parent).await?;
        let tmp = parent.join(format!(".{}.tmp", row.file_id));
        tokio::fs::write(&tmp, content).await?;
        tokio::fs::rename(&tmp, &path).await?;
        let inserted = sqlx::query(
            "INSERT INTO files (file_id, file_name, file_size, owner_id, chat_session_id, public_read, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&row.file_id)
        .bind(&row.file_name)
        .bind(row.file_size)
        .bind(&row.owner_id)
        .bind(&row.chat_session_id)
        .bind(row.public_read)
        .bind(chatmesh_common::unix_now())
        .execute(&self.db.pool)
        .await;
        if let Err(e) = inserted {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Removes what `put` stored (undoing a multi-file upload that failed part way).
    pub async fn remove(&self, file_id: &str) -> Result<(), FileError> {
        sqlx::query("DELETE FROM files WHERE file_id = ?").bind(file_id).execute(&self.db.pool).await?;
        let _ = tokio::fs::remove_file(self.path(file_id)).await;
        Ok(())
    }

    pub async fn meta(&self, ids: &[String]) -> Result<Vec<FileRow>, FileError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks = chatmesh_common::db::placeholders(ids.len());
        let sql = format!(
            "SELECT file_id, file_name, file_size, owner_id, chat_session_id, public_read FROM files \
             WHERE file_id IN ({marks})"
        );
        let mut query = sqlx::query_as(AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(id);
        }
        Ok(query.fetch_all(&self.db.pool).await?)
    }

    /// Bytes `owner_id` stores in all.
    pub async fn bytes_of(&self, owner_id: &str) -> Result<u64, FileError> {
        let (sum,): (Option<i64>,) =
            sqlx::query_as("SELECT CAST(SUM(file_size) AS SIGNED) FROM files WHERE owner_id = ?")
                .bind(owner_id)
                .fetch_one(&self.db.pool)
                .await?;
        Ok(sum.unwrap_or(0).max(0) as u64)
    }

    pub async fn read(&self, file_id: &str) -> Result<Vec<u8>, FileError> {
        Ok(tokio::fs::read(self.path(file_id)).await?)
    }

    /// Whether `user_id` belongs to the chat session a file was sent in.
    pub async fn is_member(&self, chat_session_id: &str, user_id: &str) -> Result<bool, FileError> {
        Ok(chatmesh_common::db::is_member(&self.db, chat_session_id, user_id).await?)
    }
}
