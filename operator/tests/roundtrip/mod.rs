//! The rig of the round-trip tests: a pipeline run here as the operator
//! writes it (see `runtime_roundtrip.rs` for what is translated between a
//! pod and this machine), and the checks its tests share.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use serde_json::Value;
use sluice_crds::{GroupRole, Plan, StreamPipeline};
use sluice_e2e::resp::{Probe, Resp, UserProbe};
use sluice_operator::render::key_ring::role_keys_secret;
use sluice_operator::resources::{main_container, HUB_PORT};
use sluice_operator::{desired, secrets, Child as Object, GeneratedSecret, OperatorSettings};
use sluice_platform::redis::testing::RedisServer;

use crate::kubelet::process::Proc;
use crate::kubelet::{self, labels_of, selects, Cluster, Materialised};

pub const NAMESPACE: &str = "roundtrip";
pub const UID: &str = "00000000-0000-4000-8000-0000000000f1";
/// How long a process may take to become ready.
pub const READY_PATIENCE: Duration = Duration::from_secs(30);
/// The annotation naming a pod's main container.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

// === the pipeline, as the operator writes it ===

pub fn load(example: &str) -> StreamPipeline {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(example);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut sp: StreamPipeline =
        sluice_crds::yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    sp.metadata.namespace = Some(NAMESPACE.into());
    sp.metadata.uid = Some(UID.into());
    sp
}

/// A pipeline running here: its processes (dropped first), then Redis and
/// the materialised files.
pub struct Running {
    pub procs: Vec<(Proc, Materialised)>,
    /// What the pods compile.
    pub plan: Plan,
    /// Local address of the ingress Service's target port.
    pub ingress: SocketAddr,
    pub redis: Option<RedisServer>,
    /// What `P-redis` holds (managed Redis only).
    pub redis_secret: BTreeMap<String, String>,
    /// What the pods see: ConfigMaps, Secrets, Service endpoints.
    pub cluster: Cluster,
    pub _files: tempfile::TempDir,
}

impl Running {
    /// A client of managed Redis authenticated as `user`, with the password
    /// `P-redis` holds for it.
    pub fn redis_as(&self, user: &str) -> UserProbe {
        let port = self.redis.as_ref().expect("managed Redis").port();
        let password = &self.redis_secret[&format!("{user}.password")];
        Probe::new(port).as_user(user, password)
    }

    /// How many commands of `user` Redis refused (`ACL LOG`), by command.
    pub fn refused(&self, user: &str) -> BTreeMap<String, i64> {
        let port = self.redis.as_ref().expect("managed Redis").port();
        let log = Probe::new(port)
            .as_user(INSPECTOR, INSPECTOR_PASSWORD)
            .cmd(&[b"ACL", b"LOG", b"1000"])
            .expect("ACL LOG");
        let Resp::Array(Some(entries)) = log else {
            panic!("ACL LOG answered {log:?}")
        };
        let field = |e: &[Resp], name: &str| {
            e.chunks(2)
                .find(|kv| kv[0] == Resp::Bulk(Some(name.as_bytes().to_vec())))
                .map(|kv| kv[1].clone())
        };
        entries
            .iter()
            .filter_map(|e| match e {
                Resp::Array(Some(e)) => Some(e),
                _ => None,
            })
            .filter(|e| field(e, "username") == Some(Resp::Bulk(Some(user.as_bytes().to_vec()))))
            .fold(BTreeMap::new(), |mut by, e| {
                let Some(Resp::Int(n)) = field(e, "count") else {
                    panic!("ACL LOG entry without a count: {e:?}")
                };
                let Some(Resp::Bulk(Some(object))) = field(e, "object") else {
                    panic!("ACL LOG entry without an object: {e:?}")
                };
                *by.entry(String::from_utf8_lossy(&object).into_owned())
                    .or_default() += n;
                by
            })
    }
}

/// The test's own Redis user, allowed `ACL LOG` only.
pub const INSPECTOR: &str = "test-inspector";
pub const INSPECTOR_PASSWORD: &str = "inspector-password-0123456789";

