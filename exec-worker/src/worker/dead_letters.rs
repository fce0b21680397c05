//! Dead-lettering: an entry this worker gives up on (a node that panicked,
//! deliveries exhausted, a key it lacks) or one a hand-off acknowledged
//! without its next step is copied to the dead-letter stream, as it was
//! read, with a note (docs/wire-format.md, "Dead letters").

use sluice_platform::{
    BackendError, DeadLetterNote, Delivery, Envelope, ReplyError, SignError, StreamEntry,
};

use super::{Kept, Worker, DEAD_LETTER_RETENTION, KEY_MISSING_MESSAGE};
use crate::executor::Crash;

impl Worker {
    /// This worker cannot sign what `env` needs next: its key directory
    /// lacks the key (a deployment fault, not the request's). The entry is
    /// dead-lettered, to be replayed once the keys are fixed, and the caller
    /// answered `key_missing` when this worker can still sign a reply to
    /// it; otherwise the caller's request times out.
    pub(super) async fn key_missing(&self, d: &Delivery, env: &Envelope, e: SignError) {
        tracing::error!(
            group = %self.cfg.group,
            id = %d.id,
            cid = %env.cid,
            request_id = %env.rid,
            error = %e,
            "cannot sign the next envelope; dead-lettering the entry"
        );
        let err = ReplyError::new("key_missing", KEY_MISSING_MESSAGE);
        self.dead_letter(d, env, err, "key_missing").await;
    }

    /// A node panicked on this entry: dead-letter it now, whatever its
    /// delivery count (the same input would panic again, and a hostile one
    /// must not cost `maxDeliveries` attempts), and answer the caller.
    pub(super) async fn crashed(&self, d: &Delivery, env: &Envelope, crash: &Crash) {
        tracing::error!(
            group = %self.cfg.group,
            id = %d.id,
            node = %crash.node,
            cid = %env.cid,
            request_id = %env.rid,
            panic = %crash.panic,
            "node panicked; dead-lettering the entry"
        );
        let err = ReplyError::new("node_crashed", crash.caller_message());
        self.dead_letter(d, env, err, "crashed").await;
    }

    /// Past `maxDeliveries`: dead-letter and answer `retries_exhausted`.
    pub(super) async fn exhausted(&self, d: &Delivery, env: &Envelope, why: &str) {
        tracing::warn!(group = %self.cfg.group, id = %d.id, deliveries = d.deliveries, cid = %env.cid, request_id = %env.rid, "dead-lettered: {why}");
        let err = ReplyError::new(
            "retries_exhausted",
            format!("gave up after {} deliveries: {why}", d.deliveries),
        );
        self.dead_letter(d, env, err, "dead_lettered").await;
    }

    /// Copies the entry to the dead-letter stream, then answers the caller
    /// with `err` and acknowledges, counting `outcome` (`key_missing` when
    /// this worker holds no key to sign the answer: the caller times out).
    pub(super) async fn dead_letter(
        &self,
        d: &Delivery,
        env: &Envelope,
        err: ReplyError,
        outcome: &str,
    ) {
        let g = &self.cfg.group;
        // Push first: a crash between the two steps duplicates the dead
        // letter rather than losing it.
        if let Err(e) = self.copy_to_dead_letters(d, &err).await {
            tracing::warn!(group = %g, error = %e, "dead-letter write failed; entry left for redelivery");
            return;
        }
        let (forward, outcome) = match self.signer.sign(&mut env.reply(Err(err))) {
            Ok(reply) => (Some(self.reply_forward(env, reply)), outcome),
            Err(e) => {
                tracing::error!(group = %g, id = %d.id, cid = %env.cid, request_id = %env.rid, error = %e, "cannot sign the reply; the caller is not answered and will time out");
                (None, "key_missing")
            }
        };
        self.hand_off(d, forward, outcome, Kept::AsDeadLetter).await;
    }

    /// Copies `d`'s entry, as it was read, to the dead-letter stream with a
    /// note saying who gave up on it and `err`.
    pub(super) async fn copy_to_dead_letters(
        &self,
        d: &Delivery,
        err: &ReplyError,
    ) -> Result<String, BackendError> {
        let entry = StreamEntry {
            note: DeadLetterNote::new(&self.cfg.group, d.deliveries, err)
                .encode()
                .into(),
            ..d.entry.clone()
        };
        self.queue
            .push_capped(&self.keys.dead_letter(), entry, DEAD_LETTER_RETENTION)
            .await
    }

    /// `d` was acknowledged and deleted by a hand-off Redis applied only
    /// in part, and what it sent on (its next step, its reply, or its copy
    /// handed back) could not be written even when sent again on its own
    /// (`why`): the entry exists only in this process now, so it is copied
    /// to the dead-letter stream (`hand_off_failed`), or counted `lost`
    /// when that write fails too.
    pub(super) async fn keep_acknowledged(&self, d: &Delivery, why: &str) {
        let (g, id) = (&self.cfg.group, d.id.as_str());
        tracing::error!(group = %g, id, error = %why, "hand-off applied in part and what it sends on refused; dead-lettering the entry");
        let err = ReplyError::new(
            "hand_off_failed",
            "the entry was acknowledged but what it sends on could not be written",
        );
        match self.copy_to_dead_letters(d, &err).await {
            Ok(_) => self.metrics.outcome("hand_off_failed"),
            Err(e) => {
                self.metrics.outcome("lost");
                tracing::error!(group = %g, id, error = %e, "dead-letter write failed; the entry is lost");
            }
        }
    }
}
