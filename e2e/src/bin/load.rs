//! Load tool: logs users in over WebSockets, sends text messages at a target rate through the
//! gateway, and reports send->push latency percentiles and the stored-message rate; or holds
//! many idle WebSockets to measure the gateway's memory per connection.
//!
//!   chatmesh-load messages --rate 1000 --duration 20s --pairs 50
//!   chatmesh-load idle --connections 10000 --gateway-pid <pid>

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatmesh_e2e::{Client, Event, text_message};
use chatmesh_proto::message_content::MsgContent;
use chatmesh_proto::notify_message::NotifyRemarks;
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(about = "Load and measure a running chatmesh gateway")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    http: String,
    #[arg(long, default_value = "ws://127.0.0.1:9001")]
    ws: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Send at `rate` msg/s for `duration`; report push latency and storage throughput.
    Messages {
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Sender/recipient pairs (each pair is one chat session).
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Requests in flight at most.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// Hold `connections` authenticated idle WebSockets; report the gateway's memory per one.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// The gateway process, whose resident memory is read from /proc.
        #[arg(long)]
        gateway_pid: u32,
    },
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("gateway process exists");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn user(c: &Client, prefix: &str, i: usize) -> (String, String) {
    let nick = format!("{prefix}{i}_{}", &chatmesh_e2e::rid()[..6]);
    c.register(&nick, "load_pass1").await.expect("register");
    let session = c.login(&nick, "load_pass1").await.expect("login");
    let id = c.user_info(&session).await.expect("user info").user_id;
    (id, session)
}

fn now_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let client = Client::new(&args.http, &args.ws);
    match args.mode {
        Mode::Messages { rate, duration, pairs, concurrency } => {
            messages(client, rate, duration, pairs, concurrency).await
        }
        Mode::Idle { connections, gateway_pid } => idle(client, connections, gateway_pid).await,
    }
}

async fn messages(client: Client, rate: u32, duration: Duration, pairs: usize, concurrency: usize) {
    eprintln!("setting up {pairs} pairs of users...");
    let mut chats = Vec::new();
    let (latency_tx, mut latency_rx) = mpsc::unbounded_channel::<f64>();
    for i in 0..pairs {
        let (a_id, a) = user(&client, "loada", i).await;
        let (b_id, b) = user(&client, "loadb", i).await;
        let event = client.apply(&a, &b_id).await.expect("apply");
        client.process(&b, &event, &a_id, true).await.expect("accept");
        let chat = client.chat_sessions(&a).await.expect("sessions").remove(0).chat_session_id;
        let mut ws = client.notifications("/ws", &b).await.expect("websocket");
        let tx = latency_tx.clone();
        tokio::spawn(async move {
            loop {
                match ws.next(Duration::from_secs(3600)).await {
                    Event::Notify(n) => {
                        if let Some(NotifyRemarks::NewMessageInfo(m)) = n.notify_remarks
                            && let Some(MsgContent::StringMessage(t)) =
                                m.message_info.and_then(|m| m.message).and_then(|c| c.msg_content)
                            && let Some(sent) = t.content.strip_prefix("t:").and_then(|s| s.parse::<u128>().ok())
                        {
                            let _ = tx.send((now_micros().saturating_sub(sent)) as f64 / 1000.0);
                        }
                    }
                    Event::Quiet => {}
                    Event::Closed(_) => return,
                }
            }
        });
        chats.push((a, chat, b));
    }
    drop(latency_tx);
    let chats = Arc::new(chats);
    eprintln!("sending at {rate} msg/s for {duration:?}...");
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..total {
        // Open loop: message i leaves at i * interval, whatever the replies do.
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (client, chats) = (client.clone(), chats.clone());
        sends.spawn(async move {
            let (a, chat, _) = &chats[i % chats.len()];
            let ok = client.send(a, chat, text_message(&format!("t:{}", now_micros()))).await.is_ok();
            drop(permit);
            ok
        });
    }
    let mut acked = 0usize;
    while let Some(ok) = sends.join_next().await {
        acked += ok.unwrap() as usize;
    }
    let send_secs = started.elapsed().as_secs_f64();
    // Storage: wait until every acknowledged message can be read back.
    let stored_at = loop {
        let mut stored = 0usize;
        for (_, chat, b) in chats.iter() {
            stored += client.history(b, chat, 0, i64::MAX).await.map(|m| m.len()).unwrap_or(0);
        }
        if stored >= acked || started.elapsed() > duration * 10 {
            break (stored, started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    while let Ok(l) = latency_rx.try_recv() {
        latencies.push(l);
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("sent {total} in {send_secs:.1}s ({:.0} msg/s offered), acknowledged {acked}", total as f64 / send_secs);
    println!(
        "push latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} pushes)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        latencies.last().copied().unwrap_or(f64::NAN),
        latencies.len()
    );
    println!(
        "stored {} of {acked} within {:.1}s of the first send: {:.0} stored msg/s",
        stored_at.0,
        stored_at.1,
        stored_at.0 as f64 / stored_at.1
    );
}

async fn idle(client: Client, connections: usize, pid: u32) {
    let (_, session) = user(&client, "idle", 0).await;
    let before = rss_kib(pid);
    let mut sockets = Vec::with_capacity(connections);
    for i in 0..connections {
        match client.notifications("/ws", &session).await {
            Ok(ws) => sockets.push(ws),
            Err(e) => {
                eprintln!("stopped at {i} connections: {e}");
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    let n = sockets.len();
    println!(
        "{n} idle WebSockets: gateway RSS {before} KiB -> {after} KiB, {:.2} KB per connection",
        (after.saturating_sub(before)) as f64 * 1.024 / n as f64
    );
}
