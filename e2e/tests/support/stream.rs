//! A stream of sends in one chat and the check that every acknowledged message is stored
//! exactly once: shared by the crash tests (`chaos.rs`) and the kind suite's disruptions
//! (`kind_day2.rs`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chatmesh_e2e::Client;
use chatmesh_proto::MessageInfo;
use chatmesh_proto::message_content::MsgContent;
use tokio::sync::watch;

/// Concurrent senders of a stream.
pub const WORKERS: usize = 4;
/// The password of every user made here.
pub const PASSWORD: &str = "pass_word-1";

/// Two friends (`a` and `b`: their login sessions) and their one-to-one chat.
pub struct Chat {
    pub a: String,
    pub a_nick: String,
    pub b: String,
    pub b_nick: String,
    pub chat: String,
}

/// A new user, logged in: (nickname, session).
pub async fn login_new(c: &Client) -> (String, String) {
    let nick = format!("x{}", &chatmesh_common::new_id()[..10]);
    c.register(&nick, PASSWORD).await.unwrap();
    (nick.clone(), c.login(&nick, PASSWORD).await.unwrap())
}

/// Two new friends and their one-to-one chat.
pub async fn chat(c: &Client) -> Chat {
    let (a_nick, a) = login_new(c).await;
    let (b_nick, b) = login_new(c).await;
    let b_id = c.user_info(&b).await.unwrap().user_id;
    let a_id = c.user_info(&a).await.unwrap().user_id;
    let event = c.apply(&a, &b_id).await.unwrap();
    c.process(&b, &event, &a_id, true).await.unwrap();
    let sessions = c.chat_sessions(&a).await.unwrap();
    let chat = sessions.into_iter().find(|s| s.single_chat_friend_id.as_deref() == Some(&b_id)).unwrap();
    Chat { a, a_nick, b, b_nick, chat: chat.chat_session_id }
}

/// `WORKERS` senders, each sending every 200 ms until `stop` (or `max_sends`); returns the
/// acknowledged texts (`<prefix>w<worker> n<i>`: `<prefix>w<worker>` is a search key).
pub fn stream(
    c: &Client,
    session: &str,
    chat: &str,
    prefix: &str,
    max_sends: usize,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (c, session, chat, stop) = (c.clone(), session.to_string(), chat.to_string(), stop.clone());
        let key = format!("{prefix}w{w}");
        workers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..max_sends {
                if *stop.borrow() {
                    break;
                }
                let text = format!("{key} n{i}");
                if c.send_text(&session, &chat, &text).await.is_ok() {
                    acked.push(text);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            acked
        }));
    }
    tokio::spawn(async move {
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap());
        }
        all
    })
}

/// The text of a text message.
pub fn text(m: &MessageInfo) -> Option<String> {
    match m.message.as_ref()?.msg_content.as_ref()? {
        MsgContent::StringMessage(t) => Some(t.content.clone()),
        _ => None,
    }
}

/// Every stored text of the chat since `since` (Unix seconds), in 5-second pages.
pub async fn stored(c: &Client, session: &str, chat: &str, since: i64) -> Option<Vec<String>> {
    let mut texts = Vec::new();
    let now = chatmesh_common::unix_now() + 1;
    let mut t = since;
    while t <= now {
        texts.extend(c.history(session, chat, t, t + 4).await.ok()?.iter().filter_map(text));
        t += 5;
    }
    Some(texts)
}

/// Waits until every `acked` text is stored (until `deadline` at the latest), then checks that
/// no text is stored twice. The error says what is missing or doubled.
pub async fn stored_once(
    c: &Client,
    session: &str,
    chat: &str,
    since: i64,
    acked: &[String],
    deadline: Instant,
) -> Result<(), String> {
    let mut last = Vec::new();
    loop {
        if let Some(texts) = stored(c, session, chat, since).await {
            let have: HashSet<&String> = texts.iter().collect();
            let complete = acked.iter().all(|t| have.contains(t));
            last = texts;
            if complete {
                break;
            }
        }
        if Instant::now() > deadline {
            let have: HashSet<&String> = last.iter().collect();
            let missing: Vec<&String> = acked.iter().filter(|t| !have.contains(t)).collect();
            return Err(format!(
                "{} of {} acknowledged messages not stored in time: {:?}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(10)]
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for t in &last {
        *counts.entry(t).or_default() += 1;
    }
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    if doubled.is_empty() { Ok(()) } else { Err(format!("stored more than once: {doubled:?}")) }
}
