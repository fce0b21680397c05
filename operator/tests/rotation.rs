//! Key rotation under load (DESIGN §6): no request fails verification while
//! the operator rotates a pipeline's key ring.
//!
//! ```text
//! cluster-sim ◀── sluice-operator (killed with SIGKILL and restarted mid-rotation)
//!     │ P-ipc-keys (the ring's phases) and each group's P-ipc-keys-<group>
//!     │ (what its pods mount, derived from the ring), polled every 200 ms
//!     ▼
//! kubelet sync ──▶ ..data swap of each pod's key directory; the ingress pod's
//!     │            arrives LAG later than the workers'
//!     ▼
//! sluice-web-ingress ──Redis──▶ sluice-exec-worker (cpu) ──▶ sluice-exec-worker (io)
//!     ▲                                                               │
//!     └────────────────────────────── reply ◀─────────────────────────┘
//! clients: a steady stream of requests, each checked for its exact answer
//! ```
//!
//! The operator runs against the in-memory API stand-in; the pods it asks
//! for run here as real processes, from the Deployments it wrote, with the
//! files and environment a kubelet would give them (`kubelet/mod.rs`), and
//! a local `redis-server` started from the rendered `redis.conf` (its ACL
//! users) stands in for managed Redis. A rotation is made
//! due by dating the ring's last rotation back, as an old ring would be.
//!
//! The lagging pod is the ingress: every request crosses it twice — it
//! signs the request and verifies the reply — so a key it lacks or a kid it
//! signs with that others dropped fails every request in flight, not only
//! those routed to one worker group.
//!
//! The negative control runs the same rig with a propagation delay shorter
//! than the lag and shows those failures happen, so the main test's "no
//! failures" is a finding, not a blind spot.

mod kubelet;
mod support;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{SecondsFormat, Utc};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Secret, Service};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sluice_crds::GroupRole;
use sluice_operator::labels::{ROTATION_PHASE as PHASE, ROTATION_UPDATED as UPDATED};
use sluice_operator::resources::main_container;
use sluice_operator::rotation::{ROTATION_NEW_KID, ROTATION_OLD_KID};
use sluice_platform::redis::testing::RedisServer;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use kubelet::process::Proc;
use kubelet::{labels_of, selects, Cluster};
use support::{eventually, example, Harness, Operator};

const NS: &str = "rotation";
const PIPELINE: &str = "orders-redis";
const KEYS: &str = "orders-redis-ipc-keys";
/// How long a process may take to become ready.
const READY_PATIENCE: Duration = Duration::from_secs(30);
/// How often the kubelet stand-in reads the key ring Secret.
const SYNC_EVERY: Duration = Duration::from_millis(200);
/// How much later than the workers the ingress sees a key ring change in
/// the main test.
const LAG: Duration = Duration::from_secs(90);
/// `--key-propagation` of the main test: above the lag plus the kubelet
/// stand-in's poll and the runtime's 2 s reload period.
const PROPAGATION: Duration = Duration::from_secs(100);
/// Propagation + the interface timeout (10s) + results.ttl (1s) + clockSkew (1s).
const OVERLAP: Duration = Duration::from_secs(112);
/// Concurrent clients and the pause each makes between requests.
const CLIENTS: usize = 4;
const CLIENT_PAUSE: Duration = Duration::from_millis(40);

// === the kubelet's view of the key ring ===

/// One pod whose key directory follows the Secret `lag` after the API
/// serves a change.
struct Pod {
    name: String,
    template: PodTemplateSpec,
    root: PathBuf,
    lag: Duration,
    pending: VecDeque<(Instant, Secret)>,
}

/// A state of the key ring as the API served it.
#[derive(Debug, Clone, PartialEq)]
struct RingState {
    /// Seconds since the rig started when first served.
    at: f64,
    phase: String,
    updated: String,
    new_kid: String,
    old_kid: String,
    current: String,
    kids: Vec<String>,
}

