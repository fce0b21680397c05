//! Runs one group's part of a request: the nodes of this group, in DAG
//! order, until the output leaves the group or the request is answered.
//!
//! ```text
//! node ─▶ output + tag ─▶ resolve next ─┬─ same group  ─▶ next node (in process)
//!                                       ├─ other group ─▶ Forward (queue hop)
//!                                       └─ none        ─▶ Done (the reply)
//! ```
//!
//! A node that panics ends the run with [`StepOutcome::Crashed`]: the panic
//! is caught at the node call, so it never unwinds through the worker loop
//! or the ingress handler that hold the entry's lease, slot and gauges.

use std::any::Any;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::FutureExt;
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
    /// A node panicked. The input is treated as poison: it is dead-lettered
    /// at once and never retried, and the caller is answered with an error.
    Crashed(Crash),
}

/// A node that panicked, for the dead letter, the log and the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    /// The pipeline node that panicked.
    pub node: String,
    /// The panic's message when it carried text; for logs only, never sent
    /// to the caller (it may quote internals of the node).
    pub panic: String,
}

impl Crash {
    /// The message the caller gets: names the node, not its internals.
    pub fn caller_message(&self) -> String {
        format!(
            "node `{}` crashed on this input; the request was dead-lettered and is not retried",
            self.node
        )
    }
}

/// The text of a panic payload (`panic!` with a literal or a format string),
/// or a placeholder for any other payload type.
fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not text)".to_string()
    }
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

/// A built node and its duration series, looked up on its first run.
struct Built {
    node: Arc<dyn Node>,
    duration: OnceLock<Histogram>,
}

/// The built nodes of one group.
pub struct Executor {
    plan: Arc<Plan>,
    group: String,
    nodes: HashMap<String, Built>,
    durations: NodeDurations,
    /// The plan's generation ([`Plan::generation`]).
    generation: String,
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
            let built = Built {
                node: registry.build(&cfg)?,
                duration: OnceLock::new(),
            };
            nodes.insert(n.name.clone(), built);
        }
        Ok(Self {
            generation: plan.generation(),
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

    /// The generation of the graph this executor runs.
    pub fn generation(&self) -> &str {
        &self.generation
    }

    /// Whether `node` runs on this executor's group.
    pub fn runs(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// Runs from `start` (a node of this group) with `input`.
    ///
    /// `ctx` is the request's context; its `node` field is set per node.
    pub async fn run(&self, start: &str, input: Value, ctx: &NodeContext) -> StepOutcome {
        let mut current = start.to_string();
        let mut value = input;
        loop {
            let Some(Built { node, duration }) = self.nodes.get(&current) else {
                return StepOutcome::Failed(NodeError::Permanent(format!(
                    "node `{current}` does not run on group `{}`",
                    self.group
                )));
            };
            let remaining = ctx.remaining();
            if remaining.is_zero() {
                return StepOutcome::Expired;
            }
            // Only the node that answers streams (one per request, so its
            // chunks are the answer's, numbered once): a node with a `next`
            // emits into nothing.
            let answers = matches!(
                self.plan.nodes[&current].next,
                sluice_crds::plan::Next::Terminal
            );
            let node_ctx = NodeContext {
                node: current.clone(),
                chunks: if answers {
                    ctx.chunks.clone()
                } else {
                    crate::node::Chunks::none()
                },
                ..ctx.clone()
            };
            let started = Instant::now();
            // AssertUnwindSafe: after a panic the node's future is dropped
            // and nothing it touched is read again by this run; a node's
            // shared state is its own to keep consistent (as with any
            // panic in a multi-threaded program).
            // The call is made inside the async block so that a node
            // panicking before it returns its future is caught too.
            let call = AssertUnwindSafe(async { node.call(value, &node_ctx).await }).catch_unwind();
            let result = tokio::time::timeout(remaining, call).await;
            duration
                .get_or_init(|| {
                    self.durations
                        .get_or_create(&NodeLabel {
                            node: current.clone(),
                        })
                        .clone()
                })
                .observe(started.elapsed().as_secs_f64());
            let out = match result {
                Err(_) => return StepOutcome::Expired,
                Ok(Err(payload)) => {
                    return StepOutcome::Crashed(Crash {
                        node: current,
                        panic: panic_text(payload.as_ref()),
                    })
                }
                Ok(Ok(Err(e))) => return StepOutcome::Failed(e),
                Ok(Ok(Ok(out))) => out,
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
