//! Secrets a pipeline names but does not own (external Redis's URL): the
//! pods read them once at start, so a change of the Secret rolls them; an
//! absent Secret is reported on the pipeline instead of leaving pods that
//! cannot start unexplained.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{eventually, example, Harness, Operator};

const PATIENCE: Duration = Duration::from_secs(30);
const NS: &str = "ext";
const P: &str = "orders-redis";

fn url_secret(url: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "redis-url", "namespace": NS},
        "stringData": {"url": url}
    })
}

/// `(secret-versions, config-hash)` of a worker Deployment's pod template.
fn stamps(h: &Harness) -> (Option<String>, Option<String>) {
    let d = h
        .object("apps/v1", "Deployment", NS, "orders-redis-cpu")
        .unwrap_or_default();
    let a = &d["spec"]["template"]["metadata"]["annotations"];
    let s = |k: &str| a[k].as_str().map(str::to_string);
    (s("sluice.dev/secret-versions"), s("sluice.dev/config-hash"))
}

fn secret_rv(h: &Harness) -> String {
    h.object("v1", "Secret", NS, "redis-url").unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_changed_external_redis_secret_rolls_the_pods_and_an_absent_one_is_reported(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    // Every test operator reconciles each second (--requeue-interval 1s).
    let _op = Operator::start(&h, "op", &[]).await?;
    h.namespace(NS)?;
    h.sim.put_object(url_secret("redis://a.example:6379/0"))?;
    let mut m = example(P);
    m["spec"]["redis"] =
        json!({"mode": "external", "urlSecretRef": {"name": "redis-url", "key": "url"}});
    h.apply(NS, m).await?;
    h.wait_ready(NS, P, PATIENCE).await?;
    let (versions, hash) = stamps(&h);
    assert_eq!(versions, Some(format!("redis-url/{}", secret_rv(&h))));

    // A new URL: the next reconcile stamps the new version, which rolls the
    // pods; what the pods run (the config hash) is unchanged.
    h.sim.put_object(url_secret("redis://b.example:6379/0"))?;
    let rv = secret_rv(&h);
    eventually(
        "the new Secret version on the pod template",
        PATIENCE,
        || async { (stamps(&h).0 == Some(format!("redis-url/{rv}"))).then_some(()) },
    )
    .await?;
    assert_eq!(stamps(&h).1, hash);
    let value = h
        .object("apps/v1", "Deployment", NS, "orders-redis-cpu")
        .unwrap();
    assert!(
        !value.to_string().contains("b.example"),
        "no Secret value on the Deployment"
    );

    // The Secret goes away: Degraded with the Secret and the field named.
    h.sim.delete_object("v1", "Secret", Some(NS), "redis-url")?;
    eventually("Degraded SecretMissing", PATIENCE, || async {
        let p = h.pipeline(NS, P)?;
        let c = p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Degraded")?
            .clone();
        (c["status"] == "True" && c["reason"] == "SecretMissing").then_some(c)
    })
    .await
    .map(|c| {
        assert_eq!(
            c["message"], "Secret redis-url (spec.redis.urlSecretRef) does not exist",
            "{c}"
        );
    })?;
    assert_eq!(h.events(NS, P, "SecretMissing").len(), 1);

    // Back, without the key the spec names: still reported.
    h.sim.put_object(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "redis-url", "namespace": NS},
        "stringData": {"address": "b.example:6379"}
    }))?;
    eventually("Degraded names the missing key", PATIENCE, || async {
        let p = h.pipeline(NS, P)?;
        p["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| {
                c["type"] == "Degraded"
                    && c["message"] == "Secret redis-url (spec.redis.urlSecretRef) has no key url"
            })
            .then_some(())
    })
    .await?;

    // Fixed: Degraded clears, and the pods carry the version they read.
    h.sim.put_object(url_secret("redis://c.example:6379/0"))?;
    let rv = secret_rv(&h);
    eventually("Degraded clears", PATIENCE, || async {
        (h.condition(NS, P, "Degraded")?.0 == "False"
            && stamps(&h).0 == Some(format!("redis-url/{rv}")))
        .then_some(())
    })
    .await?;
    Ok(())
}