impl RingState {
    fn of(s: &Secret, at: f64) -> Self {
        let a = s.metadata.annotations.clone().unwrap_or_default();
        let get = |k: &str| a.get(k).cloned().unwrap_or_default();
        let data = s.data.clone().unwrap_or_default();
        Self {
            at,
            phase: get(PHASE),
            updated: get(UPDATED),
            new_kid: get(ROTATION_NEW_KID),
            old_kid: get(ROTATION_OLD_KID),
            current: data
                .get("current")
                .map(|c| String::from_utf8_lossy(&c.0).trim().to_string())
                .unwrap_or_default(),
            kids: data.keys().filter(|k| *k != "current").cloned().collect(),
        }
    }

    fn same_as(&self, o: &RingState) -> bool {
        (
            &self.phase,
            &self.updated,
            &self.new_kid,
            &self.current,
            &self.kids,
        ) == (&o.phase, &o.updated, &o.new_kid, &o.current, &o.kids)
    }
}

/// What the kubelet stand-in saw and did.
#[derive(Debug, Default)]
struct Seen {
    states: Vec<RingState>,
    /// (pod, seconds since start, the kid its `current` file now names).
    swaps: Vec<(String, f64, String)>,
    errors: Vec<String>,
}

/// Polls the key ring Secret and rewrites each pod's key directory `lag`
/// after each change, until cancelled.
async fn kubelet_sync(
    api: Api<Secret>,
    mut pods: Vec<Pod>,
    seen: Arc<Mutex<Seen>>,
    start: Instant,
    cancel: CancellationToken,
) {
    // The ring's states are recorded; each pod follows the Secret its key
    // volume names (its group's keys, derived from the ring).
    let mut watched: Vec<String> = vec![KEYS.to_string()];
    for p in &pods {
        if let Some(name) = keys_secret_of(&p.template) {
            if !watched.contains(&name) {
                watched.push(name);
            }
        }
    }
    let mut last_data: BTreeMap<String, Option<BTreeMap<String, ByteString>>> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SYNC_EVERY) => {}
        }
        let now = Instant::now();
        let at = (now - start).as_secs_f64();
        for name in &watched {
            match api.get(name).await {
                Ok(s) => {
                    if name == KEYS {
                        let state = RingState::of(&s, at);
                        let mut seen = seen.lock();
                        if seen.states.last().is_none_or(|l| !l.same_as(&state)) {
                            seen.states.push(state);
                        }
                    }
                    let last = last_data.entry(name.clone()).or_default();
                    if last.as_ref() != s.data.as_ref() {
                        *last = s.data.clone();
                        for p in pods
                            .iter_mut()
                            .filter(|p| keys_secret_of(&p.template).as_deref() == Some(name))
                        {
                            p.pending.push_back((now + p.lag, s.clone()));
                        }
                    }
                }
                Err(e) => seen.lock().errors.push(format!("get {name}: {e}")),
            }
        }
        for p in &mut pods {
            while p.pending.front().is_some_and(|(due, _)| *due <= now) {
                let (_, s) = p.pending.pop_front().expect("checked above");
                match kubelet::sync_secret_volumes(&p.template, &s, &p.root) {
                    Ok(changed) if !changed.is_empty() => {
                        let current = RingState::of(&s, at).current;
                        seen.lock().swaps.push((p.name.clone(), at, current));
                    }
                    Ok(_) => {}
                    Err(e) => seen.lock().errors.push(format!("{}: {e}", p.name)),
                }
            }
        }
    }
}

/// The Secret a pod template mounts as its key directory.
fn keys_secret_of(t: &PodTemplateSpec) -> Option<String> {
    t.spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == "keys")?
        .secret
        .as_ref()?
        .secret_name
        .clone()
}

// === load ===

#[derive(Debug, Default)]
struct Stats {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    /// The first failures, for the message.
    failures: Mutex<Vec<String>>,
}

