//! The tcp profile inside the ingress: the hub the worker processes connect
//! to, and (with `--workers spawn`) the supervisor that starts them.
//!
//! ```text
//! start: bind the hub (loopback) → serve it → spawn: start each group's
//!        child in order, each ready once its connection passed the
//!        handshake; external: wait for nothing (readiness waits instead)
//! ready: every worker group has a live connection and none was given up on
//! stop:  children SIGTERMed (drain budget, then killed) → hub closed
//! ```
//!
//! The queues and the replay guard stay in this process (the memory
//! adapters): a worker that dies loses nothing but what it was running,
//! which the hub frees for its replacement at once. Work is lost only with
//! this process.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_crds::Plan;
use sluice_exec_worker::wanted_keys;
use sluice_platform::keyring::{derived_files, files_json};
use sluice_platform::memory::MemoryStreams;
use sluice_platform::metrics::Rejections;
use sluice_platform::tcp::{Connected, Hub, HubConfig, Limits};
use sluice_platform::{Keys, SharedKeyRing};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat, WorkerMode};
use crate::supervisor::{ChildSpec, RestartPolicy, Supervisor};

/// Most replay-guard nonces the hub keeps (the plan's replay budget is
/// Redis memory, which this profile has none of): about 93 bytes each, so
/// about 93 MB when full (`sluice_platform::tcp::Nonces`).
pub const DEFAULT_MAX_NONCES: u64 = 1_000_000;

