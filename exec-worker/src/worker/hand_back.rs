//! Handing back a request of another generation of the graph (a spec
//! change rolling out) for a node this worker does not run: to the queue,
//! uncounted, for a worker of that generation (docs/wire-format.md,
//! "Delivery").

use std::time::Duration;

use sluice_platform::clock::now_ms;
use sluice_platform::{
    BackendError, Completion, Delivery, Envelope, HandBackNote, ReplyError, StreamEntry,
};

use super::Worker;
use crate::hand_off::send_again;

/// How long after its first hand-back a request of another generation of
/// the graph may still be handed back: a rollout's pods of both graphs
/// overlap for less (a Deployment's progress deadline is 10 minutes).
pub const HAND_BACK_PATIENCE: Duration = Duration::from_secs(600);
/// The most a worker holds a request before handing it back.
const HAND_BACK_PAUSE: Duration = Duration::from_millis(100);

impl Worker {
    /// Gives `d` back to the queue, uncounted: a request of another
    /// generation of the graph (a spec change rolling out) for a node this
    /// worker does not run. A worker of that generation, still draining or
    /// just started, takes it; its deadline bounds the wait, and so does
    /// [`HAND_BACK_PATIENCE`]: a request no worker took that long after its
    /// first hand-back (its generation is gone, or never existed) is
    /// refused, its caller answered.
    pub(super) async fn hand_back(&self, d: &Delivery, env: &Envelope) {
        let g = &self.cfg.group;
        let now = now_ms();
        let before = HandBackNote::decode(&d.entry.note);
        let first = before.map_or(now, |n| n.since.min(now));
        let patience = u64::try_from(HAND_BACK_PATIENCE.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(first) > patience {
            let node = env.node.clone().unwrap_or_default();
            tracing::warn!(group = %g, id = %d.id, request_id = %env.rid, node = %node, "no worker of the request's graph took it; refused");
            let err = ReplyError::new(
                "node_failed",
                format!(
                    "node `{node}` does not run on group `{g}`, and no worker of the graph that sent it took it within {}s",
                    HAND_BACK_PATIENCE.as_secs()
                ),
            );
            self.answer(d, env, &node, Err(err), None).await;
            return;
        }
        // Not at once: while no worker of its generation runs, the workers
        // of this one pass it around, each holding it this long.
        tokio::time::sleep((self.cfg.lease / 8).min(HAND_BACK_PAUSE)).await;
        // Renewed no more from here on: a renewal would make it fresh
        // again (one already on its way may still: it then waits one
        // lease more).
        let since = self.held.lock().remove(&d.id);
        let Some(since) = since else { return };
        let entry = StreamEntry {
            note: HandBackNote {
                since: first,
                times: before.map_or(1, |n| n.times.saturating_add(1)),
            }
            .encode()
            .into(),
            ..d.entry.clone()
        };
        let outcome = self
            .queue
            .hand_back(
                &self.stream,
                &self.cfg.consumer,
                d,
                &entry,
                since,
                self.cfg.lease,
            )
            .await;
        match outcome {
            Ok(true) => {
                tracing::debug!(group = %g, id = %d.id, "request of another plan generation handed back");
                self.metrics.outcome("handed_back");
            }
            Ok(false) => {
                tracing::debug!(group = %g, id = %d.id, "request of another plan generation left for its lease")
            }
            // Acknowledged and deleted, its copy maybe not written: written
            // again on its own (a copy written twice is refused by the
            // replay guard of whoever reads the second), else kept as a
            // dead letter.
            Err(BackendError::PartlyApplied(why)) => {
                let back = Completion::hand_back(&d.id, &self.stream, entry);
                match send_again(&*self.queue, &[back], &why).await.remove(0) {
                    Ok(true) => {
                        tracing::warn!(group = %g, id = %d.id, error = %why, "hand-back applied in part; its copy written again");
                        self.metrics.outcome("handed_back");
                    }
                    Ok(false) => self.keep_acknowledged(d, &why).await,
                    Err(e) => self.keep_acknowledged(d, &e.to_string()).await,
                }
            }
            Err(e) => {
                tracing::warn!(group = %g, id = %d.id, error = %e, "cannot hand back a request of another plan generation; left for its lease")
            }
        }
    }
}
