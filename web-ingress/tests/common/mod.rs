//! Helpers shared by the web-ingress integration tests: starting an ingress
//! in process or the built binary as a child process, bounded waiting,
//! reading metrics and error bodies, and test-only `rust/*` nodes.
//!
//! Every test binary compiles this module but uses only part of it, hence
//! the `dead_code` allowance (the usual shape of `tests/common/mod.rs`).
#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_exec_worker::{Node, NodeContext, NodeError, NodeOutput, Registry};
use sluice_web_ingress::{Config, Ingress};

// === paths ===

/// The workspace root, where the README's commands are run from.
pub fn workspace_root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .expect("the workspace root exists")
}

/// A manifest of `tests/pipelines/`.
pub fn pipeline(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/pipelines")
        .join(name)
}

/// The built `sluice-web-ingress` binary.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sluice-web-ingress")
}

/// A loopback port that was free a moment ago (bind `:0`, read, release).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("bound address").port()
}

// === waiting ===

/// Polls `probe` every 20ms until it yields `Some`, for at most `patience`;
/// panics naming `what` was awaited otherwise.
pub async fn eventually<T, F, Fut>(patience: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if start.elapsed() > patience {
            panic!("timed out after {patience:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === in-process ingress ===

/// A test configuration for `manifest`: ephemeral port, no readiness grace
/// (tests that exercise the grace set their own), a short drain budget.
pub fn config(manifest: &Path) -> Config {
    let mut c = Config::for_pipeline(manifest);
    c.drain_grace = Duration::ZERO;
    c.drain_timeout = Duration::from_secs(5);
    c
}

/// Starts an ingress for `tests/pipelines/<name>` with the built-in catalog.
pub async fn start(name: &str) -> Ingress {
    start_with(name, Registry::builtin()).await
}

/// Starts an ingress for `tests/pipelines/<name>` with `nodes`.
pub async fn start_with(name: &str, nodes: Registry) -> Ingress {
    let path = pipeline(name);
    sluice_web_ingress::start_with(config(&path), nodes)
        .await
        .unwrap_or_else(|e| panic!("ingress for {} did not start: {e}", path.display()))
}

/// Drains `ingress` and waits (bounded) until it has stopped, so its worker
/// threads do not outlive the test.
pub async fn stop(ingress: Ingress) {
    ingress.begin_drain();
    tokio::time::timeout(Duration::from_secs(20), ingress.wait())
        .await
        .expect("the ingress drains within 20s");
}

/// `http://<addr><path>`.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// A client that never waits forever.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a reqwest client")
}

/// The ingress's metrics, as `/metrics` renders them.
pub fn scrape(ingress: &Ingress) -> String {
    sluice_platform::metrics::render(&ingress.state().registry)
}

// === metrics ===

/// The value of sample `name` whose labels include every pair of `labels`,
/// from Prometheus/OpenMetrics text; `None` when there is no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let have: Vec<(&str, &str)> = label_text
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            labels
                .iter()
                .all(|want| have.contains(want))
                .then(|| value.parse().ok())
                .flatten()
        })
}

// === error bodies ===

/// Checks `body` is `{"error": {"code", "message", "request_id"}}` with
/// nothing else, and returns (code, message, request_id).
pub fn error_parts(body: &Value) -> (String, String, String) {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {body}"));
    assert_eq!(obj.len(), 1, "error body has only `error`: {body}");
    let err = obj["error"]
        .as_object()
        .unwrap_or_else(|| panic!("`error` is not an object: {body}"));
    assert_eq!(
        err.len(),
        3,
        "`error` has exactly code, message and request_id: {body}"
    );
    let field = |k: &str| {
        err.get(k)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("`error.{k}` is not a string: {body}"))
            .to_string()
    };
    let message = field("message");
    assert!(!message.is_empty(), "the error message is empty: {body}");
    (field("code"), message, field("request_id"))
}

/// Status, headers and JSON body of a response.
pub async fn json_response(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("the response body is readable");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"));
    (status, headers, body)
}

/// A header as text, or panics naming it.
pub fn header<'h>(headers: &'h reqwest::header::HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no `{name}` header in {headers:?}"))
        .to_str()
        .expect("a printable header")
}

// === the binary as a child process ===

