//! Who is in a chat session, as the transmit service checks it on every send. Read from the
//! database, and kept in memory only while this process hears about every change: the one
//! change to an existing session's members is its deletion (removing a friend), which the
//! friend service announces after its commit — in the same process directly, across processes
//! on a Redis channel. While the subscription is down nothing is cached, and each cached entry
//! also expires, bounding the damage of an announcement lost in a crash.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::health::Backoff;
use crate::{BackendError, Database};

/// Longest a cached member list is used (the bound if an announcement was lost).
const TTL: Duration = Duration::from_secs(10);
/// Sessions cached at most (member lists are bounded by the group size limit).
const CAPACITY: usize = 10_000;
/// Deadline of connecting, subscribing and each ping.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of an announcement: a friend removal waits for it (so the next send sees it), but
/// not long where Redis cannot be reached.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(1);
/// The subscription proves itself alive this often.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Members by session, with when they were read.
type Cache = HashMap<String, (Instant, Arc<[String]>)>;

pub struct SessionMembers {
    db: Database,
    cache: std::sync::Mutex<Cache>,
    /// Bumped (under the cache lock) by every change heard: a read that began before one
    /// does not cache what it read.
    generation: AtomicU64,
    /// Changes reach this process: caching is safe.
    live: AtomicBool,
}

impl SessionMembers {
    /// Reads every time until [`SessionMembers::set_live`] (or [`follow`]) turns caching on.
    pub fn new(db: Database) -> Arc<Self> {
        Arc::new(Self { db, cache: Default::default(), generation: AtomicU64::new(0), live: AtomicBool::new(false) })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The members of `session` (sorted; empty for an unknown session).
    pub async fn of(&self, session: &str) -> Result<Arc<[String]>, BackendError> {
        let generation = match self.cached(session) {
            Ok(members) => {
                metrics::counter!("chatmesh_membership_lookups_total", "source" => "cache").increment(1);
                return Ok(members);
            }
            Err(generation) => generation,
        };
        metrics::counter!("chatmesh_membership_lookups_total", "source" => "database").increment(1);
        let members: Arc<[String]> = crate::db::chat_members(&self.db, session).await?.into();
        self.remember(session, generation, &members);
        Ok(members)
    }

    /// The cached members, or the generation to remember a read under.
    fn cached(&self, session: &str) -> Result<Arc<[String]>, u64> {
        let cache = self.cache();
        if self.live.load(Ordering::Acquire)
            && let Some((at, members)) = cache.get(session)
            && at.elapsed() < TTL
        {
            return Ok(members.clone());
        }
        Err(self.generation.load(Ordering::Acquire))
    }

    /// Caches what a read begun at `generation` found, unless a change was heard since.
    /// Unknown sessions are not remembered: ids are random, and a miss costs one read.
    fn remember(&self, session: &str, generation: u64, members: &Arc<[String]>) {
        if members.is_empty() {
            return;
        }
        let mut cache = self.cache();
        if !self.live.load(Ordering::Acquire) || self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if cache.len() >= CAPACITY {
            cache.retain(|_, (at, _)| at.elapsed() < TTL);
            if cache.len() >= CAPACITY {
                cache.clear();
            }
        }
        cache.insert(session.to_string(), (Instant::now(), members.clone()));
    }

    /// `session`'s members changed (it was deleted).
    pub fn changed(&self, session: &str) {
        let mut cache = self.cache();
        self.generation.fetch_add(1, Ordering::AcqRel);
        cache.remove(session);
    }

    /// Caching on (changes are heard) or off (they may be missed: forget everything).
    pub fn set_live(&self, live: bool) {
        let mut cache = self.cache();
        self.generation.fetch_add(1, Ordering::AcqRel);
        cache.clear();
        self.live.store(live, Ordering::Release);
    }
}

/// The transmit service's members: with Redis they follow the channel of `namespace`; without
/// it they cache only when the friend service runs in this process (`local_friend`, which
/// then announces to them directly, see [`MembershipNotices::open`]).
pub fn open(
    db: Database,
    redis_url: &str,
    namespace: &str,
    local_friend: bool,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<SessionMembers>, BackendError> {
    let members = SessionMembers::new(db);
    if redis_url.starts_with("redis") {
        let client = redis::Client::open(redis_url)?;
        tokio::spawn(follow(members.clone(), client, channel(namespace), shutdown));
    } else if local_friend {
        members.set_live(true);
    }
    Ok(members)
}

/// Where the friend service announces a session's membership change.
#[derive(Clone)]
pub enum MembershipNotices {
    /// No transmit service can cache (none in this process, and no Redis).
    Nobody,
    /// The transmit service of this process.
    Local(Arc<SessionMembers>),
    /// Every process following the channel (see [`follow`]).
    Redis { conn: redis::aio::ConnectionManager, channel: String },
}

/// The Redis channel of membership changes in `namespace`.
pub fn channel(namespace: &str) -> String {
    format!("{namespace}:membership")
}

impl MembershipNotices {
    /// Announcements on Redis (`redis://`), else to `local` (this process's transmit service).
    pub fn open(redis_url: &str, namespace: &str, local: Option<Arc<SessionMembers>>) -> Result<Self, BackendError> {
        if redis_url.starts_with("redis") {
            let client = redis::Client::open(redis_url)?;
            let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, crate::kv::manager_config())?;
            return Ok(MembershipNotices::Redis { conn, channel: channel(namespace) });
        }
        Ok(local.map_or(MembershipNotices::Nobody, MembershipNotices::Local))
    }

    /// Announces, after the change committed, that `session`'s members changed. A failure is
    /// logged: the followers' entries expire within their TTL anyway.
    pub async fn changed(&self, session: &str) {
        match self {
            MembershipNotices::Nobody => {}
            MembershipNotices::Local(members) => members.changed(session),
            MembershipNotices::Redis { conn, channel } => {
                let (mut conn, mut cmd) = (conn.clone(), redis::cmd("PUBLISH"));
                cmd.arg(channel).arg(session);
                match tokio::time::timeout(ANNOUNCE_TIMEOUT, cmd.query_async::<i64>(&mut conn)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "membership change not announced"),
                    Err(_) => tracing::warn!("membership change not announced: no answer"),
                }
            }
        }
    }
}

