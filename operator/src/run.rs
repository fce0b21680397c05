//! The life of one operator process.
//!
//! ```text
//! connect (KUBECONFIG / in-cluster) ─▶ serve /metrics /healthz /readyz ─▶ API reachable: ready
//!   ─▶ [leader election: wait for the Lease] ─▶ controller + autoscaler    ┬─ shutdown signal: drain, release Lease, Ok
//!                                                 + dead-letter actions    └─ Lease lost: Err(LostLeadership) at once
//!                                                 + queue observer
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use tokio::sync::broadcast;

use crate::autoscale::{Autoscaler, Facts};
use crate::cache::OwnedCache;
use crate::config::Config;
use crate::controller;
use crate::dead_letter_actions::DeadLetterActions;
use crate::events::Events;
use crate::labels;
use crate::leader::{Elector, Lost};
use crate::metrics::Metrics;
use crate::observe::Observer;
use crate::pipelines::PipelineStores;
use crate::reconcile::Context;
use crate::server::{self, Health};

/// Reconcile requests from the autoscaler that may wait for the controller;
/// older ones are dropped (the periodic requeue covers them).
const TRIGGER_CAPACITY: usize = 1024;

/// How long reconciles in flight may take to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the operator stopped other than by a shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot configure the Kubernetes client (KUBECONFIG or in-cluster)")]
    Client(#[source] kube::Error),
    #[error("the API server does not answer")]
    ApiServer(#[source] kube::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Another replica leads now; the process must exit so that it never
    /// writes alongside the new leader.
    #[error("lost leadership: {0}")]
    LostLeadership(#[from] Lost),
}

/// Runs the operator until `shutdown` completes.
///
/// # Guarantees
/// With leader election, the controller runs only while this process holds
/// the lease; on losing it this returns [`RunError::LostLeadership`]
/// immediately (the caller exits), and on `shutdown` the lease is released
/// after the reconciles in flight finish (bounded).
///
/// # Errors
/// See [`RunError`].
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        ..Default::default()
    });
    let listener = sluice_platform::listen::bind(config.metrics_addr)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.metrics_addr,
            source,
        })?;
    let metrics_addr = listener.local_addr().map_err(|source| RunError::Listen {
        addr: config.metrics_addr,
        source,
    })?;
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    let app = server::router(health.clone());
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                warn!(error = %e, "metrics listener failed");
            }
        });
    }
    info!(
        %metrics_addr,
        identity = %config.identity,
        namespaces = %if config.namespaces.is_empty() { "*".to_string() } else { config.namespaces.join(",") },
        leader_election = config.leader_election.is_some(),
        ingress_image = %config.settings.images.ingress,
        worker_image = %config.settings.images.worker,
        redis_image = %config.settings.images.redis,
        // Safe to log: the endpoint was refused if it held user information.
        runtime_tracing = %config.settings.tracing.as_ref().map_or_else(
            || "off".to_string(),
            |t| format!("{} to {}", t.protocol.as_str(), t.endpoint)
        ),
        "sluice-operator starting"
    );

    let version = tokio::select! {
        v = client.apiserver_version() => v.map_err(RunError::ApiServer)?,
        () = stop.cancelled() => return Ok(()),
    };
    info!(server = %version.git_version, "connected to the API server");
    health.ready.store(true, Ordering::Relaxed);

    let mut elector = config
        .leader_election
        .clone()
        .map(|le| Elector::new(client.clone(), le, config.identity.clone()));
    if let Some(e) = elector.as_mut() {
        tokio::select! {
            () = e.acquire() => {}
            () = stop.cancelled() => return Ok(()),
        }
    }
    metrics.leader.set(1);

    let events = Arc::new(Events::new(
        client.clone(),
        labels::MANAGER,
        &config.identity,
    ));
    let facts = Arc::new(Facts::default());
    let (trigger, _) = broadcast::channel(TRIGGER_CAPACITY);
    let (cache, feeds) = OwnedCache::start(&client, &config.namespaces);
    let (pipelines, writers) = PipelineStores::new(&config.namespaces);
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            config.settings.clone(),
            config.timing.clone(),
            events.clone(),
            metrics.clone(),
            facts.clone(),
        )
        .with_cache(cache.clone()),
    );
    let redis_users = ctx.redis_users();
    let controller_stop = CancellationToken::new();
    let mut controller = tokio::spawn({
        let token = controller_stop.clone();
        let trigger = trigger.clone();
        async move { controller::run(ctx, feeds, writers, &trigger, token.cancelled_owned()).await }
    });
    // The autoscaler writes /scale: like the controller, only while leading.
    let (dead_letter_client, dead_letter_events) = (client.clone(), events.clone());
    // The queue observer writes status: only while leading, as the rest.
    let observer = tokio::spawn(
        Observer {
            client: client.clone(),
            pipelines: pipelines.clone(),
            every: config.timing.queues_interval,
        }
        .run(controller_stop.clone()),
    );
    let autoscaler = tokio::spawn(
        Autoscaler {
            client,
            namespaces: config.namespaces.clone(),
            pipelines,
            cache,
            interval: config.timing.autoscale_interval,
            facts,
            metrics: metrics.clone(),
            events,
            redis_users,
            trigger,
        }
        .run(controller_stop.clone()),
    );
    // Dead-letter actions sign with the key ring: only while leading.
    let dead_letters = tokio::spawn(
        DeadLetterActions {
            client: dead_letter_client,
            namespaces: config.namespaces.clone(),
            events: dead_letter_events,
        }
        .run(controller_stop.clone()),
    );

    let lost = async {
        match elector.as_mut() {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        reason = lost => {
            // Stop writing at once: the new leader may already be running.
            controller.abort();
            autoscaler.abort();
            dead_letters.abort();
            observer.abort();
            metrics.leader.set(0);
            return Err(RunError::LostLeadership(reason));
        }
        () = stop.cancelled() => Ok(()),
        r = &mut controller => {
            if let Err(e) = r {
                warn!(error = %e, "controller task ended");
            }
            Ok(())
        }
    };
    info!("shutting down");
    controller_stop.cancel();
    autoscaler.abort();
    // An action cut here stays Running, and the next leader fails it as
    // interrupted: none is done twice.
    dead_letters.abort();
    observer.abort();
    if tokio::time::timeout(DRAIN_TIMEOUT, &mut controller)
        .await
        .is_err()
    {
        warn!("reconciles still running after {DRAIN_TIMEOUT:?}; stopping anyway");
        controller.abort();
    }
    metrics.leader.set(0);
    if let Some(e) = elector.as_mut() {
        e.release().await;
    }
    result
}
