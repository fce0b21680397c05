//! The kube-runtime `Controller` for StreamPipelines: what triggers a
//! reconcile, and how the controller stops.
//!
//! ```text
//! watch StreamPipelines ──────────────────────────┐
//! owned-object caches (cache.rs): Deployment and  │
//!   StatefulSet changes, mapped to their owner ───┼─▶ scheduler ─▶ reconcile::reconcile ─▶ Action
//! autoscaler: status changed ─────────────────────┘        ▲                │ error
//!                                                          └─ requeue ◀─────┴─ reconcile::error_policy (backoff)
//! ```
//!
//! One controller per watched namespace (or one over all namespaces), each
//! driving the caches of its scope. Only Deployments and StatefulSets
//! trigger a reconcile besides the pipelines: they are the objects whose
//! status the pipeline reports. Changes of other children (Services,
//! ConfigMaps, ...) are cached but wait for the periodic requeue, which
//! repairs their drift; Secrets are neither watched nor cached (DESIGN §4).

use std::future::Future;
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::cache::Feeds;
use crate::object::PipelineObject;
use crate::pipelines::ScopeWriter;
use crate::reconcile::{error_policy, reconcile, Context};

/// Reconciles running at once (across pipelines; one pipeline is never
/// reconciled concurrently with itself).
const CONCURRENCY: u16 = 16;

/// Runs the controllers until `shutdown` completes, then lets reconciles in
/// flight finish.
///
/// # Assumptions
/// The StreamPipeline CRD is installed; until it is, the watches fail and
/// retry with backoff (logged).
pub async fn run(
    ctx: Arc<Context>,
    feeds: Vec<Feeds>,
    writers: Vec<ScopeWriter>,
    trigger: &broadcast::Sender<ObjectRef<PipelineObject>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let mut background = Vec::new();
    let mut writers = writers;
    let controllers = feeds.into_iter().map(|feed| {
        let Feeds {
            scope,
            triggers,
            background: caches,
        } = feed;
        background.push(caches);
        // The scope's shared store (pipelines.rs), or a private one.
        let (reader, writer) = match writers.iter().position(|w| w.scope == scope) {
            Some(i) => {
                let w = writers.swap_remove(i).writer;
                (w.as_reader(), w)
            }
            None => reflector::store(),
        };
        let pipelines = match &scope {
            None => Api::<PipelineObject>::all(client.clone()),
            Some(ns) => Api::<PipelineObject>::namespaced(client.clone(), ns),
        };
        // Reconcile requests of the autoscaler for pipelines of this scope.
        let requests = stream::unfold(trigger.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(r) => return Some((r, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let requests = requests.filter(move |r: &ObjectRef<PipelineObject>| {
            futures::future::ready(scope.is_none() || r.namespace == scope)
        });
        // The controller's own watch, observed: every answer or failure of
        // the API server shows in the metrics and in readiness.
        let metrics = ctx.metrics.clone();
        let watch = watcher(pipelines, watcher::Config::default())
            .default_backoff()
            .inspect(move |e| match e {
                Ok(_) => metrics.watch_ok(),
                Err(e) => {
                    warn!(error = %e, "StreamPipeline watch failed; retrying");
                    metrics.watch_failed(e.to_string());
                }
            })
            .reflect(writer)
            .applied_objects()
            // The queue observer's writes of `status.queues` alone start no
            // reconcile (a busy pipeline's change at every reading).
            .predicate_filter(beside_queues, Default::default());
        Controller::for_stream(watch, reader)
            .reconcile_on(triggers)
            .reconcile_on(requests)
            .with_config(controller::Config::default().concurrency(CONCURRENCY))
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, ctx.clone())
            .boxed()
    });
    let controllers: Vec<_> = controllers.collect();
    let controllers = stream::select_all(controllers).for_each(|r| async move {
        match r {
            Ok((obj, action)) => debug!(pipeline = %obj, ?action, "reconciled"),
            // Reconcile errors were logged by error_policy; these are
            // watch and queue errors, retried by the runtime.
            Err(controller::Error::ReconcilerFailed(..)) => {}
            Err(e) => warn!(error = %e, "controller"),
        }
    });
    // The caches of kinds that trigger nothing are driven beside the
    // controllers, and dropped with them.
    let caches = async {
        futures::future::join_all(background).await;
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = controllers => {}
        () = caches => {}
    }
}

/// A digest of everything of a pipeline a reconcile may react to: all of
/// it but `status.queues` and the bookkeeping each write changes
/// (`resourceVersion`, `managedFields`).
fn beside_queues(p: &PipelineObject) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut meta = p.metadata.clone();
    meta.resource_version = None;
    meta.managed_fields = None;
    serde_json::to_string(&meta).ok()?.hash(&mut h);
    match &p.spec {
        Ok(spec) => serde_json::to_string(spec).ok()?.hash(&mut h),
        Err(e) => e.hash(&mut h),
    }
    let status = p
        .status
        .clone()
        .map(|s| sluice_crds::StreamPipelineStatus { queues: None, ..s });
    serde_json::to_string(&status).ok()?.hash(&mut h);
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_of_the_queues_alone_reconciles_nothing() {
        let p: PipelineObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "StreamPipeline",
            "metadata": {"name": "p", "namespace": "n", "resourceVersion": "1", "generation": 1},
            "spec": {"interfaces": [], "groups": [], "nodes": []},
            "status": {"observedGeneration": 1},
        }))
        .unwrap();
        let mut q = p.clone();
        q.metadata.resource_version = Some("2".into());
        q.status.as_mut().unwrap().queues = Some(sluice_crds::QueuesStatus {
            read_at: "2026-12-04T10:00:00Z".into(),
            dead_letters: Some(3),
            ..Default::default()
        });
        assert_eq!(beside_queues(&p), beside_queues(&q));
        let mut g = q.clone();
        g.metadata.generation = Some(2);
        assert_ne!(beside_queues(&p), beside_queues(&g));
        let mut s = q.clone();
        s.status.as_mut().unwrap().observed_generation = Some(2);
        assert_ne!(beside_queues(&p), beside_queues(&s));
    }
}
