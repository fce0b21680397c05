//! Operator scale benchmark: many StreamPipelines created at once in a
//! cluster that also holds thousands of unrelated Secrets and ConfigMaps.
//!
//! ```text
//! cluster-sim (in this process) ◀─ unrelated Secrets + ConfigMaps (written to the store)
//!   ▲                          ◀─ StreamPipelines, all created at once (admin client)
//!   │ kubeconfig, ServiceAccount token
//! sluice-operator (release binary, its own process, as the chart runs it)
//!
//! first create ─▶ poll the store until every pipeline is Ready=True at its generation
//!   ─▶ steady window (a few requeue intervals) ─▶ requests by verb, writes, RSS, CPU
//! ```
//!
//! The same measurement runs first with one pipeline and no unrelated
//! objects (the baseline), so the ratios printed at the end come from one
//! run on one machine. `scripts/bench-operator` builds and runs this; see
//! `docs/benchmarks.md`.
//!
//! The stand-in is not an API server: its times are indicative, while the
//! requests the operator makes are what it would make against a cluster.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use cluster_sim::{
    counts_by_verb, ClusterSim, ClusterSimHandle, ClusterSimOptions, RequestMatch, RequestRecord,
};
use futures::stream::{self, StreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sluice_crds::StreamPipeline;
use sluice_operator::labels;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Namespace the operator runs in (its leader Lease lives there).
const OPERATOR_NS: &str = "sluice-system";
/// ServiceAccount the operator authenticates as; the request log is
/// filtered by it.
const OPERATOR_SA: &str = "sluice-operator";
const API_VERSION: &str = "sluice.dev/v1alpha1";
const KIND: &str = "StreamPipeline";
/// Field manager of the benchmark's own creates (as `kubectl apply`).
const APPLIER: &str = "bench";
/// Verbs that change state.
const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];
/// Verbs in the order the tables print them.
const VERBS: [&str; 7] = [
    "get", "list", "watch", "create", "patch", "update", "delete",
];

/// Measures how the operator copes with many pipelines among many unrelated
/// objects: time until all are Ready, API requests by verb, RSS and CPU.
#[derive(Debug, Clone, Parser)]
#[command(name = "bench_scale")]
struct Args {
    /// The sluice-operator binary to run (build it with --release).
    #[arg(long, value_name = "PATH")]
    operator_bin: Option<PathBuf>,

    /// StreamPipelines created at once.
    #[arg(long, default_value_t = 200)]
    pipelines: usize,

    /// Unrelated Secrets in the cluster before the operator starts.
    #[arg(long, default_value_t = 5000)]
    secrets: usize,

    /// Unrelated ConfigMaps in the cluster before the operator starts.
    #[arg(long, default_value_t = 5000)]
    config_maps: usize,

    /// Namespaces the pipelines and the unrelated objects are spread over.
    #[arg(long, default_value_t = 8)]
    namespaces: usize,

    /// Share of pipelines (percent) on the memory profile; the others use
    /// managed Redis with two worker groups.
    #[arg(long, default_value_t = 20)]
    memory_percent: usize,

    /// Creates sent to the API server at once.
    #[arg(long, default_value_t = 32)]
    apply_concurrency: usize,

    /// The operator's --requeue-interval.
    #[arg(long, default_value = "10s", value_parser = duration)]
    requeue_interval: Duration,

    /// Length of the steady window after all are Ready, in requeue intervals.
    #[arg(long, default_value_t = 2)]
    steady_intervals: u32,

    /// One rollout step (one replica) of the stand-in's workload controllers.
    #[arg(long, default_value = "50ms", value_parser = duration)]
    step_delay: Duration,

    /// Shortest time between two passes of the stand-in's garbage collector,
    /// which walks the whole store under its lock (0: after every change).
    /// Nothing is deleted here, so its pace does not change what is measured.
    #[arg(long, default_value = "1s", value_parser = duration_or_zero)]
    sim_gc_interval: Duration,

    /// Shortest time between two passes of the stand-in's workload
    /// controllers, which report rollouts (0: after every change).
    #[arg(long, default_value = "100ms", value_parser = duration_or_zero)]
    sim_controller_interval: Duration,

    /// Give up waiting for Ready after this long.
    #[arg(long, default_value = "10m", value_parser = duration)]
    patience: Duration,

    /// Run the operator without leader election (the chart enables it).
    #[arg(long)]
    no_leader_election: bool,

    /// An extra flag for the operator, e.g. `--operator-arg=--autoscale-interval=1h`
    /// (repeatable).
    #[arg(long = "operator-arg", value_name = "FLAG", allow_hyphen_values = true)]
    operator_args: Vec<String>,

