//! Test harness: a fresh cluster-sim with the StreamPipeline CRD, the real
//! `sluice-operator` binary started as a process against it through a
//! kubeconfig, and bounded waiting.
//!
//! The operator authenticates with a ServiceAccount token of its own, so
//! the sim's request log tells its requests apart from the test's (the test
//! uses the admin kubeconfig).

#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use cluster_sim::{ClusterSim, ClusterSimHandle, ClusterSimOptions, RequestMatch};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sluice_crds::StreamPipeline;
use sluice_operator::{desired, OperatorSettings};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Namespace the operator "runs in" (its leader Lease lives there).
pub const OPERATOR_NS: &str = "sluice-system";
pub const API_VERSION: &str = "sluice.dev/v1alpha1";
pub const KIND: &str = "StreamPipeline";
/// Field manager of the test's own spec edits (as `kubectl apply --server-side`).
pub const TESTER: &str = "tester";

/// Verbs that change state.
pub const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// A kube client for a kubeconfig file (read explicitly: no test touches `KUBECONFIG`).
pub async fn client_for(path: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(path).context("reading kubeconfig")?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("building kube config")?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    Client::try_from(config).context("building kube client")
}

/// Poll `check` until it returns `Some`, for at most `patience`; the error
/// says what was awaited.
pub async fn eventually<T, F, Fut>(
    what: &str,
    patience: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {patience:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `examples/<name>.yaml` as JSON.
pub fn example(name: &str) -> Value {
    let path = examples_dir().join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    sluice_crds::yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every example's name.
pub fn example_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "yaml")
                .then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    names
}

/// A simulator with the CRD installed and an admin client.
pub struct Harness {
    pub sim: ClusterSimHandle,
    pub admin: Client,
}

/// Simulator options for these tests: quick rollouts, a short progress
/// deadline unit (600 "seconds" = 3 s).
pub fn sim_options() -> ClusterSimOptions {
    ClusterSimOptions {
        step_delay: Duration::from_millis(10),
        progress_deadline_unit: Duration::from_millis(5),
        ..Default::default()
    }
}

impl Harness {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(sim_options()).await
    }

    pub async fn start_with(opts: ClusterSimOptions) -> anyhow::Result<Self> {
        let sim = ClusterSim::start_with(opts)
            .await
            .context("starting cluster-sim")?;
        let admin = client_for(sim.kubeconfig_path()).await?;
        let h = Self { sim, admin };
        h.namespace(OPERATOR_NS)?;
        let crds: Api<CustomResourceDefinition> = Api::all(h.admin.clone());
        crds.create(&PostParams::default(), &sluice_crds::crd::crd())
            .await
            .context("installing the StreamPipeline CRD")?;
        crds.create(
            &PostParams::default(),
            &sluice_crds::crd::dead_letter_action_crd(),
        )
        .await
        .context("installing the DeadLetterAction CRD")?;
        Ok(h)
    }

    pub fn namespace(&self, ns: &str) -> anyhow::Result<()> {
        if self.sim.get_object("v1", "Namespace", None, ns)?.is_none() {
            self.sim.put_object(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )?;
        }
        Ok(())
    }

    /// Creates the StreamPipeline, or replaces its spec (as `kubectl
    /// replace`: the whole spec, retried on a conflict with the operator's
    /// status writes).
    pub async fn apply(&self, ns: &str, mut manifest: Value) -> anyhow::Result<Value> {
        self.namespace(ns)?;
        manifest["metadata"]["namespace"] = json!(ns);
        let name = manifest["metadata"]["name"]
            .as_str()
            .context("manifest without name")?
            .to_string();
        let api: Api<StreamPipeline> = Api::namespaced(self.admin.clone(), ns);
        let wanted: StreamPipeline =
            serde_json::from_value(manifest).context("not a StreamPipeline")?;
        let pp = PostParams {
            field_manager: Some(TESTER.into()),
            ..Default::default()
        };
        for _ in 0..20 {
            let result = match api.get_opt(&name).await? {
                None => api.create(&pp, &wanted).await,
                Some(mut live) => {
                    live.spec = wanted.spec.clone();
                    api.replace(&name, &pp, &live).await
                }
            };
            match result {
                Ok(sp) => return Ok(serde_json::to_value(sp)?),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("writing StreamPipeline {ns}/{name}"))
                }
            }
        }
        bail!("StreamPipeline {ns}/{name}: conflicts on every attempt")
    }

    pub fn pipeline(&self, ns: &str, name: &str) -> Option<Value> {
        self.sim
            .get_object(API_VERSION, KIND, Some(ns), name)
            .ok()
            .flatten()
    }

    pub fn object(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.sim
            .get_object(api_version, kind, Some(ns), name)
            .ok()
            .flatten()
    }

    /// `(Kind/name, resourceVersion)` of every object `pipeline` owns.
    pub fn object_versions(&self, ns: &str, pipeline: &str) -> Vec<(String, Value)> {
        self.owned_objects(ns, pipeline)
            .into_iter()
            .map(|o| {
                let (kind, name) = o.split_once('/').unwrap();
                let api_version = match kind {
                    "Deployment" | "StatefulSet" => "apps/v1",
                    "PodDisruptionBudget" => "policy/v1",
                    "NetworkPolicy" => "networking.k8s.io/v1",
                    _ => "v1",
                };
                let obj = self.object(api_version, kind, ns, name).unwrap_or_default();
                (o.clone(), obj["metadata"]["resourceVersion"].clone())
            })
            .collect()
    }

    /// `(status, reason)` of a condition of the pipeline.
    pub fn condition(&self, ns: &str, name: &str, type_: &str) -> Option<(String, String)> {
        let p = self.pipeline(ns, name)?;
        condition_of(&p, type_)
    }

    /// Waits until the pipeline's status reports its current generation with
    /// `Ready=True`, and returns the pipeline.
    pub async fn wait_ready(
        &self,
        ns: &str,
        name: &str,
        patience: Duration,
    ) -> anyhow::Result<Value> {
        eventually(
            &format!("{ns}/{name} Ready=True at its current generation"),
            patience,
            || async {
                let p = self.pipeline(ns, name)?;
                let current = p["metadata"]["generation"] == p["status"]["observedGeneration"];
                let ready =
                    condition_of(&p, "Ready")? == ("True".into(), "AllReplicasReady".into());
                (current && ready).then_some(p)
            },
        )
        .await
        .map_err(|e| {
            let p = self.pipeline(ns, name);
            e.context(format!(
                "last seen: {:#}",
                p.map(|p| p["status"].clone()).unwrap_or_default()
            ))
        })
    }

    /// Waits until `cond` holds on the pipeline.
    pub async fn wait_pipeline(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        patience: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        eventually(what, patience, || async {
            let p = self.pipeline(ns, name)?;
            cond(&p).then_some(p)
        })
        .await
        .map_err(|e| {
            let p = self.pipeline(ns, name);
            e.context(format!(
                "last seen: {:#}",
                p.map(|p| p["status"].clone()).unwrap_or_default()
            ))
        })
    }

    /// Write requests by `caller` so far, leases excluded (leader election
    /// renews them by design).
    pub fn writes_by(&self, caller: &str) -> usize {
        self.writes_of(caller).len()
    }

    /// Waits until `caller` has written nothing for 1.5 s (longer than a
    /// requeue interval: the writes trailing a rollout's last status have
    /// landed), up to 20 s; its writes then. A caller still writing after
    /// 20 s is an error naming its last writes.
    pub async fn writes_once_settled(&self, caller: &str) -> anyhow::Result<usize> {
        let started = std::time::Instant::now();
        let mut before = self.writes_by(caller);
        loop {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let now = self.writes_by(caller);
            if now == before {
                return Ok(now);
            }
            if started.elapsed() > Duration::from_secs(20) {
                anyhow::bail!(
                    "{caller} kept writing for 20 s: {:?}",
                    &self.writes_of(caller)[before..]
                );
            }
            before = now;
        }
    }

    /// Those writes as `verb path`, in order: what a test names when writes
    /// happen that should not.
    pub fn writes_of(&self, caller: &str) -> Vec<String> {
        self.sim
            .requests()
            .iter()
            .filter(|r| {
                r.caller == caller
                    && WRITE_VERBS.contains(&r.verb.as_str())
                    && r.resource != "leases"
            })
            .map(|r| format!("{} {}", r.verb, r.path))
            .collect()
    }

    /// Requests by `caller` so far.
    pub fn requests_by(&self, caller: &str) -> usize {
        self.sim.request_count(&RequestMatch::any().caller(caller))
    }

    /// Events (events.k8s.io/v1) in `ns` about `name` with `reason`.
    pub fn events(&self, ns: &str, name: &str, reason: &str) -> Vec<Value> {
        self.sim
            .list_objects("events.k8s.io/v1", "Event", Some(ns))
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["regarding"]["name"] == name && e["reason"] == reason)
            .collect()
    }

    /// Every object of an owned kind carrying the pipeline's label, as
    /// `Kind/name`, plus the pipeline's Secrets.
    pub fn owned_objects(&self, ns: &str, pipeline: &str) -> Vec<String> {
        let mut out = Vec::new();
        let kinds = sluice_operator::owned_kinds()
            .iter()
            .map(|k| (k.api_version, k.kind))
            .chain([("v1", "Secret")]);
        for (api_version, kind) in kinds {
            for o in self
                .sim
                .list_objects(api_version, kind, Some(ns))
                .unwrap_or_default()
            {
                if o["metadata"]["labels"]["sluice.dev/pipeline"] == pipeline {
                    out.push(format!(
                        "{kind}/{}",
                        o["metadata"]["name"].as_str().unwrap_or("")
                    ));
                }
            }
        }
        out.sort();
        out
    }
}

