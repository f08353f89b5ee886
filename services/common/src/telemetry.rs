//! Logs (tracing, text or JSON) and the Prometheus recorder, installed once per process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::trace::Traces;

/// Histogram buckets of durations (seconds): 1 ms to 30 s.
const SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
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
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed (tests); the handle still renders ours.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
