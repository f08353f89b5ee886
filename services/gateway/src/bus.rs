//! Routing notifications to the gateway instance that holds each recipient's connections.
//! Standalone: everything is local. With Redis: each gateway records, per connected user, its
//! own id with an expiry in a sorted set (`presence:<user>`, refreshed while connected), and
//! listens on its own channel (`push:<gateway>`); a sender's gateway delivers to its own
//! connections at once, then looks the recipients up and publishes one envelope per other
//! gateway that has any of them. Each gateway caches the other gateways it found for a user
//! while it follows presence changes (`<namespace>:presence`, announced by the gateway where a
//! user's first device arrived or last one left; see [`chatmesh_common::followed`]), so a busy
//! sender does not ask Redis on every message.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use std::time::{Duration, Instant};

use chatmesh_common::followed::{self, Cached, Followed};
use chatmesh_common::health::{Backoff, Health, Link};
use chatmesh_common::telemetry::Hop;
use chatmesh_proto::{NotifyMessage, PushEnvelope};
use prost::Message;
use redis::AsyncCommands;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;

use crate::push::{Connections, PresenceChange, Push, PushPath};

/// A presence entry lives this long unless refreshed.
const PRESENCE_TTL: Duration = Duration::from_secs(90);
const PRESENCE_REFRESH: Duration = Duration::from_secs(30);
/// The push subscription proves itself alive this often (a PING through it, with a deadline).
const SUBSCRIPTION_PING: Duration = Duration::from_secs(5);
/// Deadline of connecting, subscribing and each ping.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a user's other gateways are taken from the cache (the bound if a presence change's
/// announcement is lost), and how many users' are kept.
const PRESENCE_CACHE_TTL: Duration = Duration::from_secs(10);
const PRESENCE_CACHE_CAPACITY: usize = 65_536;

#[derive(Clone)]
pub enum PushBus {
    Local(Connections),
    Redis(Box<RedisBus>),
}

#[derive(Clone)]
pub struct RedisBus {
    conns: Connections,
    redis: redis::aio::ConnectionManager,
    client: redis::Client,
    prefix: String,
    gateway_id: String,
    /// The push subscription: down while this gateway cannot receive pushes from others.
    link: Arc<Link>,
    /// Per user, the other gateways that hold some of their devices.
    others: Arc<Followed<Vec<String>>>,
}

impl PushBus {
    /// A bus over `redis_url` (`redis://` shares presence; anything else is local only).
    pub async fn open(
        conns: Connections,
        redis_url: &str,
        namespace: &str,
        shutdown: watch::Receiver<bool>,
        health: &Health,
    ) -> Result<Self, redis::RedisError> {
        if !redis_url.starts_with("redis") {
            return Ok(PushBus::Local(conns));
        }
        let client = redis::Client::open(redis_url)?;
        let bus = RedisBus {
            conns: conns.clone(),
            // Connected on first use, like the session store.
            redis: redis::aio::ConnectionManager::new_lazy_with_config(
                client.clone(),
                chatmesh_common::kv::manager_config(),
            )?,
            client,
            prefix: format!("{namespace}:"),
            gateway_id: chatmesh_common::new_id(),
            link: health.link("redis-pubsub", true),
            others: Arc::new(Followed::new(PRESENCE_CACHE_TTL, PRESENCE_CACHE_CAPACITY)),
        };
        let follower: Arc<dyn followed::Follower> = bus.others.clone();
        let changes = presence_channel(&bus.prefix);
        tokio::spawn(followed::follow(follower, bus.client.clone(), changes, "presence changes", shutdown.clone()));
        let (tx, rx) = mpsc::unbounded_channel();
        conns.report_presence(tx);
        tokio::spawn(bus.clone().track_presence(rx, shutdown.clone()));
        tokio::spawn(bus.clone().listen(shutdown));
        Ok(PushBus::Redis(Box::new(bus)))
    }

