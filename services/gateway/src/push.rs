//! The WebSocket connections of this gateway instance, by user: a user may be connected from
//! several devices (each with its own login session), and each gets every notification.
//! A notification is encoded once and the same bytes are queued for every device; each
//! device's queue is bounded in bytes, and a device that falls behind is told to close.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use chatmesh_proto::NotifyMessage;
use prost::Message;
use tokio::sync::{Notify, mpsc};

/// Why the server ends a connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Its queue of pushes grew past the byte limit (the client does not read).
    TooSlow,
    /// The user opened more devices than allowed; this is the oldest.
    Replaced,
}

/// One queued notification: the encoded frame (shared by every device it goes to), when this
/// system accepted it for delivery, and whether it came from another gateway; the writer
/// records the time from acceptance to the frame written in `chatmesh_gateway_push_seconds`.
#[derive(Debug, Clone)]
pub struct Push {
    pub frame: Bytes,
    pub accepted: Instant,
    pub path: PushPath,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushPath {
    /// The recipient is connected to the gateway that accepted the notification.
    Local,
    /// It went through another gateway's channel first.
    Remote,
}

impl PushPath {
    pub fn label(self) -> &'static str {
        match self {
            PushPath::Local => "local",
            PushPath::Remote => "remote",
        }
    }
}

impl Push {
    /// A notification accepted here and now.
    pub fn local(frame: Bytes) -> Self {
        Self { frame, accepted: Instant::now(), path: PushPath::Local }
    }

    /// What one queued push costs its device's queue (the writer gives it back after sending).
    pub fn cost(&self) -> usize {
        self.frame.len() + FRAME_OVERHEAD
    }
}

/// What the deliverers and the connection's task share: its queue of pushes (bounded in bytes
/// by `queued_bytes`; a plain deque, which holds no memory while empty, where a channel would
/// keep a block of slots per idle connection), why it must close, and the wake-up for both.
pub struct DeviceState {
    queued_bytes: AtomicUsize,
    inner: Mutex<DeviceQueue>,
    closing: AtomicBool,
    pub wake: Notify,
}

#[derive(Default)]
struct DeviceQueue {
    pushes: VecDeque<Push>,
    evicted: Option<Eviction>,
}

impl DeviceState {
    fn lock(&self) -> std::sync::MutexGuard<'_, DeviceQueue> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn eviction(&self) -> Option<Eviction> {
        self.lock().evicted
    }

    fn evict(&self, why: Eviction) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.lock().evicted = Some(why);
            self.wake.notify_one();
        }
    }

    fn enqueue(&self, push: Push) {
        self.lock().pushes.push_back(push);
        self.wake.notify_one();
    }

    /// The writer sent `len` bytes: room for more.
    pub fn sent(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
    }
}

/// One device's connection: its id, the login session it authenticated with, its queue.
struct Device {
    id: u64,
    session_id: String,
    state: Arc<DeviceState>,
}

/// A user came online or went offline on this gateway (for presence in a shared store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    Online(String),
    Offline(String),
}

#[derive(Clone)]
pub struct Connections {
    inner: Arc<Mutex<HashMap<String, Vec<Device>>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    presence: Arc<Mutex<Option<mpsc::UnboundedSender<PresenceChange>>>>,
    queue_bytes: Arc<AtomicUsize>,
    max_devices: Arc<AtomicUsize>,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            inner: Default::default(),
            next_id: Default::default(),
            presence: Default::default(),
            queue_bytes: Arc::new(AtomicUsize::new(1024 * 1024)),
            max_devices: Arc::new(AtomicUsize::new(8)),
        }
    }
}

/// A registered connection; dropping it unregisters.
pub struct Registration {
    pub id: u64,
    pub state: Arc<DeviceState>,
    user_id: String,
    owner: Connections,
}

impl Registration {
    /// The oldest queued push. A drained queue gives its memory back (a burst may have grown it).
    pub fn next_push(&self) -> Option<Push> {
        let mut queue = self.state.lock();
        let push = queue.pushes.pop_front();
        if queue.pushes.is_empty() && queue.pushes.capacity() > 0 {
            queue.pushes = VecDeque::new();
        }
        push
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.owner.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = map.get_mut(&self.user_id) {
            list.retain(|d| d.id != self.id);
            if list.is_empty() {
                map.remove(&self.user_id);
                self.owner.presence_changed(PresenceChange::Offline(self.user_id.clone()));
            }
        }
        metrics::gauge!("chatmesh_gateway_websockets").decrement(1.0);
    }
}

/// Per queued frame, what the queue costs beyond the frame's bytes.
const FRAME_OVERHEAD: usize = 64;

impl Connections {
    /// Sets the per-device queue limit in bytes and the most devices per user.
    pub fn configure(&self, queue_bytes: usize, max_devices: usize) {
        self.queue_bytes.store(queue_bytes.max(1), Ordering::Relaxed);
        self.max_devices.store(max_devices.max(1), Ordering::Relaxed);
    }

    /// Where to report users coming online and going offline here.
    pub fn report_presence(&self, tx: mpsc::UnboundedSender<PresenceChange>) {
        *self.presence.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    fn presence_changed(&self, change: PresenceChange) {
        if let Some(tx) = self.presence.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(change);
        }
    }

