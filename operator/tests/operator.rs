//! The `sluice-operator` binary against the in-memory API stand-in
//! (cluster-sim) through a kubeconfig, as it would run against a cluster.
//!
//! Each test starts its own simulator and operator process (as a
//! ServiceAccount, so the sim's request log separates the operator's
//! requests from the test's) with short requeue and backoff intervals.

mod support;

use std::time::Duration;

use support::*;

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn every_example_gets_its_objects_and_becomes_ready() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let op = Operator::start(&h, "op", &[]).await?;
    let names = example_names();
    assert!(names.len() >= 3, "{names:?}");
    for name in &names {
        h.apply("demo", example(name)).await?;
    }
    for name in &names {
        let p = h.wait_ready("demo", name, PATIENCE).await?;
        let expected = expected_objects(&p);
        let found = h.owned_objects("demo", name);
        assert_eq!(found, expected, "objects of {name}");
        assert!(
            p["status"]["ingressUrl"] == format!("http://{name}.demo.svc"),
            "{}",
            p["status"]
        );
        let groups = p["status"]["readyGroups"].as_str().unwrap_or_default();
        let (ready, total) = groups.split_once('/').expect("readyGroups r/t");
        assert_eq!(ready, total, "{groups}");
    }
    // Memory backends run every group inline in the ingress Deployment.
    assert!(h
        .object("apps/v1", "Deployment", "demo", "hello-web")
        .is_some());
    assert!(h
        .object("apps/v1", "Deployment", "demo", "hello-work")
        .is_none());
    // Managed Redis for the redis example.
    assert!(h
        .object("apps/v1", "StatefulSet", "demo", "orders-redis-redis")
        .is_some());
    assert!(!h.events("demo", "orders-redis", "Created").is_empty());
    drop(op);
    Ok(())
}

fn hash_of(h: &Harness, ns: &str, deployment: &str) -> String {
    h.object("apps/v1", "Deployment", ns, deployment)
        .and_then(|d| {
            d["spec"]["template"]["metadata"]["annotations"]["sluice.dev/config-hash"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("Deployment {deployment} has no config hash"))
}

fn group_mut<'a>(manifest: &'a mut serde_json::Value, group: &str) -> &'a mut serde_json::Value {
    manifest["spec"]["groups"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|g| g["name"] == group)
        .unwrap_or_else(|| panic!("no group {group}"))
}

fn node_mut<'a>(manifest: &'a mut serde_json::Value, node: &str) -> &'a mut serde_json::Value {
    manifest["spec"]["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("no node {node}"))
}

#[tokio::test]
async fn a_rollout_is_progressing_a_held_one_degrades_and_a_released_one_gets_ready(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let _op = Operator::start(&h, "op", &[]).await?;
    h.sim.hold_rollout("roll", "hello-web");
    h.apply("roll", example("hello")).await?;
    h.wait_pipeline(
        "roll",
        "hello",
        "Ready=False, Progressing=True while rolling out",
        PATIENCE,
        |p| {
            condition_of(p, "Ready") == Some(("False".into(), "RollingOut".into()))
                && condition_of(p, "Progressing") == Some(("True".into(), "RollingOut".into()))
                && p["status"]["observedGeneration"] == p["metadata"]["generation"]
        },
    )
    .await?;
    // 600 "seconds" of progress deadline are 3 s in this simulator.
    h.wait_pipeline(
        "roll",
        "hello",
        "Degraded=True after the progress deadline",
        PATIENCE,
        |p| {
            condition_of(p, "Degraded") == Some(("True".into(), "ProgressDeadlineExceeded".into()))
                && condition_of(p, "Ready").is_some_and(|c| c.0 == "False")
        },
    )
    .await?;
    h.sim.release_rollout("roll", "hello-web");
    let p = h.wait_ready("roll", "hello", PATIENCE).await?;
    assert_eq!(
        condition_of(&p, "Degraded"),
        Some(("False".into(), "AsExpected".into()))
    );
    Ok(())
}

