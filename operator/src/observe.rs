//! The queue observer: what an on-call engineer asks first — how much is
//! waiting, how fast it comes, how many dead letters — in each Redis
//! pipeline's status (`status.queues`, docs/operator.md "Status"), read by
//! `kubectl sluice status`.
//!
//! ```text
//! every --queues-interval (30 s; leader only): StreamPipelines from the controllers' stores, Redis backends,
//!   not suspended, valid ─▶ (at most 16 at once) Redis as `autoscaler` (URL and CA from
//!   the Secrets, read again every 5 min) ─▶ per worker group: XLEN, XPENDING,
//!   XINFO STREAM (one round trip); XLEN dlq
//!   ─▶ rate = entries appended since the reading before ÷ time between
//!   ─▶ merge-patch status.queues when it differs from the status, or 5 min after its readAt
//! pipelines no longer read (memory or tcp now, suspended, invalid) ─▶ status.queues removed
//! ```
//!
//! The status is written apart from the reconciler's (its apply leaves
//! `queues` alone, and a change of `queues` alone triggers no reconcile)
//! and only while something changes: an idle pipeline costs one write per
//! 5 minutes, a busy one one per reading. What was read before is kept in
//! memory for the rates: a new leader's first reading has none.
//!
//! This module must not write anything but `status.queues`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use futures::stream::{self, StreamExt};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use sluice_crds::{BackendKind, GroupRole, QueueStatus, QueuesStatus, StreamPipeline};
use sluice_platform::{Keys, RedisBackend};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::object::PipelineObject;
use crate::pipelines::PipelineStores;
use crate::redis_target::Connection;
use crate::render::redis_acl::Role;

/// An unchanged reading is written again after this long (its `readAt`
/// says it is current).
const REFRESH: Duration = Duration::from_secs(300);
/// Pipelines read at once.
const CONCURRENCY: usize = 16;
/// Timeout of each Redis call.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Field manager of the status writes.
pub const FIELD_MANAGER: &str = "sluice-operator-observer";

/// The observer of one operator process.
pub struct Observer {
    pub client: Client,
    pub pipelines: Arc<PipelineStores>,
    /// How often the queues are read.
    pub every: Duration,
}

/// What the observer keeps of one pipeline.
#[derive(Default)]
struct Known {
    conn: Option<Connection>,
    /// Per group: entries ever appended, and when read.
    added: HashMap<String, (u64, Instant)>,
}

impl Observer {
    /// Reads every `EVERY` until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut known: HashMap<String, Known> = HashMap::new();
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let Some(all) = self.pipelines.snapshot() else {
                continue;
            };
            let mut pipelines = vec![];
            for sp in all.iter().filter_map(|p| PipelineObject::pipeline(p)) {
                if observed(&sp) {
                    pipelines.push(sp);
                } else if sp.status.as_ref().is_some_and(|s| s.queues.is_some()) {
                    // No longer read (memory or tcp now, suspended,
                    // invalid): its last reading would mislead.
                    self.write(&sp, Value::Null).await;
                }
            }
            let keys: Vec<String> = pipelines.iter().map(key_of).collect();
            known.retain(|k, _| keys.contains(k));
            let mut work = vec![];
            for sp in pipelines {
                let k = known.remove(&key_of(&sp)).unwrap_or_default();
                work.push((sp, k));
            }
            let this = &self;
            let done: Vec<(String, Known)> = stream::iter(work)
                .map(|(sp, k)| async move {
                    let k = this.observe(&sp, k).await;
                    (key_of(&sp), k)
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            known.extend(done);
        }
    }

    /// Reads one pipeline's queues and writes them when they differ from
    /// what its status holds, or that is older than [`REFRESH`].
    async fn observe(&self, sp: &StreamPipeline, mut k: Known) -> Known {
        // Made once it answers: a connection still being made would fail
        // the first reading of every pipeline.
        let connected = Connection::refresh(
            &self.client,
            sp,
            Role::Autoscaler,
            k.conn.take(),
            REDIS_TIMEOUT,
            true,
        )
        .await;
        let reading = match connected {
            Ok(c) => {
                let r = read(sp, &c.backend, &mut k.added).await;
                k.conn = Some(c);
                r
            }
            Err(e) => Err(e),
        };
        let live = sp.status.as_ref().and_then(|s| s.queues.clone());
        let queues = match reading {
            Ok(q) => q,
            Err(e) => {
                // A failed connection is made again at the next reading.
                k.conn = None;
                QueuesStatus {
                    error: Some(e),
                    ..live.clone().unwrap_or_default()
                }
            }
        };
        if live.as_ref().is_some_and(|l| same(l, &queues)) {
            return k;
        }
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        // Every field named, `error` as null when there is none: a merge
        // patch keeps what it does not name.
        let body = json!({
            "readAt": now,
            "error": queues.error,
            "deadLetters": queues.dead_letters,
            "groups": queues.groups,
        });
        self.write(sp, body).await;
        k
    }

