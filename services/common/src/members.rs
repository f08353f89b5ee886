//! Who is in a chat session, as the transmit service checks it on every send. Read from the
//! database, and kept in memory only while this process hears about every change: the one
//! change to an existing session's members is its deletion (removing a friend), which the
//! friend service announces after its commit — in the same process directly, across processes
//! on a Redis channel. While the subscription is down nothing is cached, and each cached entry
//! also expires, bounding the damage of an announcement lost in a crash.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::followed::{self, Cached, Followed, Follower};
use crate::{BackendError, Database};

/// Longest a cached member list is used (the bound if an announcement was lost).
const TTL: Duration = Duration::from_secs(10);
/// Sessions cached at most (member lists are bounded by the group size limit).
const CAPACITY: usize = 10_000;

pub struct SessionMembers {
    db: Database,
    cache: Arc<Followed<Arc<[String]>>>,
}

impl SessionMembers {
    /// Reads every time until its [`SessionMembers::follower`] is told it is live.
    pub fn new(db: Database) -> Arc<Self> {
        Arc::new(Self { db, cache: Arc::new(Followed::new(TTL, CAPACITY)) })
    }

    /// What hears of membership changes (a session deleted): [`followed::follow`] or the
    /// friend service of this process tells it.
    pub fn follower(&self) -> Arc<dyn Follower> {
        self.cache.clone()
    }

    /// The members of `session` (sorted; empty for an unknown session).
    pub async fn of(&self, session: &str) -> Result<Arc<[String]>, BackendError> {
        let generation = match self.cache.cached(session) {
            Cached::Fresh(members) => {
                metrics::counter!("chatmesh_membership_lookups_total", "source" => "cache").increment(1);
                return Ok(members);
            }
            Cached::Renew(members, generation) => {
                metrics::counter!("chatmesh_membership_lookups_total", "source" => "cache").increment(1);
                let (db, session_id) = (self.db.clone(), session.to_string());
                self.cache.renew(session, generation, async move {
                    crate::db::chat_members(&db, &session_id).await.ok().filter(|m| !m.is_empty()).map(Into::into)
                });
                return Ok(members);
            }
            Cached::Miss(generation) => generation,
        };
        metrics::counter!("chatmesh_membership_lookups_total", "source" => "database").increment(1);
        let members: Arc<[String]> = crate::db::chat_members(&self.db, session).await?.into();
        // Unknown sessions are not remembered (nor renewed): ids are random, and a miss costs one read.
        if !members.is_empty() {
            self.cache.remember(session, generation, members.clone());
        }
        Ok(members)
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
        tokio::spawn(followed::follow(members.follower(), client, channel(namespace), "membership changes", shutdown));
    } else if local_friend {
        members.follower().set_live(true);
    }
    Ok(members)
}

/// Where the friend service announces a session's membership change.
#[derive(Clone)]
pub enum MembershipNotices {
    /// No transmit service can cache (none in this process, and no Redis).
    Nobody,
    /// The transmit service of this process (its members' [`SessionMembers::follower`]).
    Local(Arc<dyn Follower>),
    /// Every process following the channel (see [`followed::follow`]).
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
        Ok(local.map_or(MembershipNotices::Nobody, |m| MembershipNotices::Local(m.follower())))
    }

    /// Announces, after the change committed, that `session`'s members changed.
    pub async fn changed(&self, session: &str) {
        match self {
            MembershipNotices::Nobody => {}
            MembershipNotices::Local(members) => members.changed(session),
            MembershipNotices::Redis { conn, channel } => {
                followed::announce(conn, channel, &[session], "membership change").await;
            }
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
        members.follower().set_live(true);
        assert_eq!(&*members.of("s").await.unwrap(), ["a", "b"]);
        delete_session(&db).await;
        assert_eq!(&*members.of("s").await.unwrap(), ["a", "b"], "live: served from memory");
        members.follower().changed("s");
        assert!(members.of("s").await.unwrap().is_empty(), "the announced change is seen by the next send");
        assert!(members.of("unknown").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn redis_announcements_reach_a_follower() {
        let Some(url) = crate::test_url("CHATMESH_TEST_REDIS_URL") else { return };
        let (_dir, db) = db_with_session(&["a", "b"]).await;
        let members = SessionMembers::new(db.clone());
        let client = redis::Client::open(url.as_str()).unwrap();
        let channel = channel(&format!("t{}", crate::new_id()));
        let (stop, shutdown) = watch::channel(false);
        let follower = members.follower();
        let task = tokio::spawn(followed::follow(follower, client.clone(), channel.clone(), "changes", shutdown));
        for _ in 0..100 {
            if members.cache.is_live() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(members.cache.is_live(), "subscribed: caching");
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
        assert!(!members.cache.is_live(), "stopped following: no caching");
    }
}
