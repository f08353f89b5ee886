//! The dependencies alone, measured the way a message uses them, so that chatmesh's own figures
//! can be read against what the servers underneath allow on the same machine the same day:
//! RabbitMQ persistent publish + confirm, MariaDB single-row insert and indexed select, a Redis
//! round trip; each at the benchmark's rate (open loop), then each one's ceiling with
//! pipelining or batching. With Elasticsearch, first everything a message costs the servers at
//! once ([`together`]): the floor of the path's publish + confirm hop on this machine.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

use super::{cpu, percentile, sorted_latencies, stalls};

pub struct Servers {
    pub mysql_url: String,
    pub amqp_url: String,
    pub redis_url: String,
    /// A queue name of our own (deleted afterwards).
    pub queue: String,
    /// Elasticsearch, for [`together`] (an index named after `queue`, deleted afterwards).
    pub es_url: Option<String>,
}

/// Runs `op(i)` at `rate`/s for `duration` (each op in its own task, so a slow one delays no
/// other); for each that succeeded, when it started (s since the first) and its latency in ms.
async fn open_loop<F, Fut>(rate: u32, duration: Duration, op: F) -> Vec<(f64, f64)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let fut = op(i);
        tasks.spawn(async move {
            let at = Instant::now();
            let ok = fut.await;
            ok.then(|| ((at - started).as_secs_f64(), at.elapsed().as_secs_f64() * 1000.0))
        });
    }
    let mut out = Vec::with_capacity(total);
    while let Some(r) = tasks.join_next().await {
        out.extend(r.unwrap());
    }
    out
}

/// As many as possible with `width` in flight for `n` ops; ops per second.
async fn ceiling<F, Fut>(n: usize, width: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(width));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let fut = op(i);
        tasks.spawn(async move {
            let ok = fut.await;
            drop(permit);
            ok
        });
    }
    let mut ok = 0usize;
    while let Some(r) = tasks.join_next().await {
        ok += r.unwrap() as usize;
    }
    ok as f64 / started.elapsed().as_secs_f64()
}

/// One table row: the latencies of `timeline`, and the servers' CPU per operation since `cpu`.
fn row(what: &str, rate: u32, timeline: &[(f64, f64)], cpu: &cpu::Snapshot, servers: &[String]) {
    let l = &sorted_latencies(timeline);
    println!(
        "| {what} | {rate}/s | {:.3} | {:.3} | {:.3} | {} | {:.0} |",
        percentile(l, 0.5),
        percentile(l, 0.99),
        percentile(l, 0.999),
        l.len(),
        cpu::Snapshot::take(servers).servers_micros_since(cpu, l.len()),
    );
}

/// One persistent publish to `queue`, and whether the broker confirmed it.
async fn publish(ch: lapin::Channel, queue: String, body: Vec<u8>) -> bool {
    let props = BasicProperties::default().with_delivery_mode(2);
    match ch.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, props).await {
        Ok(confirm) => matches!(confirm.await, Ok(lapin::Confirmation::Ack(_))),
        Err(_) => false,
    }
}

