//! Load tool: logs users in over WebSockets, sends text messages at a target rate through the
//! gateway, and reports send->push latency percentiles and the stored-message rate; or holds
//! many idle WebSockets to measure the gateway's memory per connection.
//!
//!   chatmesh-load messages --rate 1000 --duration 20s --pairs 50
//!   chatmesh-load fanout --members 500 --messages 200
//!   chatmesh-load idle --connections 10000 --gateway-pid <pid>
//!   chatmesh-load ceiling --mysql-url .. --amqp-url .. --redis-url .. --queue ..
//!
//! With several gateways (`--http a,b --ws a,b`), users are spread over them and each
//! message's recipient is on another gateway than its sender. With `--metrics` (the processes'
//! admin `/metrics`), a run ends with the per-hop breakdown of its messages.

mod ceiling;
mod cpu;
mod fanout;
mod hops;

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
    /// Gateways' HTTP base URLs (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:9000")]
    http: Vec<String>,
    /// Gateways' WebSocket base URLs, in the order of `--http`.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:9001")]
    ws: Vec<String>,
    /// Admin `/metrics` URLs of every chatmesh process, for the per-hop breakdown (comma-separated).
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// Processes whose CPU time per message a run reports, as `name:pid` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    cpu: Vec<String>,
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
    /// One member sends to a group whose other members are connected over every gateway;
    /// report the time until the last member has each message.
    Fanout {
        /// Members of the group, the sender included.
        #[arg(long, default_value_t = 500)]
        members: usize,
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Messages per second (open loop).
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
    },
    /// The dependencies alone (no chatmesh): RabbitMQ, MariaDB and Redis operations as a
    /// message uses them, at `rate`, then their ceilings.
    Ceiling {
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// A database of its own (a table is created and dropped in it).
        #[arg(long)]
        mysql_url: String,
        #[arg(long)]
        amqp_url: String,
        #[arg(long)]
        redis_url: String,
        /// A queue name of its own (declared, then deleted).
        #[arg(long)]
        queue: String,
        /// Elasticsearch: first, every server's share of a message at once (an index of its own).
        #[arg(long)]
        es_url: Option<String>,
        /// Only that first row (needs --es-url): the floor beside each full-stack round.
        #[arg(long, requires = "es_url")]
        floor_only: bool,
    },
    /// Hold `connections` authenticated idle WebSockets; report the gateway's memory per one.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// The gateway process, whose resident memory is read from /proc.
        #[arg(long)]
        gateway_pid: u32,
    },
    /// Hostile and heavy clients (issue 12): the gateway's memory under concurrent logins,
    /// never-reading sockets and oversized bodies, and the size of a push from a user with a
    /// big avatar. Run the server with limits that let the load in (see e2e/bench.sh).
    Abuse {
        #[arg(long)]
        gateway_pid: u32,
        #[arg(long, default_value_t = 1000)]
        logins: usize,
        #[arg(long, default_value_t = 100)]
        sockets: usize,
        #[arg(long, default_value_t = 10_000)]
        pushes: usize,
        #[arg(long, default_value_t = 10)]
        bodies: usize,
        /// The size the bodies announce and send (the gateway's --max-body-bytes).
        #[arg(long, default_value_t = 80 * 1024 * 1024)]
        body_bytes: usize,
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

/// Messages slower than this are grouped into stalls by [`stalls`] (the p99.9 goal).
const STALL_MS: f64 = 10.0;

/// The slow samples among `(sent at, s since the start; latency, ms)`, grouped into stalls:
/// a stall holds every sample over [`STALL_MS`] sent within 50 ms of the previous one. One stall
/// of D ms delays about D messages at 1,000/s, so the run's p99.9 tells how many there were
/// and when (a period points at a timer: an index refresh, a flush), not only how bad.
fn stalls(samples: &[(f64, f64)]) -> String {
    let above = STALL_MS;
    let mut slow: Vec<(f64, f64)> = samples.iter().copied().filter(|&(_, l)| l > above).collect();
    if slow.len() * 10 > samples.len() {
        return format!("over {above} ms: {} of {} (saturated: no stalls to tell apart)", slow.len(), samples.len());
    }
    slow.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut groups: Vec<(f64, usize, f64)> = Vec::new(); // (start s, messages, worst ms)
    let mut last = f64::NEG_INFINITY;
    for (at, l) in slow.iter().copied() {
        match groups.last_mut() {
            Some(g) if at - last <= 0.05 => {
                g.1 += 1;
                g.2 = g.2.max(l);
            }
            _ => groups.push((at, 1, l)),
        }
        last = at;
    }
    let listed: Vec<String> =
        groups.iter().take(12).map(|(at, n, worst)| format!("{at:.2}s ({n}, worst {worst:.1})")).collect();
    let more = if groups.len() > 12 { ", ..." } else { "" };
    format!(
        "over {above} ms: {} in {} stall(s){}{}{more}",
        slow.len(),
        groups.len(),
        if listed.is_empty() { "" } else { " at " },
        listed.join(", ")
    )
}

/// The latencies of a timeline of `(when, latency)`, sorted.
fn sorted_latencies(timeline: &[(f64, f64)]) -> Vec<f64> {
    let mut l: Vec<f64> = timeline.iter().map(|&(_, l)| l).collect();
    l.sort_by(f64::total_cmp);
    l
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

/// Spawns a reader of `ws` that calls `on` with N of every pushed text message `<prefix>N`,
/// until the socket closes.
fn on_text_number(mut ws: chatmesh_e2e::Notifications, prefix: &'static str, on: impl Fn(u128) + Send + 'static) {
    tokio::spawn(async move {
        loop {
            match ws.next(Duration::from_secs(3600)).await {
                Event::Notify(n) => {
                    if let Some(NotifyRemarks::NewMessageInfo(m)) = n.notify_remarks
                        && let Some(MsgContent::StringMessage(t)) =
                            m.message_info.and_then(|m| m.message).and_then(|c| c.msg_content)
                        && let Some(number) = t.content.strip_prefix(prefix).and_then(|s| s.parse::<u128>().ok())
                    {
                        on(number);
                    }
                }
                Event::Quiet => {}
                Event::Closed(_) => return,
            }
        }
    });
}

fn now_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert_eq!(args.http.len(), args.ws.len(), "one --ws URL per --http URL");
    let clients: Vec<Client> = args.http.iter().zip(&args.ws).map(|(h, w)| Client::new(h, w)).collect();
    let client = clients[0].clone();
    match args.mode {
        Mode::Messages { rate, duration, pairs, concurrency } => {
            messages(&clients, &args.metrics, &args.cpu, rate, duration, pairs, concurrency).await
        }
        Mode::Fanout { members, messages, rate } => {
            fanout::run(&clients, &args.metrics, fanout::Shape { members, messages, rate }).await
        }
        Mode::Ceiling { rate, duration, mysql_url, amqp_url, redis_url, queue, es_url, floor_only } => {
            let servers = ceiling::Servers { mysql_url, amqp_url, redis_url, queue, es_url };
            ceiling::run(servers, rate, duration, &args.cpu, floor_only).await
        }
        Mode::Idle { connections, gateway_pid } => idle(client, connections, gateway_pid).await,
        Mode::Abuse { gateway_pid, logins, sockets, pushes, bodies, body_bytes } => {
            let http = args.http[0].trim_start_matches("http://").to_string();
            abuse::run(client, http, gateway_pid, abuse::Sizes { logins, sockets, pushes, bodies, body_bytes }).await
        }
    }
}

mod abuse {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use chatmesh_e2e::{Client, Event, rid, text_message};
    use chatmesh_proto::*;
    use prost::Message;
    use tokio::io::AsyncWriteExt;

    use super::{rss_kib, user};

    pub struct Sizes {
        pub logins: usize,
        pub sockets: usize,
        pub pushes: usize,
        pub bodies: usize,
        pub body_bytes: usize,
    }

    /// Samples the gateway's RSS every 20 ms until stopped; returns the peak in KiB.
    fn watch_peak(pid: u32) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let (s, p) = (stop.clone(), peak.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            p.load(Ordering::Relaxed)
        });
        (stop, task)
    }

    async fn peak_of<F: std::future::Future>(pid: u32, work: F) -> (u64, u64, F::Output) {
        let before = rss_kib(pid);
        let (stop, task) = watch_peak(pid);
        let out = work.await;
        stop.store(true, Ordering::Relaxed);
        (before, task.await.unwrap(), out)
    }

    fn mib(kib: u64) -> f64 {
        kib as f64 / 1024.0
    }

    async fn friends(c: &Client, a: &(String, String), b: &(String, String)) -> String {
        let event = c.apply(&a.1, &b.0).await.expect("apply");
        c.process(&b.1, &event, &a.0, true).await.expect("accept");
        let sessions = c.chat_sessions(&a.1).await.expect("sessions");
        sessions
            .into_iter()
            .find(|s| s.single_chat_friend_id.as_deref() == Some(&b.0))
            .expect("session")
            .chat_session_id
    }

    pub async fn run(client: Client, http: String, pid: u32, n: Sizes) {
        // 1. Concurrent logins of unknown names: every one costs a password hash.
        let (before, peak, refused) = peak_of(pid, async {
            let tasks: Vec<_> = (0..n.logins)
                .map(|i| {
                    let c = client.clone();
                    tokio::spawn(async move { c.login(&format!("nobody{i}"), "wrong_pass1").await })
                })
                .collect();
            let mut busy = 0;
            for t in tasks {
                if let Err(e) = t.await.unwrap()
                    && e.to_string().contains("busy")
                {
                    busy += 1;
                }
            }
            busy
        })
        .await;
        println!(
            "{} concurrent logins: gateway RSS {:.0} MiB -> peak {:.0} MiB (goal < 200 MiB); {refused} answered busy",
            n.logins,
            mib(before),
            mib(peak)
        );

        // 2. Never-reading sockets receiving pushes.
        let sender = user(&client, "abs", 0).await;
        let reader = user(&client, "abr", 0).await;
        let chat = friends(&client, &sender, &reader).await;
        let mut sockets = Vec::new();
        for _ in 0..n.sockets {
            sockets.push(client.notifications("/ws", &reader.1).await.expect("websocket"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (before, peak, sent) = peak_of(pid, async {
            let permits = Arc::new(tokio::sync::Semaphore::new(64));
            let mut sends = tokio::task::JoinSet::new();
            for i in 0..n.pushes {
                let permit = permits.clone().acquire_owned().await.unwrap();
                let (c, s, chat) = (client.clone(), sender.1.clone(), chat.clone());
                sends.spawn(async move {
                    let ok = c.send(&s, &chat, text_message(&format!("push {i} {}", "z".repeat(1000)))).await.is_ok();
                    drop(permit);
                    ok
                });
            }
            let mut ok = 0;
            while let Some(r) = sends.join_next().await {
                ok += r.unwrap() as usize;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            ok
        })
        .await;
        let mut closed = 0;
        for mut ws in sockets {
            // Reading now drains what the kernel buffered; a closed socket then ends.
            loop {
                match ws.next(Duration::from_secs(2)).await {
                    Event::Notify(_) => {}
                    Event::Closed(_) => {
                        closed += 1;
                        break;
                    }
                    Event::Quiet => break,
                }
            }
        }
        println!(
            "{} never-reading sockets, {sent} messages pushed to each: gateway RSS {:.0} MiB -> peak {:.0} MiB, \
             growth {:.1} MiB (goal < 64 MiB); {closed} sockets closed by the server",
            n.sockets,
            mib(before),
            mib(peak),
            mib(peak.saturating_sub(before))
        );

        // 3. Oversized bodies with a forged session, all at once.
        let (before, peak, answered) = peak_of(pid, async {
            let tasks: Vec<_> = (0..n.bodies)
                .map(|_| {
                    let http = http.clone();
                    let size = n.body_bytes;
                    tokio::spawn(async move { forged_upload(&http, size).await })
                })
                .collect();
            let mut answered = 0;
            for t in tasks {
                answered += t.await.unwrap() as usize;
            }
            answered
        })
        .await;
        println!(
            "{} concurrent {} MiB bodies with a bad session: gateway RSS {:.0} MiB -> peak {:.0} MiB, growth {:.1} MiB \
             (goal < 100 MiB); {answered} refused before the body was sent",
            n.bodies,
            n.body_bytes >> 20,
            mib(before),
            mib(peak),
            mib(peak.saturating_sub(before))
        );

        // 4. A push from a user with a 2 MiB avatar.
        let vain = user(&client, "abv", 0).await;
        let fan = user(&client, "abf", 0).await;
        let avatar = chatmesh_e2e::noise_png(820, 820);
        let avatar_len = avatar.len();
        let req =
            SetUserAvatarReq { request_id: rid(), session_id: Some(vain.1.clone()), avatar, ..Default::default() };
        let rsp: SetUserAvatarRsp = client.call("/service/user/set_avatar", &req).await.expect("set avatar");
        assert!(rsp.success, "{}", rsp.errormsg);
        let chat = friends(&client, &vain, &fan).await;
        let mut ws = client.notifications("/ws", &fan.1).await.expect("websocket");
        client.send_text(&vain.1, &chat, "hi").await.expect("send");
        match ws.next(Duration::from_secs(10)).await {
            Event::Notify(n) => println!(
                "a push of \"hi\" from a user with a {:.1} MiB avatar: {} bytes on the wire (goal < 40 KiB)",
                avatar_len as f64 / 1048576.0,
                n.encoded_len()
            ),
            other => println!("no push arrived: {other:?}"),
        }
    }

    /// Announces `size` bytes of upload with a forged session and sends as much as the server
    /// takes; true when the server answered before the whole body was sent.
    async fn forged_upload(http: &str, size: usize) -> bool {
        let head = PutSingleFileReq { request_id: rid(), session_id: Some("forged".into()), ..Default::default() };
        let mut prefix = head.encode_to_vec();
        let payload = size - prefix.len() - 10;
        prefix.push(0x22); // field 4, length-delimited
        prost::encoding::encode_varint(payload as u64, &mut prefix);
        let Ok(mut tcp) = tokio::net::TcpStream::connect(http).await else { return false };
        let request = format!(
            "POST /service/file/put_single_file HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
             Content-Length: {}\r\n\r\n",
            prefix.len() + payload
        );
        if tcp.write_all(request.as_bytes()).await.is_err() || tcp.write_all(&prefix).await.is_err() {
            return true;
        }
        let chunk = vec![0u8; 1 << 20];
        let mut left = payload;
        while left > 0 {
            let n = left.min(chunk.len());
            if tcp.write_all(&chunk[..n]).await.is_err() {
                return true;
            }
            left -= n;
        }
        false
    }
}

async fn messages(
    clients: &[Client],
    metrics: &[String],
    processes: &[String],
    rate: u32,
    duration: Duration,
    pairs: usize,
    concurrency: usize,
) {
    eprintln!("setting up {pairs} pairs of users over {} gateway(s)...", clients.len());
    let client = clients[0].clone();
    let mut chats = Vec::new();
    // (when sent, µs since the epoch; push latency, ms)
    let (latency_tx, mut latency_rx) = mpsc::unbounded_channel::<(u128, f64)>();
    for i in 0..pairs {
        let (a_id, a) = user(&client, "loada", i).await;
        let (b_id, b) = user(&client, "loadb", i).await;
        let event = client.apply(&a, &b_id).await.expect("apply");
        client.process(&b, &event, &a_id, true).await.expect("accept");
        let chat = client.chat_sessions(&a).await.expect("sessions").remove(0).chat_session_id;
        // The recipient listens on the gateway after the sender's: with two or more, every
        // push crosses from one gateway to another.
        let ws = clients[(i + 1) % clients.len()].notifications("/ws", &b).await.expect("websocket");
        let tx = latency_tx.clone();
        on_text_number(ws, "t:", move |sent| {
            let _ = tx.send((sent, now_micros().saturating_sub(sent) as f64 / 1000.0));
        });
        chats.push((clients[i % clients.len()].clone(), a, chat, b));
    }
    drop(latency_tx);
    let chats = Arc::new(chats);
    tokio::time::sleep(Duration::from_millis(300)).await; // presence of the last sockets settles
    // A chat's first message meets every cache cold (the sender's session, the members, the
    // sender's profile, the recipient's presence): 50 of them at once would be a start-up
    // transient, not the steady state measured. Sent one at a time before the measured
    // window, reported on their own, and stored before it begins.
    let stored_before = hops::counter(metrics, STORED).await;
    let mut cold = Vec::new();
    for (client, a, chat, _) in chats.iter() {
        let at = Instant::now();
        client.send(a, chat, text_message("cold")).await.expect("a chat's first message");
        cold.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    cold.sort_by(f64::total_cmp);
    stored_by(metrics, stored_before, chats.len(), Instant::now() + Duration::from_secs(10)).await;
    let before = hops::scrape(metrics).await;
    let stored_before = hops::counter(metrics, STORED).await;
    let cpu_before = cpu::Snapshot::take(processes);
    eprintln!("sending at {rate} msg/s for {duration:?}...");
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let started_micros = now_micros();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..total {
        // Open loop: message i leaves at i * interval, whatever the replies do.
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let permit = permits.clone().acquire_owned().await.unwrap();
        let chats = chats.clone();
        sends.spawn(async move {
            let (client, a, chat, _) = &chats[i % chats.len()];
            let sent = Instant::now();
            let sent_ok = client.send(a, chat, text_message(&format!("t:{}", now_micros()))).await;
            drop(permit);
            // A failed send is not acknowledged; the first few say why.
            if let Err(e) = &sent_ok
                && FAILED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5
            {
                eprintln!("send {i} failed after {:?}: {e}", sent.elapsed());
            }
            sent_ok.is_ok().then(|| sent.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let mut acks = Vec::new();
    while let Some(ack) = sends.join_next().await {
        acks.extend(ack.unwrap());
    }
    let acked = acks.len();
    let send_secs = started.elapsed().as_secs_f64();
    // Storage: the storage services' own count of committed messages, polled (cheap), is
    // when all was stored; then every acknowledged message must also read back from history.
    // History alone was the measure until 12-02: each look read every message of the run, and
    // those reads ran on the cores they measured (seconds after storage had caught up).
    let deadline = started + duration * 10;
    let counted_at = stored_by(metrics, stored_before, acked, deadline)
        .await
        .then(|| (started.elapsed().as_secs_f64(), cpu::Snapshot::take(processes)));
    let (stored, readable_secs) = loop {
        let mut stored = 0usize;
        for (_, _, chat, b) in chats.iter() {
            stored += stored_in(&client, b, chat).await.saturating_sub(1); // not its first message
        }
        if stored >= acked || Instant::now() > deadline {
            break (stored, started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The count stands only if history confirms it (a redelivered batch counts twice).
    let (stored_secs, cpu_after) = match counted_at {
        Some(counted) if stored >= acked => counted,
        _ => (readable_secs, cpu::Snapshot::take(processes)),
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut timeline = Vec::new();
    while let Ok((sent, l)) = latency_rx.try_recv() {
        timeline.push((sent.saturating_sub(started_micros) as f64 / 1e6, l));
    }
    let latencies = sorted_latencies(&timeline);
    acks.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("sent {total} in {send_secs:.1}s ({:.0} msg/s offered), acknowledged {acked}", total as f64 / send_secs);
    println!(
        "push latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} pushes)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        latencies.last().copied().unwrap_or(f64::NAN),
        latencies.len()
    );
    println!("push latency {}", stalls(&timeline));
    println!(
        "each chat's first message, before the run (cold caches, one at a time): acknowledged in p50 {:.2} ms, max {:.2} ms",
        percentile(&cold, 0.5),
        cold.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "send acknowledgement ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}",
        percentile(&acks, 0.5),
        percentile(&acks, 0.99),
        percentile(&acks, 0.999)
    );
    println!(
        "stored {} of {acked} within {stored_secs:.1}s of the first send: {:.0} stored msg/s \
         (history read back at {readable_secs:.1}s)",
        stored,
        stored as f64 / stored_secs
    );
    print_hops(metrics, &before).await;
    println!("CPU from the first send until all was stored:");
    print!("{}", cpu_after.table_since(&cpu_before, total));
}

/// Failed sends so far, of every run of this process.
static FAILED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The storage services' counter of committed messages.
const STORED: &str = "chatmesh_messages_stored_total";

/// Whether the storage services counted `n` more committed messages than `before` by
/// `deadline` (never, without processes to ask).
async fn stored_by(metrics: &[String], before: f64, n: usize, deadline: Instant) -> bool {
    while !metrics.is_empty() && Instant::now() < deadline {
        if hops::counter(metrics, STORED).await - before >= n as f64 {
            return true;
        }
        // Each look renders every process's metrics: often enough, not a load of its own.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The per-hop table of what happened since `before`, when there are processes to ask.
async fn print_hops(metrics: &[String], before: &hops::Snapshot) {
    if metrics.is_empty() {
        return;
    }
    let after = hops::scrape(metrics).await;
    println!("per-hop breakdown (chatmesh_message_hop_seconds, {} process(es)):", metrics.len());
    print!("{}", after.since(before).table());
}

/// The messages of `chat` in its history. A history call returns at most 1,000 (the oldest of
/// its time range): page forward from the last one's time, counting each id once.
async fn stored_in(client: &Client, session: &str, chat: &str) -> usize {
    const PAGE: usize = 1000;
    let mut seen = std::collections::HashSet::new();
    let mut from = 0;
    loop {
        let page = client.history(session, chat, from, i64::MAX).await.unwrap_or_default();
        let (full, last) = (page.len() >= PAGE, page.last().map(|m| m.timestamp));
        let before = seen.len();
        seen.extend(page.into_iter().map(|m| m.message_id));
        match last {
            // A full page that added nothing: more than a page within one timestamp; stop.
            Some(t) if full && seen.len() > before => from = t,
            _ => return seen.len(),
        }
    }
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