    /// Delivers `notify` to every device of `users` (but the `skip_session` one), wherever
    /// they are connected.
    pub async fn send(&self, users: &[String], notify: &NotifyMessage, skip_session: Option<&str>) {
        // Encoded once; every recipient's queue shares these bytes. Push latency counts from here.
        let push = Push::local(Bytes::from(notify.encode_to_vec()));
        let accepted_ms = now_ms() as i64;
        let conns = match self {
            PushBus::Local(conns) => conns,
            PushBus::Redis(bus) => &bus.conns,
        };
        // This gateway's own connections are the truth about its devices: they get the push
        // now, not after the presence round trip, which only finds other gateways.
        let started = Instant::now();
        deliver_local(conns, users, &push, skip_session);
        Hop::PushLocalDeliver.record(started);
        if let PushBus::Redis(bus) = self
            && let Err(e) = bus.route(users, notify, accepted_ms, skip_session).await
        {
            tracing::error!(error = %e, "routing a notification to other gateways failed");
        }
    }
}

fn deliver_local(conns: &Connections, users: &[String], push: &Push, skip_session: Option<&str>) {
    for user in users {
        conns.deliver_frame(user, push, skip_session);
    }
}

/// Where gateways announce that a user arrived at or left one of them.
fn presence_channel(prefix: &str) -> String {
    format!("{prefix}presence")
}

fn now_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as f64).unwrap_or(0.0)
}

/// The span of delivering an envelope from another gateway: it continues the sender's trace.
fn received_push(env: &PushEnvelope) -> tracing::Span {
    let span = tracing::info_span!(
        "push.deliver",
        otel.kind = "consumer",
        recipients = env.user_ids.len(),
        trace_id = tracing::field::Empty,
    );
    chatmesh_common::trace::set_parent(&span, env.traceparent.as_deref());
    chatmesh_common::trace::record_trace_id(&span);
    span
}

/// An envelope's notification as a push, accepted when the sending gateway accepted it (wall
/// clocks of two hosts: a skew shows in the remote latency, never below zero).
fn remote_push(env: PushEnvelope) -> Push {
    let now = std::time::Instant::now();
    let waited = env.sent_at_ms.map_or(0, |sent| (now_ms() as i64 - sent).max(0));
    Push {
        frame: Bytes::from(env.notify.unwrap_or_default().encode_to_vec()),
        accepted: now.checked_sub(Duration::from_millis(waited as u64)).unwrap_or(now),
        path: PushPath::Remote,
    }
}

impl RedisBus {
    /// Which other gateways hold each of `users` (one pipelined round trip), remembered under
    /// the generation each one's lookup began with.
    async fn look_up(&self, users: Vec<(String, u64)>) -> redis::RedisResult<Vec<(String, Vec<String>)>> {
        let mut pipe = redis::pipe();
        let now = now_ms();
        for (user, _) in &users {
            pipe.zrangebyscore(self.presence_key(user), now, "+inf");
        }
        let gateways: Vec<Vec<String>> = pipe.query_async(&mut self.redis.clone()).await?;
        let found = users.into_iter().zip(gateways).map(|((user, generation), mut gateways)| {
            gateways.retain(|gw| *gw != self.gateway_id);
            self.others.remember(&user, generation, gateways.clone());
            (user, gateways)
        });
        Ok(found.collect())
    }

    fn presence_key(&self, user: &str) -> String {
        format!("{}presence:{user}", self.prefix)
    }

    fn channel(&self, gateway: &str) -> String {
        format!("{}push:{gateway}", self.prefix)
    }

