//! `kind: sse` interfaces: a POST whose answer is streamed, as Server-Sent
//! Events or NDJSON, and the GET that resumes the stream on any ingress.
//!
//! ```text
//! POST <path> ─▶ admission as any POST ─▶ 200 text/event-stream (or application/x-ndjson)
//!   start {id, events}
//!   request: reply_to = async:<sha256(caller, id)> (the store), live = this ingress
//!   worker node emits ─▶ signed chunk {seq, attempt} ─▶ store + this ingress's reply stream
//!   chunk … chunk (in order, once each; reset when a new delivery starts over)
//!   result │ error
//! GET <path>/requests/<id>/events, Last-Event-ID: <attempt>.<seq>
//!   ─▶ the store, read from its start, verified; chunks after Last-Event-ID; then
//!      read again every ≤ 250 ms until the answer or the deadline
//! ```
//!
//! The live path takes chunks from the reply listener. A caller reading
//! slower than chunks come never slows the listener: a chunk it has no
//! room for is deferred, and read from the store when its turn comes. The
//! store keeps everything the request's timeout plus `results.ttl`, so a
//! caller that lost its connection resumes on any ingress pod.
//!
//! The caller's side (ordering, holding back, writing) is
//! `stream_caller`; reading the store is `stream_store`.
//!
//! Memory per stream is bounded by counts: 16 chunks waiting for the
//! caller, 16 held out of order, a 16-entry page of the store, 8 written
//! events in the response's buffer.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use sluice_crds::InterfacePlan;
use sluice_exec_worker::Chunks;
use sluice_platform::clock::now_ms;
use sluice_platform::telemetry::Span;
use sluice_platform::Envelope;
use tokio::sync::{Mutex, OwnedSemaphorePermit};

use crate::admission::admit_body;
use crate::async_answers::JobId;
use crate::call::{self, Answer, Call, Following, Streamed};
use crate::error::{
    error_response, internal, rate_limited, timed_out, too_many_requests, unavailable, ApiError,
};
use crate::metrics::InterfaceLabel;
use crate::request::caller_request_id;
use crate::state::{skew_ms, AppState};
use crate::stream_caller::{Caller, LocalChunks, Offered, Out, ROOM};
use crate::stream_events::{parse_chunk_id, Format, Order};
use crate::stream_store::{Page, Store};

/// Idle connections get a keep-alive this often.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A resumed stream reads the store at least this often while it waits.
const POLL_AT_MOST: Duration = Duration::from_millis(250);
/// How long past its deadline a stream may take to write its last event.
const LAST_WORDS: Duration = Duration::from_secs(2);
/// How long the store of a stream whose last event was written live is
/// kept: for a caller that lost the connection just then. One whose caller
/// went away before keeps the full retention (timeout + `results.ttl`).
const ANSWERED_GRACE: Duration = Duration::from_secs(5);

/// `POST <path>` of an sse interface.
pub async fn post(s: Arc<AppState>, name: &str, req: Request) -> Response {
    let started = Instant::now();
    let cid = uuid::Uuid::new_v4().to_string();
    let rid = caller_request_id(req.headers()).unwrap_or_else(|| cid.clone());
    let it = s.interface(name);
    let format = Format::of(req.headers());
    let span = crate::request::server_span(&s, it, &cid, &rid, req.headers());
    let mut resp = match admit(&s, it, &rid, req).await {
        Err(e) => {
            span.set("error.type", e.code);
            error_response(e)
        }
        Ok(admitted) => {
            let events = events_path(it, &admitted.job);
            let (out, body) = Out::new(format);
            let stream = Stream {
                s: s.clone(),
                name: name.to_string(),
                cid,
                rid: rid.clone(),
                span,
            };
            let watch = out.tx.clone();
            let until = bounded_by(admitted.deadline);
            tokio::spawn(async move {
                // A caller that keeps the connection open but stops reading
                // blocks the writes: the deadline ends the stream all the
                // same, and with it the slot and the waiter.
                let run = tokio::time::timeout_at(until, stream.run(admitted, out));
                tokio::select! {
                    () = watch.closed() => {}
                    _ = run => {}
                }
            });
            opened(format, body, Some(&events))
        }
    };
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    s.metrics
        .answered(&it.name, resp.status().as_u16(), started.elapsed());
    resp
}

