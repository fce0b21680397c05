//! sluice exec-worker: the node contract, the built-in catalog, the registry
//! and the worker loop. Also the SDK for custom worker images: depend on this
//! crate, register `rust/<name>` nodes in a [`Registry`], and run the worker.
//!
//! This crate must not serve HTTP to callers, hold caller state, or trust
//! anything read from a queue before it verifies.
//!
//! # Layout
//! - [`node`]: the contract every node implements.
//! - [`registry`]: `uses` name → node factory.
//! - [`catalog`]: the `builtin/*` nodes.
//! - [`executor`]: runs a group's nodes for one envelope.
//! - [`worker`]: the queue consumer (lease, reclaim, hand-off, dead letters, drain).
//! - [`hand_off`]: group commit of the worker's hand-offs.
//! - [`metrics`]: the worker's metric families.
//! - [`parts`]: signer, verifier and shared metrics built from a plan.
//! - [`process`]: the `sluice-exec-worker` process (flags, Redis, admin port, drain).

pub mod catalog;
pub mod chunks;
pub mod executor;
pub mod hand_off;
pub mod metrics;
pub mod node;
pub mod parts;
pub mod process;
pub mod registry;
pub mod worker;

#[cfg(test)]
mod test_queue;

pub use executor::{Crash, Executor, StepOutcome};
pub use metrics::WorkerMetrics;
pub use node::{
    ChunkSink, Chunks, ConfigError, Node, NodeConfig, NodeContext, NodeError, NodeOutput,
};
pub use parts::{missing_keys, wanted_keys, RuntimeParts};
pub use registry::Registry;
pub use worker::{Worker, WorkerConfig};
