//! The message queue between the transmit and message-storage services: RabbitMQ (durable
//! queue, persistent messages, publisher confirms) in clusters, an in-process queue in
//! standalone mode. A publish returns only once the broker has the message; a consumer
//! acknowledges a batch only after its handler succeeded, so a crash redelivers, never loses.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::{Mutex, mpsc, watch};
use tokio_stream::StreamExt;

use crate::BackendError;

/// Most messages handed to a consumer at once (also the broker prefetch).
pub const BATCH: usize = 200;

/// Processes a batch of message bodies; an error redelivers the whole batch.
#[async_trait]
pub trait BatchHandler: Send + Sync {
    async fn handle(&self, batch: &[Vec<u8>]) -> Result<(), String>;
}

#[async_trait]
pub trait MessageQueue: Send + Sync + 'static {
    /// Returns once the message is durably queued (or fails after the publish timeout).
    async fn publish(&self, body: Vec<u8>) -> Result<(), BackendError>;
    /// Feeds batches to `handler` until `shutdown` turns true, reconnecting as needed.
    async fn consume(&self, handler: Arc<dyn BatchHandler>, shutdown: watch::Receiver<bool>);
}

/// `amqp://...` (RabbitMQ, queue `queue`) or `memory://`.
pub async fn open(url: &str, queue: &str, publish_timeout: Duration) -> Result<Arc<dyn MessageQueue>, BackendError> {
    if url.starts_with("memory:") {
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Arc::new(MemoryQueue { tx, rx: Mutex::new(rx) }))
    } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
        let q =
            AmqpQueue { url: url.to_string(), queue: queue.to_string(), publish_timeout, channel: Mutex::new(None) };
        // Connected lazily: the broker may start after us (or be restarting); publishes and
        // the consumer retry until it is there.
        Ok(Arc::new(q))
    } else {
        Err(BackendError::UnsupportedUrl(crate::db::redact(url)))
    }
}

fn amqp(e: lapin::Error) -> BackendError {
    BackendError::Queue(e.to_string())
}

pub struct AmqpQueue {
    url: String,
    queue: String,
    publish_timeout: Duration,
    /// The publishing channel (confirm mode), shared by all concurrent publishers so their
    /// confirms pipeline; replaced after any failure.
    channel: Mutex<Option<(Connection, Channel)>>,
}

impl AmqpQueue {
    async fn connect(&self) -> Result<(Connection, Channel), BackendError> {
        let conn = Connection::connect(&self.url, ConnectionProperties::default()).await.map_err(amqp)?;
        let channel = conn.create_channel().await.map_err(amqp)?;
        channel
            .queue_declare(self.queue.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default())
            .await
            .map_err(amqp)?;
        Ok((conn, channel))
    }

