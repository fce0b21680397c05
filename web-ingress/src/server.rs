//! The HTTP surface: one POST route per HTTP interface (and the GET that
//! fetches its stored answers), one WebSocket upgrade route per WebSocket
//! interface (see `websocket`), one POST route per GraphQL interface (see
//! `graphql`), plus `/healthz`, `/readyz` and `/metrics`.
//!
//! ```text
//! request ─▶ slot free? (429) ─▶ paused/backlog/backend (503) ─▶ body ≤ limit (413) by its deadline (408)
//!         ─▶ JSON depth/elements (400/413) ─▶ JSON (400) ─▶ take the in-flight slot (429)
//!         ─▶ register waiter ─▶ ingress-group nodes in process ─▶ sign + push to the first worker queue
//!         ─▶ await reply until the timeout (504) ─▶ 200 with the terminal node's output
//! ```
//!
//! The in-flight slot is taken once the body is read and parsed, not
//! before: a client trickling its body holds no slot, so it cannot starve
//! the interface's callers, and is answered 408 at the body deadline.
//! Memory stays bounded without the slot: buffered bodies hold the
//! process's body budget (see `body`). The interface timeout counts from
//! the request's head, so body and processing together never exceed it.
//!
//! Spans (when trace export is on): `POST <path>` (server, child of the
//! caller's `traceparent` if valid) → `send <group>` (producer; its context
//! travels in the signed envelope) … worker spans … → `receive reply`
//! (consumer, from the moment the worker signed the reply).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::PathRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Json, Router};
use sluice_crds::{InterfaceKind, InterfacePlan};
use sluice_platform::clock::now_ms;
use sluice_platform::telemetry::Span;

use crate::admission::admit_body;
use crate::async_answers;
use crate::call::{self, Answer, Call};
use crate::error::{error_response, rate_limited, unavailable, ApiError};
use crate::idempotency::{self, ClaimGuard};
use crate::listener::ConnectionHold;
use crate::request::{caller_request_id, server_span};
pub use crate::state::{AppState, Backlog};
use crate::{sse, websocket};

/// The router for `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    for it in &state.plan.interfaces {
        let name = it.name.as_str();
        r = match it.kind {
            InterfaceKind::Graphql => r.route(
                &it.path,
                post_to(name, TAKES_GRAPHQL, |s, name, req| async move {
                    crate::graphql::handle(s, &name, req).await
                }),
            ),
            InterfaceKind::Sse => r
                .route(
                    &it.path,
                    post_to(name, TAKES_POST, |s, name, req| async move {
                        sse::post(s, &name, req).await
                    }),
                )
                .route(
                    &sse::events_route(it),
                    get_by_id(name, TAKES_EVENTS, |s, name, id, headers| async move {
                        sse::resume(s, &name, &id, &headers).await
                    }),
                ),
            InterfaceKind::Websocket => {
                let name = it.name.clone();
                r.route(
                    &it.path,
                    get(
                        move |State(s): State<Arc<AppState>>,
                              ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
                              hold: Option<Extension<ConnectionHold>>,
                              headers: HeaderMap| async move {
                            let hold = hold.map(|Extension(h)| h);
                            websocket::upgrade(s, name, ws.ok(), headers, hold).await
                        },
                    )
                    .fallback(|req| method_not_allowed(req, TAKES_WEBSOCKET)),
                )
            }
            InterfaceKind::Http => r
                .route(
                    &it.path,
                    post_to(name, TAKES_POST, |s, name, req| async move {
                        handle(s, &name, req).await
                    }),
                )
                .route(
                    &async_answers::route(it),
                    get_by_id(name, TAKES_POST, |s, name, id, headers| async move {
                        async_answers::fetch(s, &name, &id, &headers).await
                    }),
                ),
        };
    }
    r.fallback(not_found).with_state(state)
}

/// `POST` on an interface's path: `serve(state, interface, request)`; any
/// other method is answered 405 with what the interface `takes`.
fn post_to<F, Fut>(name: &str, takes: &'static str, serve: F) -> MethodRouter<Arc<AppState>>
where
    F: Fn(Arc<AppState>, String, Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let name = name.to_string();
    post(move |State(s): State<Arc<AppState>>, req: Request| serve(s, name.clone(), req))
        .fallback(move |req| method_not_allowed(req, takes))
}

/// `GET <path>/requests/{id}…`: `serve(state, interface, id, headers)`. An
/// id that is not even text (`%ff`) is no id: it reaches `serve` empty,
/// which answers 404.
fn get_by_id<F, Fut>(name: &str, takes: &'static str, serve: F) -> MethodRouter<Arc<AppState>>
where
    F: Fn(Arc<AppState>, String, String, HeaderMap) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let name = name.to_string();
    get(
        move |State(s): State<Arc<AppState>>,
              id: Result<Path<String>, PathRejection>,
              headers: HeaderMap| {
            let id = id.map(|Path(id)| id).unwrap_or_default();
            serve(s, name.clone(), id, headers)
        },
    )
    .fallback(move |req| method_not_allowed(req, takes))
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if !s.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if !s.reached_backend.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the backend has not answered yet",
        )
            .into_response();
    }
    match s.tcp.as_ref().and_then(|t| t.problem()) {
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
        None => (StatusCode::OK, "ready").into_response(),
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let body = sluice_platform::metrics::render(&s.registry);
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    let rid = caller_request_id(req.headers()).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no interface at {}", req.uri().path()),
        &rid,
    )
}

