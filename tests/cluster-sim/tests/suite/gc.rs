//! Garbage collection through ownerReferences (background and foreground), finalizers, and
//! StatefulSet PVC retention.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::common::{eventually, start};

const PATIENCE: Duration = Duration::from_secs(10);

async fn owner_and_child(
    cms: &Api<ConfigMap>,
    child_finalizer: Option<&str>,
) -> anyhow::Result<ConfigMap> {
    let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}}))?;
    let owner = cms.create(&PostParams::default(), &owner).await?;
    let mut oref = owner
        .controller_owner_ref(&())
        .ok_or_else(|| anyhow::anyhow!("owner has name and uid"))?;
    // foreground deletion waits only for dependents that block it (kube-rs leaves this unset)
    oref.block_owner_deletion = Some(true);
    let mut child = json!({"metadata": {"name": "child", "ownerReferences": [oref]}});
    if let Some(f) = child_finalizer {
        child["metadata"]["finalizers"] = json!([f]);
    }
    cms.create(&PostParams::default(), &serde_json::from_value(child)?)
        .await?;
    Ok(owner)
}

#[tokio::test]
async fn background_deletion_removes_dependents_after_the_owner() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    owner_and_child(&cms, None).await?;
    cms.delete("owner", &DeleteParams::background()).await?;
    assert!(cms.get_opt("owner").await?.is_none(), "owner goes at once");
    eventually("dependent collected", PATIENCE, || {
        let cms = cms.clone();
        async move { matches!(cms.get_opt("child").await, Ok(None)).then_some(()) }
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn foreground_deletion_keeps_the_owner_until_dependents_are_gone() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    owner_and_child(&cms, Some("sim.example.com/hold")).await?;
    cms.delete("owner", &DeleteParams::foreground()).await?;
    let child = eventually("dependent marked for deletion", PATIENCE, || {
        let cms = cms.clone();
        async move {
            cms.get_opt("child")
                .await
                .ok()
                .flatten()
                .filter(|c| c.metadata.deletion_timestamp.is_some())
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let owner = cms
        .get_opt("owner")
        .await?
        .ok_or_else(|| anyhow::anyhow!("owner must wait for its dependent"))?;
    assert!(owner.metadata.deletion_timestamp.is_some());
    assert!(
        owner
            .finalizers()
            .contains(&"foregroundDeletion".to_string()),
        "{:?}",
        owner.finalizers()
    );

    // releasing the dependent's finalizer lets both go
    cms.patch(
        "child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    drop(child);
    eventually("owner and dependent gone", PATIENCE, || {
        let cms = cms.clone();
        async move {
            let none = cms
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty();
            none.then_some(())
        }
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}

fn sts(name: &str, when_deleted: &str) -> serde_json::Value {
    sts_with(name, when_deleted, "Retain", 2)
}

fn sts_with(name: &str, when_deleted: &str, when_scaled: &str, replicas: i32) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": when_deleted, "whenScaled": when_scaled},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "redis"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
        }
    })
}

#[tokio::test]
async fn statefulset_pvcs_follow_the_retention_policy() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client, "default");
    for (name, policy) in [("keep", "Retain"), ("drop", "Delete")] {
        sets.patch(
            name,
            &PatchParams::apply("op"),
            &Patch::Apply(sts(name, policy)),
        )
        .await?;
    }
    for name in ["data-keep-0", "data-keep-1", "data-drop-0", "data-drop-1"] {
        eventually(
            &format!("PVC {name} created from the claim template"),
            PATIENCE,
            || {
                let pvcs = pvcs.clone();
                async move { pvcs.get_opt(name).await.ok().flatten() }
            },
        )
        .await?;
    }
    let ready = eventually("StatefulSet keep rolled out", PATIENCE, || {
        let sets = sets.clone();
        async move {
            let s = sets.get("keep").await.ok()?.status?;
            (s.ready_replicas == Some(2) && s.current_revision == s.update_revision).then_some(s)
        }
    })
    .await?;
    assert!(ready
        .update_revision
        .unwrap_or_default()
        .starts_with("keep-"));
    for name in ["keep", "drop"] {
        sets.delete(name, &DeleteParams::default()).await?;
    }
    eventually("PVCs of the Delete policy collected", PATIENCE, || {
        let pvcs = pvcs.clone();
        async move {
            let names: Vec<String> = pvcs
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .map(|p| p.name_any())
                .collect();
            (names == ["data-keep-0", "data-keep-1"]).then_some(())
        }
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_contents_then_itself() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    let (sim, client) = start().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "tmp"}}))?,
        )
        .await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "tmp");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "c"}}))?,
    )
    .await?;
    namespaces.delete("tmp", &DeleteParams::default()).await?;
    eventually("namespace and its contents gone", PATIENCE, || {
        let (namespaces, cms) = (namespaces.clone(), cms.clone());
        async move {
            let ns_gone = matches!(namespaces.get_opt("tmp").await, Ok(None));
            let cm_gone = cms
                .list(&ListParams::default())
                .await
                .map(|l| l.items.is_empty())
                .unwrap_or(true);
            (ns_gone && cm_gone).then_some(())
        }
    })
    .await?;
    let missing = Api::<ConfigMap>::namespaced(client.clone(), "nowhere")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "c"}}))?,
        )
        .await
        .expect_err("namespace must exist");
    assert_eq!(crate::common::api_code(&missing), Some(404));
    let protected = namespaces
        .delete("default", &DeleteParams::default())
        .await
        .expect_err("default is protected");
    assert_eq!(crate::common::api_code(&protected), Some(403));
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn scaling_down_with_when_scaled_delete_removes_the_ordinals_pvcs() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client, "default");
    sets.patch(
        "s",
        &PatchParams::apply("op"),
        &Patch::Apply(sts_with("s", "Retain", "Delete", 3)),
    )
    .await?;
    eventually("three PVCs", PATIENCE, || {
        let pvcs = pvcs.clone();
        async move { (pvcs.list(&ListParams::default()).await.ok()?.items.len() == 3).then_some(()) }
    })
    .await?;
    sets.patch(
        "s",
        &PatchParams::apply("op"),
        &Patch::Apply(sts_with("s", "Retain", "Delete", 1)),
    )
    .await?;
    eventually("only data-s-0 left after scaling to 1", PATIENCE, || {
        let pvcs = pvcs.clone();
        async move {
            let names: Vec<String> = pvcs
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .map(|p| p.name_any())
                .collect();
            (names == ["data-s-0"]).then_some(())
        }
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}
