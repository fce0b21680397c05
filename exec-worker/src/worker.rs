//! The worker loop of one group.
//!
//! ```text
//! read (≤ free slots) ─▶ verify ─▶ execute group's nodes ─┬─ forward: XADD next queue ┐
//!   ▲   reclaim lapsed leases                             ├─ reply:   XADD reply stream ├─▶ hand-off queue
//!   │                                                     └─ drop (forged, expired)   ┘        │
//!   └── lease renewal (every lease/3) for everything in flight                                 ▼
//!                 one `complete_all` at a time, of every hand-off waiting: XADDs + XACK + XDEL (one MULTI)
//! ```
//!
//! Hand-offs are committed as a group ([`crate::hand_off`]): idle, a
//! hand-off goes alone after one turn of the scheduler; busy, a batch
//! costs one round trip and four commands besides its `XADD`s.
//!
//! # Guarantees
//! - Never more entries in flight than `concurrency`.
//! - An entry is acknowledged only together with its hand-off, so a crash
//!   loses nothing: the entry's lease lapses and another consumer reclaims it.
//! - Retryable failures are left pending (their lease is no longer renewed),
//!   so they are redelivered after one lease; past `maxDeliveries` the
//!   envelope is dead-lettered and the caller gets an error reply.
//! - A node that panics costs one delivery: the envelope is dead-lettered
//!   at once and the caller gets a `node_crashed` reply. Whatever way
//!   handling an entry ends, even by a panic, its lease stops being renewed
//!   and the in-flight gauge falls (a drop guard, [`Holding`]).
//! - On shutdown the loop stops reading, finishes and hands off what it
//!   holds, then returns.
//! - While the pipeline is paused ([`Pause`]) the loop reads and reclaims
//!   nothing; what it holds is finished and its leases renewed. A read
//!   already sent when the pause arrives is worked on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::HashMap;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;
use sluice_crds::Plan;
use sluice_platform::clock::{from_ms, now_ms};
use sluice_platform::telemetry::{self, Span};
use sluice_platform::{
    At, Delivery, Envelope, Forward, Held, Keys, Pause, Queue, Rejection, ReplyError, Signer,
    StreamEntry, Verifier, VerifyError,
};
use sluice_platform::{BackendError, Completion};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::chunks::StreamedAnswer;
use crate::executor::{Executor, StepOutcome};
use crate::hand_off::HandOffs;
use crate::metrics::GroupMetrics;
use crate::node::{Chunks, NodeContext};
use crate::parts::RuntimeParts;

/// How one worker process consumes its group's queue.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub group: String,
    /// Unique per process: pending entries are owned by consumer name.
    pub consumer: String,
    pub concurrency: usize,
    pub lease: Duration,
    pub max_deliveries: u32,
    /// Longest wait of one blocking read; bounds shutdown latency.
    pub block: Duration,
}

impl WorkerConfig {
    /// The group's settings from the plan.
    pub fn from_plan(plan: &Plan, group: &str, consumer: String) -> Self {
        let concurrency = plan.groups.get(group).map_or(1, |g| g.concurrency as usize);
        Self {
            group: group.to_string(),
            consumer,
            concurrency,
            lease: plan.limits.lease,
            max_deliveries: plan.limits.max_deliveries,
            block: Duration::from_millis(500),
        }
    }
}

/// Dead letters kept per pipeline: the stream is trimmed to the newest ones,
/// so a flood of failures cannot fill Redis (which runs with noeviction).
pub const DEAD_LETTER_RETENTION: u64 = 10_000;

/// What a caller is told when a process cannot sign what its request needs
/// next (code `key_missing`): which key is in that process's log, not in
/// the answer.
pub const KEY_MISSING_MESSAGE: &str = "a process of the pipeline lacks a key it needs to pass \
     this request on (a deployment fault; its log names the key)";

/// Doubling wait between failed backend calls, 100 ms up to 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    /// Sleeps the current delay and doubles it; false if `shutdown` came first.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let slept = tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(self.0) => true,
        };
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        slept
    }
}

pub use hand_back::HAND_BACK_PATIENCE;

