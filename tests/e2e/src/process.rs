//! Processes owned by a test: the ingress and the workers, each started on a
//! free loopback port, logging into the sandbox, killed by PID on drop, and
//! restartable (as a Deployment restarts a crashed pod).
//!
//! ```text
//!   Spec (program, flags) ──start──▶ Service ──kill9/terminate──▶ exited
//!                                     │  ▲            │
//!                                     │  └─restart────┘   (fresh port, fresh log)
//!                                     └─ drop: SIGKILL by PID + reap
//! ```

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::binaries::{binary, INGRESS_BIN, WORKER_BIN};
use crate::sandbox::Sandbox;

/// How long a started process may take to answer `/readyz`.
const READY_PATIENCE: Duration = Duration::from_secs(30);
/// Attempts at starting on a free port (another process may take the port
/// between our probe and the child's bind).
const START_ATTEMPTS: usize = 3;
/// Log filter of the children; `SLUICE_E2E_LOG` overrides it.
const DEFAULT_LOG: &str = "info";

/// A loopback port nobody listens on right now.
///
/// # Panics
/// When no port can be bound.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// How to start one process: program and flags, and the flag that takes the
/// address it serves HTTP on (`--listen` or `--admin`), chosen at each start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Names the log files and failure messages.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Environment variables set on top of the test's own (minus `SLUICE_*`
    /// and `OTEL_*`, which never leak in).
    pub env: Vec<(OsString, OsString)>,
    pub addr_flag: &'static str,
}

impl Spec {
    /// `sluice-web-ingress --pipeline FILE`.
    pub fn ingress(pipeline: &Path) -> Self {
        Self {
            name: "ingress".into(),
            program: binary(INGRESS_BIN),
            args: vec!["--pipeline".into(), pipeline.into()],
            env: vec![],
            addr_flag: "--listen",
        }
    }

    /// `sluice-exec-worker --pipeline FILE --group NAME`.
    pub fn worker(pipeline: &Path, group: &str) -> Self {
        Self {
            name: format!("worker-{group}"),
            program: binary(WORKER_BIN),
            args: vec![
                "--pipeline".into(),
                pipeline.into(),
                "--group".into(),
                group.into(),
            ],
            env: vec![],
            addr_flag: "--admin",
        }
    }

    /// Adds `--redis URL --keys DIR`.
    pub fn redis(self, url: &str, keys: &Path) -> Self {
        self.arg("--redis").arg(url).arg("--keys").arg(keys)
    }

    /// Adds one argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Sets one environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Renames the process (log files, messages).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
}

/// A running (or deliberately stopped) process of a test.
///
/// # Guarantees
/// The process is killed with SIGKILL, by its PID, and reaped when the
/// service is dropped, also when the test panics.
pub struct Service {
    spec: Spec,
    sandbox: Sandbox,
    child: Option<Child>,
    addr: SocketAddr,
    /// The status it exited with, once reaped.
    status: Option<ExitStatus>,
    log: PathBuf,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.spec.name)
            .field("addr", &self.addr)
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

impl Service {
    /// Starts `spec` and waits until it answers `/readyz` with 200.
    ///
    /// # Panics
    /// When it exits or is not ready within 30 s.
    pub async fn start(sandbox: &Sandbox, spec: Spec) -> Self {
        let mut s = Self {
            spec,
            sandbox: sandbox.clone(),
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            status: None,
            log: PathBuf::new(),
        };
        s.launch().await;
        s
    }

    /// Starts `spec` on a free port without waiting for it to be ready
    /// (a test of readiness itself). A port taken meanwhile is not retried.
    pub fn spawn_unready(sandbox: &Sandbox, spec: Spec) -> Self {
        let mut s = Self {
            spec,
            sandbox: sandbox.clone(),
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            status: None,
            log: PathBuf::new(),
        };
        s.spawn();
        s
    }

    async fn launch(&mut self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("build an HTTP client");
        for attempt in 1..=START_ATTEMPTS {
            self.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            self.spawn();
            let deadline = Instant::now() + READY_PATIENCE;
            loop {
                if let Some(status) = self.exited() {
                    let log = self.log_text();
                    if attempt < START_ATTEMPTS && log.contains("cannot listen") {
                        break; // port taken meanwhile: try another
                    }
                    panic!(
                        "{} exited during start-up ({status}); log {}:\n{log}",
                        self.spec.name,
                        self.log_path().display()
                    );
                }
                if let Ok(r) = client.get(self.url("/readyz")).send().await {
                    if r.status() == reqwest::StatusCode::OK {
                        return;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not answer /readyz with 200 within {READY_PATIENCE:?} on {}",
                    self.spec.name,
                    self.addr
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }

    fn spawn(&mut self) {
        let log = self.sandbox.log_file(&self.spec.name);
        let out =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone a log file handle");
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.args)
            .arg(self.spec.addr_flag)
            .arg(self.addr.to_string())
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_E2E_LOG").unwrap_or_else(|_| DEFAULT_LOG.into()),
            )
            // Plain text logs: they are read by people and by assertions.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // Settings come from the spec only: a SLUICE_* or OTEL_* variable
        // of the shell running the tests must not leak into them.
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if name.starts_with("SLUICE_") || name.starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.spec.env.iter().map(|(k, v)| (k, v)));
        self.log = log;
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.spec.program.display()));
        self.child = Some(child);
        self.status = None;
    }

    /// The address it serves HTTP on (public for the ingress, admin for a worker).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// PID of the running process.
    ///
    /// # Panics
    /// When it is not running.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("{} is not running", self.spec.name))
    }

    /// The current log file (a new one at each start).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The current log file's contents.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited; reaps it and returns the status if so.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    self.status = Some(s);
                }
            }
        }
        self.status
    }

    /// SIGKILL (a crash: no drain) and reap. Idempotent.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // An error means it has already exited; `wait` reaps it either way.
            let _ = c.kill();
            if let Ok(s) = c.wait() {
                self.status.get_or_insert(s);
            }
            self.child = Some(c);
        }
    }

    /// Sends SIGTERM (what the kubelet sends before a pod goes away).
    ///
    /// # Panics
    /// When it is not running or `kill` (procps) cannot be run.
    pub fn terminate(&self) {
        let pid = self.pid();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("run `kill -TERM {pid}`: {e}"));
        assert!(status.success(), "`kill -TERM {pid}` failed: {status}");
    }

    /// Waits for it to exit, at most `patience`.
    ///
    /// # Panics
    /// When it is still running after `patience`.
    pub async fn wait_exit(&mut self, patience: Duration) -> ExitStatus {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(s) = self.exited() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running {patience:?} after being asked to stop",
                self.spec.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it if running, then starts it again (fresh port, fresh log) and
    /// waits until ready.
    ///
    /// # Panics
    /// As [`Service::start`].
    pub async fn restart(&mut self) {
        self.kill9();
        self.child = None;
        self.launch().await;
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}
