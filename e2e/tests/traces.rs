//! One message's path is one trace: an OTLP collector in this test receives the spans of a send
//! on the real backends and checks the parent/child chain crosses gRPC, RabbitMQ and the Redis
//! bus to a second gateway. (One test per binary: tracing is set up once per process.)

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
    let (_, a) = s.user("trA").await;
    let (_, b) = s.user("trB").await;
    let b_id = s.client.user_info(&b).await.unwrap().user_id;
    let a_id = s.client.user_info(&a).await.unwrap().user_id;
    let event = s.client.apply(&a, &b_id).await.unwrap();
    s.client.process(&b, &event, &a_id, true).await.unwrap();
    let chat = s.client.chat_sessions(&a).await.unwrap().into_iter().next().unwrap().chat_session_id;
    // B is connected to the second gateway only: the push must cross the Redis bus.
    let mut b_ws = far.notifications("/ws", &b).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // presence recorded
    s.client.send_text(&a, &chat, "traced").await.unwrap();
    b_ws.expect(NotifyType::ChatMessageNotify, Duration::from_secs(10)).await;

    let route = "/service/message_transmit/new_message";
    let mut found = None;
    for _ in 0..100 {
        let traces = support::TRACES.get().expect("the stack set up tracing");
        tokio::task::block_in_place(|| traces.flush());
        let spans = collector.spans.lock().unwrap().clone();
        let stored = spans.iter().any(|s| s.name == "storage.store");
        let delivered = spans.iter().any(|s| s.name == "push.deliver");
        if let Some(root) = spans.iter().find(|s| s.name == route).filter(|_| stored && delivered) {
            let trace_id = root.trace_id.clone();
            let spans = spans.into_iter().filter(|s| s.trace_id == trace_id).map(|s| (s.span_id.clone(), s)).collect();
            found = Some(Trace { spans });
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let trace = found.expect("the collector received the send's spans");
    let request = trace.named(route, SpanKind::Server);
    assert!(request.parent_span_id.is_empty(), "the gateway request is the root");
    let rpc = "/bite_im.MsgTransmitService/GetTransmitTarget";
    let client = trace.named(rpc, SpanKind::Client);
    let server = trace.named(rpc, SpanKind::Server);
    trace.assert_child(client, request);
    assert_eq!(server.parent_span_id, client.span_id, "gRPC metadata carried the context");
    let publish = trace.spans.values().find(|s| s.kind == SpanKind::Producer as i32 && s.name.ends_with(" publish"));
    let publish = publish.unwrap_or_else(|| panic!("no queue publish span: {:?}", trace.names()));
    trace.assert_child(publish, server);
    let consume = trace.spans.values().find(|s| s.kind == SpanKind::Consumer as i32 && s.name.ends_with(" process"));
    let consume = consume.unwrap_or_else(|| panic!("no queue consume span: {:?}", trace.names()));
    assert_eq!(consume.parent_span_id, publish.span_id, "the message headers carried the context");
    trace.assert_child(trace.named("storage.store", SpanKind::Internal), consume);
    let routed = trace.named("push.route", SpanKind::Producer);
    trace.assert_child(routed, request);
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
        "chatmesh_gateway_websockets",
        "chatmesh_search_index_failures_total{what=\"messages\"}",
    ] {
        assert!(scrape.lines().any(|l| l.starts_with(series)), "{series} is not in the scrape:\n{scrape}");
    }
    assert_eq!(sample(&scrape, "chatmesh_gateway_websockets"), Some(1.0), "B's one socket");
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
