//! Reading a StreamPipeline manifest file for a local run.
//!
//! The file is the same YAML a user applies to a cluster. Parse errors name
//! the field (`spec.nodes[1].next: ...`) and validation errors list every
//! violated rule; neither panics, whatever the bytes.

use std::io::Read;
use std::path::Path;

use crate::plan::{compile, PipelineId, Plan};
use crate::types::{StreamPipeline, StreamPipelineSpec};
use crate::validate::FieldError;

/// Why a manifest could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the file is over {max} bytes; a manifest is at most that large")]
    TooLarge { path: String, max: usize },
    #[error("{path}: not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 { path: String, offset: usize },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: invalid StreamPipeline:\n{}", .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: String,
        errors: Vec<FieldError>,
    },
}

/// Reads, validates and compiles the manifest at `path`.
///
/// Reads at most [`crate::yaml::MAX_YAML_BYTES`] (plus one, to tell a file
/// that is too large), so a path such as `/dev/zero` is refused, not
/// buffered without end.
///
/// # Errors
/// Unreadable, oversized or non-UTF-8 file, YAML or shape errors (with the
/// field path), or rule violations.
pub fn load_manifest(path: &Path) -> Result<(StreamPipeline, Plan), ManifestError> {
    let origin = path.display().to_string();
    let read_err = |source| ManifestError::Read {
        path: origin.clone(),
        source,
    };
    let max = crate::yaml::MAX_YAML_BYTES;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut bytes))
        .map_err(read_err)?;
    if bytes.len() > max {
        return Err(ManifestError::TooLarge { path: origin, max });
    }
    parse_manifest_bytes(&origin, &bytes)
}

/// Like [`load_manifest`] on bytes already read; `origin` names them in errors.
///
/// # Errors
/// As [`load_manifest`].
pub fn parse_manifest_bytes(
    origin: &str,
    bytes: &[u8],
) -> Result<(StreamPipeline, Plan), ManifestError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ManifestError::NotUtf8 {
        path: origin.to_string(),
        offset: e.valid_up_to(),
    })?;
    parse_manifest(origin, text)
}

/// Like [`load_manifest`] on text already read; `origin` names it in errors.
///
/// # Errors
/// As [`load_manifest`].
pub fn parse_manifest(origin: &str, text: &str) -> Result<(StreamPipeline, Plan), ManifestError> {
    let parse_err = |message: String| ManifestError::Parse {
        path: origin.to_string(),
        message,
    };
    let value: serde_json::Value =
        crate::yaml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
    let kind = value.get("kind").and_then(|k| k.as_str());
    let api = value.get("apiVersion").and_then(|k| k.as_str());
    if kind != Some("StreamPipeline") || api != Some("sluice.dev/v1alpha1") {
        return Err(parse_err(format!(
            "expected apiVersion sluice.dev/v1alpha1 and kind StreamPipeline, found {} {}",
            api.unwrap_or("<none>"),
            kind.unwrap_or("<none>")
        )));
    }
    let metadata = value.get("metadata");
    let name = match metadata.and_then(|m| m.get("name")) {
        None => return Err(parse_err("metadata.name: missing".into())),
        Some(n) => n
            .as_str()
            .ok_or_else(|| parse_err("metadata.name: must be a string".into()))?
            .to_string(),
    };
    let namespace = match metadata.and_then(|m| m.get("namespace")) {
        None => "default".to_string(),
        Some(n) => n
            .as_str()
            .ok_or_else(|| parse_err("metadata.namespace: must be a string".into()))?
            .to_string(),
    };
    let spec_value = value
        .get("spec")
        .cloned()
        .ok_or_else(|| parse_err("spec: missing".into()))?;
    let spec: StreamPipelineSpec = serde_path_to_error::deserialize(spec_value)
        .map_err(|e| parse_err(format!("spec.{}: {}", e.path(), e.inner())))?;
    let plan = compile(
        PipelineId {
            namespace: namespace.clone(),
            name: name.clone(),
        },
        &spec,
    )
    .map_err(|errors| ManifestError::Invalid {
        path: origin.to_string(),
        errors,
    })?;
    let mut sp = StreamPipeline::new(&name, spec);
    sp.metadata.namespace = Some(namespace);
    Ok((sp, plan))
}
