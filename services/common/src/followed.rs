//! A cache kept only while this process hears about every change to what it caches: the
//! process that makes a change announces it after the fact — in the same process directly,
//! across processes on a Redis channel ([`announce`], [`follow`]). While the subscription is
//! down nothing is cached, a read that began before an announcement is not cached, and every
//! entry also expires, bounding the damage of an announcement lost in a crash. An entry in use
//! is read again in the background before it expires ([`Cached::Renew`]), so a key in steady
//! use never costs a request a read. Transmit caches chat members this way
//! ([`crate::members`]) and, unfollowed, sender profiles; gateways login sessions
//! ([`crate::sessions`]) and where each user's other devices are (the gateway's push bus).

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
    cache: std::sync::Mutex<HashMap<String, Entry<V>>>,
    /// Bumped (under the cache lock) by every change heard: a read that began before one does
    /// not cache what it read.
    generation: AtomicU64,
    /// Changes reach this process: caching is safe.
    live: AtomicBool,
    /// Longest an entry is used.
    ttl: Duration,
    capacity: usize,
}

struct Entry<V> {
    read_at: Instant,
    /// From here on the entry is renewed in the background while it is still used: a key in
    /// steady use never expires on a request's path. Spread over half to four fifths of the
    /// TTL, so entries filled together (a burst of new sessions) are not all read again at once.
    renew_at: Instant,
    renewing: bool,
    value: V,
}

/// What the cache holds for a key.
#[derive(Debug, PartialEq)]
pub enum Cached<V> {
    Fresh(V),
    /// Still valid, and due for renewal: use it, and renew it with [`Followed::renew`] under
    /// this generation (only the first lookup after it fell due is told so).
    Renew(V, u64),
    /// Not cached: read it, and [`Followed::remember`] it under this generation.
    Miss(u64),
}