pub fn condition_of(p: &Value, type_: &str) -> Option<(String, String)> {
    p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
}

/// `Kind/name` of every object `desired` computes for the live pipeline,
/// plus the generated Secrets.
pub fn expected_objects(pipeline: &Value) -> Vec<String> {
    let sp: StreamPipeline = serde_json::from_value(pipeline.clone()).expect("a StreamPipeline");
    let d = desired(&sp, &OperatorSettings::default()).expect("a valid pipeline");
    let mut out: Vec<String> = d
        .objects
        .iter()
        .map(|o| format!("{}/{}", o.kind().kind, o.name()))
        .chain(
            d.generated_secrets
                .iter()
                .map(|s| format!("Secret/{}", s.name())),
        )
        .collect();
    out.sort();
    out
}

/// The caller name the sim records for the operator's ServiceAccount `sa`.
pub fn operator_user(sa: &str) -> String {
    format!("system:serviceaccount:{OPERATOR_NS}:{sa}")
}

/// Arguments for an operator whose steady state is counted in writes: the
/// queue observer's first status write (the managed Redis it cannot reach
/// here) comes 30 s after start by default, inside a late check's window;
/// the reconciler's steady state is what these tests count.
pub const QUIET_QUEUES: &[&str] = &["--queues-interval", "1h"];

