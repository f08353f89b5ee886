//! Search over users and messages: Elasticsearch in clusters; in standalone mode the relational
//! database answers the same queries itself (substring matching with `LIKE`), so there is no
//! second copy to keep in step.

use std::sync::Arc;

use async_trait::async_trait;
use elasticsearch::http::request::JsonBody;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::indices::{IndicesCreateParts, IndicesExistsParts, IndicesPutSettingsParts};
use elasticsearch::params::Refresh;
use elasticsearch::{BulkParts, Elasticsearch, IndexParts, SearchParts};
use serde_json::json;
use sqlx::AssertSqlSafe;

use crate::{BackendError, Database};

/// The searchable fields of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDoc {
    pub user_id: String,
    pub nickname: String,
    pub phone: String,
    pub description: String,
}

/// The searchable part of a text message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageDoc {
    pub message_id: String,
    pub chat_session_id: String,
    pub content: String,
    pub created_at: i64,
}

/// A text message as selected from the `message` table for indexing:
/// `message_id, chat_session_id, content, created_at`.
pub type MessageDocRow = (String, String, Option<String>, i64);

impl From<MessageDocRow> for MessageDoc {
    fn from((message_id, chat_session_id, content, created_at): MessageDocRow) -> Self {
        Self { message_id, chat_session_id, content: content.unwrap_or_default(), created_at }
    }
}

#[async_trait]
pub trait SearchIndex: Send + Sync + 'static {
    /// Adds or replaces a user; searches see it as soon as this returns.
    async fn upsert_user(&self, doc: &UserDoc) -> Result<(), BackendError>;
    /// Ids of users whose nickname contains `key` (any case), whose phone is exactly `key`
    /// (no substrings: numbers cannot be harvested digit by digit), or whose id is `key`; at
    /// most `limit`.
    async fn search_users(&self, key: &str, limit: usize) -> Result<Vec<String>, BackendError>;
    /// Adds text messages (idempotent by message id); searchable within about a second.
    async fn index_messages(&self, docs: &[MessageDoc]) -> Result<(), BackendError>;
    /// Ids of text messages of one session containing `key`, newest first; at most `limit`.
    async fn search_messages(&self, session: &str, key: &str, limit: usize) -> Result<Vec<String>, BackendError>;
    /// Whether this index is a separate copy that writes can miss (false: the database itself).
    fn is_separate(&self) -> bool {
        true
    }
}

/// Deadline of one Elasticsearch request: a dead server fails the request, never holds it.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the index named by `url`: `embedded://` (the database) or `http(s)://` (Elasticsearch,
/// indices named `<prefix>-users` and `<prefix>-messages`).
pub async fn open(url: &str, prefix: &str, db: &Database) -> Result<Arc<dyn SearchIndex>, BackendError> {
    if url.starts_with("embedded:") {
        Ok(Arc::new(SqlSearch { db: db.clone() }))
    } else if url.starts_with("http://") || url.starts_with("https://") {
        let index = ElasticSearch {
            client: es_client(url)?,
            users: format!("{prefix}-users"),
            messages: format!("{prefix}-messages"),
        };
        index.ensure_index(&index.users, USERS_MAPPING).await?;
        index.ensure_index(&index.messages, MESSAGES_MAPPING).await?;
        Ok(Arc::new(index))
    } else {
        Err(BackendError::UnsupportedUrl(crate::db::redact(url)))
    }
}

fn es_client(url: &str) -> Result<Elasticsearch, BackendError> {
    let node = url.parse().map_err(|e| BackendError::Search(format!("search URL: {e}")))?;
    let transport = TransportBuilder::new(SingleNodeConnectionPool::new(node))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| BackendError::Search(e.to_string()))?;
    Ok(Elasticsearch::new(transport))
}

fn es(e: elasticsearch::Error) -> BackendError {
    BackendError::Search(e.to_string())
}

pub struct SqlSearch {
    db: Database,
}

