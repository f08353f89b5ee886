//! Short-lived state (login sessions, verification codes, rate limits): Redis in clusters, an
//! in-process map in standalone mode. Both implement the same complete behaviour.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands;

use crate::BackendError;

/// A key-value store whose entries expire. Every operation is atomic on its key.
#[async_trait]
pub trait ExpiringStore: Send + Sync + 'static {
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), BackendError>;
    /// Sets only if absent; true when this call created the key.
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError>;
    async fn get(&self, key: &str) -> Result<Option<String>, BackendError>;
    /// Gets the value and restarts its expiry (sliding sessions).
    async fn get_touch(&self, key: &str, ttl: Duration) -> Result<Option<String>, BackendError>;
    /// Gets and deletes in one step: of two concurrent takers only one sees the value.
    async fn take(&self, key: &str) -> Result<Option<String>, BackendError>;
    async fn del(&self, key: &str) -> Result<(), BackendError>;
    /// Increments a counter; the expiry is set when the counter is created.
    async fn incr(&self, key: &str, ttl: Duration) -> Result<i64, BackendError>;
    /// Round trip to the backend, for readiness.
    async fn ping(&self) -> Result<(), BackendError>;
}

/// Opens the store named by `url`: `redis://...` (or `rediss://`) or `memory://`.
/// `namespace` prefixes every key, so several systems (or test runs) can share one Redis.
pub async fn open(url: &str, namespace: &str) -> Result<Arc<dyn ExpiringStore>, BackendError> {
    open_tracked(url, namespace, crate::health::Link::new("session-store", true)).await
}

/// Like [`open`], reporting the Redis connection's failures and recoveries to `link`.
pub async fn open_tracked(
    url: &str,
    namespace: &str,
    link: Arc<crate::health::Link>,
) -> Result<Arc<dyn ExpiringStore>, BackendError> {
    if url.starts_with("memory:") {
        Ok(Arc::new(MemoryStore::default()))
    } else if url.starts_with("redis://") || url.starts_with("rediss://") {
        let client = redis::Client::open(url)?;
        // Connected on first use: a process started during a Redis outage comes up (not ready)
        // and connects once Redis is back.
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, manager_config())?;
        Ok(Arc::new(RedisStore { conn, prefix: format!("{namespace}:"), link }))
    } else {
        Err(BackendError::UnsupportedUrl(crate::db::redact(url)))
    }
}

/// Every Redis command answers within a deadline, and a broken connection is replaced on the
/// next command (the manager reconnects with backoff), so a dead or restarted Redis costs the
/// requests made meanwhile, never a stuck process.
pub fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

pub struct RedisStore {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    link: Arc<crate::health::Link>,
}

impl RedisStore {
    fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// The outcome of one command, as the connection's state (not a command's own error).
    fn seen<T>(&self, result: redis::RedisResult<T>) -> Result<T, BackendError> {
        match &result {
            Ok(_) => self.link.up(),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() => {
                self.link.down(&e.to_string())
            }
            Err(_) => {}
        }
        Ok(result?)
    }
}

fn secs(ttl: Duration) -> u64 {
    ttl.as_secs().max(1)
}

#[async_trait]
impl ExpiringStore for RedisStore {
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), BackendError> {
        let () = self.seen(self.conn.clone().set_ex(self.key(key), value, secs(ttl)).await)?;
        Ok(())
    }

    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        let reply: Option<String> = self.seen(
            redis::cmd("SET")
                .arg(self.key(key))
                .arg(value)
                .arg("NX")
                .arg("EX")
                .arg(secs(ttl))
                .query_async(&mut self.conn.clone())
                .await,
        )?;
        Ok(reply.is_some())
    }

    async fn get(&self, key: &str) -> Result<Option<String>, BackendError> {
        self.seen(self.conn.clone().get(self.key(key)).await)
    }

    async fn get_touch(&self, key: &str, ttl: Duration) -> Result<Option<String>, BackendError> {
        let mut conn = self.conn.clone();
        let value = redis::cmd("GETEX").arg(self.key(key)).arg("EX").arg(secs(ttl)).query_async(&mut conn).await;
        self.seen(value)
    }

    async fn take(&self, key: &str) -> Result<Option<String>, BackendError> {
        self.seen(self.conn.clone().get_del(self.key(key)).await)
    }

    async fn del(&self, key: &str) -> Result<(), BackendError> {
        let _: i64 = self.seen(self.conn.clone().del(self.key(key)).await)?;
        Ok(())
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<i64, BackendError> {
        // One script so the counter can never be left without an expiry.
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                "local n = redis.call('INCR', KEYS[1]) \
                 if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end \
                 return n",
            )
        });
        self.seen(SCRIPT.key(self.key(key)).arg(secs(ttl)).invoke_async(&mut self.conn.clone()).await)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let _: String = self.seen(redis::cmd("PING").query_async(&mut self.conn.clone()).await)?;
        Ok(())
    }
}

