//! The state of each long-lived connection to a backend, for readiness, logs and metrics.
//!
//! A [`Link`] is told of every success and failure on its connection. It logs the moment it goes
//! down (once, with the cause, however often the retries fail) and the moment it is back, and
//! counts each recovery in `chatmesh_backend_reconnects_total{backend}`. [`Health`] gathers the
//! links of a process: `/readyz` is false while a required one is down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One named connection (or pool) to a backend.
#[derive(Debug)]
pub struct Link {
    name: &'static str,
    required: bool,
    up: AtomicBool,
    cause: Mutex<Option<String>>,
}

impl Link {
    pub fn new(name: &'static str, required: bool) -> Arc<Self> {
        Arc::new(Self { name, required, up: AtomicBool::new(true), cause: Mutex::new(None) })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// The connection failed: logged only on the transition from up to down.
    pub fn down(&self, cause: &str) {
        *self.cause.lock().unwrap_or_else(|e| e.into_inner()) = Some(cause.to_string());
        if self.up.swap(false, Ordering::SeqCst) {
            tracing::warn!(backend = self.name, cause, "backend connection lost; reconnecting with backoff");
            metrics::counter!("chatmesh_backend_disconnects_total", "backend" => self.name).increment(1);
        }
    }

    /// The connection works (again): a recovery is logged and counted once.
    pub fn up(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            let cause = self.cause.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
            tracing::info!(backend = self.name, after = %cause, "backend connection restored");
            metrics::counter!("chatmesh_backend_reconnects_total", "backend" => self.name).increment(1);
        }
    }

    /// Why it is down, if it is.
    pub fn cause(&self) -> Option<String> {
        if self.is_up() { None } else { self.cause.lock().unwrap_or_else(|e| e.into_inner()).clone() }
    }

    /// Records the outcome of one operation on this connection and passes it on.
    pub fn track<T, E: std::fmt::Display>(&self, result: Result<T, E>) -> Result<T, E> {
        match &result {
            Ok(_) => self.up(),
            Err(e) => self.down(&e.to_string()),
        }
        result
    }
}

/// Every link of a process.
#[derive(Debug, Default, Clone)]
pub struct Health {
    links: Arc<Mutex<Vec<Arc<Link>>>>,
}

impl Health {
    /// A new link, registered here.
    pub fn link(&self, name: &'static str, required: bool) -> Arc<Link> {
        let link = Link::new(name, required);
        self.links.lock().unwrap_or_else(|e| e.into_inner()).push(link.clone());
        link
    }

    /// `Err` naming every required link that is down (and its cause).
    pub fn check(&self) -> Result<(), String> {
        let down: Vec<String> = self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| l.required)
            .filter_map(|l| l.cause().map(|c| format!("{}: {c}", l.name)))
            .collect();
        if down.is_empty() { Ok(()) } else { Err(down.join("; ")) }
    }
}

/// Exponential backoff with jitter between reconnection attempts: 100 ms doubling to `max`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Self { next: Duration::from_millis(100), max }
    }

    /// The wait before the next attempt (grows each call).
    pub fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // +-25 % so many clients of one restarted server do not retry in lockstep.
        let jitter = rand::random_range(0.75..1.25);
        base.mul_f64(jitter)
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_links_decide_readiness() {
        let health = Health::default();
        let queue = health.link("queue", true);
        let search = health.link("search", false);
        assert!(health.check().is_ok());
        search.down("refused");
        assert!(health.check().is_ok(), "an optional link does not make the process unready");
        queue.down("connection reset");
        assert_eq!(health.check().unwrap_err(), "queue: connection reset");
        queue.up();
        assert!(health.check().is_ok());
        assert_eq!(queue.cause(), None);
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let waits: Vec<Duration> = (0..8).map(|_| b.step()).collect();
        assert!(waits[0] < Duration::from_millis(130));
        assert!(waits[7] >= Duration::from_millis(1500) && waits[7] <= Duration::from_millis(2500));
        b.reset();
        assert!(b.step() < Duration::from_millis(130));
    }
}
