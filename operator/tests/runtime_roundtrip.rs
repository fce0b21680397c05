//! What the operator writes is what the runtime reads.
//!
//! For an example pipeline, `sluice_operator::desired` (the pure function
//! the reconciler applies) gives the Deployments, ConfigMap and Services;
//! the Secrets it creates when absent come from the operator's own
//! generators (`secrets::fresh_key_ring`, `secrets::fresh_redis_secret`:
//! random kid, key and password, as in a cluster). Each Deployment's pod
//! template is turned by a small kubelet (`kubelet/mod.rs`) into the argv,
//! environment and mounted files of its runtime container: `P-pipeline`
//! and `P-ipc-keys` laid out with the kubelet's `..data` symlinks,
//! `secretKeyRef`/`fieldRef` resolved, `$(VAR)` expanded. The real
//! `sluice-web-ingress` / `sluice-exec-worker` binaries (chosen by the
//! container image) are started with exactly that, one process per
//! container of each Deployment's pod, and must become ready on their
//! readiness probes and serve both routes of the orders pipeline.
//!
//! Only what differs between a pod and this machine is translated: mount
//! paths to the materialised directories, the managed Redis Service to a
//! local `redis-server` that requires the password from `P-redis`, and the
//! pod's ports (declared container ports, and the tcp hub's loopback port)
//! to free local ports, the same for every container of one pod.

mod kubelet;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use serde_json::{json, Value};
use sluice_crds::{GroupRole, Plan, StreamPipeline};
use sluice_e2e::resp::{Probe, Resp, UserProbe};
use sluice_operator::render::key_ring::role_keys_secret;
use sluice_operator::resources::{main_container, HUB_PORT};
use sluice_operator::{desired, secrets, Child as Object, GeneratedSecret, OperatorSettings};
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::Keys;

use kubelet::process::Proc;
use kubelet::{labels_of, selects, Cluster, Materialised};

const NAMESPACE: &str = "roundtrip";
const UID: &str = "00000000-0000-4000-8000-0000000000f1";
/// How long a process may take to become ready.
const READY_PATIENCE: Duration = Duration::from_secs(30);
/// The annotation naming a pod's main container.
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

// === the pipeline, as the operator writes it ===