/// Clients sending orders and checking each answer, until cancelled.
struct Load {
    stats: Arc<Stats>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The order with id `id` and the exact answer the pipeline gives it.
fn order(id: &str, n: u64) -> (Value, Value) {
    let items = n % 7 + 1;
    if n.is_multiple_of(2) {
        (
            json!({"id": id, "type": "priority", "items": items}),
            json!({"order": id, "price": 0, "status": "accepted", "summary": format!("{items} item(s) in the rush lane")}),
        )
    } else {
        (
            json!({"id": id, "type": "bulk", "items": items}),
            json!({"order": id, "price": 5, "status": "accepted", "summary": format!("{items} item(s) in the standard lane")}),
        )
    }
}

impl Load {
    fn start(ingress: SocketAddr) -> Self {
        let stats = Arc::new(Stats::default());
        let cancel = CancellationToken::new();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        let tasks = (0..CLIENTS)
            .map(|c| {
                let (stats, cancel, client) = (stats.clone(), cancel.clone(), client.clone());
                tokio::spawn(async move {
                    let url = format!("http://{ingress}/v1/orders");
                    for n in 0u64.. {
                        if cancel.is_cancelled() {
                            return;
                        }
                        let id = format!("c{c}-{n}");
                        let (body, want) = order(&id, n);
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                        let got = match client.post(&url).json(&body).send().await {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let text = r.text().await.unwrap_or_default();
                                (status, text)
                            }
                            Err(e) => (0, e.to_string()),
                        };
                        let answer: Option<Value> = serde_json::from_str(&got.1).ok();
                        if got.0 == 200 && answer.as_ref() == Some(&want) {
                            stats.ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                            let mut f = stats.failures.lock();
                            if f.len() < 20 {
                                f.push(format!("{id}: {} {}", got.0, got.1));
                            }
                        }
                        tokio::time::sleep(CLIENT_PAUSE).await;
                    }
                })
            })
            .collect();
        Self {
            stats,
            cancel,
            tasks,
        }
    }

    /// Stops sending and waits for the requests in flight.
    async fn stop(self) -> Arc<Stats> {
        self.cancel.cancel();
        for t in self.tasks {
            t.await.expect("a client task panicked");
        }
        self.stats
    }
}

// === the rig ===

/// How the rig runs.
struct Setup {
    /// `--key-propagation` of the operator.
    propagation: Duration,
    /// How much later than the workers the ingress sees a key ring change.
    lag: Duration,
    /// The interface timeout.
    timeout: &'static str,
    clock_skew: &'static str,
}

/// The pipeline running here, the operator that manages it and the kubelet
/// stand-in between them. Fields drop in order: processes first.
struct Rig {
    procs: Vec<Proc>,
    /// (pod, local port of its `/metrics`).
    metrics: Vec<(String, u16)>,
    ingress: SocketAddr,
    sync_cancel: CancellationToken,
    seen: Arc<Mutex<Seen>>,
    start: Instant,
    /// How long starting everything took.
    setup: Duration,
    operator: Option<Operator>,
    operator_args: Vec<String>,
    h: Harness,
    _redis: RedisServer,
    _files: tempfile::TempDir,
}

fn objects<T: serde::de::DeserializeOwned>(h: &Harness, api_version: &str, kind: &str) -> Vec<T> {
    h.sim
        .list_objects(api_version, kind, Some(NS))
        .unwrap_or_else(|e| panic!("listing {kind}: {e}"))
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap_or_else(|e| panic!("a {kind}: {e}")))
        .collect()
}