/// `GET <path>/requests/<id>/events` of an sse interface, by the caller
/// that made the request: the stream from its start, or after the chunk
/// named by `Last-Event-ID`.
pub async fn resume(s: Arc<AppState>, name: &str, id: &str, headers: &HeaderMap) -> Response {
    let rid = uuid::Uuid::new_v4().to_string();
    let it = s.interface(name);
    let caller = match s.callers.identify(name, headers, &rid) {
        Ok(c) => c,
        Err(e) => return error_response(e),
    };
    if let Err(wait) = s.rate_limits.take(&it.name, &caller) {
        return error_response(rate_limited(wait, &rid));
    }
    let Ok(slot) = s.slots[&it.name].clone().try_acquire_owned() else {
        return too_many_requests(it, &rid).into_response();
    };
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such stream, or it has expired (results.ttl)",
            &rid,
        )
        .into_response()
    };
    // Another caller's id leads to a store that does not exist: 404.
    let Some(job) = JobId::parse(id) else {
        return unknown();
    };
    let mut store = Store::new(&s, it, &job.address(&caller));
    let first = match store.page(&s).await {
        Ok(Some(page)) => page,
        Ok(None) => return unknown(),
        Err(e) => {
            tracing::warn!(error = %e, "stream store read failed");
            return unavailable(&rid).into_response();
        }
    };
    let order = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_chunk_id)
        .map_or_else(Order::new, |(attempt, seq)| Order::after(attempt, seq));
    let format = Format::of(headers);
    let (out, body) = Out::new(format);
    let watch = out.tx.clone();
    let s2 = s.clone();
    let name = name.to_string();
    let until = bounded_by(job.deadline().saturating_add(skew_ms(&s)));
    tokio::spawn(async move {
        let _slot = slot;
        let it = s2.interface(&name);
        let mut caller = Caller::new(out, order);
        let run = tokio::time::timeout_at(
            until,
            replay(&s2, it, &mut store, first, &mut caller, &job, &rid),
        );
        tokio::select! {
            () = watch.closed() => {}
            _ = run => {}
        }
    });
    opened(format, body, None)
}

/// When a stream's task ends whatever happens: a little after `deadline`
/// (ms since the epoch), time enough to write its last event.
fn bounded_by(deadline: u64) -> tokio::time::Instant {
    let left = Duration::from_millis(deadline.saturating_sub(now_ms()));
    tokio::time::Instant::now() + left + LAST_WORDS
}

/// The `200` that opens a stream.
fn opened(format: Format, body: Body, events: Option<&str>) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static(format.content_type()),
    );
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    // Proxies that buffer responses (nginx) pass this one through as it
    // is written.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(v) = events.and_then(|e| HeaderValue::from_str(e).ok()) {
        h.insert("content-location", v);
    }
    resp
}

/// Where a stream is resumed.
fn events_path(it: &InterfacePlan, job: &JobId) -> String {
    format!(
        "{}/requests/{}/events",
        it.path.trim_end_matches('/'),
        job.as_str()
    )
}

/// The route pattern of [`resume`].
pub fn events_route(it: &InterfacePlan) -> String {
    format!("{}/requests/{{id}}/events", it.path.trim_end_matches('/'))
}

/// An admitted POST.
struct Admitted {
    input: Value,
    deadline: u64,
    job: JobId,
    address: String,
    slot: OwnedSemaphorePermit,
}

/// Admission of a POST, as the HTTP route's, cheapest check first.
async fn admit(
    s: &AppState,
    it: &InterfacePlan,
    rid: &str,
    req: Request,
) -> Result<Admitted, ApiError> {
    let caller = s.callers.identify(&it.name, req.headers(), rid)?;
    if let Err(wait) = s.rate_limits.take(&it.name, &caller) {
        return Err(rate_limited(wait, rid));
    }
    if req.headers().contains_key("idempotency-key") {
        // Accepting it without deduplicating would run a repeat twice.
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "sse interfaces do not take Idempotency-Key: a stream whose connection was lost \
             is resumed with GET <path>/requests/<id>/events",
            rid,
        ));
    }
    let deadline = now_ms().saturating_add(it.timeout.as_millis() as u64);
    let (input, slot) = admit_body(s, it, rid, req.into_body()).await?;
    let job = JobId::new(deadline);
    let address = job.address(&caller);
    Ok(Admitted {
        input,
        deadline,
        job,
        address,
        slot,
    })
}

/// One POST's stream, produced on a task of its own.
struct Stream {
    s: Arc<AppState>,
    name: String,
    cid: String,
    rid: String,
    span: Span,
}