/// Flags every test operator gets: an ephemeral metrics port, JSON logs
/// (the harness reads the metrics address from them), short intervals.
pub const FAST: [&str; 10] = [
    "--metrics-addr",
    "127.0.0.1:0",
    "--log-format",
    "json",
    "--requeue-interval",
    "1s",
    "--backoff-min",
    "100ms",
    "--backoff-max",
    "1s",
];

/// A running `sluice-operator` process; killed when dropped. Its log is
/// kept and printed when the test fails.
pub struct Operator {
    pub identity: String,
    pub user: String,
    pub metrics_addr: SocketAddr,
    child: tokio::process::Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Operator {
    /// Starts the binary as ServiceAccount `sluice-system/<sa>` with
    /// [`FAST`] plus `args`, and waits for its startup line.
    pub async fn start(h: &Harness, sa: &str, args: &[&str]) -> anyhow::Result<Self> {
        let kubeconfig = h.sim.service_account_kubeconfig(OPERATOR_NS, sa)?;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice-operator"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLUICE_")) {
            cmd.env_remove(k);
        }
        cmd.env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,sluice_operator=debug")
            .args(FAST)
            .args(["--identity", sa])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting sluice-operator")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel();
        {
            let logs = logs.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if let Some(a) = v["fields"]["metrics_addr"].as_str() {
                            let _ = addr_tx.send(a.to_string());
                        }
                    }
                    logs.lock().push(line);
                }
            });
        }
        let addr = tokio::time::timeout(Duration::from_secs(15), addr_rx.recv())
            .await
            .ok()
            .flatten()
            .with_context(|| {
                format!(
                    "sluice-operator did not start; log:\n{}",
                    logs.lock().join("\n")
                )
            })?;
        Ok(Self {
            identity: sa.to_string(),
            user: operator_user(sa),
            metrics_addr: addr.parse().context("metrics address")?,
            child,
            logs,
        })
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().clone()
    }

    /// SIGKILL, as a crashed node or an OOM kill would: no clean shutdown,
    /// no lease release.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM and the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("already exited")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .context("sluice-operator did not exit after SIGTERM")?
            .context("waiting for sluice-operator")
    }

    /// Exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// GET on the operator's metrics listener.
    pub async fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let r = reqwest::get(format!("http://{}{path}", self.metrics_addr)).await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// The value of a metric line starting with `prefix` (name and labels).
    pub async fn metric(&self, prefix: &str) -> anyhow::Result<f64> {
        let (_, text) = self.http_get("/metrics").await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- sluice-operator {} log ----", self.identity);
            for l in self.logs.lock().iter() {
                eprintln!("{l}");
            }
        }
    }
}