impl Rig {
    /// Starts the cluster stand-in and the operator, applies the orders
    /// pipeline, runs its pods here from what the operator wrote, and waits
    /// until a request is answered.
    async fn start(setup: &Setup) -> anyhow::Result<Self> {
        let began = Instant::now();
        let h = Harness::start().await?;
        let operator_args = vec![
            "--key-propagation".to_string(),
            format!("{}ms", setup.propagation.as_millis()),
        ];
        let args: Vec<&str> = operator_args.iter().map(String::as_str).collect();
        let operator = Operator::start(&h, "op", &args).await?;
        let mut m = example(PIPELINE);
        m["spec"]["interfaces"][0]["timeout"] = json!(setup.timeout);
        m["spec"]["security"] = json!({"rotateEvery": "10m", "clockSkew": setup.clock_skew});
        m["spec"]["results"] = json!({"ttl": "1s"});
        h.apply(NS, m).await?;
        h.wait_ready(NS, PIPELINE, Duration::from_secs(60)).await?;

        let mut cluster = Cluster::new(NS);
        for cm in objects::<ConfigMap>(&h, "v1", "ConfigMap") {
            cluster.add_config_map(cm);
        }
        let secrets: Vec<Secret> = objects(&h, "v1", "Secret");
        let redis_data = |key: &str| {
            secrets
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some("orders-redis-redis"))
                .and_then(|s| s.data.as_ref()?.get(key))
                .map(|p| String::from_utf8(p.0.clone()))
                .with_context(|| format!("P-redis has {key}"))
        };
        // Managed Redis as the operator configures it: its ACL users, and
        // TLS only with the certificate beside its config file.
        let tls_files = ["tls.crt", "tls.key", "ca.crt"]
            .into_iter()
            .map(|k| Ok((k, redis_data(k)??)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let files: Vec<(&str, &[u8])> = tls_files.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let redis = RedisServer::start_with_config_files(
            &redis_data("redis.conf")??,
            "probe",
            &redis_data("probe.password")??,
            &files,
        );
        for s in secrets.clone() {
            cluster.add_secret(s);
        }
        let redis_addr: SocketAddr = redis.tls_address().parse()?;
        let services: Vec<Service> = objects(&h, "v1", "Service");
        let sets: Vec<StatefulSet> = objects(&h, "apps/v1", "StatefulSet");
        let redis_template = &sets
            .first()
            .context("a managed Redis StatefulSet")?
            .spec
            .as_ref()
            .context("StatefulSet spec")?
            .template;
        for svc in services.iter().filter(|s| selects(s, redis_template)) {
            cluster.serve(svc, "redis", redis_addr);
        }

        let files = tempfile::Builder::new()
            .prefix("sluice-rotation-")
            .tempdir()?;
        let mut deployments: Vec<Deployment> = objects(&h, "apps/v1", "Deployment");
        deployments.sort_by_key(|d| d.metadata.name.clone());
        let mut procs = Vec::new();
        let mut pods = Vec::new();
        let mut metrics = Vec::new();
        let mut ingress = None;
        for dep in &deployments {
            let name = dep.metadata.name.clone().context("Deployment name")?;
            let template = dep
                .spec
                .as_ref()
                .context("Deployment spec")?
                .template
                .clone();
            let role = match labels_of(&template)
                .get("app.kubernetes.io/component")
                .map(String::as_str)
            {
                Some("ingress") => GroupRole::Ingress,
                Some("worker") => GroupRole::Worker,
                other => anyhow::bail!("{name}: component label {other:?}"),
            };
            let pod = format!("{name}-6f9c8d7b5-x7k2p");
            let root = files.path().join(&name);
            let m = kubelet::materialise(&cluster, &template, main_container(role), &pod, &root)
                .map_err(|e| anyhow::anyhow!("{name}: the kubelet would not start it: {e}"))?;
            let probe = m.readiness.as_ref().context("a readiness probe")?;
            let (admin, _) = m.http_probe(probe).map_err(anyhow::Error::msg)?;
            if role == GroupRole::Ingress {
                ingress = Some(SocketAddr::from(([127, 0, 0, 1], admin)));
            }
            metrics.push((pod.clone(), admin));
            procs.push(Proc::spawn(&m));
            pods.push(Pod {
                name: pod,
                template,
                root,
                lag: if role == GroupRole::Ingress {
                    setup.lag
                } else {
                    Duration::ZERO
                },
                pending: VecDeque::new(),
            });
        }
        anyhow::ensure!(pods.len() == 3, "ingress, cpu and io: {}", pods.len());

        let start = Instant::now();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sync_cancel = CancellationToken::new();
        tokio::spawn(kubelet_sync(
            Api::namespaced(h.admin.clone(), NS),
            pods,
            seen.clone(),
            start,
            sync_cancel.clone(),
        ));
        let mut rig = Self {
            procs,
            metrics,
            ingress: ingress.context("an ingress Deployment")?,
            sync_cancel,
            seen,
            start,
            setup: Duration::ZERO,
            operator: Some(operator),
            operator_args,
            h,
            _redis: redis,
            _files: files,
        };
        rig.wait_serving().await?;
        rig.setup = began.elapsed();
        Ok(rig)
    }

    /// Every process ready, and a first order answered (readiness does not
    /// wait for Redis, so the first requests may get 503 while it connects).
    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        for i in 0..self.procs.len() {
            let port = self.metrics[i].1;
            let url = format!("http://127.0.0.1:{port}/readyz");
            let ready = eventually(
                &format!("{} ready", self.procs[i].name),
                READY_PATIENCE,
                || async {
                    let r = client.get(&url).send().await.ok()?;
                    (r.status() == 200).then_some(())
                },
            )
            .await;
            let p = &mut self.procs[i];
            let exited = p.exited();
            ready.with_context(|| format!("exit: {exited:?}; output:\n{}", p.output()))?;
        }
        let url = format!("http://{}/v1/orders", self.ingress);
        let (body, want) = order("first", 0);
        eventually("a first order answered", READY_PATIENCE, || async {
            let r = client.post(&url).json(&body).send().await.ok()?;
            let ok = r.status() == 200;
            let got: Value = r.json().await.ok()?;
            (ok && got == want).then_some(())
        })
        .await
        .with_context(|| {
            let logs: Vec<String> = self
                .procs
                .iter()
                .map(|p| format!("== {} ==\n{}", p.name, p.output()))
                .collect();
            logs.join("\n")
        })
    }

    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Dates the ring's last rotation back beyond `rotateEvery` (10m), as
    /// on a ring that has been in use that long, so the next reconcile
    /// starts a rotation. Returns the index of the last state of the ring
    /// seen before, and the time written.
    async fn make_rotation_due(&self) -> anyhow::Result<(usize, String)> {
        let seen = self.seen.clone();
        let before = eventually("the key ring seen", Duration::from_secs(10), || {
            let seen = seen.clone();
            async move { seen.lock().states.len().checked_sub(1) }
        })
        .await?;
        let long_ago = (Utc::now() - chrono::TimeDelta::minutes(11))
            .to_rfc3339_opts(SecondsFormat::Secs, true);
        let api: Api<Secret> = Api::namespaced(self.h.admin.clone(), NS);
        api.patch(
            KEYS,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {UPDATED: &long_ago}}})),
        )
        .await
        .context("dating the key ring back")?;
        Ok((before, long_ago))
    }

    /// Waits until the ring has entered `phase` after the state at index
    /// `after`, and returns that state's index.
    async fn wait_phase(
        &self,
        phase: &str,
        after: usize,
        patience: Duration,
    ) -> anyhow::Result<usize> {
        let seen = self.seen.clone();
        eventually(&format!("key ring phase {phase}"), patience, || {
            let seen = seen.clone();
            async move {
                let s = seen.lock();
                s.states
                    .iter()
                    .enumerate()
                    .skip(after + 1)
                    .find(|(_, st)| st.phase == phase)
                    .map(|(i, _)| i)
            }
        })
        .await
        .with_context(|| format!("states: {:#?}", self.seen.lock().states))
    }

    /// SIGKILL of the operator, a pause, and a new operator process.
    async fn restart_operator(&mut self, pause: Duration) -> anyhow::Result<()> {
        if let Some(mut op) = self.operator.take() {
            op.kill().await;
        }
        tokio::time::sleep(pause).await;
        let args: Vec<&str> = self.operator_args.iter().map(String::as_str).collect();
        self.operator = Some(Operator::start(&self.h, "op", &args).await?);
        Ok(())
    }

    /// Each pod's `sluice_envelopes_rejected_total`, summed over reasons,
    /// with the lines that make it up.
    async fn rejections(&self) -> anyhow::Result<Vec<(String, u64, Vec<String>)>> {
        let mut out = Vec::new();
        for (pod, port) in &self.metrics {
            let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                .await?
                .text()
                .await?;
            anyhow::ensure!(
                text.contains("# TYPE sluice_envelopes_rejected counter"),
                "{pod} does not export sluice_envelopes_rejected:\n{text}"
            );
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("sluice_envelopes_rejected_total"))
                .map(str::to_string)
                .collect();
            let sum = lines
                .iter()
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
            out.push((pod.clone(), sum as u64, lines));
        }
        Ok(out)
    }

    /// Every process still running.
    fn assert_alive(&mut self) {
        for p in &mut self.procs {
            assert!(p.exited().is_none(), "{} exited", p.name);
        }
    }

    fn log_of(&self, pod: &str) -> String {
        self.procs
            .iter()
            .find(|p| p.pod == pod)
            .map(Proc::output)
            .unwrap_or_default()
    }

    /// The phase of the ring as last seen.
    fn phase_now(&self) -> String {
        let seen = self.seen.lock();
        seen.states
            .last()
            .map(|s| s.phase.clone())
            .unwrap_or_default()
    }

    fn keys_secret(&self) -> Option<Value> {
        self.h.object("v1", "Secret", NS, KEYS)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.sync_cancel.cancel();
        if std::thread::panicking() {
            let seen = self.seen.lock();
            eprintln!("key ring states: {:#?}", seen.states);
            eprintln!("directory swaps: {:#?}", seen.swaps);
        }
    }
}

