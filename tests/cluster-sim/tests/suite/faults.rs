//! Fault injection and inspection: the Nth matching request fails, latency is added,
//! requests are counted by verb, resource and caller.

use std::time::{Duration, Instant};

use cluster_sim::RequestMatch;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Config};
use serde_json::json;

use crate::common::{api_code, start};

#[tokio::test]
async fn the_nth_matching_request_fails_with_the_chosen_code() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    sim.fail_nth(
        RequestMatch::any().verb("patch").resource("configmaps"),
        2,
        500,
    );
    sim.fail_nth(
        RequestMatch::any().verb("get").resource("configmaps"),
        1,
        429,
    );
    let body = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "f"}, "data": {"v": v}});
    cms.patch("f", &PatchParams::apply("op"), &Patch::Apply(body("1")))
        .await?;
    let err = cms
        .patch("f", &PatchParams::apply("op"), &Patch::Apply(body("2")))
        .await
        .expect_err("second patch fails");
    assert_eq!(api_code(&err), Some(500));
    cms.patch("f", &PatchParams::apply("op"), &Patch::Apply(body("3")))
        .await?;
    // kube's client retries a 429 by itself: the first get is refused, the
    // second (the client's retry) answers.
    assert_eq!(
        cms.get("f")
            .await?
            .data
            .and_then(|d| d.get("v").cloned())
            .as_deref(),
        Some("3")
    );
    let gets: Vec<u16> = sim
        .requests()
        .iter()
        .filter(|r| r.verb == "get" && r.resource == "configmaps")
        .map(|r| r.code)
        .collect();
    assert_eq!(gets, [429, 200]);
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn latency_is_added_and_requests_are_counted_by_caller() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    sim.add_latency(
        RequestMatch::any().verb("list").resource("namespaces"),
        Duration::from_millis(200),
    );
    let started = Instant::now();
    Api::<Namespace>::all(client.clone())
        .list(&Default::default())
        .await?;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "latency applied"
    );

    let anonymous = Client::try_from(Config::new(sim.url().parse()?))?;
    let err = Api::<ConfigMap>::namespaced(anonymous, "default")
        .get("nope")
        .await
        .expect_err("absent");
    assert_eq!(api_code(&err), Some(404));
    let counts = sim.request_counts();
    assert_eq!(
        counts.get(&(
            "list".into(),
            "namespaces".into(),
            "kubernetes-admin".into()
        )),
        Some(&1),
        "{counts:?}"
    );
    assert_eq!(
        counts.get(&("get".into(), "configmaps".into(), "anonymous".into())),
        Some(&1),
        "{counts:?}"
    );
    sim.shutdown().await;
    Ok(())
}
