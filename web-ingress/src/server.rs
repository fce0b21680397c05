//! The HTTP surface: one POST route per interface, plus `/healthz`,
//! `/readyz` and `/metrics`.
//!
//! ```text
//! request ─▶ slot free? (429) ─▶ backlog/backend (503) ─▶ body ≤ limit (413) by its deadline (408)
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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use sluice_crds::InterfacePlan;
use sluice_exec_worker::worker::{DEAD_LETTER_RETENTION, KEY_MISSING_MESSAGE};
use sluice_exec_worker::{Crash, NodeContext, StepOutcome};
use sluice_platform::clock::{from_ms, now_ms};
use sluice_platform::signing::{max_entry_bytes, oversized_output};
use sluice_platform::telemetry::{self, Span};
use sluice_platform::{Envelope, Kind};

use crate::admission::{admit_backlog, admit_replay_budget};
use crate::async_answers;
use crate::body::{self, BodyError};
use crate::error::{
    error_response, from_reply, status_of_reply_code, too_many_requests, unavailable, ApiError,
};
use crate::idempotency::{self, ClaimGuard};
use crate::json_scan::{self, ShapeError};
use crate::metrics::{InterfaceLabel, RequestLabel};
pub use crate::state::{AppState, Backlog};

/// Caller-supplied request ids are kept only when they are short printable
/// ASCII, so they are safe in headers, logs and JSON.
fn caller_request_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("x-request-id")?.to_str().ok()?;
    (!v.is_empty() && v.len() <= 128 && v.bytes().all(|c| c.is_ascii_graphic()))
        .then(|| v.to_string())
}

/// The router for `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    for it in &state.plan.interfaces {
        let name = it.name.clone();
        r = r.route(
            &it.path,
            post(
                move |State(s): State<Arc<AppState>>, req: Request| async move {
                    handle(s, &name, req).await
                },
            )
            .fallback(method_not_allowed),
        );
        let name = it.name.clone();
        r = r.route(
            &async_answers::route(it),
            get(
                move |State(s): State<Arc<AppState>>,
                      id: Result<Path<String>, PathRejection>,
                      headers: HeaderMap| async move {
                    // An id that is not even text (`%ff`) is no id: 404.
                    let id = id.map(|Path(id)| id).unwrap_or_default();
                    async_answers::fetch(s, &name, &id, &headers).await
                },
            )
            .fallback(method_not_allowed),
        );
    }
    r.fallback(not_found).with_state(state)
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
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

async fn method_not_allowed(req: Request) -> ApiError {
    let rid = caller_request_id(req.headers()).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "interfaces accept POST with a JSON body",
        &rid,
    )
}

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
    let request = RequestLabel {
        interface: it.name.clone(),
        status,
    };
    s.metrics.requests.get_or_create(&request).inc();
    let elapsed = started.elapsed();
    s.metrics
        .duration
        .get_or_create(&request)
        .observe(elapsed.as_secs_f64());
    // One line per request, at debug: failures the service itself caused
    // are logged at warn where they happen, with the same request id.
    tracing::debug!(request_id = %rid, interface = %it.name, status, elapsed_ms = elapsed.as_millis() as u64, "request");
    resp
}

