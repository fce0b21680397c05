//! YAML in and out, with the limits a hostile manifest needs.
//!
//! Every StreamPipeline YAML that sluice reads — a local `--pipeline` file,
//! the `P-pipeline` ConfigMap a runtime pod mounts, a test fixture — goes
//! through [`from_str`], which refuses before allocating without bound:
//!
//! - input over [`MAX_YAML_BYTES`] (a ConfigMap holds at most 1 MiB);
//! - nesting deeper than [`MAX_YAML_DEPTH`] levels;
//! - more than [`MAX_YAML_NODES`] nodes, or aliases that expand past
//!   [`MAX_YAML_ALIASES`] (the "billion laughs" bomb);
//! - duplicate keys in a mapping (YAML forbids them, and which one wins
//!   differs between tools, so a reviewer could be shown one value while the
//!   cluster runs the other).
//!
//! [`to_string`] writes YAML in one fixed style, so generated files (the CRD,
//! the ConfigMap body, golden snapshots) only change when their content does.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest YAML text read, in bytes: what a ConfigMap can hold.
pub const MAX_YAML_BYTES: usize = 1024 * 1024;
/// Deepest nesting of mappings and sequences.
pub const MAX_YAML_DEPTH: usize = 64;
/// Most nodes (scalars, mappings, sequences) in one document, aliases expanded.
pub const MAX_YAML_NODES: usize = 100_000;
/// Most alias references (`*name`) in one document.
pub const MAX_YAML_ALIASES: usize = 1_000;

/// Why a YAML text was refused.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("the document is {len} bytes; at most {MAX_YAML_BYTES} are read")]
    TooLarge { len: usize },
    #[error("{0}")]
    Syntax(String),
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_YAML_DEPTH;
    budget.flow_nesting_limit = MAX_YAML_DEPTH;
    budget.max_nodes = MAX_YAML_NODES;
    budget.max_events = 4 * MAX_YAML_NODES;
    budget.max_aliases = MAX_YAML_ALIASES;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = MAX_YAML_BYTES;
    budget.max_recorded_anchor_bytes = MAX_YAML_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options.with_snippet = false;
    options
}

/// Reads one YAML document into `T` within the limits above.
///
/// # Errors
/// Text over [`MAX_YAML_BYTES`], a syntax error, a limit reached, a duplicate
/// key, or a shape `T` does not accept; the message says which and where.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    if text.len() > MAX_YAML_BYTES {
        return Err(YamlError::TooLarge { len: text.len() });
    }
    serde_saphyr::from_str_with_options(text, options())
        .map_err(|e| YamlError::Syntax(first_line(&e.to_string())))
}

/// Writes `value` as block-style YAML with two-space indentation.
///
/// # Errors
/// Only when `value`'s `Serialize` fails (a map with non-string keys).
pub fn to_string<T: Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    // Text with line breaks (the ConfigMap's manifest, multi-line
    // descriptions) is written as a literal block; long single-line strings
    // (CEL rules) are never folded, so a diff shows content changes only.
    options.prefer_block_scalars = true;
    options.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(value, options)
}

/// Error texts may carry a multi-line source snippet; one line is enough
/// for a log or a status condition, and never echoes large input back.
fn first_line(s: &str) -> String {
    const MAX: usize = 512;
    let line = s.lines().next().unwrap_or_default();
    match line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn a_billion_laughs_bomb_is_refused_without_expanding() {
        let mut doc = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = (b'a' + i - 1) as char;
            let this = (b'a' + i) as char;
            doc.push_str(&format!(
                "{this}: &{this} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let err = from_str::<Value>(&doc).unwrap_err().to_string();
        assert!(!err.is_empty());
    }

    #[test]
    fn nesting_past_the_depth_limit_is_refused() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(from_str::<Value>(&deep).is_err());
        let mut block = String::new();
        for i in 0..100 {
            block.push_str(&format!("{}k:\n", "  ".repeat(i)));
        }
        assert!(from_str::<Value>(&block).is_err());
        let ok = format!("{}1{}", "[".repeat(30), "]".repeat(30));
        assert!(from_str::<Value>(&ok).is_ok());
    }

    #[test]
    fn duplicate_keys_are_refused_and_named() {
        let err = from_str::<Value>("a: 1\nb: 2\na: 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.to_lowercase().contains("duplicate"), "{err}");
    }

    #[test]
    fn text_over_the_size_limit_is_refused_before_parsing() {
        let big = format!("a: \"{}\"\n", "x".repeat(MAX_YAML_BYTES));
        assert!(matches!(
            from_str::<Value>(&big),
            Err(YamlError::TooLarge { .. })
        ));
    }

    #[test]
    fn output_reads_back_to_the_same_value() {
        let v: Value = serde_json::json!({
            "s": "a long string that is well over eighty characters so that a folding writer would fold it",
            "n": 3, "b": true, "l": ["x", {"y": null}], "e": {}, "q": "yes", "c": "a: b"
        });
        let text = to_string(&v).unwrap();
        assert_eq!(from_str::<Value>(&text).unwrap(), v, "{text}");
    }
}
