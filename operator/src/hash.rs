//! The `sluice.dev/config-hash` of a pod template: a digest of what the pods
//! run, so a change rolls them and nothing else does.
//!
//! ```text
//! spec ─strip scaling and exposure─▶ canonical JSON ─┐
//! runtime images ───────────────────────────────────┴─sha256─▶ first 16 hex chars
//! ```
//!
//! The pods read the whole spec from the `P-pipeline` ConfigMap at start, but
//! a ConfigMap change alone does not restart them; the hash on the pod
//! template does. Replica counts, autoscaling bounds, `suspend`, `paused`
//! and `expose` are left out: pods never read them, and changing them must not restart
//! anything. JSON object keys are sorted before hashing, so the hash does not
//! depend on the order keys had in the user's YAML or in the API server's answer.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_crds::StreamPipelineSpec;

use crate::settings::RuntimeImages;

/// Hex characters kept from the digest: 64 bits, plenty to tell configs apart.
pub const HASH_LEN: usize = 16;

/// What the runtime pods of a pipeline run, hashed.
///
/// # Errors
/// Only if the spec cannot be turned into JSON, which its types rule out.
pub fn config_hash(
    spec: &StreamPipelineSpec,
    images: &RuntimeImages,
) -> Result<String, serde_json::Error> {
    let mut runs = spec.clone();
    runs.suspend = None;
    runs.paused = None;
    runs.expose = None;
    for g in &mut runs.groups {
        g.replicas = None;
        g.autoscale = None;
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Input<'a> {
        spec: &'a StreamPipelineSpec,
        ingress_image: &'a str,
        worker_image: &'a str,
        pull_policy: Option<&'a str>,
    }
    digest(&Input {
        spec: &runs,
        ingress_image: &images.ingress,
        worker_image: &images.worker,
        pull_policy: images.pull_policy.as_deref(),
    })
}

/// Hash of any serialisable input, with object keys sorted.
///
/// # Errors
/// If `value` cannot be turned into JSON.
pub fn digest<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let v = serde_json::to_value(value)?;
    let mut canonical = String::new();
    write_canonical(&v, &mut canonical);
    Ok(hex_prefix(canonical.as_bytes()))
}

/// First [`HASH_LEN`] hex characters of the SHA-256 of `bytes`.
pub fn hex_prefix(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(HASH_LEN / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compact JSON with object keys in byte order, whatever order the map keeps.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_does_not_change_the_digest() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"q":2,"p":3}],"x":"s"}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[1,{"p":3,"q":2}]},"b":1}"#).unwrap();
        assert_eq!(digest(&a).unwrap(), digest(&b).unwrap());
        assert_eq!(digest(&a).unwrap().len(), HASH_LEN);
        let c: Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[{"p":3,"q":2},1]},"b":1}"#).unwrap();
        assert_ne!(
            digest(&a).unwrap(),
            digest(&c).unwrap(),
            "array order matters"
        );
    }

    #[test]
    fn hex_prefix_is_the_start_of_the_sha256() {
        // sha256("") = e3b0c44298fc1c149afbf4c8996fb924...
        assert_eq!(hex_prefix(b""), "e3b0c44298fc1c14");
    }
}
