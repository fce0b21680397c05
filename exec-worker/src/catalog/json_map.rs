//! `builtin/json-map`: reshapes the input with a [`Template`] and optionally
//! tags it.
//!
//! ```yaml
//! with:
//!   template: { user: "${/name}", greeting: "hello ${/name}", all: "${}" }
//!   tag: "${/kind ?? \"other\"}"     # optional
//! ```
//!
//! Both are compiled when the node is built; a call only evaluates them.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::template::{Template, TemplateError};
use super::typed_with;
use crate::node::{ConfigError, Node, NodeConfig, NodeContext, NodeError, NodeOutput};

/// The catalog name of this node.
pub const USES: &str = "builtin/json-map";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonMapWith {
    /// Required: `null` is a legitimate template, so absence is detected by
    /// `Option` + `default` rather than by the value.
    #[serde(default, deserialize_with = "present")]
    template: Option<Value>,
    #[serde(default)]
    tag: Option<String>,
}

/// Deserializes a field that may hold `null` as `Some(Value::Null)`, keeping
/// `None` for an absent field.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The compiled node.
#[derive(Debug)]
pub struct JsonMap {
    template: Template,
    /// Evaluated against the input; its text is the output's tag (`null` → none).
    tag: Option<Template>,
}

impl JsonMap {
    /// Builds the node from `with: { template, tag? }`.
    ///
    /// # Errors
    /// A missing `template`, an unknown field, or a template or tag that does
    /// not compile.
    pub fn from_config(cfg: &NodeConfig) -> Result<Self, ConfigError> {
        let with: JsonMapWith = typed_with(cfg)?;
        let template = with
            .template
            .ok_or_else(|| ConfigError::new(cfg, "`with.template` is required"))?;
        let template =
            Template::compile(&template, "template").map_err(|e| ConfigError::new(cfg, e))?;
        let tag = with
            .tag
            .map(|t| Template::compile(&Value::String(t), "tag"))
            .transpose()
            .map_err(|e| ConfigError::new(cfg, e))?;
        Ok(Self { template, tag })
    }

    fn tag(&self, input: &Value) -> Result<Option<String>, TemplateError> {
        let Some(tag) = &self.tag else {
            return Ok(None);
        };
        Ok(match tag.evaluate(input)? {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        })
    }
}

#[async_trait]
impl Node for JsonMap {
    async fn call(&self, input: Value, _ctx: &NodeContext) -> Result<NodeOutput, NodeError> {
        let permanent = |e: TemplateError| NodeError::Permanent(format!("json-map: {e}"));
        let value = self.template.evaluate(&input).map_err(permanent)?;
        let tag = self.tag(&input).map_err(permanent)?;
        Ok(NodeOutput { value, tag })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_support::{config, ctx};
    use serde_json::json;

    fn build(with: Value) -> Result<JsonMap, ConfigError> {
        JsonMap::from_config(&config(USES, with))
    }

    #[tokio::test]
    async fn maps_input_through_the_template() {
        let node = build(json!({"template": {"id": "${/id}", "msg": "hi ${/who/name}"}})).unwrap();
        let out = node
            .call(json!({"id": 7, "who": {"name": "Ada"}}), &ctx())
            .await
            .unwrap();
        assert_eq!(out, NodeOutput::value(json!({"id": 7, "msg": "hi Ada"})));
    }

    /// The worked example of `docs/nodes.md`, kept true by this test.
    #[tokio::test]
    async fn documented_example_gives_the_documented_output() {
        let node = build(json!({
            "template": {
                "id": "${/order/id}",
                "customer": "${/order/customer}",
                "summary": "order ${/order/id} for ${/order/customer/name}",
                "priority": "${/order/priority ?? \"normal\"}",
                "original": "${}",
                "price": "$${not substituted}"
            },
            "tag": "${/order/kind ?? null}"
        }))
        .unwrap();
        let input = json!({"order": {"id": 7, "customer": {"name": "Ada"}, "kind": "express"}});
        let out = node.call(input.clone(), &ctx()).await.unwrap();
        assert_eq!(
            out.value,
            json!({
                "id": 7,
                "customer": {"name": "Ada"},
                "summary": "order 7 for Ada",
                "priority": "normal",
                "original": input,
                "price": "${not substituted}"
            })
        );
        assert_eq!(out.tag.as_deref(), Some("express"));
    }

    #[tokio::test]
    async fn tag_template_tags_the_output() {
        let node = build(json!({"template": "${}", "tag": "kind-${/kind}"})).unwrap();
        let out = node.call(json!({"kind": 2}), &ctx()).await.unwrap();
        assert_eq!(out.tag.as_deref(), Some("kind-2"));
        assert_eq!(out.value, json!({"kind": 2}));
    }

    #[tokio::test]
    async fn tag_evaluating_to_null_means_no_tag() {
        let node = build(json!({"template": 1, "tag": "${/kind ?? null}"})).unwrap();
        let out = node.call(json!({}), &ctx()).await.unwrap();
        assert_eq!(out.tag, None);
    }

    #[tokio::test]
    async fn missing_pointer_is_a_permanent_error_naming_it() {
        let node = build(json!({"template": {"a": "${/nope}"}})).unwrap();
        let err = node.call(json!({}), &ctx()).await.unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.message().contains("/nope"), "{err}");
    }

    #[test]
    fn null_template_is_allowed_but_absent_template_is_not() {
        assert!(build(json!({"template": null})).is_ok());
        let err = build(Value::Null).unwrap_err();
        assert!(err.message.contains("with.template"), "{err}");
    }

    #[test]
    fn invalid_template_is_a_config_error() {
        let err = build(json!({"template": {"x": "${/a"}})).unwrap_err();
        assert!(
            err.message.contains("unclosed") && err.message.contains("template/x"),
            "{err}"
        );
        let err = build(json!({"template": 1, "tag": "${a}"})).unwrap_err();
        assert!(err.message.contains("tag"), "{err}");
    }

    #[test]
    fn unknown_field_is_a_config_error() {
        let err = build(json!({"template": 1, "tags": "x"})).unwrap_err();
        assert!(err.message.contains("tags"), "{err}");
    }
}
