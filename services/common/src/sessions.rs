//! Login sessions: an unguessable token per device, mapped to the user id with a sliding expiry.
//! The user service creates them; the gateway resolves them on every request.

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;

use crate::{BackendError, ExpiringStore};

#[derive(Clone)]
pub struct LoginSessions {
    store: Arc<dyn ExpiringStore>,
    ttl: Duration,
}

impl LoginSessions {
    pub fn new(store: Arc<dyn ExpiringStore>, ttl: Duration) -> Self {
        Self { store, ttl }
    }

    /// A new session for `user_id`; each login (device) gets its own.
    pub async fn create(&self, user_id: &str) -> Result<String, BackendError> {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.store.set(&key(&token), user_id, self.ttl).await?;
        Ok(token)
    }

    /// The user id of a live session, extending its life; `None` for unknown or expired tokens.
    pub async fn resolve(&self, token: &str) -> Result<Option<String>, BackendError> {
        if token.is_empty() || token.len() > 128 {
            return Ok(None);
        }
        self.store.get_touch(&key(token), self.ttl).await
    }

    pub async fn revoke(&self, token: &str) -> Result<(), BackendError> {
        self.store.del(&key(token)).await
    }
}

fn key(token: &str) -> String {
    format!("session:{token}")
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
}
