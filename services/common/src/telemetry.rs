//! Logs (tracing, text or JSON) and the Prometheus recorder, installed once per process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::trace::Traces;

/// Histogram buckets of durations (seconds): 1 ms to 30 s.
const SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Buckets of one hop of a message's path (seconds): 50 µs to 1 s, fine below 10 ms where
/// most hops fall.
const HOP_SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05,
    0.1, 0.25, 1.0,
];
/// Buckets of counts (batch sizes).
const COUNTS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; `filter` is an EnvFilter directive such as `info,sqlx=warn`.
pub fn init_logs(filter: &str, format: LogFormat) {
    init(filter, format, None);
}

/// Which spans go to the trace exporter, whatever the log filter: chatmesh's own, not the
/// libraries' inner workings.
const SPAN_FILTER: &str = "info,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,lapin=off,sqlx=off,redis=off";

/// Installs the global subscriber: logs filtered by `filter`, and with `traces` spans exported
/// too. JSON logs name the trace id of the request they belong to (its span's `trace_id`).
/// Only the first call in a process takes effect.
pub fn init(filter: &str, format: LogFormat, traces: Option<&Traces>) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_target(true);
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let spans = traces.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer())
            .with_filter(tracing_subscriber::EnvFilter::new(SPAN_FILTER))
    });
    let _ = tracing_subscriber::registry().with(fmt).with(spans).try_init();
}

/// The process-wide Prometheus recorder; every call returns the same handle.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Histograms with buckets (not summaries), so quantiles aggregate across pods.
        let recorder = PrometheusBuilder::new()
            .set_buckets(SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), COUNTS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(HOP_METRIC.into()), HOP_SECONDS))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed (tests); the handle still renders ours.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The histogram of the time one message spends in each hop of its path, labelled `hop`.
pub const HOP_METRIC: &str = "chatmesh_message_hop_seconds";

/// The hops of a text message from the sender's request to the recipient's WebSocket, in order
/// (`e2e/src/bin/load/main.rs` prints them as a table after a run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Gateway: read and decode the request body, resolve the login session.
    GatewaySession,
    /// Gateway: the whole call to the transmit service (the three transmit hops below, the
    /// gRPC round trip and what transmit does beside them).
    TransmitCall,
    /// Transmit: the session's members, for the membership check and the recipients.
    TransmitMembership,
    /// Transmit: the sender's profile for the push.
    TransmitSenderProfile,
    /// Transmit: publish to the queue and wait for the broker's confirm.
    QueuePublishConfirm,
    /// Gateway: which gateways hold the recipients' WebSockets (presence).
    PushPresenceLookup,
    /// Gateway: one publish of an envelope to another gateway.
    PushRemotePublish,
    /// Gateway: queueing the frame for this gateway's recipients' WebSockets.
    PushLocalDeliver,
    /// Gateway: one WebSocket frame written to the socket (frames queued together are written
    /// at once, and each counts the time of that write).
    WebsocketWrite,
    /// Gateway: the sender's request from its first byte to the answer (pushes routed).
    GatewayTotal,
}

impl Hop {
    /// Every hop, in the order of the enum (its discriminants index this).
    const ALL: [Hop; 10] = [
        Hop::GatewaySession,
        Hop::TransmitCall,
        Hop::TransmitMembership,
        Hop::TransmitSenderProfile,
        Hop::QueuePublishConfirm,
        Hop::PushPresenceLookup,
        Hop::PushRemotePublish,
        Hop::PushLocalDeliver,
        Hop::WebsocketWrite,
        Hop::GatewayTotal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Hop::GatewaySession => "gateway_decode_session",
            Hop::TransmitCall => "gateway_transmit_call",
            Hop::TransmitMembership => "transmit_membership",
            Hop::TransmitSenderProfile => "transmit_sender_profile",
            Hop::QueuePublishConfirm => "queue_publish_confirm",
            Hop::PushPresenceLookup => "push_presence_lookup",
            Hop::PushRemotePublish => "push_remote_publish",
            Hop::PushLocalDeliver => "push_local_deliver",
            Hop::WebsocketWrite => "websocket_write",
            Hop::GatewayTotal => "gateway_total",
        }
    }

    /// Records the time since `started` as this hop.
    pub fn record(self, started: std::time::Instant) {
        // Registered once: a message records seven hops, and looking each up in the registry
        // by name and label cost more than recording it (`perf`, standalone burst).
        static HANDLES: OnceLock<[metrics::Histogram; Hop::ALL.len()]> = OnceLock::new();
        let handles = HANDLES.get_or_init(|| {
            metrics(); // the handles must belong to the process's recorder, installed first
            Hop::ALL.map(|hop| metrics::histogram!(HOP_METRIC, "hop" => hop.as_str()))
        });
        handles[self as usize].record(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each hop lands in its own labelled series of the process's recorder, though the handles
    /// are registered once and indexed by the enum.
    #[test]
    fn each_hop_is_recorded_under_its_own_label() {
        let count = |hop: Hop| {
            let text = metrics().render();
            let series = format!("{HOP_METRIC}_count{{hop=\"{}\"}} ", hop.as_str());
            text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |n| n.parse::<u64>().unwrap())
        };
        for (i, hop) in Hop::ALL.into_iter().enumerate() {
            assert_eq!(hop as usize, i, "ALL follows the enum's order");
            let before: Vec<u64> = Hop::ALL.into_iter().map(count).collect();
            for _ in 0..=i {
                hop.record(std::time::Instant::now());
            }
            let after: Vec<u64> = Hop::ALL.into_iter().map(count).collect();
            for (j, other) in Hop::ALL.into_iter().enumerate() {
                let expected = if j == i { before[j] + i as u64 + 1 } else { before[j] };
                assert_eq!(after[j], expected, "{} after recording {}", other.as_str(), hop.as_str());
            }
        }
    }
}
