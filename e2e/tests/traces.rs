//! One message's path is one trace: an OTLP collector in this test receives the spans of a send
//! on the real backends and checks the parent/child chain crosses gRPC, RabbitMQ and the Redis
//! bus to a second gateway; then the same through the standalone queues (database, memory).
//! (One test per binary: tracing is set up once per process.)

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatmesh_proto::NotifyType;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::{Backend, Stack};

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn collector() -> (Collector, String) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (collector, format!("http://{addr}"))
}

/// The spans of one trace, by span id.
struct Trace {
    spans: HashMap<Vec<u8>, Span>,
}

impl Trace {
    fn named(&self, name: &str, kind: SpanKind) -> &Span {
        self.spans
            .values()
            .find(|s| s.name == name && s.kind == kind as i32)
            .unwrap_or_else(|| panic!("no {kind:?} span {name:?} in the trace: {:?}", self.names()))
    }

    fn names(&self) -> Vec<String> {
        self.spans.values().map(|s| format!("{} ({:?})", s.name, s.kind)).collect()
    }

    /// Whether `ancestor` is `span` or above it.
    fn descends(&self, span: &Span, ancestor: &Span) -> bool {
        let mut at = Some(span);
        while let Some(s) = at {
            if s.span_id == ancestor.span_id {
                return true;
            }
            at = self.spans.get(&s.parent_span_id);
        }
        false
    }

    /// A send's chain: gateway request -> transmit (gRPC) -> queue publish -> consume -> store.
    fn assert_send_chain(&self) {
        let request = self.named(SEND, SpanKind::Server);
        assert!(request.parent_span_id.is_empty(), "the gateway request is the root");
        let rpc = "/bite_im.MsgTransmitService/GetTransmitTarget";
        let client = self.named(rpc, SpanKind::Client);
        let server = self.named(rpc, SpanKind::Server);
        self.assert_child(client, request);
        assert_eq!(server.parent_span_id, client.span_id, "gRPC metadata carried the context");
        let publish = self.spans.values().find(|s| s.kind == SpanKind::Producer as i32 && s.name.ends_with(" publish"));
        let publish = publish.unwrap_or_else(|| panic!("no queue publish span: {:?}", self.names()));
        self.assert_child(publish, server);
        let consume = self.spans.values().find(|s| s.kind == SpanKind::Consumer as i32 && s.name.ends_with(" process"));
        let consume = consume.unwrap_or_else(|| panic!("no queue consume span: {:?}", self.names()));
        assert_eq!(consume.parent_span_id, publish.span_id, "the queued message carried the context");
        self.assert_child(self.named("storage.store", SpanKind::Internal), consume);
    }

