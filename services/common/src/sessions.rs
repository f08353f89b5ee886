//! Login sessions: an unguessable token per device, mapped to the user id with a sliding expiry
//! and an absolute lifetime (a session used daily still ends). The store keeps only a SHA-256
//! of each token, so a leaked store dump logs nobody in. The user service creates them; the
//! gateway resolves them on every request and revokes them on logout.

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{BackendError, ExpiringStore};

#[derive(Clone)]
pub struct LoginSessions {
    store: Arc<dyn ExpiringStore>,
    ttl: Duration,
    max_age: Duration,
}

/// The absolute lifetime when none is configured.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

impl LoginSessions {
    pub fn new(store: Arc<dyn ExpiringStore>, ttl: Duration) -> Self {
        Self::with_max_age(store, ttl, DEFAULT_MAX_AGE)
    }

    /// Sessions expire after `ttl` unused, and `max_age` after login whatever their use.
    pub fn with_max_age(store: Arc<dyn ExpiringStore>, ttl: Duration, max_age: Duration) -> Self {
        Self { store, ttl, max_age }
    }

    /// A new session for `user_id`; each login (device) gets its own.
    pub async fn create(&self, user_id: &str) -> Result<String, BackendError> {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let value = format!("{user_id}|{}", crate::unix_now());
        self.store.set(&key(&token), &value, self.ttl.min(self.max_age)).await?;
        Ok(token)
    }

    /// The user id of a live session, extending its life; `None` for unknown or expired tokens.
    pub async fn resolve(&self, token: &str) -> Result<Option<String>, BackendError> {
        if token.is_empty() || token.len() > 128 {
            return Ok(None);
        }
        let Some(value) = self.store.get_touch(&key(token), self.ttl).await? else { return Ok(None) };
        let (user_id, created) = value.rsplit_once('|').unwrap_or((value.as_str(), "0"));
        let age = crate::unix_now().saturating_sub(created.parse::<i64>().unwrap_or(0));
        if age < 0 || age as u64 >= self.max_age.as_secs() {
            self.store.del(&key(token)).await?;
            return Ok(None);
        }
        Ok(Some(user_id.to_string()))
    }

    pub async fn revoke(&self, token: &str) -> Result<(), BackendError> {
        self.store.del(&key(token)).await
    }
}

/// Tokens are stored hashed: whoever reads the store cannot use what it finds.
fn key(token: &str) -> String {
    let digest: String = Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!("session:{digest}")
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
}
