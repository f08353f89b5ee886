//! The queue consumer: a batch of queued messages becomes one multi-row insert that skips ids
//! already stored, then one bulk index of their text. The batch is acknowledged only after the
//! insert committed and the text is either indexed or recorded in `search_backlog` (when the
//! index failed), so a crash or restart redelivers it, the insert makes the redelivery
//! harmless, and an indexing failure is caught up by [`Storage::catch_up`], never lost.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chatmesh_common::db::placeholders;
use chatmesh_common::health::Link;
use chatmesh_common::messages::{self, MessageRow};
use chatmesh_common::queue::BatchHandler;
use chatmesh_common::search::{self, MessageDoc, SearchIndex};
use chatmesh_common::{BackendError, Database};
use chatmesh_proto::{MessageInfo, MessageType};
use prost::Message;
use sqlx::AssertSqlSafe;
use tokio::sync::watch;

/// How often the backlog of unindexed messages is looked at.
const CATCH_UP_EVERY: Duration = Duration::from_secs(2);
const CATCH_UP_BATCH: usize = 500;
/// Deadline of one page of catching up (database read, index write, database delete).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Storage {
    pub db: Database,
    pub index: Arc<dyn SearchIndex>,
    /// The database, as the consumer sees it (for readiness, logs, reconnect counts).
    pub db_link: Arc<Link>,
    /// The search index, likewise (not required: history works without it).
    pub search_link: Arc<Link>,
}

