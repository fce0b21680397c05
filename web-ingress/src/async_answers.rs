//! Asynchronous requests: a POST that asks for it (`Prefer: respond-async`,
//! or every POST of an interface with `mode: async`) is answered `202` with
//! `Location: <path>/requests/<id>` as soon as its envelope is queued; the
//! answer is stored in Redis (or the memory backend) and fetched with
//! `GET <path>/requests/<id>` from any ingress process.
//!
//! ```text
//! POST ─▶ open sluice:{ns/p}:r:async:<sha256(id)> (TTL asyncTimeout + results.ttl)
//!      ─▶ request envelope, reply_to = async:<sha256(id)> ─▶ 202, Location
//! worker: the reply, as to a waiting ingress ─▶ that stream (NOMKSTREAM, with the XACK)
//! GET  ─▶ MULTI{EXISTS, XREAD 0} ─▶ verify (MAC, kind, address, sender; not the deadline)
//!      ─▶ 200 answer │ 4xx/5xx its error │ 202 pending │ 504 past asyncTimeout │ 404 unknown/expired
//! ```
//!
//! The id is 128 random bits and the deadline, in hex; it is not the
//! correlation id, and it appears nowhere in Redis, queues or logs: the
//! answer's address is its SHA-256, so what sits in Redis does not let
//! anyone fetch the answer. Whoever holds the id can (a capability URL).
//! The workers need no change: an answer address is a reply stream name
//! that no ingress id can take (ingress ids have no `:`).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde_json::{json, Value};

use sluice_crds::{InterfaceMode, InterfacePlan};
use sluice_platform::clock::now_ms;
use sluice_platform::Rejection;

use crate::error::{from_reply, ApiError};
use crate::state::{skew_ms, AppState};
use crate::waiters::ReplySenders;

/// Stored answers looked at per fetch: a redelivered terminal node may
/// have answered twice; anything past the first few valid ones is noise.
const PEEK: usize = 4;

pub use crate::job_id::JobId;

/// Whether this POST is answered `202` now and fetched later.
pub fn wanted(it: &InterfacePlan, headers: &HeaderMap) -> bool {
    it.mode == InterfaceMode::Async
        || headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| {
                let token = p.split([';', '=']).next().unwrap_or("").trim();
                token.eq_ignore_ascii_case("respond-async")
            })
}

/// The fetch path of `it`'s answers, with `{id}` for the id.
pub fn route(it: &InterfacePlan) -> String {
    format!("{}/requests/{{id}}", it.path.trim_end_matches('/'))
}

fn location(it: &InterfacePlan, id: &JobId) -> String {
    format!("{}/requests/{}", it.path.trim_end_matches('/'), id.as_str())
}

/// `202` for a submitted request: where and when to fetch its answer.
pub fn accepted(it: &InterfacePlan, id: &JobId) -> Response {
    let location = location(it, id);
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(json!({ "id": id.as_str(), "status": "pending", "location": location })),
    )
        .into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert("location", v);
    }
    h.insert(
        "preference-applied",
        HeaderValue::from_static("respond-async"),
    );
    h.insert("retry-after", HeaderValue::from_static("1"));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    resp
}

/// How long the answer stream of a request with `timeout` lives.
pub fn retention(s: &AppState, timeout: Duration) -> Duration {
    crate::job_id::retention(&s.plan, timeout)
}

/// The stored answer at `address`, verified: `Ok(None)` while there is
/// none (or none that verifies), the answer or its error otherwise.
///
/// # Errors
/// `503 backend_unavailable` when the store cannot be read.
pub async fn stored(
    s: &AppState,
    it: &InterfacePlan,
    address: &str,
) -> Result<Option<Result<Value, ApiError>>, ApiError> {
    Ok(match look(s, it, address).await? {
        Looked::Answer(a) => Some(a),
        Looked::Pending | Looked::Unknown => None,
    })
}

