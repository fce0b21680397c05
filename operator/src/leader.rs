//! Leader election on a `coordination.k8s.io/v1` Lease, so that several
//! operator replicas are safe: only the holder runs the controller.
//!
//! ```text
//! standby ──poll every renew interval──▶ Lease free, released, or unchanged for a lease duration?
//!    ▲                                         │ yes: take it (update with resourceVersion)
//!    │                                         ▼
//!    └──── another holder ◀──────────── leader ── renew every renew interval
//!                                              │ renew fails for 2/3 of the lease duration,
//!                                              │ or another holder appears
//!                                              ▼
//!                                          lost: the process exits (status 3) and restarts
//! ```
//!
//! Expiry is judged the way client-go does: by how long **this** process
//! has seen the same lease record (holder, renewTime, resourceVersion)
//! unchanged on its own monotonic clock, never by comparing another
//! node's timestamps with ours, so clock skew between nodes does not
//! matter. Every write is an update carrying the resourceVersion read just
//! before, so two candidates can never both win (the loser gets `409`).
//!
//! The leader stops renewing on its own before the lease can expire in the
//! eyes of a standby (renew deadline = 2/3 of the duration), so two
//! controllers never run at once as long as both processes' clocks run at
//! roughly the same rate.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tracing::{debug, info, warn};

use crate::config::LeaderElection;
use crate::reconcile::FIELD_MANAGER;

/// Why the leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    #[error("lease taken over by {0}")]
    TakenOver(String),
    #[error("could not renew the lease for {0:?}")]
    RenewDeadline(Duration),
}

/// The lease record as last seen, and when this process first saw it.
#[derive(Debug)]
struct Observed {
    record: (Option<String>, Option<String>, Option<String>),
    since: Instant,
}

/// One candidate for the lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaderElection,
    identity: String,
    observed: Option<Observed>,
}

/// Outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    /// We hold the lease now.
    Held,
    /// Someone else does; it expires (for us) after this long at the latest.
    Other {
        holder: String,
        expires_in: Duration,
    },
    /// Another candidate wrote the Lease between our read and our write
    /// (`409`); look again next round.
    Raced,
}

impl Elector {
    pub fn new(client: Client, cfg: LeaderElection, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            identity,
            observed: None,
        }
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.cfg.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    fn pp() -> PostParams {
        PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        }
    }

    /// One acquire-or-renew round trip.
    async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.duration_secs()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&Self::pp(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Raced),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (
            holder.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
            lease.metadata.resource_version.clone(),
        );
        let since = match &self.observed {
            Some(o) if o.record == record => o.since,
            _ => Instant::now(),
        };
        self.observed = Some(Observed { record, since });
        let their_duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(u64::try_from(s.max(1)).unwrap_or(1)))
            .unwrap_or(self.cfg.duration);
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let elapsed = since.elapsed();
        if !ours {
            if let Some(h) = holder.as_ref().filter(|_| elapsed < their_duration) {
                return Ok(Attempt::Other {
                    holder: h.clone(),
                    expires_in: their_duration - elapsed,
                });
            }
            // Free, released or expired: take it over.
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.duration_secs());
        match self.api.replace(&self.cfg.name, &Self::pp(), &lease).await {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Raced),
            Err(e) => Err(e),
        }
    }

    /// Waits until this process holds the lease.
    ///
    /// # Guarantees
    /// Returns only once the lease names this process, freshly renewed.
    pub async fn acquire(&mut self) {
        let mut logged: Option<String> = None;
        loop {
            let wait = match self.attempt().await {
                Ok(Attempt::Held) => {
                    info!(lease = %self.cfg.name, identity = %self.identity, "acquired the leader lease");
                    return;
                }
                Ok(Attempt::Other { holder, expires_in }) => {
                    if logged.as_ref() != Some(&holder) {
                        info!(%holder, "standing by: another operator leads");
                        logged = Some(holder);
                    }
                    // Retry no later than the moment the lease would expire.
                    self.cfg
                        .renew_interval
                        .min(expires_in + Duration::from_millis(10))
                }
                Ok(Attempt::Raced) => self.cfg.renew_interval,
                Err(e) => {
                    warn!(error = %e, "cannot read or take the leader lease");
                    self.cfg.renew_interval
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Renews the lease until it is lost, and says why.
    ///
    /// # Guarantees
    /// Returns no later than 2/3 of the lease duration after the last
    /// successful renewal (a hanging request is cut off), i.e. before a
    /// standby can consider the lease expired. The caller must stop the
    /// controller at once.
    pub async fn hold(&mut self) -> Lost {
        let deadline = self.cfg.duration.mul_f64(2.0 / 3.0);
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.renew_interval).await;
            // A request that hangs must not keep us leading past the
            // deadline: a standby may take over soon after it.
            let left = deadline.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, self.attempt()).await {
                Ok(Ok(Attempt::Held)) => {
                    renewed = Instant::now();
                    debug!("renewed the leader lease");
                }
                Ok(Ok(Attempt::Other { holder, .. })) => return Lost::TakenOver(holder),
                Ok(Ok(Attempt::Raced)) => {}
                Ok(Err(e)) => warn!(error = %e, "cannot renew the leader lease"),
                Err(_) => warn!("renewing the leader lease timed out"),
            }
            if renewed.elapsed() >= deadline {
                return Lost::RenewDeadline(renewed.elapsed());
            }
        }
    }

    /// Gives the lease up (on a clean shutdown) so a standby takes over at
    /// once instead of after the lease duration. Best effort.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.api.replace(&self.cfg.name, &Self::pp(), &lease).await {
            Ok(_) => info!("released the leader lease"),
            Err(e) => warn!(error = %e, "cannot release the leader lease"),
        }
    }
}
