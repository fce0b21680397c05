//! Containment of what a StreamPipeline's author can reach through its pods:
//! a sidecar asking beyond Pod Security "restricted" or naming the
//! pipeline's key ring is refused and nothing of that generation is
//! applied; a Secret a node names reaches the pods only once its owner
//! labels it `sluice.dev/allow-reference=true`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{condition_of, eventually, example, Harness, Operator};

const PATIENCE: Duration = Duration::from_secs(30);
const P: &str = "orders-redis";

/// `(Kind/name, resourceVersion)` of every object of the pipeline.
fn versions(h: &Harness, ns: &str) -> Vec<(String, Value)> {
    h.object_versions(ns, P)
}

fn group_mut<'a>(m: &'a mut Value, group: &str) -> &'a mut Value {
    m["spec"]["groups"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|g| g["name"] == group)
        .unwrap_or_else(|| panic!("no group {group}"))
}

/// The Degraded condition once it has `reason` at the current generation.
async fn degraded(h: &Harness, ns: &str, reason: &str) -> anyhow::Result<Value> {
    let p = h
        .wait_pipeline(
            ns,
            P,
            &format!("Degraded=True, reason {reason}"),
            PATIENCE,
            |p| {
                condition_of(p, "Degraded") == Some(("True".into(), reason.into()))
                    && p["status"]["observedGeneration"] == p["metadata"]["generation"]
            },
        )
        .await?;
    let c = p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Degraded"))
        .cloned()
        .unwrap_or_default();
    Ok(c)
}

/// Applies `m` over a running `orders-redis` and checks that it is refused
/// as `InvalidSpec` with `expected` in the message, and that no object
/// changes.
async fn refused_update(h: &Harness, ns: &str, m: Value, expected: &str) -> anyhow::Result<()> {
    let before = versions(h, ns);
    assert!(!before.is_empty());
    h.apply(ns, m).await?;
    let c = degraded(h, ns, "InvalidSpec").await?;
    let message = c["message"].as_str().unwrap_or_default();
    assert!(message.contains(expected), "{message}");
    assert_eq!(
        h.condition(ns, P, "Ready"),
        Some(("True".into(), "AllReplicasReady".into())),
        "the running objects keep serving"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        versions(h, ns),
        before,
        "a refused generation changed objects"
    );
    assert_eq!(h.events(ns, P, "InvalidSpec").len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_privileged_sidecar_is_refused_and_nothing_of_its_generation_is_applied(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let _op = Operator::start(&h, "op", &[]).await?;
    let ns = "privileged";
    h.apply(ns, example(P)).await?;
    h.wait_ready(ns, P, PATIENCE).await?;

    let mut m = example(P);
    group_mut(&mut m, "io")["sidecars"] = json!([{
        "name": "py", "image": "example.com/py:1",
        "securityContext": {"privileged": true}
    }]);
    refused_update(
        &h,
        ns,
        m,
        "spec.groups[2].sidecars[0].securityContext.privileged: sidecars may not run privileged",
    )
    .await?;
    let io = h
        .object("apps/v1", "Deployment", ns, "orders-redis-io")
        .unwrap();
    let containers = io["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "no sidecar reached the Deployment");
    Ok(())
}

#[tokio::test]
async fn a_sidecar_reading_the_key_ring_through_env_from_is_refused() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let _op = Operator::start(&h, "op", &[]).await?;
    let ns = "keyring";
    h.apply(ns, example(P)).await?;
    h.wait_ready(ns, P, PATIENCE).await?;

    let mut m = example(P);
    group_mut(&mut m, "io")["sidecars"] = json!([{
        "name": "py", "image": "example.com/py:1",
        "envFrom": [{"secretRef": {"name": "orders-redis-ipc-keys"}}]
    }]);
    refused_update(
        &h,
        ns,
        m,
        "spec.groups[2].sidecars[0].envFrom[0].secretRef.name: `orders-redis-ipc-keys` is the pipeline's own Secret (the key ring)",
    )
    .await?;
    let io = h
        .object("apps/v1", "Deployment", ns, "orders-redis-io")
        .unwrap();
    assert!(!io.to_string().contains("envFrom"), "{io}");
    Ok(())
}

#[tokio::test]
async fn a_node_secret_reaches_the_pods_only_once_labelled_for_pipelines() -> anyhow::Result<()> {
    const VALUE: &str = "s3cr3t-token-value";
    let h = Harness::start().await?;
    let op = Operator::start(&h, "op", &[]).await?;
    let ns = "optin";
    h.namespace(ns)?;
    let secret = |labels: Value| {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "enrich-api", "namespace": ns, "labels": labels},
            "stringData": {"token": VALUE}
        })
    };
    h.sim.put_object(secret(json!({})))?;
    let mut m = example(P);
    let summarize = m["spec"]["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["name"] == "summarize")
        .unwrap();
    summarize["uses"] = "builtin/http".into();
    summarize["with"] = json!({
        "url": "http://127.0.0.1:9000/enrich",
        "headersFrom": {"Authorization": {"secretRef": {"name": "enrich-api", "key": "token"}}}
    });
    h.apply(ns, m).await?;

    // Not labelled: nothing is created, the status names the Secret and
    // the field, one Warning event.
    let c = degraded(&h, ns, "SecretReferenceRefused").await?;
    assert_eq!(
        c["message"],
        "nothing was created: Secret enrich-api (spec.nodes[4].with.headersFrom.Authorization.secretRef) is not labelled sluice.dev/allow-reference=true"
    );
    assert_eq!(
        h.condition(ns, P, "Ready"),
        Some(("False".into(), "SecretReferenceRefused".into()))
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        h.owned_objects(ns, P).is_empty(),
        "{:?}",
        h.owned_objects(ns, P)
    );
    let events = h.events(ns, P, "SecretReferenceRefused");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "Warning");

    // Labelled: the next reconcile (each second) applies, and the io pods
    // mount the Secret.
    h.sim
        .put_object(secret(json!({"sluice.dev/allow-reference": "true"})))?;
    let p = h.wait_ready(ns, P, PATIENCE).await?;
    assert_eq!(
        condition_of(&p, "Degraded"),
        Some(("False".into(), "AsExpected".into()))
    );
    let io = h
        .object("apps/v1", "Deployment", ns, "orders-redis-io")
        .unwrap();
    let volumes = io["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "enrich-api"),
        "{volumes:?}"
    );

    // The label taken away: whatever the spec asks next is held; what runs
    // is left as it is.
    h.sim.put_object(secret(json!({})))?;
    let c = degraded(&h, ns, "SecretReferenceRefused").await?;
    assert!(
        c["message"].as_str().unwrap_or_default().starts_with(
            "not applied, the running objects are left as they are: Secret enrich-api"
        ),
        "{c}"
    );
    eventually("Ready from the running objects", PATIENCE, || async {
        (h.condition(ns, P, "Ready")? == ("True".into(), "AllReplicasReady".into())).then_some(())
    })
    .await?;

    // The value itself is nowhere: not in status, events or the log.
    let p = h.pipeline(ns, P).unwrap();
    assert!(!p["status"].to_string().contains(VALUE));
    let events = h
        .sim
        .list_objects("events.k8s.io/v1", "Event", Some(ns))
        .unwrap_or_default();
    assert!(!Value::from(events).to_string().contains(VALUE));
    assert!(op.logs().iter().all(|l| !l.contains(VALUE)));
    Ok(())
}