/// Starts one process per container of each Deployment the operator wants
/// for `example`, with exactly what the kubelet would give it.
pub fn start(example: &str, expect_deployments: &[&str]) -> Running {
    start_pipeline(example, load(example), expect_deployments)
}

/// [`start`] with `sp`, loaded from `example` and changed.
pub fn start_pipeline(example: &str, sp: StreamPipeline, expect_deployments: &[&str]) -> Running {
    let d = desired(&sp, &OperatorSettings::default())
        .unwrap_or_else(|e| panic!("{example}: desired: {e}"));

    let mut cluster = Cluster::new(NAMESPACE);
    let mut deployments: Vec<&Deployment> = Vec::new();
    let mut services: Vec<&Service> = Vec::new();
    let mut redis_sets: Vec<&StatefulSet> = Vec::new();
    for o in &d.objects {
        match o {
            Object::ConfigMap(cm) => cluster.add_config_map(cm.clone()),
            Object::Deployment(dep) => deployments.push(dep),
            Object::Service(s) => services.push(s),
            Object::StatefulSet(s) => redis_sets.push(s),
            _ => {}
        }
    }
    let names: Vec<&str> = deployments
        .iter()
        .map(|d| d.metadata.name.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(names, expect_deployments, "{example}: Deployments");

    // The Secrets the reconciler creates when absent, from fresh material.
    let mut redis_secret = None;
    let mut ring = BTreeMap::new();
    for g in &d.generated_secrets {
        let s = match g {
            GeneratedSecret::KeyRing(_) => {
                let s = secrets::fresh_key_ring(&sp).unwrap();
                ring = secrets::text_data(&s);
                s
            }
            // As the reconciler derives them, after the ring.
            GeneratedSecret::RoleKeys { name, needs } => {
                role_keys_secret(&sp, name, &ring, needs).unwrap()
            }
            GeneratedSecret::RedisPassword(_) => {
                let s = secrets::fresh_redis_secret(&sp, Duration::from_secs(24 * 3600)).unwrap();
                redis_secret = Some(s.data.clone().unwrap_or_default());
                s
            }
        };
        assert_eq!(s.metadata.name.as_deref(), Some(g.name()));
        cluster.add_secret(s);
    }

    // Managed Redis: every Service selecting its pods is served by a local
    // redis-server started from the `redis.conf` in `P-redis` (its ACL
    // users and nothing else let anyone in).
    let redis = match redis_sets.as_slice() {
        [] => None,
        [sts] => {
            let data = redis_secret
                .as_ref()
                .expect("managed Redis has a P-redis Secret");
            let text = |k: &str| {
                String::from_utf8(
                    data.get(k)
                        .unwrap_or_else(|| panic!("P-redis has {k}"))
                        .0
                        .clone(),
                )
                .unwrap()
            };
            // Plus one user of the test's own that may read `ACL LOG` only,
            // to count what Redis refused.
            let conf = format!(
                "{}\nuser {INSPECTOR} on >{INSPECTOR_PASSWORD} -@all +acl|log\n",
                text("redis.conf")
            );
            // With TLS (the default) the pod mounts its certificate and
            // key beside the file, and clients reach only the TLS port.
            let tls_files: Vec<(&str, Vec<u8>)> = ["tls.crt", "tls.key", "ca.crt"]
                .into_iter()
                .filter_map(|k| Some((k, data.get(k)?.0.clone())))
                .collect();
            let files: Vec<(&str, &[u8])> =
                tls_files.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            let server = RedisServer::start_with_config_files(
                &conf,
                "probe",
                &text("probe.password"),
                &files,
            );
            let addr: SocketAddr = if conf.lines().any(|l| l.starts_with("tls-port ")) {
                server.tls_address().parse().unwrap()
            } else {
                SocketAddr::from(([127, 0, 0, 1], server.port()))
            };
            let template = &sts.spec.as_ref().unwrap().template;
            let mut served = 0;
            for svc in services.iter().filter(|s| selects(s, template)) {
                cluster.serve(svc, "redis", addr);
                served += 1;
            }
            assert!(served > 0, "{example}: no Service selects the Redis pods");
            Some(server)
        }
        more => panic!("{example}: {} StatefulSets", more.len()),
    };

    let files = tempfile::Builder::new()
        .prefix("sluice-roundtrip-")
        .tempdir()
        .unwrap();
    let mut procs = Vec::new();
    let mut ingress = None;
    for dep in &deployments {
        let name = dep.metadata.name.clone().unwrap();
        let pod = format!("{name}-6f9c8d7b5-q2w4x");
        let started = start_pod(&cluster, &services, dep, &pod, &files.path().join(&name));
        ingress = ingress.or(started.ingress);
        procs.extend(started.procs);
    }
    Running {
        procs,
        plan: d.plan.clone(),
        ingress: ingress.expect("an ingress Deployment"),
        redis,
        redis_secret: redis_secret
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap_or_default()))
            .collect(),
        cluster,
        _files: files,
    }
}

