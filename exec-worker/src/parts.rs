//! What every runtime process builds from a plan before it serves or
//! consumes: the pipeline's key names, the signer, the verifier, and the
//! metric families shared by ingress and worker, registered once.

use std::sync::Arc;

use prometheus_client::registry::Registry as Metrics;
use sluice_crds::{KeyNeeds, Plan};
use sluice_platform::metrics::Rejections;
use sluice_platform::{pause, KeyRing, Keys, Kind, Kv, Pause, SharedKeyRing, Signer, Verifier};
use tokio_util::sync::CancellationToken;

use crate::executor::{node_durations, NodeDurations};
use crate::metrics::WorkerMetrics;

/// The signing, verification and metrics plumbing of one pipeline process.
#[derive(Clone)]
pub struct RuntimeParts {
    pub keys: Keys,
    pub signer: Signer,
    pub verifier: Verifier,
    /// `sluice_envelopes_rejected_total`, which `verifier` counts in.
    pub rejections: Rejections,
    pub worker_metrics: WorkerMetrics,
    pub durations: NodeDurations,
    /// Whether the pipeline is paused: never, unless a Redis process
    /// watches the pause key ([`Self::watch_pause`]).
    pub pause: Pause,
}

impl RuntimeParts {
    /// Builds the parts for a process of `plan` running `group` (the
    /// ingress group for the ingress), signing and verifying with `ring` and
    /// the replay guard in `guard` (none for queues only this process
    /// writes, and for a tcp worker, whose hub runs the guard; see
    /// [`Verifier::new`]), and registers their metric families
    /// in `metrics`.
    pub fn new(
        plan: &Plan,
        group: &str,
        ring: SharedKeyRing,
        guard: Option<Arc<dyn Kv>>,
        metrics: &mut Metrics,
    ) -> Self {
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
            guard,
            keys.clone(),
            plan.security.clock_skew,
            plan.security.max_payload_bytes as usize,
            rejections.clone(),
        )
        .with_max_lifetime(sluice_crds::limits::MAX_ASYNC_TIMEOUT);
        Self {
            signer: Signer::new(ring, &keys, group).with_plan(plan.generation()),
            rejections,
            keys,
            verifier,
            worker_metrics,
            durations,
            pause: Pause::never(),
        }
    }

    /// Takes the pipeline's pause from its key in `redis` (read every
    /// [`pause::POLL`] until `stop`): the operator pauses a Redis pipeline
    /// there. The memory and tcp profiles have no such key.
    pub fn watch_pause(&mut self, redis: Arc<dyn Kv>, stop: CancellationToken) {
        self.pause = Pause::watch(redis, self.keys.paused(), pause::POLL, stop);
    }
}

/// The `(kind, group)` keys `needs` names, requests first: what
/// `derived_files` renders and what a start-up check looks for.
pub fn wanted_keys(needs: &KeyNeeds) -> Vec<(Kind, &str)> {
    needs
        .request
        .iter()
        .map(|g| (Kind::Request, g.as_str()))
        .chain(needs.reply.iter().map(|g| (Kind::Reply, g.as_str())))
        .collect()
}

/// The keys of `needs` that `ring`'s current kid cannot give, as
/// `<kind>/<group>`: a process started with a derived directory that lacks
/// them logs it, since every envelope needing one will fail.
pub fn missing_keys(ring: &KeyRing, keys: &Keys, needs: &KeyNeeds) -> Vec<String> {
    wanted_keys(needs)
        .into_iter()
        .filter(|(kind, g)| !ring.holds(*kind, keys.pipeline(), g))
        .map(|(kind, g)| format!("{}/{g}", kind.as_str()))
        .collect()
}
