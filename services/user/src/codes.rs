//! Phone verification codes: sent by SMS, valid five minutes, single use, five wrong tries at
//! most, and at most one send per phone per resend interval (a minute by default).

use std::sync::Arc;
use std::time::Duration;

use chatmesh_common::ExpiringStore;
use rand::Rng;

use crate::error::UserError;
use crate::sms::SmsSender;

pub const CODE_TTL: Duration = Duration::from_secs(300);
pub const MAX_WRONG_TRIES: i64 = 5;

#[derive(Clone)]
pub struct VerifyCodes {
    store: Arc<dyn ExpiringStore>,
    sms: Arc<dyn SmsSender>,
    resend_interval: Duration,
}

impl VerifyCodes {
    pub fn new(store: Arc<dyn ExpiringStore>, sms: Arc<dyn SmsSender>, resend_interval: Duration) -> Self {
        Self { store, sms, resend_interval }
    }

    /// Sends a new code to `phone` and returns the id the client quotes with it.
    pub async fn issue(&self, phone: &str) -> Result<String, UserError> {
        let throttle = format!("code-throttle:{phone}");
        if !self.store.set_nx(&throttle, "1", self.resend_interval).await? {
            return Err(UserError::CodeTooFrequent);
        }
        let code = format!("{:06}", rand::rng().random_range(0..1_000_000));
        let id = chatmesh_common::new_id();
        self.store.set(&code_key(&id), &format!("{phone}|{code}"), CODE_TTL).await?;
        if let Err(e) = self.sms.send_code(phone, &code).await {
            // Nothing was sent: leave no code behind and let the user retry at once.
            self.store.del(&code_key(&id)).await?;
            self.store.del(&throttle).await?;
            return Err(e.into());
        }
        Ok(id)
    }

    /// Consumes the code `id` if it was sent to `phone` and `code` matches.
    pub async fn redeem(&self, id: &str, phone: &str, code: &str) -> Result<(), UserError> {
        if id.is_empty() || id.len() > 64 {
            return Err(UserError::CodeInvalid);
        }
        let Some(stored) = self.store.get(&code_key(id)).await? else {
            return Err(UserError::CodeInvalid);
        };
        // Counted before the code is compared: concurrent guesses each take a try.
        let tries = self.store.incr(&tries_key(id), CODE_TTL).await?;
        if tries > MAX_WRONG_TRIES {
            self.store.del(&code_key(id)).await?;
            return Err(UserError::CodeExhausted);
        }
        let (for_phone, expected) = stored.split_once('|').unwrap_or(("", ""));
        if for_phone != phone || expected != code {
            if tries >= MAX_WRONG_TRIES {
                self.store.del(&code_key(id)).await?;
                return Err(UserError::CodeExhausted);
            }
            return Err(UserError::CodeWrong);
        }
        // `take` is atomic: of two concurrent redeemers only one gets the code.
        if self.store.take(&code_key(id)).await?.is_none() {
            return Err(UserError::CodeInvalid);
        }
        self.store.del(&tries_key(id)).await?;
        Ok(())
    }
}

fn code_key(id: &str) -> String {
    format!("code:{id}")
}

fn tries_key(id: &str) -> String {
    format!("code-tries:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sms::tests_support::Recorder;

    async fn codes() -> (VerifyCodes, Arc<Recorder>) {
        let sms = Arc::new(Recorder::default());
        let store = chatmesh_common::kv::open("memory://", "t").await.unwrap();
        (VerifyCodes::new(store, sms.clone(), Duration::from_secs(60)), sms)
    }

    #[tokio::test]
    async fn a_code_is_single_use() {
        let (codes, sms) = codes().await;
        let id = codes.issue("13800138000").await.unwrap();
        let code = sms.last_code("13800138000").unwrap();
        codes.redeem(&id, "13800138000", &code).await.unwrap();
        assert!(matches!(codes.redeem(&id, "13800138000", &code).await, Err(UserError::CodeInvalid)));
    }

    #[tokio::test]
    async fn five_wrong_tries_burn_the_code() {
        let (codes, sms) = codes().await;
        let id = codes.issue("13800138000").await.unwrap();
        let code = sms.last_code("13800138000").unwrap();
        let wrong = if code == "000000" { "000001" } else { "000000" };
        for _ in 0..4 {
            assert!(matches!(codes.redeem(&id, "13800138000", wrong).await, Err(UserError::CodeWrong)));
        }
        assert!(matches!(codes.redeem(&id, "13800138000", wrong).await, Err(UserError::CodeExhausted)));
        assert!(matches!(codes.redeem(&id, "13800138000", &code).await, Err(UserError::CodeInvalid)));
    }

    #[tokio::test]
    async fn concurrent_guesses_cannot_exceed_the_tries() {
        let (codes, sms) = codes().await;
        let id = codes.issue("13800138000").await.unwrap();
        let code = sms.last_code("13800138000").unwrap();
        let guesses = (0..40).map(|i| {
            let (codes, id) = (codes.clone(), id.clone());
            // The right code is the 26th guess; it must come too late.
            let guess = if i == 25 {
                code.clone()
            } else if code == "000000" {
                "000001".into()
            } else {
                "000000".into()
            };
            tokio::spawn(async move { codes.redeem(&id, "13800138000", &guess).await })
        });
        let mut evaluated = 0;
        for g in guesses {
            match g.await.unwrap() {
                Ok(()) => panic!("the right code got through after the limit"),
                Err(UserError::CodeWrong) => evaluated += 1,
                Err(_) => {}
            }
        }
        assert!(evaluated < MAX_WRONG_TRIES as usize, "{evaluated} wrong guesses were evaluated");
    }

    #[tokio::test]
    async fn a_code_is_bound_to_its_phone_and_resends_are_throttled() {
        let (codes, sms) = codes().await;
        let id = codes.issue("13800138000").await.unwrap();
        let code = sms.last_code("13800138000").unwrap();
        assert!(matches!(codes.redeem(&id, "13900139000", &code).await, Err(UserError::CodeWrong)));
        assert!(matches!(codes.issue("13800138000").await, Err(UserError::CodeTooFrequent)));
        codes.issue("13900139000").await.unwrap();
    }
}