/// `%key%` with LIKE's own wildcards escaped, so `_` and `%` match themselves; use with
/// `ESCAPE '!'` (not a backslash, which MySQL/MariaDB also treat as an escape inside string
/// literals: `ESCAPE '\'` is a syntax error there).
pub fn like_pattern(key: &str) -> String {
    let escaped = key.replace('!', "!!").replace('%', "!%").replace('_', "!_");
    format!("%{}%", escaped.to_lowercase())
}

#[async_trait]
impl SearchIndex for SqlSearch {
    fn is_separate(&self) -> bool {
        false
    }

    async fn upsert_user(&self, _doc: &UserDoc) -> Result<(), BackendError> {
        Ok(()) // the users table is the index
    }

    async fn index_messages(&self, _docs: &[MessageDoc]) -> Result<(), BackendError> {
        Ok(()) // the message table is the index
    }

    async fn search_messages(&self, session: &str, key: &str, limit: usize) -> Result<Vec<String>, BackendError> {
        crate::messages::search_text(&self.db, session, key, limit as i64).await
    }

    async fn search_users(&self, key: &str, limit: usize) -> Result<Vec<String>, BackendError> {
        let pattern = like_pattern(key);
        let sql = format!(
            "SELECT user_id FROM users WHERE LOWER(nickname) LIKE ? ESCAPE '!' OR phone = ? \
             OR user_id = ? ORDER BY created_at LIMIT {limit}"
        );
        let rows: Vec<(String,)> =
            sqlx::query_as(AssertSqlSafe(sql)).bind(&pattern).bind(key).bind(key).fetch_all(&self.db.pool).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}

pub struct ElasticSearch {
    client: Elasticsearch,
    users: String,
    messages: String,
}

/// User names as keywords, searched with case-insensitive wildcards: substrings match the same
/// for Chinese and English without an analysis plugin.
const USERS_MAPPING: &str = r#"{"mappings": {"properties": {
    "user_id": {"type": "keyword"}, "nickname": {"type": "keyword"},
    "phone": {"type": "keyword"}, "description": {"type": "text"}}}}"#;

/// Message text through the standard analyzer: words for English, single characters for
/// Chinese, so a phrase query finds both.
///
/// Stored messages become searchable within 5 s. The index takes a steady stream of writes and
/// few searches: Elasticsearch's default (a refresh every second while it is searched) cost it
/// 1.6-2x the CPU per indexed message here (12-02: 134-168 µs at 1 s, 86 at 5 s, 76 with none,
/// bulks of 100 at 10/s), CPU the message path shares.
const MESSAGES_MAPPING: &str = r#"{"settings": {"index": {"refresh_interval": "5s"}},
    "mappings": {"properties": {
    "chat_session_id": {"type": "keyword"}, "content": {"type": "text"},
    "created_at": {"type": "long"}}}}"#;

impl ElasticSearch {
    async fn ensure_index(&self, name: &str, mapping: &str) -> Result<(), BackendError> {
        let mapping: serde_json::Value = serde_json::from_str(mapping).expect("mapping constants are JSON");
        let exists = self.client.indices().exists(IndicesExistsParts::Index(&[name])).send().await.map_err(es)?;
        if exists.status_code().is_success() {
            // An index an earlier release made gets today's settings (they are dynamic ones).
            // They tune write load only: a cluster that refuses them (a role without `manage`
            // on the index) still serves search, so that is a warning, not a failed start.
            if let Some(settings) = mapping.get("settings") {
                let (indices, names) = (self.client.indices(), [name]);
                let put = indices.put_settings(IndicesPutSettingsParts::Index(&names)).body(settings.clone());
                if let Err(e) = async { checked(put.send().await.map_err(es)?).await }.await {
                    tracing::warn!(index = name, error = %e, "could not update the index settings");
                }
            }
            return Ok(());
        }
        let rsp =
            self.client.indices().create(IndicesCreateParts::Index(name)).body(mapping).send().await.map_err(es)?;
        let status = rsp.status_code();
        let body = rsp.text().await.unwrap_or_default();
        // Another service may have created it a moment ago.
        if status.is_success() || body.contains("resource_already_exists_exception") {
            Ok(())
        } else {
            Err(BackendError::Search(format!("creating index {name}: {status} {body}")))
        }
    }
}