fn secs_between(a: &str, b: &str) -> f64 {
    let t =
        |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("`{s}`: {e}"));
    (t(b) - t(a)).as_seconds_f64()
}

// === tests ===

/// Requests flow during a whole rotation while the ingress sees key ring
/// changes 90 s after the workers, and the operator is killed and
/// restarted in the `added` and in the `retiring` phase: every request gets
/// its answer, no envelope is rejected, the phases follow each other at
/// their due times, and the ring ends with the new key alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_verification_while_keys_rotate_under_load() -> anyhow::Result<()> {
    let mut rig = Rig::start(&Setup {
        propagation: PROPAGATION,
        lag: LAG,
        timeout: "10s",
        clock_skew: "1s",
    })
    .await?;
    // A failure panics while the rig is alive, which prints its processes'
    // output and the ring states.
    if let Err(e) = rotation_under_load(&mut rig).await {
        panic!("{e:?}");
    }
    Ok(())
}

async fn rotation_under_load(rig: &mut Rig) -> anyhow::Result<()> {
    let load = Load::start(rig.ingress);
    let stats = load.stats.clone();
    eventually("orders answered under load", READY_PATIENCE, || async {
        (stats.ok.load(Ordering::Relaxed) >= 20).then_some(())
    })
    .await?;

    let (before, dated_back) = rig.make_rotation_due().await?;
    let added = rig
        .wait_phase("added", before, Duration::from_secs(20))
        .await?;
    // Mid-phase (not at a step): the new operator must resume the wait.
    tokio::time::sleep(Duration::from_secs(10)).await;
    rig.restart_operator(Duration::from_secs(3)).await?;
    assert_eq!(rig.phase_now(), "added", "restarted in another phase");
    let retiring = rig
        .wait_phase("retiring", added, PROPAGATION + Duration::from_secs(30))
        .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    rig.restart_operator(Duration::from_secs(3)).await?;
    assert_eq!(rig.phase_now(), "retiring", "restarted in another phase");
    let stable = rig
        .wait_phase("stable", retiring, OVERLAP + Duration::from_secs(30))
        .await?;
    // Keep the requests flowing past the drop, through the workers' reload.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let stats = load.stop().await;
    rig.assert_alive();

    // Every request answered, exactly.
    let (sent, ok, failed) = (
        stats.sent.load(Ordering::Relaxed),
        stats.ok.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {sent} requests failed: {:#?}",
        stats.failures.lock()
    );
    assert!(ok > 1000, "too few requests to mean anything: {ok}");

    // No envelope rejected by any pod.
    let rejections = rig.rejections().await?;
    for (pod, n, lines) in &rejections {
        assert_eq!(*n, 0, "{pod} rejected envelopes: {lines:?}");
    }

    // The phases, in order, each at its due time: the restarts resumed the
    // waits rather than restarting them.
    let (states, swaps, errors) = {
        let seen = rig.seen.lock();
        (seen.states.clone(), seen.swaps.clone(), seen.errors.clone())
    };
    assert!(errors.is_empty(), "kubelet stand-in: {errors:?}");
    // The dated-back state is seen only if the poll came before the
    // operator's next reconcile.
    let visited: Vec<&RingState> = states[before..=stable]
        .iter()
        .filter(|s| s.updated != dated_back)
        .collect();
    let phases: Vec<&str> = visited.iter().map(|s| s.phase.as_str()).collect();
    // One state per phase: a restart changed nothing on the Secret.
    assert_eq!(
        phases,
        ["stable", "added", "retiring", "stable"],
        "states: {visited:#?}"
    );
    let (s_added, s_retiring, s_stable) = (&states[added], &states[retiring], &states[stable]);
    let old = s_added.current.clone();
    let new = s_added.new_kid.clone();
    assert_ne!(old, new);
    assert_eq!(s_added.kids.len(), 2, "{s_added:?}");
    assert!(s_added.kids.contains(&new) && s_added.kids.contains(&old));
    assert_eq!(s_added.old_kid, old);
    assert_eq!(
        (s_retiring.current.as_str(), s_retiring.new_kid.as_str()),
        (new.as_str(), new.as_str())
    );
    assert_eq!(s_retiring.kids, s_added.kids, "the old key was kept");
    assert_eq!(s_stable.current, new);
    assert_eq!(s_stable.kids, std::slice::from_ref(&new));
    let to_current = secs_between(&s_added.updated, &s_retiring.updated);
    let to_drop = secs_between(&s_retiring.updated, &s_stable.updated);
    let (propagation, overlap) = (PROPAGATION.as_secs_f64(), OVERLAP.as_secs_f64());
    assert!(
        (propagation..propagation + 5.0).contains(&to_current),
        "the new key became current {to_current}s after it was added"
    );
    assert!(
        (overlap..overlap + 5.0).contains(&to_drop),
        "the old key was dropped {to_drop}s after the switch"
    );

    // The ingress really lagged, and every pod ended up signing with the
    // new key.
    let swap_to_new = |pod_prefix: &str| {
        swaps
            .iter()
            .find(|(p, _, c)| p.starts_with(pod_prefix) && *c == new)
            .map(|(_, at, _)| *at)
    };
    let web =
        swap_to_new("orders-redis-web").context("the ingress never saw the new key current")?;
    let cpu =
        swap_to_new("orders-redis-cpu").context("the cpu worker never saw the new key current")?;
    // Within a few kubelet polls of the lag: the two Secrets are written
    // one after the other and polled in the other order.
    assert!(
        web - cpu >= LAG.as_secs_f64() - 5.0,
        "ingress {web}s, cpu {cpu}s"
    );
    for (pod, _) in &rig.metrics {
        let log = rig.log_of(pod);
        assert!(
            log.lines()
                .any(|l| l.contains("key ring reloaded") && l.contains(&new)),
            "{pod} never loaded the ring with {new}:\n{log}"
        );
    }

    // The Secret at the end, the events, and one write per phase.
    let ring = rig.keys_secret().context("the key ring is gone")?;
    let kids: Vec<String> = ring["data"]
        .as_object()
        .context("ring data")?
        .keys()
        .cloned()
        .collect();
    assert_eq!(kids, ["current".to_string(), new.clone()]);
    assert_eq!(ring["metadata"]["annotations"][PHASE], "stable");
    let events = rig.h.events(NS, PIPELINE, "KeyRotation");
    let notes: Vec<&str> = events.iter().filter_map(|e| e["note"].as_str()).collect();
    for phase in ["added", "retiring", "stable"] {
        let prefix = format!("{KEYS} {phase}:");
        assert!(
            notes.iter().any(|n| n.starts_with(&prefix)),
            "no KeyRotation event for {phase}: {notes:#?}"
        );
    }
    let writes: Vec<_> = rig
        .h
        .sim
        .requests()
        .into_iter()
        .filter(|r| {
            r.caller == support::operator_user("op")
                && r.name.as_deref() == Some(KEYS)
                && support::WRITE_VERBS.contains(&r.verb.as_str())
                && r.code < 300
        })
        .map(|r| r.verb)
        .collect();
    // Adding, switching, dropping; nothing else (no restamp after a restart).
    assert_eq!(writes, ["update", "update", "update"]);

    eprintln!(
        "rotation under load: {sent} requests, {ok} answered, {failed} failed; \
         rejections {:?}; phases (s since start): added {:.1}, retiring {:.1}, stable {:.1}; \
         annotations: added {} → retiring {} (+{to_current:.3}s) → stable {} (+{to_drop:.3}s); \
         kids {old} → {new}; swaps {:?}; setup {:.0}s, then {:.0}s",
        rejections
            .iter()
            .map(|(p, n, _)| (p.as_str(), *n))
            .collect::<Vec<_>>(),
        s_added.at,
        s_retiring.at,
        s_stable.at,
        s_added.updated,
        s_retiring.updated,
        s_stable.updated,
        swaps,
        rig.setup.as_secs_f64(),
        rig.elapsed(),
    );
    Ok(())
}

/// The same rig with a propagation delay shorter than the ingress's lag:
/// the new key signs before the ingress has it, and requests fail
/// verification. This is what the test above would catch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_propagation_delay_shorter_than_the_kubelet_lag_fails_requests() -> anyhow::Result<()> {
    let rig = Rig::start(&Setup {
        propagation: Duration::from_secs(2),
        lag: Duration::from_secs(6),
        timeout: "3s",
        clock_skew: "1s",
    })
    .await?;
    if let Err(e) = propagation_too_short(&rig).await {
        panic!("{e:?}");
    }
    Ok(())
}

