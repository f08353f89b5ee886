//! The WebSocket connections of this gateway instance, by user: a user may be connected from
//! several devices (each with its own login session), and each gets every notification.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chatmesh_proto::NotifyMessage;
use prost::Message;
use tokio::sync::mpsc;

/// Frames waiting for a slow client beyond this are dropped.
const QUEUE: usize = 256;

/// One device's connection: its id, the login session it authenticated with, its queue.
struct Device {
    id: u64,
    session_id: String,
    tx: mpsc::Sender<Vec<u8>>,
}

/// A user came online or went offline on this gateway (for presence in a shared store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    Online(String),
    Offline(String),
}

#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<Mutex<HashMap<String, Vec<Device>>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    presence: Arc<Mutex<Option<mpsc::UnboundedSender<PresenceChange>>>>,
}

/// A registered connection; dropping it unregisters.
pub struct Registration {
    pub id: u64,
    pub frames: mpsc::Receiver<Vec<u8>>,
    user_id: String,
    owner: Connections,
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

impl Connections {
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
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, frames) = mpsc::channel(QUEUE);
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let devices = map.entry(user_id.to_string()).or_default();
        devices.push(Device { id, session_id: session_id.to_string(), tx });
        if devices.len() == 1 {
            self.presence_changed(PresenceChange::Online(user_id.to_string()));
        }
        metrics::gauge!("chatmesh_gateway_websockets").increment(1.0);
        Registration { id, frames, user_id: user_id.to_string(), owner: self.clone() }
    }

    /// Queues `frame` (an encoded `NotifyMessage`) for every connection of `user_id` except
    /// those logged in with `skip_session` (the sending device); returns how many got it.
    pub fn deliver_frame(&self, user_id: &str, frame: &[u8], skip_session: Option<&str>) -> usize {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = map.get(user_id) else { return 0 };
        list.iter()
            .filter(|d| Some(d.session_id.as_str()) != skip_session)
            .filter(|d| d.tx.try_send(frame.to_vec()).is_ok())
            .count()
    }

    pub fn deliver(&self, user_id: &str, notify: &NotifyMessage, skip_session: Option<&str>) -> usize {
        self.deliver_frame(user_id, &notify.encode_to_vec(), skip_session)
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
        let mut a = c.register("u", "session-a");
        let mut b = c.register("u", "session-b");
        assert_eq!(presence.try_recv().unwrap(), PresenceChange::Online("u".into()));
        assert!(presence.try_recv().is_err(), "a second device changes nothing");
        let n = NotifyMessage { notify_type: 3, ..Default::default() };
        assert_eq!(c.deliver("u", &n, Some("session-a")), 1);
        assert!(a.frames.try_recv().is_err());
        assert_eq!(NotifyMessage::decode(b.frames.try_recv().unwrap().as_slice()).unwrap(), n);
        drop(a);
        assert_eq!(c.connected("u"), 1);
        drop(b);
        assert_eq!(c.connected("u"), 0);
        assert_eq!(presence.try_recv().unwrap(), PresenceChange::Offline("u".into()));
        assert_eq!(c.deliver("u", &n, None), 0);
    }
}