/// `servers`: `name:pid` of the servers, whose CPU per operation each row reports.
/// `floor_only`: the first row ([`together`]) alone.
pub async fn run(s: Servers, rate: u32, duration: Duration, servers: &[String], floor_only: bool) {
    // A message row as storage writes it: id, session, sender, time, a short text.
    let body = vec![b'x'; 120];
    println!(
        "| dependency operation | rate | p50 ms | p99 ms | p99.9 ms | done | servers' CPU µs per op |\n\
         |---|---|---|---|---|---|---|"
    );
    let cpu_before = cpu::Snapshot::take(servers);
    let together = match &s.es_url {
        Some(es_url) => Some(together(&s, es_url, rate, duration, servers).await),
        None => None,
    };
    if floor_only {
        println!("everything at once, confirms {}", together.unwrap_or_default());
        // Set-up and clean-up included: an index and a queue made and deleted.
        let ops = (rate as f64 * duration.as_secs_f64()) as usize;
        print!("CPU of the whole row:\n{}", cpu::Snapshot::take(servers).table_since(&cpu_before, ops));
        return;
    }

    // Each queue kind RabbitMQ offers, drained by a consumer that acknowledges each message at
    // once, or 100 ms after its delivery as storage does (its batch window, insert and index): a
    // classic queue confirms a persistent message once it is on disk or acknowledged.
    let mut confirms = Vec::new();
    for (kind, args) in queue_kinds() {
        for ack_after in [Duration::ZERO, Duration::from_millis(100)] {
            let queue = format!("{}-{}-{}", s.queue, kind.replace(' ', "-"), ack_after.as_millis());
            // A connection per queue: deleting a quorum queue right after a run broke a shared one.
            let conn = Connection::connect(&s.amqp_url, ConnectionProperties::default()).await.expect("RabbitMQ");
            let ch = conn.create_channel().await.expect("channel");
            ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
            ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args.clone())
                .await
                .expect("declare");
            let drain = drain(&conn, &queue, ack_after).await;
            let cpu = cpu::Snapshot::take(servers);
            let l = open_loop(rate, duration, |_| publish(ch.clone(), queue.clone(), body.clone())).await;
            let acked = format!("acknowledged after {} ms", ack_after.as_millis());
            row(&format!("RabbitMQ persistent publish + confirm ({kind} queue, {acked})"), rate, &l, &cpu, servers);
            if ack_after.is_zero() {
                let n = 20_000;
                confirms.push((kind, ceiling(n, 1000, |_| publish(ch.clone(), queue.clone(), body.clone())).await));
            }
            drain.abort();
            let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
            let _ = conn.close(200, "done".into()).await;
        }
    }

    let pool = sqlx::mysql::MySqlPoolOptions::new().max_connections(16).connect(&s.mysql_url).await.expect("MariaDB");
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS ceiling_row (id CHAR(32) PRIMARY KEY, session CHAR(32) NOT NULL, \
         body BLOB NOT NULL, KEY (session))",
    )
    .execute(&pool)
    .await
    .expect("table");
    let insert = |pool: sqlx::MySqlPool, i: usize, body: Vec<u8>| async move {
        sqlx::query("INSERT INTO ceiling_row (id, session, body) VALUES (?, ?, ?)")
            .bind(format!("{:032x}", i as u128 + 1_000_000_000 * rand_prefix()))
            .bind(format!("{:032x}", i % 50))
            .bind(body)
            .execute(&pool)
            .await
            .is_ok()
    };
    let cpu = cpu::Snapshot::take(servers);
    let l = open_loop(rate, duration, |i| insert(pool.clone(), i, body.clone())).await;
    row("MariaDB single-row INSERT (autocommit)", rate, &l, &cpu, servers);
    let select = |pool: sqlx::MySqlPool, i: usize| async move {
        sqlx::query("SELECT id FROM ceiling_row WHERE session = ? LIMIT 2")
            .bind(format!("{:032x}", i % 50))
            .fetch_all(&pool)
            .await
            .is_ok()
    };
    let cpu = cpu::Snapshot::take(servers);
    let l = open_loop(rate, duration, |i| select(pool.clone(), i)).await;
    row("MariaDB indexed SELECT", rate, &l, &cpu, servers);

    let redis = redis::Client::open(s.redis_url.as_str()).expect("Redis URL");
    let con = redis.get_multiplexed_async_connection().await.expect("Redis");
    let zrange = |mut con: redis::aio::MultiplexedConnection, i: usize| async move {
        redis::cmd("ZRANGEBYSCORE")
            .arg(format!("ceiling:{}", i % 100))
            .arg(0)
            .arg("+inf")
            .query_async::<Vec<String>>(&mut con)
            .await
            .is_ok()
    };
    let cpu = cpu::Snapshot::take(servers);
    let l = open_loop(rate, duration, |i| zrange(con.clone(), i)).await;
    row("Redis ZRANGEBYSCORE round trip", rate, &l, &cpu, servers);

    // Ceilings: pipelined confirms, batched inserts.
    let n = 20_000;
    let single = ceiling(n / 2, 16, |i| insert(pool.clone(), i + 10_000_000, body.clone())).await;
    let batch = |pool: sqlx::MySqlPool, i: usize, body: Vec<u8>| async move {
        let sql = format!("INSERT INTO ceiling_row (id, session, body) VALUES {}", vec!["(?, ?, ?)"; 100].join(","));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for k in 0..100 {
            q = q
                .bind(format!("{:032x}", (i * 100 + k) as u128 + 2_000_000_000 * rand_prefix()))
                .bind("b")
                .bind(&body[..]);
        }
        q.execute(&pool).await.is_ok()
    };
    let rows = ceiling(300, 4, |i| batch(pool.clone(), i, body.clone())).await * 100.0;
    let confirms: Vec<String> = confirms.iter().map(|(kind, n)| format!("{n:.0} ({kind})")).collect();
    println!(
        "ceilings: RabbitMQ confirmed msg/s with 1,000 in flight: {}; MariaDB {single:.0} single-row \
         INSERTs/s (16 connections), {rows:.0} rows/s in 100-row INSERTs (4 connections)",
        confirms.join(", ")
    );
    if let Some(stalls) = together {
        println!("everything at once, confirms {stalls}");
    }
    let _ = sqlx::query("DROP TABLE ceiling_row").execute(&pool).await;
}

