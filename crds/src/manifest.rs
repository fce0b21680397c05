//! Reading a StreamPipeline manifest file for a local run.
//!
//! The file is the same YAML a user applies to a cluster. Parse errors name
//! the field (`spec.nodes[1].next: ...`) and validation errors list every
//! violated rule; neither panics.

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
/// # Errors
/// Unreadable file, YAML or shape errors (with the field path), or rule violations.
pub fn load_manifest(path: &Path) -> Result<(StreamPipeline, Plan), ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_manifest(&path.display().to_string(), &text)
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
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| parse_err("metadata.name: missing".into()))?
        .to_string();
    let namespace = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or("default")
        .to_string();
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
