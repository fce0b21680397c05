//! Raw watch semantics through kube's `Api::watch`: events after a resourceVersion, bookmarks,
//! `timeoutSeconds`, and the `410 Expired` ERROR event for a compacted version.

use std::time::Duration;

use cluster_sim::{ClusterSimOptions, RequestMatch};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube::ResourceExt;
use serde_json::json;

use crate::common::start_with;

fn cm(name: &str) -> anyhow::Result<ConfigMap> {
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"w": "1"}}}),
    )?)
}

#[tokio::test]
async fn watch_resumes_after_a_version_sends_bookmarks_and_ends_at_its_timeout(
) -> anyhow::Result<()> {
    let (sim, client) = start_with(ClusterSimOptions {
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    })
    .await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let a = api.create(&PostParams::default(), &cm("a")?).await?;
    api.create(&PostParams::default(), &cm("b")?).await?;
    let from = a.resource_version().unwrap_or_default();
    let wp = WatchParams::default().labels("w=1").timeout(1); // bookmarks are on by default
    let events: Vec<WatchEvent<ConfigMap>> = tokio::time::timeout(
        Duration::from_secs(5),
        api.watch(&wp, &from).await?.try_collect(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("watch did not end at its 1 s timeout"))??;
    let added: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Added(c) => Some(c.name_any()),
            _ => None,
        })
        .collect();
    assert_eq!(added, ["b"], "only changes after the given version");
    assert!(
        events.iter().any(|e| matches!(e, WatchEvent::Bookmark(_))),
        "bookmarks were sent"
    );
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn watching_from_a_compacted_version_gets_a_410_error_event() -> anyhow::Result<()> {
    let (sim, client) = start_with(ClusterSimOptions {
        watch_history: 3,
        ..Default::default()
    })
    .await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let first = api.create(&PostParams::default(), &cm("first")?).await?;
    for i in 0..5 {
        api.create(&PostParams::default(), &cm(&format!("n{i}"))?)
            .await?;
    }
    let mut stream = api
        .watch(
            &WatchParams::default().timeout(5),
            &first.resource_version().unwrap_or_default(),
        )
        .await?
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), stream.next()).await? {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!(e.code, 410, "{e:?}");
            assert_eq!(e.reason, "Expired");
        }
        other => anyhow::bail!("expected a 410 ERROR event, got {other:?}"),
    }
    assert_eq!(sim.request_count(&RequestMatch::any().verb("watch")), 1);
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn streaming_list_watchers_get_initial_events_and_the_end_bookmark() -> anyhow::Result<()> {
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    let (sim, client) = start_with(ClusterSimOptions::default()).await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    for n in ["s1", "s2"] {
        api.create(&PostParams::default(), &cm(n)?).await?;
    }
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().streaming_lists()),
    )
    .applied_objects()
    .boxed();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(Duration::from_secs(10), reader.wait_until_ready())
        .await
        .map_err(|_| {
            anyhow::anyhow!("store never became ready: no initial-events-end bookmark")
        })??;
    assert_eq!(reader.state().len(), 2);
    assert_eq!(
        sim.request_count(&RequestMatch::any().verb("list")),
        0,
        "no list request: initial events came through the watch"
    );
    task.abort();
    sim.shutdown().await;
    Ok(())
}