/// Wildcard syntax with its own metacharacters escaped.
fn wildcard(key: &str) -> String {
    let escaped = key.replace('\\', "\\\\").replace('*', "\\*").replace('?', "\\?");
    format!("*{escaped}*")
}

async fn checked(rsp: elasticsearch::http::response::Response) -> Result<serde_json::Value, BackendError> {
    let status = rsp.status_code();
    let body: serde_json::Value = rsp.json().await.map_err(es)?;
    if status.is_success() { Ok(body) } else { Err(BackendError::Search(format!("{status}: {body}"))) }
}

#[async_trait]
impl SearchIndex for ElasticSearch {
    async fn index_messages(&self, docs: &[MessageDoc]) -> Result<(), BackendError> {
        if docs.is_empty() {
            return Ok(());
        }
        let mut body: Vec<JsonBody<serde_json::Value>> = Vec::with_capacity(docs.len() * 2);
        for d in docs {
            body.push(json!({"index": {"_id": d.message_id}}).into());
            body.push(
                json!({"chat_session_id": d.chat_session_id, "content": d.content, "created_at": d.created_at}).into(),
            );
        }
        let rsp = self.client.bulk(BulkParts::Index(&self.messages)).body(body).send().await.map_err(es)?;
        let result = checked(rsp).await?;
        if result["errors"].as_bool() == Some(true) {
            return Err(BackendError::Search(format!("bulk indexing failed: {}", result["items"])));
        }
        Ok(())
    }

    async fn search_messages(&self, session: &str, key: &str, limit: usize) -> Result<Vec<String>, BackendError> {
        let query = json!({
            "size": limit,
            "sort": [{"created_at": "desc"}],
            "query": {"bool": {
                "filter": [{"term": {"chat_session_id": session}}],
                "must": [{"match_phrase": {"content": key}}]
            }}
        });
        let rsp = self.client.search(SearchParts::Index(&[&self.messages])).body(query).send().await.map_err(es)?;
        let body = checked(rsp).await?;
        let hits = body["hits"]["hits"].as_array().cloned().unwrap_or_default();
        Ok(hits.iter().filter_map(|h| h["_id"].as_str().map(str::to_string)).collect())
    }

    async fn upsert_user(&self, doc: &UserDoc) -> Result<(), BackendError> {
        let body = json!({
            "user_id": doc.user_id, "nickname": doc.nickname, "phone": doc.phone, "description": doc.description,
        });
        let rsp = self
            .client
            .index(IndexParts::IndexId(&self.users, &doc.user_id))
            .refresh(Refresh::True)
            .body(body)
            .send()
            .await
            .map_err(es)?;
        checked(rsp).await.map(drop)
    }

    async fn search_users(&self, key: &str, limit: usize) -> Result<Vec<String>, BackendError> {
        let pattern = wildcard(key);
        let query = json!({
            "size": limit,
            "query": {"bool": {"should": [
                {"wildcard": {"nickname": {"value": pattern, "case_insensitive": true}}},
                {"term": {"phone": key}},
                {"term": {"user_id": key}}
            ]}}
        });
        let rsp = self.client.search(SearchParts::Index(&[&self.users])).body(query).send().await.map_err(es)?;
        let body = checked(rsp).await?;
        let hits = body["hits"]["hits"].as_array().cloned().unwrap_or_default();
        Ok(hits.iter().filter_map(|h| h["_id"].as_str().map(str::to_string)).collect())
    }
}

