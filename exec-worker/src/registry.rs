//! The registry resolving a node's `uses` name to a factory.
//!
//! The default worker image carries the `builtin/*` catalog
//! (`Registry::builtin`, defined with the catalog). A custom worker
//! image built with this crate as an SDK registers its own Rust nodes under
//! `rust/<name>` before starting the worker.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::node::{ConfigError, Node, NodeConfig, NodeFactory};

/// Maps `uses` names to factories.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, NodeFactory>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) a factory under `uses`.
    pub fn register<F>(&mut self, uses: impl Into<String>, factory: F) -> &mut Self
    where
        F: Fn(&NodeConfig) -> Result<Arc<dyn Node>, ConfigError> + Send + Sync + 'static,
    {
        self.factories.insert(uses.into(), Arc::new(factory));
        self
    }

    /// Whether `uses` resolves.
    pub fn contains(&self, uses: &str) -> bool {
        self.factories.contains_key(uses)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds the node described by `cfg`.
    ///
    /// # Errors
    /// Unknown `uses`, or the factory's own configuration error.
    pub fn build(&self, cfg: &NodeConfig) -> Result<Arc<dyn Node>, ConfigError> {
        match self.factories.get(&cfg.uses) {
            Some(f) => f(cfg),
            None => Err(ConfigError::new(
                cfg,
                format!(
                    "unknown node type; this worker knows: {}",
                    self.names().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}
