//! kube-rs against the simulator: typed CRUD, watcher/reflector through cut watches and a
//! `410 Gone`, a minimal Controller owning ConfigMaps, the finalizer helper, a Lease.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cluster_sim::RequestMatch;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::{Client, CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::common::{api_code, eventually, start};

const PATIENCE: Duration = Duration::from_secs(10);

/// A small custom resource for the runtime tests.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "sim.example.com", version = "v1", kind = "Gadget", namespaced)]
pub struct GadgetSpec {
    pub greeting: String,
}

pub async fn install_gadget_crd(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Gadget::crd())
        .await
        .context("creating Gadget CRD")?;
    eventually("Gadget CRD established", PATIENCE, || {
        let crds = crds.clone();
        async move {
            let c = crds.get("gadgets.sim.example.com").await.ok()?;
            c.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        }
    })
    .await
}

fn cm(name: &str, data: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("suite".to_string(), "watch".to_string())].into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), data.to_string())].into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn typed_api_create_get_list_replace_delete_round_trip() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = api.create(&PostParams::default(), &cm("a", "1")).await?;
    let uid = created.uid().context("uid is set")?;
    assert!(
        created.creation_timestamp().is_some(),
        "creationTimestamp is set"
    );
    let again = api
        .create(&PostParams::default(), &cm("a", "1"))
        .await
        .expect_err("duplicate create");
    assert_eq!(api_code(&again), Some(409), "AlreadyExists: {again}");

    let mut got = api.get("a").await?;
    assert_eq!(got.uid().as_deref(), Some(uid.as_str()));
    got.data = Some([("k".to_string(), "2".to_string())].into());
    let replaced = api.replace("a", &PostParams::default(), &got).await?;
    assert_ne!(
        replaced.resource_version(),
        got.resource_version(),
        "a change bumps resourceVersion"
    );
    let stale = api
        .replace("a", &PostParams::default(), &got)
        .await
        .expect_err("stale replace");
    assert_eq!(
        api_code(&stale),
        Some(409),
        "stale resourceVersion is a Conflict: {stale}"
    );

    let generated = api
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    generate_name: Some("gen-".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    assert!(
        generated.name_any().starts_with("gen-") && generated.name_any().len() == 9,
        "{}",
        generated.name_any()
    );

    let listed = api
        .list(&ListParams::default().labels("suite=watch"))
        .await?;
    assert_eq!(
        listed.items.len(),
        1,
        "label selector keeps only labelled objects"
    );
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=a"))
        .await?;
    assert_eq!(by_name.items.len(), 1);
    assert!(
        listed.metadata.resource_version.is_some(),
        "list carries a resourceVersion"
    );

    let page1 = api.list(&ListParams::default().limit(1)).await?;
    assert_eq!(page1.items.len(), 1);
    let token = page1
        .metadata
        .continue_
        .clone()
        .context("a first page of one has a continue token")?;
    let page2 = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await?;
    assert_eq!(page2.items.len(), 1);
    assert_ne!(
        page1.items[0].name_any(),
        page2.items[0].name_any(),
        "pages do not overlap"
    );

    api.delete("a", &DeleteParams::default()).await?;
    let missing = api.get("a").await.expect_err("deleted");
    assert_eq!(api_code(&missing), Some(404));
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn reflector_converges_through_cut_watches_and_a_410() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    // every watch stream ends after 2 events: the watcher must resume from its last version
    sim.cut_watches_after(RequestMatch::any().verb("watch").resource("configmaps"), 2);
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(
            api.clone(),
            watcher::Config::default().labels("suite=watch"),
        ),
    )
    .applied_objects()
    .boxed();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    for i in 0..5 {
        api.create(&PostParams::default(), &cm(&format!("w{i}"), "x"))
            .await?;
    }
    eventually(
        "reflector to hold 5 objects despite cut watches",
        PATIENCE,
        || {
            let n = reader.state().len();
            async move { (n == 5).then_some(()) }
        },
    )
    .await?;

    // now make the watcher come back with a version the history no longer has
    sim.clear_faults();
    sim.add_latency(
        RequestMatch::any().verb("watch").resource("configmaps"),
        Duration::from_millis(400),
    );
    let lists_before = sim.request_count(&RequestMatch::any().verb("list").resource("configmaps"));
    sim.close_watches();
    api.create(&PostParams::default(), &cm("late", "x")).await?;
    sim.compact_history();
    eventually(
        "reflector to relist after 410 and see the late object",
        PATIENCE,
        || {
            let has = reader
                .get(&reflector::ObjectRef::new("late").within("default"))
                .is_some();
            async move { has.then_some(()) }
        },
    )
    .await?;
    let lists_after = sim.request_count(&RequestMatch::any().verb("list").resource("configmaps"));
    assert!(
        lists_after > lists_before,
        "a 410 makes the watcher relist ({lists_before} → {lists_after})"
    );
    task.abort();
    sim.shutdown().await;
    Ok(())
}

struct Ctx {
    client: Client,
    cleanups: AtomicUsize,
}

async fn reconcile(
    g: Arc<Gadget>,
    ctx: Arc<Ctx>,
) -> Result<Action, kube::runtime::finalizer::Error<kube::Error>> {
    let ns = g.namespace().unwrap_or_default();
    let gadgets: Api<Gadget> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&gadgets, "sim.example.com/cleanup", g, |event| async {
        match event {
            FinalizerEvent::Apply(g) => {
                let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
                let owner = g.controller_owner_ref(&()).ok_or_else(|| {
                    kube::Error::Service("gadget without name/uid".into())
                })?;
                let child = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("{}-child", g.name_any()), "ownerReferences": [owner]},
                    "data": {"greeting": g.spec.greeting},
                });
                cms.patch(&format!("{}-child", g.name_any()), &PatchParams::apply("gadget-controller"), &Patch::Apply(child))
                    .await?;
                Ok(Action::requeue(Duration::from_secs(300)))
            }
            FinalizerEvent::Cleanup(_) => {
                ctx.cleanups.fetch_add(1, Ordering::SeqCst);
                Ok(Action::await_change())
            }
        }
    })
    .await
}