    /// Skip the one-pipeline baseline.
    #[arg(long)]
    no_baseline: bool,

    /// Seed of the generated unrelated objects.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn duration(s: &str) -> Result<Duration, String> {
    sluice_crds::units::parse_duration(s)
}

fn duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    duration(s)
}

/// One measured configuration.
#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    pipelines: usize,
    secrets: usize,
    config_maps: usize,
    namespaces: usize,
}

impl Scenario {
    fn unrelated(&self) -> usize {
        self.secrets + self.config_maps
    }
}

// === requests ===

/// The operator's requests at one moment, for differences between moments.
#[derive(Debug, Clone, Default)]
struct Requests {
    /// Resource requests by verb, Lease requests included.
    by_verb: BTreeMap<String, usize>,
    /// Lease requests by verb (leader election renewals).
    lease: BTreeMap<String, usize>,
    /// Every request, discovery and `/version` included.
    total: usize,
    /// Length of the whole request log (every caller), to slice windows.
    log_len: usize,
}

impl Requests {
    /// Counts from one snapshot of the request log, so that the numbers of
    /// one moment agree with each other.
    fn take(sim: &ClusterSimHandle, caller: &str) -> Self {
        let log = sim.requests();
        let m = RequestMatch::any().caller(caller);
        Self {
            by_verb: counts_by_verb(&log, &m),
            lease: counts_by_verb(&log, &m.clone().resource("leases")),
            total: log.iter().filter(|r| m.matches(r)).count(),
            log_len: log.len(),
        }
    }

    /// Requests made between `earlier` and `self`.
    fn since(&self, earlier: &Requests) -> Window {
        let diff = |a: &BTreeMap<String, usize>, b: &BTreeMap<String, usize>| {
            a.iter()
                .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect::<BTreeMap<_, _>>()
        };
        Window {
            by_verb: diff(&self.by_verb, &earlier.by_verb),
            lease: diff(&self.lease, &earlier.lease),
            total: self.total - earlier.total,
        }
    }
}

/// The operator's requests in one phase.
#[derive(Debug, Clone, Default)]
struct Window {
    by_verb: BTreeMap<String, usize>,
    lease: BTreeMap<String, usize>,
    total: usize,
}

impl Window {
    fn verb(&self, v: &str) -> usize {
        self.by_verb.get(v).copied().unwrap_or(0)
    }

    fn lease_total(&self) -> usize {
        self.lease.values().sum()
    }

    /// Write requests other than Lease renewals.
    fn writes(&self) -> usize {
        WRITE_VERBS
            .iter()
            .map(|v| self.verb(v) - self.lease.get(*v).copied().unwrap_or(0))
            .sum()
    }

    fn resource_requests(&self) -> usize {
        self.by_verb.values().sum()
    }
}

// === the operator process ===

/// CPU time and memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
struct ProcStats {
    rss_kib: u64,
    hwm_kib: u64,
    cpu: Duration,
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        // USER_HZ is 100 on every architecture Linux ships for servers.
        .unwrap_or(100)
}

fn proc_stats(pid: &str, ticks: u64) -> anyhow::Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces, hence the
    // last ')'): state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu_ticks = tick(11) + tick(12);
    Ok(ProcStats {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        cpu: Duration::from_millis(cpu_ticks * 1000 / ticks.max(1)),
    })
}

/// A running `sluice-operator`; killed when dropped.
struct Operator {
    user: String,
    pid: String,
    metrics_addr: String,
    child: tokio::process::Child,
    /// How many warning and error lines the operator logged, and the first few.
    warnings: Arc<Mutex<(usize, Vec<String>)>>,
}

