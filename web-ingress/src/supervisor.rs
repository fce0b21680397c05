//! The local supervisor of the tcp profile: one child process per worker
//! group, started by `sluice-web-ingress` before it serves.
//!
//! ```text
//! start:  for each worker group, in the manifest's order:
//!           spawn PROGRAM --group G --backend tcp --hub ADDR --keys-stdin …
//!           write G's key files to its stdin, close it
//!           wait until G's connection passed the hub's handshake (ready)
//! run:    a child that exits is started again after a backoff
//!           (250 ms doubling to 8 s); `limit` exits within `window`
//!           give up on the group: readiness fails with the reason
//! stop:   SIGTERM to every child; a child not gone within the budget is
//!           killed; each stop is reported once, graceful or forced
//! ```
//!
//! Keys reach a child only through its inherited stdin pipe, once: never in
//! its arguments, its environment or a file, and never in a log line. A
//! child gets only the keys its group needs.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_platform::keyring::Zeroizing;
use sluice_platform::tcp::Connected;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One worker group's process.
pub struct ChildSpec {
    pub group: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Makes the group's key files as JSON, written to the child's stdin
    /// at each start.
    pub keys: KeyFiles,
}

/// The key files of a child, made at each start of it, wiped once written.
pub type KeyFiles = Arc<dyn Fn() -> Result<Zeroizing<String>, String> + Send + Sync>;

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("group", &self.group)
            .field("program", &self.program)
            .field("args", &self.args)
            .field("keys", &"[redacted]")
            .finish()
    }
}

/// When to give up on a child that keeps exiting.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Exits within `window` that end the restarts.
    pub limit: u32,
    pub window: Duration,
    /// How long a child may take to connect before start-up fails.
    pub ready_timeout: Duration,
}

/// How a child's stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It exited within the budget after SIGTERM.
    Graceful,
    /// It was killed at the end of the budget.
    Forced,
    /// It was not running (given up on, or between restarts).
    NotRunning,
}

impl Stop {
    fn as_str(self) -> &'static str {
        match self {
            Stop::Graceful => "graceful",
            Stop::Forced => "forced",
            Stop::NotRunning => "not running",
        }
    }
}

/// The state of one group's child, shared with its monitor.
struct Slot {
    group: String,
    /// Why the group was given up on.
    failed: Mutex<Option<String>>,
}

/// The running children.
pub struct Supervisor {
    slots: Vec<Arc<Slot>>,
    monitors: Vec<JoinHandle<Stop>>,
    stop: CancellationToken,
    /// The drain budget, set by [`Supervisor::stop`] before it signals.
    budget: Arc<Mutex<Duration>>,
}

impl Supervisor {
    /// Starts every child in order, each once the previous is ready.
    ///
    /// # Errors
    /// A child that could not become ready: its group and why (it kept
    /// exiting, or did not connect in time). Children already started are
    /// stopped first.
    pub async fn start(
        specs: Vec<ChildSpec>,
        policy: RestartPolicy,
        connected: Arc<Connected>,
    ) -> Result<Self, String> {
        let mut sup = Supervisor {
            slots: vec![],
            monitors: vec![],
            stop: CancellationToken::new(),
            budget: Arc::new(Mutex::new(Duration::from_secs(10))),
        };
        for spec in specs {
            let slot = Arc::new(Slot {
                group: spec.group.clone(),
                failed: Mutex::new(None),
            });
            let group = spec.group.clone();
            let given_up = CancellationToken::new();
            sup.monitors.push(tokio::spawn(monitor(
                spec,
                policy,
                slot.clone(),
                sup.stop.clone(),
                sup.budget.clone(),
                given_up.clone(),
            )));
            sup.slots.push(slot.clone());
            let ready = tokio::select! {
                _ = connected.wait_for(&group) => Ok(()),
                _ = given_up.cancelled() => Err(slot.failed.lock().clone().unwrap_or_default()),
                _ = tokio::time::sleep(policy.ready_timeout) => Err(format!(
                    "worker group {group} did not connect within {:?}",
                    policy.ready_timeout
                )),
            };
            if let Err(why) = ready {
                sup.stop(Duration::from_secs(5)).await;
                return Err(why);
            }
            tracing::info!(group = %group, "worker group ready");
        }
        Ok(sup)
    }

    /// The first group given up on, and why.
    pub fn problem(&self) -> Option<String> {
        self.slots.iter().find_map(|s| s.failed.lock().clone())
    }

