//! The message queue between the transmit and message-storage services: RabbitMQ (durable
//! queue, persistent messages, publisher confirms) in clusters; in standalone mode a table of the
//! relational database (`database://`), so a send acknowledged there is on disk too. A publish
//! returns only once the message is durably queued; a consumer acknowledges a batch only after
//! its handler succeeded, so a crash redelivers, never loses.
//!
//! On RabbitMQ, publishes that wait for a free slot go out together as one broker message
//! ([`QueuedBatch`], on the queue `<queue>.batched`): one publish and one confirm for many, which
//! is most of the broker's cost per message. The consumer also drains the plain `<queue>` of
//! releases that published one broker message per message; a rollback to such a release leaves
//! batches waiting on their own queue instead of handing them to a consumer that cannot read them.
//!
//! Connections to RabbitMQ heal by themselves: AMQP heartbeats and a deadline on every network
//! await detect a dead broker, and publisher and consumer reconnect with backoff, forever,
//! declaring the queue and consuming again (see [`crate::health`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chatmesh_proto::{QueuedBatch, QueuedMessage};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use prost::Message;
use tokio::sync::{Mutex, Notify, Semaphore, mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tracing::Instrument;

use crate::health::{Backoff, Health, Link};
use crate::{BackendError, Database};

/// Most messages handed to a consumer at once (also the broker prefetch).
pub const BATCH: usize = 200;
/// How long a consumer gathers messages into a batch after the first one arrived, unless
/// configured.
pub const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// Deadline of one exchange with the broker (connect, declare, ack, probe).
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle consumer proves its connection alive this often (beside AMQP heartbeats).
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Negotiated AMQP heartbeat (seconds) unless the URL sets one: a silent peer is dropped after
/// twice this.
const HEARTBEAT_S: u16 = 5;
/// Longest a batch handler may take before the batch is given back.
const HANDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Broker messages being published at once; publishes beyond these wait for a slot and then go
/// out together. At a steady 1,000 msg/s a confirm is back before the next send, so a message
/// rarely waits; in a burst the batches grow and the broker's work per message shrinks.
const AMQP_IN_FLIGHT: usize = 4;
/// Most messages in one broker message (the consumer's batches stay near [`BATCH`]).
const AMQP_BATCH: usize = 64;
/// The broker queue of [`QueuedBatch`]es beside the plain one.
const BATCHED_SUFFIX: &str = ".batched";

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

/// What a process does with the queue, so only the links it uses count for its readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub publish: bool,
    pub consume: bool,
}

/// `amqp://...` (RabbitMQ, queue `queue`), `database://` (a table of `db`) or `memory://` (in
/// the process, lost with it).
pub fn open(
    url: &str,
    queue: &str,
    publish_timeout: Duration,
    batch_window: Duration,
    db: Option<&Database>,
    health: &Health,
    roles: Roles,
) -> Result<Arc<dyn MessageQueue>, BackendError> {
    if url.starts_with("memory:") {
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Arc::new(MemoryQueue { tx, rx: Mutex::new(rx) }))
    } else if url.starts_with("database:") {
        let db = db.ok_or_else(|| BackendError::Queue("database:// needs a database".into()))?;
        Ok(Arc::new(DbQueue::new(db.clone(), publish_timeout, batch_window)))
    } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
        let (writer, pending) = mpsc::channel(PUBLISH_BACKLOG);
        let q = Arc::new(AmqpQueue {
            url: with_heartbeat(url),
            queue: queue.to_string(),
            publish_timeout,
            batch_window,
            channel: Mutex::new(None),
            publisher: health.link("amqp-publisher", roles.publish),
            consumer: health.link("amqp-consumer", roles.consume),
            depth_reported: std::sync::atomic::AtomicI64::new(0),
            writer,
        });
        tokio::spawn(q.clone().write_batches(pending));
        if roles.publish {
            // Connected ahead of the first send and kept connected, so readiness tells the truth
            // and a send after an outage does not pay for the reconnection.
            tokio::spawn(q.clone().keep_publisher());
        }
        Ok(q)
    } else {
        Err(BackendError::UnsupportedUrl(crate::db::redact(url)))
    }
}

/// The URL with a short heartbeat and connect timeout unless it chose its own.
fn with_heartbeat(url: &str) -> String {
    let mut url = url.to_string();
    for (key, value) in [("heartbeat", HEARTBEAT_S.to_string()), ("connection_timeout", "5000".to_string())] {
        if !url.contains(&format!("{key}=")) {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("{key}={value}"));
        }
    }
    url
}

fn amqp(e: lapin::Error) -> BackendError {
    BackendError::Queue(e.to_string())
}

/// One exchange with the broker, with a deadline: a dead peer never holds us.
async fn timed<T>(
    what: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(|e| BackendError::Queue(format!("{what}: {e}"))),
        Err(_) => Err(BackendError::Queue(format!("{what}: no answer within {limit:?}"))),
    }
}