    /// Merge-patches `status.queues` of `sp` to `queues` (null: removed).
    async fn write(&self, sp: &StreamPipeline, queues: Value) {
        let api: Api<PipelineObject> =
            Api::namespaced(self.client.clone(), &sp.namespace().unwrap_or_default());
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let body = json!({"status": {"queues": queues}});
        match api
            .patch_status(&sp.name_any(), &pp, &Patch::Merge(&body))
            .await
        {
            Ok(_) => debug!(pipeline = %key_of(sp), "queues written to status"),
            Err(e) => {
                warn!(pipeline = %key_of(sp), error = %e, "cannot write the queues to status")
            }
        }
    }
}

/// Whether the observer reads `sp`: Redis backends, not being deleted,
/// not suspended, valid.
fn observed(sp: &StreamPipeline) -> bool {
    sp.metadata.deletion_timestamp.is_none()
        && sp.spec.suspend != Some(true)
        && sp.spec.backends.queue == BackendKind::Redis
        && sluice_crds::validate(&sp.spec).is_empty()
}

fn key_of(sp: &StreamPipeline) -> String {
    format!("{}/{}", sp.namespace().unwrap_or_default(), sp.name_any())
}

/// Each worker group's queue and the dead letters; `added` keeps what was
/// appended by the reading before, for the rates.
async fn read(
    sp: &StreamPipeline,
    redis: &RedisBackend,
    added: &mut HashMap<String, (u64, Instant)>,
) -> Result<QueuesStatus, String> {
    let keys = Keys::new(&sp.namespace().unwrap_or_default(), &sp.name_any());
    let mut groups = vec![];
    for g in sp
        .spec
        .groups
        .iter()
        .filter(|g| g.role == GroupRole::Worker)
    {
        let stats = redis
            .stream_stats(&keys.queue(&g.name))
            .await
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        let per_second = added
            .insert(g.name.clone(), (stats.entries_added, now))
            .and_then(|(before, at)| rate(before, stats.entries_added, now - at));
        groups.push(QueueStatus {
            name: g.name.clone(),
            waiting: stats.waiting(),
            in_progress: stats.pending,
            per_second,
        });
    }
    let dead_letters = redis
        .stream_len(&keys.dead_letter())
        .await
        .map_err(|e| e.to_string())?;
    Ok(QueuesStatus {
        read_at: String::new(),
        error: None,
        dead_letters: Some(dead_letters),
        groups,
    })
}

/// Whether `live` (the status) already says what `read` does, and is
/// younger than [`REFRESH`].
fn same(live: &QueuesStatus, read: &QueuesStatus) -> bool {
    let fresh = chrono::DateTime::parse_from_rfc3339(&live.read_at)
        .ok()
        .and_then(|t| (Utc::now() - t.with_timezone(&Utc)).to_std().ok())
        .is_some_and(|age| age < REFRESH);
    fresh
        && live.error == read.error
        && live.dead_letters == read.dead_letters
        && live.groups == read.groups
}

/// Entries appended per second between two readings, one decimal; `None`
/// when the counter went back (the stream was lost and started again) or
/// no time passed.
fn rate(before: u64, now: u64, between: Duration) -> Option<String> {
    let appended = now.checked_sub(before)?;
    let secs = between.as_secs_f64();
    (secs > 0.0).then(|| format!("{:.1}", appended as f64 / secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_what_was_appended_over_the_time_between() {
        assert_eq!(
            rate(100, 400, Duration::from_secs(30)).as_deref(),
            Some("10.0")
        );
        assert_eq!(rate(5, 5, Duration::from_secs(30)).as_deref(), Some("0.0"));
        assert_eq!(rate(400, 3, Duration::from_secs(30)), None, "stream lost");
        assert_eq!(rate(1, 2, Duration::ZERO), None);
    }
}
