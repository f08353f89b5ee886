//! Login sessions: an unguessable token per device, mapped to the user id with a sliding expiry
//! and an absolute lifetime (a session used daily still ends). The store keeps only a SHA-256
//! of each token, so a leaked store dump logs nobody in. The user service creates them; the
//! gateway resolves them on every request and revokes them on logout.
//!
//! With Redis, a gateway keeps what it resolved for a few seconds while it follows every
//! revocation ([`LoginSessions::followed`], see [`crate::followed`]): one Redis round trip per
//! request was the largest share of a send's time in the gateway.

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::followed::{self, Cached, Followed, Follower};
use crate::{BackendError, ExpiringStore};

/// Longest a resolved session is used without asking the store (the bound if a revocation's
/// announcement was lost; a session's idle expiry is extended on each store read, so also at
/// most this much of its activity goes unseen by the store).
const CACHE_TTL: Duration = Duration::from_secs(5);
/// Sessions cached at most per process.
const CACHE_CAPACITY: usize = 100_000;

#[derive(Clone)]
pub struct LoginSessions {
    store: Arc<dyn ExpiringStore>,
    ttl: Duration,
    max_age: Duration,
    /// Set while revocations are followed (a Redis store).
    followed: Option<Revocations>,
}

/// A cache of resolved sessions and the channel that keeps every process's cache honest.
#[derive(Clone)]
struct Revocations {
    /// Resolved sessions by store key: (user id, creation time).
    cache: Arc<Followed<(String, i64)>>,
    /// Where revocations are announced to the other processes' caches.
    conn: redis::aio::ConnectionManager,
    channel: String,
}

/// The Redis channel of revoked sessions in `namespace` (it carries store keys, never tokens).
pub fn channel(namespace: &str) -> String {
    format!("{namespace}:sessions")
}

/// The absolute lifetime when none is configured.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

impl LoginSessions {
    pub fn new(store: Arc<dyn ExpiringStore>, ttl: Duration) -> Self {
        Self::with_max_age(store, ttl, DEFAULT_MAX_AGE)
    }

    /// Sessions expire after `ttl` unused, and `max_age` after login whatever their use.
    pub fn with_max_age(store: Arc<dyn ExpiringStore>, ttl: Duration, max_age: Duration) -> Self {
        Self { store, ttl, max_age, followed: None }
    }

    /// With a Redis store (`redis_url`): announces revocations on the channel of `namespace`,
    /// and caches resolved sessions while following it, until `shutdown`. Anything else is
    /// already in this process: unchanged.
    pub fn followed(
        mut self,
        redis_url: &str,
        namespace: &str,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, BackendError> {
        if !redis_url.starts_with("redis") {
            return Ok(self);
        }
        let client = redis::Client::open(redis_url)?;
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), crate::kv::manager_config())?;
        // A short idle expiry (tests use seconds) must not be outlived by the cache.
        let cache = Arc::new(Followed::new(CACHE_TTL.min(self.ttl / 10), CACHE_CAPACITY));
        let follower: Arc<dyn Follower> = cache.clone();
        tokio::spawn(followed::follow(follower, client, channel(namespace), "session revocations", shutdown));
        self.followed = Some(Revocations { cache, conn, channel: channel(namespace) });
        Ok(self)
    }

    /// A new session for `user_id`; each login (device) gets its own.
    pub async fn create(&self, user_id: &str) -> Result<String, BackendError> {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let value = format!("{user_id}|{}", crate::unix_now());
        self.store.set(&key(&token), &value, self.ttl.min(self.max_age)).await?;
        Ok(token)
    }

    /// The user id of a live session, extending its life; `None` for unknown or expired tokens.
    pub async fn resolve(&self, token: &str) -> Result<Option<String>, BackendError> {
        if token.is_empty() || token.len() > 128 {
            return Ok(None);
        }
        let key = key(token);
        let generation = match self.followed.as_ref().map(|f| (f, f.cache.cached(&key))) {
            Some((_, Cached::Fresh((user_id, created)))) if young(created, self.max_age) => return Ok(Some(user_id)),
            Some((f, Cached::Renew((user_id, created), generation))) if young(created, self.max_age) => {
                // Read (and touched) again off the request's path, as a miss would.
                let (store, stored_as, ttl, max_age) = (self.store.clone(), key.clone(), self.ttl, self.max_age);
                f.cache.renew(&key, generation, async move {
                    read(store.as_ref(), &stored_as, ttl).await.ok()?.filter(|(_, created)| young(*created, max_age))
                });
                return Ok(Some(user_id));
            }
            Some((_, Cached::Miss(generation))) => Some(generation),
            _ => None,
        };
        let Some((user_id, created)) = read(self.store.as_ref(), &key, self.ttl).await? else { return Ok(None) };
        if !young(created, self.max_age) {
            self.store.del(&key).await?;
            return Ok(None);
        }
        if let (Some(f), Some(generation)) = (&self.followed, generation) {
            f.cache.remember(&key, generation, (user_id.clone(), created));
        }
        Ok(Some(user_id))
    }

    /// Ends the session here at once, and in every following process once it hears of it.
    pub async fn revoke(&self, token: &str) -> Result<(), BackendError> {
        let key = key(token);
        self.store.del(&key).await?;
        if let Some(f) = &self.followed {
            f.cache.changed(&key);
            followed::announce(&f.conn, &f.channel, &[&key], "session revocation").await;
        }
        Ok(())
    }
}

