//! `builtin/delay`: waits, without holding a thread, then returns its input
//! unchanged. For latency demos and for testing timeouts end to end.
//!
//! ```yaml
//! with: { duration: 100ms }
//! ```

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::{duration_field, typed_with};
use crate::node::{ConfigError, Node, NodeConfig, NodeContext, NodeError, NodeOutput};

/// The catalog name of this node.
pub const USES: &str = "builtin/delay";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayWith {
    duration: String,
}

/// The node: how long each call waits.
#[derive(Debug)]
pub struct Delay {
    duration: Duration,
}

impl Delay {
    /// Builds the node from `with: { duration }`.
    ///
    /// # Errors
    /// A missing or malformed `duration`, or an unknown option.
    pub fn from_config(cfg: &NodeConfig) -> Result<Self, ConfigError> {
        let with: DelayWith = typed_with(cfg)?;
        Ok(Self {
            duration: duration_field(cfg, "duration", &with.duration)?,
        })
    }
}

#[async_trait]
impl Node for Delay {
    /// # Errors
    /// `Retryable` when the request's deadline comes before the delay ends;
    /// the call then returns at the deadline rather than after it.
    async fn call(&self, input: Value, ctx: &NodeContext) -> Result<NodeOutput, NodeError> {
        let remaining = ctx.remaining();
        if self.duration <= remaining {
            tokio::time::sleep(self.duration).await;
            Ok(NodeOutput::value(input))
        } else {
            tokio::time::sleep(remaining).await;
            Err(NodeError::Retryable("deadline reached during delay".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_support::{config, ctx_with};
    use serde_json::json;

    fn delay(d: &str) -> Delay {
        Delay::from_config(&config(USES, json!({"duration": d}))).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn sleeps_the_duration_then_returns_the_input() {
        let start = tokio::time::Instant::now();
        let out = delay("250ms")
            .call(json!({"a": 1}), &ctx_with(Duration::from_secs(30)))
            .await;
        assert_eq!(out, Ok(NodeOutput::value(json!({"a": 1}))));
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_cuts_the_delay_short_with_a_retryable_error() {
        let start = tokio::time::Instant::now();
        let out = delay("1m")
            .call(json!(null), &ctx_with(Duration::from_secs(2)))
            .await;
        assert_eq!(
            out,
            Err(NodeError::Retryable("deadline reached during delay".into()))
        );
        let waited = start.elapsed();
        assert!(
            waited <= Duration::from_secs(2) && waited > Duration::from_secs(1),
            "waited {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_deadline_fails_at_once() {
        let start = tokio::time::Instant::now();
        let out = delay("1s")
            .call(json!(null), &ctx_with(Duration::ZERO))
            .await;
        assert!(out.unwrap_err().is_retryable());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn missing_or_bad_duration_is_a_config_error() {
        let err = Delay::from_config(&config(USES, Value::Null)).unwrap_err();
        assert!(err.message.contains("duration"), "{err}");
        let err = Delay::from_config(&config(USES, json!({"duration": "soon"}))).unwrap_err();
        assert!(
            err.message.contains("with.duration") && err.message.contains("soon"),
            "{err}"
        );
    }
}
