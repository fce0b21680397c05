//! The kube-runtime `Controller` for StreamPipelines: what triggers a
//! reconcile, and how the controller stops.
//!
//! ```text
//! watch StreamPipelines ────────────────┐
//! watch owned Deployments ──owner ref───┼─▶ scheduler ─▶ reconcile::reconcile ─▶ Action
//! watch owned StatefulSets ─owner ref───┤        ▲                │ error
//! autoscaler: status changed ───────────┘        │                │
//!                                                └─ requeue ◀─────┴─ reconcile::error_policy (backoff)
//! ```
//!
//! One controller per watched namespace (or one over all namespaces). Only
//! Deployments and StatefulSets are watched besides the pipelines: they are
//! the objects whose status the pipeline reports. Other children (Services,
//! ConfigMaps, ...) and Secrets are not watched — the periodic requeue
//! repairs their drift (DESIGN §4: no cluster-wide list/watch of Secrets).
//! The owned watches select `app.kubernetes.io/managed-by=sluice-operator`,
//! so unrelated workloads never enter the operator's memory.

use std::future::Future;
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::Api;
use sluice_crds::StreamPipeline;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::labels;
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
    namespaces: &[String],
    trigger: &broadcast::Sender<ObjectRef<StreamPipeline>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let owned =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let controllers = scopes.into_iter().map(|ns| {
        let (pipelines, deployments, stateful_sets) = match &ns {
            None => (
                Api::<StreamPipeline>::all(client.clone()),
                Api::<Deployment>::all(client.clone()),
                Api::<StatefulSet>::all(client.clone()),
            ),
            Some(ns) => (
                Api::<StreamPipeline>::namespaced(client.clone(), ns),
                Api::<Deployment>::namespaced(client.clone(), ns),
                Api::<StatefulSet>::namespaced(client.clone(), ns),
            ),
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
        let scope = ns.clone();
        let requests = requests.filter(move |r: &ObjectRef<StreamPipeline>| {
            futures::future::ready(scope.is_none() || r.namespace == scope)
        });
        Controller::new(pipelines, watcher::Config::default())
            .owns(deployments, owned.clone())
            .owns(stateful_sets, owned.clone())
            .reconcile_on(requests)
            .with_config(controller::Config::default().concurrency(CONCURRENCY))
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, ctx.clone())
            .boxed()
    });
    stream::select_all(controllers)
        .for_each(|r| async move {
            match r {
                Ok((obj, action)) => debug!(pipeline = %obj, ?action, "reconciled"),
                // Reconcile errors were logged by error_policy; these are
                // watch and queue errors, retried by the runtime.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(e) => warn!(error = %e, "controller"),
            }
        })
        .await;
}