    /// Publishes `notify` to every other gateway where any of `users` is connected.
    #[tracing::instrument(name = "push.route", skip_all, fields(otel.kind = "producer", recipients = users.len()))]
    async fn route(
        &self,
        users: &[String],
        notify: &NotifyMessage,
        accepted_ms: i64,
        skip: Option<&str>,
    ) -> redis::RedisResult<()> {
        let started = Instant::now();
        let mut by_gateway: HashMap<String, Vec<String>> = HashMap::new();
        let mut add = |user: &String, gateways: Vec<String>| {
            for gw in gateways {
                by_gateway.entry(gw).or_default().push(user.clone());
            }
        };
        // Users not cached, and those due for renewal, each with the generation its lookup
        // began under.
        let (mut missed, mut due) = (Vec::new(), Vec::new());
        for user in users {
            match self.others.cached(user) {
                Cached::Fresh(gateways) => add(user, gateways),
                Cached::Renew(gateways, generation) => {
                    add(user, gateways);
                    due.push((user.clone(), generation));
                }
                Cached::Miss(generation) => missed.push((user.clone(), generation)),
            }
        }
        if !due.is_empty() {
            let bus = self.clone();
            tokio::spawn(async move { bus.look_up(due).await });
        }
        if !missed.is_empty() {
            for (user, gateways) in self.look_up(missed).await? {
                add(&user, gateways);
            }
        }
        Hop::PushPresenceLookup.record(started);
        for (gateway, user_ids) in by_gateway {
            let started = Instant::now();
            let envelope = PushEnvelope {
                user_ids,
                skip_session_id: skip.map(str::to_string),
                notify: Some(notify.clone()),
                traceparent: chatmesh_common::trace::traceparent(&tracing::Span::current()),
                sent_at_ms: Some(accepted_ms),
            };
            let _: i64 = self.redis.clone().publish(self.channel(&gateway), envelope.encode_to_vec()).await?;
            Hop::PushRemotePublish.record(started);
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
                    Some(change) => self.apply(change).await,
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

    /// Records a user's arrival or departure here, then tells the other gateways, which drop
    /// what they cached of the user.
    async fn apply(&self, change: PresenceChange) -> redis::RedisResult<()> {
        let (result, user) = match change {
            PresenceChange::Online(user) => (self.mark_online(std::slice::from_ref(&user)).await, user),
            PresenceChange::Offline(user) => {
                (self.redis.clone().zrem(self.presence_key(&user), &self.gateway_id).await, user)
            }
        };
        followed::announce(&self.redis, &presence_channel(&self.prefix), &[user], "presence change").await;
        result
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

    /// Delivers envelopes published to this gateway's channel; subscribes again, with backoff,
    /// whenever the subscription fails or stops answering its pings.
    async fn listen(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        while !*shutdown.borrow() {
            let cause = self.listen_once(&mut shutdown, &mut backoff).await;
            if *shutdown.borrow() {
                return;
            }
            self.link.down(&cause);
            tokio::select! {
                _ = tokio::time::sleep(backoff.step()) => {}
                _ = chatmesh_common::stopped(&mut shutdown) => return,
            }
        }
    }

    /// One subscription, until it fails (the cause is returned) or shutdown.
    async fn listen_once(&self, shutdown: &mut watch::Receiver<bool>, backoff: &mut Backoff) -> String {
        let channel = self.channel(&self.gateway_id);
        let pubsub = match tokio::time::timeout(REDIS_TIMEOUT, self.client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return format!("connecting: {e}"),
            Err(_) => return "connecting: no answer".into(),
        };
        let (mut sink, mut messages) = pubsub.split();
        match tokio::time::timeout(REDIS_TIMEOUT, sink.subscribe(&channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return format!("subscribing: {e}"),
            Err(_) => return "subscribing: no answer".into(),
        }
        // Presence may have been lost with the connection: record ourselves again, and tell
        // the other gateways, which may have cached these users as elsewhere or nowhere.
        let users = self.conns.users();
        if let Err(e) = self.mark_online(&users).await {
            return format!("restoring presence: {e}");
        }
        followed::announce(&self.redis, &presence_channel(&self.prefix), &users, "restored presence").await;
        self.link.up();
        backoff.reset();
        let mut ping = tokio::time::interval(SUBSCRIPTION_PING);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = chatmesh_common::stopped(shutdown) => return String::new(),
                _ = ping.tick() => {
                    // A silent peer (not just a closed socket) must be noticed too.
                    match tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return format!("ping: {e}"),
                        Err(_) => return "ping: no answer".into(),
                    }
                }
                msg = messages.next() => match msg {
                    Some(msg) => match PushEnvelope::decode(msg.get_payload_bytes()) {
                        Ok(mut env) => {
                            let _span = received_push(&env).entered();
                            let (users, skip) = (std::mem::take(&mut env.user_ids), env.skip_session_id.take());
                            deliver_local(&self.conns, &users, &remote_push(env), skip.as_deref());
                        }
                        Err(e) => tracing::warn!(error = %e, "undecodable push envelope"),
                    },
                    None => return "subscription closed".into(),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This gateway's own devices do not wait for the presence lookup: here Redis accepts the
    /// connection and never answers, and the local device has its push long before the lookup
    /// gives up.
    #[tokio::test]
    async fn local_devices_get_a_push_without_waiting_for_presence() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", silent.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                open.push(socket);
            }
        });
        let conns = Connections::default();
        let (_stop, shutdown) = watch::channel(false);
        let bus = PushBus::open(conns.clone(), &url, "t", shutdown, &Health::default()).await.unwrap();
        let device = conns.register("u", "s");
        let notify = NotifyMessage { notify_type: 3, ..Default::default() };
        let send = tokio::spawn(async move { bus.send(&["u".to_string()], &notify, None).await });
        let deadline = Instant::now() + Duration::from_secs(1);
        while device.next_push().is_none() {
            assert!(Instant::now() < deadline, "the local push waited for Redis");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!send.is_finished(), "the presence lookup is still waiting for Redis");
        send.abort();
        held.abort();
    }

    /// A sending gateway on `url` that has sent to user `u` while no other gateway held `u`,
    /// and so cached that.
    async fn sender_caching_u_as_nowhere(url: &str, namespace: &str, shutdown: watch::Receiver<bool>) -> PushBus {
        let sender = PushBus::open(Connections::default(), url, namespace, shutdown, &Health::default()).await.unwrap();
        let PushBus::Redis(bus) = &sender else { panic!("a Redis bus") };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !bus.others.is_live() {
            assert!(Instant::now() < deadline, "presence changes not followed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sender.send(&["u".to_string()], &NotifyMessage::default(), None).await;
        assert_eq!(bus.others.cached("u"), Cached::Fresh(vec![]), "no other gateway holds u: cached");
        sender
    }

    /// Sends to `u` until `device` has a push; fails (saying `unheard`) after 3 s, well within
    /// the cache's entry life, so only an announcement can make it.
    async fn sends_reach(sender: &PushBus, device: &crate::push::Registration, unheard: &str) {
        assert!(PRESENCE_CACHE_TTL > Duration::from_secs(3), "the deadline is shorter than the entry's life");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            sender.send(&["u".to_string()], &NotifyMessage::default(), None).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if device.next_push().is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "{unheard}: the cache still says no other gateway");
        }
    }

    /// A gateway caches that no other gateway holds a user, and hears at once when the user
    /// arrives at another.
    #[tokio::test]
    async fn a_user_arriving_elsewhere_is_heard_before_the_cache_expires() {
        let Some(url) = chatmesh_common::test_url("CHATMESH_TEST_REDIS_URL") else { return };
        let namespace = format!("t{}", chatmesh_common::new_id());
        let (_stop, shutdown) = watch::channel(false);
        let sender = sender_caching_u_as_nowhere(&url, &namespace, shutdown.clone()).await;
        let PushBus::Redis(bus) = &sender else { panic!("a Redis bus") };
        let Cached::Miss(before) = bus.others.cached("d") else { panic!("d is not cached") };
        // The other gateway opens holding `d` only; once its restore of `d` is heard, only the
        // arrival can announce `u`.
        let there = Connections::default();
        let _d = there.register("d", "s");
        let _receiver = PushBus::open(there.clone(), &url, &namespace, shutdown, &Health::default()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while bus.others.cached("d") == Cached::Miss(before) {
            assert!(Instant::now() < deadline, "the other gateway's restore was not heard");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let device = there.register("u", "s");
        sends_reach(&sender, &device, "the arrival was not heard").await;
    }

    /// A gateway that records its users again after (re)subscribing (its presence may have
    /// been lost with Redis) tells the others: here the other gateway already holds the
    /// user's device when its bus opens, so only its restore records the user.
    #[tokio::test]
    async fn restored_presence_is_heard_before_the_cache_expires() {
        let Some(url) = chatmesh_common::test_url("CHATMESH_TEST_REDIS_URL") else { return };
        let namespace = format!("t{}", chatmesh_common::new_id());
        let (_stop, shutdown) = watch::channel(false);
        let sender = sender_caching_u_as_nowhere(&url, &namespace, shutdown.clone()).await;
        let there = Connections::default();
        let device = there.register("u", "s");
        let _restored = PushBus::open(there, &url, &namespace, shutdown, &Health::default()).await.unwrap();
        sends_reach(&sender, &device, "the restore was not heard").await;
    }
}
