//! A cache kept only while this process hears about every change to what it caches: the
//! process that makes a change announces it after the fact — in the same process directly,
//! across processes on a Redis channel ([`announce`], [`follow`]). While the subscription is
//! down nothing is cached, a read that began before an announcement is not cached, and every
//! entry also expires, bounding the damage of an announcement lost in a crash. Transmit caches
//! chat members this way ([`crate::members`]), gateways login sessions ([`crate::sessions`])
//! and where each user's other devices are (the gateway's push bus).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::health::Backoff;

/// Deadline of connecting, subscribing and each ping.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of an announcement: the change waits for it (so the next request sees it), but
/// not long where Redis cannot be reached.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(1);
/// The subscription proves itself alive this often.
const PING_EVERY: Duration = Duration::from_secs(5);

pub struct Followed<V> {
    /// Values by key, with when they were read.
    cache: std::sync::Mutex<HashMap<String, (Instant, V)>>,
    /// Bumped (under the cache lock) by every change heard: a read that began before one does
    /// not cache what it read.
    generation: AtomicU64,
    /// Changes reach this process: caching is safe.
    live: AtomicBool,
    /// Longest an entry is used.
    ttl: Duration,
    capacity: usize,
}

impl<V: Clone> Followed<V> {
    /// Caches nothing until [`Followed::set_live`] (or [`follow`]) turns caching on.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { cache: Default::default(), generation: AtomicU64::new(0), live: AtomicBool::new(false), ttl, capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, V)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached value, or the generation to remember a read under.
    pub fn cached(&self, key: &str) -> Result<V, u64> {
        let cache = self.lock();
        if self.live.load(Ordering::Acquire)
            && let Some((at, value)) = cache.get(key)
            && at.elapsed() < self.ttl
        {
            return Ok(value.clone());
        }
        Err(self.generation.load(Ordering::Acquire))
    }

    /// Caches what a read begun at `generation` found, unless a change was heard since.
    pub fn remember(&self, key: &str, generation: u64, value: V) {
        let mut cache = self.lock();
        if !self.live.load(Ordering::Acquire) || self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if cache.len() >= self.capacity {
            cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if cache.len() >= self.capacity {
                cache.clear();
            }
        }
        cache.insert(key.to_string(), (Instant::now(), value));
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
}

/// What [`follow`] tells of the announcements it hears.
pub trait Follower: Send + Sync + 'static {
    /// `key` changed.
    fn changed(&self, key: &str);
    /// Caching on (changes are heard) or off (they may be missed: forget everything).
    fn set_live(&self, live: bool);
}

impl<V: Clone + Send + 'static> Follower for Followed<V> {
    fn changed(&self, key: &str) {
        let mut cache = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        cache.remove(key);
    }

    fn set_live(&self, live: bool) {
        let mut cache = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        cache.clear();
        self.live.store(live, Ordering::Release);
    }
}

/// Announces on `channel`, after the change was made, that `keys` changed (one pipelined round
/// trip). A failure is logged (as `what`): the followers' entries expire within their TTL anyway.
pub async fn announce<K: AsRef<str>>(conn: &redis::aio::ConnectionManager, channel: &str, keys: &[K], what: &str) {
    if keys.is_empty() {
        return;
    }
    let (mut conn, mut pipe) = (conn.clone(), redis::pipe());
    for key in keys {
        pipe.publish(channel, key.as_ref()).ignore();
    }
    match tokio::time::timeout(ANNOUNCE_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "{what} not announced"),
        Err(_) => tracing::warn!("{what} not announced: no answer"),
    }
}

/// Keeps `follower` caching while subscribed to `channel`, applying each announced change;
/// resubscribes with backoff, caching off in between, until `shutdown`. `what` names the
/// changes in logs.
pub async fn follow(
    follower: Arc<dyn Follower>,
    client: redis::Client,
    channel: String,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(5));
    let mut failures = 0u64;
    while !*shutdown.borrow() {
        let (cause, was_live) = follow_once(follower.as_ref(), &client, &channel, &mut shutdown, &mut backoff).await;
        follower.set_live(false);
        if *shutdown.borrow() {
            return;
        }
        // Once per outage (a process without a route to Redis would otherwise log forever).
        failures = if was_live { 1 } else { failures + 1 };
        if failures == 1 {
            tracing::warn!(%cause, "{what} not followed; not caching them");
        } else {
            tracing::debug!(%cause, "{what} still not followed");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.step()) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

/// One subscription, until it fails: why, and whether it had been live.
async fn follow_once(
    follower: &dyn Follower,
    client: &redis::Client,
    channel: &str,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> (String, bool) {
    let pubsub = match tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub()).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return (format!("connecting: {e}"), false),
        Err(_) => return ("connecting: no answer".into(), false),
    };
    let (mut sink, mut messages) = pubsub.split();
    match tokio::time::timeout(REDIS_TIMEOUT, sink.subscribe(channel)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return (format!("subscribing: {e}"), false),
        Err(_) => return ("subscribing: no answer".into(), false),
    }
    // Only from here on is every change heard.
    follower.set_live(true);
    backoff.reset();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = crate::stopped(shutdown) => return (String::new(), true),
            _ = ping.tick() => match tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return (format!("ping: {e}"), true),
                Err(_) => return ("ping: no answer".into(), true),
            },
            msg = messages.next() => match msg {
                Some(msg) => match msg.get_payload::<String>() {
                    Ok(key) => follower.changed(&key),
                    // Cannot tell which key: forget them all.
                    Err(_) => follower.set_live(true),
                },
                None => return ("subscription closed".into(), true),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_only_while_live_and_never_what_a_change_overtook() {
        let f: Followed<u32> = Followed::new(Duration::from_secs(10), 100);
        let generation = f.cached("k").unwrap_err();
        f.remember("k", generation, 1);
        assert!(f.cached("k").is_err(), "not live: nothing cached");
        f.set_live(true);
        let generation = f.cached("k").unwrap_err();
        f.changed("k"); // lands while the read is under way
        f.remember("k", generation, 1);
        assert!(f.cached("k").is_err(), "what the read found may predate the change");
        let generation = f.cached("k").unwrap_err();
        f.remember("k", generation, 2);
        assert_eq!(f.cached("k"), Ok(2));
        f.changed("k");
        assert!(f.cached("k").is_err(), "a change is seen at once");
        let generation = f.cached("k").unwrap_err();
        f.remember("k", generation, 3);
        f.set_live(false);
        assert!(f.cached("k").is_err(), "caching off forgets everything");
    }

    #[test]
    fn entries_expire_and_the_capacity_holds() {
        let f: Followed<u32> = Followed::new(Duration::from_millis(50), 3);
        f.set_live(true);
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let generation = f.cached(k).unwrap_err();
            f.remember(k, generation, i as u32);
        }
        assert!(f.lock().len() <= 3);
        assert_eq!(f.cached("d"), Ok(3));
        std::thread::sleep(Duration::from_millis(60));
        assert!(f.cached("d").is_err(), "expired");
    }
}