impl Stream {
    async fn run(self, a: Admitted, out: Out) {
        let Admitted {
            input,
            deadline,
            job,
            address,
            slot: _slot,
        } = a;
        let s = &*self.s;
        let it = s.interface(&self.name);
        let start = json!({"id": job.as_str(), "events": events_path(it, &job)});
        if !out.event("start", None, &start).await {
            return;
        }
        let caller = Arc::new(Mutex::new(Caller::new(out, Order::new())));
        let local = {
            let caller = caller.clone();
            Arc::new(move |attempt| {
                Chunks::to(Arc::new(LocalChunks {
                    caller: caller.clone(),
                    attempt,
                    sent: AtomicU64::new(0),
                }))
            }) as Arc<dyn Fn(u32) -> Chunks + Send + Sync>
        };
        let result = call::run(
            s,
            it,
            &self.span,
            Call {
                entry: &it.entry,
                cid: &self.cid,
                rid: &self.rid,
                input,
                deadline,
                timeout: it.timeout,
                later: false,
                job: None,
                address: None,
                claimed: None,
                streamed: Some(Streamed {
                    address: address.clone(),
                    local,
                    room: ROOM,
                }),
            },
        )
        .await;
        let mut caller = caller.lock().await;
        let stored = matches!(result, Ok(Answer::Following(_)));
        match result {
            // Answered by the ingress group: its chunks were written as
            // they came.
            Ok(Answer::Now(v)) => {
                caller.out.event("result", None, &v).await;
            }
            Ok(Answer::Following(f)) => {
                let mut store = Store::new(s, it, &address);
                self.follow(it, f, &mut store, &mut caller, deadline).await;
            }
            Ok(Answer::Later(_)) => {
                caller
                    .error(&internal("a streamed request was queued", &self.rid))
                    .await;
            }
            Err(e) => {
                self.span.set("error.type", e.code);
                caller.error(&e).await;
            }
        }
        // Answered live: the store's chunks are kept only briefly, so that
        // memory grows with the streams running, not with results.ttl.
        if stored && caller.ended {
            let store = s.keys.reply(&address);
            if let Err(e) = s.replies.open(&store, ANSWERED_GRACE).await {
                tracing::debug!(error = %e, "could not shorten a stream's retention");
            }
        }
    }

    /// Passes on chunks as the listener hands them over, then the answer;
    /// what was deferred is read from the store in its turn.
    async fn follow(
        &self,
        it: &InterfacePlan,
        mut f: Following,
        store: &mut Store,
        caller: &mut Caller,
        deadline: u64,
    ) {
        let s = &*self.s;
        let left = Duration::from_millis(deadline.saturating_sub(now_ms()));
        let timer = tokio::time::sleep(left);
        tokio::pin!(timer);
        let mut keep_alive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        loop {
            tokio::select! {
                biased;
                Some(chunk) = f.chunks.recv() => {
                    if !self.deliver(store, caller, chunk).await {
                        return;
                    }
                }
                answer = &mut f.waiter.rx => {
                    // The chunks the listener handed over before it.
                    while let Ok(chunk) = f.chunks.try_recv() {
                        if !self.deliver(store, caller, chunk).await {
                            return;
                        }
                    }
                    match answer {
                        Ok(reply) => finish(s, store, caller, reply, &self.rid).await,
                        Err(_) => caller.error(&timed_out(it.timeout, &self.rid)).await,
                    }
                    return;
                }
                () = &mut timer => {
                    // The answer may be in the store without having reached
                    // this ingress (its reply stream was lost meanwhile).
                    if let Some(reply) = store.answer(s, caller).await {
                        return finish(s, store, caller, reply, &self.rid).await;
                    }
                    s.metrics
                        .timeouts
                        .get_or_create(&InterfaceLabel { interface: it.name.clone() })
                        .inc();
                    caller.error(&timed_out(it.timeout, &self.rid)).await;
                    return;
                }
                _ = keep_alive.tick() => {
                    if !caller.out.keep_alive().await {
                        return;
                    }
                }
            }
        }
    }

    /// One chunk from the listener; chunks before it that were deferred
    /// are read from the store first. False when the stream is over.
    async fn deliver(&self, store: &mut Store, caller: &mut Caller, chunk: Envelope) -> bool {
        let (attempt, seq) = (chunk.attempt, chunk.seq.unwrap_or(0));
        match caller.offer(chunk).await {
            Offered::Gone => false,
            Offered::Done => true,
            // What the store does not hold yet (a node emitting from
            // concurrent tasks) comes later, live or at the answer.
            Offered::Held => catch_up(&self.s, store, caller, attempt, seq).await,
        }
    }
}

