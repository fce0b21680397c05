//! `custom-worker`: an example custom sluice worker image.
//!
//! It is `sluice-exec-worker` (same flags, same `SLUICE_*` environment, same
//! admin endpoints) with one extra Rust node registered on top of the built-in
//! catalog:
//!
//! - `rust/score`: a weighted sum of numeric input fields, added to the input
//!   under `field` (default `score`), tagged `high`/`low` against an optional
//!   `threshold` so conditional `next` routes can branch on it.
//!
//! ```yaml
//! - name: score
//!   group: scorers            # a worker group with `image:` set to this image
//!   uses: rust/score
//!   with:
//!     weights: { "/items": 2, "/urgent": 10 }   # JSON pointer -> weight
//!     threshold: 15                              # optional: tag high / low
//!     field: score                               # optional output field
//! ```
//!
//! Error classes: a bad `with` block fails at start-up (the pod does not become
//! ready); bad input (not an object, a weighted field missing or not a number or
//! boolean) is a *permanent* error, so the caller gets 422 at once instead of
//! the envelope being redelivered. The node does no I/O, so it has no transient
//! (retryable) failure mode; a node calling a service would return
//! `NodeError::Retryable` for timeouts and 5xx.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use sluice_exec_worker::catalog::typed_with;
use sluice_exec_worker::{
    ConfigError, Node, NodeConfig, NodeContext, NodeError, NodeOutput, Registry,
};

/// The `uses` name this image adds to the catalog.
pub const SCORE: &str = "rust/score";

fn main() -> std::process::ExitCode {
    sluice_exec_worker::process::run(registry())
}

/// The built-in catalog plus `rust/score`.
fn registry() -> Registry {
    let mut registry = Registry::builtin();
    registry.register(SCORE, |cfg| {
        Ok(Arc::new(ScoreNode::from_config(cfg)?) as Arc<dyn Node>)
    });
    registry
}

/// The `with` block of `rust/score`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreWith {
    /// JSON pointer (e.g. `/items`) -> weight. At least one.
    weights: BTreeMap<String, f64>,
    /// When set, the output is tagged `high` (score >= threshold) or `low`.
    #[serde(default)]
    threshold: Option<f64>,
    /// Output field the score is written to.
    #[serde(default = "default_field")]
    field: String,
}

fn default_field() -> String {
    "score".to_string()
}

/// `rust/score`: weighted sum of numeric input fields.
#[derive(Debug)]
struct ScoreNode {
    weights: Vec<(String, f64)>,
    threshold: Option<f64>,
    field: String,
}

impl ScoreNode {
    fn from_config(cfg: &NodeConfig) -> Result<Self, ConfigError> {
        let with: ScoreWith = typed_with(cfg)?;
        if with.weights.is_empty() {
            return Err(ConfigError::new(
                cfg,
                "`weights` must name at least one field",
            ));
        }
        for (pointer, weight) in &with.weights {
            if !pointer.starts_with('/') {
                return Err(ConfigError::new(
                    cfg,
                    format!("`weights` key `{pointer}` must be a JSON pointer such as `/items`"),
                ));
            }
            if !weight.is_finite() {
                return Err(ConfigError::new(
                    cfg,
                    format!("weight of `{pointer}` must be a finite number"),
                ));
            }
        }
        if with.threshold.is_some_and(|t| !t.is_finite()) {
            return Err(ConfigError::new(cfg, "`threshold` must be a finite number"));
        }
        if with.field.is_empty() {
            return Err(ConfigError::new(cfg, "`field` must not be empty"));
        }
        Ok(Self {
            weights: with.weights.into_iter().collect(),
            threshold: with.threshold,
            field: with.field,
        })
    }

    fn score(&self, input: &Value) -> Result<f64, NodeError> {
        let mut total = 0.0;
        for (pointer, weight) in &self.weights {
            let x = match input.pointer(pointer) {
                None => {
                    return Err(NodeError::Permanent(format!(
                        "input has no field `{pointer}`"
                    )))
                }
                Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
                Some(Value::Bool(b)) => f64::from(u8::from(*b)),
                Some(other) => {
                    return Err(NodeError::Permanent(format!(
                        "field `{pointer}` must be a number or a boolean, got {}",
                        type_name(other)
                    )))
                }
            };
            total += weight * x;
        }
        if total.is_finite() {
            Ok(total)
        } else {
            Err(NodeError::Permanent(
                "the score is not a finite number".into(),
            ))
        }
    }
}