fn error_policy(
    _: Arc<Gadget>,
    _: &kube::runtime::finalizer::Error<kube::Error>,
    _: Arc<Ctx>,
) -> Action {
    Action::requeue(Duration::from_millis(100))
}

#[tokio::test]
async fn controller_reconciles_owned_children_and_finalizer_runs_cleanup() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    install_gadget_crd(&client).await?;
    let gadgets: Api<Gadget> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        cleanups: AtomicUsize::new(0),
    });
    let controller = Controller::new(gadgets.clone(), watcher::Config::default())
        .owns(cms.clone(), watcher::Config::default())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});
    let task = tokio::spawn(controller);

    gadgets
        .create(
            &PostParams::default(),
            &Gadget::new(
                "g1",
                GadgetSpec {
                    greeting: "hi".into(),
                },
            ),
        )
        .await?;
    eventually(
        "child ConfigMap created by the controller",
        PATIENCE,
        || {
            let cms = cms.clone();
            async move { cms.get_opt("g1-child").await.ok().flatten() }
        },
    )
    .await?;
    let g = gadgets.get("g1").await?;
    assert_eq!(
        g.finalizers(),
        ["sim.example.com/cleanup".to_string()],
        "finalizer helper added its finalizer"
    );

    // deleting an owned child triggers a reconcile that recreates it
    cms.delete("g1-child", &DeleteParams::default()).await?;
    eventually("child ConfigMap recreated after deletion", PATIENCE, || {
        let cms = cms.clone();
        async move { cms.get_opt("g1-child").await.ok().flatten() }
    })
    .await?;

    gadgets.delete("g1", &DeleteParams::default()).await?;
    eventually("gadget gone after finalizer cleanup", PATIENCE, || {
        let gadgets = gadgets.clone();
        async move { matches!(gadgets.get_opt("g1").await, Ok(None)).then_some(()) }
    })
    .await?;
    assert_eq!(
        ctx.cleanups.load(Ordering::SeqCst),
        1,
        "cleanup ran exactly once"
    );
    eventually("child garbage-collected with its owner", PATIENCE, || {
        let cms = cms.clone();
        async move { matches!(cms.get_opt("g1-child").await, Ok(None)).then_some(()) }
    })
    .await?;
    task.abort();
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn lease_is_acquired_renewed_and_guarded_by_resource_version() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let now = || MicroTime(k8s_openapi::jiff::Timestamp::now());
    let acquired = leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some("leader".into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("a".into()),
                    lease_duration_seconds: Some(15),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            },
        )
        .await?;
    let mut renewed = acquired.clone();
    tokio::time::sleep(Duration::from_millis(10)).await;
    if let Some(spec) = renewed.spec.as_mut() {
        spec.renew_time = Some(now());
    }
    let renewed = leases
        .replace("leader", &PostParams::default(), &renewed)
        .await?;
    assert_eq!(
        renewed
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .as_deref(),
        Some("a")
    );
    assert_ne!(
        renewed.resource_version(),
        acquired.resource_version(),
        "renewal is a new version"
    );

    // a contender holding the old version cannot take over
    let mut steal = acquired.clone();
    if let Some(spec) = steal.spec.as_mut() {
        spec.holder_identity = Some("b".into());
    }
    let err = leases
        .replace("leader", &PostParams::default(), &steal)
        .await
        .expect_err("stale takeover");
    assert_eq!(api_code(&err), Some(409));
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn metadata_api_and_metadata_watcher_get_partial_object_metadata() -> anyhow::Result<()> {
    use kube::core::PartialObjectMeta;
    let (sim, client) = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let meta_api: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("m1", "secret-ish"))
        .await?;
    let meta = api.get_metadata("m1").await?;
    assert_eq!(meta.metadata.name.as_deref(), Some("m1"));
    let list = api.list_metadata(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 1);
    let first = tokio::time::timeout(
        PATIENCE,
        watcher(meta_api, watcher::Config::default())
            .applied_objects()
            .boxed()
            .next(),
    )
    .await
    .context("metadata watcher produced an object")?
    .context("stream ended")??;
    assert_eq!(first.metadata.name.as_deref(), Some("m1"));
    let raw = sim.requests();
    assert!(raw.iter().any(|r| r.verb == "list" && r.code == 200));
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn event_recorder_creates_then_counts_a_series() -> anyhow::Result<()> {
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let (sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let target = cms
        .create(&PostParams::default(), &cm("evented", "x"))
        .await?;
    let recorder = Recorder::new(client.clone(), Reporter::from("sluice-operator"));
    let ev = Event {
        type_: EventType::Normal,
        reason: "Applied".into(),
        note: Some("children applied".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder.publish(&ev, &target.object_ref(&())).await?;
    recorder.publish(&ev, &target.object_ref(&())).await?;
    let events = Api::<K8sEvent>::namespaced(client, "default")
        .list(&ListParams::default())
        .await?;
    assert_eq!(
        events.items.len(),
        1,
        "the repeat is a series on the same Event"
    );
    let e = &events.items[0];
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(
        e.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("evented")
    );
    sim.shutdown().await;
    Ok(())
}
