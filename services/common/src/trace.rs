//! Distributed traces: OpenTelemetry spans exported over OTLP/gRPC (off unless an endpoint is
//! set), and the W3C `traceparent` carried across every hop (gRPC metadata, queue message
//! headers, the gateways' push envelopes) so one message's path is one trace. The RPC layers here
//! also count and time every internal call, client and server side.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::codegen::http;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and message header, and envelope field) a trace context travels in.
pub const TRACEPARENT: &str = "traceparent";

#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// OTLP/gRPC collector that receives traces, e.g. `http://otel-collector:4317`. Without
    /// it no spans are exported (trace context is still passed on).
    #[arg(long, env = "CHATMESH_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded, 0 to 1; a request whose caller's trace is sampled is
    /// always recorded, so a trace is kept whole or not at all.
    #[arg(long, env = "CHATMESH_TRACE_SAMPLE_RATIO", default_value_t = 1.0, value_parser = sample_ratio)]
    pub trace_sample_ratio: f64,
}

fn sample_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0 and 1")),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter: {0}")]
pub struct TraceError(String);

/// The span pipeline; [`Traces::shutdown`] flushes what is buffered.
pub struct Traces {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Traces {
    /// A tracer exporting to `args.otlp_endpoint` as `service` (must run inside Tokio).
    pub fn start(args: &TraceArgs, service: &str) -> Result<Option<Self>, TraceError> {
        use opentelemetry_otlp::WithExportConfig;
        use opentelemetry_sdk::trace::Sampler;
        let Some(endpoint) = &args.otlp_endpoint else { return Ok(None) };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| TraceError(e.to_string()))?;
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(args.trace_sample_ratio)));
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        Ok(Some(Self { provider }))
    }

    pub(crate) fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        use opentelemetry::trace::TracerProvider as _;
        self.provider.tracer("chatmesh")
    }

    /// Exports what is buffered (blocking; call off the async workers).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("chatmesh: flushing traces failed: {e}");
        }
    }

    /// Exports what is buffered now, keeping the pipeline (blocking).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

/// The W3C `traceparent` of `span`, when it belongs to a trace (tracing to OTLP is on).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut map);
    map.remove(TRACEPARENT)
}

/// Makes `span` a child of the remote span that `traceparent` names (ignored when malformed).
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(value) = traceparent else { return };
    let carrier = HashMap::from([(TRACEPARENT.to_string(), value.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to the remote span `traceparent` names (a batch has one parent, many causes).
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let remote = cx.span().span_context().clone();
    if remote.is_valid() {
        span.add_link(remote);
    }
}

/// Records the span's trace id in its `trace_id` field, so JSON logs inside it carry it.
pub fn record_trace_id(span: &tracing::Span) {
    let id = span.context().span().span_context().trace_id();
    if id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(id));
    }
}

struct Headers<'a>(&'a mut http::HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(key), http::HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

struct ReadHeaders<'a>(&'a http::HeaderMap);

impl Extractor for ReadHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The gRPC status of a response: `grpc-status` in its headers (trailers-only answers, i.e.
/// errors), else OK (a streamed answer's status comes later, in trailers).
fn status_of(headers: &http::HeaderMap) -> &'static str {
    let code = headers.get("grpc-status").map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes()));
    code_name(code)
}

pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The client side of every internal call: a span whose context travels in the request's
/// `traceparent`, and `chatmesh_rpc_client_duration_seconds{rpc,code}`.
#[derive(Debug, Clone)]
pub struct TraceClient<S> {
    inner: S,
}

impl<S> TraceClient<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for TraceClient<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError> + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = tower::BoxError;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let rpc = request.uri().path().to_string();
        let span = client_span(&rpc);
        TraceContextPropagator::new().inject_context(&span.context(), &mut Headers(request.headers_mut()));
        let call = self.inner.call(request);
        let started = Instant::now();
        Box::pin(
            async move {
                let result = call.await.map_err(Into::into);
                let code = match &result {
                    Ok(rsp) => status_of(rsp.headers()),
                    Err(e) if e.is::<tower::timeout::error::Elapsed>() => "DEADLINE_EXCEEDED",
                    Err(_) => "UNAVAILABLE",
                };
                timed(Side::Client, rpc, code, started);
                result
            }
            .instrument(span),
        )
    }
}

/// The span of a gRPC call on the caller's side.
pub(crate) fn client_span(rpc: &str) -> tracing::Span {
    tracing::info_span!("grpc.client", otel.name = rpc, otel.kind = "client", rpc.method = rpc)
}

/// The span of a gRPC call on the serving side (its trace id is recorded once its parent is set).
pub(crate) fn server_span(rpc: &str) -> tracing::Span {
    tracing::info_span!(
        "grpc.server",
        otel.name = rpc,
        otel.kind = "server",
        rpc.method = rpc,
        trace_id = tracing::field::Empty,
    )
}

/// Which histogram a call counts in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    Client,
    Server,
}

/// Counts one call in `chatmesh_rpc_{client,server}_duration_seconds{rpc,code}`.
pub(crate) fn timed(side: Side, rpc: impl Into<metrics::SharedString>, code: &'static str, started: Instant) {
    let name = match side {
        Side::Client => "chatmesh_rpc_client_duration_seconds",
        Side::Server => "chatmesh_rpc_server_duration_seconds",
    };
    metrics::histogram!(name, "rpc" => rpc.into(), "code" => code).record(started.elapsed().as_secs_f64());
}

/// The server side: every request runs in a span that continues the caller's trace, and is
/// counted in `chatmesh_rpc_server_duration_seconds{rpc,code}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceServerLayer;

impl<S> tower::Layer<S> for TraceServerLayer {
    type Service = TraceServer<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceServer { inner }
    }
}

#[derive(Debug, Clone)]
pub struct TraceServer<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for TraceServer<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = request.uri().path().to_string();
        let span = server_span(&rpc);
        let parent = TraceContextPropagator::new().extract(&ReadHeaders(request.headers()));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        record_trace_id(&span);
        let call = span.in_scope(|| self.inner.call(request));
        let started = Instant::now();
        Box::pin(
            async move {
                let result = call.await;
                let code = match &result {
                    Ok(rsp) => status_of(rsp.headers()),
                    Err(_) => "INTERNAL",
                };
                timed(Side::Server, rpc, code, started);
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_ratios_outside_zero_to_one_are_refused() {
        assert_eq!(sample_ratio("0.25"), Ok(0.25));
        assert!(sample_ratio("1.5").is_err());
        assert!(sample_ratio("-0.1").is_err());
        assert!(sample_ratio("half").is_err());
    }

    #[test]
    fn error_statuses_are_read_from_the_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(status_of(&h), "OK");
        h.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert_eq!(status_of(&h), "UNAVAILABLE");
    }
}