impl Operator {
    async fn start(sim: &ClusterSimHandle, bin: &Path, args: &Args) -> anyhow::Result<Self> {
        let kubeconfig = sim.service_account_kubeconfig(OPERATOR_NS, OPERATOR_SA)?;
        let mut cmd = tokio::process::Command::new(bin);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLUICE_")) {
            cmd.env_remove(k);
        }
        let requeue = format!("{}ms", args.requeue_interval.as_millis());
        cmd.env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(["--identity", "bench", "--operator-namespace", OPERATOR_NS])
            .args(["--requeue-interval", &requeue])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if !args.no_leader_election {
            cmd.arg("--leader-election");
        }
        cmd.args(&args.operator_args);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("operator exited at once")?.to_string();
        let stderr = child.stderr.take().context("no stderr")?;
        let warnings = Arc::new(Mutex::new((0usize, Vec::new())));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel();
        {
            let warnings = warnings.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    if let Some(a) = v["fields"]["metrics_addr"].as_str() {
                        let _ = addr_tx.send(a.to_string());
                    }
                    if matches!(v["level"].as_str(), Some("WARN" | "ERROR")) {
                        let mut w = warnings.lock();
                        w.0 += 1;
                        if w.1.len() < 5 {
                            w.1.push(line);
                        }
                    }
                }
            });
        }
        let metrics_addr = tokio::time::timeout(Duration::from_secs(30), addr_rx.recv())
            .await
            .ok()
            .flatten()
            .context("sluice-operator did not log its startup line")?;
        Ok(Self {
            user: format!("system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"),
            pid,
            metrics_addr,
            child,
            warnings,
        })
    }

    /// Sum of the samples of a metric family (name plus labels prefix).
    async fn metric(&self, prefix: &str) -> anyhow::Result<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .context("scraping the operator's metrics")?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    async fn counters(&self) -> anyhow::Result<Counters> {
        Ok(Counters {
            reconciles: self.metric("sluice_operator_reconciles_total").await? as u64,
            errors: self
                .metric("sluice_operator_reconcile_errors_total")
                .await? as u64,
            status_writes: self.metric("sluice_operator_status_writes_total").await? as u64,
            duration_sum: self
                .metric("sluice_operator_reconcile_duration_seconds_sum")
                .await?,
            duration_count: self
                .metric("sluice_operator_reconcile_duration_seconds_count")
                .await?,
        })
    }

    /// SIGTERM, then SIGKILL if it does not exit within 15 s.
    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid])
            .status();
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The operator's own counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    reconciles: u64,
    errors: u64,
    status_writes: u64,
    /// Sum and count of the reconcile duration histogram.
    duration_sum: f64,
    duration_count: f64,
}

// === the cluster's content ===

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn example(name: &str) -> anyhow::Result<Value> {
    let path = examples_dir().join(format!("{name}.yaml"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    sluice_crds::yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn namespace_of(i: usize, namespaces: usize) -> String {
    format!("bench-{:02}", i % namespaces.max(1))
}

/// Whether pipeline `i` uses the memory profile: `percent` of them, spread
/// evenly, never the first (so the one-pipeline baseline runs Redis).
fn is_memory(i: usize, percent: usize) -> bool {
    (i + 1) * percent / 100 > i * percent / 100
}

/// Pipeline `i`: `orders-redis` (managed Redis StatefulSet, ingress and two
/// worker groups; every fourth with two replicas of the ingress and the
/// `cpu` group, which adds a PodDisruptionBudget) or `hello` (memory profile,
/// one Deployment).
fn pipeline(i: usize, ns: &str, memory: bool, orders: &Value, hello: &Value) -> Value {
    let mut m = if memory {
        hello.clone()
    } else {
        orders.clone()
    };
    let prefix = if memory { "hello" } else { "orders" };
    m["metadata"] = json!({"name": format!("{prefix}-{i:03}"), "namespace": ns});
    if !memory && i % 4 == 3 {
        for g in m["spec"]["groups"].as_array_mut().into_iter().flatten() {
            if g["name"] == "web" || g["name"] == "cpu" {
                g["replicas"] = json!(2);
            }
        }
    }
    m
}

fn random_text(rng: &mut StdRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

fn pem(rng: &mut StdRng, label: &str, body_len: usize) -> String {
    let body = random_text(rng, body_len);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Labels of an application's objects; a third carry none.
fn app_labels(rng: &mut StdRng, i: usize) -> Value {
    match i % 3 {
        0 => json!({}),
        1 => json!({
            "app.kubernetes.io/name": format!("app-{}", i % 40),
            "app.kubernetes.io/part-of": "shop",
        }),
        _ => json!({
            "app.kubernetes.io/name": format!("svc-{}", rng.gen_range(0..200)),
            "app.kubernetes.io/instance": format!("svc-{}-prod", i % 25),
            "app.kubernetes.io/managed-by": "Helm",
        }),
    }
}

/// Unrelated Secret `i`: application credentials (~60%, a few hundred
/// bytes), TLS certificates (~25%, ~4 kB encoded) or Helm release records
/// (~15%, 8–16 kB encoded).
fn unrelated_secret(rng: &mut StdRng, i: usize, ns: &str) -> Value {
    let roll = rng.gen_range(0..100);
    let (name, type_, data, labels) = if roll < 60 {
        let data: serde_json::Map<String, Value> = (0..rng.gen_range(2..=5))
            .map(|k| {
                let len = rng.gen_range(16..=64);
                (format!("key-{k}"), json!(b64(&random_text(rng, len))))
            })
            .collect();
        (
            format!("app-credentials-{i:05}"),
            "Opaque",
            Value::Object(data),
            app_labels(rng, i),
        )
    } else if roll < 85 {
        let crt = pem(rng, "CERTIFICATE", 1200);
        let key = pem(rng, "PRIVATE KEY", 1600);
        (
            format!("tls-{i:05}"),
            "kubernetes.io/tls",
            json!({"tls.crt": b64(&crt), "tls.key": b64(&key)}),
            app_labels(rng, i),
        )
    } else {
        let version = rng.gen_range(1..20);
        let len = rng.gen_range(6_000..12_000);
        (
            format!("sh.helm.release.v1.app-{i:05}.v{version}"),
            "helm.sh/release.v1",
            json!({"release": b64(&random_text(rng, len))}),
            json!({
                "owner": "helm",
                "name": format!("app-{i:05}"),
                "status": "deployed",
                "version": version.to_string(),
            }),
        )
    };
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "type": type_,
        "data": data,
    })
}

/// Unrelated ConfigMap `i`: one to four files of 200 B – 4 kB; one in
/// twenty also carries a 16 kB file.
fn unrelated_config_map(rng: &mut StdRng, i: usize, ns: &str) -> Value {
    let mut data = serde_json::Map::new();
    for k in 0..rng.gen_range(1..=4) {
        let lines = rng.gen_range(5..100);
        let text: Vec<String> = (0..lines)
            .map(|l| format!("setting.{k}.{l} = {}", random_text(rng, 24)))
            .collect();
        data.insert(format!("app-{k}.properties"), json!(text.join("\n")));
    }
    if i.is_multiple_of(20) {
        data.insert("large.json".into(), json!(random_text(rng, 16_000)));
    }
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": format!("app-config-{i:05}"),
            "namespace": ns,
            "labels": app_labels(rng, i),
        },
        "data": data,
    })
}

