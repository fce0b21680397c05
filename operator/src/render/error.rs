//! Why [`desired`](super::desired) or the Secret builders could not
//! produce an object: a spec that breaks a rule (every violated rule with its
//! field), missing metadata, unusable material or a serialisation failure.

use sluice_crds::FieldError;

/// Why no objects could be computed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The StreamPipeline lacks metadata an owned object needs (a resource
    /// read from the API server always has them).
    #[error("StreamPipeline has no {0}")]
    MissingObjectKey(&'static str),
    /// The spec breaks a rule; each error names its field. The reconciler
    /// reports `Ready=False, reason=InvalidSpec` and leaves running objects alone.
    #[error("invalid StreamPipeline: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidSpec(Vec<FieldError>),
    /// Material passed to [`initial_key_secret`](super::key_ring::initial_key_secret) or
    /// [`redis_secret`](super::redis::redis_secret) is unusable. Never contains it.
    #[error("invalid {what}: {reason}")]
    InvalidInput { what: &'static str, reason: String },
    #[error("cannot serialise {what}")]
    Yaml {
        what: &'static str,
        #[source]
        source: serde_saphyr::SerializeError,
    },
    #[error("cannot serialise {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The violated rules when the spec is invalid, else empty.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Error::InvalidSpec(e) => e,
            _ => &[],
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