/// Reads the store until chunk `seq` of `attempt` has been passed on, or
/// the store has nothing more; false when the caller is gone.
async fn catch_up(
    s: &AppState,
    store: &mut Store,
    caller: &mut Caller,
    attempt: u32,
    seq: u64,
) -> bool {
    while !caller.passed(attempt, seq) {
        let page = match store.page(s).await {
            Ok(Some(page)) if !page.entries.is_empty() => page,
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "stream store read failed");
                return true;
            }
        };
        for env in page.entries {
            if env.is_chunk() && matches!(caller.offer(env).await, Offered::Gone) {
                return false;
            }
        }
    }
    true
}

/// The answer: the chunks it says are missing first (from the store),
/// a reset when it comes from a new attempt that sent none, then the
/// result or the error.
async fn finish(s: &AppState, store: &mut Store, caller: &mut Caller, reply: Envelope, rid: &str) {
    let (missing, reset) = caller.order.answer(reply.attempt, reply.last_seq);
    if missing {
        let last = reply.last_seq.unwrap_or(0);
        if !catch_up(s, store, caller, reply.attempt, last).await {
            return;
        }
        if !caller.passed(reply.attempt, last) {
            // Read past while held back (more out of order than the room
            // for them): once more from the start.
            store.rewind();
            if !catch_up(s, store, caller, reply.attempt, last).await {
                return;
            }
        }
        if !caller.passed(reply.attempt, last) {
            return incomplete(caller, rid).await;
        }
    }
    if reset
        && !caller
            .out
            .event("reset", None, &json!({"attempt": reply.attempt}))
            .await
    {
        return;
    }
    caller.answer(reply, rid).await;
}

/// A resumed stream: what the store holds, then what it is given, until
/// the answer or the deadline.
async fn replay(
    s: &AppState,
    it: &InterfacePlan,
    store: &mut Store,
    first: Page,
    caller: &mut Caller,
    job: &JobId,
    rid: &str,
) {
    let mut page = first;
    let mut pause = Duration::from_millis(10);
    let mut quiet = Duration::ZERO;
    loop {
        let got_any = !page.entries.is_empty();
        let more = page.full;
        for env in page.entries {
            if env.is_chunk() {
                if matches!(caller.offer(env).await, Offered::Gone) {
                    return;
                }
                continue;
            }
            // Everything before the answer is in the store: what it
            // counts and the caller has not had is held back or missing.
            return finish(s, store, caller, env, rid).await;
        }
        if got_any {
            pause = Duration::from_millis(10);
            quiet = Duration::ZERO;
        }
        if more {
            // Not caught up yet: the next page at once.
            page = match store.page(s).await {
                Ok(Some(page)) => page,
                Ok(None) => return expired(caller, rid).await,
                Err(_) => Page::default(),
            };
            continue;
        }
        if now_ms() > job.deadline().saturating_add(skew_ms(s)) {
            return caller.error(&timed_out(it.timeout, rid)).await;
        }
        tokio::time::sleep(pause).await;
        quiet += pause;
        if quiet >= KEEP_ALIVE {
            quiet = Duration::ZERO;
            if !caller.out.keep_alive().await {
                return;
            }
        }
        pause = (pause * 2).min(POLL_AT_MOST);
        page = match store.page(s).await {
            Ok(Some(page)) => page,
            Ok(None) => return expired(caller, rid).await,
            Err(e) => {
                tracing::debug!(error = %e, "stream store read failed; reading again");
                Page::default()
            }
        };
    }
}

/// The store expired under its reader: the answer is gone with it.
async fn expired(caller: &mut Caller, rid: &str) {
    let gone = ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "the stream expired (results.ttl)",
        rid,
    );
    caller.error(&gone).await;
}

/// The chunks the answer counts are not in the store: it expired, or a
/// writer broke the order. Said once, and the stream ends.
async fn incomplete(caller: &mut Caller, rid: &str) {
    tracing::warn!(request_id = %rid, "a streamed answer is missing chunks");
    let e = ApiError::new(
        StatusCode::BAD_GATEWAY,
        "stream_incomplete",
        "chunks of this answer are missing; the stream cannot continue",
        rid,
    );
    caller.error(&e).await;
}
