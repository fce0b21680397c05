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
//! TCP window fills), and nothing is dropped. The interface's `maxInFlight`
//! slot is held for as long, so sockets and POSTs share one bound on the
//! process's work. Each message has its own deadline (`timeout` from its
//! read): a stuck message ends in a `timeout` error and no longer holds the
//! ones behind it.
//!
//! The ingress pings every `pingInterval`; a peer heard from neither by a
//! pong nor anything else for two intervals is gone. While the ingress
//! itself is not reading (in-flight limit, draining) a pong cannot be
//! seen, so that clock stops; the answers then being written end the pause
//! by their deadlines. An answer or ping that cannot be written within two
//! ping intervals ends the connection (a peer that stopped reading).
//!
//! # Close codes
//! | code | when |
//! | --- | --- |
//! | 1000 | the client closed the connection |
//! | 1001 | the ingress drains, or `maxLifetime` is reached: in-flight messages are answered first |
//! | 1002 | a WebSocket protocol error |
//! | 1003 | a binary message (messages are JSON text) |
//! | 1007 | a text message that is not UTF-8 |
//! | 1009 | a message larger than `security.maxPayloadBytes` + 1 KiB |
//! | 1011 | an internal error |
//! | 4408 | idle for `idleTimeout` with nothing in flight, or no pong for two ping intervals |

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, SplitSink};
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use sluice_crds::{InterfacePlan, WebSocketPlan};
use sluice_platform::clock::now_ms;
use sluice_platform::telemetry::{self, Span};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::admit_backlog;
use crate::call::{self, Answer, Call};
use crate::error::{error_response, rate_limited, too_many_requests, ApiError};
use crate::listener::ConnectionHold;
use crate::metrics::{CloseLabel, InterfaceLabel};
use crate::server::{caller_request_id, parse_json};
use crate::state::AppState;

/// Room for the `{"id": …, "input": …}` around an input of
/// `security.maxPayloadBytes`.
pub const MESSAGE_OVERHEAD: usize = 1024;

/// The longest caller-chosen message id.
pub const MAX_ID_LEN: usize = 128;

/// The read buffer per socket: small, so idle sockets cost little; a large
/// message is read in several pieces.
const READ_BUFFER: usize = 8 * 1024;

/// Answers the upgrade request of a WebSocket interface: `426` without an
/// upgrade, `401` for an unknown caller, else `101` and the socket served
/// until it closes.
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
    let Some(limits) = it.websocket else {
        // Routes of this kind are built only for websocket interfaces.
        return error_response(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "interface has no websocket limits",
            &rid,
        ));
    };
    let max_message = usize::try_from(s.plan.security.max_payload_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(MESSAGE_OVERHEAD);
    // Outside the listener (a router driven directly) nothing ever stops it.
    let (stop, hold) = match hold {
        Some(h) => (h.stop.clone(), Some(h)),
        None => (CancellationToken::new(), None),
    };
    let ordered = it.ordered;
    ws.max_message_size(max_message)
        .max_frame_size(max_message)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            let label = InterfaceLabel {
                interface: name.clone(),
            };
            let open = s.metrics.websockets.get_or_create(&label).clone();
            open.inc();
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
            open.dec();
            s.metrics
                .websocket_closes
                .get_or_create(&CloseLabel {
                    interface: name,
                    code,
                })
                .inc();
            // The connection's place under the cap is given back last.
            drop(hold);
        })
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
    /// The interface slot, held until the answer is written.
    _slot: Option<OwnedSemaphorePermit>,
}

/// The socket could not be written: the connection is over.
struct Gone;

type Sink = SplitSink<WebSocket, Message>;

impl Connection {
    fn in_flight(&self) -> u64 {
        self.read - self.written
    }

