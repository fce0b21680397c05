//! The operator's own HTTP endpoints: `/metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (it reached the API
//! server at start, so it is configured correctly, and its StreamPipeline
//! watch has not been failing for over a minute).
//!
//! A standby replica waiting for the leader lease is ready too: readiness
//! gates only the metrics Service, and a standby must not be restarted for
//! waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// What the endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// Set once the API server answered.
    pub ready: AtomicBool,
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.render(),
    )
}

/// A StreamPipeline watch failing this long makes the operator unready:
/// retries go on, but nothing is being reconciled.
pub const WATCH_FAILURE_GRACE: Duration = Duration::from_secs(60);

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    readiness(h.ready.load(Ordering::Relaxed), h.metrics.watch_failing())
}

/// `/readyz`'s answer: connected, and the watch not failing for long.
fn readiness(connected: bool, watch_failing: Option<(Duration, String)>) -> (StatusCode, String) {
    if !connected {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the API server yet".to_string(),
        );
    }
    match watch_failing {
        Some((for_, error)) if for_ >= WATCH_FAILURE_GRACE => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the StreamPipeline watch has failed for {}s: {error}",
                for_.as_secs()
            ),
        ),
        _ => (StatusCode::OK, "ok".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_failing_past_the_grace_makes_the_operator_unready() {
        assert_eq!(readiness(false, None).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(readiness(true, None).0, StatusCode::OK);
        let brief = Some((Duration::from_secs(5), "403".to_string()));
        assert_eq!(readiness(true, brief).0, StatusCode::OK);
        let (code, text) = readiness(true, Some((WATCH_FAILURE_GRACE, "forbidden".into())));
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.contains("forbidden"), "{text}");
    }
}