pub struct AmqpQueue {
    url: String,
    queue: String,
    publish_timeout: Duration,
    /// How long the consumer gathers a batch (see [`BATCH_WINDOW`]).
    batch_window: Duration,
    /// The publishing channel (confirm mode), shared by all concurrent publishers so their
    /// confirms pipeline; replaced after any failure. The number tells connections apart.
    channel: Mutex<Option<(u64, Connection, Channel)>>,
    publisher: Arc<Link>,
    consumer: Arc<Link>,
    /// When the queue depth was last read (Unix ms).
    depth_reported: std::sync::atomic::AtomicI64,
    /// Publishes waiting for [`AmqpQueue::write_batches`].
    writer: mpsc::Sender<Pending>,
}

impl AmqpQueue {
    /// The queue of batches, where this release publishes.
    fn batched(&self) -> String {
        format!("{}{BATCHED_SUFFIX}", self.queue)
    }

    async fn connect(&self, queue: &str) -> Result<(Connection, Channel), BackendError> {
        let conn =
            timed("connect", OP_TIMEOUT, Connection::connect(&self.url, ConnectionProperties::default())).await?;
        let channel = timed("open a channel", OP_TIMEOUT, conn.create_channel()).await?;
        let declare = channel.queue_declare(queue.into(), QueueDeclareOptions::durable(), FieldTable::default());
        timed("declare the queue", OP_TIMEOUT, declare).await?;
        Ok((conn, channel))
    }

    async fn channel(&self) -> Result<(u64, Channel), BackendError> {
        let mut slot = self.channel.lock().await;
        if let Some((generation, conn, ch)) = slot.as_ref()
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok((*generation, ch.clone()));
        }
        if let Some((_, conn, _)) = slot.take() {
            close(conn).await;
        }
        let (conn, ch) = self.connect(&self.batched()).await?;
        timed("select confirms", OP_TIMEOUT, ch.confirm_select(ConfirmSelectOptions::default())).await?;
        let generation = rand::random();
        *slot = Some((generation, conn, ch.clone()));
        Ok((generation, ch))
    }

    /// Forgets the publishing connection `generation` (not a newer one another task made).
    async fn drop_channel(&self, generation: u64) {
        let mut slot = self.channel.lock().await;
        if slot.as_ref().is_some_and(|(g, _, _)| *g == generation)
            && let Some((_, conn, _)) = slot.take()
        {
            close(conn).await;
        }
    }

    async fn publish_once(&self, body: &[u8], limit: Duration) -> Result<(), (Option<u64>, BackendError)> {
        let (generation, ch) = self.channel().await.map_err(|e| (None, e))?;
        let props = BasicProperties::default().with_delivery_mode(2); // persistent
        let queue = self.batched();
        let confirm = async {
            ch.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), body, props).await?.await
        };
        match timed("publish", limit, confirm).await {
            Ok(Confirmation::Ack(_)) => Ok(()),
            Ok(other) => Err((Some(generation), BackendError::Queue(format!("broker did not confirm: {other:?}")))),
            Err(e) => Err((Some(generation), e)),
        }
    }

    /// Keeps the publishing connection open, reconnecting with backoff, for as long as the
    /// process runs.
    async fn keep_publisher(self: Arc<Self>) {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        loop {
            match self.channel().await {
                Ok(_) => {
                    self.publisher.up();
                    backoff.reset();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    self.publisher.down(&e.to_string());
                    tokio::time::sleep(backoff.step()).await;
                }
            }
        }
    }

    /// Consumes `source` until `shutdown`, reconnecting with backoff.
    async fn consume_from(&self, source: Source, handler: &Arc<dyn BatchHandler>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        while !*shutdown.borrow() {
            match self.consume_once(source, handler, &mut shutdown, &mut backoff).await {
                Ok(()) => return,
                Err(e) => {
                    let queue = self.source_queue(source);
                    match source {
                        Source::Batches => self.consumer.down(&format!("queue {queue}: {e}")),
                        // The broker's state shows in the main link already.
                        Source::Plain => tracing::warn!(error = %e, queue, "draining the plain queue failed"),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.step()) => {}
                        _ = crate::stopped(&mut shutdown) => {}
                    }
                }
            }
        }
    }

    fn source_queue(&self, source: Source) -> String {
        match source {
            Source::Batches => self.batched(),
            Source::Plain => self.queue.clone(),
        }
    }

    /// One consumer connection, until it fails (`Err`) or `shutdown` (`Ok`).
    async fn consume_once(
        &self,
        source: Source,
        handler: &Arc<dyn BatchHandler>,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> Result<(), BackendError> {
        let queue = self.source_queue(source);
        let (conn, ch) = self.connect(&queue).await?;
        let result = self.consume_on(source, &conn, &ch, handler, shutdown, backoff).await;
        close(conn).await;
        result
    }

    async fn consume_on(
        &self,
        source: Source,
        conn: &Connection,
        ch: &Channel,
        handler: &Arc<dyn BatchHandler>,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> Result<(), BackendError> {
        let queue = self.source_queue(source);
        let queue = queue.as_str();
        timed("set the prefetch", OP_TIMEOUT, ch.basic_qos(BATCH as u16, BasicQosOptions::default())).await?;
        let tag = format!("chatmesh-{}", crate::new_id());
        let consume =
            ch.basic_consume(queue.into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default());
        let mut consumer = timed("consume", OP_TIMEOUT, consume).await?;
        if source == Source::Batches {
            self.consumer.up();
        }
        backoff.reset();
        loop {
            let first = tokio::select! {
                d = tokio::time::timeout(PROBE_EVERY, consumer.next()) => d,
                _ = crate::stopped(shutdown) => return Ok(()),
            };
            let first = match first {
                Ok(Some(d)) => d.map_err(amqp)?,
                Ok(None) => return Err(BackendError::Queue("the broker cancelled the consumer".into())),
                Err(_) => {
                    // Idle: prove the connection still carries traffic, with a deadline.
                    if !conn.status().connected() {
                        return Err(BackendError::Queue("connection closed".into()));
                    }
                    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
                    let probe = ch.queue_declare(queue.into(), passive, FieldTable::default());
                    let depth = timed("liveness probe", OP_TIMEOUT, probe).await?;
                    if source == Source::Batches {
                        metrics::gauge!("chatmesh_queue_depth_messages").set(f64::from(depth.message_count()));
                    }
                    continue;
                }
            };
            let (mut bodies, mut contexts) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
            source.unpack(&first, &mut bodies, &mut contexts);
            let mut last = first;
            // Gather for a short window after the first message: each batch costs one insert,
            // one bulk index and one ack, so fewer, larger batches leave more CPU to the sends
            // (storage is after the confirm: the window delays history, never a push).
            let window = tokio::time::Instant::now() + self.batch_window;
            while bodies.len() < BATCH {
                match tokio::time::timeout_at(window, consumer.next()).await {
                    Ok(Some(d)) => {
                        last = d.map_err(amqp)?;
                        source.unpack(&last, &mut bodies, &mut contexts);
                    }
                    _ => break,
                }
            }
            let span = batch_span(queue, contexts.iter());
            let handled = tokio::time::timeout(HANDLE_TIMEOUT, handler.handle(&bodies)).instrument(span).await;
            if source == Source::Batches {
                self.report_depth(ch).await;
            }
            let outcome = match handled {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("not handled within {HANDLE_TIMEOUT:?}")),
            };
            match outcome {
                Ok(()) => {
                    timed("acknowledge", OP_TIMEOUT, last.ack(BasicAckOptions { multiple: true })).await?;
                }
                Err(e) => {
                    tracing::warn!(error = %e, messages = bodies.len(), "batch failed; redelivering");
                    let requeue = BasicNackOptions { multiple: true, requeue: true };
                    timed("give back", OP_TIMEOUT, last.nack(requeue)).await?;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = crate::stopped(shutdown) => return Ok(()),
                    }
                }
            }
        }
    }
}

