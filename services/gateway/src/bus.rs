//! Routing notifications to the gateway instance that holds each recipient's connections.
//! Standalone: everything is local. With Redis: each gateway records, per connected user, its
//! own id with an expiry in a sorted set (`presence:<user>`, refreshed while connected), and
//! listens on its own channel (`push:<gateway>`); a sender's gateway looks the recipients up
//! and publishes one envelope per gateway that has any of them.

use std::collections::HashMap;
use std::time::Duration;

use chatmesh_proto::{NotifyMessage, PushEnvelope};
use prost::Message;
use redis::AsyncCommands;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;

use crate::push::{Connections, PresenceChange};

/// A presence entry lives this long unless refreshed.
const PRESENCE_TTL: Duration = Duration::from_secs(90);
const PRESENCE_REFRESH: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub enum PushBus {
    Local(Connections),
    Redis(RedisBus),
}

#[derive(Clone)]
pub struct RedisBus {
    conns: Connections,
    redis: redis::aio::ConnectionManager,
    client: redis::Client,
    prefix: String,
    gateway_id: String,
}

impl PushBus {
    /// A bus over `redis_url` (`redis://` shares presence; anything else is local only).
    pub async fn open(
        conns: Connections,
        redis_url: &str,
        namespace: &str,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, redis::RedisError> {
        if !redis_url.starts_with("redis") {
            return Ok(PushBus::Local(conns));
        }
        let client = redis::Client::open(redis_url)?;
        let bus = RedisBus {
            conns: conns.clone(),
            redis: redis::aio::ConnectionManager::new(client.clone()).await?,
            client,
            prefix: format!("{namespace}:"),
            gateway_id: chatmesh_common::new_id(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        conns.report_presence(tx);
        tokio::spawn(bus.clone().track_presence(rx, shutdown.clone()));
        tokio::spawn(bus.clone().listen(shutdown));
        Ok(PushBus::Redis(bus))
    }

    /// Delivers `notify` to every device of `users` (but the `skip_session` one), wherever
    /// they are connected.
    pub async fn send(&self, users: &[String], notify: &NotifyMessage, skip_session: Option<&str>) {
        match self {
            PushBus::Local(conns) => deliver_local(conns, users, &notify.encode_to_vec(), skip_session),
            PushBus::Redis(bus) => {
                if let Err(e) = bus.route(users, notify, skip_session).await {
                    tracing::error!(error = %e, "routing a notification failed; delivering locally only");
                    deliver_local(&bus.conns, users, &notify.encode_to_vec(), skip_session);
                }
            }
        }
    }
}

fn deliver_local(conns: &Connections, users: &[String], frame: &[u8], skip_session: Option<&str>) {
    for user in users {
        conns.deliver_frame(user, frame, skip_session);
    }
}

fn now_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as f64).unwrap_or(0.0)
}

impl RedisBus {
    fn presence_key(&self, user: &str) -> String {
        format!("{}presence:{user}", self.prefix)
    }

    fn channel(&self, gateway: &str) -> String {
        format!("{}push:{gateway}", self.prefix)
    }

    async fn route(&self, users: &[String], notify: &NotifyMessage, skip: Option<&str>) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        let now = now_ms();
        for user in users {
            pipe.zrangebyscore(self.presence_key(user), now, "+inf");
        }
        let gateways: Vec<Vec<String>> = pipe.query_async(&mut self.redis.clone()).await?;
        let mut by_gateway: HashMap<String, Vec<String>> = HashMap::new();
        for (user, gws) in users.iter().zip(gateways) {
            for gw in gws {
                by_gateway.entry(gw).or_default().push(user.clone());
            }
        }
        for (gateway, user_ids) in by_gateway {
            if gateway == self.gateway_id {
                deliver_local(&self.conns, &user_ids, &notify.encode_to_vec(), skip);
                continue;
            }
            let envelope =
                PushEnvelope { user_ids, skip_session_id: skip.map(str::to_string), notify: Some(notify.clone()) };
            let _: i64 = self.redis.clone().publish(self.channel(&gateway), envelope.encode_to_vec()).await?;
        }
        Ok(())
    }

    /// Keeps this gateway's presence entries current: on changes, and periodically for all
    /// connected users (which also restores them after a Redis restart).
    async fn track_presence(
        self,
        mut changes: mpsc::UnboundedReceiver<PresenceChange>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(PRESENCE_REFRESH);
        loop {
            let result = tokio::select! {
                _ = chatmesh_common::stopped(&mut shutdown) => break,
                _ = tick.tick() => self.mark_online(&self.conns.users()).await,
                change = changes.recv() => match change {
                    Some(PresenceChange::Online(user)) => self.mark_online(&[user]).await,
                    Some(PresenceChange::Offline(user)) => {
                        self.redis.clone().zrem(self.presence_key(&user), &self.gateway_id).await
                    }
                    None => break,
                },
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "presence update failed");
            }
        }
        // Leaving: this gateway's users are no longer here.
        let users = self.conns.users();
        let mut pipe = redis::pipe();
        for user in &users {
            pipe.zrem(self.presence_key(user), &self.gateway_id).ignore();
        }
        let _: redis::RedisResult<()> = pipe.query_async(&mut self.redis.clone()).await;
    }

    async fn mark_online(&self, users: &[String]) -> redis::RedisResult<()> {
        if users.is_empty() {
            return Ok(());
        }
        let expires = now_ms() + PRESENCE_TTL.as_millis() as f64;
        let mut pipe = redis::pipe();
        for user in users {
            let key = self.presence_key(user);
            pipe.zadd(&key, &self.gateway_id, expires).ignore();
            pipe.zrembyscore(&key, "-inf", now_ms()).ignore(); // gateways that died
            pipe.pexpire(&key, PRESENCE_TTL.as_millis() as i64).ignore();
        }
        pipe.query_async(&mut self.redis.clone()).await
    }

    /// Delivers envelopes published to this gateway's channel; resubscribes after failures.
    async fn listen(self, mut shutdown: watch::Receiver<bool>) {
        let channel = self.channel(&self.gateway_id);
        while !*shutdown.borrow() {
            let mut pubsub = match self.client.get_async_pubsub().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "push channel unavailable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = pubsub.subscribe(&channel).await {
                tracing::warn!(error = %e, "cannot subscribe to the push channel; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // Presence may have been lost with the connection: announce ourselves again.
            let _ = self.mark_online(&self.conns.users()).await;
            let mut messages = pubsub.into_on_message();
            loop {
                tokio::select! {
                    _ = chatmesh_common::stopped(&mut shutdown) => return,
                    msg = messages.next() => match msg {
                        Some(msg) => match PushEnvelope::decode(msg.get_payload_bytes()) {
                            Ok(env) => {
                                let frame = env.notify.unwrap_or_default().encode_to_vec();
                                deliver_local(&self.conns, &env.user_ids, &frame, env.skip_session_id.as_deref());
                            }
                            Err(e) => tracing::warn!(error = %e, "undecodable push envelope"),
                        },
                        None => break,
                    },
                }
            }
        }
    }
}