#[tokio::test]
async fn spec_changes_update_add_and_delete_objects_and_keep_the_secrets() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let _op = Operator::start(&h, "op", &[]).await?;
    let ns = "changes";
    let mut m = example("orders-redis");
    h.apply(ns, m.clone()).await?;
    h.wait_ready(ns, "orders-redis", PATIENCE).await?;
    let keys = h
        .object("v1", "Secret", ns, "orders-redis-ipc-keys")
        .expect("key ring");
    let password = h
        .object("v1", "Secret", ns, "orders-redis-redis")
        .expect("password");
    let hashes = |h: &Harness| {
        ["orders-redis-web", "orders-redis-cpu"]
            .map(|d| hash_of(h, ns, d))
            .to_vec()
    };
    let before = hashes(&h);
    let redis_hash = |h: &Harness| {
        h.object("apps/v1", "StatefulSet", ns, "orders-redis-redis")
            .unwrap()["spec"]["template"]["metadata"]["annotations"]["sluice.dev/config-hash"]
            .clone()
    };
    let redis_before = redis_hash(&h);

    // Replicas: the Deployment scales, no pod rolls.
    group_mut(&mut m, "cpu")["replicas"] = 3.into();
    h.apply(ns, m.clone()).await?;
    h.wait_ready(ns, "orders-redis", PATIENCE).await?;
    let cpu = h
        .object("apps/v1", "Deployment", ns, "orders-redis-cpu")
        .unwrap();
    assert_eq!(cpu["spec"]["replicas"], 3);
    assert_eq!(hashes(&h), before, "a replica change must not roll pods");

    // A node's config: every runtime pod rolls, Redis does not.
    node_mut(&mut m, "price")["with"]["template"]["price"] = 7.into();
    h.apply(ns, m.clone()).await?;
    h.wait_ready(ns, "orders-redis", PATIENCE).await?;
    let after = hashes(&h);
    assert!(
        after.iter().zip(&before).all(|(a, b)| a != b),
        "{before:?} -> {after:?}"
    );
    assert_eq!(redis_hash(&h), redis_before);
    let cm = h
        .object("v1", "ConfigMap", ns, "orders-redis-pipeline")
        .unwrap();
    assert!(cm["data"]["pipeline.yaml"]
        .as_str()
        .unwrap()
        .contains("price: 7"));

    // Remove the io group (its node moves to cpu): its Deployment goes.
    node_mut(&mut m, "summarize")["group"] = "cpu".into();
    m["spec"]["groups"]
        .as_array_mut()
        .unwrap()
        .retain(|g| g["name"] != "io");
    h.apply(ns, m.clone()).await?;
    h.wait_ready(ns, "orders-redis", PATIENCE).await?;
    assert!(h
        .object("apps/v1", "Deployment", ns, "orders-redis-io")
        .is_none());

    // Add a group: a new Deployment.
    m["spec"]["groups"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "extra", "role": "worker", "replicas": 2}));
    node_mut(&mut m, "summarize")["group"] = "extra".into();
    h.apply(ns, m.clone()).await?;
    let p = h.wait_ready(ns, "orders-redis", PATIENCE).await?;
    assert_eq!(h.owned_objects(ns, "orders-redis"), expected_objects(&p));
    let extra = h
        .object("apps/v1", "Deployment", ns, "orders-redis-extra")
        .unwrap();
    assert_eq!(extra["status"]["availableReplicas"], 2);

    // The key ring was never touched.
    let now = h
        .object("v1", "Secret", ns, "orders-redis-ipc-keys")
        .unwrap();
    assert_eq!(now["data"], keys["data"]);
    assert_eq!(
        now["metadata"]["resourceVersion"],
        keys["metadata"]["resourceVersion"]
    );
    // The Redis users follow the groups; no password that stays changes.
    let now = h.object("v1", "Secret", ns, "orders-redis-redis").unwrap();
    for (key, value) in password["data"].as_object().unwrap() {
        match key.as_str() {
            "redis.conf" => assert_ne!(&now["data"][key], value, "users changed"),
            "group-io.password" => assert!(now["data"].get(key).is_none(), "io is gone"),
            _ => assert_eq!(&now["data"][key], value, "{key} kept"),
        }
    }
    assert!(now["data"]["group-extra.password"].is_string());

    // External Redis: managed Redis and its password Secret go away.
    h.sim.put_object(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "redis-url", "namespace": ns},
        "stringData": {"url": "redis://redis.example:6379/0"}
    }))?;
    m["spec"]["redis"] = serde_json::json!({"mode": "external", "urlSecretRef": {"name": "redis-url", "key": "url"}});
    h.apply(ns, m.clone()).await?;
    let p = h.wait_ready(ns, "orders-redis", PATIENCE).await?;
    eventually("managed Redis objects deleted", PATIENCE, || async {
        (h.owned_objects(ns, "orders-redis") == expected_objects(&p)).then_some(())
    })
    .await?;
    assert!(h.object("v1", "Secret", ns, "orders-redis-redis").is_none());
    assert!(h
        .object("apps/v1", "StatefulSet", ns, "orders-redis-redis")
        .is_none());
    assert!(!h.events(ns, "orders-redis", "Deleted").is_empty());

    // Deleting the pipeline removes everything it owns (garbage collection).
    h.sim
        .delete_object(API_VERSION, KIND, Some(ns), "orders-redis")?;
    eventually("every owned object gone", PATIENCE, || async {
        h.owned_objects(ns, "orders-redis").is_empty().then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_autoscaled_group_scaled_by_another_manager_is_never_undone() -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Api, Patch, PatchParams};

    let h = Harness::start().await?;
    let _op = Operator::start(&h, "op", &[]).await?;
    let ns = "scale";
    let mut m = example("orders-redis");
    group_mut(&mut m, "cpu")["autoscale"] =
        serde_json::json!({"engine": "hpa", "minReplicas": 1, "maxReplicas": 6});
    h.apply(ns, m.clone()).await?;
    h.wait_ready(ns, "orders-redis", PATIENCE).await?;
    assert!(h
        .object(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            ns,
            "orders-redis-cpu"
        )
        .is_some());

    let deployments: Api<Deployment> = Api::namespaced(h.admin.clone(), ns);
    deployments
        .patch_scale(
            "orders-redis-cpu",
            &PatchParams {
                field_manager: Some("autoscaler".into()),
                ..Default::default()
            },
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 4}})),
        )
        .await?;
    // A change that makes the operator apply the worker Deployment again.
    node_mut(&mut m, "price")["with"]["template"]["price"] = 9.into();
    h.apply(ns, m.clone()).await?;
    let p = h.wait_ready(ns, "orders-redis", PATIENCE).await?;
    // And a few periodic reconciles on top.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let cpu = h
        .object("apps/v1", "Deployment", ns, "orders-redis-cpu")
        .unwrap();
    assert_eq!(
        cpu["spec"]["replicas"], 4,
        "the operator undid the autoscaler"
    );
    let group = p["status"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "cpu")
        .unwrap()
        .clone();
    assert_eq!(group["desiredReplicas"], 4, "{group}");
    let owners: Vec<_> = cpu["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["fieldsV1"]["f:spec"]["f:replicas"].is_object())
        .map(|f| f["manager"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(owners, ["autoscaler"]);
    Ok(())
}

fn with_cycle(mut m: serde_json::Value, a: &str, b: &str) -> serde_json::Value {
    // a → b → a: the CRD's CEL rules pass (groups and entries exist), the
    // operator's validation refuses it.
    node_mut(&mut m, a)["next"] = b.into();
    node_mut(&mut m, b)["next"] = a.into();
    m
}

#[tokio::test]
async fn an_invalid_new_pipeline_is_reported_and_creates_nothing() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let op = Operator::start(&h, "op", &[]).await?;
    let ns = "invalid";
    let mut m = with_cycle(example("orders"), "rush", "summarize");
    m["metadata"]["name"] = "loop".into();
    h.apply(ns, m).await?;
    let p = h
        .wait_pipeline(
            ns,
            "loop",
            "Ready=False, reason InvalidSpec",
            PATIENCE,
            |p| condition_of(p, "Ready") == Some(("False".into(), "InvalidSpec".into())),
        )
        .await?;
    let message = p["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or("");
    assert!(message.contains("cycle"), "{message}");
    assert_eq!(
        p["status"]["observedGeneration"],
        p["metadata"]["generation"]
    );
    let events = h.events(ns, "loop", "InvalidSpec");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "Warning");
    assert!(
        h.owned_objects(ns, "loop").is_empty(),
        "{:?}",
        h.owned_objects(ns, "loop")
    );
    // A `next` naming no node: also invisible to CEL.
    let mut m = example("hello");
    m["metadata"]["name"] = "dangling".into();
    node_mut(&mut m, "greet")["next"] = "nowhere".into();
    h.apply(ns, m).await?;
    let p = h
        .wait_pipeline(
            ns,
            "dangling",
            "Ready=False, reason InvalidSpec",
            PATIENCE,
            |p| condition_of(p, "Ready") == Some(("False".into(), "InvalidSpec".into())),
        )
        .await?;
    assert!(
        p["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("nowhere"),
        "{}",
        p["status"]
    );
    assert!(h.owned_objects(ns, "dangling").is_empty());
    // Reported once, not retried in a hot loop: later periodic reconciles
    // write nothing.
    let writes = h.writes_by(&op.user);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h.writes_by(&op.user), writes);
    assert!(h.owned_objects(ns, "loop").is_empty());
    Ok(())
}

#[tokio::test]
async fn an_invalid_update_leaves_the_running_pipeline_as_it_was() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let _op = Operator::start(&h, "op", &[]).await?;
    let ns = "update";
    let m = example("orders");
    h.apply(ns, m.clone()).await?;
    h.wait_ready(ns, "orders", PATIENCE).await?;
    let before = h.object_versions(ns, "orders");
    assert!(!before.is_empty());

    h.apply(ns, with_cycle(m.clone(), "rush", "summarize"))
        .await?;
    let p = h
        .wait_pipeline(
            ns,
            "orders",
            "Degraded=True, reason InvalidSpec",
            PATIENCE,
            |p| {
                condition_of(p, "Degraded") == Some(("True".into(), "InvalidSpec".into()))
                    && p["status"]["observedGeneration"] == p["metadata"]["generation"]
            },
        )
        .await?;
    assert_eq!(
        condition_of(&p, "Ready"),
        Some(("True".into(), "AllReplicasReady".into())),
        "the last valid spec keeps running"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        h.object_versions(ns, "orders"),
        before,
        "an invalid update changed objects"
    );
    assert_eq!(h.events(ns, "orders", "InvalidSpec").len(), 1);

    // Fixing the spec clears Degraded.
    h.apply(ns, m).await?;
    let p = h.wait_ready(ns, "orders", PATIENCE).await?;
    assert_eq!(
        condition_of(&p, "Degraded"),
        Some(("False".into(), "AsExpected".into()))
    );
    Ok(())
}

