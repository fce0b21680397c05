//! `builtin/cpu`: burns CPU for a while, then returns its input unchanged. For
//! load and autoscaling demos, where a sleeping node would never saturate a pod.
//!
//! ```yaml
//! with: { duration: 50ms }
//! ```
//!
//! The busy loop runs on tokio's blocking pool, never on an async worker
//! thread, so a burning request cannot stall the other requests of its pod.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{duration_field, typed_with};
use crate::node::{ConfigError, Node, NodeConfig, NodeContext, NodeError, NodeOutput};

/// The catalog name of this node.
pub const USES: &str = "builtin/cpu";

/// Hashes between two looks at the clock: tens of microseconds of work, so
/// the burn overshoots its budget by far less than a millisecond while
/// `Instant::now` stays a negligible share of the loop.
const HASHES_PER_CLOCK_CHECK: u32 = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CpuWith {
    duration: String,
}

/// The node: how long each call burns.
#[derive(Debug)]
pub struct Cpu {
    duration: Duration,
}

impl Cpu {
    /// Builds the node from `with: { duration }`.
    ///
    /// # Errors
    /// A missing or malformed `duration`, or an unknown option.
    pub fn from_config(cfg: &NodeConfig) -> Result<Self, ConfigError> {
        let with: CpuWith = typed_with(cfg)?;
        Ok(Self {
            duration: duration_field(cfg, "duration", &with.duration)?,
        })
    }
}

#[async_trait]
impl Node for Cpu {
    /// # Errors
    /// `Retryable` when the request's deadline comes before the burn ends
    /// (the burn stops at the deadline), or if the blocking task panics.
    async fn call(&self, input: Value, ctx: &NodeContext) -> Result<NodeOutput, NodeError> {
        let remaining = ctx.remaining();
        let cut_short = remaining < self.duration;
        let budget = self.duration.min(remaining);
        // Dropping the call (the runtime gave up on the request) cancels the
        // token through the guard, so the blocking thread stops too instead of
        // burning out its budget for nobody.
        let stop = CancellationToken::new();
        let _guard = stop.clone().drop_guard();
        tokio::task::spawn_blocking(move || burn(budget, &stop))
            .await
            .map_err(|e| NodeError::Retryable(format!("cpu burn task failed: {e}")))?;
        if cut_short {
            return Err(NodeError::Retryable(
                "deadline reached during cpu burn".into(),
            ));
        }
        Ok(NodeOutput::value(input))
    }
}

/// Hashes in a loop for `budget` or until `stop` is cancelled.
fn burn(budget: Duration, stop: &CancellationToken) {
    let start = Instant::now();
    let mut digest = [0u8; 32];
    while start.elapsed() < budget && !stop.is_cancelled() {
        for _ in 0..HASHES_PER_CLOCK_CHECK {
            digest = Sha256::digest(digest).into();
        }
        // Keeps the optimiser from proving the loop has no effect.
        std::hint::black_box(&digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_support::{config, ctx_with};
    use serde_json::json;

    fn cpu(d: &str) -> Cpu {
        Cpu::from_config(&config(USES, json!({"duration": d}))).unwrap()
    }

    #[tokio::test]
    async fn burns_about_the_duration_then_returns_the_input() {
        let start = Instant::now();
        let out = cpu("60ms")
            .call(json!({"a": 1}), &ctx_with(Duration::from_secs(30)))
            .await;
        assert_eq!(out, Ok(NodeOutput::value(json!({"a": 1}))));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(60) && took < Duration::from_secs(5),
            "took {took:?}"
        );
    }

    #[tokio::test]
    async fn deadline_caps_the_burn_with_a_retryable_error() {
        let start = Instant::now();
        let out = cpu("1h")
            .call(json!(null), &ctx_with(Duration::from_millis(50)))
            .await;
        assert!(out.unwrap_err().is_retryable());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn burning_does_not_block_the_async_runtime() {
        // On a single-threaded runtime a busy loop on the runtime thread would
        // starve this timer until the burn ended.
        let node = cpu("2s");
        let ctx = ctx_with(Duration::from_secs(30));
        let burn = node.call(json!(null), &ctx);
        let tick = async {
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(20)).await;
            start.elapsed()
        };
        tokio::select! {
            _ = burn => panic!("the 2s burn finished before a 20ms timer"),
            waited = tick => assert!(waited < Duration::from_secs(1), "timer waited {waited:?}"),
        }
    }

    #[test]
    fn cancelled_burn_stops_early() {
        let stop = CancellationToken::new();
        stop.cancel();
        let start = Instant::now();
        burn(Duration::from_secs(3600), &stop);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn missing_duration_is_a_config_error() {
        let err = Cpu::from_config(&config(USES, json!({}))).unwrap_err();
        assert!(err.message.contains("duration"), "{err}");
    }
}
