//! `spec.paused` through the operator on the API stand-in: a pause writes
//! no pod template and no ConfigMap (nothing restarts), the `Paused`
//! condition says where the pause stands, and a pause the pipeline's
//! backends cannot carry is refused with the field. That the runtime
//! honours the key the operator writes is shown against real processes
//! and Redis in `runtime_roundtrip.rs`.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_pause_restarts_nothing_and_the_status_says_where_it_stands() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let _op = Operator::start(&h, "op", &[]).await?;
    let (ns, p) = ("pause", "orders-redis");
    h.apply(ns, example(p)).await?;
    h.wait_ready(ns, p, PATIENCE).await?;
    let running = h
        .wait_pipeline(ns, p, "Paused=False Running", PATIENCE, |v| {
            condition_of(v, "Paused") == Some(("False".into(), "Running".into()))
        })
        .await?;
    let before = h.object_versions(ns, p);

    let mut m = example(p);
    m["spec"]["paused"] = json!(true);
    h.apply(ns, m).await?;
    // No Redis answers here: the pause is asked for, not yet in place.
    let pausing = h
        .wait_pipeline(ns, p, "Paused=False Pausing", PATIENCE, |v| {
            condition_of(v, "Paused") == Some(("False".into(), "Pausing".into()))
                && v["status"]["observedGeneration"] == v["metadata"]["generation"]
        })
        .await?;
    assert_ne!(
        pausing["metadata"]["generation"],
        running["metadata"]["generation"]
    );
    assert_eq!(
        h.condition(ns, p, "Ready"),
        Some(("True".into(), "AllReplicasReady".into()))
    );
    // A few reconciles later, still nothing of the pipeline was written.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h.object_versions(ns, p), before, "a pause wrote objects");

    let mut m = example(p);
    m["spec"]["paused"] = json!(false);
    h.apply(ns, m).await?;
    h.wait_pipeline(ns, p, "Paused=False Running again", PATIENCE, |v| {
        condition_of(v, "Paused") == Some(("False".into(), "Running".into()))
            && v["status"]["observedGeneration"] == v["metadata"]["generation"]
    })
    .await?;
    assert_eq!(h.object_versions(ns, p), before, "a resume wrote objects");
    Ok(())
}

#[tokio::test]
async fn a_pause_without_managed_redis_is_refused_with_the_field() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let _op = Operator::start(&h, "op", &[]).await?;
    let (ns, p) = ("pause-memory", "orders");
    h.apply(ns, example(p)).await?;
    h.wait_ready(ns, p, PATIENCE).await?;
    let before = h.object_versions(ns, p);
    let mut m = example(p);
    m["spec"]["paused"] = json!(true);
    h.apply(ns, m).await?;
    let v = h
        .wait_pipeline(ns, p, "Degraded=True InvalidSpec", PATIENCE, |v| {
            condition_of(v, "Degraded") == Some(("True".into(), "InvalidSpec".into()))
        })
        .await?;
    let message = v["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Degraded"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("spec.paused") && message.contains("managed Redis"),
        "{message}"
    );
    assert_eq!(
        condition_of(&v, "Paused"),
        Some(("False".into(), "Running".into())),
        "what runs is not paused"
    );
    assert_eq!(
        h.object_versions(ns, p),
        before,
        "a refused pause wrote objects"
    );
    Ok(())
}