    async fn channel(&self) -> Result<Channel, BackendError> {
        let mut slot = self.channel.lock().await;
        if let Some((conn, ch)) = slot.as_ref()
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let (conn, ch) = self.connect().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await.map_err(amqp)?;
        *slot = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn publish_once(&self, body: &[u8]) -> Result<(), BackendError> {
        let ch = self.channel().await?;
        let props = BasicProperties::default().with_delivery_mode(2); // persistent
        let confirm = ch
            .basic_publish("".into(), self.queue.as_str().into(), BasicPublishOptions::default(), body, props)
            .await
            .map_err(amqp)?
            .await
            .map_err(amqp)?;
        match confirm {
            Confirmation::Ack(_) => Ok(()),
            other => Err(BackendError::Queue(format!("broker did not confirm: {other:?}"))),
        }
    }

    async fn consume_once(
        &self,
        handler: &Arc<dyn BatchHandler>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), BackendError> {
        let (_conn, ch) = self.connect().await?;
        ch.basic_qos(BATCH as u16, BasicQosOptions::default()).await.map_err(amqp)?;
        let tag = format!("chatmesh-{}", crate::new_id());
        let mut consumer = ch
            .basic_consume(
                self.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp)?;
        loop {
            let first = tokio::select! {
                d = consumer.next() => d,
                _ = crate::stopped(shutdown) => return Ok(()),
            };
            let Some(first) = first else { return Err(BackendError::Queue("consumer cancelled".into())) };
            let mut batch = vec![first.map_err(amqp)?];
            // Take whatever else is already here, without waiting long: batches form under load.
            while batch.len() < BATCH {
                match tokio::time::timeout(Duration::from_millis(2), consumer.next()).await {
                    Ok(Some(d)) => batch.push(d.map_err(amqp)?),
                    _ => break,
                }
            }
            let bodies: Vec<Vec<u8>> = batch.iter().map(|d| d.data.clone()).collect();
            let last = batch.last().expect("batch is not empty");
            match handler.handle(&bodies).await {
                Ok(()) => {
                    last.ack(BasicAckOptions { multiple: true }).await.map_err(amqp)?;
                }
                Err(e) => {
                    tracing::warn!(error = %e, messages = batch.len(), "batch failed; redelivering");
                    last.nack(BasicNackOptions { multiple: true, requeue: true }).await.map_err(amqp)?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

#[async_trait]
impl MessageQueue for AmqpQueue {
    async fn publish(&self, body: Vec<u8>) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        loop {
            match self.publish_once(&body).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    // The broker may be restarting: drop the channel and try a fresh one.
                    tracing::warn!(error = %e, "publish failed; reconnecting");
                    *self.channel.lock().await = None;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    async fn consume(&self, handler: Arc<dyn BatchHandler>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            if let Err(e) = self.consume_once(&handler, &mut shutdown).await {
                tracing::warn!(error = %e, queue = %self.queue, "consumer disconnected; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = crate::stopped(&mut shutdown) => {}
                }
            }
        }
    }
}

/// Standalone: the queue lives in the process (and so does not survive it).
pub struct MemoryQueue {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    rx: Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
}

#[async_trait]
impl MessageQueue for MemoryQueue {
    async fn publish(&self, body: Vec<u8>) -> Result<(), BackendError> {
        self.tx.send(body).map_err(|_| BackendError::Queue("queue closed".into()))
    }

    async fn consume(&self, handler: Arc<dyn BatchHandler>, mut shutdown: watch::Receiver<bool>) {
        let mut rx = self.rx.lock().await;
        let mut batch: Vec<Vec<u8>> = Vec::new();
        loop {
            if batch.is_empty() {
                tokio::select! {
                    m = rx.recv() => match m { Some(m) => batch.push(m), None => return },
                    _ = crate::stopped(&mut shutdown) => return,
                }
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            match handler.handle(&batch).await {
                Ok(()) => batch.clear(),
                Err(e) => {
                    tracing::warn!(error = %e, messages = batch.len(), "batch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails its first call, then records what it gets.
    #[derive(Default)]
    struct Flaky {
        calls: AtomicUsize,
        seen: std::sync::Mutex<Vec<Vec<u8>>>,
    }

    #[async_trait]
    impl BatchHandler for Flaky {
        async fn handle(&self, batch: &[Vec<u8>]) -> Result<(), String> {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err("first call fails".into());
            }
            self.seen.lock().unwrap().extend_from_slice(batch);
            Ok(())
        }
    }

    async fn delivers_everything_after_a_failure(queue: Arc<dyn MessageQueue>) {
        let handler = Arc::new(Flaky::default());
        let (stop, shutdown) = watch::channel(false);
        let q = queue.clone();
        let h: Arc<dyn BatchHandler> = handler.clone();
        let consumer = tokio::spawn(async move { q.consume(h, shutdown).await });
        for i in 0..50u8 {
            queue.publish(vec![i]).await.unwrap();
        }
        for _ in 0..100 {
            if handler.seen.lock().unwrap().len() >= 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut seen = handler.seen.lock().unwrap().clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 50, "every message arrives despite the failed batch");
        stop.send(true).unwrap();
        consumer.await.unwrap();
    }

    #[tokio::test]
    async fn memory_queue_redelivers_failed_batches() {
        delivers_everything_after_a_failure(open("memory://", "q", Duration::from_secs(1)).await.unwrap()).await;
    }

    #[tokio::test]
    async fn rabbitmq_queue_redelivers_failed_batches() {
        let Some(url) = crate::test_url("CHATMESH_TEST_AMQP_URL") else { return };
        let queue = format!("chatmesh-t-{}", crate::new_id());
        delivers_everything_after_a_failure(open(&url, &queue, Duration::from_secs(5)).await.unwrap()).await;
    }
}