/// The processes of one pod, and the local address of the ingress
/// Service's target port when it is an ingress pod.
pub struct Pod {
    pub procs: Vec<(Proc, Materialised)>,
    pub ingress: Option<SocketAddr>,
}

/// Starts a pod of Deployment `dep` named `pod`, one process per container,
/// with its volumes written under `root`.
fn start_pod(
    cluster: &Cluster,
    services: &[&Service],
    dep: &Deployment,
    pod: &str,
    root: &Path,
) -> Pod {
    let name = dep.metadata.name.clone().unwrap();
    let template = &dep.spec.as_ref().unwrap().template;
    let labels = labels_of(template);
    let role = match labels
        .get("app.kubernetes.io/component")
        .map(String::as_str)
    {
        Some("ingress") => GroupRole::Ingress,
        Some("worker") => GroupRole::Worker,
        other => panic!("{name}: component label {other:?}"),
    };
    let container = main_container(role);
    let annotated = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(DEFAULT_CONTAINER));
    assert_eq!(annotated.map(String::as_str), Some(container), "{name}");

    // The hub of a tcp pipeline is the one port a pod's containers
    // reach over its loopback without declaring it.
    let containers = kubelet::materialise_pod(cluster, template, pod, root, &[HUB_PORT])
        .unwrap_or_else(|e| panic!("{name}: the kubelet would not start it: {e}"));
    let mut ingress = None;
    if role == GroupRole::Ingress {
        let svc = services
            .iter()
            .find(|s| selects(s, template))
            .unwrap_or_else(|| panic!("{name}: no Service selects the ingress pods"));
        let target = svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
            .target_port
            .clone()
            .expect("targetPort");
        let m = containers
            .iter()
            .find(|m| m.container == container)
            .unwrap_or_else(|| panic!("{name}: no container {container}"));
        let port = m.local_port(&target).unwrap_or_else(|e| panic!("{e}"));
        ingress = Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let procs = containers
        .into_iter()
        .map(|m| (Proc::spawn(&m), m))
        .collect();
    Pod { procs, ingress }
}

impl Running {
    /// A pod of a rolling update to `sp` (this pipeline, changed): the
    /// operator's objects for `sp` replace its ConfigMaps, as the operator
    /// updates them in place, and pod `pod` of Deployment `deployment` starts
    /// from its new template beside the running ones. The Secrets stay those
    /// of the start: `sp` must need the same keys.
    pub fn start_new_pod(&mut self, sp: &StreamPipeline, deployment: &str, pod: &str) -> Pod {
        let d =
            desired(sp, &OperatorSettings::default()).unwrap_or_else(|e| panic!("desired: {e}"));
        let mut deployments = vec![];
        let mut services = vec![];
        for o in &d.objects {
            match o {
                Object::ConfigMap(cm) => self.cluster.add_config_map(cm.clone()),
                Object::Deployment(dep) => deployments.push(dep),
                Object::Service(s) => services.push(s),
                _ => {}
            }
        }
        for g in self.plan.groups.keys() {
            assert_eq!(
                d.plan.key_needs(g),
                self.plan.key_needs(g),
                "{g}: the change needs other keys"
            );
        }
        let dep = deployments
            .into_iter()
            .find(|dep| dep.metadata.name.as_deref() == Some(deployment))
            .unwrap_or_else(|| panic!("no Deployment {deployment}"));
        let root = self._files.path().join(pod);
        start_pod(&self.cluster, &services, dep, pod, &root)
    }
}