#[async_trait]
impl Node for ScoreNode {
    async fn call(&self, input: Value, _ctx: &NodeContext) -> Result<NodeOutput, NodeError> {
        let Value::Object(map) = &input else {
            return Err(NodeError::Permanent(format!(
                "input must be a JSON object, got {}",
                type_name(&input)
            )));
        };
        let score = self.score(&input)?;
        let tag = self.threshold.map(|t| {
            if score >= t {
                "high".to_string()
            } else {
                "low".to_string()
            }
        });
        let mut out = map.clone();
        out.insert(self.field.clone(), number(score));
        Ok(NodeOutput {
            value: Value::Object(out),
            tag,
        })
    }
}

/// `score` as JSON: an integer when it is one (so `16`, not `16.0`).
fn number(score: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if score.fract() == 0.0 && score.abs() < EXACT {
        // Exact: an integral f64 below 2^53 converts to i64 without loss.
        #[allow(clippy::cast_possible_truncation)]
        Value::from(score as i64)
    } else {
        serde_json::Number::from_f64(score).map_or(Value::Null, Value::Number)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use serde_json::json;

    use super::*;

    fn config(with: Value) -> NodeConfig {
        NodeConfig {
            name: "score".into(),
            uses: SCORE.into(),
            with,
            secrets_dir: PathBuf::from("/nonexistent/sluice-secrets"),
        }
    }

    fn ctx() -> NodeContext {
        NodeContext {
            request_id: "req-1".into(),
            correlation_id: "corr-1".into(),
            node: "score".into(),
            deadline: SystemTime::now() + Duration::from_secs(60),
            attempt: 1,
            chunks: sluice_exec_worker::Chunks::none(),
        }
    }

    fn node(with: Value) -> Arc<dyn Node> {
        registry().build(&config(with)).expect("valid config")
    }

    async fn call(with: Value, input: Value) -> Result<NodeOutput, NodeError> {
        node(with).call(input, &ctx()).await
    }

    fn pipeline_with() -> Value {
        json!({ "weights": { "/items": 2, "/urgent": 10 }, "threshold": 15 })
    }

    #[tokio::test]
    async fn weighted_sum_is_added_and_tagged() {
        let out = call(
            pipeline_with(),
            json!({"id": "A1", "items": 3, "urgent": true}),
        )
        .await
        .unwrap();
        assert_eq!(
            out.value,
            json!({"id": "A1", "items": 3, "urgent": true, "score": 16})
        );
        assert_eq!(out.tag.as_deref(), Some("high"));

        let out = call(
            pipeline_with(),
            json!({"id": "B2", "items": 2, "urgent": false}),
        )
        .await
        .unwrap();
        assert_eq!(out.value["score"], json!(4));
        assert_eq!(out.tag.as_deref(), Some("low"));
    }

    #[tokio::test]
    async fn threshold_is_inclusive_and_optional() {
        let out = call(pipeline_with(), json!({"items": 0, "urgent": 1.5}))
            .await
            .unwrap();
        assert_eq!(out.value["score"], json!(15));
        assert_eq!(out.tag.as_deref(), Some("high"));

        let out = call(json!({"weights": {"/a/b": 0.5}}), json!({"a": {"b": 3}}))
            .await
            .unwrap();
        assert_eq!(out.value["score"], json!(1.5));
        assert_eq!(out.tag, None);
    }

    #[tokio::test]
    async fn custom_output_field() {
        let with = json!({"weights": {"/x": 1}, "field": "rank"});
        let out = call(with, json!({"x": 7})).await.unwrap();
        assert_eq!(out.value, json!({"x": 7, "rank": 7}));
    }

    #[tokio::test]
    async fn bad_input_is_permanent() {
        for (input, wants) in [
            (json!([1, 2]), "input must be a JSON object, got an array"),
            (json!({"urgent": true}), "input has no field `/items`"),
            (
                json!({"items": "many", "urgent": true}),
                "field `/items` must be a number or a boolean, got a string",
            ),
            (
                json!({"items": 1e308, "urgent": 1e308}),
                "the score is not a finite number",
            ),
        ] {
            let err = call(pipeline_with(), input).await.unwrap_err();
            assert!(!err.is_retryable(), "{err}");
            assert_eq!(err.message(), wants);
        }
    }

    #[test]
    fn bad_config_fails_at_build() {
        for (with, wants) in [
            (json!({}), "invalid `with`"),
            (json!({"weights": {}}), "at least one field"),
            (json!({"weights": {"items": 1}}), "must be a JSON pointer"),
            (
                json!({"weights": {"/x": 1}, "field": ""}),
                "`field` must not be empty",
            ),
            (json!({"weights": {"/x": 1}, "bogus": 1}), "unknown field"),
            (json!([1]), "`with` must be a mapping"),
        ] {
            let Err(err) = registry().build(&config(with.clone())) else {
                panic!("{with}: built");
            };
            assert!(err.message.contains(wants), "{with}: {}", err.message);
        }
    }

    /// The answers the README and kind-e2e expect: score, then the json-map
    /// template of the branch it routes to, as `pipeline.yaml` configures them.
    #[tokio::test]
    async fn example_answers() {
        let text = include_str!("../pipeline.yaml");
        let (pipeline, _plan) =
            sluice_crds::parse_manifest("pipeline.yaml", text).expect("pipeline.yaml is valid");
        let build = |name: &str| {
            let n = pipeline.spec.nodes.iter().find(|n| n.name == name).unwrap();
            let cfg = NodeConfig {
                name: n.name.clone(),
                uses: n.uses.clone(),
                with: n.with.clone().unwrap_or(Value::Null),
                secrets_dir: PathBuf::from("/nonexistent/sluice-secrets"),
            };
            let Ok(node) = registry().build(&cfg) else {
                panic!("node {name} builds")
            };
            node
        };
        for (input, branch, answer) in [
            (
                json!({"id": "A1", "items": 3, "urgent": true}),
                "fast-track",
                json!({"id": "A1", "lane": "fast-track", "score": 16}),
            ),
            (
                json!({"id": "B2", "items": 2, "urgent": false}),
                "standard",
                json!({"id": "B2", "lane": "standard", "score": 4}),
            ),
        ] {
            let scored = build("score").call(input, &ctx()).await.unwrap();
            let expected_tag = if branch == "fast-track" {
                "high"
            } else {
                "low"
            };
            assert_eq!(scored.tag.as_deref(), Some(expected_tag));
            let out = build(branch).call(scored.value, &ctx()).await.unwrap();
            assert_eq!(out.value, answer);
        }
    }

    #[test]
    fn registry_keeps_the_builtins() {
        let r = registry();
        assert!(r.contains(SCORE));
        assert!(r.contains("builtin/json-map"));
        assert!(r.contains("builtin/route"));
    }

    #[test]
    fn numbers_render_as_integers_when_integral() {
        assert_eq!(number(16.0), json!(16));
        assert_eq!(number(-3.0), json!(-3));
        assert_eq!(number(2.5), json!(2.5));
    }

    /// `pipeline.yaml` is a valid StreamPipeline and every node in it builds
    /// with this image's registry (so the worker pod would start).
    #[test]
    fn example_pipeline_builds_with_this_registry() {
        let text = include_str!("../pipeline.yaml");
        let (pipeline, _plan) =
            sluice_crds::parse_manifest("examples/custom-worker/pipeline.yaml", text)
                .expect("pipeline.yaml is valid");
        let r = registry();
        assert!(pipeline.spec.nodes.iter().any(|n| n.uses == SCORE));
        for n in &pipeline.spec.nodes {
            let cfg = NodeConfig {
                name: n.name.clone(),
                uses: n.uses.clone(),
                with: n.with.clone().unwrap_or(Value::Null),
                secrets_dir: PathBuf::from("/nonexistent/sluice-secrets"),
            };
            if let Err(e) = r.build(&cfg) {
                panic!("node {}: {e}", n.name);
            }
        }
        let groups: Vec<_> = pipeline.spec.groups.iter().collect();
        let scorers = groups
            .iter()
            .find(|g| g.name == "scorers")
            .expect("group scorers");
        assert_eq!(scorers.image.as_deref(), Some("sluice-custom-worker:dev"));
    }
}
