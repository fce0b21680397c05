//! What every handler of the ingress shares: the plan, the ports, the
//! waiters, the limits and the metrics of one ingress process.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use foldhash::HashMap;
use parking_lot::RwLock;
use prometheus_client::registry::Registry;
use sluice_crds::{InterfacePlan, Plan};
use sluice_exec_worker::Executor;
use sluice_platform::{Keys, Kv, Queue, ReplyChannel, Signer, Verifier};
use tokio::sync::Semaphore;

use crate::body::BodyBudget;
use crate::config::HttpLimits;
use crate::metrics::IngressMetrics;
use crate::replay_window::ReplayWindow;
use crate::waiters::{ReplySenders, Waiters};

/// Sampled size of one worker group's queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backlog {
    pub entries: u64,
    pub bytes: u64,
}

/// Everything a request handler needs; shared by all requests.
pub struct AppState {
    /// The tcp profile's hub and worker processes: readiness needs them.
    pub tcp: Option<Arc<crate::tcp_workers::TcpWorkers>>,
    pub plan: Arc<Plan>,
    pub keys: Keys,
    pub ingress_id: String,
    pub queue: Arc<dyn Queue>,
    pub signer: Signer,
    /// Nodes placed on the ingress group, run in process.
    pub executor: Executor,
    pub waiters: Waiters,
    /// Per interface: the groups whose replies may complete its waiters.
    pub reply_senders: HashMap<String, Arc<ReplySenders>>,
    pub metrics: IngressMetrics,
    pub registry: Registry,
    /// False once draining: load balancers stop sending.
    pub ready: AtomicBool,
    /// Whether this instance's reply stream exists; until it does, work is
    /// refused with 503 rather than sent off with nowhere to answer.
    pub replies_open: AtomicBool,
    /// The reply stream has been opened once: the backend answered. Not
    /// ready before (a pod of a rolling update takes no traffic before it
    /// can serve it); an outage later does not take it back.
    pub reached_backend: AtomicBool,
    /// Last sampled backlog per worker group; `None` when the sample failed.
    pub backlog: RwLock<Option<HashMap<String, Backlog>>>,
    pub slots: HashMap<String, Arc<Semaphore>>,
    /// Per interface: its series of the request metrics.
    pub interface_metrics: HashMap<String, crate::metrics::InterfaceMetrics>,
    /// Per WebSocket interface: its open connections (`maxConnections`).
    pub sockets: HashMap<String, Arc<Semaphore>>,
    /// Time and shape limits of the HTTP surface.
    pub http: HttpLimits,
    /// Bytes of request bodies buffered at most, across all requests.
    pub body_budget: BodyBudget,
    /// Replay-guard nonces this ingress's requests may hold in managed
    /// Redis; `None` without a budget (memory profile, external Redis).
    pub replay_window: Option<ReplayWindow>,
    /// Where answers of asynchronous requests are stored and read.
    pub replies: Arc<dyn ReplyChannel>,
    /// Verifies stored answers before they are returned.
    pub verifier: Verifier,
    /// Idempotency keys.
    pub store: Arc<dyn Kv>,
    /// Who calls each interface.
    pub callers: Arc<crate::auth::Callers>,
    /// Per-caller rate limits.
    pub rate_limits: crate::rate_limit::RateLimits,
    /// Whether the pipeline is paused: new requests are refused.
    pub pause: sluice_platform::Pause,
    /// The schema of each graphql interface.
    pub graphql: std::collections::HashMap<String, async_graphql::dynamic::Schema>,
}

impl AppState {
    /// The interface a route was built for: routes come from this plan.
    pub fn interface(&self, name: &str) -> &InterfacePlan {
        self.plan
            .interfaces
            .iter()
            .find(|i| i.name == name)
            .expect("route built from this plan")
    }
}

/// `clockSkew` in ms: a worker may take an envelope that long past its
/// deadline by this process's clock.
pub fn skew_ms(s: &AppState) -> u64 {
    u64::try_from(s.plan.security.clock_skew.as_millis()).unwrap_or(u64::MAX)
}
