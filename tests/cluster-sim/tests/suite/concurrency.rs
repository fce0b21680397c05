//! Concurrency: writers holding stale versions get 409s and converge; list+watch observers
//! see every version, in order.

use std::sync::Arc;
use std::time::Duration;

use cluster_sim::RequestMatch;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::Barrier;

use crate::common::{api_code, start};

const WRITERS: usize = 8;
const INCREMENTS: usize = 5;

fn counter(cm: &ConfigMap) -> usize {
    cm.data
        .as_ref()
        .and_then(|d| d.get("n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// List (before any writer runs), then watch from the list's version until `last`.
async fn list_then_watch(
    api: &Api<ConfigMap>,
    last: usize,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Vec<(u64, usize)>>>> {
    let list = api
        .list(&ListParams::default().fields("metadata.name=shared"))
        .await?;
    let api = api.clone();
    Ok(tokio::spawn(async move { observe(api, list, last).await }))
}

async fn observe(
    api: Api<ConfigMap>,
    list: kube::core::ObjectList<ConfigMap>,
    last: usize,
) -> anyhow::Result<Vec<(u64, usize)>> {
    let mut seen: Vec<(u64, usize)> = list
        .items
        .iter()
        .map(|c| {
            (
                c.resource_version()
                    .unwrap_or_default()
                    .parse()
                    .unwrap_or(0),
                counter(c),
            )
        })
        .collect();
    let rv = list.metadata.resource_version.unwrap_or_default();
    let wp = WatchParams::default()
        .fields("metadata.name=shared")
        .timeout(30);
    let mut stream = api.watch(&wp, &rv).await?.boxed();
    while seen.last().map(|s| s.1) != Some(last) {
        match stream.try_next().await? {
            Some(WatchEvent::Added(c)) | Some(WatchEvent::Modified(c)) => seen.push((
                c.resource_version().unwrap_or_default().parse()?,
                counter(&c),
            )),
            Some(other) => anyhow::bail!("unexpected watch event {other:?}"),
            None => anyhow::bail!("watch ended before the last version"),
        }
    }
    Ok(seen)
}

#[tokio::test]
async fn stale_writers_get_conflicts_and_converge_while_observers_see_every_version(
) -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let initial: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "shared"}, "data": {"n": "0"}}))?;
    api.create(&PostParams::default(), &initial).await?;
    let total = WRITERS * INCREMENTS;
    let observers = vec![
        list_then_watch(&api, total).await?,
        list_then_watch(&api, total).await?,
    ];

    let barrier = Arc::new(Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let api = api.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                // everyone reads the same version first, so the first round is guaranteed stale
                let mut cur = api.get("shared").await?;
                barrier.wait().await;
                let mut done = 0;
                let mut conflicts = 0;
                while done < INCREMENTS {
                    let mut next = cur.clone();
                    next.data = Some([("n".to_string(), (counter(&cur) + 1).to_string())].into());
                    match api.replace("shared", &PostParams::default(), &next).await {
                        Ok(_) => done += 1,
                        Err(e) if api_code(&e) == Some(409) => conflicts += 1,
                        Err(e) => return Err(anyhow::Error::from(e)),
                    }
                    cur = api.get("shared").await?;
                }
                Ok::<usize, anyhow::Error>(conflicts)
            })
        })
        .collect();
    let mut conflicts = 0;
    for w in writers {
        conflicts += tokio::time::timeout(Duration::from_secs(30), w).await???;
    }
    assert!(
        conflicts >= WRITERS - 1,
        "the stale first round alone gives {} conflicts, saw {conflicts}",
        WRITERS - 1
    );
    assert_eq!(
        counter(&api.get("shared").await?),
        total,
        "no increment was lost"
    );
    assert_eq!(
        sim.request_count(&RequestMatch::any().verb("update").resource("configmaps")),
        total + conflicts,
        "every update either landed or was a 409"
    );
    for o in observers {
        let seen = tokio::time::timeout(Duration::from_secs(30), o).await???;
        let values: Vec<usize> = seen.iter().map(|s| s.1).collect();
        assert_eq!(
            values,
            (0..=total).collect::<Vec<_>>(),
            "every version, in order"
        );
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "resourceVersions increase"
        );
    }
    sim.shutdown().await;
    Ok(())
}