/// The rules of `docs/operator.md` § "RBAC the operator needs": (cluster
/// rules, rules in the operator's namespace), each rule as JSON.
pub fn documented_rules() -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operator.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let section = doc
        .split("## RBAC the operator needs")
        .nth(1)
        .expect("RBAC section")
        .split("\n## ")
        .next()
        .unwrap();
    let (cluster, namespaced) = section
        .split_once("Role in the operator's namespace")
        .expect("the leader election Role");
    let rules = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                let list = |c: &str| -> Vec<String> {
                    c.split(',')
                        .map(|x| x.trim().trim_matches('`').trim_matches('"').to_string())
                        .collect()
                };
                let mut rule = serde_json::json!({
                    "apiGroups": list(cells[0]),
                    "resources": list(cells[1]),
                    "verbs": list(cells[2]),
                });
                if let Some(names) = cells.get(3).filter(|c| !c.is_empty()) {
                    rule["resourceNames"] = serde_json::json!(list(names));
                }
                rule
            })
            .collect()
    };
    (rules(cluster), rules(namespaced))
}

/// Grants ServiceAccount `sluice-system/<sa>` exactly the documented rules
/// (cluster-wide, plus the leader election Role).
pub fn grant_documented_rbac(h: &Harness, sa: &str) -> anyhow::Result<()> {
    let (cluster, namespaced) = documented_rules();
    let subject = json!([{"kind": "ServiceAccount", "name": sa, "namespace": OPERATOR_NS}]);
    for obj in [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "sluice-operator"}, "rules": cluster}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "sluice-operator"}, "subjects": subject,
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "sluice-operator"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "sluice-operator-leader", "namespace": OPERATOR_NS}, "rules": namespaced}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "sluice-operator-leader", "namespace": OPERATOR_NS}, "subjects": subject,
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sluice-operator-leader"}}),
    ] {
        h.sim.put_object(obj)?;
    }
    Ok(())
}

/// Authorization decisions the stand-in made for `user`: (how many, the
/// denied ones described).
pub fn authz_of(h: &Harness, user: &str) -> (usize, Vec<String>) {
    let decisions: Vec<_> = h
        .sim
        .authz_decisions()
        .into_iter()
        .filter(|d| d.user == user)
        .collect();
    let denied = decisions
        .iter()
        .filter(|d| !d.allowed)
        .map(|d| format!("{:?}", d.attributes))
        .collect();
    (decisions.len(), denied)
}

/// Runs `kubectl-sluice` in namespace `ns` as the user of `kubeconfig`:
/// (exit code, stdout, stderr).
pub async fn kubectl_sluice(kubeconfig: &Path, ns: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-sluice"))
        .env("KUBECONFIG", kubeconfig)
        .args(["-n", ns])
        .args(args)
        .output()
        .await
        .expect("kubectl-sluice runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A user of namespace `ns`: ServiceAccount `sa`, granted exactly `rules`
/// there by a Role and RoleBinding named `sa`; its kubeconfig.
pub fn namespace_user(
    h: &Harness,
    ns: &str,
    sa: &str,
    rules: serde_json::Value,
) -> anyhow::Result<PathBuf> {
    for obj in [
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": sa, "namespace": ns}, "rules": rules}),
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": sa, "namespace": ns},
               "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa}}),
    ] {
        h.sim.put_object(obj)?;
    }
    Ok(h.sim.service_account_kubeconfig(ns, sa)?)
}