/// One group's consumer.
pub struct Worker {
    cfg: WorkerConfig,
    executor: Executor,
    queue: Arc<dyn Queue>,
    verifier: Verifier,
    signer: Signer,
    keys: Keys,
    metrics: GroupMetrics,
    stream: String,
    /// Entries being worked on, by id, with when this worker last learned
    /// each was its own: their leases are renewed. Ids are inserted before
    /// the entry's MAC is checked, and whoever may write to the queue can
    /// choose them, but the map never holds more than `concurrency`
    /// entries: foldhash's weaker resistance to chosen collisions costs
    /// nothing here.
    held: Mutex<HashMap<String, Instant>>,
    /// Hand-offs waiting to be committed together.
    hand_offs: Arc<HandOffs>,
    /// While paused, nothing is read or reclaimed.
    pause: Pause,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("cfg", &self.cfg).finish()
    }
}

impl Worker {
    /// A consumer of `cfg.group`'s queue, running `executor`'s nodes.
    pub fn new(
        cfg: WorkerConfig,
        executor: Executor,
        queue: Arc<dyn Queue>,
        parts: &RuntimeParts,
    ) -> Arc<Self> {
        let stream = parts.keys.queue(&cfg.group);
        // Replies say they come from this worker's group.
        let signer = parts.signer.for_group(&cfg.group);
        let metrics = GroupMetrics::new(parts.worker_metrics.clone(), &cfg.group);
        Arc::new(Self {
            cfg,
            executor,
            queue,
            verifier: parts.verifier.clone(),
            signer,
            keys: parts.keys.clone(),
            metrics,
            stream,
            held: Mutex::new(HashMap::default()),
            hand_offs: Arc::default(),
            pause: parts.pause.clone(),
        })
    }

