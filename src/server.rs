//! The HTTP endpoints for operators: `/metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (state loaded,
//! partitions assigned, broker acknowledging). They only read.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::kafka::pipeline::Health;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Binds `listen` now, so a taken port fails at startup, and returns the
/// server to spawn with its bound address.
pub async fn bind(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> anyhow::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!(
            "config: key `metrics.listen` = {listen}: cannot listen there: {e}"
        )
    })?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .with_state(Shared { metrics, health });
    Ok((bound, async move { axum::serve(listener, app).await }))
}

async fn metrics_text(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
}

async fn readiness(State(shared): State<Shared>) -> impl IntoResponse {
    let reasons = shared.health.not_ready_reasons();
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join(", ")),
        )
    }
}
