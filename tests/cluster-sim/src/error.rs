//! Errors: `ApiError` is what the API answers (rendered as a `Status` body in exactly one
//! place, its `IntoResponse`), `Error` is what starting and driving the simulator can fail with.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::resources::ResourceType;

/// Result alias for the library's own (non-HTTP) errors.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Failures of starting, stopping or configuring the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the loopback listener, or writing a kubeconfig, failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Rendering a kubeconfig failed.
    #[error("could not render kubeconfig")]
    Kubeconfig(#[from] serde_saphyr::SerializeError),
    /// A direct store access was refused the way the API would refuse it.
    #[error("API error: {0}")]
    Api(#[from] ApiError),
}

/// One cause in a `422 Invalid` answer (`details.causes[]` of the `Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, ...
    pub reason: String,
    /// The message without the field path, as the real server puts it.
    pub message: String,
    /// Field path such as `spec.replicas`.
    pub field: String,
}

/// An answer other than success, carrying everything a `Status` body needs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason` (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: String,
    /// Human readable message, worded like the real API server's.
    pub message: String,
    /// `Status.details`, when the real server sends some.
    pub details: Option<Value>,
}

/// `deployments.apps` / `configmaps`: the name the real server uses in messages.
pub(crate) fn qualified(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.plural.clone()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    }
}

fn qualified_kind(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.kind.clone()
    } else {
        format!("{}.{}", rt.kind, rt.group)
    }
}

impl ApiError {
    /// A bare error with no details.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, rt: &ResourceType, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
        self
    }

    pub(crate) fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", qualified(rt), name),
        )
        .with_details(rt, name)
    }

    pub(crate) fn namespace_not_found(ns: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("namespaces \"{ns}\" not found"));
        e.details = Some(json!({"name": ns, "kind": "namespaces"}));
        e
    }

    pub(crate) fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", qualified(rt), name),
        )
        .with_details(rt, name)
    }

    pub(crate) fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(rt),
                name
            ),
        )
        .with_details(rt, name)
    }

    pub(crate) fn conflict_msg(rt: &ResourceType, name: &str, msg: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                qualified(rt),
                name,
                msg
            ),
        )
        .with_details(rt, name)
    }

    /// `422 Invalid` with one cause per field error, worded like the real server:
    /// `Kind.group "name" is invalid: [field: message, ...]`.
    pub(crate) fn invalid(rt: &ResourceType, name: &str, causes: Vec<Cause>) -> Self {
        let joined: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let list = if joined.len() == 1 {
            joined[0].clone()
        } else {
            format!("[{}]", joined.join(", "))
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{} \"{}\" is invalid: {}", qualified_kind(rt), name, list),
        );
        e.details = Some(json!({
            "name": name,
            "group": rt.group,
            "kind": rt.kind,
            "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
        }));
        e
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub(crate) fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (built-in types), application/apply-patch+yaml, application/vnd.kubernetes.protobuf (cluster-sim: v1 Namespace, ConfigMap, Secret, ServiceAccount only) (got {ct:?})"),
        )
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub(crate) fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `Status` object sent as the body (and inside watch `ERROR` events).
    pub fn status_body(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            self.status_body().to_string(),
        )
            .into_response();
        if self.code == 429 {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}
