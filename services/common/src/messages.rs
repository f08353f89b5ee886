//! Stored messages: the row form of the seed's `MessageInfo` (file bytes replaced by their ids)
//! and the queries more than one service makes (the friend service shows each session's last
//! message; the message service everything else).

use chatmesh_proto::message_content::MsgContent;
use chatmesh_proto::*;
use sqlx::AssertSqlSafe;

use crate::db::{Dialect, placeholders};
use crate::{BackendError, Database};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MessageRow {
    pub message_id: String,
    pub chat_session_id: String,
    pub user_id: String,
    pub message_type: i64,
    pub content: Option<String>,
    pub file_id: Option<String>,
    pub file_name: Option<String>,
    pub file_size: Option<i64>,
    pub created_at: i64,
}

const COLUMNS: &str =
    "message_id, chat_session_id, user_id, message_type, content, file_id, file_name, file_size, created_at";

impl MessageRow {
    /// The row of a message as the transmit service published it (bytes already stored).
    pub fn from_info(info: &MessageInfo) -> Self {
        let content = info.message.as_ref().and_then(|m| m.msg_content.clone());
        let (message_type, text, file_id, file_name, file_size) = match content {
            Some(MsgContent::StringMessage(s)) => (MessageType::String, Some(s.content), None, None, None),
            Some(MsgContent::ImageMessage(i)) => (MessageType::Image, None, i.file_id, None, None),
            Some(MsgContent::FileMessage(f)) => {
                (MessageType::File, None, f.file_id, Some(f.file_name), Some(f.file_size))
            }
            Some(MsgContent::SpeechMessage(s)) => (MessageType::Speech, None, s.file_id, None, None),
            None => (MessageType::String, Some(String::new()), None, None, None),
        };
        MessageRow {
            message_id: info.message_id.clone(),
            chat_session_id: info.chat_session_id.clone(),
            user_id: info.sender.as_ref().map(|s| s.user_id.clone()).unwrap_or_default(),
            message_type: message_type as i64,
            content: text,
            file_id,
            file_name,
            file_size,
            created_at: info.timestamp,
        }
    }

    /// The wire form, without file bytes (callers fill them where the seed does).
    pub fn to_info(&self, sender: UserInfo) -> MessageInfo {
        let kind = MessageType::try_from(self.message_type as i32).unwrap_or(MessageType::String);
        let content = match kind {
            MessageType::String => {
                MsgContent::StringMessage(StringMessageInfo { content: self.content.clone().unwrap_or_default() })
            }
            MessageType::Image => {
                MsgContent::ImageMessage(ImageMessageInfo { file_id: self.file_id.clone(), image_content: None })
            }
            MessageType::File => MsgContent::FileMessage(FileMessageInfo {
                file_id: self.file_id.clone(),
                file_size: self.file_size.unwrap_or(0),
                file_name: self.file_name.clone().unwrap_or_default(),
                file_contents: None,
            }),
            MessageType::Speech => {
                MsgContent::SpeechMessage(SpeechMessageInfo { file_id: self.file_id.clone(), file_contents: None })
            }
        };
        MessageInfo {
            message_id: self.message_id.clone(),
            chat_session_id: self.chat_session_id.clone(),
            timestamp: self.created_at,
            sender: Some(sender),
            message: Some(MessageContent { message_type: kind as i32, msg_content: Some(content) }),
        }
    }
}

/// Inserts rows, skipping ids already stored: redelivered messages are never doubled.
pub async fn insert_new(db: &Database, rows: &[MessageRow]) -> Result<(), BackendError> {
    if rows.is_empty() {
        return Ok(());
    }
    let verb = match db.dialect {
        Dialect::MySql => "INSERT IGNORE",
        Dialect::Sqlite => "INSERT OR IGNORE",
    };
    let values = vec![format!("({})", placeholders(9)); rows.len()].join(", ");
    let sql = format!("{verb} INTO message ({COLUMNS}) VALUES {values}");
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for r in rows {
        q = q
            .bind(&r.message_id)
            .bind(&r.chat_session_id)
            .bind(&r.user_id)
            .bind(r.message_type)
            .bind(&r.content)
            .bind(&r.file_id)
            .bind(&r.file_name)
            .bind(r.file_size)
            .bind(r.created_at);
    }
    q.execute(&db.pool).await?;
    Ok(())
}

/// The newest message of each given session.
pub async fn last_of_sessions(db: &Database, sessions: &[String]) -> Result<Vec<MessageRow>, BackendError> {
    let mut out = Vec::new();
    for session in sessions {
        out.extend(recent(db, session, 1, i64::MAX).await?);
    }
    Ok(out)
}

/// The `count` newest messages of a session at or before `before`, oldest first.
pub async fn recent(db: &Database, session: &str, count: i64, before: i64) -> Result<Vec<MessageRow>, BackendError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM message WHERE chat_session_id = ? AND created_at <= ? \
         ORDER BY created_at DESC, message_id DESC LIMIT {count}"
    );
    let mut rows: Vec<MessageRow> =
        sqlx::query_as(AssertSqlSafe(sql)).bind(session).bind(before).fetch_all(&db.pool).await?;
    rows.reverse();
    Ok(rows)
}

/// Messages of a session with `from <= created_at <= to`, oldest first, at most `limit`.
pub async fn between(
    db: &Database,
    session: &str,
    from: i64,
    to: i64,
    limit: i64,
) -> Result<Vec<MessageRow>, BackendError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM message WHERE chat_session_id = ? AND created_at >= ? AND created_at <= ? \
         ORDER BY created_at, message_id LIMIT {limit}"
    );
    Ok(sqlx::query_as(AssertSqlSafe(sql)).bind(session).bind(from).bind(to).fetch_all(&db.pool).await?)
}

/// Messages by id (any order).
pub async fn by_ids(db: &Database, ids: &[String]) -> Result<Vec<MessageRow>, BackendError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!("SELECT {COLUMNS} FROM message WHERE message_id IN ({})", placeholders(ids.len()));
    let mut q = sqlx::query_as(AssertSqlSafe(sql));
    for id in ids {
        q = q.bind(id);
    }
    Ok(q.fetch_all(&db.pool).await?)
}

/// Text messages of a session containing `key` (any case), newest first: the embedded search.
pub async fn search_text(db: &Database, session: &str, key: &str, limit: i64) -> Result<Vec<String>, BackendError> {
    let sql = format!(
        "SELECT message_id FROM message WHERE chat_session_id = ? AND message_type = 0 \
         AND LOWER(content) LIKE ? ESCAPE '!' ORDER BY created_at DESC, message_id DESC LIMIT {limit}"
    );
    let rows: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(session)
        .bind(crate::search::like_pattern(key))
        .fetch_all(&db.pool)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
