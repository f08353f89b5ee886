//! The queue consumer: a batch of queued messages becomes one multi-row insert that skips ids
//! already stored, then one bulk index of their text. The batch is acknowledged only after
//! both, so a crash or restart redelivers it and the insert makes the redelivery harmless.

use std::sync::Arc;

use async_trait::async_trait;
use chatmesh_common::Database;
use chatmesh_common::messages::{self, MessageRow};
use chatmesh_common::queue::BatchHandler;
use chatmesh_common::search::{MessageDoc, SearchIndex};
use chatmesh_proto::{MessageInfo, MessageType};
use prost::Message;

pub struct Storage {
    pub db: Database,
    pub index: Arc<dyn SearchIndex>,
}

#[async_trait]
impl BatchHandler for Storage {
    async fn handle(&self, batch: &[Vec<u8>]) -> Result<(), String> {
        let mut rows = Vec::with_capacity(batch.len());
        for body in batch {
            match MessageInfo::decode(body.as_slice()) {
                Ok(info) if !info.message_id.is_empty() => rows.push(MessageRow::from_info(&info)),
                // Redelivering an undecodable message would block the queue forever.
                _ => tracing::error!(bytes = body.len(), "dropping an undecodable queued message"),
            }
        }
        messages::insert_new(&self.db, &rows).await.map_err(|e| e.to_string())?;
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
        self.index.index_messages(&docs).await.map_err(|e| e.to_string())?;
        metrics::counter!("chatmesh_messages_stored_total").increment(rows.len() as u64);
        Ok(())
    }
}
