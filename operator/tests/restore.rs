//! The operator's side of a Redis restore (docs/operator.md "Backup and
//! restore") on the API stand-in: a suspended pipeline creates nothing, not
//! even a key ring; a key ring restored from a backup with the new pipeline
//! as controller is kept byte for byte once the pipeline is unsuspended, and
//! the groups' keys are derived from it. The negative control restores the
//! ring without the owner reference: then no group gets keys, which is why
//! the procedure sets it.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const PATIENCE: Duration = Duration::from_secs(30);
const P: &str = "orders-redis";
const RING: &str = "orders-redis-ipc-keys";
const GROUPS: [&str; 3] = ["web", "cpu", "io"];

fn secret(h: &Harness, ns: &str, name: &str) -> Option<Value> {
    h.object("v1", "Secret", ns, name)
}

/// Applies `P` suspended in `ns`, checks nothing of it is created, then
/// writes `backup` as its key ring, owned by it when `owned`.
async fn suspended_with_ring(
    h: &Harness,
    ns: &str,
    backup: &Value,
    owned: bool,
) -> anyhow::Result<()> {
    let mut m = example(P);
    m["spec"]["suspend"] = json!(true);
    h.apply(ns, m).await?;
    h.wait_pipeline(ns, P, "Progressing=False Suspended", PATIENCE, |v| {
        condition_of(v, "Progressing") == Some(("False".into(), "Suspended".into()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        h.owned_objects(ns, P).is_empty(),
        "a suspended pipeline created objects"
    );
    assert!(
        secret(h, ns, RING).is_none(),
        "a suspended pipeline made a key ring"
    );

    let uid = h.pipeline(ns, P).unwrap()["metadata"]["uid"].clone();
    let mut ring = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": RING, "namespace": ns,
            "labels": backup["metadata"]["labels"].clone(),
            "annotations": backup["metadata"]["annotations"].clone(),
        },
        "type": backup["type"].clone(),
        "data": backup["data"].clone(),
    });
    if owned {
        ring["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "sluice.dev/v1alpha1", "kind": "StreamPipeline", "name": P,
            "uid": uid, "controller": true, "blockOwnerDeletion": true,
        }]);
    }
    h.sim.put_object(ring)?;
    let mut m = example(P);
    m["spec"]["suspend"] = json!(false);
    h.apply(ns, m).await?;
    Ok(())
}

#[tokio::test]
async fn a_restored_key_ring_owned_by_the_new_pipeline_is_kept_and_derived_from(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let _op = Operator::start(&h, "op", &[]).await?;
    h.apply("before", example(P)).await?;
    h.wait_ready("before", P, PATIENCE).await?;
    let backup = secret(&h, "before", RING).expect("a key ring");
    assert!(backup["data"].as_object().is_some_and(|d| !d.is_empty()));

    // The procedure restores into the same namespace; the key ring's part
    // of it does not depend on which.
    suspended_with_ring(&h, "restored", &backup, true).await?;
    h.wait_ready("restored", P, PATIENCE).await?;
    let kept = secret(&h, "restored", RING).unwrap();
    assert_eq!(
        kept["data"], backup["data"],
        "the restored ring was replaced"
    );
    for g in GROUPS {
        let name = format!("{RING}-{g}");
        eventually(&format!("{name} derived"), PATIENCE, || async {
            secret(&h, "restored", &name)
        })
        .await?;
    }

    // Negative control: the same ring without its controller.
    suspended_with_ring(&h, "unowned", &backup, false).await?;
    // The unsuspended generation is reconciled (its objects are applied),
    // and a few reconciles later still no key is derived.
    h.wait_pipeline(
        "unowned",
        P,
        "the unsuspended generation observed",
        PATIENCE,
        |v| {
            v["status"]["observedGeneration"] == v["metadata"]["generation"]
                && condition_of(v, "Progressing").is_some_and(|(_, r)| r != "Suspended")
        },
    )
    .await?;
    assert!(
        !h.owned_objects("unowned", P).is_empty(),
        "nothing was applied"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        secret(&h, "unowned", RING).unwrap()["data"],
        backup["data"],
        "a ring the pipeline does not control is never changed"
    );
    for g in GROUPS {
        assert!(
            secret(&h, "unowned", &format!("{RING}-{g}")).is_none(),
            "keys derived from a ring the pipeline does not control"
        );
    }
    Ok(())
}