/// Deliveries a storage consumer takes at once (chatmesh's `queue::BATCH`, its prefetch too).
const STORAGE_BATCH: u16 = 200;

/// What every message costs the servers in the full stack, all at once at `rate`, with no
/// chatmesh in between: a persistent publish and its confirm on a classic v2 queue (timed, one
/// at a time as the path makes them at this rate), while a consumer does what storage does with
/// them: gathers deliveries for 100 ms, inserts them in one multi-row INSERT into a table shaped
/// like `message`, indexes their text in one bulk request into an index mapped like the
/// messages', then acknowledges them. The servers take each other's CPU here as they do under
/// chatmesh, so its percentiles are the floor of the path's "queue publish + confirm" hop.
/// Returns its [`stalls`] line.
async fn together(s: &Servers, es_url: &str, rate: u32, duration: Duration, servers: &[String]) -> String {
    const WINDOW: Duration = Duration::from_millis(100);
    let queue = format!("{}-together", s.queue);
    let index = format!("{}-together", s.queue.to_lowercase());
    let table = "ceiling_message";
    let pool = sqlx::mysql::MySqlPoolOptions::new().max_connections(4).connect(&s.mysql_url).await.expect("MariaDB");
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {table} (message_id VARCHAR(40) NOT NULL PRIMARY KEY, \
         chat_session_id VARCHAR(40) NOT NULL, user_id VARCHAR(32) NOT NULL, message_type INT NOT NULL, \
         content MEDIUMTEXT NULL, created_at BIGINT NOT NULL, KEY (chat_session_id, created_at)) \
         ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    );
    sqlx::query(sqlx::AssertSqlSafe(ddl)).execute(&pool).await.expect("table");
    let http = reqwest::Client::new();
    let mapping = r#"{"settings": {"index": {"refresh_interval": "5s", "number_of_replicas": 0}},
        "mappings": {"properties": {"chat_session_id": {"type": "keyword"}, "content": {"type": "text"},
        "created_at": {"type": "long"}}}}"#;
    let created = http.put(format!("{es_url}/{index}")).header("content-type", "application/json").body(mapping);
    assert!(created.send().await.expect("Elasticsearch").status().is_success(), "creating {index}");

    let conn = Connection::connect(&s.amqp_url, ConnectionProperties::default()).await.expect("RabbitMQ");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let mut v2 = FieldTable::default();
    v2.insert("x-queue-version".into(), AMQPValue::LongInt(2));
    ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), v2).await.expect("declare");
    let consumer = {
        let ch = conn.create_channel().await.expect("channel");
        ch.basic_qos(STORAGE_BATCH, BasicQosOptions::default()).await.expect("qos");
        let mut deliveries = ch
            .basic_consume(
                queue.as_str().into(),
                "together".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let (pool, http, url) = (pool.clone(), http.clone(), format!("{es_url}/{index}/_bulk"));
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let _ch = ch;
            let mut n = 0u64;
            while let Some(Ok(first)) = deliveries.next().await {
                let until = tokio::time::Instant::now() + WINDOW;
                let mut batch = vec![first];
                while batch.len() < STORAGE_BATCH as usize {
                    match tokio::time::timeout_at(until, deliveries.next()).await {
                        Ok(Some(Ok(d))) => batch.push(d),
                        _ => break,
                    }
                }
                let sql = format!(
                    "INSERT IGNORE INTO {table} (message_id, chat_session_id, user_id, message_type, content, \
                     created_at) VALUES {}",
                    vec!["(?, ?, 'u', 0, ?, ?)"; batch.len()].join(", ")
                );
                let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
                let mut bulk = String::new();
                for d in &batch {
                    n += 1;
                    let (id, session) = (format!("{:016x}{n:016x}", rand_prefix()), format!("{:032x}", n % 50));
                    let text = String::from_utf8_lossy(&d.data[..20.min(d.data.len())]).into_owned();
                    insert = insert.bind(id.clone()).bind(session.clone()).bind(text.clone()).bind(n as i64);
                    bulk.push_str(&format!(
                        "{{\"index\":{{\"_id\":\"{id}\"}}}}\n{{\"chat_session_id\":\"{session}\",\
                         \"content\":\"{text} {n}\",\"created_at\":{n}}}\n"
                    ));
                }
                insert.execute(&pool).await.expect("insert");
                let indexed = http.post(&url).header("content-type", "application/x-ndjson").body(bulk).send().await;
                assert!(indexed.expect("bulk").status().is_success(), "bulk indexing");
                let last = batch.last().expect("a batch has a first delivery");
                last.ack(BasicAckOptions { multiple: true }).await.expect("ack");
            }
        })
    };
    let body = vec![b'x'; 120];
    let cpu = cpu::Snapshot::take(servers);
    let l = open_loop(rate, duration, |_| publish(ch.clone(), queue.clone(), body.clone())).await;
    row(
        "Everything at once: RabbitMQ persistent publish + confirm (classic v2), while a consumer \
         inserts each 100 ms of messages into MariaDB and bulk-indexes them into Elasticsearch",
        rate,
        &l,
        &cpu,
        servers,
    );
    consumer.abort();
    let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = conn.close(200, "done".into()).await;
    let _ = http.delete(format!("{es_url}/{index}")).send().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}"))).execute(&pool).await;
    stalls(&l)
}

