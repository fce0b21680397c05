//! Secrets a pipeline names but does not own (external Redis's URL): the
//! pods read them once at start, so a change of the Secret rolls them; an
//! absent Secret is reported on the pipeline instead of leaving pods that
//! cannot start unexplained. Likewise managed Redis's CA: a new one rolls
//! Redis and every runtime pod.

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

/// The CA in a managed Redis's `P-redis`, and the `sluice.dev/redis-ca`
/// stamps of the Redis StatefulSet's and a worker's pod templates.
fn ca_and_stamps(h: &Harness, ns: &str) -> (String, Option<String>, Option<String>) {
    use base64::Engine;
    let secret = h
        .object("v1", "Secret", ns, "orders-redis-redis")
        .unwrap_or_default();
    let ca = secret["data"]["ca.crt"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| String::from_utf8(b).unwrap())
        .unwrap_or_default();
    let stamp = |version: &str, kind: &str, name: &str| {
        h.object(version, kind, ns, name).unwrap_or_default()["spec"]["template"]["metadata"]
            ["annotations"]["sluice.dev/redis-ca"]
            .as_str()
            .map(str::to_string)
    };
    (
        ca,
        stamp("apps/v1", "StatefulSet", "orders-redis-redis"),
        stamp("apps/v1", "Deployment", "orders-redis-cpu"),
    )
}

#[tokio::test]
async fn a_new_redis_ca_restarts_redis_and_every_runtime_pod() -> anyhow::Result<()> {
    use sluice_operator::redis_tls::digest;
    const NS: &str = "tls";
    let h = Harness::start().await?;
    let _op = Operator::start(&h, "op", &[]).await?;
    h.namespace(NS)?;
    h.apply(NS, example(P)).await?;
    h.wait_ready(NS, P, PATIENCE).await?;
    // Redis's StatefulSet is applied before the Deployments: both stamped.
    let ca = eventually("every pod template stamped", PATIENCE, || async {
        let (c, r, w) = ca_and_stamps(&h, NS);
        (r.as_deref() == Some(digest(&c).as_str()) && w == r).then_some(c)
    })
    .await?;
    assert!(
        ca.starts_with("-----BEGIN CERTIFICATE-----"),
        "TLS by default"
    );

    // The CA's key damaged by hand: a new CA, and every pod template of the
    // pipeline moves to it (pods read the CA, Redis its certificate, at
    // start).
    let mut secret = h.object("v1", "Secret", NS, "orders-redis-redis").unwrap();
    secret["data"]["ca.key"] = json!("Z2FyYmFnZQ==");
    h.sim.put_object(secret)?;
    eventually("a new CA is stamped everywhere", PATIENCE, || async {
        let (c, r, w) = ca_and_stamps(&h, NS);
        (c != ca && r.as_deref() == Some(digest(&c).as_str()) && w == r).then_some(())
    })
    .await?;
    Ok(())
}
