//! The ingress's admin listener (`--admin ADDR`, loopback only): the dead
//! letters of a pipeline whose queues live in this process (memory and tcp
//! backends), the same actions as `sluice-web-ingress dlq` on Redis.
//!
//! ```text
//! GET  /dlq[?limit=N&payloads=true]                      the listing (text)
//! POST /dlq/redrive {"ids": […] | "all": true, "interface", "caller", "followMoved", "dryRun"}
//! POST /dlq/purge   {"ids": […] | "all": true, "dryRun"}
//! ```
//!
//! Whoever reaches the address may act on every dead letter and sign
//! requests with the process's keys: it is bound to loopback only, never
//! served on `--listen`, and off unless asked for. Answers are text, one
//! line per letter, as the command prints them; a refusal is `400` with the
//! reason, a backend failure `503` with what was done before it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::dead_letters::DeadLetters;
use crate::dlq_command::{act, Act, ActError, Pick};

/// Largest request body the admin endpoints read.
const MAX_BODY: usize = 64 << 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    payloads: bool,
}

fn default_limit() -> usize {
    100
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RedriveBody {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
    interface: Option<String>,
    caller: Option<String>,
    #[serde(default)]
    follow_moved: bool,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PurgeBody {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    dry_run: bool,
}

/// The admin routes over `letters`.
pub fn router(letters: Arc<DeadLetters>) -> Router {
    Router::new()
        .route("/dlq", get(list))
        .route("/dlq/redrive", post(redrive))
        .route("/dlq/purge", post(purge))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(letters)
}

/// Serves [`router`] on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    letters: Arc<DeadLetters>,
    stop: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    let served = axum::serve(listener, router(letters))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, admin = ?addr, "admin listener ended");
    }
}

/// Binds `addr` for the admin listener: loopback only.
///
/// # Errors
/// A non-loopback address, or the port cannot be bound.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    sluice_platform::tcp::require_loopback("--admin", addr)?;
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--admin: cannot listen on {addr}: {e}"))
}

async fn list(
    State(d): State<Arc<DeadLetters>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return refused("the query takes limit=N and payloads=true|false");
    };
    answer(
        act(
            &d,
            Act::List {
                limit: q.limit,
                payloads: q.payloads,
            },
        )
        .await,
    )
}

async fn redrive(State(d): State<Arc<DeadLetters>>, body: Bytes) -> Response {
    let b: RedriveBody = match json(&body) {
        Ok(b) => b,
        Err(why) => return refused(&why),
    };
    answer(
        act(
            &d,
            Act::Redrive {
                pick: Pick {
                    ids: b.ids,
                    all: b.all,
                },
                interface: b.interface,
                caller: b.caller,
                follow_moved: b.follow_moved,
                dry_run: b.dry_run,
            },
        )
        .await,
    )
}

async fn purge(State(d): State<Arc<DeadLetters>>, body: Bytes) -> Response {
    let b: PurgeBody = match json(&body) {
        Ok(b) => b,
        Err(why) => return refused(&why),
    };
    answer(
        act(
            &d,
            Act::Purge {
                pick: Pick {
                    ids: b.ids,
                    all: b.all,
                },
                dry_run: b.dry_run,
            },
        )
        .await,
    )
}

fn json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    if body.len() > MAX_BODY {
        return Err("the body is larger than 64 KiB".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("the body: {e}"))
}

fn refused(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
}

fn answer(r: Result<String, ActError>) -> Response {
    match r {
        Ok(text) => (StatusCode::OK, text).into_response(),
        Err(ActError::Refused(why)) => refused(&why),
        Err(ActError::Stopped { done, error }) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{done}{error}\n")).into_response()
        }
    }
}