    pub fn register(&self, user_id: &str, session_id: &str) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(DeviceState {
            queued_bytes: AtomicUsize::new(0),
            inner: Mutex::default(),
            closing: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let devices = map.entry(user_id.to_string()).or_default();
        // Over the cap, the oldest devices still open are told to go.
        let max = self.max_devices.load(Ordering::Relaxed);
        let open: Vec<&Device> = devices.iter().filter(|d| !d.state.closing.load(Ordering::Acquire)).collect();
        for oldest in open.iter().take((open.len() + 1).saturating_sub(max)) {
            oldest.state.evict(Eviction::Replaced);
        }
        devices.push(Device { id, session_id: session_id.to_string(), state: state.clone() });
        if devices.len() == 1 {
            self.presence_changed(PresenceChange::Online(user_id.to_string()));
        }
        metrics::gauge!("chatmesh_gateway_websockets").increment(1.0);
        Registration { id, state, user_id: user_id.to_string(), owner: self.clone() }
    }

    /// Queues `push` (an encoded `NotifyMessage`, shared, not copied) for every connection of
    /// `user_id` except those logged in with `skip_session` (the sending device); returns how
    /// many got it. A device whose queue would pass the byte limit is evicted instead.
    pub fn deliver_frame(&self, user_id: &str, push: &Push, skip_session: Option<&str>) -> usize {
        let limit = self.queue_bytes.load(Ordering::Relaxed);
        let cost = push.cost();
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = map.get(user_id) else { return 0 };
        let mut delivered = 0;
        for d in list.iter().filter(|d| Some(d.session_id.as_str()) != skip_session) {
            if d.state.closing.load(Ordering::Acquire) {
                continue;
            }
            let queued = d.state.queued_bytes.fetch_add(cost, Ordering::AcqRel) + cost;
            if queued > limit {
                d.state.sent(cost);
                metrics::counter!("chatmesh_gateway_websocket_evictions_total", "reason" => "slow").increment(1);
                d.state.evict(Eviction::TooSlow);
                continue;
            }
            d.state.enqueue(push.clone());
            delivered += 1;
        }
        delivered
    }

    pub fn deliver(&self, user_id: &str, notify: &NotifyMessage, skip_session: Option<&str>) -> usize {
        self.deliver_frame(user_id, &Push::local(Bytes::from(notify.encode_to_vec())), skip_session)
    }

    /// Users with at least one connection here.
    pub fn users(&self) -> Vec<String> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    pub fn connected(&self, user_id: &str) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).get(user_id).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_but_the_sending_one_gets_the_frame() {
        let c = Connections::default();
        let (tx, mut presence) = mpsc::unbounded_channel();
        c.report_presence(tx);
        let a = c.register("u", "session-a");
        let b = c.register("u", "session-b");
        assert_eq!(presence.try_recv().unwrap(), PresenceChange::Online("u".into()));
        assert!(presence.try_recv().is_err(), "a second device changes nothing");
        let n = NotifyMessage { notify_type: 3, ..Default::default() };
        assert_eq!(c.deliver("u", &n, Some("session-a")), 1);
        assert!(a.next_push().is_none());
        assert_eq!(NotifyMessage::decode(b.next_push().unwrap().frame).unwrap(), n);
        drop(a);
        assert_eq!(c.connected("u"), 1);
        drop(b);
        assert_eq!(c.connected("u"), 0);
        assert_eq!(presence.try_recv().unwrap(), PresenceChange::Offline("u".into()));
        assert_eq!(c.deliver("u", &n, None), 0);
    }

    #[test]
    fn a_device_that_does_not_read_is_evicted_and_frames_are_shared() {
        let c = Connections::default();
        c.configure(10_000, 8);
        let slow = c.register("u", "s");
        let frame = Bytes::from(vec![7u8; 1000]);
        let push = Push::local(frame.clone());
        let mut delivered = 0;
        for _ in 0..20 {
            delivered += c.deliver_frame("u", &push, None);
        }
        assert_eq!(delivered, 9, "10,000 bytes hold nine 1,000-byte frames with their overhead");
        assert_eq!(slow.state.eviction(), Some(Eviction::TooSlow));
        let queued = slow.next_push().unwrap();
        assert_eq!(queued.frame.as_ptr(), frame.as_ptr(), "one encoding, shared by every queue");
        for _ in 0..8 {
            assert!(slow.next_push().is_some());
        }
        assert!(slow.next_push().is_none());
        assert_eq!(slow.state.lock().pushes.capacity(), 0, "a drained queue holds no memory");
    }

    #[test]
    fn past_the_device_cap_the_oldest_is_replaced() {
        let c = Connections::default();
        c.configure(10_000, 2);
        let first = c.register("u", "s1");
        let second = c.register("u", "s2");
        assert_eq!(first.state.eviction(), None);
        let _third = c.register("u", "s3");
        assert_eq!(first.state.eviction(), Some(Eviction::Replaced));
        assert_eq!(second.state.eviction(), None);
    }
}