/// `405` with what the interface does take.
async fn method_not_allowed(req: Request, takes: &'static str) -> ApiError {
    let rid = caller_request_id(req.headers()).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        takes,
        &rid,
    )
}

const TAKES_POST: &str = "interfaces accept POST with a JSON body";
const TAKES_GRAPHQL: &str =
    "this interface is GraphQL: POST {\"query\", \"variables\", \"operationName\"}";
const TAKES_EVENTS: &str = "a stream is resumed with GET (and Last-Event-ID)";
const TAKES_WEBSOCKET: &str =
    "this interface is a WebSocket: open it with GET and Upgrade: websocket";

async fn handle(s: Arc<AppState>, name: &str, req: Request) -> Response {
    let started = Instant::now();
    let cid = uuid::Uuid::new_v4().to_string();
    let rid = caller_request_id(req.headers()).unwrap_or_else(|| cid.clone());
    let it = s.interface(name);
    let span = server_span(&s, it, &cid, &rid, req.headers());
    let result = serve(&s, it, &span, &cid, &rid, req).await;
    let mut resp = match result {
        Ok(Answer::Now(v)) => (StatusCode::OK, Json(v)).into_response(),
        Ok(Answer::Later(id)) => async_answers::accepted(it, &id),
        // Only an sse interface's requests are streamed.
        Ok(Answer::Following(_)) => {
            error_response(crate::error::internal("a request was streamed", &rid))
        }
        Err(e) => {
            span.set("error.type", e.code);
            error_response(e)
        }
    };
    span.set(
        "http.response.status_code",
        i64::from(resp.status().as_u16()),
    );
    if resp.status().is_server_error() {
        span.fail(resp.status().canonical_reason().unwrap_or("server error"));
    }
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    s.interface_metrics[&it.name].answered(status, elapsed);
    // One line per request, at debug: failures the service itself caused
    // are logged at warn where they happen, with the same request id.
    tracing::debug!(request_id = %rid, interface = %it.name, status, elapsed_ms = elapsed.as_millis() as u64, "request");
    resp
}

async fn serve(
    s: &AppState,
    it: &InterfacePlan,
    span: &Span,
    cid: &str,
    rid: &str,
    req: Request,
) -> Result<Answer, ApiError> {
    // Admission, cheapest check first. The deadline counts from here: the
    // body's time is part of the interface timeout.
    let caller = s.callers.identify(&it.name, req.headers(), rid)?;
    if let Err(wait) = s.rate_limits.take(&it.name, &caller) {
        return Err(rate_limited(wait, rid));
    }
    let later = async_answers::wanted(it, req.headers());
    let idempotency_key = idempotency::key_of(req.headers(), rid)?;
    let timeout_of_request = if later { it.async_timeout } else { it.timeout };
    let deadline = now_ms().saturating_add(timeout_of_request.as_millis() as u64);
    let (input, _slot) = admit_body(s, it, rid, req.into_body()).await?;
    let idempotent = idempotency_key.map(|k| (k, idempotency::body_digest(&input)));
    // Answers of asynchronous and idempotent requests are stored, to be
    // fetched (or found by a repeat) later. A repeat is answered here,
    // before it costs any budget or runs any node.
    let job = (later || idempotent.is_some()).then(|| async_answers::JobId::new(deadline));
    let address = job.as_ref().map(|j| j.address(&caller));
    let mut claimed = None;
    if let (Some((key, body)), Some(address)) = (&idempotent, &address) {
        let claim = idempotency::Claim {
            body: body.clone(),
            address: address.clone(),
            deadline,
        };
        let scoped = crate::auth::scoped(&caller, key);
        let store_key = s.keys.idempotency(&it.name, &idempotency::digest(&scoped));
        let keep = Duration::from_millis(deadline.saturating_sub(now_ms())).saturating_add(
            idempotency::kept_after_deadline(s.plan.results_ttl, s.plan.security.clock_skew),
        );
        match s.store.set_nx(&store_key, &claim.to_value(), keep).await {
            Ok(None) => claimed = Some(ClaimGuard::new(s.store.clone(), store_key)),
            Ok(Some(first)) => {
                return idempotency::repeated(s, it, &claim, &first, rid)
                    .await
                    .map(Answer::Now)
            }
            Err(e) => {
                tracing::warn!(request_id = %rid, error = %e, "idempotency key store failed");
                return Err(unavailable(rid));
            }
        }
    }
    call::run(
        s,
        it,
        span,
        Call {
            entry: &it.entry,
            cid,
            rid,
            input,
            deadline,
            timeout: timeout_of_request,
            later,
            job,
            address,
            claimed,
            streamed: None,
        },
    )
    .await
}
