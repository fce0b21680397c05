//! Workload controllers: a Deployment rollout passes through Progressing to Available, and a
//! held one reports ProgressDeadlineExceeded.

use std::time::Duration;

use cluster_sim::ClusterSimOptions;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::common::{eventually, start_with};

const PATIENCE: Duration = Duration::from_secs(10);

fn deployment(image: &str, deadline: u32) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "progressDeadlineSeconds": deadline,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}
    })
}

fn cond<'a>(
    s: &'a DeploymentStatus,
    t: &str,
) -> Option<&'a k8s_openapi::api::apps::v1::DeploymentCondition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == t)
}

#[tokio::test]
async fn deployment_rollout_goes_from_progressing_to_available() -> anyhow::Result<()> {
    let (sim, client) = start_with(ClusterSimOptions {
        step_delay: Duration::from_millis(60),
        ..Default::default()
    })
    .await?;
    let api: Api<Deployment> = Api::namespaced(client, "default");
    api.patch(
        "web",
        &PatchParams::apply("op"),
        &Patch::Apply(deployment("v1", 600)),
    )
    .await?;
    let mid = eventually("rollout in progress", PATIENCE, || {
        let api = api.clone();
        async move {
            let s = api.get("web").await.ok()?.status?;
            let p = cond(&s, "Progressing")?;
            (p.reason.as_deref() == Some("ReplicaSetUpdated")
                && s.updated_replicas.unwrap_or(0) < 3)
                .then_some(s)
        }
    })
    .await?;
    assert_eq!(mid.observed_generation, Some(1));
    let done = eventually("rollout complete", PATIENCE, || {
        let api = api.clone();
        async move {
            let s = api.get("web").await.ok()?.status?;
            (cond(&s, "Progressing")?.reason.as_deref() == Some("NewReplicaSetAvailable"))
                .then_some(s)
        }
    })
    .await?;
    assert_eq!(
        (
            done.replicas,
            done.updated_replicas,
            done.ready_replicas,
            done.available_replicas
        ),
        (Some(3), Some(3), Some(3), Some(3))
    );
    assert_eq!(
        cond(&done, "Available").map(|c| c.status.as_str()),
        Some("True")
    );

    // a template change is a new rollout with a new observedGeneration
    api.patch(
        "web",
        &PatchParams::apply("op"),
        &Patch::Apply(deployment("v2", 600)),
    )
    .await?;
    let again = eventually("second rollout complete", PATIENCE, || {
        let api = api.clone();
        async move {
            let d = api.get("web").await.ok()?;
            let s = d.status?;
            (s.observed_generation == Some(2)
                && cond(&s, "Progressing")?.reason.as_deref() == Some("NewReplicaSetAvailable")
                && s.updated_replicas == Some(3))
            .then_some(s)
        }
    })
    .await?;
    assert_eq!(
        again.replicas,
        Some(3),
        "old replicas are gone when the rollout completes"
    );

    // one ReplicaSet per template, owned by the Deployment; the old one is scaled to zero
    let sets: Api<ReplicaSet> = Api::namespaced(api.into_client(), "default");
    let rs = eventually("ReplicaSets settled", PATIENCE, || {
        let sets = sets.clone();
        async move {
            let items = sets.list(&Default::default()).await.ok()?.items;
            let ready: Vec<i32> = items
                .iter()
                .filter_map(|r| r.status.as_ref().map(|s| s.ready_replicas.unwrap_or(0)))
                .collect();
            (items.len() == 2 && ready.iter().sum::<i32>() == 3 && ready.contains(&0))
                .then_some(items)
        }
    })
    .await?;
    for r in &rs {
        let owner = r
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .map(|o| o.name.clone());
        assert_eq!(owner.as_deref(), Some("web"));
        let hash = r
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            r.metadata.name.clone().unwrap_or_default(),
            format!("web-{hash}")
        );
    }
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_held_rollout_reports_progress_deadline_exceeded() -> anyhow::Result<()> {
    let (sim, client) = start_with(ClusterSimOptions {
        step_delay: Duration::from_millis(10),
        // progressDeadlineSeconds counts in units of 10 ms here
        progress_deadline_unit: Duration::from_millis(10),
        ..Default::default()
    })
    .await?;
    sim.hold_rollout("default", "web");
    let api: Api<Deployment> = Api::namespaced(client, "default");
    api.patch(
        "web",
        &PatchParams::apply("op"),
        &Patch::Apply(deployment("v1", 20)),
    )
    .await?;
    let s = eventually("ProgressDeadlineExceeded", PATIENCE, || {
        let api = api.clone();
        async move {
            let s = api.get("web").await.ok()?.status?;
            let p = cond(&s, "Progressing")?;
            (p.status == "False" && p.reason.as_deref() == Some("ProgressDeadlineExceeded"))
                .then_some(s)
        }
    })
    .await?;
    assert_ne!(
        s.updated_replicas,
        Some(3),
        "a held rollout does not complete"
    );
    sim.release_rollout("default", "web");
    eventually("released rollout completes", PATIENCE, || {
        let api = api.clone();
        async move {
            let s = api.get("web").await.ok()?.status?;
            (cond(&s, "Progressing")?.reason.as_deref() == Some("NewReplicaSetAvailable"))
                .then_some(())
        }
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}