/// The orders-redis example changed into `sp`, started and ready, and the
/// answer to its first request, `first`.
pub async fn start_orders_redis(
    sp: StreamPipeline,
    first: Value,
) -> (Running, reqwest::Client, (u16, Value)) {
    let mut run = start_pipeline(
        "orders-redis.yaml",
        sp,
        &["orders-redis-web", "orders-redis-cpu", "orders-redis-io"],
    );
    let client = client();
    wait_ready(&mut run, &client).await;
    let answer = first_request(&run, &client, first).await;
    (run, client, answer)
}

// === checks ===

/// GET on a probe's `httpGet`, as the kubelet probes: the status code.
pub async fn probe(client: &reqwest::Client, m: &Materialised, which: &str) -> Option<u16> {
    let p = match which {
        "readiness" => m.readiness.as_ref(),
        _ => m.liveness.as_ref(),
    }
    .unwrap_or_else(|| panic!("{}: no {which} probe", m.pod_name));
    let (port, path) = m.http_probe(p).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://127.0.0.1:{port}{path}");
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Every process ready on its readiness probe (`/readyz`) and alive on its
/// liveness probe (`/healthz`).
pub async fn wait_ready(run: &mut Running, client: &reqwest::Client) {
    for (p, m) in &run.procs {
        for (which, path) in [("readiness", "/readyz"), ("liveness", "/healthz")] {
            let pr = if which == "readiness" {
                m.readiness.as_ref()
            } else {
                m.liveness.as_ref()
            };
            let (_, got) = m.http_probe(pr.unwrap()).unwrap();
            assert_eq!(got, path, "{}: {which} probe path", p.name);
        }
    }
    let deadline = Instant::now() + READY_PATIENCE;
    for i in 0..run.procs.len() {
        loop {
            let (p, m) = &mut run.procs[i];
            if let Some(status) = p.exited() {
                panic!("{} exited ({status}) before becoming ready", p.name);
            }
            if probe(client, m, "readiness").await == Some(200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: readiness probe not 200 within {READY_PATIENCE:?}",
                p.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for (p, m) in &run.procs {
        assert_eq!(
            probe(client, m, "readiness").await,
            Some(200),
            "{} /readyz",
            p.name
        );
        assert_eq!(
            probe(client, m, "liveness").await,
            Some(200),
            "{} /healthz",
            p.name
        );
    }
}

pub async fn post(client: &reqwest::Client, ingress: SocketAddr, body: Value) -> (u16, Value) {
    let r = client
        .post(format!("http://{ingress}/v1/orders"))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /v1/orders: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// The first request, retried while it is answered 503: readiness does not
/// wait for Redis (DESIGN §5, "Readiness vs. Redis": a ready ingress answers
/// 503 until its lazily opened connections are up), so right after start the
/// backend may still be connecting. A wrong URL or password never gets past
/// this and fails with the processes' logs.
pub async fn first_request(run: &Running, client: &reqwest::Client, body: Value) -> (u16, Value) {
    let deadline = Instant::now() + READY_PATIENCE;
    loop {
        let (status, got) = post(client, run.ingress, body.clone()).await;
        if status != 503 || Instant::now() >= deadline {
            return (status, got);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Fetches the answer at `location` until it is there (`202` meanwhile)
/// and asserts it is `want`.
pub async fn answered(
    client: &reqwest::Client,
    base: &str,
    location: &str,
    want: &Value,
    patience: Duration,
) {
    let deadline = Instant::now() + patience;
    loop {
        let r = client
            .get(format!("{base}{location}"))
            .send()
            .await
            .expect("an answer");
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("JSON");
        if status == 200 {
            assert_eq!(&body, want, "{location}");
            return;
        }
        assert!(
            status == 202 && Instant::now() < deadline,
            "{location}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}
