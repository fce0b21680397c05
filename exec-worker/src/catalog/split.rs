//! `builtin/split`: streams an array of the input as chunks, a few items
//! each, optionally paced, then answers with how many it sent. On an `sse`
//! interface the caller sees each chunk as it is emitted; anywhere else only
//! the final count.
//!
//! ```yaml
//! with: { field: /items, size: 1, every: 200ms }
//! ```

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use super::pointer::Pointer;
use super::{duration_field, json_type, typed_with};
use crate::node::{ConfigError, Node, NodeConfig, NodeContext, NodeError, NodeOutput};

/// The catalog name of this node.
pub const USES: &str = "builtin/split";

/// Items per chunk, at most.
const MAX_SIZE: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitWith {
    /// JSON pointer to the array (default: the input itself).
    #[serde(default)]
    field: Option<String>,
    /// Items per chunk (default 1): a chunk of size 1 is the item itself,
    /// larger ones are arrays.
    #[serde(default)]
    size: Option<usize>,
    /// Pause before each chunk after the first (default none).
    #[serde(default)]
    every: Option<String>,
}

/// The node: where the array is, how it is cut, and the pace.
#[derive(Debug)]
pub struct Split {
    field: Pointer,
    size: usize,
    every: Duration,
}

impl Split {
    /// Builds the node from `with: { field, size, every }`.
    ///
    /// # Errors
    /// A malformed pointer or duration, a size outside 1..=10000, or an
    /// unknown option.
    pub fn from_config(cfg: &NodeConfig) -> Result<Self, ConfigError> {
        let with: SplitWith = typed_with(cfg)?;
        let field = Pointer::parse(with.field.as_deref().unwrap_or(""))
            .map_err(|e| ConfigError::new(cfg, format!("`with.field`: {e}")))?;
        let size = with.size.unwrap_or(1);
        if !(1..=MAX_SIZE).contains(&size) {
            return Err(ConfigError::new(
                cfg,
                format!("`with.size` must be 1 to {MAX_SIZE}, got {size}"),
            ));
        }
        let every = match &with.every {
            Some(t) => duration_field(cfg, "every", t)?,
            None => Duration::ZERO,
        };
        Ok(Self { field, size, every })
    }
}

#[async_trait]
impl Node for Split {
    /// # Errors
    /// `Permanent` when the field is missing or not an array; a chunk that
    /// cannot be sent fails as [`NodeContext::emit`] says; `Retryable` when
    /// the deadline comes before the pacing ends.
    async fn call(&self, input: Value, ctx: &NodeContext) -> Result<NodeOutput, NodeError> {
        let items = match self.field.resolve(&input) {
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(NodeError::Permanent(format!(
                    "`{}` must be an array, got {}",
                    self.field.as_str(),
                    json_type(other)
                )))
            }
            None => {
                return Err(NodeError::Permanent(format!(
                    "the input has no `{}`",
                    self.field.as_str()
                )))
            }
        };
        let mut chunks = 0u64;
        for (i, part) in items.chunks(self.size).enumerate() {
            if i > 0 && !self.every.is_zero() {
                if self.every > ctx.remaining() {
                    return Err(NodeError::Retryable(
                        "deadline reached while streaming".into(),
                    ));
                }
                tokio::time::sleep(self.every).await;
            }
            let chunk = match part {
                [one] if self.size == 1 => one.clone(),
                many => Value::Array(many.to_vec()),
            };
            ctx.emit(chunk).await?;
            chunks += 1;
        }
        Ok(NodeOutput::value(json!({ "chunks": chunks })))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;
    use crate::catalog::test_support::{config, ctx_with};
    use crate::node::{ChunkSink, Chunks};

    #[derive(Default)]
    struct Collect(Mutex<Vec<Value>>);

    #[async_trait]
    impl ChunkSink for Collect {
        async fn send(&self, chunk: Value) -> Result<(), NodeError> {
            self.0.lock().push(chunk);
            Ok(())
        }
    }

    fn split(with: Value) -> Split {
        Split::from_config(&config(USES, with)).unwrap()
    }

    fn streamed(left: Duration) -> (NodeContext, Arc<Collect>) {
        let sink = Arc::new(Collect::default());
        let ctx = NodeContext {
            chunks: Chunks::to(sink.clone()),
            ..ctx_with(left)
        };
        (ctx, sink)
    }

    #[tokio::test(start_paused = true)]
    async fn emits_the_items_in_order_at_the_pace_then_counts_them() {
        let (ctx, sink) = streamed(Duration::from_secs(30));
        let start = tokio::time::Instant::now();
        let out = split(json!({"field": "/items", "size": 2, "every": "100ms"}))
            .call(json!({"items": [1, 2, 3, 4, 5]}), &ctx)
            .await;
        assert_eq!(out, Ok(NodeOutput::value(json!({"chunks": 3}))));
        assert_eq!(
            *sink.0.lock(),
            vec![json!([1, 2]), json!([3, 4]), json!([5])]
        );
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test]
    async fn size_one_sends_the_items_themselves_and_without_a_stream_only_counts() {
        let (ctx, sink) = streamed(Duration::from_secs(30));
        let node = split(json!({}));
        let out = node.call(json!(["a", {"b": 1}]), &ctx).await;
        assert_eq!(out, Ok(NodeOutput::value(json!({"chunks": 2}))));
        assert_eq!(*sink.0.lock(), vec![json!("a"), json!({"b": 1})]);
        let out = node
            .call(json!([1, 2, 3]), &ctx_with(Duration::from_secs(1)))
            .await;
        assert_eq!(out, Ok(NodeOutput::value(json!({"chunks": 3}))));
    }

    // Real time: the deadline is read from the wall clock.
    #[tokio::test]
    async fn a_pace_past_the_deadline_fails_retryably_before_sleeping() {
        let (ctx, sink) = streamed(Duration::from_millis(150));
        let start = tokio::time::Instant::now();
        let out = split(json!({"every": "100ms"}))
            .call(json!([1, 2, 3]), &ctx)
            .await;
        assert!(out.unwrap_err().is_retryable());
        assert_eq!(sink.0.lock().len(), 2);
        assert!(start.elapsed() < Duration::from_millis(150));
    }

    #[tokio::test]
    async fn a_missing_or_wrong_field_is_permanent() {
        let node = split(json!({"field": "/items"}));
        let ctx = ctx_with(Duration::from_secs(1));
        let e = node.call(json!({}), &ctx).await.unwrap_err();
        assert_eq!(e, NodeError::Permanent("the input has no `/items`".into()));
        let e = node.call(json!({"items": 3}), &ctx).await.unwrap_err();
        assert!(
            e.message().contains("must be an array, got a number"),
            "{e}"
        );
    }

    #[test]
    fn bad_options_are_config_errors() {
        for (with, why) in [
            (json!({"size": 0}), "with.size"),
            (json!({"size": 10_001}), "with.size"),
            (json!({"every": "soon"}), "with.every"),
            (json!({"field": "items"}), "with.field"),
            (json!({"sized": 1}), "sized"),
        ] {
            let err = Split::from_config(&config(USES, with.clone())).unwrap_err();
            assert!(err.message.contains(why), "{with}: {err}");
        }
    }
}