/// Writes every text message and every user of the database into `index` again (idempotent:
/// documents are keyed by id), page by page; returns (messages, users) written.
pub async fn rebuild(db: &Database, index: &dyn SearchIndex) -> Result<(usize, usize), BackendError> {
    const PAGE: usize = 1000;
    let mut messages = 0;
    let mut after = String::new();
    loop {
        let sql = format!(
            "SELECT message_id, chat_session_id, content, created_at FROM message \
             WHERE message_type = 0 AND message_id > ? ORDER BY message_id LIMIT {PAGE}"
        );
        let rows: Vec<MessageDocRow> = sqlx::query_as(AssertSqlSafe(sql)).bind(&after).fetch_all(&db.pool).await?;
        let Some(last) = rows.last() else { break };
        after = last.0.clone();
        let docs: Vec<MessageDoc> = rows.into_iter().map(MessageDoc::from).collect();
        index.index_messages(&docs).await?;
        messages += docs.len();
    }
    let mut users = 0;
    let mut after = String::new();
    loop {
        let sql = format!(
            "SELECT user_id, nickname, phone, description FROM users WHERE user_id > ? ORDER BY user_id LIMIT {PAGE}"
        );
        let rows: Vec<(String, String, Option<String>, String)> =
            sqlx::query_as(AssertSqlSafe(sql)).bind(&after).fetch_all(&db.pool).await?;
        let Some(last) = rows.last() else { break };
        after = last.0.clone();
        for (user_id, nickname, phone, description) in rows {
            index.upsert_user(&UserDoc { user_id, nickname, phone: phone.unwrap_or_default(), description }).await?;
            users += 1;
        }
    }
    Ok((messages, users))
}

#[cfg(test)]
mod tests {
    use super::*;
    use elasticsearch::indices::IndicesDeleteParts;

    #[test]
    fn patterns_escape_their_metacharacters() {
        assert_eq!(like_pattern("A_b%!"), "%a!_b!%!!%");
        assert_eq!(wildcard("a*b?"), "*a\\*b\\?*");
    }

    async fn refresh_interval(client: &Elasticsearch, index: &str) -> serde_json::Value {
        let parts = elasticsearch::indices::IndicesGetSettingsParts::Index(&[index]);
        let indices = client.indices();
        let rsp = indices.get_settings(parts).send().await.unwrap();
        checked(rsp).await.unwrap()[index]["settings"]["index"]["refresh_interval"].clone()
    }

    #[tokio::test]
    async fn message_indices_refresh_every_five_seconds_old_ones_too() {
        let Some(url) = crate::test_url("CHATMESH_TEST_ES_URL") else { return };
        let db = Database::connect("sqlite::memory:", 1).await.unwrap();
        let client = es_client(&url).unwrap();
        let fresh = format!("chatmesh_t_{}", crate::new_id());
        let old = format!("chatmesh_t_{}", crate::new_id());
        let (fresh_messages, old_messages) = (format!("{fresh}-messages"), format!("{old}-messages"));
        // As a release before the setting made it: the mapping alone.
        let mut mapping: serde_json::Value = serde_json::from_str(MESSAGES_MAPPING).unwrap();
        mapping.as_object_mut().unwrap().remove("settings");
        let indices = client.indices();
        let create = indices.create(IndicesCreateParts::Index(&old_messages)).body(mapping).send();
        checked(create.await.unwrap()).await.unwrap();
        assert_eq!(refresh_interval(&client, &old_messages).await, serde_json::Value::Null);

        for (prefix, messages) in [(&fresh, &fresh_messages), (&old, &old_messages)] {
            open(&url, prefix, &db).await.unwrap();
            assert_eq!(refresh_interval(&client, messages).await, "5s", "{prefix}");
            // Users are written rarely and read right after: Elasticsearch's default stays.
            assert_eq!(refresh_interval(&client, &format!("{prefix}-users")).await, serde_json::Value::Null);
        }
        let all = [format!("{fresh}-*"), format!("{old}-*")];
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let _ = indices.delete(IndicesDeleteParts::Index(&all)).send().await;
    }
}
