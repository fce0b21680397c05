//! Every pod sluice renders is admitted under the `restricted` Pod Security Standard: a
//! StreamPipeline with managed Redis, worker groups and a web ingress, in a namespace labelled
//! `pod-security.kubernetes.io/enforce: restricted`, becomes Ready. The stand-in refuses the
//! pods of a template breaking the level as the API server does, so a Deployment or the Redis
//! StatefulSet would otherwise never get a ready replica (and would report `ReplicaFailure`
//! or a `FailedCreate` event naming the failing check).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{example, Harness, Operator};

const PATIENCE: Duration = Duration::from_secs(30);
const NS: &str = "locked-down";
const PIPELINE: &str = "orders-redis";

/// What the stand-in reports about refused pods in the namespace.
fn refusals(h: &Harness) -> Vec<String> {
    let mut out = Vec::new();
    for d in h
        .sim
        .list_objects("apps/v1", "Deployment", Some(NS))
        .unwrap_or_default()
    {
        for c in d["status"]["conditions"].as_array().into_iter().flatten() {
            if c["type"] == "ReplicaFailure" {
                out.push(format!(
                    "Deployment {}: {}",
                    d["metadata"]["name"], c["message"]
                ));
            }
        }
    }
    for e in h
        .sim
        .list_objects("v1", "Event", Some(NS))
        .unwrap_or_default()
    {
        if e["reason"] == "FailedCreate" {
            out.push(format!(
                "{} {}: {}",
                e["involvedObject"]["kind"], e["involvedObject"]["name"], e["message"]
            ));
        }
    }
    out
}

#[tokio::test]
async fn a_pipeline_with_redis_groups_and_web_becomes_ready_under_restricted() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    h.sim.put_object(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NS, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
            "pod-security.kubernetes.io/warn": "restricted"}},
    }))?;
    let _op = Operator::start(&h, "op", &[]).await?;
    let manifest = example(PIPELINE);
    assert_eq!(manifest["spec"]["redis"]["mode"], "managed");
    assert!(manifest["spec"]["groups"]
        .as_array()
        .is_some_and(|g| g.len() >= 2 && g.iter().any(|g| g["role"] == "ingress")));
    h.apply(NS, manifest).await?;
    let ready = h.wait_ready(NS, PIPELINE, PATIENCE).await;
    let refused = refusals(&h);
    assert!(
        refused.is_empty(),
        "pods refused under restricted:\n{}",
        refused.join("\n")
    );
    ready?;

    // every workload sluice rendered ran all its replicas
    let mut workloads: Vec<Value> = h
        .sim
        .list_objects("apps/v1", "Deployment", Some(NS))
        .unwrap_or_default();
    workloads.extend(
        h.sim
            .list_objects("apps/v1", "StatefulSet", Some(NS))
            .unwrap_or_default(),
    );
    let names: Vec<&str> = workloads
        .iter()
        .filter_map(|w| w["metadata"]["name"].as_str())
        .collect();
    assert!(names.contains(&"orders-redis-redis"), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("-web")), "{names:?}");
    assert!(workloads.len() >= 3, "{names:?}");
    for w in &workloads {
        let want = w["spec"]["replicas"].as_i64().unwrap_or(1);
        assert_eq!(
            w["status"]["readyReplicas"].as_i64().unwrap_or(0),
            want,
            "{}: {}",
            w["metadata"]["name"],
            w["status"]
        );
    }
    Ok(())
}
