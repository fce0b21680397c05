//! The builtin autoscaler end to end: the `sluice-operator` binary against
//! the in-memory API stand-in, reading a real `redis-server` (external
//! Redis mode: the URL comes from a Secret, as a user would give it), with
//! `--autoscale-interval 1s`. Backlog is made by appending entries to the
//! group's stream; "pods" are the stand-in's replica counts, and where a
//! request must be answered the test runs the real runtime processes as
//! the kubelet would for those replicas.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use sluice_e2e::resp::{Probe, Resp};
use sluice_platform::conformance::entry;
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::{Keys, Queue, RedisBackend, RedisConfig};
use support::*;

const PATIENCE: Duration = Duration::from_secs(30);
/// The evaluation period the operators of these tests run with.
const PERIOD: Duration = Duration::from_secs(1);
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);
const PIPELINE: &str = "p";
const DEPLOYMENT: &str = "p-cpu";

fn manifest(autoscale: Value, timeout: &str) -> Value {
    json!({
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": PIPELINE},
        "spec": {
            "backends": {"queue": "redis", "kv": "redis", "reply": "redis"},
            "redis": {"mode": "external", "urlSecretRef": {"name": "redis-url", "key": "url"}},
            "interfaces": [{"name": "api", "path": "/v1/echo", "entry": "a", "timeout": timeout}],
            "groups": [
                {"name": "web", "role": "ingress"},
                {"name": "cpu", "role": "worker", "concurrency": 2, "autoscale": autoscale},
            ],
            "nodes": [
                {"name": "a", "group": "web", "uses": "builtin/echo", "next": "b"},
                {"name": "b", "group": "cpu", "uses": "builtin/echo"},
            ],
        }
    })
}

/// A stand-in with the pipeline Ready, its Redis, and the operator.
struct Setup {
    h: Harness,
    redis: RedisServer,
    queue: Arc<RedisBackend>,
    ns: &'static str,
    ops: Vec<Operator>,
}

impl Setup {
    async fn start(
        ns: &'static str,
        autoscale: Value,
        rbac: bool,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let h = Harness::start_with(cluster_sim::ClusterSimOptions {
            rbac,
            ..sim_options()
        })
        .await?;
        if rbac {
            grant_documented_rbac(&h, "op")?;
        }
        let redis = RedisServer::start(false);
        h.namespace(ns)?;
        let secrets: Api<Secret> = Api::namespaced(h.admin.clone(), ns);
        let mut s = Secret::default();
        s.metadata.name = Some("redis-url".into());
        s.data = Some([("url".to_string(), ByteString(redis.url().into_bytes()))].into());
        secrets.create(&PostParams::default(), &s).await?;
        let queue = RedisBackend::connect(RedisConfig::from_url(&redis.url())?).await?;
        let mut args = vec!["--autoscale-interval", "1s"];
        args.extend_from_slice(extra);
        let op = Operator::start(&h, "op", &args).await?;
        h.apply(ns, manifest(autoscale, "25s")).await?;
        h.wait_ready(ns, PIPELINE, PATIENCE).await?;
        Ok(Self {
            h,
            redis,
            queue,
            ns,
            ops: vec![op],
        })
    }

    fn stream(&self) -> String {
        Keys::new(self.ns, PIPELINE).queue("cpu")
    }

    async fn push(&self, n: usize) -> anyhow::Result<()> {
        for i in 0..n {
            self.queue.push(&self.stream(), entry(i)).await?;
        }
        Ok(())
    }

    /// Queues `n` entries on a group stream that does not exist yet, all at
    /// once: an evaluation in the middle of `n` separate appends would see
    /// part of the backlog and scale to a lower count first. They go to a
    /// scratch stream with the same `{ns/p}` hash tag (one slot in a
    /// cluster), which one `RENAMENX` then makes the group's stream; `NX`
    /// refuses to replace a stream that already holds work.
    async fn push_at_once(&self, n: usize) -> anyhow::Result<()> {
        let stream = self.stream();
        let scratch = format!("{stream}:staging");
        for i in 0..n {
            self.queue.push(&scratch, entry(i)).await?;
        }
        let moved = Probe::new(self.redis.port())
            .cmd(&[b"RENAMENX", scratch.as_bytes(), stream.as_bytes()])
            .map_err(anyhow::Error::msg)
            .context("RENAMENX the scratch stream onto the group's")?;
        anyhow::ensure!(
            moved == Resp::Int(1),
            "{stream} already existed: RENAMENX answered {moved:?}"
        );
        Ok(())
    }