impl AmqpQueue {
    /// Publishes the queue's depth (messages ready, not yet delivered), at most once a second
    /// while busy (idle, the liveness probe does).
    async fn report_depth(&self, ch: &Channel) {
        let now = unix_ms();
        let last = self.depth_reported.load(std::sync::atomic::Ordering::Relaxed);
        if now - last < 1000 {
            return;
        }
        self.depth_reported.store(now, std::sync::atomic::Ordering::Relaxed);
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let probe = ch.queue_declare(self.batched().as_str().into(), passive, FieldTable::default());
        if let Ok(queue) = timed("depth", OP_TIMEOUT, probe).await {
            metrics::gauge!("chatmesh_queue_depth_messages").set(f64::from(queue.message_count()));
        }
    }
}

/// Closes a connection we are done with, without waiting on a dead one.
async fn close(conn: Connection) {
    if conn.status().connected() {
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(200, "reconnecting".into())).await;
    }
}

#[async_trait]
impl MessageQueue for AmqpQueue {
    async fn publish(&self, body: Vec<u8>) -> Result<(), BackendError> {
        let span = publish_span(&self.queue);
        let context = Context::of(&span);
        let late = "the broker did not confirm in time";
        hand_over(&self.writer, body, context, self.publish_timeout, late).instrument(span).await
    }

    async fn consume(&self, handler: Arc<dyn BatchHandler>, shutdown: watch::Receiver<bool>) {
        tokio::join!(
            self.consume_from(Source::Batches, &handler, shutdown.clone()),
            self.consume_from(Source::Plain, &handler, shutdown),
        );
    }
}