impl<V: Clone> Followed<V> {
    /// Caches nothing until [`Followed::set_live`] (or [`follow`]) turns caching on.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { cache: Default::default(), generation: AtomicU64::new(0), live: AtomicBool::new(false), ttl, capacity }
    }

    /// A plain TTL cache: for values whose changes nobody announces, where using one up to
    /// `ttl` old is accepted.
    pub fn unfollowed(ttl: Duration, capacity: usize) -> Self {
        let cache = Self::new(ttl, capacity);
        cache.live.store(true, Ordering::Release);
        cache
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<V>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached value, maybe due for renewal, or the generation to remember a read under.
    pub fn cached(&self, key: &str) -> Cached<V> {
        let mut cache = self.lock();
        if self.live.load(Ordering::Acquire)
            && let Some(entry) = cache.get_mut(key)
            && entry.read_at.elapsed() < self.ttl
        {
            if entry.renewing || Instant::now() < entry.renew_at {
                return Cached::Fresh(entry.value.clone());
            }
            entry.renewing = true;
            return Cached::Renew(entry.value.clone(), self.generation.load(Ordering::Acquire));
        }
        Cached::Miss(self.generation.load(Ordering::Acquire))
    }

    /// Caches what a read begun at `generation` found, unless a change was heard since.
    pub fn remember(&self, key: &str, generation: u64, value: V) {
        let mut cache = self.lock();
        if !self.live.load(Ordering::Acquire) || self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if cache.len() >= self.capacity {
            cache.retain(|_, e| e.read_at.elapsed() < self.ttl);
            if cache.len() >= self.capacity {
                cache.clear();
            }
        }
        let now = Instant::now();
        let renew_at = now + self.ttl.mul_f64(rand::random_range(0.5..0.8));
        cache.insert(key.to_string(), Entry { read_at: now, renew_at, renewing: false, value });
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
}

impl<V: Clone + Send + 'static> Followed<V> {
    /// Renews `key` (told by [`Cached::Renew`]) in the background with what `read` finds:
    /// `None` (a failed or uncacheable read) leaves the entry to expire as it would have.
    pub fn renew(self: &Arc<Self>, key: &str, generation: u64, read: impl Future<Output = Option<V>> + Send + 'static) {
        let (cache, key) = (self.clone(), key.to_string());
        tokio::spawn(async move {
            if let Some(value) = read.await {
                cache.remember(&key, generation, value);
            }
        });
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
        let Cached::Miss(generation) = f.cached("k") else { panic!("cached") };
        f.remember("k", generation, 1);
        assert!(matches!(f.cached("k"), Cached::Miss(_)), "not live: nothing cached");
        f.set_live(true);
        let Cached::Miss(generation) = f.cached("k") else { panic!("cached") };
        f.changed("k"); // lands while the read is under way
        f.remember("k", generation, 1);
        assert!(matches!(f.cached("k"), Cached::Miss(_)), "what the read found may predate the change");
        let Cached::Miss(generation) = f.cached("k") else { panic!("cached") };
        f.remember("k", generation, 2);
        assert_eq!(f.cached("k"), Cached::Fresh(2));
        f.changed("k");
        assert!(matches!(f.cached("k"), Cached::Miss(_)), "a change is seen at once");
        let Cached::Miss(generation) = f.cached("k") else { panic!("cached") };
        f.remember("k", generation, 3);
        f.set_live(false);
        assert!(matches!(f.cached("k"), Cached::Miss(_)), "caching off forgets everything");
    }

    #[test]
    fn entries_expire_and_the_capacity_holds() {
        let f: Followed<u32> = Followed::new(Duration::from_millis(50), 3);
        f.set_live(true);
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let Cached::Miss(generation) = f.cached(k) else { panic!("cached") };
            f.remember(k, generation, i as u32);
        }
        assert!(f.lock().len() <= 3);
        assert_eq!(f.cached("d"), Cached::Fresh(3));
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(f.cached("d"), Cached::Miss(_)), "expired");
    }

    /// An entry in use is renewed before it expires, off the reader's path: only one lookup is
    /// told to renew it, a change heard meanwhile wins over what the renewal read, and a failed
    /// renewal leaves the entry to expire.
    #[tokio::test]
    async fn an_entry_in_use_is_renewed_once_before_it_expires() {
        let f = Arc::new(Followed::<u32>::unfollowed(Duration::from_secs(2), 10));
        let Cached::Miss(generation) = f.cached("k") else { panic!("cached") };
        f.remember("k", generation, 1);
        assert_eq!(f.cached("k"), Cached::Fresh(1), "not due before half the TTL");
        tokio::time::sleep(Duration::from_millis(1650)).await; // past four fifths: due
        let Cached::Renew(1, generation) = f.cached("k") else { panic!("not due for renewal") };
        assert_eq!(f.cached("k"), Cached::Fresh(1), "one lookup renews; the others use the entry");
        let (tx, rx) = tokio::sync::oneshot::channel();
        f.renew("k", generation, async move { rx.await.ok() });
        tx.send(2).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while f.cached("k") != Cached::Fresh(2) {
            assert!(Instant::now() < deadline, "the renewal was not remembered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // A change while the renewal reads: what it read is not cached.
        tokio::time::sleep(Duration::from_millis(1650)).await;
        let Cached::Renew(2, generation) = f.cached("k") else { panic!("not due for renewal") };
        f.changed("k");
        f.renew("k", generation, async { Some(3) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(f.cached("k"), Cached::Miss(_)), "the renewal overtook the change");

        // A failed renewal: the entry is used until it expires, then missed.
        let Cached::Miss(generation) = f.cached("k") else { panic!("cached") };
        f.remember("k", generation, 4);
        tokio::time::sleep(Duration::from_millis(1650)).await;
        let Cached::Renew(4, generation) = f.cached("k") else { panic!("not due for renewal") };
        f.renew("k", generation, async { None });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(f.cached("k"), Cached::Fresh(4));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(matches!(f.cached("k"), Cached::Miss(_)), "expired after a failed renewal");
    }
}