    fn assert_child(&self, child: &Span, parent: &Span) {
        assert!(
            self.descends(child, parent),
            "{:?} does not descend from {:?}; trace: {:?}",
            child.name,
            parent.name,
            self.names()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_across_queue_and_gateways() {
    let (collector, endpoint) = collector().await;
    let otlp = format!("--otlp-endpoint={endpoint}");
    let Some(s) = Stack::start_with(Backend::Real, &[otlp.as_str(), "--trace-sample-ratio=1"]).await else { return };
    let (second, far) = s.spawn("gateway").await;
    let (a, b) = (support::person(&s, "trA").await, support::person(&s, "trB").await);
    let chat = support::befriend(&s.client, &a, &b).await;
    let (a, b) = (a.session, b.session);
    // B is connected to the second gateway: that push must cross the Redis bus; B's second
    // device, on the sender's gateway, gets it locally.
    let mut b_ws = far.notifications("/ws", &b).await.unwrap();
    let mut b_near = s.client.notifications("/ws", &b).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // presence recorded
    s.client.send_text(&a, &chat, "traced").await.unwrap();
    b_ws.expect(NotifyType::ChatMessageNotify, Duration::from_secs(10)).await;
    b_near.expect(NotifyType::ChatMessageNotify, Duration::from_secs(10)).await;

    let mut seen = Vec::new();
    let trace = wait_for_trace(&collector, &["storage.store", "push.deliver"], &mut seen).await;
    trace.assert_send_chain();
    let routed = trace.named("push.route", SpanKind::Producer);
    trace.assert_child(routed, trace.named(SEND, SpanKind::Server));
    let delivered = trace.named("push.deliver", SpanKind::Consumer);
    assert_eq!(delivered.parent_span_id, routed.span_id, "the push envelope carried the context");

    // The same scenario, as an operator sees it: the admin port's /metrics.
    let scrape = reqwest::get(format!("{}/metrics", s.admin)).await.unwrap().text().await.unwrap();
    for series in [
        "chatmesh_gateway_requests_total{route=\"/service/message_transmit/new_message\",outcome=\"success\"}",
        "chatmesh_rpc_client_duration_seconds_count{rpc=\"/bite_im.MsgTransmitService/GetTransmitTarget\",code=\"OK\"}",
        "chatmesh_rpc_server_duration_seconds_count{rpc=\"/bite_im.MsgTransmitService/GetTransmitTarget\",code=\"OK\"}",
        "chatmesh_queue_lag_seconds_count",
        "chatmesh_storage_batch_size_bucket{le=\"1\"}",
        "chatmesh_storage_batch_duration_seconds_count{outcome=\"success\"}",
        "chatmesh_gateway_push_seconds_count{path=\"remote\"}",
        "chatmesh_gateway_push_seconds_count{path=\"local\"}",
        "chatmesh_gateway_websockets",
        "chatmesh_search_index_failures_total{what=\"messages\"}",
    ] {
        assert!(scrape.lines().any(|l| l.starts_with(series)), "{series} is not in the scrape:\n{scrape}");
    }
    assert_eq!(sample(&scrape, "chatmesh_gateway_websockets"), Some(2.0), "B's two sockets");
    assert!(sample(&scrape, "chatmesh_queue_lag_seconds_count").unwrap() >= 1.0);

    // Every metric the shipped dashboards and alerts query is one the services export.
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/chatmesh-operator");
    let mut queried = String::new();
    for file in ["dashboards/gateway.json", "dashboards/mesh.json", "templates/prometheusrule.yaml"] {
        queried += &std::fs::read_to_string(format!("{chart}/{file}")).unwrap();
    }
    let exported: Vec<&str> = scrape.lines().filter(|l| !l.starts_with('#')).map(metric_name).collect();
    let sources = services_source();
    for name in metric_names(&queried) {
        if name.starts_with("chatmesh_operator_") {
            continue; // the operator's, not the services'
        }
        let base = ["_bucket", "_count", "_sum"].iter().fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        // Counters of failures exist only once one happened: those are looked up in the code.
        if FAILURE_ONLY.contains(&base) {
            assert!(sources.contains(&format!("\"{base}\"")), "{base} is not exported by any service");
            continue;
        }
        assert!(exported.contains(&name.as_str()), "the chart queries {name}, which the scrape lacks");
    }
    second.stop().await;
    s.stop().await;

    // Standalone, the queue is a database table (or memory, in tests): the same chain.
    for queue in ["database://", "memory://"] {
        let flag = format!("--amqp-url={queue}");
        let s = Stack::start_with(Backend::Standalone, &[flag.as_str()]).await.unwrap();
        let (a, b) = (support::person(&s, "trA").await, support::person(&s, "trB").await);
        let chat = support::befriend(&s.client, &a, &b).await;
        s.client.send_text(&a.session, &chat, "traced standalone").await.unwrap();
        let trace = wait_for_trace(&collector, &["storage.store"], &mut seen).await;
        trace.assert_send_chain();
        s.stop().await;
    }
}

const SEND: &str = "/service/message_transmit/new_message";

/// The first trace rooted at a send, not in `seen`, that has spans named `needs` (added to `seen`).
async fn wait_for_trace(collector: &Collector, needs: &[&str], seen: &mut Vec<Vec<u8>>) -> Trace {
    for _ in 0..100 {
        let traces = support::TRACES.get().expect("the stack set up tracing");
        tokio::task::block_in_place(|| traces.flush());
        let spans = collector.spans.lock().unwrap().clone();
        let complete =
            |trace_id: &Vec<u8>| needs.iter().all(|n| spans.iter().any(|s| &s.trace_id == trace_id && s.name == *n));
        let root = spans.iter().find(|s| s.name == SEND && !seen.contains(&s.trace_id) && complete(&s.trace_id));
        if let Some(root) = root {
            let trace_id = root.trace_id.clone();
            seen.push(trace_id.clone());
            let spans = spans.into_iter().filter(|s| s.trace_id == trace_id).map(|s| (s.span_id.clone(), s)).collect();
            return Trace { spans };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the collector received no complete trace of a send with {needs:?}");
}

/// Counters that appear only after the failure they count.
const FAILURE_ONLY: &[&str] = &[
    "chatmesh_mesh_refused_total",
    "chatmesh_mesh_handshake_failures_total",
    "chatmesh_backend_reconnects_total",
    "chatmesh_speech_worker_restarts_total",
    "chatmesh_gateway_websocket_evictions_total",
];

fn metric_name(line: &str) -> &str {
    line.split(['{', ' ']).next().unwrap_or_default()
}

/// The value of the first sample of `series` (exact name, any labels).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().filter(|l| metric_name(l) == series).find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `chatmesh_*` names in PromQL text.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("chatmesh_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Every Rust source under services/, concatenated.
fn services_source() -> String {
    fn walk(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                *out += &std::fs::read_to_string(&path).unwrap();
            }
        }
    }
    let mut out = String::new();
    walk(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../services")), &mut out);
    out
}
