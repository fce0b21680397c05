//! Why a reconcile failed: [`Error`], shared by every step of a reconcile —
//! the objects it applies ([`crate::reconcile`]) as much as the Secrets it
//! creates or rotates ([`crate::secrets`]) — and its bounded metric label.

use crate::render;

/// Why a reconcile failed; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The StreamPipeline lacks metadata (never the case for objects read
    /// from the API server).
    #[error("StreamPipeline has no {0}")]
    MissingObjectKey(&'static str),
    /// The reconcile panicked: a defect of the operator, caught so that it
    /// fails one pipeline's reconcile (reported, retried with backoff)
    /// instead of the controller.
    #[error("internal error (panic): {0}")]
    Panicked(String),
    /// An API request failed.
    #[error("{verb} {kind} {name}: {source}")]
    Kube {
        verb: &'static str,
        kind: String,
        name: String,
        // Boxed: kube's error is large and this enum travels in every Result.
        #[source]
        source: Box<kube::Error>,
    },
    /// Building the desired objects failed for a reason other than an
    /// invalid spec (which is reported in status, not as an error).
    #[error(transparent)]
    Resources(#[from] render::Error),
    /// An object in the cluster cannot be used as it is.
    #[error("{what} {name} {reason}")]
    Unusable {
        what: &'static str,
        name: String,
        reason: String,
    },
    /// A live object did not have the shape of its kind.
    #[error("cannot read {kind} {name}")]
    Decode {
        kind: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Bounded label for the error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::MissingObjectKey(_) => "missing_object_key",
            Error::Panicked(_) => "panic",
            Error::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(e) if e.code == 409 => "api_conflict",
                kube::Error::Api(e) if e.code == 403 => "api_forbidden",
                kube::Error::Api(e) if e.code == 404 => "api_not_found",
                kube::Error::Api(e) if e.code == 422 => "api_invalid",
                kube::Error::Api(e) if e.code == 429 => "api_throttled",
                kube::Error::Api(e) if e.code >= 500 => "api_server_error",
                kube::Error::Api(_) => "api_other",
                _ => "transport",
            },
            Error::Resources(_) => "resources",
            Error::Unusable { .. } => "unusable_object",
            Error::Decode { .. } => "decode",
        }
    }
}

/// Wraps an API error with what was being done.
pub(crate) fn api_error(verb: &'static str, kind: &str, name: &str, source: kube::Error) -> Error {
    Error::Kube {
        verb,
        kind: kind.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_are_bounded_labels() {
        let e = api_error(
            "apply",
            "Deployment",
            "p-web",
            kube::Error::Api(
                kube::core::Status::failure("boom", "InternalError")
                    .with_code(500)
                    .boxed(),
            ),
        );
        assert_eq!(e.kind(), "api_server_error");
        assert_eq!(
            Error::MissingObjectKey("metadata.uid").kind(),
            "missing_object_key"
        );
    }
}