#[tokio::test]
async fn a_converged_operator_issues_no_writes() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let op = Operator::start(&h, "op", QUIET_QUEUES).await?;
    for name in example_names() {
        h.apply("steady", example(name.as_str())).await?;
    }
    for name in example_names() {
        h.wait_ready("steady", &name, PATIENCE).await?;
    }
    // Let the last status writes after the rollouts land.
    h.writes_once_settled(&op.user).await?;
    // One "Created" event per object, each naming its object.
    let p = h.pipeline("steady", "orders-redis").unwrap();
    let mut created: Vec<String> = h
        .events("steady", "orders-redis", "Created")
        .iter()
        .map(|e| e["note"].as_str().unwrap_or_default().replacen(' ', "/", 1))
        .collect();
    created.sort();
    assert_eq!(created, expected_objects(&p));
    let writes = h.writes_by(&op.user);
    let reads = h.requests_by(&op.user);
    let before = h.sim.requests().len();
    // Three requeue intervals: every pipeline is reconciled again.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let extra: Vec<_> = h
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.caller == op.user && WRITE_VERBS.contains(&r.verb.as_str()))
        .skip(writes)
        .map(|r| format!("{} {}", r.verb, r.path))
        .collect();
    assert!(extra.is_empty(), "writes in steady state: {extra:#?}");
    // Reconciles read owned objects from the watch caches: no list of a
    // pipeline's objects (the autoscaler's Deployment lists aside; KEDA's
    // kinds, not served here, are known to have no objects).
    let cached = [
        "configmaps",
        "services",
        "statefulsets",
        "poddisruptionbudgets",
        "horizontalpodautoscalers",
        "ingresses",
        "networkpolicies",
        "scaledobjects",
        "triggerauthentications",
    ];
    let lists: Vec<_> = h.sim.requests()[before..]
        .iter()
        .filter(|r| r.caller == op.user && r.verb == "list" && r.namespace.is_some())
        .filter(|r| cached.contains(&r.resource.as_str()))
        .map(|r| r.path.clone())
        .collect();
    assert!(
        lists.is_empty(),
        "owned objects listed in steady state: {lists:#?}"
    );
    assert!(
        h.requests_by(&op.user) > reads + 3 * example_names().len(),
        "no reconcile ran in the window"
    );
    assert!(op.metric("sluice_operator_reconciles_total").await? > 3.0);
    Ok(())
}

