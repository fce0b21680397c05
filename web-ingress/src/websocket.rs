//! WebSocket interfaces (`kind: websocket`): each text message on a
//! connection is one request through the pipeline, answered on the same
//! socket.
//!
//! ```text
//! GET <path>, Upgrade ─▶ caller identified (401) ─▶ 101 ─▶ per text message:
//!   read while fewer than maxInFlightPerConnection are unanswered (else: not read)
//!   ─▶ JSON shape and {"id", "input"} ─▶ id not unanswered already ─▶ rate limit
//!   ─▶ backlog (503) ─▶ an interface maxInFlight slot (429) ─▶ the pipeline (call::run)
//!   ─▶ {"id", "result"} or {"id", "error"} written as it completes, or in arrival order
//! ```
//!
//! # Backpressure and liveness
//! A message counts as in flight from its read until its answer is written
//! to the socket, so answers held back for order are bounded by the
//! per-connection limit; at the limit the socket is not read (the client's
//! TCP window fills), and nothing is dropped. While the pipeline works on
//! a message it holds one of the interface's `maxInFlight` slots, so
//! sockets and POSTs share one bound on the process's work. Each message
//! runs on a task of its own with its own deadline (`timeout` from its
//! read): a stuck message ends in a `timeout` error and no longer holds the
//! ones behind it.
//!
//! The ingress pings every `pingInterval`; a peer heard from neither by a
//! pong nor anything else for two intervals is gone. Time the ingress
//! spends not reading the socket (at the in-flight limit, draining, writing)
//! does not count: a pong could not be seen then. The client's own pings
//! are answered when the socket is read, so a client whose ping timeout is
//! shorter than a message's timeout may give up on a connection held at its
//! limit. An answer or ping that cannot be written within two ping
//! intervals (5 s once closing) ends the connection: a peer that stopped
//! reading. Idle means nothing in flight and no message read or answer
//! written for `idleTimeout`.
//!
//! # Memory
//! An open socket holds a message's worth of the body budget
//! ([`max_message`]), what it may buffer of a message being received; at
//! most `maxConnections` sockets per interface are open. Answers waiting to
//! be written are bounded by the per-connection limit.
//!
//! # Close codes
//! | code | when |
//! | --- | --- |
//! | 1000 (or the client's code) | the client closed the connection |
//! | 1001 | the ingress drains, or `maxLifetime` is reached: in-flight messages are answered first |
//! | 1002 | a WebSocket protocol error |
//! | 1003 | a binary message (messages are JSON text) |
//! | 1007 | a text message that is not UTF-8 |
//! | 1009 | a message larger than `security.maxPayloadBytes` + 1 KiB |
//! | 1011 | an internal error |
//! | 4408 | idle for `idleTimeout`, or no pong for two ping intervals |
//!
//! After its close frame the ingress reads what the peer still sends until
//! the peer's close (2 s at most), so the last answers are not lost to a
//! reset.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_crds::{InterfacePlan, WebSocketPlan};
use sluice_platform::clock::now_ms;
use sluice_platform::telemetry::{self, Span};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::admit_read;
use crate::call::{self, Call, DEADLINE_GRACE};
use crate::error::{error_response, internal, rate_limited, timed_out, ApiError};
use crate::listener::ConnectionHold;
use crate::metrics::{CloseLabel, InterfaceLabel};
use crate::request::{caller_request_id, parse_json};
use crate::state::AppState;

/// Room for the `{"id": …, "input": …}` around an input of
/// `security.maxPayloadBytes`.
pub const MESSAGE_OVERHEAD: usize = 1024;

/// The longest caller-chosen message id.
pub const MAX_ID_LEN: usize = 128;

/// The read buffer per socket: small, so idle sockets cost little; a large
/// message is read in several pieces.
const READ_BUFFER: usize = 8 * 1024;

/// The largest text message a socket takes with inputs of at most
/// `max_payload` bytes; what an open socket holds of the body budget.
pub fn max_message(max_payload: usize) -> usize {
    max_payload.saturating_add(MESSAGE_OVERHEAD)
}

/// Writes take at most this long once the connection is closing, so a
/// peer that stopped reading cannot stretch a drain.
const CLOSING_WRITE: Duration = Duration::from_secs(5);