/// The two broker queues a consumer drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `<queue>.batched`: [`QueuedBatch`]es, as this release publishes.
    Batches,
    /// `<queue>`: one message per broker message, as earlier releases published.
    Plain,
}

impl Source {
    /// Appends the messages `delivery` carries.
    fn unpack(self, delivery: &lapin::message::Delivery, bodies: &mut Vec<Vec<u8>>, contexts: &mut Vec<Context>) {
        match self {
            Source::Plain => {
                bodies.push(delivery.data.clone());
                contexts.push(Context::of_delivery(delivery));
            }
            Source::Batches => match QueuedBatch::decode(delivery.data.as_slice()) {
                Ok(batch) => {
                    for m in batch.messages {
                        bodies.push(m.body);
                        contexts.push(Context { traceparent: m.traceparent, published_ms: m.published_ms });
                    }
                }
                // Redelivering it would block the queue forever.
                Err(e) => tracing::error!(error = %e, bytes = delivery.data.len(), "dropping an undecodable batch"),
            },
        }
    }
}

/// Header of the publishing time (Unix milliseconds), for the consumer's lag.
const PUBLISHED_MS: &str = "chatmesh-published-ms";

/// A message's headers: its [`Context`], as releases before [`QueuedBatch`] sent it.
#[cfg(test)]
fn message_headers(context: Context) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(tp) = context.traceparent {
        headers.insert(crate::trace::TRACEPARENT.into(), AMQPValue::LongString(tp.into()));
    }
    if let Some(at) = context.published_ms {
        headers.insert(PUBLISHED_MS.into(), AMQPValue::LongLongInt(at));
    }
    headers
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What travels beside a message body on every queue: the publisher's trace context and the
/// publishing time (RabbitMQ: message headers; the database queue: columns).
#[derive(Debug, Clone, Default)]
struct Context {
    traceparent: Option<String>,
    published_ms: Option<i64>,
}

impl Context {
    /// Taken in the publisher's `span`, now.
    fn of(span: &tracing::Span) -> Self {
        Self { traceparent: crate::trace::traceparent(span), published_ms: Some(unix_ms()) }
    }

    fn of_delivery(delivery: &lapin::message::Delivery) -> Self {
        let Some(headers) = delivery.properties.headers().as_ref() else { return Self::default() };
        let traceparent = match headers.inner().get(crate::trace::TRACEPARENT) {
            Some(AMQPValue::LongString(tp)) => Some(tp.to_string()),
            _ => None,
        };
        let published_ms = match headers.inner().get(PUBLISHED_MS) {
            Some(AMQPValue::LongLongInt(at)) => Some(*at),
            _ => None,
        };
        Self { traceparent, published_ms }
    }
}

/// The publisher's span of one message on `queue`.
fn publish_span(queue: &str) -> tracing::Span {
    tracing::info_span!("queue.publish", otel.name = %format!("{queue} publish"), otel.kind = "producer")
}

/// The consumer side of [`Context`]: a span for the batch, child of its first message's trace
/// and linked to the others', and each message's time in the queue.
fn batch_span<'a>(queue: &str, batch: impl ExactSizeIterator<Item = &'a Context>) -> tracing::Span {
    let span = tracing::info_span!(
        "queue.consume",
        otel.name = %format!("{queue} process"),
        otel.kind = "consumer",
        messaging.batch.message_count = batch.len(),
        trace_id = tracing::field::Empty,
    );
    let now = unix_ms();
    let mut parents = Vec::new();
    for context in batch {
        parents.extend(context.traceparent.as_deref());
        if let Some(at) = context.published_ms {
            metrics::histogram!("chatmesh_queue_lag_seconds").record((now - at).max(0) as f64 / 1000.0);
        }
    }
    crate::trace::set_parent(&span, parents.first().copied());
    for tp in parents.iter().skip(1) {
        crate::trace::add_link(&span, tp);
    }
    crate::trace::record_trace_id(&span);
    span
}