/// Waits for the stored answer at `address` until `deadline`, reading it
/// every few milliseconds at first, then every 100 ms (a failed read is
/// tried again); `None` at the deadline. For an idempotent request whose caller waits.
pub async fn wait_stored(
    s: &AppState,
    it: &InterfacePlan,
    address: &str,
    deadline: u64,
) -> Option<Result<Value, ApiError>> {
    let mut pause = Duration::from_millis(2);
    loop {
        // A failed read is tried again: the request is queued, and its
        // answer may still come.
        if let Ok(Some(answer)) = stored(s, it, address).await {
            return Some(answer);
        }
        let left = deadline.saturating_sub(now_ms());
        if left == 0 {
            return None;
        }
        tokio::time::sleep(pause.min(Duration::from_millis(left))).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// What is stored at an answer's address.
enum Looked {
    Answer(Result<Value, ApiError>),
    /// The stream exists, with no answer (that verifies) yet.
    Pending,
    /// No such stream: never opened, or expired.
    Unknown,
}

async fn look(s: &AppState, it: &InterfacePlan, address: &str) -> Result<Looked, ApiError> {
    let stream = s.keys.reply(address);
    let stored = match s.replies.peek(&stream, PEEK).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return Ok(Looked::Unknown),
        Err(e) => {
            tracing::warn!(error = %e, "answer read failed");
            let rid = uuid::Uuid::new_v4().to_string();
            return Err(crate::error::unavailable(&rid));
        }
    };
    let senders = ReplySenders::of(it);
    for entry in &stored {
        match s.verifier.verify_stored_reply(entry, address).await {
            // A streamed request's chunks are not its answer (its id is
            // resumed on its sse interface, not fetched here).
            Ok(reply) if reply.envelope.is_chunk() => {}
            Ok(reply) if senders.accepts(&reply.from, &reply.envelope) => {
                let env = reply.envelope;
                return Ok(Looked::Answer(match env.error {
                    None => Ok(env.payload),
                    Some(e) => Err(from_reply(e, &env.rid)),
                }));
            }
            Ok(_) => s.verifier.count_rejection(Rejection::WrongSender),
            Err(e) => tracing::debug!(error = %e, "stored answer refused"),
        }
    }
    Ok(Looked::Pending)
}

/// `GET <path>/requests/<id>`, by the caller that made the request.
pub async fn fetch(s: Arc<AppState>, name: &str, id: &str, headers: &HeaderMap) -> Response {
    let rid = uuid::Uuid::new_v4().to_string();
    let it = s.interface(name);
    let caller = match s.callers.identify(name, headers, &rid) {
        Ok(c) => c,
        Err(e) => return crate::error::error_response(e),
    };
    // A fetch reads up to a few answers from the store: it takes one of the
    // interface's in-flight slots while it does.
    let Ok(_slot) = s.slots[&it.name].try_acquire() else {
        return crate::error::too_many_requests(it, &rid).into_response();
    };
    let mut resp = answer_of(&s, it, id, &caller, &rid).await;
    // The answer is the caller's alone: no cache keeps it.
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    resp
}

async fn answer_of(
    s: &AppState,
    it: &InterfacePlan,
    id: &str,
    caller: &str,
    rid: &str,
) -> Response {
    let rid = rid.to_string();
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such request, or its answer has expired (results.ttl)",
            &rid,
        )
        .into_response()
    };
    let Some(id) = JobId::parse(id) else {
        return unknown();
    };
    // Another caller's id leads to an address that holds nothing: 404.
    match look(s, it, &id.address(caller)).await {
        Err(e) => e.into_response(),
        Ok(Looked::Unknown) => unknown(),
        Ok(Looked::Answer(Ok(v))) => (StatusCode::OK, Json(v)).into_response(),
        Ok(Looked::Answer(Err(e))) => e.into_response(),
        Ok(Looked::Pending) if now_ms() > id.deadline().saturating_add(skew_ms(s)) => {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("no answer within {:?} (asyncTimeout)", it.async_timeout),
                &rid,
            )
            .into_response()
        }
        Ok(Looked::Pending) => {
            let mut resp = (
                StatusCode::ACCEPTED,
                Json(json!({ "id": id.as_str(), "status": "pending" })),
            )
                .into_response();
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_carries_its_deadline_and_reads_back() {
        let id = JobId::new(1_733_150_000_123);
        assert_eq!(id.as_str().len(), 44);
        assert_eq!(JobId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(id.deadline(), 1_733_150_000_123);
        assert_ne!(JobId::new(1).as_str()[..32], JobId::new(1).as_str()[..32]);
    }

    #[test]
    fn ids_this_ingress_did_not_make_are_refused() {
        let ok = JobId::new(5);
        for bad in [
            "",
            &ok.as_str()[1..],
            &format!("{}0", ok.as_str()),
            &ok.as_str().to_uppercase(),
            &format!("{}g", &ok.as_str()[1..]),
            "../../../etc/passwd",
        ] {
            assert_eq!(JobId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_address_is_a_digest_not_the_id() {
        let id = JobId::new(5);
        let a = id.address("billing");
        assert!(a.starts_with("async:") && a.len() == 6 + 64, "{a}");
        assert!(!a.contains(id.as_str()));
        assert_eq!(a, JobId::parse(id.as_str()).unwrap().address("billing"));
        assert_ne!(a, id.address("search"), "each caller has its own address");
    }

    #[test]
    fn prefer_respond_async_is_found_among_other_preferences() {
        let plan = sluice_crds::parse_manifest(
            "t",
            r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: t }
spec:
  interfaces:
    - { name: a, path: /a, entry: echo }
    - { name: b, path: /b, entry: echo, mode: async }
  groups: [ { name: web, role: ingress } ]
  nodes: [ { name: echo, group: web, uses: builtin/echo } ]
"#,
        )
        .unwrap()
        .1;
        let (a, b) = (&plan.interfaces[0], &plan.interfaces[1]);
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("prefer", HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(!wanted(a, &HeaderMap::new()));
        assert!(wanted(b, &HeaderMap::new()));
        for v in [
            "respond-async",
            "Respond-Async",
            "wait=10, respond-async",
            "respond-async; x=1",
        ] {
            assert!(wanted(a, &with(v)), "{v}");
        }
        for v in [
            "return=minimal",
            "respond-asynchronously",
            "wait=respond-async",
        ] {
            assert!(!wanted(a, &with(v)), "{v}");
        }
        assert_eq!(route(a), "/a/requests/{id}");
    }
}
