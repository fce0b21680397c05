//! The node contract: what every processing step — built in or user-written —
//! promises the runtime.
//!
//! A node takes JSON in and gives JSON out plus an optional routing tag. It
//! fails either *retryably* (the runtime redelivers the work, up to the
//! pipeline's `maxDeliveries`) or *permanently* (the caller gets the error at
//! once). Every call sees the time left before the request's deadline and must
//! not outlive it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::Value;

/// A processing step, built once per pipeline node at start-up and shared by
/// every concurrent request of its group.
#[async_trait]
pub trait Node: Send + Sync + 'static {
    /// Runs the step on one input.
    ///
    /// # Guarantees the runtime gives
    /// - `ctx.deadline` is the request's absolute deadline; work past it is
    ///   discarded, so a node should cap its own waits by [`NodeContext::remaining`].
    /// - The same input may be delivered again after a retryable error or a
    ///   worker crash (at-least-once): side effects should be idempotent, keyed
    ///   by [`NodeContext::idempotency_key`].
    async fn call(&self, input: Value, ctx: &NodeContext) -> Result<NodeOutput, NodeError>;
}

/// What a node sees of the request it works on.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// The caller's request id (their `X-Request-Id`, or one the ingress
    /// made): a label for logs and echoes only, never a key (callers choose
    /// it, and two may choose the same).
    pub request_id: String,
    /// The ingress-generated correlation id; unique per request.
    pub correlation_id: String,
    /// The node's name in the pipeline.
    pub node: String,
    /// Absolute deadline of the request.
    pub deadline: SystemTime,
    /// Delivery attempt of this envelope, starting at 1.
    pub attempt: u32,
    /// Where chunks sent with [`NodeContext::emit`] go: the caller's
    /// stream when the request is streamed, nowhere otherwise.
    pub chunks: Chunks,
}

/// Takes the chunks of one streamed answer, in order (see
/// [`NodeContext::emit`]).
#[async_trait]
pub trait ChunkSink: Send + Sync + 'static {
    /// Sends one chunk on; returns once it is on its way to the caller.
    ///
    /// # Errors
    /// The chunk cannot be sent: too large, or the backend failed.
    async fn send(&self, chunk: Value) -> Result<(), NodeError>;
}

/// The chunk sink of a request, if its answer is streamed.
#[derive(Clone, Default)]
pub struct Chunks(Option<Arc<dyn ChunkSink>>);

impl Chunks {
    /// Chunks are dropped: the request is answered with its output only.
    pub fn none() -> Self {
        Self(None)
    }

    /// Chunks go to `sink`.
    pub fn to(sink: Arc<dyn ChunkSink>) -> Self {
        Self(Some(sink))
    }
}

impl std::fmt::Debug for Chunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Chunks(streamed)"
        } else {
            "Chunks(none)"
        })
    }
}

impl NodeContext {
    /// Time left before the deadline; zero once it has passed.
    pub fn remaining(&self) -> Duration {
        self.deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// Whether the caller receives chunks sent with [`NodeContext::emit`]
    /// (an `sse` interface's request); otherwise they are dropped, and only
    /// the output answers.
    pub fn streamed(&self) -> bool {
        self.chunks.0.is_some()
    }

    /// Sends `chunk` to the caller ahead of the node's output: a token,
    /// a progress report, a partial result. Chunks reach the caller in the
    /// order they were emitted, each once. When the request is delivered
    /// again (a retryable error, a crashed worker), the new attempt's
    /// chunks replace the first one's: the caller is told to discard what
    /// it had (a `reset` event), so emit from the start on every attempt.
    /// A no-op unless the request is streamed.
    ///
    /// # Errors
    /// The chunk could not be sent; return the error, so the request is
    /// retried (backend) or failed (a chunk over the size limit).
    pub async fn emit(&self, chunk: Value) -> Result<(), NodeError> {
        match &self.chunks.0 {
            Some(sink) => sink.send(chunk).await,
            None => Ok(()),
        }
    }

    /// `<correlation-id>/<node>`: stable across redeliveries of the same
    /// request, distinct per request and per node, so downstream services
    /// can deduplicate. Built from the ingress-made correlation id, never
    /// from the caller's request id: two callers may choose the same
    /// `X-Request-Id` (or number theirs 1, 2, 3), and one must not be able
    /// to replay or suppress another's side effects downstream.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.correlation_id, self.node)
    }
}

/// A node's result: the JSON handed to the next node (or returned to the
/// caller when the node is terminal) and an optional tag that conditional
/// `next` routes match on.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeOutput {
    pub value: Value,
    pub tag: Option<String>,
}

impl NodeOutput {
    /// An output without a tag.
    pub fn value(value: Value) -> Self {
        Self { value, tag: None }
    }
}

/// How a node failed, which decides what the runtime does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// A transient failure (timeout, 5xx, connection refused): the envelope is
    /// redelivered until `maxDeliveries`, then dead-lettered.
    #[error("retryable: {0}")]
    Retryable(String),
    /// The input cannot succeed (validation, 4xx): the caller gets the error now.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl NodeError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, NodeError::Retryable(_))
    }

    /// The message without the classification prefix, for error bodies.
    pub fn message(&self) -> &str {
        match self {
            NodeError::Retryable(m) | NodeError::Permanent(m) => m,
        }
    }
}

/// Everything a node factory gets to build one node instance.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name in the pipeline (for error messages).
    pub name: String,
    /// The catalog name, e.g. `builtin/http` or `rust/score`.
    pub uses: String,
    /// The node's `with` block from the manifest (`Value::Null` when absent).
    pub with: Value,
    /// Where referenced Secrets are mounted: `<secrets_dir>/<name>/<key>`.
    pub secrets_dir: PathBuf,
}

/// Why a node could not be built from its configuration. Raised at start-up,
/// never per request.
#[derive(Debug, thiserror::Error)]
#[error("node `{node}` ({uses}): {message}")]
pub struct ConfigError {
    pub node: String,
    pub uses: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(cfg: &NodeConfig, message: impl Into<String>) -> Self {
        Self {
            node: cfg.name.clone(),
            uses: cfg.uses.clone(),
            message: message.into(),
        }
    }
}

/// Builds a node from its configuration.
pub type NodeFactory = Arc<dyn Fn(&NodeConfig) -> Result<Arc<dyn Node>, ConfigError> + Send + Sync>;
