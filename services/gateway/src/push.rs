//! The WebSocket connections of this gateway instance, by user: a user may be connected from
//! several devices, and each gets every notification.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chatmesh_proto::NotifyMessage;
use prost::Message;
use tokio::sync::mpsc;

/// Frames waiting for a slow client beyond this are dropped with the connection.
const QUEUE: usize = 256;

#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<Mutex<HashMap<String, Vec<(u64, mpsc::Sender<Vec<u8>>)>>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
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
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.user_id);
            }
        }
        metrics::gauge!("chatmesh_gateway_websockets").decrement(1.0);
    }
}

impl Connections {
    pub fn register(&self, user_id: &str) -> Registration {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, frames) = mpsc::channel(QUEUE);
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(user_id.to_string()).or_default().push((id, tx));
        metrics::gauge!("chatmesh_gateway_websockets").increment(1.0);
        Registration { id, frames, user_id: user_id.to_string(), owner: self.clone() }
    }

    /// Sends `notify` to every connection of `user_id` except `skip` (the sending device);
    /// returns how many connections it was queued for.
    pub fn deliver(&self, user_id: &str, notify: &NotifyMessage, skip: Option<u64>) -> usize {
        let frame = notify.encode_to_vec();
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = map.get(user_id) else { return 0 };
        list.iter().filter(|(id, _)| Some(*id) != skip).filter(|(_, tx)| tx.try_send(frame.clone()).is_ok()).count()
    }

    pub fn connected(&self, user_id: &str) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).get(user_id).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_but_the_skipped_one_gets_the_frame() {
        let c = Connections::default();
        let mut a = c.register("u");
        let mut b = c.register("u");
        let n = NotifyMessage { notify_type: 3, ..Default::default() };
        assert_eq!(c.deliver("u", &n, Some(a.id)), 1);
        assert!(a.frames.try_recv().is_err());
        assert_eq!(NotifyMessage::decode(b.frames.try_recv().unwrap().as_slice()).unwrap(), n);
        drop(a);
        assert_eq!(c.connected("u"), 1);
        drop(b);
        assert_eq!(c.connected("u"), 0);
        assert_eq!(c.deliver("u", &n, None), 0);
    }
}
