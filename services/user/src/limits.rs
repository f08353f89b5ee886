//! Limits on guessing: counted first, atomically, then decided. Each attempt increments its
//! counters before any password or code is checked, so concurrent attempts cannot all read the
//! same old count. Per account: a few free attempts, then progressive delays (at most one
//! attempt evaluated per delay, the delay doubling up to a cap), so a stranger can slow an
//! account down but never lock it for long. Per client address: a plain budget per window.
//! Keys are SHA-256 hashes: bounded in size whatever the client sent.

use std::sync::Arc;
use std::time::Duration;

use chatmesh_common::ExpiringStore;
use sha2::{Digest, Sha256};

use crate::error::UserError;

#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Failed logins of one account evaluated at full speed before delays start.
    #[arg(long, env = "CHATMESH_LOGIN_FREE_ATTEMPTS", default_value_t = 5)]
    pub login_free_attempts: i64,
    /// Longest delay between two evaluated login attempts of one account.
    #[arg(long, env = "CHATMESH_LOGIN_MAX_DELAY", default_value = "60s", value_parser = humantime::parse_duration)]
    pub login_max_delay: Duration,
    /// Login attempts from one client address per window (0: no limit).
    #[arg(long, env = "CHATMESH_LOGIN_PER_IP", default_value_t = 300)]
    pub login_per_ip: i64,
    /// The window of the login and SMS counters.
    #[arg(long, env = "CHATMESH_LIMIT_WINDOW", default_value = "15m", value_parser = humantime::parse_duration)]
    pub limit_window: Duration,
    /// Verification SMS sent by the whole system per window (0: no limit).
    #[arg(long, env = "CHATMESH_SMS_GLOBAL_BUDGET", default_value_t = 2000)]
    pub sms_global_budget: i64,
    /// Verification SMS requested from one client address per window (0: no limit).
    #[arg(long, env = "CHATMESH_SMS_PER_IP", default_value_t = 20)]
    pub sms_per_ip: i64,
}

/// A bounded, fixed-size key for anything a client sends.
pub fn hashed(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[derive(Clone)]
pub struct Limits {
    store: Arc<dyn ExpiringStore>,
    args: LimitArgs,
}

impl Limits {
    pub fn new(store: Arc<dyn ExpiringStore>, args: LimitArgs) -> Self {
        Self { store, args }
    }

    /// Counts one attempt of `kind` from `client_ip`; refuses it past the per-address budget.
    async fn per_ip(&self, kind: &str, client_ip: Option<&str>, budget: i64) -> Result<(), UserError> {
        let Some(ip) = client_ip.filter(|_| budget > 0) else { return Ok(()) };
        let n = self.store.incr(&format!("{kind}-ip:{}", hashed(ip)), self.args.limit_window).await?;
        if n > budget { Err(UserError::TooManyFromAddress) } else { Ok(()) }
    }

    /// Admits a login attempt for `account` (counted before the password is checked).
    pub async fn admit_login(&self, account: &str, client_ip: Option<&str>) -> Result<(), UserError> {
        self.per_ip("login", client_ip, self.args.login_per_ip).await?;
        let key = hashed(account);
        let n = self.store.incr(&format!("login-attempts:{key}"), self.args.limit_window).await?;
        let over = n - self.args.login_free_attempts;
        if over <= 0 {
            return Ok(());
        }
        // The delay grows with the attempts let through so far, not with the attempts made:
        // whichever concurrent attempt creates the gate, its length is the same.
        let passed = self.store.get(&format!("login-delays:{key}")).await?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let delay = progressive_delay(passed + 1, self.args.login_max_delay);
        // Whoever creates the gate is the one attempt evaluated in this delay.
        if self.store.set_nx(&format!("login-gate:{key}"), "1", delay).await? {
            self.store.incr(&format!("login-delays:{key}"), self.args.limit_window).await?;
            Ok(())
        } else {
            Err(UserError::LoginDelayed(delay.as_secs().max(1)))
        }
    }

    /// A successful login clears the account's count.
    pub async fn login_succeeded(&self, account: &str) -> Result<(), UserError> {
        let key = hashed(account);
        self.store.del(&format!("login-attempts:{key}")).await?;
        Ok(self.store.del(&format!("login-delays:{key}")).await?)
    }

    /// Admits a request for a verification SMS: per address, then for the whole system.
    pub async fn admit_sms(&self, client_ip: Option<&str>) -> Result<(), UserError> {
        self.per_ip("sms", client_ip, self.args.sms_per_ip).await?;
        if self.args.sms_global_budget > 0
            && self.store.incr("sms-global", self.args.limit_window).await? > self.args.sms_global_budget
        {
            return Err(UserError::SmsBudget);
        }
        Ok(())
    }
}

/// 1 s for the first attempt over the free ones, doubling, at most `cap` (and at least 1 s).
pub fn progressive_delay(over: i64, cap: Duration) -> Duration {
    let exp = (over - 1).clamp(0, 20) as u32;
    Duration::from_secs(1u64 << exp).min(cap).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> LimitArgs {
        LimitArgs {
            login_free_attempts: 3,
            login_max_delay: Duration::from_secs(30),
            login_per_ip: 50,
            limit_window: Duration::from_secs(60),
            sms_global_budget: 5,
            sms_per_ip: 3,
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let cap = Duration::from_secs(30);
        let secs: Vec<u64> = (1..=7).map(|n| progressive_delay(n, cap).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[tokio::test]
    async fn concurrent_attempts_are_counted_before_they_are_evaluated() {
        let store = chatmesh_common::kv::open("memory://", "t").await.unwrap();
        let limits = Limits::new(store, args());
        let tries = (0..40).map(|_| {
            let l = limits.clone();
            tokio::spawn(async move { l.admit_login("victim", None).await.is_ok() })
        });
        let mut admitted = 0;
        for t in tries {
            admitted += t.await.unwrap() as usize;
        }
        assert_eq!(admitted, 4, "3 free attempts and one through the first delay");
    }

    #[tokio::test]
    async fn addresses_and_the_system_have_sms_budgets() {
        let store = chatmesh_common::kv::open("memory://", "t").await.unwrap();
        let limits = Limits::new(store, args());
        for _ in 0..3 {
            limits.admit_sms(Some("10.0.0.1")).await.unwrap();
        }
        assert!(matches!(limits.admit_sms(Some("10.0.0.1")).await, Err(UserError::TooManyFromAddress)));
        limits.admit_sms(Some("10.0.0.2")).await.unwrap();
        limits.admit_sms(Some("10.0.0.3")).await.unwrap();
        assert!(matches!(limits.admit_sms(Some("10.0.0.4")).await, Err(UserError::SmsBudget)), "5 in the window");
    }
}