fn namespace(sim: &ClusterSimHandle, ns: &str) -> anyhow::Result<()> {
    if sim.get_object("v1", "Namespace", None, ns)?.is_none() {
        sim.put_object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))?;
    }
    Ok(())
}

async fn admin_client(path: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(path).context("reading kubeconfig")?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("building kube config")?;
    Client::try_from(config).context("building kube client")
}

fn is_ready(p: &Value) -> bool {
    let current = p["metadata"]["generation"] == p["status"]["observedGeneration"];
    let ready = p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    current && ready
}

// === one scenario ===

/// What one scenario measured.
#[derive(Debug, Clone, Default)]
struct Outcome {
    scenario: String,
    pipelines: usize,
    unrelated: usize,
    /// First create until every pipeline was Ready (None: patience ran out).
    all_ready: Option<Duration>,
    /// Per pipeline, first create until it was Ready.
    ready_each: Vec<Duration>,
    /// Writing the unrelated objects into the store.
    setup: Duration,
    startup: Window,
    /// `verb resource[/sub]` → count, from the operator's start until idle.
    startup_by_resource: BTreeMap<String, usize>,
    to_ready: Window,
    steady: Window,
    steady_len: Duration,
    /// Non-Lease writes in the steady window, as `verb resource → status code` → count.
    steady_writes: BTreeMap<String, usize>,
    /// `verb resource[/sub]` → count, first create until Ready.
    to_ready_by_resource: BTreeMap<String, usize>,
    at_ready: Counters,
    at_end: Counters,
    /// Operator process at Ready and at the end of the steady window.
    proc_ready: ProcStats,
    proc_end: ProcStats,
    /// This process (the stand-in and the polling), first create until Ready.
    sim_cpu: Duration,
    /// Objects the operator made, by kind: how many and their JSON size.
    owned_objects: BTreeMap<String, (usize, usize)>,
    warnings: (usize, Vec<String>),
    /// Pipelines whose status changed in the steady window, with the change.
    steady_status_changes: Vec<String>,
    /// When the last non-Lease write of the steady window came, after Ready.
    last_write: Option<Duration>,
    /// Non-Lease writes after the first requeue interval of the window.
    writes_after_first_interval: usize,
    /// Operator RSS at the end of each requeue interval of the steady window.
    rss_each_interval: Vec<u64>,
}

