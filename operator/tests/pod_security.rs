//! Every pod sluice renders is admitted under the `restricted` Pod Security Standard: a
//! StreamPipeline with managed Redis, worker groups and a web ingress, and one with tcp
//! backends (a container per group in one pod), each in a namespace labelled
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

/// The namespace [`NS`], enforcing `restricted`.
fn restricted_namespace(h: &Harness) -> anyhow::Result<()> {
    h.sim.put_object(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NS, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
            "pod-security.kubernetes.io/warn": "restricted"}},
    }))?;
    Ok(())
}

/// Applies example `pipeline` in [`NS`], waits for it to become Ready with
/// no pod refused, and returns its workloads, each of which ran all its
/// replicas.
async fn ready_under_restricted(h: &Harness, pipeline: &str) -> anyhow::Result<Vec<Value>> {
    h.apply(NS, example(pipeline)).await?;
    let ready = h.wait_ready(NS, pipeline, PATIENCE).await;
    let refused = refusals(h);
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
    Ok(workloads)
}

fn names(workloads: &[Value]) -> Vec<&str> {
    workloads
        .iter()
        .filter_map(|w| w["metadata"]["name"].as_str())
        .collect()
}

#[tokio::test]
async fn a_pipeline_with_redis_groups_and_web_becomes_ready_under_restricted() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    restricted_namespace(&h)?;
    let _op = Operator::start(&h, "op", &[]).await?;
    let manifest = example(PIPELINE);
    assert_eq!(manifest["spec"]["redis"]["mode"], "managed");
    assert!(manifest["spec"]["groups"]
        .as_array()
        .is_some_and(|g| g.len() >= 2 && g.iter().any(|g| g["role"] == "ingress")));
    let workloads = ready_under_restricted(&h, PIPELINE).await?;
    let names = names(&workloads);
    assert!(names.contains(&"orders-redis-redis"), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("-web")), "{names:?}");
    assert!(workloads.len() >= 3, "{names:?}");
    Ok(())
}

/// The pod of a tcp pipeline — the ingress, a container per worker group,
/// their `preStop` hooks — is admitted under `restricted` too.
#[tokio::test]
async fn a_tcp_pipelines_pod_with_a_container_per_group_becomes_ready_under_restricted(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    restricted_namespace(&h)?;
    let _op = Operator::start(&h, "op", &[]).await?;
    let workloads = ready_under_restricted(&h, "orders-tcp").await?;
    assert_eq!(names(&workloads), ["orders-tcp-web"]);
    let containers: Vec<&str> = workloads[0]["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(containers, ["ingress", "worker-cpu", "worker-io"]);
    Ok(())
}
