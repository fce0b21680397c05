//! `builtin/echo`: returns its input unchanged, without a tag. Takes no
//! options; useful as a placeholder step and in tests of the runtime.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::typed_with;
use crate::node::{ConfigError, Node, NodeConfig, NodeContext, NodeError, NodeOutput};

/// The catalog name of this node.
pub const USES: &str = "builtin/echo";

/// No options: only an absent or empty `with` is accepted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoWith {}

/// The node; stateless.
#[derive(Debug, Default)]
pub struct Echo;

impl Echo {
    /// Builds the node.
    ///
    /// # Errors
    /// Any option in `with`.
    pub fn from_config(cfg: &NodeConfig) -> Result<Self, ConfigError> {
        let EchoWith {} = typed_with(cfg)?;
        Ok(Self)
    }
}

#[async_trait]
impl Node for Echo {
    async fn call(&self, input: Value, _ctx: &NodeContext) -> Result<NodeOutput, NodeError> {
        Ok(NodeOutput::value(input))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_support::{config, ctx};
    use serde_json::json;

    #[tokio::test]
    async fn returns_the_input_unchanged_without_tag() {
        let node = Echo::from_config(&config(USES, Value::Null)).unwrap();
        let input = json!({"a": [1, {"b": null}]});
        let out = node.call(input.clone(), &ctx()).await.unwrap();
        assert_eq!(
            out,
            NodeOutput {
                value: input,
                tag: None
            }
        );
    }

    #[test]
    fn empty_with_is_accepted_and_any_option_refused() {
        assert!(Echo::from_config(&config(USES, json!({}))).is_ok());
        let err = Echo::from_config(&config(USES, json!({"x": 1}))).unwrap_err();
        assert!(err.message.contains("`x`"), "{err}");
    }
}