    /// Serves the socket until it closes; returns the close code.
    async fn serve(mut self, socket: WebSocket, stop: CancellationToken) -> u16 {
        let (mut tx, mut rx) = socket.split();
        let mut running: FuturesUnordered<BoxFuture<'static, Outgoing>> = FuturesUnordered::new();
        let ping_every = self.limits.ping_interval;
        let write_within = ping_every * 2;
        let lifetime_ends = tokio::time::sleep(self.limits.max_lifetime);
        tokio::pin!(lifetime_ends);
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        let mut last_message = Instant::now();
        let mut closing: Option<(u16, &'static str)> = None;
        loop {
            if let Some((code, reason)) = closing {
                if self.in_flight() == 0 {
                    close(&mut tx, code, reason, write_within).await;
                    return code;
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
                    if self.deliver(out, &mut tx, write_within).await.is_err() {
                        return 1006;
                    }
                }
                frame = rx.next(), if reading => {
                    let message = match frame {
                        None => return 1006,
                        Some(Err(e)) => {
                            let code = code_of(e);
                            if code != 1006 {
                                close(&mut tx, code, "protocol error", write_within).await;
                            }
                            return code;
                        }
                        Some(Ok(m)) => m,
                    };
                    heard = Instant::now();
                    match message {
                        Message::Text(text) => {
                            last_message = heard;
                            match self.admit(&text) {
                                Ok(run) => running.push(run),
                                Err(out) => {
                                    if self.deliver(out, &mut tx, write_within).await.is_err() {
                                        return 1006;
                                    }
                                }
                            }
                        }
                        Message::Binary(_) => {
                            close(&mut tx, 1003, "messages are JSON text", write_within).await;
                            return 1003;
                        }
                        // Pings are answered by the protocol layer.
                        Message::Ping(_) | Message::Pong(_) => {}
                        Message::Close(_) => {
                            // The close reply goes out with this flush.
                            let _ = tokio::time::timeout(write_within, tx.flush()).await;
                            return 1000;
                        }
                    }
                }
                _ = ping.tick() => {
                    if !reading {
                        // Not read by us: a pong could not be seen.
                        heard = Instant::now();
                    } else if heard.elapsed() > write_within {
                        close(&mut tx, 4408, "no pong", write_within).await;
                        return 4408;
                    }
                    let sent = tokio::time::timeout(write_within, tx.send(Message::Ping(Default::default()))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        return 1006;
                    }
                }
                _ = tokio::time::sleep_until(last_message + self.limits.idle_timeout), if idle => {
                    close(&mut tx, 4408, "idle", write_within).await;
                    return 4408;
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

    /// Admits one text message: the request it starts, or the error it is
    /// answered with at once.
    fn admit(&mut self, text: &Utf8Bytes) -> Result<BoxFuture<'static, Outgoing>, Outgoing> {
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
                _slot: None,
            }
        };
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
        if let Err(wait) = s.rate_limits.take(&it.name, &self.caller) {
            return Err(refuse(&id, Some(key), rate_limited(wait, &cid)));
        }
        if let Err(e) = admit_backlog(&s, it, &cid) {
            return Err(refuse(&id, Some(key), e));
        }
        let Ok(slot) = s.slots[&it.name].clone().try_acquire_owned() else {
            return Err(refuse(&id, Some(key), too_many_requests(it, &cid)));
        };
        let deadline =
            now_ms().saturating_add(u64::try_from(it.timeout.as_millis()).unwrap_or(u64::MAX));
        let name = self.name.clone();
        Ok(async move {
            let it = s.interface(&name);
            let span = message_span(&s, it, &cid);
            let answer = call::run(
                &s,
                it,
                &span,
                Call {
                    cid: &cid,
                    rid: &cid,
                    input,
                    deadline,
                    timeout: it.timeout,
                    later: false,
                    job: None,
                    address: None,
                    claimed: None,
                },
            )
            .await;
            let (status, text) = match answer {
                Ok(Answer::Now(result)) => (200, json!({"id": id, "result": result}).to_string()),
                Ok(Answer::Later(_)) => {
                    let e = ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "a message was queued without a waiter",
                        &cid,
                    );
                    (500, error_text(&id, &e))
                }
                Err(e) => {
                    span.set("error.type", e.code);
                    (e.status.as_u16(), error_text(&id, &e))
                }
            };
            span.set("sluice.websocket.status", i64::from(status));
            s.metrics.answered(&it.name, status, started.elapsed());
            Outgoing {
                seq,
                frees: Some(key),
                text,
                _slot: Some(slot),
            }
        }
        .boxed())
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
    let id = members.remove("id");
    let input = members.remove("input").unwrap_or(Value::Null);
    if let Some(other) = members.keys().next() {
        let shown: String = other.chars().take(32).collect();
        return Err((Value::Null, bad(&format!("unknown member {shown:?}"))));
    }
    let id = match id {
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
    let mut error = Map::new();
    error.insert("code".into(), e.code.into());
    error.insert("message".into(), e.message.clone().into());
    error.insert("status".into(), e.status.as_u16().into());
    error.insert("request_id".into(), e.request_id.clone().into());
    if let Some(secs) = e.retry_after {
        error.insert("retry_after".into(), secs.into());
    }
    json!({"id": id, "error": error}).to_string()
}

/// Sends a close frame, best effort.
async fn close(tx: &mut Sink, code: u16, reason: &'static str, within: Duration) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(within, tx.send(Message::Close(Some(frame)))).await;
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