/// A running `sluice-web-ingress` process, killed when dropped (a failing
/// test never leaves it behind). Its output goes to files so that a chatty
/// child can never block on a full pipe.
pub struct Proc {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Spawns the binary with `args` in `cwd`, with a clean `SLUICE_*`
    /// environment plus `env`.
    pub fn spawn(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"));
        for (k, _) in std::env::vars() {
            if k.starts_with("SLUICE_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().expect("spawn sluice-web-ingress");
        Self {
            child: Some(child),
            _dir: dir,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM, as the kubelet does.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// The exit status if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("try_wait")
    }

    /// Waits (bounded) for the process to exit.
    pub async fn exit_status(&mut self, patience: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                return s;
            }
            if start.elapsed() > patience {
                panic!(
                    "sluice-web-ingress did not exit within {patience:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
                if std::thread::panicking() {
                    eprintln!("sluice-web-ingress stderr:\n{}", self.stderr());
                }
            }
        }
    }
}

/// Runs the binary to completion (bounded) and returns its status, stdout
/// and stderr.
pub async fn run_binary(args: &[&str], cwd: &Path) -> (ExitStatus, String, String) {
    let mut p = Proc::spawn(args, cwd, &[]);
    let status = p.exit_status(Duration::from_secs(20)).await;
    (status, p.stdout(), p.stderr())
}

/// Polls `GET /healthz` of the child `proc` until it answers 200 (`Ok`) or
/// the child exits (`Err` with its status).
async fn healthy_or_exited(
    client: &reqwest::Client,
    addr: SocketAddr,
    proc: &mut Proc,
) -> Result<(), ExitStatus> {
    let health = url(addr, "/healthz");
    let patience = Duration::from_secs(30);
    let start = Instant::now();
    loop {
        let ok = client
            .get(&health)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            return Ok(());
        }
        let child = proc.child.as_mut().expect("running");
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Err(s);
        }
        if start.elapsed() > patience {
            panic!("timed out after {patience:?} waiting for: {health} to answer 200");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Spawns the binary with `args` and `--listen` on a free loopback port,
/// and waits until it is healthy. The port is free when chosen, not
/// reserved: a child that finds it taken meanwhile is started again on
/// another, up to three times.
pub async fn spawn_healthy(
    client: &reqwest::Client,
    args: &[&str],
    cwd: &Path,
    env: &[(&str, &str)],
) -> (Proc, SocketAddr) {
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut all = args.to_vec();
        all.extend(["--listen", &listen]);
        let mut proc = Proc::spawn(&all, cwd, env);
        let addr = listen.parse().expect("an address");
        match healthy_or_exited(client, addr, &mut proc).await {
            Ok(()) => return (proc, addr),
            Err(_) if attempt < ATTEMPTS && proc.stderr().contains("cannot listen on") => {}
            Err(s) => panic!(
                "sluice-web-ingress exited ({s}) before {} answered; stderr:\n{}",
                url(addr, "/healthz"),
                proc.stderr()
            ),
        }
    }
    unreachable!("the last attempt returns or panics")
}

// === test-only nodes ===

/// The boxed future `#[async_trait]` methods return: the web-ingress crate
/// does not depend on `async-trait`, so the test nodes spell it out.
pub type NodeFuture<'a> = Pin<Box<dyn Future<Output = Result<NodeOutput, NodeError>> + Send + 'a>>;

/// Counts calls of a node (started and finished), shared with the test.
#[derive(Debug, Default)]
pub struct Calls {
    pub started: AtomicUsize,
    pub finished: AtomicUsize,
}

impl Calls {
    pub fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
    pub fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }
}

/// `rust/count`: counts its calls and echoes its input.
pub struct Counting {
    pub calls: Arc<Calls>,
}

impl Node for Counting {
    fn call<'s, 'c, 'f>(&'s self, input: Value, _ctx: &'c NodeContext) -> NodeFuture<'f>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            self.calls.started.fetch_add(1, Ordering::SeqCst);
            self.calls.finished.fetch_add(1, Ordering::SeqCst);
            Ok(NodeOutput::value(input))
        })
    }
}

/// `rust/flaky`: counts its calls and always fails retryably (an upstream
/// that stays down).
pub struct Flaky {
    pub calls: Arc<Calls>,
}

impl Node for Flaky {
    fn call<'s, 'c, 'f>(&'s self, _input: Value, _ctx: &'c NodeContext) -> NodeFuture<'f>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            self.calls.started.fetch_add(1, Ordering::SeqCst);
            self.calls.finished.fetch_add(1, Ordering::SeqCst);
            Err(NodeError::Retryable("upstream is down".into()))
        })
    }
}

/// The built-in catalog plus `uses`, built by `make` for every node using it.
pub fn registry_with<N, F>(uses: &str, make: F) -> Registry
where
    N: Node,
    F: Fn() -> N + Send + Sync + 'static,
{
    let mut r = Registry::builtin();
    r.register(uses, move |_cfg| Ok(Arc::new(make()) as Arc<dyn Node>));
    r
}

/// `rust/panic`: counts its calls and panics, as a node with a bug that a
/// hostile input reaches would.
pub struct Panicking {
    pub calls: Arc<Calls>,
}

impl Node for Panicking {
    fn call<'s, 'c, 'f>(&'s self, input: Value, _ctx: &'c NodeContext) -> NodeFuture<'f>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            self.calls.started.fetch_add(1, Ordering::SeqCst);
            // Indexing past the end: the kind of panic a hostile payload finds.
            let items = input["items"].as_array().cloned().unwrap_or_default();
            let picked = items[items.len()].clone();
            self.calls.finished.fetch_add(1, Ordering::SeqCst);
            Ok(NodeOutput::value(picked))
        })
    }
}