/// Keeps `members` caching while subscribed to `channel`, applying each announced change;
/// resubscribes with backoff, caching off in between, until `shutdown`.
pub async fn follow(
    members: Arc<SessionMembers>,
    client: redis::Client,
    channel: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(5));
    let mut failures = 0u64;
    while !*shutdown.borrow() {
        let cause = follow_once(&members, &client, &channel, &mut shutdown, &mut backoff).await;
        let was_live = members.live.load(Ordering::Acquire);
        members.set_live(false);
        if *shutdown.borrow() {
            return;
        }
        // Once per outage (a process without a route to Redis would otherwise log forever).
        failures = if was_live { 1 } else { failures + 1 };
        if failures == 1 {
            tracing::warn!(%cause, "membership changes not followed; reading members from the database");
        } else {
            tracing::debug!(%cause, "membership changes still not followed");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.step()) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

async fn follow_once(
    members: &SessionMembers,
    client: &redis::Client,
    channel: &str,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> String {
    let pubsub = match tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub()).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return format!("connecting: {e}"),
        Err(_) => return "connecting: no answer".into(),
    };
    let (mut sink, mut messages) = pubsub.split();
    match tokio::time::timeout(REDIS_TIMEOUT, sink.subscribe(channel)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return format!("subscribing: {e}"),
        Err(_) => return "subscribing: no answer".into(),
    }
    // Only from here on is every change heard.
    members.set_live(true);
    backoff.reset();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = crate::stopped(shutdown) => return String::new(),
            _ = ping.tick() => match tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("ping: {e}"),
                Err(_) => return "ping: no answer".into(),
            },
            msg = messages.next() => match msg {
                Some(msg) => match msg.get_payload::<String>() {
                    Ok(session) => members.changed(&session),
                    // Cannot tell which session: forget them all.
                    Err(_) => members.set_live(true),
                },
                None => return "subscription closed".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db_with_session(members: &[&str]) -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/m.db?mode=rwc", dir.path().display());
        let db = Database::connect(&url, 2).await.unwrap();
        db.migrate().await.unwrap();
        sqlx::query("INSERT INTO chat_session (chat_session_id, chat_session_name, chat_session_type, created_at) VALUES ('s', 'n', 1, 0)")
            .execute(&db.pool)
            .await
            .unwrap();
        for m in members {
            sqlx::query("INSERT INTO chat_session_member (chat_session_id, user_id) VALUES ('s', ?)")
                .bind(*m)
                .execute(&db.pool)
                .await
                .unwrap();
        }
        (dir, db)
    }

    async fn delete_session(db: &Database) {
        sqlx::query("DELETE FROM chat_session_member WHERE chat_session_id = 's'").execute(&db.pool).await.unwrap();
    }

    #[tokio::test]
    async fn cached_only_while_live_and_a_change_is_seen_at_once() {
        let (_dir, db) = db_with_session(&["a", "b"]).await;
        let members = SessionMembers::new(db.clone());
        assert_eq!(&*members.of("s").await.unwrap(), ["a", "b"]);
        delete_session(&db).await;
        assert!(members.of("s").await.unwrap().is_empty(), "not live: every lookup reads the database");

        let (_dir, db) = db_with_session(&["a", "b"]).await;
        let members = SessionMembers::new(db.clone());
        members.set_live(true);
        assert_eq!(&*members.of("s").await.unwrap(), ["a", "b"]);
        delete_session(&db).await;
        assert_eq!(&*members.of("s").await.unwrap(), ["a", "b"], "live: served from memory");
        members.changed("s");
        assert!(members.of("s").await.unwrap().is_empty(), "the announced change is seen by the next send");
        assert!(members.of("unknown").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_read_that_began_before_a_change_is_not_cached() {
        let (_dir, db) = db_with_session(&["a", "b"]).await;
        let members = SessionMembers::new(db);
        members.set_live(true);
        let read: Arc<[String]> = vec!["a".to_string(), "b".to_string()].into();
        let generation = members.cached("s").unwrap_err();
        members.changed("s"); // lands while the database read is under way
        members.remember("s", generation, &read);
        assert!(members.cached("s").is_err(), "what the read found may predate the change");
        let generation = members.cached("s").unwrap_err();
        members.remember("s", generation, &read);
        assert_eq!(&*members.cached("s").unwrap(), ["a", "b"]);
        members.set_live(false);
        assert!(members.cached("s").is_err(), "caching off forgets everything");
    }

    #[tokio::test]
    async fn redis_announcements_reach_a_follower() {
        let Some(url) = crate::test_url("CHATMESH_TEST_REDIS_URL") else { return };
        let (_dir, db) = db_with_session(&["a", "b"]).await;
        let members = SessionMembers::new(db.clone());
        let client = redis::Client::open(url.as_str()).unwrap();
        let channel = channel(&format!("t{}", crate::new_id()));
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(follow(members.clone(), client.clone(), channel.clone(), shutdown));
        for _ in 0..100 {
            if members.live.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(members.live.load(Ordering::Acquire), "subscribed: caching");
        assert_eq!(&*members.of("s").await.unwrap(), ["a", "b"]);
        delete_session(&db).await;
        let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
        MembershipNotices::Redis { conn, channel }.changed("s").await;
        let mut seen = false;
        for _ in 0..100 {
            if members.of("s").await.unwrap().is_empty() {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(seen, "the deletion reached the follower");
        stop.send(true).unwrap();
        task.await.unwrap();
        assert!(!members.live.load(Ordering::Acquire), "stopped following: no caching");
    }
}
