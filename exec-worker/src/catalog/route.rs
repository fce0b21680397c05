//! `builtin/route`: passes the input through unchanged and tags it with one of
//! its fields, so the node's conditional `next` (`{when: <tag>, to: <node>}`)
//! can branch on it.
//!
//! ```yaml
//! with: { field: /order/priority, default: normal }
//! ```

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::pointer::Pointer;
use super::{json_type, typed_with};
use crate::node::{ConfigError, Node, NodeConfig, NodeContext, NodeError, NodeOutput};

/// The catalog name of this node.
pub const USES: &str = "builtin/route";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteWith {
    field: String,
    #[serde(default)]
    default: Option<String>,
}

/// The node: a parsed pointer and the fallback tag.
#[derive(Debug)]
pub struct Route {
    field: Pointer,
    /// The tag when the field is missing or `null`; no tag when `None`.
    default: Option<String>,
}

impl Route {
    /// Builds the node from `with: { field, default? }`.
    ///
    /// # Errors
    /// A missing or malformed `field` pointer, or an unknown option.
    pub fn from_config(cfg: &NodeConfig) -> Result<Self, ConfigError> {
        let with: RouteWith = typed_with(cfg)?;
        let field = Pointer::parse(&with.field)
            .map_err(|e| ConfigError::new(cfg, format!("`with.field`: {e}")))?;
        Ok(Self {
            field,
            default: with.default,
        })
    }
}

#[async_trait]
impl Node for Route {
    async fn call(&self, input: Value, _ctx: &NodeContext) -> Result<NodeOutput, NodeError> {
        let tag = match self.field.resolve(&input) {
            None | Some(Value::Null) => self.default.clone(),
            Some(Value::String(s)) => Some(s.clone()),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(v.to_string()),
            // Routing on a whole object is a manifest mistake; taking the
            // default branch would hide it behind plausible-looking output.
            Some(v @ (Value::Array(_) | Value::Object(_))) => {
                return Err(NodeError::Permanent(format!(
                    "route: field `{}` is {}; tags are made from strings, numbers or booleans",
                    self.field,
                    json_type(v)
                )))
            }
        };
        Ok(NodeOutput { value: input, tag })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_support::{config, ctx};
    use serde_json::json;

    async fn tag_of(with: Value, input: Value) -> Result<Option<String>, NodeError> {
        let node = Route::from_config(&config(USES, with)).unwrap();
        let out = node.call(input.clone(), &ctx()).await?;
        assert_eq!(out.value, input, "route must not change its input");
        Ok(out.tag)
    }

    #[tokio::test]
    async fn string_field_becomes_the_tag_as_is() {
        let tag = tag_of(json!({"field": "/kind"}), json!({"kind": "big one"})).await;
        assert_eq!(tag, Ok(Some("big one".into())));
    }

    #[tokio::test]
    async fn numbers_and_booleans_become_their_json_text() {
        assert_eq!(
            tag_of(json!({"field": "/n"}), json!({"n": 2.5})).await,
            Ok(Some("2.5".into()))
        );
        assert_eq!(
            tag_of(json!({"field": "/a/0"}), json!({"a": [true]})).await,
            Ok(Some("true".into()))
        );
    }

    #[tokio::test]
    async fn missing_or_null_field_takes_the_default_or_no_tag() {
        let with = json!({"field": "/kind", "default": "other"});
        assert_eq!(
            tag_of(with.clone(), json!({})).await,
            Ok(Some("other".into()))
        );
        assert_eq!(
            tag_of(with, json!({"kind": null})).await,
            Ok(Some("other".into()))
        );
        assert_eq!(tag_of(json!({"field": "/kind"}), json!({})).await, Ok(None));
    }

    #[tokio::test]
    async fn object_field_is_a_permanent_error() {
        let err = tag_of(json!({"field": "/o"}), json!({"o": {}}))
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.message().contains("/o") && err.message().contains("object"),
            "{err}"
        );
    }

    #[test]
    fn missing_or_malformed_field_is_a_config_error() {
        let err = Route::from_config(&config(USES, Value::Null)).unwrap_err();
        assert!(err.message.contains("field"), "{err}");
        let err = Route::from_config(&config(USES, json!({"field": "kind"}))).unwrap_err();
        assert!(err.message.contains("with.field"), "{err}");
    }
}
