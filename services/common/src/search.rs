//! Search over users (and, later, messages): Elasticsearch in clusters; in standalone mode the
//! relational database answers the same queries itself (substring matching with `LIKE`), so
//! there is no second copy to keep in step.

use std::sync::Arc;

use async_trait::async_trait;
use elasticsearch::http::transport::Transport;
use elasticsearch::indices::{IndicesCreateParts, IndicesExistsParts};
use elasticsearch::params::Refresh;
use elasticsearch::{Elasticsearch, IndexParts, SearchParts};
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

#[async_trait]
pub trait UserIndex: Send + Sync + 'static {
    /// Adds or replaces a user; searches see it as soon as this returns.
    async fn upsert(&self, doc: &UserDoc) -> Result<(), BackendError>;
    /// Ids of users whose nickname contains `key` (any case), whose phone contains it, or whose
    /// id is `key`; at most `limit`.
    async fn search(&self, key: &str, limit: usize) -> Result<Vec<String>, BackendError>;
}

/// Opens the index named by `url`: `embedded://` (the database) or `http(s)://` (Elasticsearch,
/// indices named `<prefix>-users`, ...).
pub async fn open(url: &str, prefix: &str, db: &Database) -> Result<Arc<dyn UserIndex>, BackendError> {
    if url.starts_with("embedded:") {
        Ok(Arc::new(SqlSearch { db: db.clone() }))
    } else if url.starts_with("http://") || url.starts_with("https://") {
        let transport = Transport::single_node(url).map_err(es)?;
        let index = ElasticSearch { client: Elasticsearch::new(transport), users: format!("{prefix}-users") };
        index.ensure_users_index().await?;
        Ok(Arc::new(index))
    } else {
        Err(BackendError::UnsupportedUrl(crate::db::redact(url)))
    }
}

fn es(e: elasticsearch::Error) -> BackendError {
    BackendError::Search(e.to_string())
}

pub struct SqlSearch {
    db: Database,
}

/// `%key%` with LIKE's own wildcards escaped, so `_` and `%` match themselves.
fn like_pattern(key: &str) -> String {
    let escaped = key.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{}%", escaped.to_lowercase())
}

#[async_trait]
impl UserIndex for SqlSearch {
    async fn upsert(&self, _doc: &UserDoc) -> Result<(), BackendError> {
        Ok(()) // the users table is the index
    }

    async fn search(&self, key: &str, limit: usize) -> Result<Vec<String>, BackendError> {
        let pattern = like_pattern(key);
        let sql = format!(
            "SELECT user_id FROM users WHERE LOWER(nickname) LIKE ? ESCAPE '\\' OR phone LIKE ? ESCAPE '\\' \
             OR user_id = ? ORDER BY created_at LIMIT {limit}"
        );
        let rows: Vec<(String,)> =
            sqlx::query_as(AssertSqlSafe(sql)).bind(&pattern).bind(&pattern).bind(key).fetch_all(&self.db.pool).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}

pub struct ElasticSearch {
    client: Elasticsearch,
    users: String,
}

impl ElasticSearch {
    async fn ensure_users_index(&self) -> Result<(), BackendError> {
        let exists =
            self.client.indices().exists(IndicesExistsParts::Index(&[&self.users])).send().await.map_err(es)?;
        if exists.status_code().is_success() {
            return Ok(());
        }
        // Keywords, searched with case-insensitive wildcards: substring matches work the same
        // for Chinese and English without an analysis plugin.
        let mapping = json!({
            "mappings": {"properties": {
                "user_id": {"type": "keyword"},
                "nickname": {"type": "keyword"},
                "phone": {"type": "keyword"},
                "description": {"type": "text"}
            }}
        });
        let rsp = self
            .client
            .indices()
            .create(IndicesCreateParts::Index(&self.users))
            .body(mapping)
            .send()
            .await
            .map_err(es)?;
        let status = rsp.status_code();
        let body = rsp.text().await.unwrap_or_default();
        if status.is_success() || body.contains("resource_already_exists_exception") {
            Ok(())
        } else {
            Err(BackendError::Search(format!("creating index {}: {status} {body}", self.users)))
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
impl UserIndex for ElasticSearch {
    async fn upsert(&self, doc: &UserDoc) -> Result<(), BackendError> {
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

    async fn search(&self, key: &str, limit: usize) -> Result<Vec<String>, BackendError> {
        let pattern = wildcard(key);
        let query = json!({
            "size": limit,
            "query": {"bool": {"should": [
                {"wildcard": {"nickname": {"value": pattern, "case_insensitive": true}}},
                {"wildcard": {"phone": {"value": pattern}}},
                {"term": {"user_id": key}}
            ]}}
        });
        let rsp = self.client.search(SearchParts::Index(&[&self.users])).body(query).send().await.map_err(es)?;
        let body = checked(rsp).await?;
        let hits = body["hits"]["hits"].as_array().cloned().unwrap_or_default();
        Ok(hits.iter().filter_map(|h| h["_id"].as_str().map(str::to_string)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_escape_their_metacharacters() {
        assert_eq!(like_pattern("A_b%"), "%a\\_b\\%%");
        assert_eq!(wildcard("a*b?"), "*a\\*b\\?*");
    }
}