    /// Stops every child: SIGTERM, then a kill for those still running at
    /// the end of `budget`. Each stop is logged once, graceful or forced;
    /// returns them by group, in start order.
    pub async fn stop(&mut self, budget: Duration) -> Vec<(String, Stop)> {
        *self.budget.lock() = budget;
        self.stop.cancel();
        let mut out = vec![];
        for (slot, m) in self.slots.iter().zip(self.monitors.drain(..)) {
            let how = m.await.unwrap_or(Stop::Forced);
            out.push((slot.group.clone(), how));
        }
        out
    }
}

/// A supervisor dropped without [`Supervisor::stop`] (a start that failed
/// later) still stops its children: SIGTERM, then a kill.
impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Runs one group's child until stopped or given up on.
async fn monitor(
    spec: ChildSpec,
    policy: RestartPolicy,
    slot: Arc<Slot>,
    stop: CancellationToken,
    budget: Arc<Mutex<Duration>>,
    given_up: CancellationToken,
) -> Stop {
    let group = spec.group.clone();
    let mut exits: VecDeque<Instant> = VecDeque::new();
    loop {
        let status = match spawn(&spec).await {
            Ok(mut child) => {
                tracing::info!(group = %group, pid = child.id(), program = %spec.program.display(), "worker started");
                tokio::select! {
                    s = child.wait() => describe(s),
                    _ = stop.cancelled() => {
                        let budget = *budget.lock();
                        let how = terminate(&mut child, budget).await;
                        tracing::info!(group = %group, stop = how.as_str(), "worker stopped");
                        return how;
                    }
                }
            }
            Err(e) => e,
        };
        let now = Instant::now();
        exits.push_back(now);
        while exits
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            exits.pop_front();
        }
        tracing::warn!(group = %group, status = %status, exits = exits.len(), "worker exited");
        if exits.len() >= policy.limit as usize {
            let why = format!(
                "worker group {group} exited {} times within {:?} (last: {status}); not restarted",
                exits.len(),
                policy.window
            );
            tracing::error!(group = %group, "{why}");
            *slot.failed.lock() = Some(why);
            given_up.cancel();
            stop.cancelled().await;
            tracing::info!(group = %group, stop = Stop::NotRunning.as_str(), "worker stopped");
            return Stop::NotRunning;
        }
        let backoff = Duration::from_millis(250)
            .saturating_mul(1 << (exits.len().min(6) - 1))
            .min(Duration::from_secs(8));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => {
                tracing::info!(group = %group, stop = Stop::NotRunning.as_str(), "worker stopped");
                return Stop::NotRunning;
            }
        }
    }
}

/// Starts the child and hands it its keys on stdin.
async fn spawn(spec: &ChildSpec) -> Result<Child, String> {
    let keys = (spec.keys)().map_err(|e| format!("cannot make its keys: {e}"))?;
    let mut child = Command::new(&spec.program)
        .args(&spec.args)
        // Only what a worker needs of the ingress's environment: nothing
        // of its own settings (key directory, Redis URL, TLS files).
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| passed_on(k)))
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", spec.program.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A child that exits before reading is seen exiting by the monitor;
        // one that never reads is given a few seconds.
        let hand_over = async {
            stdin.write_all(keys.as_bytes()).await?;
            stdin.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), hand_over).await;
    }
    Ok(child)
}

/// The variables of the ingress's environment a worker inherits: where to
/// find programs and certificates, locale and time zone, proxies, logging
/// and trace export. The ingress's own `SLUICE_*` settings are not passed.
fn passed_on(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    const EXACT: [&str; 12] = [
        "PATH",
        "HOME",
        "TZ",
        "LANG",
        "RUST_LOG",
        "RUST_BACKTRACE",
        "NO_COLOR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ];
    EXACT.contains(&name.to_ascii_uppercase().as_str())
        || name.starts_with("LC_")
        || name.starts_with("OTEL_")
}

fn describe(s: std::io::Result<ExitStatus>) -> String {
    match s {
        Ok(s) => s.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// SIGTERM, then SIGKILL at the end of `budget`.
async fn terminate(child: &mut Child, budget: Duration) -> Stop {
    let Some(pid) = child.id() else {
        return Stop::NotRunning;
    };
    let term = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .map(|p| rustix::process::kill_process(p, rustix::process::Signal::TERM));
    if !matches!(term, Some(Ok(()))) {
        let _ = child.kill().await;
        return Stop::Forced;
    }
    match tokio::time::timeout(budget, child.wait()).await {
        Ok(_) => Stop::Graceful,
        Err(_) => {
            let _ = child.kill().await;
            Stop::Forced
        }
    }
}
