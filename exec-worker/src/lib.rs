//! sluice exec-worker: the node contract, the built-in catalog, the registry
//! and the worker loop. Also the SDK for custom worker images.
//!
//! # Layout
//! - [`node`]: the contract every node implements.
//! - [`registry`]: `uses` name → node factory.
//! - [`catalog`]: the `builtin/*` nodes.

pub mod catalog;
pub mod node;
pub mod registry;

pub use node::{ConfigError, Node, NodeConfig, NodeContext, NodeError, NodeOutput};
pub use registry::Registry;
