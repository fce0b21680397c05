//! The built-in node catalog of the default worker image.
//!
//! Every `builtin/*` node is a struct implementing [`Node`], built once at
//! start-up by a factory that reads the node's `with` block into a typed
//! config (unknown fields refused) and validates it, so a bad manifest fails
//! when the worker starts, never on the first request.
//!
//! # Layout
//! - [`echo`]: `builtin/echo`, the input unchanged.
//! - [`json_map`]: `builtin/json-map`, reshapes the input with a [`template`].
//! - [`http`]: `builtin/http`, calls a sidecar or service.
//! - [`delay`]: `builtin/delay`, waits (latency demos).
//! - [`cpu`]: `builtin/cpu`, burns CPU (load and autoscaling demos).
//! - [`route`]: `builtin/route`, tags the input by one of its fields.
//! - [`split`]: `builtin/split`, streams an array as chunks.
//! - [`template`]: the json-map template language, compiled once, evaluated per call.
//! - [`pointer`](mod@pointer): RFC 6901 JSON pointers, parsed once.
//!
//! The user-facing reference for every `with` option is `docs/nodes.md`.

pub mod cpu;
pub mod delay;
pub mod echo;
pub mod http;
pub mod json_map;
pub mod pointer;
pub mod route;
pub mod split;
pub mod template;

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::node::{ConfigError, Node, NodeConfig};
use crate::registry::Registry;

impl Registry {
    /// A registry holding the `builtin/*` catalog.
    pub fn builtin() -> Self {
        let mut r = Self::new();
        register_builtins(&mut r);
        r
    }
}

/// Registers every `builtin/*` node.
pub fn register_builtins(r: &mut Registry) {
    r.register(echo::USES, |cfg| shared(echo::Echo::from_config(cfg)));
    r.register(json_map::USES, |cfg| {
        shared(json_map::JsonMap::from_config(cfg))
    });
    r.register(http::USES, |cfg| shared(http::Http::from_config(cfg)));
    r.register(delay::USES, |cfg| shared(delay::Delay::from_config(cfg)));
    r.register(cpu::USES, |cfg| shared(cpu::Cpu::from_config(cfg)));
    r.register(route::USES, |cfg| shared(route::Route::from_config(cfg)));
    r.register(split::USES, |cfg| shared(split::Split::from_config(cfg)));
}

fn shared<N: Node>(node: Result<N, ConfigError>) -> Result<Arc<dyn Node>, ConfigError> {
    node.map(|n| Arc::new(n) as Arc<dyn Node>)
}

/// Parses a duration such as `250ms`, `5s`, `1m30s` or `24h` (units `ms`, `s`,
/// `m`, `h`, concatenated largest first or in any order).
///
/// This is the grammar the CRD schema enforces on every duration of a
/// StreamPipeline (`sluice_crds::units::DURATION_PATTERN`), so it delegates to
/// the parser that lives next to that pattern: a duration the API server
/// accepted always parses here.
///
/// # Errors
/// Empty input, a missing or unknown unit, or an overflowing value; the
/// message quotes the input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    sluice_crds::units::parse_duration(s)
}

/// Reads a node's `with` block into its typed config `T`.
///
/// `Value::Null` (no `with` block) reads as an empty mapping, so a config whose
/// fields all have defaults needs no block and one with a required field says
/// which field is missing. `T` should be `#[serde(deny_unknown_fields)]`: a
/// misspelt option is an error naming it, not a silently ignored line.
///
/// # Errors
/// `with` is not a mapping, or does not match `T`; the message names the
/// offending field as serde reports it.
pub fn typed_with<T: DeserializeOwned>(cfg: &NodeConfig) -> Result<T, ConfigError> {
    let with = match &cfg.with {
        Value::Null => Value::Object(serde_json::Map::new()),
        v @ Value::Object(_) => v.clone(),
        other => {
            return Err(ConfigError::new(
                cfg,
                format!("`with` must be a mapping, got {}", json_type(other)),
            ))
        }
    };
    serde_json::from_value(with).map_err(|e| ConfigError::new(cfg, format!("invalid `with`: {e}")))
}

/// Parses the duration option `field` of a node's `with` block.
///
/// # Errors
/// The text is not a duration; the message names `field`.
pub(crate) fn duration_field(
    cfg: &NodeConfig,
    field: &str,
    text: &str,
) -> Result<Duration, ConfigError> {
    parse_duration(text).map_err(|e| ConfigError::new(cfg, format!("`with.{field}`: {e}")))
}

/// The JSON type name of `v`, for error messages that must not echo values.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Helpers shared by the catalog's unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use serde_json::Value;

    use crate::node::{NodeConfig, NodeContext};

    /// A config for node `n` of type `uses` with the given `with` block.
    pub fn config(uses: &str, with: Value) -> NodeConfig {
        NodeConfig {
            name: "n".into(),
            uses: uses.into(),
            with,
            secrets_dir: PathBuf::from("/nonexistent/sluice-secrets"),
        }
    }

    /// A context whose deadline is `left` from now.
    pub fn ctx_with(left: Duration) -> NodeContext {
        NodeContext {
            request_id: "req-1".into(),
            correlation_id: "corr-1".into(),
            node: "n".into(),
            deadline: SystemTime::now() + left,
            attempt: 1,
            chunks: crate::Chunks::none(),
        }
    }

    /// A context with plenty of time left.
    pub fn ctx() -> NodeContext {
        ctx_with(Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::config;
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        size: u32,
    }

    #[test]
    fn builtin_registry_knows_every_catalog_node() {
        let r = Registry::builtin();
        let names: Vec<_> = r.names().collect();
        assert_eq!(
            names,
            [
                "builtin/cpu",
                "builtin/delay",
                "builtin/echo",
                "builtin/http",
                "builtin/json-map",
                "builtin/route",
                "builtin/split",
            ]
        );
    }

    #[test]
    fn durations_of_every_unit_and_combinations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1h1m1s1ms"),
            Ok(Duration::from_millis(3_661_001))
        );
    }

    #[test]
    fn malformed_durations_are_refused_with_the_input_quoted() {
        for bad in ["", "10", "ms", "1.5s", "10 years", "-1s", "1d"] {
            assert!(parse_duration(bad).is_err(), "`{bad}` parsed");
        }
        assert!(parse_duration("1d").unwrap_err().contains("1d"));
    }

    #[test]
    fn null_with_reads_as_defaults() {
        let s: Sample = typed_with(&config("x", Value::Null)).unwrap();
        assert_eq!(s.size, 0);
    }

    #[test]
    fn unknown_with_field_is_a_config_error_naming_it() {
        let err = typed_with::<Sample>(&config("x", json!({"sise": 1}))).unwrap_err();
        assert!(err.message.contains("sise"), "{err}");
        assert_eq!(err.node, "n");
    }

    #[test]
    fn non_mapping_with_is_a_config_error() {
        let err = typed_with::<Sample>(&config("x", json!([1]))).unwrap_err();
        assert!(err.message.contains("must be a mapping"), "{err}");
    }
}