impl AmqpQueue {
    /// The writer: every publish waiting when a slot frees up goes out in one broker message,
    /// with up to [`AMQP_IN_FLIGHT`] broker messages awaiting their confirms at once. Ends when
    /// its queue is dropped.
    async fn write_batches(self: Arc<Self>, mut pending: mpsc::Receiver<Pending>) {
        let slots = Arc::new(Semaphore::new(AMQP_IN_FLIGHT));
        let mut batch = Vec::with_capacity(AMQP_BATCH);
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            if pending.recv_many(&mut batch, AMQP_BATCH).await == 0 {
                return;
            }
            let this = self.clone();
            let batch = std::mem::replace(&mut batch, Vec::with_capacity(AMQP_BATCH));
            tokio::spawn(async move {
                this.publish_batch(batch).await;
                drop(slot);
            });
        }
    }

    /// Publishes `batch` and tells each publisher the outcome, retrying with backoff until the
    /// publish timeout or until every publisher has given up.
    async fn publish_batch(&self, mut batch: Vec<Pending>) {
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        let mut backoff = Backoff::new(Duration::from_secs(1));
        let outcome = loop {
            // A publisher that gave up (its timeout) was told the send failed: not queued then.
            batch.retain(|p| !p.done.is_closed());
            if batch.is_empty() {
                return;
            }
            let messages = batch
                .iter()
                .map(|p| QueuedMessage {
                    body: p.body.clone(),
                    traceparent: p.context.traceparent.clone(),
                    published_ms: p.context.published_ms,
                })
                .collect();
            let body = QueuedBatch { messages }.encode_to_vec();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.publish_once(&body, left.min(OP_TIMEOUT)).await {
                Ok(()) => {
                    self.publisher.up();
                    metrics::histogram!("chatmesh_queue_publish_batch_size").record(batch.len() as f64);
                    break Ok(());
                }
                Err((generation, e)) => {
                    // The broker may be restarting: drop the channel and try a fresh one.
                    self.publisher.down(&e.to_string());
                    if let Some(generation) = generation {
                        self.drop_channel(generation).await;
                    }
                    let pause = backoff.step();
                    if tokio::time::Instant::now() + pause >= deadline {
                        break Err(e.to_string());
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        };
        for p in batch {
            let _ = p.done.send(outcome.clone());
        }
    }
}

/// Gives a publish to a queue's writer and waits (within `timeout`) for its outcome.
async fn hand_over(
    writer: &mpsc::Sender<Pending>,
    body: Vec<u8>,
    context: Context,
    timeout: Duration,
    late: &str,
) -> Result<(), BackendError> {
    let (done, committed) = oneshot::channel();
    let queued = async {
        writer.send(Pending { body, context, done }).await.map_err(|_| "the queue writer stopped".to_string())?;
        committed.await.map_err(|_| "the queue writer stopped".to_string())?
    };
    match tokio::time::timeout(timeout, queued).await {
        Ok(outcome) => outcome.map_err(BackendError::Queue),
        Err(_) => Err(BackendError::Queue(late.into())),
    }
}

/// The database queue's name in spans.
const DB_QUEUE: &str = "queued_message";
/// seq, body, traceparent, published_ms.
type QueuedRow = (i64, Vec<u8>, Option<String>, Option<i64>);

/// Most publishes written in one transaction by the database queue's writer.
const PUBLISH_BATCH: usize = 256;
/// Publishes waiting for the writer beyond which `publish` waits (within its timeout).
const PUBLISH_BACKLOG: usize = 4096;

/// Standalone: the queue is a table of the relational database, so what a send acknowledged
/// survives a crash of the process. One consumer (the one process) drains it in order.
///
/// Publishes go through one writer task that commits every publish waiting at that moment in
/// one multi-row INSERT (group commit): SQLite takes one writer at a time, and concurrent
/// per-message transactions spent their time waiting for its lock (busy-timeout sleeps). Each
/// `publish` still returns only after the transaction holding its row committed.
pub struct DbQueue {
    db: Database,
    publish_timeout: Duration,
    /// How long the consumer lets messages gather once it is not behind (see [`BATCH_WINDOW`]).
    batch_window: Duration,
    ready: Arc<Notify>,
    writer: mpsc::Sender<Pending>,
}

/// A publish waiting for the writer, and where to tell it how the commit went.
struct Pending {
    body: Vec<u8>,
    context: Context,
    done: oneshot::Sender<Result<(), String>>,
}

impl DbQueue {
    fn new(db: Database, publish_timeout: Duration, batch_window: Duration) -> Self {
        let (writer, pending) = mpsc::channel(PUBLISH_BACKLOG);
        let ready = Arc::new(Notify::new());
        tokio::spawn(write_queued(db.clone(), pending, ready.clone()));
        Self { db, publish_timeout, batch_window, ready, writer }
    }
}

/// The writer: ends when its queue is dropped.
async fn write_queued(db: Database, mut pending: mpsc::Receiver<Pending>, ready: Arc<Notify>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while pending.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        // A publisher that gave up (its timeout) was told the send failed: not queued then.
        batch.retain(|p: &Pending| !p.done.is_closed());
        if batch.is_empty() {
            continue;
        }
        let sql = format!(
            "INSERT INTO queued_message (body, traceparent, published_ms) VALUES {}",
            vec!["(?, ?, ?)"; batch.len()].join(", ")
        );
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for p in &mut batch {
            insert = insert
                .bind(std::mem::take(&mut p.body))
                .bind(p.context.traceparent.take())
                .bind(p.context.published_ms);
        }
        let outcome = match tokio::time::timeout(OP_TIMEOUT, insert.execute(&db.pool)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the database did not take the message in time".to_string()),
        };
        if outcome.is_ok() {
            ready.notify_one();
        }
        for p in batch.drain(..) {
            let _ = p.done.send(outcome.clone());
        }
    }
}

#[async_trait]
impl MessageQueue for DbQueue {
    async fn publish(&self, body: Vec<u8>) -> Result<(), BackendError> {
        let span = publish_span(DB_QUEUE);
        let context = Context::of(&span);
        let late = "the database did not take the message in time";
        hand_over(&self.writer, body, context, self.publish_timeout, late).instrument(span).await
    }

    async fn consume(&self, handler: Arc<dyn BatchHandler>, mut shutdown: watch::Receiver<bool>) {
        let select =
            format!("SELECT seq, body, traceparent, published_ms FROM queued_message ORDER BY seq LIMIT {BATCH}");
        // The window has passed since the last look found too few to fill a batch.
        let mut gathered = false;
        loop {
            let fetch = sqlx::query_as(sqlx::AssertSqlSafe(select.as_str())).fetch_all(&self.db.pool);
            let rows: Result<Vec<QueuedRow>, String> = match tokio::time::timeout(OP_TIMEOUT, fetch).await {
                Ok(rows) => rows.map_err(|e| e.to_string()),
                Err(_) => Err("the database did not answer in time".into()),
            };
            let outcome = match rows {
                Ok(rows) if rows.is_empty() => {
                    tokio::select! {
                        _ = self.ready.notified() => {}
                        // Also look again now and then: another process may have queued.
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = crate::stopped(&mut shutdown) => return,
                    }
                    continue;
                }
                // Not behind: let the next messages gather for the window, so that one batch
                // (one read, one insert, one index, one delete) carries many, as the broker's
                // consumer does. Behind (a full batch), no wait.
                Ok(rows) if rows.len() < BATCH && !gathered => {
                    gathered = true;
                    tokio::select! {
                        _ = tokio::time::sleep(self.batch_window) => {}
                        _ = crate::stopped(&mut shutdown) => return,
                    }
                    continue;
                }
                Ok(rows) => {
                    gathered = false;
                    let mut seqs = Vec::with_capacity(rows.len());
                    let mut bodies = Vec::with_capacity(rows.len());
                    let mut contexts = Vec::with_capacity(rows.len());
                    for (seq, body, traceparent, published_ms) in rows {
                        seqs.push(seq);
                        bodies.push(body);
                        contexts.push(Context { traceparent, published_ms });
                    }
                    let span = batch_span(DB_QUEUE, contexts.iter());
                    match tokio::time::timeout(HANDLE_TIMEOUT, handler.handle(&bodies)).instrument(span).await {
                        Ok(Ok(())) => {
                            // Exactly the rows handled: with concurrent writers (MySQL) a lower
                            // number may commit after a higher one was read.
                            let sql = format!(
                                "DELETE FROM queued_message WHERE seq IN ({})",
                                crate::db::placeholders(seqs.len())
                            );
                            let mut delete = sqlx::query(sqlx::AssertSqlSafe(sql));
                            for seq in &seqs {
                                delete = delete.bind(*seq);
                            }
                            let delete = delete.execute(&self.db.pool);
                            match tokio::time::timeout(OP_TIMEOUT, delete).await {
                                Ok(done) => done.map(drop).map_err(|e| e.to_string()),
                                Err(_) => Err("the database did not answer in time".into()),
                            }
                        }
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(format!("not handled within {HANDLE_TIMEOUT:?}")),
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "queued batch failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = crate::stopped(&mut shutdown) => return,
                }
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

/// The memory queue's name in spans.
const MEMORY_QUEUE: &str = "memory";

/// In the process only (and so lost with it): for tests and throw-away runs.
pub struct MemoryQueue {
    tx: mpsc::UnboundedSender<(Vec<u8>, Context)>,
    rx: Mutex<mpsc::UnboundedReceiver<(Vec<u8>, Context)>>,
}

#[async_trait]
impl MessageQueue for MemoryQueue {
    async fn publish(&self, body: Vec<u8>) -> Result<(), BackendError> {
        let span = publish_span(MEMORY_QUEUE);
        let context = Context::of(&span);
        span.in_scope(|| self.tx.send((body, context)).map_err(|_| BackendError::Queue("queue closed".into())))
    }

    async fn consume(&self, handler: Arc<dyn BatchHandler>, mut shutdown: watch::Receiver<bool>) {
        let mut rx = self.rx.lock().await;
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut contexts: Vec<Context> = Vec::new();
        loop {
            if batch.is_empty() {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some((body, context)) => {
                            batch.push(body);
                            contexts.push(context);
                        }
                        None => return,
                    },
                    _ = crate::stopped(&mut shutdown) => return,
                }
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok((body, context)) => {
                        batch.push(body);
                        contexts.push(context);
                    }
                    Err(_) => break,
                }
            }
            let span = batch_span(MEMORY_QUEUE, contexts.iter());
            match handler.handle(&batch).instrument(span).await {
                Ok(()) => {
                    batch.clear();
                    contexts.clear();
                }
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

    impl Flaky {
        /// Until `n` messages were handled (or 5 s passed).
        async fn wait_for(&self, n: usize) {
            for _ in 0..250 {
                if self.seen.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// `n` publishes at once, each acknowledged.
    async fn publish_concurrently(queue: &Arc<dyn MessageQueue>, n: u32) {
        let publishes: Vec<_> = (0..n)
            .map(|i| {
                let q = queue.clone();
                tokio::spawn(async move { q.publish(i.to_be_bytes().to_vec()).await })
            })
            .collect();
        for p in publishes {
            p.await.unwrap().unwrap();
        }
    }

    /// What a consumer that never fails handles once `n` messages arrived (and `linger` more).
    /// Returns the handler, for its calls.
    async fn consume(queue: &Arc<dyn MessageQueue>, n: usize, linger: Duration) -> Arc<Flaky> {
        let handler = Arc::new(Flaky::default());
        handler.calls.store(1, Ordering::SeqCst); // no failure
        let (stop, shutdown) = watch::channel(false);
        let (q, h): (_, Arc<dyn BatchHandler>) = (queue.clone(), handler.clone());
        let consumer = tokio::spawn(async move { q.consume(h, shutdown).await });
        handler.wait_for(n).await;
        tokio::time::sleep(linger).await;
        stop.send(true).unwrap();
        consumer.await.unwrap();
        handler
    }

    /// Every one of `n` messages seen, none twice.
    fn assert_each_once(handler: &Flaky, n: usize) {
        let mut seen = handler.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), n, "nothing consumed twice");
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), n, "every message consumed");
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
        handler.wait_for(50).await;
        let mut seen = handler.seen.lock().unwrap().clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 50, "every message arrives despite the failed batch");
        stop.send(true).unwrap();
        consumer.await.unwrap();
    }

    const BOTH: Roles = Roles { publish: true, consume: true };

    /// A migrated SQLite database of `connections`, in a directory that lives as long as the guard.
    async fn sqlite(connections: u32) -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/q.db?mode=rwc", dir.path().display());
        let db = Database::connect(&url, connections).await.unwrap();
        db.migrate().await.unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn memory_queue_redelivers_failed_batches() {
        let queue =
            open("memory://", "q", Duration::from_secs(1), BATCH_WINDOW, None, &Health::default(), BOTH).unwrap();
        delivers_everything_after_a_failure(queue).await;
    }

    #[tokio::test]
    async fn database_queue_redelivers_failed_batches_and_keeps_what_was_queued() {
        let (_dir, db) = sqlite(2).await;
        let queue = open("database://", "q", Duration::from_secs(1), BATCH_WINDOW, Some(&db), &Health::default(), BOTH)
            .unwrap();
        delivers_everything_after_a_failure(queue.clone()).await;
        // Queued but not yet consumed: still there for the next consumer (a restarted process).
        queue.publish(vec![7]).await.unwrap();
        let again = open("database://", "q", Duration::from_secs(1), BATCH_WINDOW, Some(&db), &Health::default(), BOTH)
            .unwrap();
        let handler = Arc::new(Flaky::default());
        handler.calls.store(1, Ordering::SeqCst); // no failure this time
        let (stop, shutdown) = watch::channel(false);
        let h: Arc<dyn BatchHandler> = handler.clone();
        let consumer = tokio::spawn(async move { again.consume(h, shutdown).await });
        handler.wait_for(1).await;
        assert_eq!(*handler.seen.lock().unwrap(), vec![vec![7u8]]);
        stop.send(true).unwrap();
        consumer.await.unwrap();
        let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM queued_message").fetch_one(&db.pool).await.unwrap();
        assert_eq!(left, 0, "consumed messages leave the queue");
    }

    /// Concurrent publishes share transactions; each still gets its own acknowledgement, and
    /// every message is consumed exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn database_queue_commits_concurrent_publishes_together() {
        let (_dir, db) = sqlite(4).await;
        let queue = open("database://", "q", Duration::from_secs(5), BATCH_WINDOW, Some(&db), &Health::default(), BOTH)
            .unwrap();
        publish_concurrently(&queue, 2000).await;
        let (queued,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM queued_message").fetch_one(&db.pool).await.unwrap();
        assert_eq!(queued, 2000, "every acknowledged publish is in the table");
        assert_each_once(&*consume(&queue, 2000, Duration::ZERO).await, 2000);
    }

    /// Messages trickling in while the consumer is not behind are gathered for the window into
    /// a few batches, not handled one by one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn database_queue_gathers_a_trickle_into_batches() {
        let (_dir, db) = sqlite(2).await;
        let window = Duration::from_millis(400);
        let queue =
            open("database://", "q", Duration::from_secs(5), window, Some(&db), &Health::default(), BOTH).unwrap();
        let handler = Arc::new(Flaky::default());
        handler.calls.store(1, Ordering::SeqCst); // no failure
        let (stop, shutdown) = watch::channel(false);
        let (q, h): (_, Arc<dyn BatchHandler>) = (queue.clone(), handler.clone());
        let consumer = tokio::spawn(async move { q.consume(h, shutdown).await });
        for i in 0..20u8 {
            queue.publish(vec![i]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        handler.wait_for(20).await;
        stop.send(true).unwrap();
        consumer.await.unwrap();
        assert_eq!(*handler.seen.lock().unwrap(), (0..20u8).map(|i| vec![i]).collect::<Vec<_>>());
        let batches = handler.calls.load(Ordering::SeqCst) - 1;
        assert!(batches <= 3, "20 messages within one window took {batches} batches");
    }

    #[test]
    fn amqp_urls_get_a_heartbeat_unless_they_set_one() {
        assert_eq!(with_heartbeat("amqp://h/%2f"), "amqp://h/%2f?heartbeat=5&connection_timeout=5000");
        assert_eq!(with_heartbeat("amqp://h/%2f?heartbeat=30"), "amqp://h/%2f?heartbeat=30&connection_timeout=5000");
    }

    #[tokio::test]
    async fn rabbitmq_queue_redelivers_failed_batches() {
        let Some(url) = crate::test_url("CHATMESH_TEST_AMQP_URL") else { return };
        let queue = format!("chatmesh-t-{}", crate::new_id());
        let health = Health::default();
        let queue = open(&url, &queue, Duration::from_secs(5), BATCH_WINDOW, None, &health, BOTH).unwrap();
        delivers_everything_after_a_failure(queue).await;
        assert!(health.check().is_ok(), "connected links are up: {:?}", health.check());
    }

    /// Publishes `bodies` to `queue` on a connection of its own, as a release before batches did.
    async fn publish_plain(url: &str, queue: &str, bodies: &[Vec<u8>]) {
        let conn = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare(queue.into(), QueueDeclareOptions::durable(), FieldTable::default()).await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        for body in bodies {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(message_headers(Context { traceparent: None, published_ms: Some(unix_ms()) }));
            let confirm =
                ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, props).await.unwrap();
            assert!(matches!(confirm.await.unwrap(), Confirmation::Ack(_)));
        }
        conn.close(200, "done".into()).await.unwrap();
    }

    async fn depth(url: &str, queue: &str) -> u32 {
        let conn = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let q = ch.queue_declare(queue.into(), passive, FieldTable::default()).await.unwrap();
        conn.close(200, "done".into()).await.unwrap();
        q.message_count()
    }

    /// Concurrent publishes share broker messages; each still gets its own confirm, and every
    /// message is consumed exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_queue_puts_concurrent_publishes_in_shared_broker_messages() {
        let Some(url) = crate::test_url("CHATMESH_TEST_AMQP_URL") else { return };
        let name = format!("chatmesh-t-{}", crate::new_id());
        let queue = open(&url, &name, Duration::from_secs(10), BATCH_WINDOW, None, &Health::default(), BOTH).unwrap();
        publish_concurrently(&queue, 2000).await;
        let broker_messages = depth(&url, &format!("{name}{BATCHED_SUFFIX}")).await;
        assert!(
            (1..=1000).contains(&broker_messages),
            "2,000 concurrent publishes took {broker_messages} broker messages"
        );
        // The linger: anything doubled would show by then.
        assert_each_once(&*consume(&queue, 2000, Duration::from_millis(300)).await, 2000);
    }

    /// What an earlier release left on the plain queue is consumed too, and an undecodable
    /// batch is dropped rather than blocking the messages behind it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_consumer_drains_the_plain_queue_and_skips_undecodable_batches() {
        let Some(url) = crate::test_url("CHATMESH_TEST_AMQP_URL") else { return };
        let name = format!("chatmesh-t-{}", crate::new_id());
        publish_plain(&url, &name, &[vec![1], vec![2]]).await;
        publish_plain(&url, &format!("{name}{BATCHED_SUFFIX}"), &[b"\xff not a batch".to_vec()]).await;
        let queue = open(&url, &name, Duration::from_secs(10), BATCH_WINDOW, None, &Health::default(), BOTH).unwrap();
        queue.publish(vec![3]).await.unwrap();
        let handler = consume(&queue, 3, Duration::ZERO).await;
        let mut seen = handler.seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, vec![vec![1u8], vec![2], vec![3]]);
        assert_eq!(depth(&url, &name).await, 0, "the plain queue is drained");
        assert_eq!(depth(&url, &format!("{name}{BATCHED_SUFFIX}")).await, 0, "the bad batch is not redelivered");
    }
}