fn load(example: &str) -> StreamPipeline {
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
struct Running {
    procs: Vec<(Proc, Materialised)>,
    /// What the pods compile.
    plan: Plan,
    /// Local address of the ingress Service's target port.
    ingress: SocketAddr,
    redis: Option<RedisServer>,
    /// What `P-redis` holds (managed Redis only).
    redis_secret: BTreeMap<String, String>,
    _files: tempfile::TempDir,
}

impl Running {
    /// A client of managed Redis authenticated as `user`, with the password
    /// `P-redis` holds for it.
    fn redis_as(&self, user: &str) -> UserProbe {
        let port = self.redis.as_ref().expect("managed Redis").port();
        let password = &self.redis_secret[&format!("{user}.password")];
        Probe::new(port).as_user(user, password)
    }

    /// How many commands of `user` Redis refused (`ACL LOG`), by command.
    fn refused(&self, user: &str) -> BTreeMap<String, i64> {
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

/// Sends `command` (words separated by spaces) and asserts Redis refused it
/// for want of permission.
fn assert_refused(user: &UserProbe, command: &str, what: &str) {
    let words: Vec<&[u8]> = command.split(' ').map(str::as_bytes).collect();
    let got = user.cmd(&words);
    assert!(
        matches!(&got, Err(e) if e.starts_with("NOPERM")),
        "{what}: `{command}` answered {got:?}"
    );
}

/// The test's own Redis user, allowed `ACL LOG` only.
const INSPECTOR: &str = "test-inspector";
const INSPECTOR_PASSWORD: &str = "inspector-password-0123456789";

/// Starts one process per container of each Deployment the operator wants
/// for `example`, with exactly what the kubelet would give it.
fn start(example: &str, expect_deployments: &[&str]) -> Running {
    start_pipeline(example, load(example), expect_deployments)
}

/// [`start`] with `sp`, loaded from `example` and changed.
fn start_pipeline(example: &str, sp: StreamPipeline, expect_deployments: &[&str]) -> Running {
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

        let pod = format!("{name}-6f9c8d7b5-q2w4x");
        // The hub of a tcp pipeline is the one port a pod's containers
        // reach over its loopback without declaring it.
        let containers = kubelet::materialise_pod(
            &cluster,
            template,
            &pod,
            &files.path().join(&name),
            &[HUB_PORT],
        )
        .unwrap_or_else(|e| panic!("{name}: the kubelet would not start it: {e}"));
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
        for m in containers {
            let p = Proc::spawn(&m);
            procs.push((p, m));
        }
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
        _files: files,
    }
}

// === checks ===

/// GET on a probe's `httpGet`, as the kubelet probes: the status code.
async fn probe(client: &reqwest::Client, m: &Materialised, which: &str) -> Option<u16> {
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
async fn wait_ready(run: &mut Running, client: &reqwest::Client) {
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

async fn post(client: &reqwest::Client, ingress: SocketAddr, body: Value) -> (u16, Value) {
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
async fn first_request(run: &Running, client: &reqwest::Client, body: Value) -> (u16, Value) {
    let deadline = Instant::now() + READY_PATIENCE;
    loop {
        let (status, got) = post(client, run.ingress, body.clone()).await;
        if status != 503 || Instant::now() >= deadline {
            return (status, got);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn both_routes_answer(run: &Running, client: &reqwest::Client) {
    let (status, got) = first_request(
        run,
        client,
        json!({"id": "A1", "type": "priority", "items": 3}),
    )
    .await;
    assert_eq!(status, 200, "priority order: {got}");
    assert_eq!(
        got,
        json!({"order": "A1", "price": 0, "status": "accepted", "summary": "3 item(s) in the rush lane"})
    );
    let (status, got) = post(
        client,
        run.ingress,
        json!({"id": "B2", "type": "bulk", "items": 2}),
    )
    .await;
    assert_eq!(status, 200, "bulk order: {got}");
    assert_eq!(
        got,
        json!({"order": "B2", "price": 5, "status": "accepted", "summary": "2 item(s) in the standard lane"})
    );
    asynchronous_and_idempotent_requests_answer(run, client).await;
}

/// Fetches the answer at `location` until it is there (`202` meanwhile)
/// and asserts it is `want`.
async fn answered(
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

/// An asynchronous request answered at its Location, and a request repeated
/// under one Idempotency-Key answered twice alike: each role's Redis user
/// allows what that takes (answer streams, idempotency keys).
async fn asynchronous_and_idempotent_requests_answer(run: &Running, client: &reqwest::Client) {
    let base = format!("http://{}", run.ingress);
    let order = json!({"id": "C3", "type": "bulk", "items": 1});
    let want = json!({"order": "C3", "price": 5, "status": "accepted", "summary": "1 item(s) in the standard lane"});
    let r = client
        .post(format!("{base}/v1/orders"))
        .header("prefer", "respond-async")
        .json(&order)
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status().as_u16(), 202);
    let accepted: Value = r.json().await.expect("JSON");
    let location = accepted["location"]
        .as_str()
        .expect("a location")
        .to_string();
    answered(client, &base, &location, &want, Duration::from_secs(10)).await;
    for _ in 0..2 {
        let r = client
            .post(format!("{base}/v1/orders"))
            .header("idempotency-key", "order-C3")
            .json(&order)
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.json::<Value>().await.expect("JSON"), want);
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

// === tests ===

/// Redis profile: the ingress and each worker group as separate processes,
/// Redis reached through the URL the operator composes from `P-redis`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_profile_runs_from_what_the_operator_writes() {
    let mut run = start(
        "orders-redis.yaml",
        &["orders-redis-web", "orders-redis-cpu", "orders-redis-io"],
    );
    // The key ring is mounted with the kubelet's bookkeeping entries, which
    // the runtime must skip.
    let keys = run.procs[0].1.mounts["/etc/sluice/keys"].clone();
    assert!(keys.join("..data").is_symlink(), "{}", keys.display());
    let client = client();
    wait_ready(&mut run, &client).await;
    both_routes_answer(&run, &client).await;
    for (p, _) in &mut run.procs {
        assert!(p.exited().is_none(), "{} exited while serving", p.name);
    }
}

/// Memory profile: the ingress Deployment alone runs every group inline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_profile_is_served_by_the_ingress_deployment_alone() {
    let mut run = start("orders.yaml", &["orders-web"]);
    let client = client();
    wait_ready(&mut run, &client).await;
    both_routes_answer(&run, &client).await;
}

/// The names of the files of a mounted Secret directory (not the kubelet's
/// `..data` bookkeeping).
fn key_files(m: &Materialised) -> Vec<String> {
    let dir = &m.mounts["/etc/sluice/keys"];
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Tcp profile: one Deployment whose pod holds the ingress and a container
/// per worker group. Started side by side as the kubelet starts them, the
/// workers find the ingress's hub on the pod's loopback, each holding only
/// its group's keys while the ingress holds every group's; the pod serves
/// both routes. A worker that dies makes the ingress unready until the
/// kubelet's restart of that container connects again, and then it serves
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_profile_runs_every_group_in_the_ingress_pod() {
    let mut run = start("orders-tcp.yaml", &["orders-tcp-web"]);
    let names: Vec<&str> = run
        .procs
        .iter()
        .map(|(_, m)| m.container.as_str())
        .collect();
    assert_eq!(names, ["ingress", "worker-cpu", "worker-io"]);
    // One hub address for the whole pod, wherever the kubelet put it.
    let hubs: Vec<&str> = run
        .procs
        .iter()
        .map(|(_, m)| {
            let i = m.args.iter().position(|a| a == "--hub").expect("--hub");
            m.args[i + 1].as_str()
        })
        .collect();
    assert!(
        hubs.iter()
            .all(|h| *h == hubs[0] && h.starts_with("127.0.0.1:")),
        "{hubs:?}"
    );

    let keys: BTreeMap<&str, Vec<String>> = run
        .procs
        .iter()
        .map(|(_, m)| (m.container.as_str(), key_files(m)))
        .collect();
    for (worker, group) in [("worker-cpu", "cpu"), ("worker-io", "io")] {
        let own = &keys[worker];
        assert!(own.contains(&"current".to_string()), "{worker}: {own:?}");
        assert!(
            own.iter()
                .any(|k| k.ends_with(&format!(".request.{group}"))),
            "{worker} verifies its own requests: {own:?}"
        );
        assert!(
            own.iter().all(|k| keys["ingress"].contains(k)),
            "the ingress holds every key of {worker}: {:?}",
            keys["ingress"]
        );
    }
    // Least privilege: io has no edge to cpu, and no worker holds all.
    assert!(
        keys["worker-io"].iter().all(|k| !k.ends_with(".cpu")),
        "{:?}",
        keys["worker-io"]
    );
    assert!(keys["worker-cpu"].len() < keys["ingress"].len());

    let client = client();
    wait_ready(&mut run, &client).await;
    both_routes_answer(&run, &client).await;

    // A crash of the io container: the ingress leaves the Service's
    // endpoints (its readiness fails) until the restarted container is back.
    let io = run
        .procs
        .iter()
        .position(|(_, m)| m.container == "worker-io")
        .unwrap();
    run.procs[io].0.kill();
    let ingress = &run.procs[0].1;
    let deadline = Instant::now() + READY_PATIENCE;
    while probe(&client, ingress, "readiness").await == Some(200) {
        assert!(
            Instant::now() < deadline,
            "ingress /readyz still 200 {READY_PATIENCE:?} after worker-io died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(probe(&client, ingress, "liveness").await, Some(200));
    run.procs[io].0 = Proc::spawn(&run.procs[io].1);
    wait_ready(&mut run, &client).await;
    both_routes_answer(&run, &client).await;
    for (p, _) in &mut run.procs {
        assert!(p.exited().is_none(), "{} exited while serving", p.name);
    }
}

/// A compromised worker of group `io` holds exactly what its pod holds: the
/// `group-io` user's password. With it Redis refuses everything outside its
/// role — another group's queue, a queue it has no edge to, rewriting
/// history, server-wide commands, other users — and counts each refusal,
/// while the pipeline keeps answering. The other roles are held to theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_refused_what_it_does_not_do_while_traffic_flows() {
    let mut run = start(
        "orders-redis.yaml",
        &["orders-redis-web", "orders-redis-cpu", "orders-redis-io"],
    );
    let client = client();
    wait_ready(&mut run, &client).await;
    both_routes_answer(&run, &client).await;
    // Serving needs nothing refused except `INFO` (the runtime's Redis
    // version check, which gives the server the benefit of the doubt).
    for user in ["ingress", "group-cpu", "group-io"] {
        let refused = run.refused(user);
        assert!(
            refused.keys().all(|c| c == "info"),
            "{user} was refused while serving: {refused:?}"
        );
    }
    let total = |user: &str| run.refused(user).values().sum::<i64>();
    let legit_refusals = total("group-io");

    let k = Keys::new(NAMESPACE, "orders-redis");
    let (cpu, io) = (k.queue("cpu"), k.queue("io"));
    let reply = k.reply("orders-redis-web-6f9c8d7b5-q2w4x");
    let nonce = k.nonce("cpu", "k1", "00");
    let attempts = [
        (
            "read another group's queue",
            format!("XREADGROUP GROUP sluice x STREAMS {cpu} >"),
        ),
        (
            "range over another group's queue",
            format!("XRANGE {cpu} - +"),
        ),
        (
            "append to a queue it has no edge to",
            format!("XADD {cpu} * v 1"),
        ),
        (
            "read a caller's reply stream",
            format!("XREAD STREAMS {reply} 0"),
        ),
        ("claim another group's nonce", format!("SET {nonce} x")),
        ("delete its own queue", format!("DEL {io}")),
        ("rename its own queue", format!("RENAME {io} elsewhere")),
        ("move its queue's last id", format!("XSETID {io} 0-1")),
        ("trim its own queue", format!("XTRIM {io} MAXLEN 0")),
        (
            "destroy its consumer group",
            format!("XGROUP DESTROY {io} sluice"),
        ),
        ("list the keyspace", "KEYS *".into()),
        ("flush everything", "FLUSHALL".into()),
        ("change the configuration", "CONFIG SET maxmemory 1".into()),
        ("set a server password", "CONFIG SET requirepass x".into()),
        (
            "grant itself everything",
            "ACL SETUSER group-io +@all ~*".into(),
        ),
        (
            "turn the default user on",
            "ACL SETUSER default on nopass".into(),
        ),
        ("drop the script cache", "SCRIPT FLUSH".into()),
        // Any Lua could loop forever and freeze Redis for every pipeline
        // user: no role runs scripts (lease renewal is a plain XCLAIM).
        ("run a script", "EVAL return 1 0".into()),
        ("drop every function", "FUNCTION FLUSH".into()),
        ("call a function", format!("FCALL f 1 {io}")),
        ("switch database", "SELECT 1".into()),
    ];
    let io_user = run.redis_as("group-io");
    for (what, command) in &attempts {
        assert_refused(&io_user, command, &format!("group-io may not {what}"));
    }
    assert!(
        total("group-io") == legit_refusals + attempts.len() as i64,
        "every refusal is counted in ACL LOG"
    );
    assert!(
        Probe::new(run.redis.as_ref().unwrap().port())
            .xlen(&io)
            .is_err(),
        "no password, no access"
    );

    // The other roles: the ingress reads no queue's entries; the autoscaler
    // and the probe write nothing; the admin reads no data.
    for (user, command) in [
        ("ingress", format!("XRANGE {cpu} - +")),
        // No scripts at all for the pod that faces callers.
        ("ingress", "EVAL return 1 0".into()),
        (
            "ingress",
            format!("XREADGROUP GROUP sluice x STREAMS {cpu} >"),
        ),
        ("autoscaler", format!("XADD {cpu} * v 1")),
        ("autoscaler", format!("XRANGE {cpu} - +")),
        ("probe", format!("XLEN {cpu}")),
        ("admin", format!("XRANGE {cpu} - +")),
    ] {
        assert_refused(&run.redis_as(user), &command, user);
    }
    // The admin may CONFIG SET (to reload a renewed certificate), but not
    // point Redis's files anywhere: those settings are protected.
    for (name, value) in [("dir", "/tmp"), ("dbfilename", "x.rdb")] {
        let got =
            run.redis_as("admin")
                .cmd(&[b"CONFIG", b"SET", name.as_bytes(), value.as_bytes()]);
        assert!(
            matches!(&got, Err(e) if e.contains("protected config")),
            "admin: CONFIG SET {name} answered {got:?}"
        );
    }
    // And what each role does need is still allowed.
    assert!(run
        .redis_as("autoscaler")
        .cmd(&[b"XLEN", cpu.as_bytes()])
        .is_ok());
    assert!(run.redis_as("probe").cmd(&[b"PING"]).is_ok());

    both_routes_answer(&run, &client).await;
    for (p, _) in &mut run.procs {
        assert!(p.exited().is_none(), "{} exited while serving", p.name);
    }
}

/// Pause and resume (`spec.paused`) as the operator does them, against the
/// processes it asks for: its admin Redis user sets the pause key with the
/// users it applies (`redis_users::apply`), the ingress then answers 503
/// `paused`, a worker started while paused reads nothing of the entries
/// waiting for it, and after the resume every one of them is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_intake_and_reading_and_a_resume_answers_what_waited() {
    use sluice_operator::redis_users::{apply, Wanted};
    use sluice_operator::render::redis_acl;
    use sluice_platform::{RedisBackend, RedisConfig};

    let mut sp = load("orders-redis.yaml");
    // Asynchronous answers outlive the pause.
    sp.spec.interfaces[0].async_timeout = Some("60s".into());
    let mut run = start_pipeline(
        "orders-redis.yaml",
        sp,
        &["orders-redis-web", "orders-redis-cpu", "orders-redis-io"],
    );
    let client = client();
    wait_ready(&mut run, &client).await;
    let (status, got) = first_request(
        &run,
        &client,
        json!({"id": "A0", "type": "bulk", "items": 1}),
    )
    .await;
    assert_eq!(status, 200, "{got}");

    // Entries wait for group io: its worker is gone.
    let io = run
        .procs
        .iter()
        .position(|(p, _)| p.name.starts_with("orders-redis-io"))
        .expect("an io process");
    run.procs[io].0.kill();
    let base = format!("http://{}", run.ingress);
    let ids = ["P1", "P2", "P3", "P4", "P5"];
    let mut locations = vec![];
    for id in ids {
        let r = client
            .post(format!("{base}/v1/orders"))
            .header("prefer", "respond-async")
            .json(&json!({"id": id, "type": "bulk", "items": 2}))
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status().as_u16(), 202, "{id}");
        let v: Value = r.json().await.unwrap();
        locations.push(v["location"].as_str().expect("a location").to_string());
    }
    let keys = Keys::new(NAMESPACE, "orders-redis");
    let io_queue = keys.queue("io");
    let looker = run.redis_as("autoscaler");
    let length = || match looker.cmd(&[b"XLEN", io_queue.as_bytes()]) {
        Ok(Resp::Int(n)) => n,
        other => panic!("XLEN: {other:?}"),
    };
    let pending = || match looker.cmd(&[b"XPENDING", io_queue.as_bytes(), b"sluice"]) {
        Ok(Resp::Array(Some(a))) => match a.first() {
            Some(Resp::Int(n)) => *n,
            other => panic!("XPENDING count: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    // Handed-off entries are deleted: the queue holds those waiting.
    while length() < ids.len() as i64 {
        assert!(Instant::now() < deadline, "entries never reached q:io");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The operator's apply, as its admin user.
    let admin = {
        let port = run.redis.as_ref().unwrap().port();
        let password = &run.redis_secret["admin.password"];
        let cfg = RedisConfig::from_url(&format!("redis://admin:{password}@127.0.0.1:{port}"))
            .unwrap()
            .with_pool_size(1);
        RedisBackend::connect(cfg).await.expect("admin connects")
    };
    let wanted = |paused: bool| {
        Wanted::from_secret(redis_acl::users(&run.plan, true), &run.redis_secret)
            .expect("P-redis holds every password")
            .with_pause(keys.paused(), paused)
    };
    let outcome = apply(&admin, &wanted(true)).await;
    assert_eq!(outcome.pause, Some(Ok(true)));
    assert!(matches!(outcome.users, Some(Ok(_))), "{:?}", outcome.users);

    // The ingress refuses new work within a poll of the key; what it
    // accepted before waits with the rest.
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let id = format!("X{}", ids.len());
        let r = client
            .post(format!("{base}/v1/orders"))
            .header("prefer", "respond-async")
            .json(&json!({"id": id, "type": "bulk", "items": 2}))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 503 {
            assert_eq!(r.headers()["retry-after"], "5");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "paused", "{v}");
            break;
        }
        assert_eq!(r.status().as_u16(), 202, "before the pause arrives");
        let v: Value = r.json().await.unwrap();
        locations.push(v["location"].as_str().expect("a location").to_string());
        ids.push(id);
        assert!(Instant::now() < deadline, "the ingress never paused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A worker started while paused takes nothing.
    let restarted = Proc::spawn(&run.procs[io].1);
    run.procs[io].0 = restarted;
    let deadline = Instant::now() + READY_PATIENCE;
    while probe(&client, &run.procs[io].1, "readiness").await != Some(200) {
        assert!(Instant::now() < deadline, "io worker not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pending(), 0, "a paused worker read entries");
    let r = client
        .get(format!("{base}{}", locations[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "answered while paused");

    let outcome = apply(&admin, &wanted(false)).await;
    assert_eq!(outcome.pause, Some(Ok(false)));
    for (id, location) in ids.iter().zip(&locations) {
        let want = json!({"order": id, "price": 5, "status": "accepted", "summary": "2 item(s) in the standard lane"});
        answered(&client, &base, location, &want, Duration::from_secs(15)).await;
    }
    // The ingress takes requests again within a poll of the key.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, got) = post(
            &client,
            run.ingress,
            json!({"id": "R1", "type": "priority", "items": 1}),
        )
        .await;
        if status == 200 {
            break;
        }
        assert!(
            status == 503 && got["error"]["code"] == "paused" && Instant::now() < deadline,
            "after the resume: {status} {got}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (p, _) in &mut run.procs {
        assert!(p.exited().is_none(), "{} exited", p.name);
    }
}