/// After its close frame the ingress reads (and drops) what the peer still
/// sends, until the peer's close, for at most this long: a socket closed
/// with unread data would be reset, and the last answers lost with it.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Answers the upgrade request of a WebSocket interface: `426` without an
/// upgrade, `401` for an unknown caller, `429` past the caller's rate
/// limit (an upgrade counts as a request), `503` past `maxConnections` or
/// the body budget, else `101` and the socket served until it closes.
pub async fn upgrade(
    s: Arc<AppState>,
    name: String,
    ws: Option<WebSocketUpgrade>,
    headers: HeaderMap,
    hold: Option<ConnectionHold>,
) -> Response {
    let rid = caller_request_id(&headers).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let it = s.interface(&name);
    let Some(ws) = ws else {
        let mut resp = ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this interface is a WebSocket: open it with GET and Upgrade: websocket",
            &rid,
        )
        .into_response();
        resp.headers_mut()
            .insert("upgrade", HeaderValue::from_static("websocket"));
        return resp;
    };
    let caller = match s.callers.identify(&it.name, &headers, &rid) {
        Ok(caller) => caller,
        Err(e) => return error_response(e),
    };
    if let Err(wait) = s.rate_limits.take(&it.name, &caller) {
        return error_response(rate_limited(wait, &rid));
    }
    let (Some(limits), Some(sockets)) = (it.websocket, s.sockets.get(&it.name)) else {
        // Routes of this kind are built only for websocket interfaces.
        return error_response(internal("interface has no websocket limits", &rid));
    };
    let Ok(socket_slot) = sockets.clone().try_acquire_owned() else {
        return error_response(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "this interface has its {} open connections (websocket.maxConnections)",
                    limits.max_connections
                ),
                &rid,
            )
            .retry_after(1),
        );
    };
    let max_message =
        max_message(usize::try_from(s.plan.security.max_payload_bytes).unwrap_or(usize::MAX));
    let Some(buffer) = s.body_budget.try_hold(max_message) else {
        return error_response(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the ingress's request-body budget is taken",
                &rid,
            )
            .retry_after(1),
        );
    };
    // Outside the listener (a router driven directly) nothing ever stops it.
    let stop = hold
        .as_ref()
        .map_or_else(CancellationToken::new, |h| h.stop.clone());
    let ordered = it.ordered;
    ws.max_message_size(max_message)
        .max_frame_size(max_message)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            let open = Open::new(&s, &name);
            let conn = Connection {
                s: s.clone(),
                name: name.clone(),
                caller: caller.into(),
                limits,
                ordered,
                read: 0,
                written: 0,
                held: BTreeMap::new(),
                unanswered: HashSet::new(),
            };
            let code = conn.serve(socket, stop).await;
            s.metrics
                .websocket_closes
                .get_or_create(&CloseLabel {
                    interface: name,
                    code,
                })
                .inc();
            drop(open);
            drop(buffer);
            drop(socket_slot);
            // The connection's place under the cap is given back last.
            drop(hold);
        })
}

/// An open socket in `sluice_ingress_websocket_connections`, until dropped.
struct Open(prometheus_client::metrics::gauge::Gauge);