#[tokio::test]
async fn api_faults_and_cut_watches_delay_but_do_not_prevent_convergence() -> anyhow::Result<()> {
    use cluster_sim::RequestMatch;

    let h = Harness::start().await?;
    let any = RequestMatch::any;
    h.sim
        .fail_next(any().verb("patch").resource("deployments"), 3, 500);
    h.sim
        .fail_nth(any().verb("create").resource("secrets"), 1, 500);
    h.sim.fail_next(
        any().verb("patch").resource("streampipelines/status"),
        2,
        409,
    );
    h.sim
        .fail_next(any().verb("list").resource("services"), 2, 503);
    h.sim
        .fail_next(any().verb("patch").resource("configmaps"), 1, 429);
    h.sim.cut_watches_after(any().verb("watch"), 3);
    let op = Operator::start(&h, "op", &["--namespaces", "faults,elsewhere"]).await?;
    h.apply("faults", example("orders-redis")).await?;
    h.apply("faults", example("hello")).await?;
    h.apply("ignored", example("hello")).await?;
    for name in ["orders-redis", "hello"] {
        h.wait_ready("faults", name, PATIENCE).await?;
    }
    assert!(
        op.metric("sluice_operator_reconcile_errors_total{kind=\"api_server_error\"}")
            .await?
            >= 1.0
    );
    let p = h.pipeline("faults", "orders-redis").unwrap();
    assert_eq!(
        h.owned_objects("faults", "orders-redis"),
        expected_objects(&p)
    );
    // Failures are reported as events, except a write conflict retried once
    // or twice: optimistic concurrency at work, not a failure.
    let reported: Vec<String> = ["orders-redis", "hello"]
        .iter()
        .flat_map(|name| h.events("faults", name, "ReconcileFailed"))
        .map(|e| e["note"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(reported.iter().any(|n| n.contains("500")), "{reported:#?}");
    assert!(!reported.iter().any(|n| n.contains("409")), "{reported:#?}");

    // Watches end and their history is gone (410 on resume): still converges.
    h.sim.clear_faults();
    h.sim.close_watches();
    h.sim.compact_history();
    let mut m = example("orders-redis");
    group_mut(&mut m, "io")["replicas"] = 2.into();
    h.apply("faults", m).await?;
    h.wait_ready("faults", "orders-redis", PATIENCE).await?;
    let io = h
        .object("apps/v1", "Deployment", "faults", "orders-redis-io")
        .unwrap();
    assert_eq!(io["spec"]["replicas"], 2);

    // A namespace that is not watched is left alone.
    assert!(h.owned_objects("ignored", "hello").is_empty());
    assert!(h.pipeline("ignored", "hello").unwrap()["status"].is_null());

    assert_eq!(op.http_get("/healthz").await?.0, 200);
    assert_eq!(op.http_get("/readyz").await?.0, 200);
    let (code, text) = op.http_get("/metrics").await?;
    assert_eq!(code, 200);
    for family in [
        "sluice_operator_reconciles_total",
        "sluice_operator_reconcile_duration_seconds_bucket",
        "sluice_operator_objects_applied_total{kind=\"Deployment\"}",
        "sluice_operator_status_writes_total",
        "sluice_operator_leader 1",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    Ok(())
}

fn lease_holder(h: &Harness) -> Option<String> {
    h.object(
        "coordination.k8s.io/v1",
        "Lease",
        OPERATOR_NS,
        "sluice-operator-leader",
    )
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    .filter(|s| !s.is_empty())
}

const LEASE: [&str; 5] = [
    "--leader-election",
    "--lease-duration",
    "3s",
    "--lease-renew-interval",
    "500ms",
];

#[tokio::test]
async fn only_the_leader_writes_and_a_standby_takes_over_within_the_lease_duration(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let mut a = Operator::start(&h, "op-a", &LEASE).await?;
    let mut b = Operator::start(&h, "op-b", &LEASE).await?;
    let first = eventually("a leader", PATIENCE, || async { lease_holder(&h) }).await?;
    h.apply("lead", example("hello")).await?;
    h.wait_ready("lead", "hello", PATIENCE).await?;
    let (leader, standby) = if first == a.identity {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(h.writes_by(&standby.user), 0, "the standby wrote");
    assert!(h.writes_by(&leader.user) > 0);
    assert_eq!(leader.metric("sluice_operator_leader").await?, 1.0);
    assert_eq!(standby.metric("sluice_operator_leader").await?, 0.0);
    assert_eq!(
        standby.http_get("/readyz").await?.0,
        200,
        "a standby is ready"
    );

    // The leader dies without releasing: the standby waits out the lease.
    leader.kill().await;
    let killed = tokio::time::Instant::now();
    let standby_id = standby.identity.clone();
    eventually("the standby to take the lease", PATIENCE, || async {
        (lease_holder(&h).as_deref() == Some(standby_id.as_str())).then_some(())
    })
    .await?;
    let took = killed.elapsed();
    // Lease duration (3 s) plus one renew interval (500 ms) of polling, plus
    // 2.5 s of slack for a loaded 2-core machine. The slack stops there: the
    // bound is two lease durations, so a standby that waited the lease out
    // twice, or judged expiry by some longer period, still fails here.
    assert!(
        took <= Duration::from_millis(3000 + 500 + 2500),
        "took {took:?}"
    );
    h.apply("lead", example("orders")).await?;
    h.wait_ready("lead", "orders", PATIENCE).await?;
    assert!(
        h.writes_by(&standby.user) > 0,
        "the new leader did not reconcile"
    );

    // Another holder appearing makes the leader stop at once (status 3).
    let mut c = Operator::start(&h, "op-c", &LEASE).await?;
    let mut lease = h
        .object(
            "coordination.k8s.io/v1",
            "Lease",
            OPERATOR_NS,
            "sluice-operator-leader",
        )
        .unwrap();
    lease["spec"]["holderIdentity"] = "intruder".into();
    lease["spec"]["renewTime"] = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
        .into();
    h.sim.put_object(lease)?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = standby.try_exit() {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deposed leader did not exit"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(status.code(), Some(3), "{status:?}");

    // The intruder never renews: the third operator takes over, and on
    // SIGTERM it releases the lease.
    let c_id = c.identity.clone();
    eventually("the third operator to lead", PATIENCE, || async {
        (lease_holder(&h).as_deref() == Some(c_id.as_str())).then_some(())
    })
    .await?;
    let status = c.terminate().await?;
    assert!(status.success(), "{status:?}");
    assert_eq!(lease_holder(&h), None, "the lease was not released");
    Ok(())
}

#[tokio::test]
async fn the_documented_rbac_rules_are_all_the_operator_needs() -> anyhow::Result<()> {
    use serde_json::json;

    let h = Harness::start_with(cluster_sim::ClusterSimOptions {
        rbac: true,
        ..sim_options()
    })
    .await?;
    let (cluster, namespaced) = documented_rules();
    assert!(cluster.len() >= 8 && !namespaced.is_empty(), "{cluster:?}");
    for rule in cluster.iter().chain(&namespaced) {
        for verb in rule["verbs"].as_array().unwrap() {
            assert_ne!(verb, "*", "no wildcards");
        }
        if rule["resources"]
            .as_array()
            .unwrap()
            .contains(&json!("secrets"))
        {
            let verbs = rule["verbs"].as_array().unwrap();
            assert!(!verbs.contains(&json!("list")) && !verbs.contains(&json!("watch")));
        }
    }
    grant_documented_rbac(&h, "op")?;
    let op = Operator::start(&h, "op", &LEASE).await?;
    let ns = "rbac";
    for name in example_names() {
        h.apply(ns, example(name.as_str())).await?;
    }
    for name in example_names() {
        h.wait_ready(ns, &name, PATIENCE).await?;
    }
    // Every kind of write: a persistence change (Secret update, StatefulSet
    // recreated), a removed group (delete), external Redis (Secret delete),
    // an invalid spec (Warning event).
    let mut m = example("orders-redis");
    m["spec"]["redis"]["persistence"] = "none".into();
    h.apply(ns, m.clone()).await?;
    h.wait_ready(ns, "orders-redis", PATIENCE).await?;
    eventually("redis.conf re-rendered", PATIENCE, || async {
        use base64::Engine;
        let s = h.object("v1", "Secret", ns, "orders-redis-redis")?;
        let conf = base64::engine::general_purpose::STANDARD
            .decode(s["data"]["redis.conf"].as_str()?)
            .ok()?;
        String::from_utf8_lossy(&conf)
            .contains("appendonly no")
            .then_some(())
    })
    .await?;
    node_mut(&mut m, "summarize")["group"] = "cpu".into();
    m["spec"]["groups"]
        .as_array_mut()
        .unwrap()
        .retain(|g| g["name"] != "io");
    m["spec"]["redis"] =
        json!({"mode": "external", "urlSecretRef": {"name": "redis-url", "key": "url"}});
    h.apply(ns, m).await?;
    h.wait_ready(ns, "orders-redis", PATIENCE).await?;
    eventually("the password Secret deleted", PATIENCE, || async {
        h.object("v1", "Secret", ns, "orders-redis-redis")
            .is_none()
            .then_some(())
    })
    .await?;
    h.apply(ns, with_cycle(example("orders"), "rush", "summarize"))
        .await?;
    h.wait_pipeline(
        ns,
        "orders",
        "Degraded=True, reason InvalidSpec",
        PATIENCE,
        |p| condition_of(p, "Degraded") == Some(("True".into(), "InvalidSpec".into())),
    )
    .await?;
    // A few periodic reconciles and lease renewals on top.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (decided, denied) = authz_of(&h, &op.user);
    assert!(decided > 50, "{decided} decisions");
    assert!(denied.is_empty(), "denied: {denied:#?}");
    let decisions = h.sim.authz_decisions();
    let decisions: Vec<_> = decisions.iter().filter(|d| d.user == op.user).collect();
    // The run exercised the rules that matter (the stand-in checks `patch`,
    // not `create`, for an apply that creates).
    let used: std::collections::BTreeSet<String> = decisions
        .iter()
        .map(|d| {
            let a = &d.attributes;
            let res = if a.subresource.is_empty() {
                a.resource.clone()
            } else {
                format!("{}/{}", a.resource, a.subresource)
            };
            format!("{} {res}", a.verb)
        })
        .collect();
    for needed in [
        "list streampipelines",
        "watch streampipelines",
        "patch streampipelines/status",
        "watch deployments",
        "patch deployments",
        "delete deployments",
        "delete statefulsets",
        "list configmaps",
        "get secrets",
        "create secrets",
        "update secrets",
        "delete secrets",
        "create events",
        "patch events",
        "get leases",
        "create leases",
        "update leases",
    ] {
        assert!(used.contains(needed), "{needed} not exercised: {used:#?}");
    }
    Ok(())
}

#[test]
fn help_documents_every_flag_with_its_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-operator"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    // Each option's block runs until the next line that starts an option.
    let mut blocks: Vec<String> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with("--") || t.starts_with("-h,") || t.starts_with("-V,") {
            blocks.push(String::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.push_str(t);
            b.push(' ');
        }
    }
    let documented: Vec<&String> = blocks
        .iter()
        .filter(|b| !b.starts_with("-h,") && !b.starts_with("-V,"))
        .collect();
    assert!(documented.len() >= 20, "{help}");
    for b in documented {
        assert!(b.contains("[env: SLUICE_"), "no variable: {b}");
    }
    for flag in [
        "--namespaces",
        "--metrics-addr",
        "--leader-election",
        "--lease-namespace",
        "--lease-name",
        "--ingress-image",
        "--worker-image",
        "--redis-image",
        "--image-pull-policy",
        "--log-format",
    ] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
}

#[tokio::test]
async fn drift_is_repaired_and_a_persistence_change_recreates_redis() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let _op = Operator::start(&h, "op", &[]).await?;
    let ns = "drift";
    let mut m = example("orders-redis");
    h.apply(ns, m.clone()).await?;
    h.wait_ready(ns, "orders-redis", PATIENCE).await?;

    // Hand edits and deletions of objects the operator does not watch are
    // undone by the periodic requeue.
    let mut cm = h
        .object("v1", "ConfigMap", ns, "orders-redis-pipeline")
        .unwrap();
    let original = cm["data"].clone();
    cm["data"]["pipeline.yaml"] = "edited by hand".into();
    h.sim.put_object(cm)?;
    h.sim
        .delete_object("v1", "Service", Some(ns), "orders-redis")?;
    h.sim
        .delete_object("v1", "Secret", Some(ns), "orders-redis-ipc-keys")?;
    eventually(
        "the ConfigMap, Service and key ring restored",
        PATIENCE,
        || async {
            let cm = h.object("v1", "ConfigMap", ns, "orders-redis-pipeline")?;
            (cm["data"] == original
                && h.object("v1", "Service", ns, "orders-redis").is_some()
                && h.object("v1", "Secret", ns, "orders-redis-ipc-keys")
                    .is_some())
            .then_some(())
        },
    )
    .await?;

    // persistence aof → none: volumeClaimTemplates cannot change, so the
    // StatefulSet is recreated; redis.conf follows with the same password.
    let sts = h
        .object("apps/v1", "StatefulSet", ns, "orders-redis-redis")
        .unwrap();
    let secret = h.object("v1", "Secret", ns, "orders-redis-redis").unwrap();
    m["spec"]["redis"]["persistence"] = "none".into();
    h.apply(ns, m).await?;
    h.wait_ready(ns, "orders-redis", PATIENCE).await?;
    let recreated = eventually("the StatefulSet recreated", PATIENCE, || async {
        let s = h.object("apps/v1", "StatefulSet", ns, "orders-redis-redis")?;
        (s["metadata"]["uid"] != sts["metadata"]["uid"]).then_some(s)
    })
    .await?;
    assert!(recreated["spec"]["volumeClaimTemplates"]
        .as_array()
        .is_none_or(|v| v.is_empty()));
    let now = h.object("v1", "Secret", ns, "orders-redis-redis").unwrap();
    assert_eq!(now["data"]["password"], secret["data"]["password"]);
    let conf = now["data"]["redis.conf"].as_str().unwrap();
    use base64::Engine;
    let conf = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(conf)?)?;
    assert!(conf.contains("appendonly no"), "{conf}");
    assert!(!h.events(ns, "orders-redis", "Recreating").is_empty());
    Ok(())
}