/// The request's server span, continuing the caller's trace when its
/// `traceparent` header is valid.
fn server_span(
    s: &AppState,
    it: &InterfacePlan,
    cid: &str,
    rid: &str,
    headers: &HeaderMap,
) -> Span {
    if !telemetry::enabled() {
        return Span::none();
    }
    // An invalid header starts a new trace (checked once, in Span::start).
    let parent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let span = Span::start(format!("POST {}", it.path), telemetry::Kind::Server, parent);
    span.set("http.request.method", "POST");
    span.set("http.route", it.path.clone());
    span.set("sluice.pipeline", s.keys.pipeline().to_string());
    span.set("sluice.interface", it.name.clone());
    span.set("sluice.correlation_id", cid.to_string());
    span.set("sluice.request_id", rid.to_string());
    span
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
        let secs = u32::try_from(wait.as_secs().saturating_add(1)).unwrap_or(u32::MAX);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this caller's rate limit on this interface is reached (auth.rateLimit)",
            rid,
        )
        .retry_after(secs));
    }
    let later = async_answers::wanted(it, req.headers());
    let idempotency_key = idempotency::key_of(req.headers(), rid)?;
    let timeout_of_request = if later { it.async_timeout } else { it.timeout };
    let deadline = now_ms().saturating_add(timeout_of_request.as_millis() as u64);
    let slots = &s.slots[&it.name];
    let too_many = || too_many_requests(it, rid);
    // Checked now so a full interface costs no body read; taken below.
    if slots.available_permits() == 0 {
        return Err(too_many());
    }
    admit_backlog(s, it, rid)?;
    let input = read_input(s, it, rid, req.into_body()).await?;
    let idempotent = idempotency_key.map(|k| (k, idempotency::body_digest(&input)));
    let Ok(_slot) = slots.try_acquire() else {
        return Err(too_many());
    };
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
    admit_replay_budget(s, it, timeout_of_request, rid)?;
    let label = InterfaceLabel {
        interface: it.name.clone(),
    };
    let in_flight = s.metrics.in_flight.get_or_create(&label).clone();
    in_flight.inc();
    let _dec = scopeguard(move || {
        in_flight.dec();
    });

    let mut env = Envelope {
        kind: Kind::Request,
        pipeline: s.keys.pipeline().to_string(),
        dest: String::new(),
        cid: cid.to_string(),
        rid: rid.to_string(),
        trace: None,
        ts: 0,
        nonce: String::new(),
        deadline,
        attempt: 1,
        node: None,
        reply_to: Some(s.ingress_id.clone()),
        payload: Value::Null,
        error: None,
    };
    let timeout = || {
        s.metrics
            .timeouts
            .get_or_create(&InterfaceLabel {
                interface: it.name.clone(),
            })
            .inc();
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("no answer within {timeout_of_request:?}"),
            rid,
        )
    };

    // Nodes on the ingress group run here, before the first hop.
    let entry_group = &s.plan.nodes[&it.entry].group;
    let (group, node, payload) = if *entry_group == s.plan.ingress_group {
        let mut ctx = NodeContext {
            request_id: rid.to_string(),
            correlation_id: cid.to_string(),
            node: String::new(),
            deadline: from_ms(deadline),
            attempt: 1,
        };
        let mut outcome = s.executor.run(&it.entry, input.clone(), &ctx).await;
        // A retryable failure is tried again after a lease, as a worker's
        // entry would be redelivered, up to maxDeliveries and the deadline.
        let limits = &s.plan.limits;
        while matches!(&outcome, StepOutcome::Failed(e) if e.is_retryable())
            && ctx.attempt < limits.max_deliveries
            && now_ms() + (limits.lease.as_millis() as u64) < deadline
        {
            tokio::time::sleep(limits.lease).await;
            ctx.attempt += 1;
            outcome = s.executor.run(&it.entry, input.clone(), &ctx).await;
        }
        match outcome {
            // Answered here: nothing to fetch later, so it is answered now
            // (and an idempotency key claimed for it is released: the
            // answer is not stored).
            StepOutcome::Done(v) => return Ok(Answer::Now(v)),
            StepOutcome::Forward {
                node,
                group,
                payload,
            } => (group, node, payload),
            StepOutcome::Failed(e) => {
                let code = if e.is_retryable() {
                    "retries_exhausted"
                } else {
                    "node_failed"
                };
                return Err(ApiError::new(
                    status_of_reply_code(code),
                    code,
                    e.message(),
                    rid,
                ));
            }
            StepOutcome::Expired => return Err(timeout()),
            StepOutcome::Crashed(crash) => {
                env.dest = s.plan.ingress_group.clone();
                env.node = Some(it.entry.clone());
                env.payload = input;
                dead_letter_crash(s, &mut env, &crash).await;
                return Err(ApiError::new(
                    status_of_reply_code("node_crashed"),
                    "node_crashed",
                    crash.caller_message(),
                    rid,
                ));
            }
        }
    } else {
        (entry_group.clone(), it.entry.clone(), input)
    };
    env.dest = group.clone();
    env.node = Some(node);
    env.payload = payload;

    // Register before pushing: the reply may arrive before push returns.
    // An interface missing from the map (cannot happen: both come from the
    // plan) takes no reply at all rather than any.
    let mut waiter = match &address {
        None => {
            let senders = s.reply_senders.get(&it.name).cloned().unwrap_or_default();
            Some(s.waiters.register(cid, senders))
        }
        Some(address) => {
            // The answer's stream exists before the request does: workers
            // write replies only into streams that exist.
            let answers = s.keys.reply(address);
            if let Err(e) = s
                .replies
                .open(&answers, async_answers::retention(s, timeout_of_request))
                .await
            {
                tracing::warn!(request_id = %rid, error = %e, "cannot open the answer stream");
                return Err(unavailable(rid));
            }
            env.reply_to = Some(address.clone());
            None
        }
    };
    let stream = s.keys.queue(&group);
    let hop = span.child(format!("send {group}"), telemetry::Kind::Producer);
    hop.set("messaging.destination.name", stream.clone());
    hop.set("sluice.node", env.node.clone().unwrap_or_default());
    env.trace = hop.traceparent();
    let entry = match s.signer.sign(&mut env) {
        Ok(entry) => entry,
        Err(e) => {
            tracing::error!(request_id = %rid, error = %e, group, "cannot sign the request for its first hop");
            hop.fail("signing key missing");
            return Err(ApiError::new(
                status_of_reply_code("key_missing"),
                "key_missing",
                KEY_MISSING_MESSAGE,
                rid,
            ));
        }
    };
    // Only an ingress-group node's output can exceed it (the body was
    // checked); sent as it is, it would be refused unread and time out.
    let entry_limit = max_entry_bytes(s.plan.security.max_payload_bytes as usize);
    if entry.stored_len() > entry_limit {
        let message = oversized_output(&it.entry, entry.stored_len(), entry_limit);
        tracing::warn!(request_id = %rid, %message, "output refused");
        hop.fail("output too large");
        return Err(ApiError::new(
            status_of_reply_code("node_failed"),
            "node_failed",
            &message,
            rid,
        ));
    }
    // From here the entry may be queued even if this handler is dropped (a
    // caller gone mid-push): the key is kept unless the push says it failed,
    // so a retry never runs the request a second time.
    let claimed = claimed.map(ClaimGuard::kept);
    if let Err(e) = s.queue.push(&stream, entry).await {
        tracing::warn!(request_id = %rid, error = %e, group, "queue push failed");
        hop.fail("queue push failed");
        if let Some(c) = claimed {
            c.release();
        }
        return Err(unavailable(rid));
    }
    drop(hop);
    // No waiter: the answer is stored, at `address`.
    let Some(waiter) = waiter.as_mut() else {
        if later {
            return Ok(Answer::Later(
                job.expect("an asynchronous request has an id"),
            ));
        }
        // Idempotent and waited for: the answer is where a repeat finds it.
        let address = address.expect("no waiter: the answer is stored");
        return match async_answers::wait_stored(s, it, &address, deadline).await {
            Some(answer) => answer.map(Answer::Now),
            None => Err(timeout()),
        };
    };
    let left = Duration::from_millis(deadline.saturating_sub(now_ms()));
    match tokio::time::timeout(left, &mut waiter.rx).await {
        Err(_) | Ok(Err(_)) => Err(timeout()),
        Ok(Ok(reply)) => {
            receive_span(&reply);
            match reply.error {
                None => Ok(Answer::Now(reply.payload)),
                Some(e) => Err(from_reply(e, rid)),
            }
        }
    }
}