    /// Consumes and hands off everything queued, as workers would.
    async fn drain(&self) -> anyhow::Result<()> {
        let q = self.stream();
        self.queue.ensure_group(&q).await?;
        loop {
            let got = self.queue.read(&q, "test", 100, Duration::ZERO).await?;
            if got.is_empty() {
                return Ok(());
            }
            for d in got {
                self.queue.complete(&q, &d.id, None).await?;
            }
        }
    }

    fn replicas(&self) -> Option<i64> {
        self.h
            .object("apps/v1", "Deployment", self.ns, DEPLOYMENT)?["spec"]["replicas"]
            .as_i64()
    }

    async fn wait_replicas(&self, want: i64, patience: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        eventually(
            &format!("{DEPLOYMENT} at {want} replicas"),
            patience,
            || async { (self.replicas() == Some(want)).then_some(()) },
        )
        .await
        .map_err(|e| e.context(format!("replicas now {:?}", self.replicas())))?;
        Ok(started.elapsed())
    }

    /// Every replica count seen while polling for `span`, deduplicated, with
    /// the time of each change since `since`.
    async fn record(&self, since: Instant, span: Duration) -> Vec<(Duration, i64)> {
        let mut seen: Vec<(Duration, i64)> = vec![];
        let end = Instant::now() + span;
        while Instant::now() < end {
            if let Some(r) = self.replicas() {
                if seen.last().map(|(_, x)| *x) != Some(r) {
                    seen.push((since.elapsed(), r));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    }

    /// `status.groups[cpu].lastScale` once it satisfies `ok` (status is
    /// written by the reconcile the decision triggers, a moment later).
    async fn last_scale(&self, what: &str, ok: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        eventually(what, PATIENCE, || async {
            let last = self.group_status()["lastScale"].clone();
            ok(&last).then_some(last)
        })
        .await
        .map_err(|e| e.context(format!("status: {}", self.group_status())))
    }

    fn group_status(&self) -> Value {
        let p = self.h.pipeline(self.ns, PIPELINE).unwrap_or_default();
        p["status"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["name"] == "cpu")
            .cloned()
            .unwrap_or_default()
    }
}

fn counts(seen: &[(Duration, i64)]) -> Vec<i64> {
    seen.iter().map(|(_, r)| *r).collect()
}

#[tokio::test]
async fn backlog_over_target_scales_up_within_two_periods_and_down_only_after_the_window(
) -> anyhow::Result<()> {
    let window = Duration::from_secs(4);
    // Under RBAC enforcement with exactly the documented rules.
    let s = Setup::start(
        "backlog",
        json!({"minReplicas": 1, "maxReplicas": 6, "targetBacklogPerReplica": 10,
               "scaleDownStabilization": "4s"}),
        true,
        &[],
    )
    .await?;
    assert_eq!(s.replicas(), Some(1));
    let ready_at = s.h.sim.requests().len();

    s.push_at_once(45).await?;
    let took = s.wait_replicas(5, PATIENCE).await?;
    assert!(
        took <= 2 * PERIOD + SLACK,
        "ceil(45 / 10) = 5 written after {took:?}, more than two periods"
    );
    let last = s.last_scale("lastScale 1 → 5", |l| l["to"] == 5).await?;
    assert_eq!(last["from"], 1, "{last}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("backlog 45 at 10 per replica"),
        "{last}"
    );
    assert!(!s.h.events(s.ns, PIPELINE, "Scaled").is_empty());
    let op = &s.ops[0];
    let backlog = op
        .metric("sluice_operator_autoscaler_backlog{namespace=\"backlog\",pipeline=\"p\",group=\"cpu\"}")
        .await?;
    assert_eq!(backlog, 45.0);

    // Far more than max: capped at 6.
    s.push(200).await?;
    s.wait_replicas(6, 2 * PERIOD + SLACK).await?;

    s.drain().await?;
    let drained = Instant::now();
    let seen = s.record(drained, window + 6 * PERIOD).await;
    // Down to the minimum by half a step at a time: [6, 3, 2, 1] when no
    // evaluation saw the queue mid-drain; one that did (8 entries left: 4
    // replicas) holds the first step at 4 for the window, and the halving
    // goes on from there.
    let steps = counts(&seen);
    let halved = |from: i64| from - (from / 2).max(1);
    assert!(
        steps.len() >= 3
            && steps[0] == 6
            && (3..6).contains(&steps[1])
            && steps[1..].windows(2).all(|w| w[1] == halved(w[0]))
            && steps.last() == Some(&1),
        "down in bounded steps of at most half: {seen:?}"
    );
    // The window counts from the start of the last evaluation that saw the
    // backlog, up to a period before `drained`; without a window the first
    // step would come a period after the drain.
    assert!(
        seen[1].0 + 2 * PERIOD >= window,
        "first scale-down {:?} after the drain, inside the {window:?} window: {seen:?}",
        seen[1].0
    );
    // Each evaluation read pipelines and Deployments from the caches: not
    // one list of them in all the intervals since Ready. (The KEDA kinds'
    // watches probe with a list now and then: KEDA is not installed.)
    let lists: Vec<String> = s.h.sim.requests()[ready_at..]
        .iter()
        .filter(|r| r.caller == op.user && r.verb == "list" && r.group != "keda.sh")
        .map(|r| format!("{} {}", r.resource, r.code))
        .collect();
    assert!(lists.is_empty(), "lists after Ready: {lists:?}");
    // Under enforcement: nothing was denied.
    let (_, denied) = authz_of(&s.h, &op.user);
    assert!(denied.is_empty(), "denied: {denied:#?}");
    let scaled =
        s.h.sim
            .requests()
            .iter()
            .filter(|r| r.caller == op.user && r.subresource == "scale" && r.code == 200)
            .count();
    assert!(scaled >= 4, "{scaled} /scale writes");
    Ok(())
}

#[tokio::test]
async fn a_group_at_zero_wakes_on_the_first_entry_and_the_waiting_request_is_answered(
) -> anyhow::Result<()> {
    use sluice_e2e::{Http, Sandbox, Service, Spec};

    let s = Setup::start(
        "zero",
        json!({"minReplicas": 0, "maxReplicas": 3, "scaleDownStabilization": "2s"}),
        false,
        &["--cold-start", "30s"],
    )
    .await?;
    // A 25 s timeout is shorter than the 30 s cold start: warned about.
    let p =
        s.h.wait_pipeline(s.ns, PIPELINE, "ColdStartRisk", PATIENCE, |p| {
            condition_of(p, "ColdStartRisk").is_some()
        })
        .await?;
    assert_eq!(
        condition_of(&p, "ColdStartRisk"),
        Some(("True".into(), "TimeoutBelowColdStart".into()))
    );
    assert!(!s.h.events(s.ns, PIPELINE, "ColdStartRisk").is_empty());

    // Idle: down to zero after the window.
    s.wait_replicas(0, Duration::from_secs(2) + 4 * PERIOD + SLACK)
        .await?;

    // The runtime of the pipeline, as its pods would run it.
    let sandbox = Sandbox::new("autoscale-zero");
    let mut m = manifest(json!({"minReplicas": 0, "maxReplicas": 3}), "25s");
    m["metadata"]["namespace"] = s.ns.into();
    let file = sandbox.write("pipeline.yaml", &sluice_crds::yaml::to_string(&m)?);
    let keys = sandbox.keygen();
    let url = s.redis.url();
    let ingress = Service::start(&sandbox, Spec::ingress(&file).redis(&url, &keys)).await;

    let sent = Instant::now();
    let request = tokio::spawn({
        let url = ingress.url("/v1/echo");
        async move {
            let http = Http::new(Duration::from_secs(40));
            loop {
                let a = http.post(&url, &json!({"hello": "zero"}), None).await;
                // Until its reply stream is open the new ingress answers
                // 503 at once, before queueing anything.
                match &a {
                    Ok(x) if x.status == 503 && sent.elapsed() < Duration::from_secs(10) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => return a,
                }
            }
        }
    });
    eventually("the request's entry queued", PATIENCE, || async {
        let stats = s.queue.stream_stats(&s.stream()).await.ok()?;
        (stats.length >= 1).then_some(())
    })
    .await?;
    let woke = match s.wait_replicas(1, PATIENCE).await {
        Ok(w) => w,
        Err(e) => {
            let r = if request.is_finished() {
                format!("{:?}", request.await?.map(|a| (a.status, a.text())))
            } else {
                "still waiting".into()
            };
            anyhow::bail!("{e:#}; request: {r}; ingress log:\n{}", ingress.log_text());
        }
    };
    assert!(
        woke <= PERIOD + SLACK,
        "one entry queued: woken after {woke:?}, more than one period"
    );
    assert!(!request.is_finished(), "answered before any worker ran");
    // The kubelet starts the one replica.
    let _worker = Service::start(&sandbox, Spec::worker(&file, "cpu").redis(&url, &keys)).await;
    let answer = request.await?.map_err(anyhow::Error::msg)?;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json(), json!({"hello": "zero"}));
    eprintln!(
        "woken {woke:?} after the request; answered {:?} after it was sent",
        sent.elapsed()
    );
    s.last_scale("a lastScale waking the group", |l| {
        l["to"] == 1 && l["reason"].as_str().unwrap_or("").starts_with("waking")
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn redis_unreachable_changes_nothing_says_so_and_recovers() -> anyhow::Result<()> {
    let mut s = Setup::start(
        "outage",
        json!({"minReplicas": 1, "maxReplicas": 5, "targetBacklogPerReplica": 10,
               "scaleDownStabilization": "2s"}),
        false,
        &[],
    )
    .await?;
    s.push(30).await?;
    s.wait_replicas(3, PATIENCE).await?;
    // The status follows the scale write by one reconcile; an evaluation
    // before Redis answered may have reported RedisUnreachable meanwhile.
    s.h.wait_pipeline(s.ns, PIPELINE, "Autoscaling=True, Active", PATIENCE, |p| {
        support::condition_of(p, "Autoscaling") == Some(("True".into(), "Active".into()))
    })
    .await?;

    s.redis.kill();
    s.h.wait_pipeline(
        s.ns,
        PIPELINE,
        "Autoscaling=False RedisUnreachable",
        PATIENCE,
        |p| condition_of(p, "Autoscaling") == Some(("False".into(), "RedisUnreachable".into())),
    )
    .await?;
    assert!(!s
        .h
        .events(s.ns, PIPELINE, "AutoscalerRedisUnreachable")
        .is_empty());
    // Longer than the window plus a few periods: nothing scales down blind.
    let seen = s
        .record(Instant::now(), Duration::from_secs(2) + 4 * PERIOD)
        .await;
    assert_eq!(counts(&seen), [3], "scaled while Redis was away: {seen:?}");

    // Back, empty (no persistence): the condition clears and the idle
    // group scales down again after the window.
    s.redis.restart();
    s.h.wait_pipeline(s.ns, PIPELINE, "Autoscaling=True again", PATIENCE, |p| {
        condition_of(p, "Autoscaling") == Some(("True".into(), "Active".into()))
    })
    .await?;
    s.wait_replicas(1, PATIENCE).await?;
    Ok(())
}

#[tokio::test]
async fn a_leader_change_inside_the_window_adds_no_scale_down() -> anyhow::Result<()> {
    let window = Duration::from_secs(6);
    let lease = [
        "--leader-election",
        "--lease-duration",
        "3s",
        "--lease-renew-interval",
        "1s",
    ];
    let mut s = Setup::start(
        "failover",
        json!({"minReplicas": 1, "maxReplicas": 8, "targetBacklogPerReplica": 10,
               "scaleDownStabilization": "6s"}),
        false,
        &lease,
    )
    .await?;
    let mut args = vec!["--autoscale-interval", "1s"];
    args.extend_from_slice(&lease);
    s.ops.push(Operator::start(&s.h, "op-b", &args).await?);
    s.push(40).await?;
    s.wait_replicas(4, PATIENCE).await?;

    s.drain().await?;
    let drained = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The first operator led (it started first and the lease is held).
    s.ops[0].kill().await;
    // Long enough for the standby to take the lease (3 s after the last
    // renewal it saw, on its 1 s beat), watch a whole window of its own and
    // step down twice (about 14 s in all on an idle machine); nothing
    // changes at the minimum after that.
    let takeover = Duration::from_secs(2 + 3 + 1);
    let seen = s
        .record(drained, takeover + window + 6 * PERIOD + SLACK)
        .await;
    assert_eq!(counts(&seen), [4, 2, 1], "{seen:?}");
    // The standby leads 4 s after the drain at the earliest (the last
    // renewal it saw, after a second, plus the 3 s lease), then waits a
    // window of its own: an earlier step means it took the old leader's
    // observations, or none, for a full window.
    assert!(
        seen[1].0 + PERIOD >= Duration::from_secs(4) + window,
        "scale-down {:?} after the drain, inside the {window:?} window: {seen:?}",
        seen[1].0
    );
    let lease =
        s.h.object(
            "coordination.k8s.io/v1",
            "Lease",
            OPERATOR_NS,
            "sluice-operator-leader",
        )
        .unwrap();
    assert_eq!(
        lease["spec"]["holderIdentity"], "op-b",
        "the standby took over"
    );
    Ok(())
}

#[tokio::test]
async fn a_steady_arrival_rate_with_a_known_rate_per_replica_gives_the_expected_count(
) -> anyhow::Result<()> {
    let s = Setup::start(
        "rate",
        json!({"minReplicas": 1, "maxReplicas": 10, "targetRatePerReplica": 20,
               "targetBacklogPerReplica": 100000}),
        false,
        &[],
    )
    .await?;
    // 30 envelopes a second, each handed off at once: no backlog, only
    // rate. ceil(30 / 20) = 2, and any rate in (20, 40] gives 2: a loaded
    // machine that slows the producer cannot change the answer.
    let stop = Instant::now() + Duration::from_secs(14);
    let producer = {
        let (q, stream) = (s.queue.clone(), s.stream());
        tokio::spawn(async move {
            q.ensure_group(&stream).await?;
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / 30));
            // A producer that fell behind waits rather than catching up in
            // a burst, which would read as a higher rate.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0;
            while Instant::now() < stop {
                tick.tick().await;
                q.push(&stream, entry(i)).await?;
                i += 1;
                for d in q.read(&stream, "w", 10, Duration::ZERO).await? {
                    q.complete(&stream, &d.id, None).await?;
                }
            }
            anyhow::Ok(())
        })
    };
    s.wait_replicas(2, Duration::from_secs(10)).await?;
    let seen = s.record(Instant::now(), Duration::from_secs(3)).await;
    assert_eq!(counts(&seen), [2], "ceil(30 / 20), steadily: {seen:?}");
    producer.await??;
    s.last_scale("a lastScale by the arrival rate", |l| {
        l["to"] == 2
            && l["reason"]
                .as_str()
                .unwrap_or("")
                .contains("/s per replica")
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn keda_groups_get_a_scaled_object_or_a_condition_when_keda_is_absent() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    let _op = Operator::start(&h, "op", &[]).await?;
    let ns = "keda";
    let mut m = manifest(
        json!({"engine": "keda", "minReplicas": 0, "maxReplicas": 4, "targetBacklogPerReplica": 20}),
        "25s",
    );
    m["spec"]["redis"] = json!({"mode": "managed"});
    h.apply(ns, m).await?;
    // No KEDA: the pipeline runs and says why its group does not scale.
    let p = h
        .wait_pipeline(
            ns,
            PIPELINE,
            "Autoscaling=False KedaNotInstalled",
            PATIENCE,
            |p| condition_of(p, "Autoscaling") == Some(("False".into(), "KedaNotInstalled".into())),
        )
        .await?;
    drop(p);
    let p = h.wait_ready(ns, PIPELINE, PATIENCE).await?;
    assert_eq!(
        condition_of(&p, "Autoscaling"),
        Some(("False".into(), "KedaNotInstalled".into()))
    );

    // KEDA installed: the objects appear and the condition clears.
    for (kind, plural) in [
        ("ScaledObject", "scaledobjects"),
        ("TriggerAuthentication", "triggerauthentications"),
    ] {
        h.sim.put_object(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.keda.sh")},
            "spec": {"group": "keda.sh", "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                     "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
        }))?;
    }
    h.wait_pipeline(ns, PIPELINE, "Autoscaling=True", PATIENCE, |p| {
        condition_of(p, "Autoscaling") == Some(("True".into(), "Active".into()))
    })
    .await?;
    let so = h
        .object("keda.sh/v1alpha1", "ScaledObject", ns, DEPLOYMENT)
        .expect("ScaledObject");
    assert_eq!(so["spec"]["scaleTargetRef"]["name"], DEPLOYMENT);
    assert_eq!(so["spec"]["minReplicaCount"], 0);
    let trigger = &so["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "redis-streams");
    assert_eq!(trigger["metadata"]["stream"], "sluice:{keda/p}:q:cpu");
    assert_eq!(trigger["metadata"]["streamLength"], "20");
    assert_eq!(trigger["metadata"]["address"], "p-redis.keda.svc:6379");
    let auth = h
        .object(
            "keda.sh/v1alpha1",
            "TriggerAuthentication",
            ns,
            "p-keda-redis",
        )
        .expect("TriggerAuthentication");
    assert_eq!(
        auth["spec"]["secretTargetRef"],
        json!([
            {"parameter": "username", "name": "p-redis", "key": "keda.username"},
            {"parameter": "password", "name": "p-redis", "key": "keda.password"},
            {"parameter": "ca", "name": "p-redis", "key": "ca.crt"},
        ]),
        "KEDA reads the queues as its own read-only user, over TLS"
    );
    let secret = h
        .object("v1", "Secret", ns, "p-redis")
        .expect("the managed Redis Secret");
    assert!(
        secret["data"]["keda.password"].is_string() && secret["data"]["keda.username"].is_string(),
        "the keys KEDA is pointed at exist: {:?}",
        secret["data"]
            .as_object()
            .map(|d| d.keys().collect::<Vec<_>>())
    );
    Ok(())
}