impl Open {
    fn new(s: &AppState, name: &str) -> Self {
        let label = InterfaceLabel {
            interface: name.to_string(),
        };
        let gauge = s.metrics.websockets.get_or_create(&label).clone();
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One open socket's state.
struct Connection {
    s: Arc<AppState>,
    name: String,
    caller: Arc<str>,
    limits: WebSocketPlan,
    ordered: bool,
    /// Messages read: the next message's arrival number.
    read: u64,
    /// Answers written; when ordered, the arrival number written next.
    written: u64,
    /// Ordered answers that completed before an earlier message's.
    held: BTreeMap<u64, Outgoing>,
    /// Ids of messages read and not yet answered (a duplicate is refused).
    unanswered: HashSet<String>,
}

/// An answer on its way to the socket.
struct Outgoing {
    seq: u64,
    /// The id it frees in `unanswered` once written.
    frees: Option<String>,
    text: String,
}

/// A message's call, run on a task of its own (so one connection's
/// messages run in parallel and keep running while an answer is written);
/// aborted when dropped, so a closed connection leaves no work behind.
struct Running {
    seq: u64,
    frees: Option<String>,
    id: Value,
    task: tokio::task::JoinHandle<String>,
}

impl std::future::Future for Running {
    type Output = Outgoing;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Outgoing> {
        let text = match std::task::ready!(std::pin::Pin::new(&mut self.task).poll(cx)) {
            Ok(text) => text,
            // Nodes' panics are caught where they run; this is a bug here.
            Err(e) => {
                tracing::error!(error = %e, "a WebSocket message's task failed");
                error_text(&self.id, &internal("the message could not be answered", ""))
            }
        };
        std::task::Poll::Ready(Outgoing {
            seq: self.seq,
            frees: self.frees.take(),
            text,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The socket could not be written: the connection is over.
struct Gone;

type Sink = SplitSink<WebSocket, Message>;
type Source = SplitStream<WebSocket>;

impl Connection {
    fn in_flight(&self) -> u64 {
        self.read - self.written
    }

    /// Serves the socket until it closes; returns the close code.
    async fn serve(mut self, socket: WebSocket, stop: CancellationToken) -> u16 {
        let (mut tx, mut rx) = socket.split();
        let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
        let ping_every = self.limits.ping_interval;
        let lifetime_ends = tokio::time::sleep(self.limits.max_lifetime);
        tokio::pin!(lifetime_ends);
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the peer was last heard from; time spent not reading it
        // (writing, or paused) is added, as a pong could not be seen then.
        let mut heard = Instant::now();
        // When a message was last read or an answer last written.
        let mut active = Instant::now();
        let mut closing: Option<(u16, &'static str)> = None;
        loop {
            let within = match closing {
                Some(_) => CLOSING_WRITE.min(ping_every * 2),
                None => ping_every * 2,
            };
            if let Some((code, reason)) = closing {
                if self.in_flight() == 0 {
                    return finish(tx, rx, code, reason).await;
                }
            }
            let reading =
                closing.is_none() && self.in_flight() < u64::from(self.limits.max_in_flight);
            let idle = self.in_flight() == 0 && closing.is_none();
            tokio::select! {
                _ = stop.cancelled(), if closing.is_none() => closing = Some((1001, "draining")),
                _ = &mut lifetime_ends, if closing.is_none() => {
                    closing = Some((1001, "maxLifetime reached"));
                }
                Some(out) = running.next(), if !running.is_empty() => {
                    let started = Instant::now();
                    let sent = self.deliver(out, &mut tx, within).await;
                    heard += started.elapsed();
                    active = Instant::now();
                    if sent.is_err() {
                        return 1006;
                    }
                }
                frame = rx.next(), if reading => {
                    let message = match frame {
                        None => return 1006,
                        Some(Err(e)) => {
                            let code = code_of(e);
                            if code == 1006 {
                                return code;
                            }
                            return finish(tx, rx, code, reason_of(code)).await;
                        }
                        Some(Ok(m)) => m,
                    };
                    heard = Instant::now();
                    match message {
                        Message::Text(text) => {
                            active = heard;
                            match self.admit(&text) {
                                Ok(run) => running.push(run),
                                Err(out) => {
                                    let started = Instant::now();
                                    let sent = self.deliver(out, &mut tx, within).await;
                                    heard += started.elapsed();
                                    if sent.is_err() {
                                        return 1006;
                                    }
                                }
                            }
                        }
                        Message::Binary(_) => {
                            return finish(tx, rx, 1003, reason_of(1003)).await;
                        }
                        // Pings are answered by the protocol layer.
                        Message::Ping(_) | Message::Pong(_) => {}
                        Message::Close(frame) => {
                            // The close reply goes out with this flush.
                            let _ = tokio::time::timeout(within, tx.flush()).await;
                            return frame.map_or(1005, |f| f.code);
                        }
                    }
                }
                _ = ping.tick() => {
                    if !reading {
                        // Not read by us: a pong could not be seen.
                        heard = Instant::now();
                    } else if heard.elapsed() > ping_every * 2 {
                        return finish(tx, rx, 4408, "no pong").await;
                    }
                    let started = Instant::now();
                    let sent = tokio::time::timeout(within, tx.send(Message::Ping(Default::default()))).await;
                    heard += started.elapsed();
                    if !matches!(sent, Ok(Ok(()))) {
                        return 1006;
                    }
                }
                _ = tokio::time::sleep_until(active + self.limits.idle_timeout), if idle => {
                    return finish(tx, rx, 4408, "idle").await;
                }
            }
        }
    }

    /// Writes `out`, or holds it until the answers before it are written
    /// (ordered).
    async fn deliver(
        &mut self,
        out: Outgoing,
        tx: &mut Sink,
        within: Duration,
    ) -> Result<(), Gone> {
        if !self.ordered {
            return self.write(out, tx, within).await;
        }
        self.held.insert(out.seq, out);
        while let Some(next) = self.held.remove(&self.written) {
            self.write(next, tx, within).await?;
        }
        Ok(())
    }

    async fn write(&mut self, out: Outgoing, tx: &mut Sink, within: Duration) -> Result<(), Gone> {
        let sent = tokio::time::timeout(within, tx.send(Message::Text(out.text.into()))).await;
        self.written += 1;
        if let Some(id) = &out.frees {
            self.unanswered.remove(id);
        }
        match sent {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    /// Admits one text message: the call it starts, or the error it is
    /// answered with at once.
    fn admit(&mut self, text: &Utf8Bytes) -> Result<Running, Outgoing> {
        let seq = self.read;
        self.read += 1;
        let started = Instant::now();
        let cid = uuid::Uuid::new_v4().to_string();
        let s = self.s.clone();
        let it = s.interface(&self.name);
        let refuse = |id: &Value, frees: Option<String>, e: ApiError| {
            s.metrics
                .answered(&it.name, e.status.as_u16(), started.elapsed());
            Outgoing {
                seq,
                frees,
                text: error_text(id, &e),
            }
        };
        // The token is taken first: a refused message costs one too.
        if let Err(wait) = s.rate_limits.take(&it.name, &self.caller) {
            let id = id_only(text.as_str());
            return Err(refuse(&id, None, rate_limited(wait, &cid)));
        }
        let (id, input) = match message_of(&self.s, text.as_str(), seq, &cid) {
            Ok(m) => m,
            Err((id, e)) => return Err(refuse(&id, None, e)),
        };
        let key = id_key(&id);
        if !self.unanswered.insert(key.clone()) {
            let e = ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_id",
                "a message with this id is not answered yet",
                &cid,
            );
            return Err(refuse(&id, None, e));
        }
        let slot = match admit_read(&s, it, &cid) {
            Ok(slot) => slot,
            Err(e) => return Err(refuse(&id, Some(key), e)),
        };
        let timeout = it.timeout;
        let deadline =
            now_ms().saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let name = self.name.clone();
        let answer_id = id.clone();
        let task = tokio::spawn(async move {
            let it = s.interface(&name);
            let span = message_span(&s, it, &cid);
            let call = call::run_waited(
                &s,
                it,
                &span,
                Call {
                    entry: &it.entry,
                    cid: &cid,
                    rid: &cid,
                    input,
                    deadline,
                    timeout,
                    later: false,
                    job: None,
                    address: None,
                    claimed: None,
                    streamed: None,
                },
            );
            // The call answers its own deadline; this bounds what it waits
            // on without one (a queue write that hangs).
            let answer = tokio::time::timeout_at(started + timeout + DEADLINE_GRACE, call)
                .await
                .unwrap_or_else(|_| Err(timed_out(timeout, &cid)));
            // The pipeline is done with it; what waits to be written is
            // bounded by the connection's in-flight limit.
            drop(slot);
            let (status, text) = match answer {
                Ok(result) => (200, json!({"id": id, "result": result}).to_string()),
                Err(e) => {
                    span.set("error.type", e.code);
                    (e.status.as_u16(), error_text(&id, &e))
                }
            };
            span.set("sluice.websocket.status", i64::from(status));
            s.interface_metrics[&it.name].answered(status, started.elapsed());
            text
        });
        Ok(Running {
            seq,
            frees: Some(key),
            id: answer_id,
            task,
        })
    }
}

/// Sends a close frame, then reads (and drops) what the peer still sends
/// until its close, for at most [`CLOSE_LINGER`]; returns `code`.
async fn finish(mut tx: Sink, mut rx: Source, code: u16, reason: &'static str) -> u16 {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let sent = tokio::time::timeout(CLOSING_WRITE, tx.send(Message::Close(Some(frame)))).await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(m)) = rx.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    code
}

/// The reason sent with a close code.
fn reason_of(code: u16) -> &'static str {
    match code {
        1003 => "messages are JSON text",
        1007 => "a text message that is not UTF-8",
        1009 => "message too large (security.maxPayloadBytes)",
        1002 => "protocol error",
        _ => "internal error",
    }
}

/// The id of a message refused before it was parsed, when it has one
/// (`null` otherwise).
fn id_only(text: &str) -> Value {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<Value>,
    }
    match serde_json::from_str::<IdOnly>(text) {
        Ok(IdOnly {
            id: Some(Value::String(id)),
        }) if valid_id(&id) => Value::String(id),
        Ok(IdOnly {
            id: Some(Value::Number(n)),
        }) if n.is_i64() || n.is_u64() => Value::Number(n),
        _ => Value::Null,
    }
}

/// A message's id and input. A message is a JSON object with an optional
/// `id` (a string of 1–128 printable ASCII characters not starting with
/// `#`, or an integer) and an optional `input` (default `null`); without an
/// id it gets `"#<n>"`, its arrival number on the connection from 1.
fn message_of(
    s: &AppState,
    text: &str,
    seq: u64,
    rid: &str,
) -> Result<(Value, Value), (Value, ApiError)> {
    let bad = |why: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_message",
            format!("{why}; a message is {{\"id\": <string or integer>, \"input\": <JSON>}}"),
            rid,
        )
    };
    // One level and two members more than a POST body: the wrapper's.
    let value = parse_json(
        text.as_bytes(),
        s.http.max_json_depth.saturating_add(1),
        s.http.max_json_elements.saturating_add(2),
        rid,
    )
    .map_err(|e| (Value::Null, e))?;
    let Value::Object(mut members) = value else {
        return Err((Value::Null, bad("not a JSON object")));
    };
    let id = match members.remove("id") {
        None => Value::String(format!("#{}", seq + 1)),
        Some(Value::String(id)) if valid_id(&id) => Value::String(id),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Value::Number(n),
        Some(_) => {
            return Err((
                Value::Null,
                bad(&format!(
                    "id must be an integer or 1–{MAX_ID_LEN} printable ASCII characters not starting with '#'"
                )),
            ))
        }
    };
    let input = members.remove("input").unwrap_or(Value::Null);
    if let Some(other) = members.keys().next() {
        let shown: String = other.chars().take(32).collect();
        return Err((id, bad(&format!("unknown member {shown:?}"))));
    }
    if let Err(e) = check_payload_size(s, &input, rid) {
        return Err((id, e));
    }
    Ok((id, input))
}

/// The input's own size counts against `security.maxPayloadBytes`, as a
/// POST body's does.
fn check_payload_size(s: &AppState, input: &Value, rid: &str) -> Result<(), ApiError> {
    let limit = s.plan.security.max_payload_bytes;
    let size = serde_json::to_vec(input)
        .map(|v| v.len() as u64)
        .unwrap_or(u64::MAX);
    if size > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("input exceeds {limit} bytes (security.maxPayloadBytes)"),
            rid,
        ));
    }
    Ok(())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('#')
        && id.bytes().all(|c| c.is_ascii_graphic() || c == b' ')
}

/// Ids compare by kind and value: `"1"` and `1` are two ids.
fn id_key(id: &Value) -> String {
    match id {
        Value::String(s) => format!("s{s}"),
        other => format!("n{other}"),
    }
}

/// `{"id", "error": {"code", "message", "status", "request_id"}}`: the
/// POST route's error body, with the status it would have answered.
fn error_text(id: &Value, e: &ApiError) -> String {
    json!({"id": id, "error": e.to_object()}).to_string()
}

/// The close code for a read error; 1006 when there is no one left to
/// tell.
fn code_of(e: axum::Error) -> u16 {
    let inner = e.into_inner();
    let Some(e) = inner.downcast_ref::<tungstenite::Error>() else {
        return 1011;
    };
    match e {
        tungstenite::Error::Capacity(_) => 1009,
        tungstenite::Error::Utf8(_) => 1007,
        // The peer vanished without a closing handshake.
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => 1006,
        tungstenite::Error::Protocol(_) => 1002,
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Io(_) => 1006,
        _ => 1011,
    }
}

/// A message's server span (when trace export is on).
fn message_span(s: &AppState, it: &InterfacePlan, cid: &str) -> Span {
    if !telemetry::enabled() {
        return Span::none();
    }
    let span = Span::start(format!("WS {}", it.path), telemetry::Kind::Server, None);
    span.set("http.route", it.path.clone());
    span.set("sluice.pipeline", s.keys.pipeline().to_string());
    span.set("sluice.interface", it.name.clone());
    span.set("sluice.correlation_id", cid.to_string());
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_printable_and_not_the_servers() {
        assert!(valid_id("a-1"));
        assert!(valid_id(&"x".repeat(MAX_ID_LEN)));
        assert!(!valid_id(&"x".repeat(MAX_ID_LEN + 1)));
        assert!(!valid_id(""));
        assert!(!valid_id("#3"));
        assert!(!valid_id("a\nb"));
        assert!(!valid_id("é"));
        assert_ne!(id_key(&json!("1")), id_key(&json!(1)));
        assert_eq!(id_key(&json!(7)), id_key(&json!(7)));
    }

    #[test]
    fn an_error_answer_carries_the_post_routes_body_and_status() {
        let e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "slow down",
            "r1",
        )
        .retry_after(2);
        let v: Value = serde_json::from_str(&error_text(&json!("m1"), &e)).unwrap();
        assert_eq!(
            v,
            json!({"id": "m1", "error": {"code": "rate_limited", "message": "slow down",
                   "status": 429, "request_id": "r1", "retry_after": 2}})
        );
    }
}
