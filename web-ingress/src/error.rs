//! The one place where failures become HTTP responses.
//!
//! Every error body is `{"error": {"code", "message", "request_id"}}` with a
//! stable `code`. A verification failure is never described to a caller.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sluice_crds::InterfacePlan;
use sluice_platform::ReplyError;

/// A request that ends in an error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub request_id: String,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        request_id: &str,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            request_id: request_id.to_string(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// `{"code", "message", "status", "request_id", "retry_after"?}`: the
    /// error as a message on a connection that stays open (a WebSocket
    /// answer, a streamed answer's `error` event), with the status a POST
    /// would have been answered with.
    pub fn to_object(&self) -> serde_json::Value {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.clone().into());
        error.insert("status".into(), self.status.as_u16().into());
        error.insert("request_id".into(), self.request_id.clone().into());
        if let Some(secs) = self.retry_after {
            error.insert("retry_after".into(), secs.into());
        }
        serde_json::Value::Object(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "request_id": self.request_id}});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(s));
        }
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        resp
    }
}

/// Status of a reply error code from a worker.
pub fn status_of_reply_code(code: &str) -> StatusCode {
    match code {
        // The node refused this input: the caller's request cannot succeed.
        "node_failed" => StatusCode::UNPROCESSABLE_ENTITY,
        // Every delivery failed transiently: an upstream problem.
        "retries_exhausted" => StatusCode::BAD_GATEWAY,
        // A node panicked: a fault of the service, not of the caller's
        // input as far as the caller can tell; not retried.
        "node_crashed" => StatusCode::INTERNAL_SERVER_ERROR,
        // A process lacks a signing key it needs: a deployment fault.
        "key_missing" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// `429`: the interface's `maxInFlight` slots are taken.
pub fn too_many_requests(it: &InterfacePlan, rid: &str) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        format!(
            "more than {} requests in flight on this interface",
            it.max_in_flight
        ),
        rid,
    )
    .retry_after(1)
}

/// `429`: the caller's `auth.rateLimit` is used up for `wait`.
pub fn rate_limited(wait: std::time::Duration, rid: &str) -> ApiError {
    let secs = u32::try_from(wait.as_secs().saturating_add(1)).unwrap_or(u32::MAX);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "this caller's rate limit on this interface is reached (auth.rateLimit)",
        rid,
    )
    .retry_after(secs)
}

/// An error as a response; a `401` carries its challenge.
pub fn error_response(e: ApiError) -> Response {
    let challenge = e.status == StatusCode::UNAUTHORIZED;
    let mut resp = e.into_response();
    if challenge {
        resp.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    resp
}

/// Reply codes are few and known; anything else is reported generically.
pub fn static_code(code: &str) -> &'static str {
    match code {
        "node_failed" => "node_failed",
        "retries_exhausted" => "retries_exhausted",
        "node_crashed" => "node_crashed",
        "key_missing" => "key_missing",
        _ => "worker_error",
    }
}

/// The error a pipeline answered a request with, as the caller gets it.
pub fn from_reply(e: ReplyError, rid: &str) -> ApiError {
    ApiError::new(
        status_of_reply_code(&e.code),
        static_code(&e.code),
        e.message,
        rid,
    )
}

/// `504`: no answer came within `after`.
pub fn timed_out(after: std::time::Duration, rid: &str) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format!("no answer within {after:?}"),
        rid,
    )
}

/// `500`: a fault of the ingress itself, never of the caller's input.
pub fn internal(message: impl Into<String>, rid: &str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message, rid)
}

/// How long a caller refused for a pause is asked to wait.
pub const PAUSED_RETRY_AFTER: u32 = 5;

/// `503`: the pipeline is paused (`spec.paused`).
pub fn paused(rid: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "paused",
        "the pipeline is paused; requests are taken again once it resumes",
        rid,
    )
    .retry_after(PAUSED_RETRY_AFTER)
}

/// `503`: the pipeline's backend cannot be reached.
pub fn unavailable(rid: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
        "the pipeline's backend is unavailable",
        rid,
    )
    .retry_after(1)
}
