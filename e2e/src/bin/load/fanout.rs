//! Group fan-out: one member sends to a group whose other members hold WebSockets spread over
//! every gateway; per message, the time from the send until the last member has it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatmesh_e2e::{Client, text_message};
use tokio::sync::{Semaphore, mpsc};

use super::{hops, now_micros, on_text_number, percentile, print_hops, user};

pub struct Shape {
    pub members: usize,
    pub messages: usize,
    pub rate: f64,
}

/// Runs `work(i)` for `0..n`, `width` at a time, in order of `i`.
async fn each<T, F, Fut>(n: usize, width: usize, work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(width));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let fut = work(i);
        tasks.push(tokio::spawn(async move {
            let out = fut.await;
            drop(permit);
            out
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("setup task"));
    }
    out
}

pub async fn run(clients: &[Client], metrics: &[String], shape: Shape) {
    let client = clients[0].clone();
    let others = shape.members.saturating_sub(1).max(1);
    eprintln!("setting up a group of {} over {} gateway(s)...", others + 1, clients.len());
    let (sender_id, sender) = user(&client, "fans", 0).await;
    let members = each(others, 8, |i| {
        let c = client.clone();
        async move { user(&c, "fanm", i).await }
    })
    .await;
    // Only friends can be put in a group.
    let sender_arc = Arc::new((sender_id.clone(), sender.clone()));
    each(others, 16, |i| {
        let (c, s, (id, session)) = (client.clone(), sender_arc.clone(), members[i].clone());
        async move {
            let event = c.apply(&s.1, &id).await.expect("apply");
            c.process(&session, &event, &s.0, true).await.expect("accept");
        }
    })
    .await;
    let mut ids: Vec<String> = members.iter().map(|(id, _)| id.clone()).collect();
    ids.push(sender_id.clone());
    client.create_group(&sender, "fanout", &ids).await.expect("create the group");
    let group = client
        .chat_sessions(&sender)
        .await
        .expect("sessions")
        .into_iter()
        .find(|s| s.single_chat_friend_id.is_none() && s.chat_session_name == "fanout")
        .expect("the group")
        .chat_session_id;

    // Every member listens, member i on gateway i mod n; arrivals are (message, Unix µs).
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<(usize, u128)>();
    for (i, (_, session)) in members.iter().enumerate() {
        let ws = clients[i % clients.len()].notifications("/ws", session).await.expect("websocket");
        let tx = arrived_tx.clone();
        on_text_number(ws, "f:", move |k| {
            let _ = tx.send((k as usize, now_micros()));
        });
    }
    drop(arrived_tx);
    tokio::time::sleep(Duration::from_secs(1)).await; // presence of every socket is recorded

    let before = hops::scrape(metrics).await;
    eprintln!("sending {} messages at {}/s...", shape.messages, shape.rate);
    let interval = Duration::from_secs_f64(1.0 / shape.rate);
    let started = Instant::now();
    let mut sent_at = Vec::with_capacity(shape.messages);
    let mut sends = tokio::task::JoinSet::new();
    for k in 0..shape.messages {
        tokio::time::sleep_until((started + interval * k as u32).into()).await;
        sent_at.push(now_micros());
        let (c, s, g) = (client.clone(), sender.clone(), group.clone());
        sends.spawn(async move { c.send(&s, &g, text_message(&format!("f:{k}"))).await.is_ok() });
    }
    let mut acked = 0;
    while let Some(ok) = sends.join_next().await {
        acked += ok.unwrap() as usize;
    }
    // Collect until every member has every message, or nothing came for 5 s.
    let expected = acked * others;
    let mut last: HashMap<usize, u128> = HashMap::new();
    let mut all = Vec::with_capacity(expected);
    while all.len() < expected {
        match tokio::time::timeout(Duration::from_secs(5), arrived.recv()).await {
            Ok(Some((k, at))) if k < sent_at.len() => {
                let e = last.entry(k).or_default();
                *e = (*e).max(at);
                all.push(at.saturating_sub(sent_at[k]) as f64 / 1000.0);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let mut lasts: Vec<f64> = last.iter().map(|(k, at)| at.saturating_sub(sent_at[*k]) as f64 / 1000.0).collect();
    lasts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "group of {}: sent {}, acknowledged {acked}, delivered {} of {expected} pushes",
        others + 1,
        shape.messages,
        all.len()
    );
    println!(
        "last member has it, ms: p50 {:.2}  p99 {:.2}  max {:.2}",
        percentile(&lasts, 0.5),
        percentile(&lasts, 0.99),
        lasts.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "every push, ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 0.999)
    );
    print_hops(metrics, &before).await;
}