/// The session stored under `key`, its life extended to `ttl`: its user id and when it was
/// created.
async fn read(store: &dyn ExpiringStore, key: &str, ttl: Duration) -> Result<Option<(String, i64)>, BackendError> {
    let Some(value) = store.get_touch(key, ttl).await? else { return Ok(None) };
    let (user_id, created) = value.rsplit_once('|').unwrap_or((value.as_str(), "0"));
    Ok(Some((user_id.to_string(), created.parse::<i64>().unwrap_or(0))))
}

/// Within the absolute lifetime `max_age`.
fn young(created: i64, max_age: Duration) -> bool {
    let age = crate::unix_now().saturating_sub(created);
    age >= 0 && (age as u64) < max_age.as_secs()
}

/// Tokens are stored hashed: whoever reads the store cannot use what it finds.
fn key(token: &str) -> String {
    format!("session:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_resolve_until_revoked() {
        let s = LoginSessions::new(crate::kv::open("memory://", "t").await.unwrap(), Duration::from_secs(60));
        let a = s.create("u1").await.unwrap();
        let b = s.create("u1").await.unwrap();
        assert_ne!(a, b, "each device gets its own session");
        assert_eq!(s.resolve(&a).await.unwrap().as_deref(), Some("u1"));
        s.revoke(&a).await.unwrap();
        assert_eq!(s.resolve(&a).await.unwrap(), None);
        assert_eq!(s.resolve(&b).await.unwrap().as_deref(), Some("u1"));
        assert_eq!(s.resolve("").await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_store_never_sees_a_token_and_sessions_end_at_their_max_age() {
        let store = crate::kv::open("memory://", "t").await.unwrap();
        let s = LoginSessions::with_max_age(store.clone(), Duration::from_secs(60), Duration::from_secs(1));
        let token = s.create("u1").await.unwrap();
        assert_eq!(store.get(&format!("session:{token}")).await.unwrap(), None);
        assert_eq!(s.resolve(&token).await.unwrap().as_deref(), Some("u1"));
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(s.resolve(&token).await.unwrap(), None, "used or not, the session is too old");
    }

    /// Two gateways on one Redis, each caching what it resolved: a logout at one ends the
    /// session at the other at once; the cache still honours the absolute lifetime.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_reaches_every_following_gateway() {
        let Some(url) = crate::test_url("CHATMESH_TEST_REDIS_URL") else { return };
        let namespace = format!("t{}", crate::new_id());
        let store = crate::kv::open(&url, &namespace).await.unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let gateway = |max_age| {
            LoginSessions::with_max_age(store.clone(), Duration::from_secs(600), max_age)
                .followed(&url, &namespace, shutdown.clone())
                .unwrap()
        };
        let (a, b) = (gateway(DEFAULT_MAX_AGE), gateway(DEFAULT_MAX_AGE));
        for s in [&a, &b] {
            let cache = &s.followed.as_ref().unwrap().cache;
            for _ in 0..100 {
                if cache.is_live() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(cache.is_live(), "following revocations");
        }
        let token = a.create("u1").await.unwrap();
        assert_eq!(b.resolve(&token).await.unwrap().as_deref(), Some("u1"));
        // Gone from the store behind b's back (no announcement): b answers from memory.
        store.del(&key(&token)).await.unwrap();
        assert_eq!(b.resolve(&token).await.unwrap().as_deref(), Some("u1"), "cached");

        let token = a.create("u2").await.unwrap();
        assert_eq!(b.resolve(&token).await.unwrap().as_deref(), Some("u2"));
        assert_eq!(a.resolve(&token).await.unwrap().as_deref(), Some("u2"));
        a.revoke(&token).await.unwrap();
        assert_eq!(a.resolve(&token).await.unwrap(), None, "revoked here at once");
        let mut ended = false;
        for _ in 0..50 {
            if b.resolve(&token).await.unwrap().is_none() {
                ended = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ended, "the revocation reached the other gateway");

        let old = gateway(Duration::from_secs(1));
        let token = old.create("u3").await.unwrap();
        assert_eq!(old.resolve(&token).await.unwrap().as_deref(), Some("u3"));
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(old.resolve(&token).await.unwrap(), None, "a cached session still ends at its max age");
    }
}