/// Why the tcp profile could not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TcpStartError {
    #[error("tcp hub: {0}")]
    Hub(#[from] sluice_platform::tcp::HubError),
    #[error("tcp hub: its address: {0}")]
    Address(#[source] std::io::Error),
    #[error("key ring: {0}")]
    Keys(#[from] sluice_platform::KeyRingError),
    /// A worker group that could not become ready, and why.
    #[error("{0}")]
    Workers(String),
}

/// How long a started child may take to connect.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The hub and the children of a tcp pipeline.
pub struct TcpWorkers {
    pub hub: SocketAddr,
    groups: Vec<String>,
    connected: Arc<Connected>,
    supervisor: tokio::sync::Mutex<Option<Supervisor>>,
    /// A copy of the supervisor's verdict, readable without waiting.
    given_up: parking_lot::Mutex<Option<String>>,
    stop_hub: CancellationToken,
}

/// Dropped without [`TcpWorkers::stop`] (its own start or the ingress's
/// failed later): the hub stops serving; the supervisor, dropped with it,
/// stops the children.
impl Drop for TcpWorkers {
    fn drop(&mut self) {
        self.stop_hub.cancel();
    }
}

impl TcpWorkers {
    /// Binds and serves the hub, then starts the children (spawn mode).
    ///
    /// # Errors
    /// The hub cannot bind, or a child could not become ready.
    pub async fn start(
        config: &Config,
        plan: &Plan,
        ring: &SharedKeyRing,
        streams: Arc<MemoryStreams>,
        rejections: Rejections,
    ) -> Result<Arc<Self>, TcpStartError> {
        let keys = Keys::new(&plan.id.namespace, &plan.id.name);
        let groups: Vec<String> = plan.worker_groups().map(|g| g.name.clone()).collect();
        let max_entry =
            sluice_platform::signing::max_entry_bytes(plan.security.max_payload_bytes as usize);
        let max_nonces = DEFAULT_MAX_NONCES;
        let hub = Hub::bind(
            config.tcp.hub,
            HubConfig {
                keys: keys.clone(),
                groups: groups.clone(),
                limits: Limits::for_entries(max_entry),
                max_nonces: usize::try_from(max_nonces).unwrap_or(usize::MAX),
                max_nonce_ttl: plan.max_timeout().saturating_add(plan.security.clock_skew),
                max_queue_depth: plan.limits.max_queue_depth,
                dead_letter_cap: sluice_exec_worker::worker::DEAD_LETTER_RETENTION,
                lease: plan.limits.lease,
                clock_skew: plan.security.clock_skew,
                max_payload_bytes: plan.security.max_payload_bytes as usize,
                rejections,
            },
            ring.clone(),
            streams,
        )
        .await?;
        let addr = hub.local_addr().map_err(TcpStartError::Address)?;
        let connected = hub.connected();
        let stop_hub = CancellationToken::new();
        tokio::spawn(hub.serve(stop_hub.clone()));
        tracing::info!(hub = %addr, workers = ?config.tcp.workers, groups = ?groups, "tcp hub listening");
        // From here a start that fails or is abandoned drops `this`, which
        // stops the hub.
        let mut this = Self {
            hub: addr,
            groups,
            connected,
            supervisor: tokio::sync::Mutex::new(None),
            given_up: parking_lot::Mutex::new(None),
            stop_hub,
        };

        if config.tcp.workers == WorkerMode::Spawn {
            // Children run as this process's user: keep them (and
            // anything else of that user) from reading this process's
            // memory and environment through /proc.
            if let Err(e) = rustix::process::set_dumpable_behavior(
                rustix::process::DumpableBehavior::NotDumpable,
            ) {
                tracing::warn!(error = %e, "cannot mark the ingress not dumpable");
            }
            let specs = this
                .groups
                .iter()
                .map(|g| child_spec(config, plan, &keys, ring, g, addr))
                .collect::<Result<Vec<_>, _>>()?;
            let policy = RestartPolicy {
                limit: config.tcp.restart_limit,
                window: config.tcp.restart_window,
                ready_timeout: READY_TIMEOUT,
            };
            let supervisor = Supervisor::start(specs, policy, this.connected.clone())
                .await
                .map_err(TcpStartError::Workers)?;
            *this.supervisor.get_mut() = Some(supervisor);
        }
        Ok(Arc::new(this))
    }

    /// Why the ingress is not ready, if it is not: a group given up on, or
    /// one with no live worker.
    pub fn problem(&self) -> Option<String> {
        if let Ok(s) = self.supervisor.try_lock() {
            if let Some(why) = s.as_ref().and_then(Supervisor::problem) {
                *self.given_up.lock() = Some(why);
            }
        }
        if let Some(why) = self.given_up.lock().clone() {
            return Some(why);
        }
        self.groups
            .iter()
            .find(|g| self.connected.of(g) == 0)
            .map(|g| format!("worker group {g} has no live worker"))
    }

    /// Stops the children within `budget` (SIGTERM, then kill), then the hub.
    pub async fn stop(&self, budget: Duration) {
        if let Some(mut s) = self.supervisor.lock().await.take() {
            s.stop(budget).await;
        }
        self.stop_hub.cancel();
    }
}

/// The program, arguments and keys of `group`'s child.
fn child_spec(
    config: &Config,
    plan: &Plan,
    keys: &Keys,
    ring: &SharedKeyRing,
    group: &str,
    hub: SocketAddr,
) -> Result<ChildSpec, TcpStartError> {
    let program = config
        .tcp
        .group_bins
        .get(group)
        .or(config.tcp.worker_bin.as_ref())
        .cloned()
        .unwrap_or_else(default_worker_bin);
    let needs = plan.key_needs(group);
    // Checked once here, so a ring that lacks a key fails the start; made
    // again from the ring of the moment at every (re)start of the child,
    // so a restarted worker gets the keys of a rotated ring.
    derived_files(&ring.get(), keys.pipeline(), &wanted_keys(&needs))?;
    let (ring, pipeline) = (ring.clone(), keys.pipeline().to_string());
    let keys_json: crate::supervisor::KeyFiles = Arc::new(move || {
        let files = derived_files(&ring.get(), &pipeline, &wanted_keys(&needs))
            .map_err(|e| e.to_string())?;
        Ok(files_json(&files))
    });
    let mut args: Vec<OsString> = vec![
        "--pipeline".into(),
        absolute(&config.pipeline).into(),
        "--group".into(),
        group.into(),
        "--backend".into(),
        "tcp".into(),
        "--hub".into(),
        hub.to_string().into(),
        "--keys-stdin".into(),
        "--exit-with-parent".into(),
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--secrets-dir".into(),
        config.secrets_dir.clone().into(),
        "--drain-timeout".into(),
        format!("{}ms", config.drain_timeout.as_millis()).into(),
    ];
    if config.log_format == LogFormat::Json {
        args.extend(["--log-format".into(), "json".into()]);
    }
    Ok(ChildSpec {
        group: group.to_string(),
        program,
        args,
        keys: keys_json,
    })
}

/// `sluice-exec-worker` beside this binary, else on the PATH.
fn default_worker_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("sluice-exec-worker")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("sluice-exec-worker"))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