/// The queue kinds of RabbitMQ 3.10+, as declared: classic with the version-1 index (the
/// default before 4.0), classic with the version-2 index, and quorum (Raft, one node here).
fn queue_kinds() -> Vec<(&'static str, FieldTable)> {
    let with = |k: &str, v: AMQPValue| {
        let mut t = FieldTable::default();
        t.insert(k.into(), v);
        t
    };
    vec![
        ("classic v1", FieldTable::default()),
        ("classic v2", with("x-queue-version", AMQPValue::LongInt(2))),
        ("quorum", with("x-queue-type", AMQPValue::LongString("quorum".into()))),
    ]
}

/// A consumer of `queue` that acknowledges every delivery `ack_after` it arrived, until aborted.
async fn drain(conn: &Connection, queue: &str, ack_after: Duration) -> tokio::task::JoinHandle<()> {
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(1000, BasicQosOptions::default()).await.expect("qos");
    let mut deliveries = ch
        .basic_consume(queue.into(), "ceiling".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(Ok(d)) = deliveries.next().await {
            tokio::spawn(async move {
                tokio::time::sleep(ack_after).await;
                let _ = d.ack(BasicAckOptions::default()).await;
            });
        }
        drop(ch);
    })
}

/// A per-run number, so that re-running against one database never collides on ids.
fn rand_prefix() -> u128 {
    static PREFIX: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u128() >> 80)
}
