//! Hostile StreamPipelines beside valid ones: what the API server stores but
//! the Rust types cannot read (wrong JSON types under the free-form fields,
//! nesting deeper than serde_json's default limit, an overflowing duration)
//! is reported on that pipeline's own status, never stops the operator, and
//! costs no writes at steady state.

mod support;

use std::time::Duration;

use anyhow::Context;
use cluster_sim::RequestMatch;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use support::{condition_of, example, Harness, Operator, API_VERSION, KIND, QUIET_QUEUES};

const PATIENCE: Duration = Duration::from_secs(30);
const NS: &str = "hostile";

/// The CRD with `next` and `with` accepting anything, as a cluster may hold
/// objects stored before a tighter schema was installed: the operator must
/// cope with whatever is stored, not only with what admission lets in now.
async fn loosen_crd(h: &Harness) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(h.admin.clone());
    let name = "streampipelines.sluice.dev";
    let mut crd = serde_json::to_value(api.get(name).await?)?;
    let node = crd
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/nodes/items/properties")
        .context("node schema")?;
    node["next"] = json!({"x-kubernetes-preserve-unknown-fields": true});
    node["with"] = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let crd: CustomResourceDefinition = serde_json::from_value(crd)?;
    api.replace(name, &PostParams::default(), &crd).await?;
    Ok(())
}

/// `hello` named `name`, with `edit` applied to its only node.
fn hello(name: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut m = example("hello");
    m["apiVersion"] = API_VERSION.into();
    m["kind"] = KIND.into();
    m["metadata"] = json!({"name": name, "namespace": NS});
    edit(&mut m["spec"]["nodes"][0]);
    m
}

fn nested(levels: usize) -> Value {
    (0..levels).fold(json!("leaf"), |v, _| json!({ "k": v }))
}

#[tokio::test]
async fn unreadable_pipelines_are_reported_on_their_own_and_block_no_other() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    loosen_crd(&h).await?;
    h.namespace(NS)?;
    // Poison first, so the operator's first list already holds it.
    let hostile: [(&str, Value, &str); 4] = [
        (
            "next-int",
            hello("next-int", |n| n["next"] = json!(3)),
            "spec.nodes[0].next",
        ),
        (
            "next-map",
            hello("next-map", |n| n["next"] = json!({"to": "x"})),
            "spec.nodes[0].next",
        ),
        (
            "deep-with",
            hello("deep-with", |n| n["with"] = nested(200)),
            "spec.nodes[0].with",
        ),
        (
            "huge-lease",
            hello("huge-lease", |_| {}),
            "spec.limits.lease",
        ),
    ];
    for (name, mut m, _) in hostile.clone() {
        if name == "huge-lease" {
            m["spec"]["limits"] = json!({"lease": "18446744073709551615s"});
        }
        h.sim
            .put_object(m)
            .with_context(|| format!("storing {name}"))?;
    }
    // What the CRD refuses at admission never reaches the operator.
    let mut colon = hello("colon-path", |_| {});
    colon["spec"]["interfaces"][0]["path"] = json!("/v1/:id");
    let mut evil = hello("x", |_| {});
    evil["metadata"]["name"] = json!("Evil_Name");
    // (`next` and `with` are loosened above; the CRD's own rules for them
    // are pinned in crds/tests.)
    for refused in [colon, evil] {
        let name = refused["metadata"]["name"].clone();
        assert!(h.sim.put_object(refused).is_err(), "{name} was admitted");
    }
    let op = Operator::start(&h, "op", QUIET_QUEUES).await?;
    let mut good = example("orders");
    good["metadata"]["name"] = "good".into();
    h.apply(NS, good).await?;
    h.wait_ready(NS, "good", PATIENCE).await?;

    for (name, _, path) in &hostile {
        let p = h
            .wait_pipeline(
                NS,
                name,
                &format!("{name}: Ready=False, InvalidSpec"),
                PATIENCE,
                |p| condition_of(p, "Ready") == Some(("False".into(), "InvalidSpec".into())),
            )
            .await?;
        let message = p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["message"].as_str())
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(path), "{name}: {message}");
        assert!(h.owned_objects(NS, name).is_empty(), "{name} got objects");
        assert_eq!(h.events(NS, name, "InvalidSpec").len(), 1, "{name}");
    }
    assert!(op.metric("sluice_operator_invalid_specs_total").await? >= 4.0);

    // A pipeline created after the poison is still served.
    let mut later = example("hello");
    later["metadata"]["name"] = "later".into();
    h.apply(NS, later).await?;
    h.wait_ready(NS, "later", PATIENCE).await?;

    // Steady state: once the last rollout's status has landed, three
    // requeue intervals of the same objects write nothing.
    let writes = h.writes_once_settled(&op.user).await?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let extra = &h.writes_of(&op.user)[writes..];
    assert!(extra.is_empty(), "writes at steady state: {extra:?}");
    let mut op = op;
    assert!(op.try_exit().is_none(), "the operator exited");
    Ok(())
}