async fn propagation_too_short(rig: &Rig) -> anyhow::Result<()> {
    let load = Load::start(rig.ingress);
    let stats = load.stats.clone();
    eventually("orders answered under load", READY_PATIENCE, || async {
        (stats.ok.load(Ordering::Relaxed) >= 20).then_some(())
    })
    .await?;
    let (before, _) = rig.make_rotation_due().await?;
    rig.wait_phase("retiring", before, Duration::from_secs(30))
        .await?;
    let rejected = eventually(
        "envelopes rejected and requests failed",
        Duration::from_secs(60),
        || async {
            let r = rig.rejections().await.ok()?;
            let total: u64 = r.iter().map(|(_, n, _)| n).sum();
            (total > 0 && stats.failed.load(Ordering::Relaxed) > 0).then_some(r)
        },
    )
    .await?;
    let stats = load.stop().await;
    let unknown_kid = rejected
        .iter()
        .flat_map(|(_, _, lines)| lines)
        .any(|l| l.contains("reason=\"unknown_kid\""));
    assert!(unknown_kid, "{rejected:?}");
    eprintln!(
        "negative control: setup {:.0}s, then {:.0}s; {} requests, {} failed; rejections {:?}; \
         first failures {:?}",
        rig.setup.as_secs_f64(),
        rig.elapsed(),
        stats.sent.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        rejected,
        stats.failures.lock().iter().take(3).collect::<Vec<_>>(),
    );
    Ok(())
}
