//! What a request brings with it: the caller's request id, its body read
//! by its deadline, shape-checked and parsed as JSON, and the server span
//! that continues the caller's trace. Shared by the POST, SSE, WebSocket
//! and GraphQL routes.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use sluice_crds::InterfacePlan;
use sluice_platform::telemetry::{self, Span};

use crate::body::{self, BodyError};
use crate::error::ApiError;
use crate::json_scan::{self, ShapeError};
use crate::state::AppState;

/// Caller-supplied request ids are kept only when they are short printable
/// ASCII, so they are safe in headers, logs and JSON.
pub fn caller_request_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("x-request-id")?.to_str().ok()?;
    (!v.is_empty() && v.len() <= 128 && v.bytes().all(|c| c.is_ascii_graphic()))
        .then(|| v.to_string())
}

/// Reads the body by its deadline (the shorter of `--body-timeout` and the
/// interface timeout), checks its JSON shape on the bytes, then parses it.
/// The bytes and their budget are released once the value is built.
pub async fn read_input(
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
    parse_json(
        &body.bytes,
        s.http.max_json_depth,
        s.http.max_json_elements,
        rid,
    )
}

/// Checks JSON's shape on its bytes (`--max-json-depth`,
/// `--max-json-elements`, here `max_depth` and `max_elements`), then parses
/// it.
pub fn parse_json(
    bytes: &[u8],
    max_depth: usize,
    max_elements: usize,
    rid: &str,
) -> Result<Value, ApiError> {
    json_scan::check(bytes, max_depth, max_elements).map_err(|e| match e {
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
    })?;
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("body is not JSON: {e}"),
            rid,
        )
    })
}

/// The request's server span, continuing the caller's trace when its
/// `traceparent` header is valid.
pub(crate) fn server_span(
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