#[tokio::test]
async fn a_failing_pipeline_watch_is_counted_and_recovers() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    // A 403 is not retried by the client itself: each one is a failed
    // request of the watcher, retried with its backoff.
    // Watch requests: only the controller's watcher makes them (the
    // autoscaler lists), so every failure counted is one of the watch's.
    h.sim.fail_next(
        RequestMatch::any()
            .verb("watch")
            .resource("streampipelines"),
        3,
        403,
    );
    let op = Operator::start(&h, "op", &[]).await?;
    let mut m = example("hello");
    m["metadata"]["name"] = "after".into();
    h.apply(NS, m).await?;
    h.wait_ready(NS, "after", PATIENCE).await?;
    support::eventually("three watch failures counted", PATIENCE, || async {
        let n = op.metric("sluice_operator_watch_errors_total").await.ok()?;
        (n == 3.0).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(op.metric("sluice_operator_watch_errors_total").await?, 3.0);
    let (code, _) = op.http_get("/readyz").await?;
    assert_eq!(code, 200);
    Ok(())
}

#[tokio::test]
async fn a_name_taken_by_another_pipeline_or_by_hand_is_never_taken_over() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let op = Operator::start(&h, "op", QUIET_QUEUES).await?;
    // `shop` with managed Redis owns Service `shop-redis`; pipeline
    // `shop-redis` names its ingress Service the same.
    let mut shop = example("orders-redis");
    shop["metadata"]["name"] = "shop".into();
    h.apply(NS, shop).await?;
    h.wait_ready(NS, "shop", PATIENCE).await?;
    let service = h
        .object("v1", "Service", NS, "shop-redis")
        .expect("shop's Redis Service");
    let mut clash = example("hello");
    clash["metadata"]["name"] = "shop-redis".into();
    h.apply(NS, clash).await?;
    let p = h
        .wait_pipeline(NS, "shop-redis", "Degraded=True, Conflict", PATIENCE, |p| {
            condition_of(p, "Degraded") == Some(("True".into(), "Conflict".into()))
        })
        .await?;
    let message = p.to_string();
    assert!(message.contains("Service shop-redis"), "{message}");
    assert!(message.contains("StreamPipeline shop"), "{message}");
    // Shop's Service is untouched and still shop's.
    let now = h.object("v1", "Service", NS, "shop-redis").unwrap();
    assert_eq!(now["metadata"]["uid"], service["metadata"]["uid"]);
    assert_eq!(
        now["metadata"]["ownerReferences"],
        service["metadata"]["ownerReferences"]
    );
    assert_eq!(
        now["metadata"]["resourceVersion"],
        service["metadata"]["resourceVersion"]
    );
    h.wait_ready(NS, "shop", PATIENCE).await?;

    // A ConfigMap made by hand under a pipeline's name.
    h.sim
        .put_object(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "mine-pipeline", "namespace": NS}, "data": {"k": "v"}}))?;
    let mut mine = example("hello");
    mine["metadata"]["name"] = "mine".into();
    h.apply(NS, mine).await?;
    h.wait_pipeline(NS, "mine", "Degraded=True, Conflict", PATIENCE, |p| {
        condition_of(p, "Degraded") == Some(("True".into(), "Conflict".into()))
    })
    .await?;
    let cm = h.object("v1", "ConfigMap", NS, "mine-pipeline").unwrap();
    assert_eq!(cm["data"], json!({"k": "v"}));
    assert!(cm["metadata"]["ownerReferences"].is_null());
    assert_eq!(h.events(NS, "mine", "Conflict").len(), 1);
    // Reported once: the requeues that follow write nothing.
    let writes = h.writes_once_settled(&op.user).await?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(h.writes_by(&op.user), writes, "writes at steady state");
    // Whatever settled before the window reported the conflict no more.
    assert_eq!(h.events(NS, "mine", "Conflict").len(), 1);
    Ok(())
}

/// `kubectl apply --server-side -f` of one manifest: (succeeded, output).
async fn kubectl_apply(h: &Harness, manifest: &Value) -> anyhow::Result<(bool, String)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, serde_json::to_string(manifest)?)?;
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("kubectl")
            .env("KUBECONFIG", h.sim.kubeconfig_path())
            .env("KUBECACHEDIR", dir.path().join("cache"))
            .args(["apply", "--server-side", "-f"])
            .arg(&file)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("kubectl timed out")?
    .context("running kubectl")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[tokio::test]
async fn kubectl_apply_of_hostile_pipelines_is_refused_at_admission() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.namespace(NS)?;
    let deep = (0..200).fold(json!("leaf"), |v, _| json!({ "k": v }));
    let mut colon = hello("colon", |_| {});
    colon["spec"]["interfaces"][0]["path"] = json!("/v1/:id");
    // (An overflowing duration is admitted — the schema checks its form —
    // and reported InvalidSpec by the operator; see the test above.)
    let cases: [(Value, &str); 4] = [
        (hello("next-int", |n| n["next"] = json!(3)), "next"),
        (
            hello("next-map", |n| n["next"] = json!({"to": "x"})),
            "next",
        ),
        (colon, "path"),
        (hello("with-list", |n| n["with"] = json!([1, 2])), "with"),
    ];
    for (m, field) in cases {
        let name = m["metadata"]["name"].clone();
        let (ok, out) = kubectl_apply(&h, &m).await?;
        assert!(!ok, "{name} was admitted: {out}");
        assert!(out.contains(field), "{name}: {out}");
        assert!(h.pipeline(NS, name.as_str().unwrap_or_default()).is_none());
    }
    // Deep nesting is stored, as a real API server stores it (the operator
    // reports it; see the test above), and a valid pipeline applies.
    let (ok, out) = kubectl_apply(&h, &hello("deep", |n| n["with"] = deep)).await?;
    assert!(ok, "{out}");
    let (ok, out) = kubectl_apply(&h, &hello("fine", |_| {})).await?;
    assert!(ok, "{out}");
    Ok(())
}