/// A node of the ingress group panicked on `env`'s request: the request
/// (as it entered, so replaying it reproduces the crash) goes to the
/// dead-letter stream like a worker's crashed entry. Best effort: the
/// caller is answered whether or not the write succeeds.
async fn dead_letter_crash(s: &AppState, env: &mut Envelope, crash: &Crash) {
    tracing::error!(
        request_id = %env.rid,
        cid = %env.cid,
        node = %crash.node,
        panic = %crash.panic,
        "node panicked; dead-lettering the request"
    );
    let entry = match s.signer.sign(env) {
        Ok(entry) => entry,
        Err(e) => {
            tracing::warn!(request_id = %env.rid, error = %e, "dead-letter record not written: no key to sign it");
            return;
        }
    };
    if let Err(e) = s
        .queue
        .push_capped(&s.keys.dead_letter(), entry, DEAD_LETTER_RETENTION)
        .await
    {
        tracing::warn!(request_id = %env.rid, error = %e, "dead-letter write failed");
    }
}

/// The reply's hop, from the worker signing it to this ingress taking it;
/// ends at once (the caller's answer is on the server span).
fn receive_span(reply: &Envelope) {
    if telemetry::enabled() {
        let signed = reply.ts.min(now_ms());
        let span = Span::start_at(
            "receive reply",
            telemetry::Kind::Consumer,
            reply.trace.as_deref(),
            Some(signed),
        );
        if reply.error.is_some() {
            span.fail("the pipeline answered with an error");
        }
    }
}

/// What a request is answered with.
enum Answer {
    /// The pipeline's answer.
    Now(Value),
    /// Queued; fetched later with this id.
    Later(async_answers::JobId),
}

/// Reads the body by its deadline (the shorter of `--body-timeout` and the
/// interface timeout), checks its JSON shape on the bytes, then parses it.
/// The bytes and their budget are released once the value is built.
async fn read_input(
    s: &AppState,
    it: &InterfacePlan,
    rid: &str,
    body: Body,
) -> Result<Value, ApiError> {
    let limit = s.plan.security.max_payload_bytes as usize;
    let started = tokio::time::Instant::now();
    let body_deadline = started + s.http.body_timeout.min(it.timeout);
    let body = body::read(body, limit, started, body_deadline, &s.body_budget)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("body exceeds {limit} bytes (security.maxPayloadBytes)"),
                rid,
            ),
            BodyError::TimedOut { after } => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {after:?} \
                     (--body-timeout, capped by the interface timeout)"
                ),
                rid,
            ),
            BodyError::Broken => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "could not read the request body",
                rid,
            ),
        })?;
    if body.bytes.is_empty() {
        return Ok(Value::Null);
    }
    json_scan::check(&body.bytes, s.http.max_json_depth, s.http.max_json_elements).map_err(
        |e| match e {
            ShapeError::TooDeep { limit } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "json_too_deep",
                format!("body nests arrays/objects deeper than {limit} (--max-json-depth)"),
                rid,
            ),
            ShapeError::TooManyElements { limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "json_too_many_elements",
                format!(
                    "body holds more than {limit} array items and object members \
                     (--max-json-elements)"
                ),
                rid,
            ),
        },
    )?;
    serde_json::from_slice(&body.bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("body is not JSON: {e}"),
            rid,
        )
    })
}

/// Runs `f` when dropped (the in-flight gauge must fall on every exit path,
/// including a caller hanging up).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    G(Some(f))
}