    /// Consumes until `shutdown`, then drains what it holds and returns.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.cfg.concurrency));
        let renew_stop = CancellationToken::new();
        let renewer = tokio::spawn(self.clone().renew_leases(renew_stop.clone()));
        let mut backoff = Backoff::default();
        // The first pass reclaims: entries a worker that died left behind
        // (released at once by the tcp hub, or idle past the lease) are
        // taken up as soon as this one starts.
        let mut last_reclaim = tokio::time::Instant::now()
            .checked_sub(self.cfg.lease)
            .unwrap_or_else(tokio::time::Instant::now);
        // The group is created once here; reads recreate it on NOGROUP
        // (Redis restarted without persistence).
        while let Err(e) = self.queue.ensure_group(&self.stream).await {
            tracing::warn!(group = %self.cfg.group, error = %e, "cannot create consumer group; retrying");
            if !backoff.wait(&shutdown).await {
                break;
            }
        }
        while !shutdown.is_cancelled() {
            // Paused: what is held is finished (and renewed) meanwhile;
            // nothing new is taken, not even a lapsed lease.
            // Not known yet at start: nothing is read until it is.
            if !self.pause.is_running() {
                let paused = self.pause.is_paused();
                if paused {
                    tracing::info!(group = %self.cfg.group, "paused: no entry is read until the pipeline resumes");
                }
                let watching = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    w = self.pause.resumed() => w,
                };
                if !watching {
                    // The pause is no longer watched (the process is
                    // stopping): wait for the shutdown, never spin.
                    shutdown.cancelled().await;
                    break;
                }
                if paused {
                    tracing::info!(group = %self.cfg.group, "resumed");
                }
                continue;
            }
            // Wait for one free slot, then take every other free one: never
            // read more entries than can be worked on now.
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            // A busy worker waited for the slot: a pause may have come meanwhile.
            if !self.pause.is_running() {
                continue;
            }
            let reclaim_due = last_reclaim.elapsed() >= self.cfg.lease / 2;
            let batch = if reclaim_due {
                last_reclaim = tokio::time::Instant::now();
                self.queue
                    .reclaim(
                        &self.stream,
                        &self.cfg.consumer,
                        self.cfg.lease,
                        permits.len(),
                    )
                    .await
            } else {
                Ok(vec![])
            };
            let batch = match batch {
                Ok(b) if !b.is_empty() => Ok(b),
                // A read already sent is let finish when the drain begins:
                // what Redis hands this consumer in its answer is worked
                // on, not left pending for another worker's reclaim. The
                // read blocks at most `block`; one that hangs (backend
                // gone) is abandoned a second later.
                Ok(_) => tokio::select! {
                    biased;
                    r = self.queue.read(&self.stream, &self.cfg.consumer, permits.len(), self.cfg.block) => r,
                    _ = async {
                        shutdown.cancelled().await;
                        tokio::time::sleep(self.cfg.block + Duration::from_secs(1)).await;
                    } => break,
                },
                Err(e) => Err(e),
            };
            match batch {
                Ok(deliveries) => {
                    let received = Instant::now();
                    backoff = Backoff::default();
                    for d in deliveries {
                        // `permits` holds one per requested entry, and no
                        // read returns more than requested.
                        let Some(permit) = permits.pop() else { break };
                        // Reclaimed while this worker still runs it (its
                        // connection to the tcp hub broke and came back, and
                        // the hub released what the consumer held): one run
                        // is enough.
                        if self.held.lock().contains_key(&d.id) {
                            tracing::debug!(group = %self.cfg.group, id = %d.id, "reclaimed entry already running here; left to that run");
                            continue;
                        }
                        self.start(d, permit, received);
                    }
                }
                Err(e) => {
                    tracing::warn!(group = %self.cfg.group, error = %e, "queue read failed; retrying");
                    drop(permits);
                    if !backoff.wait(&shutdown).await {
                        break;
                    }
                }
            }
        }
        // Drain: no entry is taken any more, not even ahead of a read; what
        // was taken ahead (never more than the free slots) is finished with
        // the rest. Every slot back means every entry was handed off.
        match self
            .queue
            .done_reading(&self.stream, &self.cfg.consumer)
            .await
        {
            Ok(left) => {
                let received = Instant::now();
                for d in left {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        break;
                    };
                    self.start(d, permit, received);
                }
            }
            Err(e) => {
                tracing::warn!(group = %self.cfg.group, error = %e, "entries taken ahead left for reclaim")
            }
        }
        let _all = slots.acquire_many(self.cfg.concurrency as u32).await;
        renew_stop.cancel();
        let _ = renewer.await;
        tracing::info!(group = %self.cfg.group, "worker drained");
    }

    /// Works on `d` on a task of its own, holding `permit` until it is
    /// handed off.
    fn start(self: &Arc<Self>, d: Delivery, permit: OwnedSemaphorePermit, received: Instant) {
        self.held.lock().insert(d.id.clone(), received);
        let this = self.clone();
        // Boxed: an entry's future is several KB, and the task would copy
        // it whole when spawned and again when it completes.
        tokio::spawn(Box::pin(async move {
            this.handle(d).await;
            drop(permit);
        }));
    }

    async fn renew_leases(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let held: Vec<Held> = self
                .held
                .lock()
                .iter()
                .map(|(id, since)| Held {
                    id: id.clone(),
                    since: *since,
                })
                .collect();
            if held.is_empty() {
                continue;
            }
            if let Err(e) = self.renew(&held).await {
                tracing::warn!(group = %self.cfg.group, error = %e, "lease renewal failed");
            }
        }
    }

    /// Renews the leases of `held` and returns the ids found lost. Another
    /// consumer took those over after their lease lapsed (this one was
    /// slower than the lease), or they were completed: this worker stops
    /// renewing them and still hands off what it finishes
    /// (at-least-once). The rest were reset while the answer was on its
    /// way, which is when this worker last learned they were its own.
    async fn renew(&self, held: &[Held]) -> Result<Vec<String>, BackendError> {
        let lost = self
            .queue
            .renew(&self.stream, &self.cfg.consumer, held, self.cfg.lease)
            .await?;
        let renewed = Instant::now();
        let mut map = self.held.lock();
        for id in &lost {
            if map.remove(id).is_some() {
                tracing::debug!(group = %self.cfg.group, id = %id, "lease lost to another consumer");
            }
        }
        // Ids finished meanwhile are not brought back.
        for h in held {
            if let Some(since) = map.get_mut(&h.id) {
                *since = renewed;
            }
        }
        Ok(lost)
    }

    /// Handles one delivery to the end: hand-off, drop, or leave pending.
    async fn handle(&self, d: Delivery) {
        let gauge = self.metrics.in_flight().clone();
        gauge.inc();
        // Released on every way out of this function, unwinding included.
        let _holding = Holding {
            worker: self,
            id: &d.id,
            gauge,
        };
        if d.deliveries > 1 {
            self.metrics.redelivered();
        }
        self.handle_inner(&d).await;
    }

    async fn handle_inner(&self, d: &Delivery) {
        let g = &self.cfg.group;
        let at = At {
            stream: &self.stream,
            id: &d.id,
            deliveries: d.deliveries,
        };
        let other_plan = |env: &Envelope| {
            env.plan.as_deref() != Some(self.executor.generation())
                && !self.executor.runs(env.node.as_deref().unwrap_or_default())
        };
        let verified = self
            .verifier
            .verify_request_unless(&d.entry, &at, g, &other_plan)
            .await;
        let mut env = match verified {
            Ok(env) => env,
            Err(VerifyError::HandedBack(env)) => {
                self.hand_back(d, &env).await;
                return;
            }
            Err(VerifyError::Rejected(why)) => {
                let outcome = if why == Rejection::Expired {
                    "expired"
                } else {
                    "rejected"
                };
                tracing::debug!(group = %g, id = %d.id, reason = why.reason(), "entry refused");
                self.metrics.outcome(outcome);
                self.finish(d, None, outcome).await;
                return;
            }
            Err(VerifyError::Backend(e)) => {
                // The replay guard could not answer: leave the entry pending;
                // it is reclaimed after its lease.
                tracing::warn!(group = %g, id = %d.id, error = %e, "replay guard unavailable; entry left for redelivery");
                return;
            }
        };
        if d.deliveries > 1 && !self.still_ours(d).await {
            // Reclaimed from a slow worker that handed it off meanwhile
            // (or taken by another): running it again would only repeat it.
            tracing::debug!(group = %g, id = %d.id, "redelivered entry no longer pending for this worker; left alone");
            return;
        }
        if d.deliveries > self.cfg.max_deliveries {
            self.exhausted(d, &env, "delivered too many times").await;
            return;
        }
        let ctx = NodeContext {
            request_id: env.rid.clone(),
            correlation_id: env.cid.clone(),
            node: String::new(),
            deadline: from_ms(env.deadline),
            attempt: d.deliveries,
            chunks: Chunks::none(),
        };
        let streamed = StreamedAnswer::of(
            &env,
            d.deliveries,
            &self.signer,
            &self.verifier,
            &self.queue,
            &self.keys,
        );
        let ctx = match &streamed {
            Some(sink) => NodeContext {
                chunks: Chunks::to(sink.clone()),
                ..ctx
            },
            None => ctx,
        };
        let node = env.node.clone().unwrap_or_default();
        // Only a verified envelope's trace context is continued.
        let span = self.process_span(&env, &node, d.deliveries);
        if let Some(tp) = span.traceparent() {
            env.trace = Some(tp);
        }
        // The input is the node's: nothing after this reads it (a dead
        // letter copies the entry as it was read).
        let input = std::mem::take(&mut env.payload);
        let mut outcome = self.executor.run(&node, input, &ctx).await;
        if matches!(outcome, StepOutcome::Done(_)) && streamed.as_ref().is_some_and(|s| s.broken())
        {
            // A chunk was lost and the node answered regardless: the answer
            // would count a chunk nobody can read. Run it again.
            outcome = StepOutcome::Failed(crate::node::NodeError::Retryable(
                "a chunk of the answer was not sent".into(),
            ));
        }
        span.set("sluice.outcome", outcome_name(&outcome));
        match &outcome {
            StepOutcome::Failed(e) if e.is_retryable() => span.fail("retryable failure"),
            StepOutcome::Failed(_) => span.fail("node failed"),
            StepOutcome::Crashed(_) => span.fail("node crashed"),
            _ => {}
        }
        match outcome {
            StepOutcome::Done(value) => {
                let sent = streamed.as_ref().map(|s| s.sent());
                self.answer(d, &env, &node, Ok(value), sent).await
            }
            StepOutcome::Forward {
                node: to,
                group,
                payload,
            } => self.forward(d, &env, &node, &group, &to, payload).await,
            StepOutcome::Failed(e) if e.is_retryable() => {
                if d.deliveries >= self.cfg.max_deliveries {
                    self.exhausted(d, &env, e.message()).await;
                } else {
                    // Stop renewing: the lease lapses and the entry is redelivered.
                    tracing::debug!(group = %g, id = %d.id, attempt = d.deliveries, error = %e, "retryable failure");
                    self.metrics.outcome("retried");
                }
            }
            StepOutcome::Failed(e) => {
                let err = ReplyError::new("node_failed", e.message());
                self.answer(d, &env, &node, Err(err), None).await;
            }
            StepOutcome::Expired => {
                self.metrics.outcome("expired");
                self.finish(d, None, "expired").await;
            }
            StepOutcome::Crashed(crash) => self.crashed(d, &env, &crash).await,
        }
    }

    /// Whether a redelivered entry is still pending for this worker: the
    /// worker it was reclaimed from may have handed it off between the
    /// reclaim and the replay guard, which lets the same entry id pass as a
    /// redelivery. One renewal, only for redeliveries; a backend error
    /// counts as ours (at-least-once: run rather than lose).
    async fn still_ours(&self, d: &Delivery) -> bool {
        let since = self.held.lock().get(&d.id).copied();
        let Some(since) = since else {
            return false;
        };
        let held = [Held {
            id: d.id.clone(),
            since,
        }];
        self.renew(&held).await.map_or(true, |lost| lost.is_empty())
    }

    /// Answers `env`'s caller with `result` (`replied`, or `failed` for an
    /// error) and acknowledges. An answer too large for the ingress to
    /// accept becomes a `node_failed` error saying so. `sent`: the chunks
    /// this delivery streamed ahead of a streamed answer.
    async fn answer(
        &self,
        d: &Delivery,
        env: &Envelope,
        node: &str,
        result: Result<Value, ReplyError>,
        sent: Option<u64>,
    ) {
        let outcome = if result.is_ok() { "replied" } else { "failed" };
        let mut reply = env.reply(result);
        if sent.is_some() {
            reply.attempt = d.deliveries;
            reply.last_seq = sent;
        }
        let reply = match self.signer.sign(&mut reply) {
            Ok(reply) => reply,
            Err(e) => return self.key_missing(d, env, e).await,
        };
        let (reply, outcome) = match self.too_large(env, node, &reply) {
            None => (reply, outcome),
            Some(err) => match self.signer.sign(&mut env.reply(Err(err))) {
                Ok(refusal) => (refusal, "failed"),
                Err(e) => return self.key_missing(d, env, e).await,
            },
        };
        self.finish(d, Some(self.reply_forward(env, reply)), outcome)
            .await;
    }

    /// Sends `payload` on to node `to` of `group` and acknowledges; an
    /// envelope too large for its receiver is answered `node_failed`
    /// instead.
    async fn forward(
        &self,
        d: &Delivery,
        env: &Envelope,
        node: &str,
        group: &str,
        to: &str,
        payload: Value,
    ) {
        let next = match self.signer.sign(&mut env.hop(group, to, payload)) {
            Ok(next) => next,
            Err(e) => return self.key_missing(d, env, e).await,
        };
        if let Some(err) = self.too_large(env, node, &next) {
            return self.answer(d, env, node, Err(err), None).await;
        }
        let fwd = Forward {
            stream: self.keys.queue(group),
            entry: next,
            must_exist: false,
            copy_to: None,
        };
        self.finish(d, Some(fwd), "forwarded").await;
    }

    /// The span of one delivery: `process <node>`, child of the span that
    /// queued it (consumer kind), carrying the time it waited in the queue.
    fn process_span(&self, env: &Envelope, node: &str, deliveries: u32) -> Span {
        if !telemetry::enabled() {
            return Span::none();
        }
        let span = Span::start(
            format!("process {node}"),
            telemetry::Kind::Consumer,
            env.trace.as_deref(),
        );
        span.set("messaging.destination.name", self.stream.clone());
        span.set("sluice.pipeline", env.pipeline.clone());
        span.set("sluice.group", self.cfg.group.clone());
        span.set("sluice.node", node.to_string());
        span.set("sluice.correlation_id", env.cid.clone());
        span.set("sluice.attempt", i64::from(deliveries));
        span.set(
            "sluice.queue_wait_ms",
            now_ms().saturating_sub(env.ts) as i64,
        );
        span
    }

    /// `None` when `entry`'s receiver accepts its size; else the
    /// `node_failed` error telling `env`'s caller so. Sent as it is, the
    /// entry would be refused unread and the caller left to time out.
    fn too_large(&self, env: &Envelope, node: &str, entry: &StreamEntry) -> Option<ReplyError> {
        if self.verifier.accepts_size(entry) {
            return None;
        }
        let message = sluice_platform::signing::oversized_output(
            node,
            entry.stored_len(),
            self.verifier.max_entry_bytes(),
        );
        tracing::warn!(group = %self.cfg.group, request_id = %env.rid, %message, "output refused");
        Some(ReplyError::new("node_failed", message))
    }

    fn reply_forward(&self, env: &Envelope, reply: StreamEntry) -> Forward {
        Forward {
            stream: self.keys.reply(env.reply_to.as_deref().unwrap_or_default()),
            entry: reply,
            must_exist: true,
            // A streamed answer goes to its follower too.
            copy_to: env.live.as_deref().map(|live| self.keys.reply(live)),
        }
    }

    /// Hands off and acknowledges; on a backend error the entry stays
    /// pending and is redelivered after its lease.
    async fn finish(&self, d: &Delivery, forward: Option<Forward>, outcome: &str) {
        self.hand_off(d, forward, outcome, Kept::Nowhere).await;
    }

    /// [`Worker::finish`], for an entry that `kept` says is kept elsewhere
    /// already: a hand-off Redis applied only in part (the entry
    /// acknowledged and deleted, its forward maybe missing) is then not
    /// dead-lettered a second time.
    async fn hand_off(&self, d: &Delivery, forward: Option<Forward>, outcome: &str, kept: Kept) {
        let g = &self.cfg.group;
        let id = d.id.as_str();
        let is_reply = forward.as_ref().is_some_and(|f| f.must_exist);
        let done = Completion {
            id: d.id.clone(),
            forward,
        };
        match self.hand_offs.commit(&self.queue, &self.stream, done).await {
            Ok(true) => {
                if outcome != "rejected" && outcome != "expired" {
                    self.metrics.outcome(outcome);
                }
            }
            Ok(false) if is_reply => {
                tracing::debug!(group = %g, id, "reply stream gone (ingress restarted); reply dropped");
                self.metrics.outcome("reply_dropped");
            }
            Ok(false) => {}
            // Acknowledged, and its forward refused even when sent again
            // on its own: the entry exists only here now.
            Err(BackendError::PartlyApplied(why)) => {
                if kept == Kept::AsDeadLetter {
                    self.metrics.outcome(outcome);
                    tracing::error!(group = %g, id, error = %why, "the answer to a dead-lettered entry could not be sent");
                    return;
                }
                self.keep_acknowledged(d, &why).await;
            }
            Err(e) => {
                tracing::warn!(group = %g, id, error = %e, "hand-off failed; entry left for redelivery")
            }
        }
    }
}

/// Whether an entry being handed off is kept anywhere but its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    Nowhere,
    /// Copied to the dead-letter stream before its hand-off.
    AsDeadLetter,
}

/// A short name for a node's outcome, for spans.
fn outcome_name(o: &StepOutcome) -> &'static str {
    match o {
        StepOutcome::Done(_) => "done",
        StepOutcome::Forward { .. } => "forwarded",
        StepOutcome::Failed(e) if e.is_retryable() => "retryable_failure",
        StepOutcome::Failed(_) => "failed",
        StepOutcome::Expired => "expired",
        StepOutcome::Crashed(_) => "crashed",
    }
}

/// An entry this worker holds: while it lives the entry's lease is renewed
/// and it counts in `sluice_worker_in_flight`; dropping it ends both, on
/// every path out of [`Worker::handle`] (a panic included), so no entry is
/// held forever.
struct Holding<'w> {
    worker: &'w Worker,
    id: &'w str,
    gauge: Gauge,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.worker.held.lock().remove(self.id);
        self.gauge.dec();
    }
}

mod dead_letters;
mod hand_back;

#[cfg(test)]
mod tests;