#[async_trait]
impl BatchHandler for Storage {
    #[tracing::instrument(name = "storage.store", skip_all, fields(messages = batch.len()))]
    async fn handle(&self, batch: &[Vec<u8>]) -> Result<(), String> {
        let started = std::time::Instant::now();
        // Exported from the first batch on (at zero), so alerts on it have a series to watch.
        let index_failures = metrics::counter!("chatmesh_search_index_failures_total", "what" => "messages");
        index_failures.increment(0);
        let result = self.store(batch).await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        metrics::histogram!("chatmesh_storage_batch_size").record(batch.len() as f64);
        metrics::histogram!("chatmesh_storage_batch_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }
}

impl Storage {
    /// One batch: inserted, then indexed (or its ids put in the backlog).
    async fn store(&self, batch: &[Vec<u8>]) -> Result<(), String> {
        let mut rows = Vec::with_capacity(batch.len());
        for body in batch {
            match MessageInfo::decode(body.as_slice()) {
                Ok(info) if !info.message_id.is_empty() => rows.push(MessageRow::from_info(&info)),
                // Redelivering an undecodable message would block the queue forever.
                _ => tracing::error!(bytes = body.len(), "dropping an undecodable queued message"),
            }
        }
        self.db_link.track(messages::insert_new(&self.db, &rows).await).map_err(|e| e.to_string())?;
        let docs: Vec<MessageDoc> = rows
            .iter()
            .filter(|r| r.message_type == MessageType::String as i64)
            .map(|r| MessageDoc {
                message_id: r.message_id.clone(),
                chat_session_id: r.chat_session_id.clone(),
                content: r.content.clone().unwrap_or_default(),
                created_at: r.created_at,
            })
            .collect();
        if let Err(e) = self.search_link.track(self.index.index_messages(&docs).await) {
            metrics::counter!("chatmesh_search_index_failures_total", "what" => "messages").increment(1);
            // Stored but not searchable yet: remember which, then acknowledge (history must not
            // wait for search). If even that fails, the batch is redelivered.
            let ids: Vec<String> = docs.iter().map(|d| d.message_id.clone()).collect();
            self.db_link.track(add_backlog(&self.db, &ids).await).map_err(|b| format!("{e}; and {b}"))?;
            metrics::counter!("chatmesh_search_backlog_added_total").increment(ids.len() as u64);
        }
        metrics::counter!("chatmesh_messages_stored_total").increment(rows.len() as u64);
        Ok(())
    }
}

impl Storage {
    /// Indexes what the backlog names, until `shutdown`.
    pub async fn catch_up(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CATCH_UP_EVERY) => {}
                _ = chatmesh_common::stopped(&mut shutdown) => return,
            }
            // Drain the backlog while it has work and the index takes it.
            loop {
                let once = tokio::time::timeout(CATCH_UP_TIMEOUT, self.catch_up_once()).await;
                match once.unwrap_or_else(|_| Err(BackendError::Search("catching up took too long".into()))) {
                    Ok(0) => break,
                    Ok(n) => {
                        tracing::info!(messages = n, "indexed messages from the search backlog");
                        metrics::counter!("chatmesh_search_backlog_indexed_total").increment(n as u64);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "search backlog not caught up yet");
                        break;
                    }
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }

    /// One page of the backlog: indexed, then removed from it. Returns how many.
    pub async fn catch_up_once(&self) -> Result<usize, BackendError> {
        let sql = format!(
            "SELECT m.message_id, m.chat_session_id, m.content, m.created_at FROM search_backlog b \
             JOIN message m ON m.message_id = b.message_id ORDER BY b.message_id LIMIT {CATCH_UP_BATCH}"
        );
        let rows: Vec<search::MessageDocRow> = sqlx::query_as(AssertSqlSafe(sql)).fetch_all(&self.db.pool).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let docs: Vec<MessageDoc> = rows.into_iter().map(MessageDoc::from).collect();
        self.search_link.track(self.index.index_messages(&docs).await)?;
        let ids: Vec<&String> = docs.iter().map(|d| &d.message_id).collect();
        let sql = format!("DELETE FROM search_backlog WHERE message_id IN ({})", placeholders(ids.len()));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in &ids {
            q = q.bind(*id);
        }
        q.execute(&self.db.pool).await?;
        Ok(docs.len())
    }
}

/// Records messages as stored but not indexed (ids already there are skipped).
async fn add_backlog(db: &Database, ids: &[String]) -> Result<(), BackendError> {
    if ids.is_empty() {
        return Ok(());
    }
    let verb = match db.dialect {
        chatmesh_common::db::Dialect::MySql => "INSERT IGNORE",
        chatmesh_common::db::Dialect::Sqlite => "INSERT OR IGNORE",
    };
    let values = vec!["(?)"; ids.len()].join(", ");
    let mut q = sqlx::query(AssertSqlSafe(format!("{verb} INTO search_backlog (message_id) VALUES {values}")));
    for id in ids {
        q = q.bind(id);
    }
    q.execute(&db.pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatmesh_common::health::Health;
    use chatmesh_common::search::UserDoc;
    use chatmesh_proto::message_content::MsgContent;
    use chatmesh_proto::{MessageContent, StringMessageInfo, UserInfo};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// An index that refuses writes while `down`, and records what it took.
    #[derive(Default)]
    struct Flaky {
        down: AtomicBool,
        indexed: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl SearchIndex for Flaky {
        async fn upsert_user(&self, _: &UserDoc) -> Result<(), BackendError> {
            Ok(())
        }
        async fn search_users(&self, _: &str, _: usize) -> Result<Vec<String>, BackendError> {
            Ok(vec![])
        }
        async fn index_messages(&self, docs: &[MessageDoc]) -> Result<(), BackendError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(BackendError::Search("connection refused".into()));
            }
            self.indexed.lock().unwrap().extend(docs.iter().map(|d| d.message_id.clone()));
            Ok(())
        }
        async fn search_messages(&self, _: &str, _: &str, _: usize) -> Result<Vec<String>, BackendError> {
            Ok(vec![])
        }
    }

    fn message(id: &str) -> Vec<u8> {
        MessageInfo {
            message_id: id.into(),
            chat_session_id: "s".into(),
            timestamp: 1,
            sender: Some(UserInfo { user_id: "u".into(), ..Default::default() }),
            message: Some(MessageContent {
                message_type: MessageType::String as i32,
                msg_content: Some(MsgContent::StringMessage(StringMessageInfo { content: format!("text {id}") })),
            }),
        }
        .encode_to_vec()
    }

    #[tokio::test]
    async fn an_indexing_failure_is_remembered_and_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::connect(&format!("sqlite://{}/m.db?mode=rwc", dir.path().display()), 2).await.unwrap();
        db.migrate().await.unwrap();
        let index = Arc::new(Flaky::default());
        let health = Health::default();
        let storage = Storage {
            db: db.clone(),
            index: index.clone(),
            db_link: health.link("database", true),
            search_link: health.link("search", false),
        };
        index.down.store(true, Ordering::SeqCst);
        // Stored and acknowledged although the index is down; remembered in the backlog.
        storage.handle(&[message("m1"), message("m2")]).await.unwrap();
        assert!(storage.search_link.cause().is_some(), "the failure is not silent");
        let stored = messages::by_ids(&db, &["m1".into(), "m2".into()]).await.unwrap();
        assert_eq!(stored.len(), 2);
        assert!(storage.catch_up_once().await.is_err(), "still down: the backlog stays");
        index.down.store(false, Ordering::SeqCst);
        assert_eq!(storage.catch_up_once().await.unwrap(), 2);
        assert_eq!(storage.catch_up_once().await.unwrap(), 0, "the backlog is empty once indexed");
        assert_eq!(*index.indexed.lock().unwrap(), vec!["m1".to_string(), "m2".to_string()]);
        assert!(storage.search_link.is_up());
        // A redelivered batch (the broker did not see the acknowledgement) is stored once.
        storage.handle(&[message("m1")]).await.unwrap();
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM message").fetch_one(&db.pool).await.unwrap();
        assert_eq!(n, 2);
    }
}
