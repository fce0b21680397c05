//! Managed Redis's volume under real API-server rules (the stand-in stores
//! quantities in canonical form, refuses changes of a StatefulSet's claim
//! templates and a claim's shrinking, and lets a claim grow only when its
//! StorageClass allows expansion): a non-canonical size never loops, a
//! larger size expands the claim in place, a smaller one is refused with a
//! condition, and deleting the pipeline keeps the data.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{condition_of, example, Harness, Operator, QUIET_QUEUES};

const PATIENCE: Duration = Duration::from_secs(30);
const NS: &str = "storage";
const CLAIM: &str = "data-orders-redis-redis-0";
const SET: &str = "orders-redis-redis";

fn storage_class(expandable: bool) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "standard",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "example.com/csi",
        "allowVolumeExpansion": expandable,
    })
}

fn with_storage(size: &str) -> Value {
    let mut m = example("orders-redis");
    m["spec"]["redis"]["storage"] = json!(size);
    m
}

fn claim_size(h: &Harness) -> Option<String> {
    let c = h.object("v1", "PersistentVolumeClaim", NS, CLAIM)?;
    c.pointer("/spec/resources/requests/storage")?
        .as_str()
        .map(str::to_string)
}

fn uid(v: &Value) -> String {
    v["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn storage_grows_in_place_never_shrinks_and_outlives_the_pipeline() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.sim.put_object(storage_class(true))?;
    let op = Operator::start(&h, "op", QUIET_QUEUES).await?;

    // 1024Mi is stored as 1Gi: compared by value, nothing loops.
    h.apply(NS, with_storage("1024Mi")).await?;
    h.wait_ready(NS, "orders-redis", PATIENCE).await?;
    let set = h
        .object("apps/v1", "StatefulSet", NS, SET)
        .expect("Redis StatefulSet");
    assert_eq!(
        set.pointer("/spec/volumeClaimTemplates/0/spec/resources/requests/storage"),
        Some(&json!("1Gi"))
    );
    support::eventually("the Redis claim", PATIENCE, || async { claim_size(&h) }).await?;
    let claim = h.object("v1", "PersistentVolumeClaim", NS, CLAIM).unwrap();
    // Let the rollout's last status write land, then watch three requeues.
    let writes = h.writes_once_settled(&op.user).await?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let extra = &h.writes_of(&op.user)[writes..];
    assert!(extra.is_empty(), "writes at steady state: {extra:?}");
    assert_eq!(
        uid(&h.object("apps/v1", "StatefulSet", NS, SET).unwrap()),
        uid(&set)
    );

    // Grow: the same claim, a larger request; the StatefulSet is replaced.
    h.apply(NS, with_storage("2Gi")).await?;
    support::eventually("the claim raised to 2Gi", PATIENCE, || async {
        (claim_size(&h).as_deref() == Some("2Gi")).then_some(())
    })
    .await?;
    h.wait_ready(NS, "orders-redis", PATIENCE).await?;
    let after = h.object("v1", "PersistentVolumeClaim", NS, CLAIM).unwrap();
    assert_eq!(uid(&after), uid(&claim), "the claim was replaced");
    let new_set = h.object("apps/v1", "StatefulSet", NS, SET).unwrap();
    assert_ne!(uid(&new_set), uid(&set));
    assert_eq!(
        new_set.pointer("/spec/volumeClaimTemplates/0/spec/resources/requests/storage"),
        Some(&json!("2Gi"))
    );
    assert_eq!(h.events(NS, "orders-redis", "Resized").len(), 1);
    // One delete of the old StatefulSet, not a loop. (It orphans its pods so
    // the new one adopts the running Redis pod; the stand-in runs no pods,
    // so that part is the operator's DeleteParams::orphan, not seen here.)
    let deletes: Vec<String> = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.caller == op.user && r.verb == "delete" && r.resource == "statefulsets")
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");

    // Shrink: refused and reported, the claims untouched; the rest of the
    // StatefulSet still follows the spec (here a smaller maxMemory, whose
    // container memory is 125 % of it).
    let mut shrink = with_storage("1Gi");
    shrink["spec"]["redis"]["maxMemory"] = json!("128Mi");
    h.apply(NS, shrink).await?;
    let p = h
        .wait_pipeline(
            NS,
            "orders-redis",
            "Degraded=True, StorageShrinkRefused; Ready",
            PATIENCE,
            |p| {
                condition_of(p, "Degraded") == Some(("True".into(), "StorageShrinkRefused".into()))
                    && condition_of(p, "Ready").is_some_and(|c| c.0 == "True")
            },
        )
        .await?;
    assert_eq!(
        p["status"]["observedGeneration"],
        p["metadata"]["generation"]
    );
    assert_eq!(claim_size(&h).as_deref(), Some("2Gi"));
    let held = h.object("apps/v1", "StatefulSet", NS, SET).unwrap();
    assert_eq!(uid(&held), uid(&new_set));
    assert_eq!(
        held.pointer("/spec/volumeClaimTemplates/0/spec/resources/requests/storage"),
        Some(&json!("2Gi"))
    );
    assert_eq!(
        held.pointer("/spec/template/spec/containers/0/resources/limits/memory"),
        Some(&json!("160Mi")),
        "{}",
        held["spec"]["template"]["spec"]["containers"][0]
    );
    // Held claims are no reason to write again.
    let writes = h.writes_once_settled(&op.user).await?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let extra = &h.writes_of(&op.user)[writes..];
    assert!(
        extra.is_empty(),
        "writes while the shrink is refused: {extra:?}"
    );

    // A class that cannot expand: refused by the API server, reported.
    h.sim.put_object(storage_class(false))?;
    h.apply(NS, with_storage("4Gi")).await?;
    h.wait_pipeline(
        NS,
        "orders-redis",
        "Degraded=True, StorageResizeRefused",
        PATIENCE,
        |p| condition_of(p, "Degraded") == Some(("True".into(), "StorageResizeRefused".into())),
    )
    .await?;
    assert_eq!(claim_size(&h).as_deref(), Some("2Gi"));

    // Deleting the pipeline keeps the volume (whenDeleted: Retain).
    h.sim.delete_object(
        support::API_VERSION,
        support::KIND,
        Some(NS),
        "orders-redis",
    )?;
    support::eventually("the StatefulSet collected", PATIENCE, || async {
        h.object("apps/v1", "StatefulSet", NS, SET)
            .is_none()
            .then_some(())
    })
    .await?;
    let kept = h.object("v1", "PersistentVolumeClaim", NS, CLAIM);
    assert_eq!(
        kept.as_ref().map(uid),
        Some(uid(&claim)),
        "the claim was deleted"
    );
    Ok(())
}
