//! Prometheus metrics of the reconciler, served at `/metrics` with `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::Error;

const RECONCILES: &str = "chatmesh_operator_reconciles_total";
const ERRORS: &str = "chatmesh_operator_reconcile_errors_total";
const DURATION: &str = "chatmesh_operator_reconcile_duration_seconds";
const CERTIFICATES: &str = "chatmesh_operator_certificates_issued_total";

/// The process-wide recorder; every call returns the same handle.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.into()), &buckets)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed (tests); the handle still renders ours.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Records one reconcile pass.
pub fn reconciled(duration: Duration, result: Result<(), &Error>) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(RECONCILES, "result" => outcome).increment(1);
    metrics::histogram!(DURATION).record(duration.as_secs_f64());
    if let Err(err) = result {
        metrics::counter!(ERRORS, "error" => err.metric_label()).increment(1);
    }
}

/// Records a service certificate issued by the internal CA, by why (`missing`, `expiring`, ...:
/// a short fixed set).
pub fn certificate_issued(reason: &'static str) {
    metrics::counter!(CERTIFICATES, "reason" => reason).increment(1);
}

/// Set once the operator has reached the API server and found its CRD.
pub static READY: AtomicBool = AtomicBool::new(false);

/// Serves `/healthz` (the process runs), `/readyz` (it can reconcile) and `/metrics`.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|| async {
                if READY.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .route("/metrics", get(|| async { handle().render() }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_are_counted_and_timed() {
        let handle = handle();
        reconciled(Duration::from_millis(30), Ok(()));
        reconciled(Duration::from_millis(30), Err(&Error::NoNamespace("x".into())));
        let text = handle.render();
        assert!(text.contains(r#"chatmesh_operator_reconciles_total{result="ok"}"#), "{text}");
        assert!(text.contains(r#"chatmesh_operator_reconcile_errors_total{error="no_namespace"} 1"#), "{text}");
        assert!(text.contains(r#"chatmesh_operator_reconcile_duration_seconds_bucket{le="0.05"}"#), "{text}");
    }
}