/// The standalone store: a map with lazy expiry plus a sweep on writes.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<MemoryEntries>,
}

#[derive(Default)]
struct MemoryEntries {
    map: HashMap<String, (String, Instant)>,
    writes: u64,
}

impl MemoryEntries {
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut (String, Instant)> {
        if self.map.get(key).is_some_and(|(_, exp)| *exp <= now) {
            self.map.remove(key);
        }
        self.map.get_mut(key)
    }

    fn insert(&mut self, key: &str, value: String, expires: Instant) {
        self.writes += 1;
        if self.writes.is_multiple_of(1024) {
            self.map.retain(|_, (_, exp)| *exp > Instant::now());
        }
        self.map.insert(key.to_string(), (value, expires));
    }
}

impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut MemoryEntries, Instant) -> T) -> T {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut entries, Instant::now())
    }
}

#[async_trait]
impl ExpiringStore for MemoryStore {
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), BackendError> {
        self.with(|e, now| e.insert(key, value.to_string(), now + ttl));
        Ok(())
    }

    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        Ok(self.with(|e, now| {
            if e.live(key, now).is_some() {
                return false;
            }
            e.insert(key, value.to_string(), now + ttl);
            true
        }))
    }

    async fn get(&self, key: &str) -> Result<Option<String>, BackendError> {
        Ok(self.with(|e, now| e.live(key, now).map(|(v, _)| v.clone())))
    }

    async fn get_touch(&self, key: &str, ttl: Duration) -> Result<Option<String>, BackendError> {
        Ok(self.with(|e, now| {
            e.live(key, now).map(|(v, exp)| {
                *exp = now + ttl;
                v.clone()
            })
        }))
    }

    async fn take(&self, key: &str) -> Result<Option<String>, BackendError> {
        Ok(self.with(|e, now| e.live(key, now).is_some().then(|| e.map.remove(key)).flatten().map(|(v, _)| v)))
    }

    async fn del(&self, key: &str) -> Result<(), BackendError> {
        self.with(|e, _| e.map.remove(key));
        Ok(())
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<i64, BackendError> {
        Ok(self.with(|e, now| {
            if let Some((v, _)) = e.live(key, now) {
                let n = v.parse::<i64>().unwrap_or(0) + 1;
                *v = n.to_string();
                return n;
            }
            e.insert(key, "1".into(), now + ttl);
            1
        }))
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// The behaviour both stores must show; run against memory here and against Redis when
/// `CHATMESH_TEST_REDIS_URL` is set (the test script always sets it).
#[cfg(test)]
mod tests {
    use super::*;

    async fn exercise(store: Arc<dyn ExpiringStore>) {
        let ttl = Duration::from_secs(60);
        assert_eq!(store.get("k").await.unwrap(), None);
        store.set("k", "v", ttl).await.unwrap();
        assert_eq!(store.get("k").await.unwrap().as_deref(), Some("v"));
        assert!(!store.set_nx("k", "w", ttl).await.unwrap());
        assert!(store.set_nx("k2", "w", ttl).await.unwrap());
        assert_eq!(store.take("k").await.unwrap().as_deref(), Some("v"));
        assert_eq!(store.take("k").await.unwrap(), None);
        assert_eq!(store.incr("c", ttl).await.unwrap(), 1);
        assert_eq!(store.incr("c", ttl).await.unwrap(), 2);
        assert_eq!(store.get_touch("k2", ttl).await.unwrap().as_deref(), Some("w"));
        store.del("k2").await.unwrap();
        assert_eq!(store.get("k2").await.unwrap(), None);
        store.set("short", "x", Duration::from_secs(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(store.get("short").await.unwrap(), None, "entries expire");
        store.ping().await.unwrap();
    }

    #[tokio::test]
    async fn memory_store_behaves() {
        exercise(open("memory://", "t").await.unwrap()).await;
    }

    #[tokio::test]
    async fn redis_store_behaves() {
        let Some(url) = crate::test_url("CHATMESH_TEST_REDIS_URL") else { return };
        exercise(open(&url, &format!("kvtest-{}", crate::new_id())).await.unwrap()).await;
    }
}
