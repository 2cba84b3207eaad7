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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends one raw HTTP/1.1 request and returns the status line.
    async fn status_line(address: SocketAddr, method: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: trailspike\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response.lines().next().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn binds_where_told_and_answers_only_reads() {
        let health = Arc::new(Health::default());
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (bound, server) = bind(listen, Arc::new(Metrics::new()), health.clone())
            .await
            .unwrap();
        assert_eq!(bound.ip(), listen.ip());
        let server = tokio::spawn(server);

        assert_eq!(
            status_line(bound, "GET", "/metrics").await,
            "HTTP/1.1 200 OK"
        );
        assert_eq!(
            status_line(bound, "GET", "/healthz").await,
            "HTTP/1.1 200 OK"
        );
        assert_eq!(
            status_line(bound, "GET", "/readyz").await,
            "HTTP/1.1 503 Service Unavailable"
        );
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            for path in ["/metrics", "/healthz", "/readyz"] {
                assert_eq!(
                    status_line(bound, method, path).await,
                    "HTTP/1.1 405 Method Not Allowed",
                    "{method} {path}"
                );
            }
        }
        assert_eq!(
            status_line(bound, "GET", "/").await,
            "HTTP/1.1 404 Not Found"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_taken_address_fails_naming_the_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let error = bind(
            address,
            Arc::new(Metrics::new()),
            Arc::new(Health::default()),
        )
        .await
        .err()
        .expect("a second listener on a taken port");
        assert!(error.to_string().contains("metrics.listen"), "{error}");
    }
}