async fn run_scenario(args: &Args, bin: &Path, sc: &Scenario) -> anyhow::Result<Outcome> {
    let ticks = clock_ticks();
    eprintln!(
        "[{}] {} pipelines, {} Secrets + {} ConfigMaps over {} namespaces",
        sc.name, sc.pipelines, sc.secrets, sc.config_maps, sc.namespaces
    );
    let sim = ClusterSim::start_with(ClusterSimOptions {
        step_delay: args.step_delay,
        // Room for the unrelated objects' creation plus the run's changes,
        // so no watch falls out of the history because of the stand-in's
        // single shared history (a real API server keeps one per type).
        watch_history: 20_000 + sc.unrelated() + sc.pipelines * 200,
        gc_min_interval: args.sim_gc_interval,
        controller_min_interval: args.sim_controller_interval,
        ..Default::default()
    })
    .await
    .context("starting cluster-sim")?;
    let admin = admin_client(sim.kubeconfig_path()).await?;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    crds.create(&PostParams::default(), &sluice_crds::crd::crd())
        .await
        .context("installing the StreamPipeline CRD")?;
    crds.create(
        &PostParams::default(),
        &sluice_crds::crd::dead_letter_action_crd(),
    )
    .await
    .context("installing the DeadLetterAction CRD")?;

    let setup_started = Instant::now();
    namespace(&sim, OPERATOR_NS)?;
    for n in 0..sc.namespaces {
        namespace(&sim, &namespace_of(n, sc.namespaces))?;
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    for i in 0..sc.secrets {
        let s = unrelated_secret(&mut rng, i, &namespace_of(i, sc.namespaces));
        sim.put_object(s).context("writing an unrelated Secret")?;
    }
    for i in 0..sc.config_maps {
        let c = unrelated_config_map(&mut rng, i, &namespace_of(i, sc.namespaces));
        sim.put_object(c)
            .context("writing an unrelated ConfigMap")?;
    }
    let setup = setup_started.elapsed();

    let op = Operator::start(&sim, bin, args).await?;
    // Ready to work once its three watches (pipelines, Deployments,
    // StatefulSets) are open.
    let watches = RequestMatch::any().verb("watch").caller(&op.user);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sim.request_count(&watches) < 3 {
        if Instant::now() > deadline {
            bail!("the operator did not open its watches within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = Requests::take(&sim, &op.user);
    let startup = before.since(&Requests::default());
    let startup_by_resource = by_resource(&sim.requests()[..before.log_len], &op.user);

    let orders = example("orders-redis")?;
    let hello = example("hello")?;
    let manifests: Vec<(String, String, Value)> = (0..sc.pipelines)
        .map(|i| {
            let ns = namespace_of(i, sc.namespaces);
            let m = pipeline(i, &ns, is_memory(i, args.memory_percent), &orders, &hello);
            let name = m["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (ns, name, m)
        })
        .collect();

    let self_cpu_before = proc_stats("self", ticks)?.cpu;
    let t0 = Instant::now();
    let pp = PostParams {
        field_manager: Some(APPLIER.into()),
        ..Default::default()
    };
    let created: Vec<anyhow::Result<()>> = stream::iter(manifests.iter())
        .map(|(ns, name, m)| {
            let api: Api<StreamPipeline> = Api::namespaced(admin.clone(), ns);
            let pp = pp.clone();
            async move {
                let sp: StreamPipeline =
                    serde_json::from_value(m.clone()).context("not a StreamPipeline")?;
                api.create(&pp, &sp)
                    .await
                    .with_context(|| format!("creating {ns}/{name}"))?;
                Ok(())
            }
        })
        .buffer_unordered(args.apply_concurrency.max(1))
        .collect()
        .await;
    created.into_iter().collect::<anyhow::Result<Vec<()>>>()?;

    let mut pending: HashSet<(String, String)> = manifests
        .iter()
        .map(|(ns, name, _)| (ns.clone(), name.clone()))
        .collect();
    let mut ready_each = Vec::with_capacity(sc.pipelines);
    let all_ready = loop {
        let now = t0.elapsed();
        pending.retain(|(ns, name)| {
            let ready = sim
                .get_object(API_VERSION, KIND, Some(ns), name)
                .ok()
                .flatten()
                .is_some_and(|p| is_ready(&p));
            if ready {
                ready_each.push(now);
            }
            !ready
        });
        if pending.is_empty() {
            break Some(now);
        }
        if now > args.patience {
            eprintln!(
                "[{}] {} pipelines not Ready after {:?}",
                sc.name,
                pending.len(),
                args.patience
            );
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sim_cpu = proc_stats("self", ticks)?
        .cpu
        .saturating_sub(self_cpu_before);
    let at_ready_requests = Requests::take(&sim, &op.user);
    let statuses_at_ready = statuses(&sim, &manifests);
    let proc_ready = proc_stats(&op.pid, ticks)?;
    let at_ready = op.counters().await?;
    let to_ready = at_ready_requests.since(&before);
    let to_ready_by_resource = by_resource(
        &sim.requests()[before.log_len..at_ready_requests.log_len],
        &op.user,
    );
    eprintln!(
        "[{}] Ready after {:?}; steady window of {} × {:?}",
        sc.name, all_ready, args.steady_intervals, args.requeue_interval
    );

    let steady_len = args.requeue_interval * args.steady_intervals;
    // Sampled, to tell a tail of writes right after Ready from writes that
    // keep coming.
    let steady_started = Instant::now();
    let mut last_write: Option<Duration> = None;
    let mut writes_seen = 0;
    let mut writes_after_first_interval = 0;
    let mut rss_each_interval = Vec::new();
    while steady_started.elapsed() < steady_len {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let intervals_done =
            steady_started.elapsed().as_millis() / args.requeue_interval.as_millis().max(1);
        if intervals_done > rss_each_interval.len() as u128 {
            rss_each_interval.push(proc_stats(&op.pid, ticks)?.rss_kib);
        }
        let writes = Requests::take(&sim, &op.user)
            .since(&at_ready_requests)
            .writes();
        if writes > writes_seen {
            let at = steady_started.elapsed();
            if at > args.requeue_interval {
                writes_after_first_interval += writes - writes_seen;
            }
            last_write = Some(at);
            writes_seen = writes;
        }
    }
    let at_end_requests = Requests::take(&sim, &op.user);
    let steady = at_end_requests.since(&at_ready_requests);
    let steady_writes = sim.requests()[at_ready_requests.log_len..at_end_requests.log_len]
        .iter()
        .filter(|r| {
            r.caller == op.user && WRITE_VERBS.contains(&r.verb.as_str()) && r.resource != "leases"
        })
        .fold(BTreeMap::new(), |mut acc, r| {
            *acc.entry(format!("{} {} → {}", r.verb, r.resource_path(), r.code))
                .or_insert(0) += 1;
            acc
        });
    let proc_end = proc_stats(&op.pid, ticks)?;
    let at_end = op.counters().await?;
    let statuses_at_end = statuses(&sim, &manifests);
    let changed: Vec<String> = statuses_at_ready
        .iter()
        .filter(|(k, v)| statuses_at_end.get(*k) != Some(*v))
        .map(|(k, v)| {
            let mut diffs = Vec::new();
            json_diff(
                "status",
                v,
                statuses_at_end.get(k).unwrap_or(&Value::Null),
                &mut diffs,
            );
            format!("{k}: {}", diffs.join("; "))
        })
        .collect();

    let mut owned_objects = BTreeMap::new();
    let kinds = sluice_operator::owned_kinds()
        .iter()
        .map(|k| (k.api_version, k.kind))
        .chain([("v1", "Secret")]);
    for (api_version, kind) in kinds {
        // Kinds of optional add-ons (KEDA) are not served by the stand-in.
        let Ok(objects) = sim.list_objects(api_version, kind, None) else {
            continue;
        };
        let owned: Vec<&Value> = objects
            .iter()
            .filter(|o| o["metadata"]["labels"][labels::MANAGED_BY] == labels::MANAGER)
            .collect();
        if !owned.is_empty() {
            let bytes = owned.iter().map(|o| o.to_string().len()).sum();
            owned_objects.insert(kind.to_string(), (owned.len(), bytes));
        }
    }
    let warnings = op.warnings.lock().clone();
    op.stop().await;
    sim.shutdown().await;

    ready_each.sort();
    Ok(Outcome {
        scenario: sc.name.to_string(),
        pipelines: sc.pipelines,
        unrelated: sc.unrelated(),
        all_ready,
        ready_each,
        setup,
        startup,
        startup_by_resource,
        to_ready,
        steady,
        steady_len,
        steady_writes,
        to_ready_by_resource,
        at_ready,
        at_end,
        proc_ready,
        proc_end,
        sim_cpu,
        owned_objects,
        warnings,
        steady_status_changes: changed,
        last_write,
        writes_after_first_interval,
        rss_each_interval,
    })
}

/// Resource requests of `caller` as `verb resource[/sub]` → count; answers
/// other than 2xx are counted apart, with their status code.
fn by_resource(log: &[RequestRecord], caller: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in log.iter().filter(|r| r.caller == caller && r.is_resource()) {
        let key = if (200..300).contains(&r.code) {
            format!("{} {}", r.verb, r.resource_path())
        } else {
            format!("{} {} → {}", r.verb, r.resource_path(), r.code)
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// The leaves that differ between `a` and `b`, as `path: a → b`.
fn json_diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (&x.get(k), &y.get(k));
                let null = Value::Null;
                json_diff(
                    &format!("{path}.{k}"),
                    va.unwrap_or(&null),
                    vb.unwrap_or(&null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                // Conditions are named by their type rather than their index.
                let label = va["type"].as_str().map_or(i.to_string(), str::to_string);
                json_diff(&format!("{path}[{label}]"), va, vb, out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} → {b}")),
        _ => {}
    }
}

/// Every pipeline's status, by `ns/name`.
fn statuses(
    sim: &ClusterSimHandle,
    manifests: &[(String, String, Value)],
) -> BTreeMap<String, Value> {
    manifests
        .iter()
        .map(|(ns, name, _)| {
            let status = sim
                .get_object(API_VERSION, KIND, Some(ns), name)
                .ok()
                .flatten()
                .map(|p| p["status"].clone())
                .unwrap_or_default();
            (format!("{ns}/{name}"), status)
        })
        .collect()
}

// === report ===

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn verb_row(label: &str, w: &Window) {
    print!("{label:<34}");
    for v in VERBS {
        print!(" {:>7}", w.verb(v));
    }
    let other = w.total - w.resource_requests();
    println!(" {:>7} {:>7} {:>7}", w.lease_total(), other, w.total);
}

fn report(outcomes: &[Outcome], args: &Args) {
    println!();
    println!(
        "{:<10} {:>9} {:>9} {:>8} {:>7} {:>7} {:>10} {:>6} {:>7} {:>8} {:>8} {:>10} {:>8}",
        "scenario",
        "pipelines",
        "unrelated",
        "Ready s",
        "p50 s",
        "p90 s",
        "reconciles",
        "errors",
        "rec ms",
        "op CPU s",
        "peak MiB",
        "steady MiB",
        "sim CPU s",
    );
    for o in outcomes {
        println!(
            "{:<10} {:>9} {:>9} {:>8} {:>7} {:>7} {:>10} {:>6} {:>7.1} {:>8} {:>8} {:>10} {:>8}",
            o.scenario,
            o.pipelines,
            o.unrelated,
            o.all_ready.map(secs).unwrap_or_else(|| "timeout".into()),
            secs(percentile(&o.ready_each, 0.5)),
            secs(percentile(&o.ready_each, 0.9)),
            o.at_ready.reconciles,
            o.at_ready.errors,
            1000.0 * o.at_ready.duration_sum / o.at_ready.duration_count.max(1.0),
            secs(o.proc_ready.cpu),
            mib(o.proc_end.hwm_kib),
            mib(o.proc_end.rss_kib),
            secs(o.sim_cpu),
        );
    }
    for line in [
        "Ready s: first create until all are Ready; p50/p90: the pipelines' own times;",
        "rec ms: mean reconcile duration; op CPU s: the operator's user+system time until Ready;",
        "peak/steady MiB: the operator's VmHWM/VmRSS at the end of the steady window;",
        "sim CPU s: this process (the stand-in and the polling) until Ready.",
    ] {
        println!("  {line}");
    }

    println!();
    println!("API requests by the operator (its ServiceAccount), by verb.");
    println!(
        "  lease: leader election, also counted in the verb columns; other: discovery, /version."
    );
    print!("{:<34}", "phase");
    for v in VERBS {
        print!(" {v:>7}");
    }
    println!(" {:>7} {:>7} {:>7}", "lease", "other", "total");
    for o in outcomes {
        verb_row(&format!("{} startup (idle)", o.scenario), &o.startup);
        verb_row(
            &format!("{} first create → all Ready", o.scenario),
            &o.to_ready,
        );
        verb_row(
            &format!("{} steady {}s", o.scenario, o.steady_len.as_secs()),
            &o.steady,
        );
    }

    for o in outcomes {
        println!();
        let per = |n: usize| n as f64 / o.pipelines.max(1) as f64;
        let reconciles = o.at_ready.reconciles.max(1) as f64;
        println!(
            "[{}] startup until idle ({} unrelated objects written in {:.2} s before): {:?}",
            o.scenario,
            o.unrelated,
            o.setup.as_secs_f64(),
            o.startup_by_resource
        );
        println!(
            "[{}] first create → all Ready, by resource (per pipeline; reads per reconcile):",
            o.scenario
        );
        for (k, n) in &o.to_ready_by_resource {
            let per_reconcile = if k.starts_with("list ") || k.starts_with("get ") {
                format!("  {:.2}/reconcile", *n as f64 / reconciles)
            } else {
                String::new()
            };
            println!("  {k:<44} {n:>7}  {:>7.2}/pipeline{per_reconcile}", per(*n));
        }
        let steady_reconciles = o.at_end.reconciles - o.at_ready.reconciles;
        if let Some(at) = o.last_write {
            println!(
                "[{}] steady: last write {:.2} s after Ready; {} after the first interval",
                o.scenario,
                at.as_secs_f64(),
                o.writes_after_first_interval
            );
        }
        println!(
            "[{}] steady {}s: {} reconciles, {} status writes, {} non-Lease writes{}",
            o.scenario,
            o.steady_len.as_secs(),
            steady_reconciles,
            o.at_end.status_writes - o.at_ready.status_writes,
            o.steady.writes(),
            if o.steady_writes.is_empty() {
                String::new()
            } else {
                format!(": {:?}", o.steady_writes)
            }
        );
        if steady_reconciles > 0 {
            println!(
                "[{}] steady: {:.2} lists and {:.2} gets per reconcile, {:.1} requests/s",
                o.scenario,
                o.steady.verb("list") as f64 / steady_reconciles as f64,
                (o.steady.verb("get") - o.steady.lease.get("get").copied().unwrap_or(0)) as f64
                    / steady_reconciles as f64,
                o.steady.total as f64 / o.steady_len.as_secs_f64().max(0.001),
            );
        }
        let owned: Vec<String> = o
            .owned_objects
            .iter()
            .map(|(kind, (n, bytes))| format!("{kind} {n} ({} kB)", bytes / 1000))
            .collect();
        println!(
            "[{}] owned objects (JSON as stored, managedFields included): {}",
            o.scenario,
            owned.join(", ")
        );
        println!(
            "[{}] operator warnings logged: {}",
            o.scenario, o.warnings.0
        );
        println!(
            "[{}] operator RSS MiB: {} at Ready, then after each requeue interval: {}",
            o.scenario,
            mib(o.proc_ready.rss_kib),
            o.rss_each_interval
                .iter()
                .map(|k| mib(*k))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for w in &o.warnings.1 {
            println!("    {w}");
        }
        if !o.steady_status_changes.is_empty() {
            println!(
                "[{}] {} pipelines changed status in the steady window, e.g.:",
                o.scenario,
                o.steady_status_changes.len()
            );
            for c in o.steady_status_changes.iter().take(2) {
                println!("    {c}");
            }
        }
    }

    if let [base, scale] = outcomes {
        if let (Some(tb), Some(ts)) = (base.all_ready, scale.all_ready) {
            let per_b = tb.as_secs_f64() / base.pipelines.max(1) as f64;
            let per_s = ts.as_secs_f64() / scale.pipelines.max(1) as f64;
            let req_b = base.to_ready.total as f64 / base.pipelines.max(1) as f64;
            let req_s = scale.to_ready.total as f64 / scale.pipelines.max(1) as f64;
            let ratio = |a: f64, b: f64| a / b.max(1e-9);
            println!();
            println!("ratio {} / {}:", scale.scenario, base.scenario);
            println!(
                "  time per pipeline {:.3}x ({:.3} s vs {:.3} s)",
                ratio(per_s, per_b),
                per_s,
                per_b
            );
            println!(
                "  peak RSS {:.2}x, steady RSS {:.2}x",
                ratio(scale.proc_end.hwm_kib as f64, base.proc_end.hwm_kib as f64),
                ratio(scale.proc_end.rss_kib as f64, base.proc_end.rss_kib as f64),
            );
            println!(
                "  requests per pipeline until Ready {:.2}x ({:.1} vs {:.1})",
                ratio(req_s, req_b),
                req_s,
                req_b
            );
            println!(
                "  operator CPU per pipeline until Ready: {:.1} ms vs {:.1} ms (in clock ticks)",
                1000.0 * scale.proc_ready.cpu.as_secs_f64() / scale.pipelines.max(1) as f64,
                1000.0 * base.proc_ready.cpu.as_secs_f64() / base.pipelines.max(1) as f64,
            );
        }
    }
    println!(
        "operator: --requeue-interval {:?}, leader election {}{}; stand-in: rollout step {:?}, \
         passes at most every {:?} (controllers) and {:?} (GC)",
        args.requeue_interval,
        if args.no_leader_election { "off" } else { "on" },
        if args.operator_args.is_empty() {
            String::new()
        } else {
            format!(", {}", args.operator_args.join(" "))
        },
        args.step_delay,
        args.sim_controller_interval,
        args.sim_gc_interval,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = args.operator_bin.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/sluice-operator")
    });
    anyhow::ensure!(
        bin.is_file(),
        "{} not found: cargo build --release -p sluice-operator",
        bin.display()
    );
    let mut scenarios = Vec::new();
    if !args.no_baseline {
        scenarios.push(Scenario {
            name: "baseline",
            pipelines: 1,
            secrets: 0,
            config_maps: 0,
            namespaces: 1,
        });
    }
    scenarios.push(Scenario {
        name: "scale",
        pipelines: args.pipelines,
        secrets: args.secrets,
        config_maps: args.config_maps,
        namespaces: args.namespaces,
    });
    let mut outcomes = Vec::new();
    for sc in &scenarios {
        outcomes.push(run_scenario(&args, &bin, sc).await?);
    }
    report(&outcomes, &args);
    if outcomes.iter().any(|o| o.all_ready.is_none()) {
        bail!("some pipelines never became Ready");
    }
    Ok(())
}
