//! What every runtime process builds from a plan before it serves or
//! consumes: the pipeline's key names, the signer, the verifier, and the
//! metric families shared by ingress and worker, registered once.

use std::sync::Arc;

use prometheus_client::registry::Registry as Metrics;
use sluice_crds::Plan;
use sluice_platform::metrics::Rejections;
use sluice_platform::{Keys, Kv, SharedKeyRing, Signer, Verifier};

use crate::executor::{node_durations, NodeDurations};
use crate::worker::WorkerMetrics;

/// The signing, verification and metrics plumbing of one pipeline process.
#[derive(Clone)]
pub struct RuntimeParts {
    pub keys: Keys,
    pub signer: Signer,
    pub verifier: Verifier,
    pub worker_metrics: WorkerMetrics,
    pub durations: NodeDurations,
}

impl RuntimeParts {
    /// Builds the parts for `plan`, verifying with `ring` and the replay
    /// guard in `kv`, and registers their metric families in `metrics`.
    pub fn new(plan: &Plan, ring: SharedKeyRing, kv: Arc<dyn Kv>, metrics: &mut Metrics) -> Self {
        let rejections = Rejections::register(metrics);
        let worker_metrics = WorkerMetrics::register(metrics);
        let durations = node_durations();
        metrics.register(
            "sluice_node_duration_seconds",
            "Time spent in each node",
            durations.clone(),
        );
        let keys = Keys::new(&plan.id.namespace, &plan.id.name);
        let verifier = Verifier::new(
            ring.clone(),
            kv,
            keys.clone(),
            plan.security.clock_skew,
            plan.security.max_payload_bytes as usize,
            rejections,
        );
        Self {
            keys,
            signer: Signer::new(ring),
            verifier,
            worker_metrics,
            durations,
        }
    }
}
