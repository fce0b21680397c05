//! Runs one group's part of a request: the nodes of this group, in DAG
//! order, until the output leaves the group or the request is answered.
//!
//! ```text
//! node ─▶ output + tag ─▶ resolve next ─┬─ same group  ─▶ next node (in process)
//!                                       ├─ other group ─▶ Forward (queue hop)
//!                                       └─ none        ─▶ Done (the reply)
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde_json::Value;
use sluice_crds::Plan;

use crate::node::{ConfigError, Node, NodeConfig, NodeContext, NodeError};
use crate::registry::Registry;

/// Where a group's part of a request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// A terminal node answered: this is the reply payload.
    Done(Value),
    /// The output goes to `node` on another `group`.
    Forward {
        node: String,
        group: String,
        payload: Value,
    },
    /// A node failed.
    Failed(NodeError),
    /// The deadline passed while working: the work is dropped.
    Expired,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

/// `sluice_node_duration_seconds{node}`.
pub type NodeDurations = Family<NodeLabel, Histogram>;

/// A histogram family with buckets from 100µs to ~100s.
pub fn node_durations() -> NodeDurations {
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.5, 16)))
}

/// The built nodes of one group.
pub struct Executor {
    plan: Arc<Plan>,
    group: String,
    nodes: HashMap<String, Arc<dyn Node>>,
    durations: NodeDurations,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("group", &self.group)
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Executor {
    /// Builds every node placed on `group`.
    ///
    /// # Errors
    /// A node type the registry does not know, or a bad `with` block.
    pub fn build(
        plan: Arc<Plan>,
        group: &str,
        registry: &Registry,
        secrets_dir: &Path,
        durations: NodeDurations,
    ) -> Result<Self, ConfigError> {
        let mut nodes = HashMap::new();
        for n in plan.nodes.values().filter(|n| n.group == group) {
            let cfg = NodeConfig {
                name: n.name.clone(),
                uses: n.uses.clone(),
                with: n.with.clone(),
                secrets_dir: secrets_dir.to_path_buf(),
            };
            nodes.insert(n.name.clone(), registry.build(&cfg)?);
        }
        Ok(Self {
            plan,
            group: group.to_string(),
            nodes,
            durations,
        })
    }

    /// The group this executor runs.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Runs from `start` (a node of this group) with `input`.
    ///
    /// `ctx` is the request's context; its `node` field is set per node.
    pub async fn run(&self, start: &str, input: Value, ctx: &NodeContext) -> StepOutcome {
        let mut current = start.to_string();
        let mut value = input;
        loop {
            let Some(node) = self.nodes.get(&current) else {
                return StepOutcome::Failed(NodeError::Permanent(format!(
                    "node `{current}` does not run on group `{}`",
                    self.group
                )));
            };
            let remaining = ctx.remaining();
            if remaining.is_zero() {
                return StepOutcome::Expired;
            }
            let node_ctx = NodeContext {
                node: current.clone(),
                ..ctx.clone()
            };
            let started = Instant::now();
            let result = tokio::time::timeout(remaining, node.call(value, &node_ctx)).await;
            self.durations
                .get_or_create(&NodeLabel {
                    node: current.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            let out = match result {
                Err(_) => return StepOutcome::Expired,
                Ok(Err(e)) => return StepOutcome::Failed(e),
                Ok(Ok(out)) => out,
            };
            // Nodes come from the plan, so the plan has an entry for each.
            let plan_node = &self.plan.nodes[&current];
            let next = match plan_node.next.resolve(out.tag.as_deref()) {
                Err(msg) => {
                    return StepOutcome::Failed(NodeError::Permanent(format!(
                        "node `{current}`: {msg}"
                    )))
                }
                Ok(None) => return StepOutcome::Done(out.value),
                Ok(Some(n)) => n.to_string(),
            };
            let next_group = &self.plan.nodes[&next].group;
            if *next_group != self.group {
                return StepOutcome::Forward {
                    node: next.clone(),
                    group: next_group.clone(),
                    payload: out.value,
                };
            }
            current = next;
            value = out.value;
        }
    }
}
