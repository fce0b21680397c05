//! One request through the pipeline, once admitted: the replay budget, the
//! ingress group's nodes in process, the signed first hop, and the answer
//! (waited for, or stored to be fetched). The HTTP route and the WebSocket
//! connection both call [`run`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_crds::InterfacePlan;
use sluice_exec_worker::worker::{DEAD_LETTER_RETENTION, KEY_MISSING_MESSAGE};
use sluice_exec_worker::{Chunks, Crash, NodeContext, StepOutcome};
use sluice_platform::clock::{from_ms, now_ms};
use sluice_platform::signing::{max_entry_bytes, oversized_output};
use sluice_platform::telemetry::{self, Span};
use sluice_platform::{DeadLetterNote, Envelope, Kind, ReplyError};
use tokio::sync::mpsc;

use crate::admission::admit_replay_budget;
use crate::async_answers;
use crate::error::{from_reply, internal, status_of_reply_code, timed_out, unavailable, ApiError};
use crate::idempotency::ClaimGuard;
use crate::metrics::InterfaceLabel;
use crate::state::AppState;
use crate::waiters::WaiterGuard;

/// An admitted request.
pub(crate) struct Call<'a> {
    /// The node the request enters at: the interface's `entry`, or a
    /// GraphQL operation's.
    pub entry: &'a str,
    pub cid: &'a str,
    pub rid: &'a str,
    pub input: Value,
    /// Unix ms by which the answer is due.
    pub deadline: u64,
    /// The request's timeout, as its errors name it.
    pub timeout: Duration,
    /// Answered `202` at once, the answer stored at `address`.
    pub later: bool,
    /// The id of a stored answer (asynchronous or idempotent requests).
    pub job: Option<async_answers::JobId>,
    /// Where the answer is stored; `None`: waited for by this process.
    pub address: Option<String>,
    /// The idempotency key claimed for this request.
    pub claimed: Option<ClaimGuard>,
    /// The answer is streamed (an `sse` interface).
    pub streamed: Option<Streamed>,
}

/// How a streamed request's answer travels.
pub(crate) struct Streamed {
    /// Where its chunks and answer are kept, for any ingress to resume
    /// (`async:<handle>`).
    pub address: String,
    /// Where the chunks of the nodes run here go, by delivery attempt.
    pub local: Arc<dyn Fn(u32) -> Chunks + Send + Sync>,
    /// Chunks the follower may hold before more are deferred to the store.
    pub room: usize,
}

/// A streamed request on its way: its answer, and its chunks as they come.
pub(crate) struct Following {
    pub waiter: WaiterGuard,
    pub chunks: mpsc::Receiver<Envelope>,
}

/// What a request is answered with.
pub(crate) enum Answer {
    /// The pipeline's answer.
    Now(Value),
    /// Queued; fetched later with this id.
    Later(async_answers::JobId),
    /// Queued; its chunks and answer follow.
    Following(Following),
}

/// A call answers its own deadline (`timeout`, in its route's shape); a
/// route that also bounds the whole call, against a queue write that
/// hangs, waits this much longer so its own cut-off never wins the race.
/// The call's timer is set from unix milliseconds and can fire up to a
/// millisecond after a timer started on the same deadline.
pub(crate) const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// Runs an admitted request that is waited for (`later: false`, no stored
/// answer) until its answer: the WebSocket and GraphQL routes' call.
pub(crate) async fn run_waited(
    s: &AppState,
    it: &InterfacePlan,
    span: &Span,
    call: Call<'_>,
) -> Result<Value, ApiError> {
    let rid = call.rid.to_string();
    match run(s, it, span, call).await? {
        Answer::Now(v) => Ok(v),
        Answer::Later(_) | Answer::Following(_) => {
            Err(internal("a request was queued without a waiter", &rid))
        }
    }
}

/// Runs an admitted request until it is answered (or queued, for
/// asynchronous requests).
pub(crate) async fn run(
    s: &AppState,
    it: &InterfacePlan,
    span: &Span,
    call: Call<'_>,
) -> Result<Answer, ApiError> {
    let Call {
        entry,
        cid,
        rid,
        input,
        deadline,
        timeout: timeout_of_request,
        later,
        job,
        address,
        claimed,
        streamed,
    } = call;
    admit_replay_budget(s, it, timeout_of_request, rid)?;
    let in_flight = s.interface_metrics[&it.name].in_flight().clone();
    in_flight.inc();
    let _dec = scopeguard(move || {
        in_flight.dec();
    });

    let mut env = Envelope {
        kind: Kind::Request,
        pipeline: s.keys.pipeline().to_string(),
        dest: String::new(),
        cid: cid.to_string(),
        rid: rid.to_string(),
        trace: None,
        ts: 0,
        nonce: String::new(),
        deadline,
        attempt: 1,
        node: None,
        plan: None,
        reply_to: Some(s.ingress_id.clone()),
        live: None,
        seq: None,
        last_seq: None,
        payload: Value::Null,
        error: None,
    };
    let timeout = || {
        s.metrics
            .timeouts
            .get_or_create(&InterfaceLabel {
                interface: it.name.clone(),
            })
            .inc();
        timed_out(timeout_of_request, rid)
    };

    // Nodes on the ingress group run here, before the first hop.
    let entry_group = &s.plan.nodes[entry].group;
    let (group, node, payload) = if *entry_group == s.plan.ingress_group {
        let mut ctx = NodeContext {
            request_id: rid.to_string(),
            correlation_id: cid.to_string(),
            node: String::new(),
            deadline: from_ms(deadline),
            attempt: 1,
            chunks: Chunks::none(),
        };
        let chunks_of = |attempt| {
            streamed
                .as_ref()
                .map_or_else(Chunks::none, |st| (st.local)(attempt))
        };
        ctx.chunks = chunks_of(1);
        let mut outcome = s.executor.run(entry, input.clone(), &ctx).await;
        // A retryable failure is tried again after a lease, as a worker's
        // entry would be redelivered, up to maxDeliveries and the deadline.
        let limits = &s.plan.limits;
        while matches!(&outcome, StepOutcome::Failed(e) if e.is_retryable())
            && ctx.attempt < limits.max_deliveries
            && now_ms() + (limits.lease.as_millis() as u64) < deadline
        {
            tokio::time::sleep(limits.lease).await;
            ctx.attempt += 1;
            ctx.chunks = chunks_of(ctx.attempt);
            outcome = s.executor.run(entry, input.clone(), &ctx).await;
        }
        match outcome {
            // Answered here: nothing to fetch later, so it is answered now
            // (and an idempotency key claimed for it is released: the
            // answer is not stored).
            StepOutcome::Done(v) => return Ok(Answer::Now(v)),
            StepOutcome::Forward {
                node,
                group,
                payload,
            } => (group, node, payload),
            StepOutcome::Failed(e) => {
                let code = if e.is_retryable() {
                    "retries_exhausted"
                } else {
                    "node_failed"
                };
                return Err(ApiError::new(
                    status_of_reply_code(code),
                    code,
                    e.message(),
                    rid,
                ));
            }
            StepOutcome::Expired => return Err(timeout()),
            StepOutcome::Crashed(crash) => {
                env.dest = s.plan.ingress_group.clone();
                env.node = Some(entry.to_string());
                env.payload = input;
                dead_letter_crash(s, &mut env, &crash).await;
                return Err(ApiError::new(
                    status_of_reply_code("node_crashed"),
                    "node_crashed",
                    crash.caller_message(),
                    rid,
                ));
            }
        }
    } else {
        (entry_group.clone(), entry.to_string(), input)
    };
    env.dest = group.clone();
    env.node = Some(node);
    env.payload = payload;

    // Register before pushing: the reply may arrive before push returns.
    // An interface missing from the map (cannot happen: both come from the
    // plan) takes no reply at all rather than any.
    let mut following = None;
    let mut waiter = match (&address, &streamed) {
        (_, Some(st)) => {
            open_store(s, &st.address, timeout_of_request, rid).await?;
            env.reply_to = Some(st.address.clone());
            env.live = Some(s.ingress_id.clone());
            let senders = s.reply_senders.get(&it.name).cloned().unwrap_or_default();
            let (guard, chunks) = s.waiters.register_streamed(cid, senders, st.room);
            following = Some(chunks);
            Some(guard)
        }
        (None, None) => {
            let senders = s.reply_senders.get(&it.name).cloned().unwrap_or_default();
            Some(s.waiters.register(cid, senders))
        }
        (Some(address), None) => {
            open_store(s, address, timeout_of_request, rid).await?;
            env.reply_to = Some(address.clone());
            None
        }
    };
    let stream = s.keys.queue(&group);
    let hop = if span.is_exported() {
        let hop = span.child(format!("send {group}"), telemetry::Kind::Producer);
        hop.set("messaging.destination.name", stream.clone());
        hop.set("sluice.node", env.node.clone().unwrap_or_default());
        env.trace = hop.traceparent();
        hop
    } else {
        Span::none()
    };
    let signed = match s.signer.sign(&mut env) {
        Ok(signed) => signed,
        Err(e) => {
            tracing::error!(request_id = %rid, error = %e, group, "cannot sign the request for its first hop");
            hop.fail("signing key missing");
            return Err(ApiError::new(
                status_of_reply_code("key_missing"),
                "key_missing",
                KEY_MISSING_MESSAGE,
                rid,
            ));
        }
    };
    // Only an ingress-group node's output can exceed it (the body was
    // checked); sent as it is, it would be refused unread and time out.
    let entry_limit = max_entry_bytes(s.plan.security.max_payload_bytes as usize);
    if signed.stored_len() > entry_limit {
        let message = oversized_output(entry, signed.stored_len(), entry_limit);
        tracing::warn!(request_id = %rid, %message, "output refused");
        hop.fail("output too large");
        return Err(ApiError::new(
            status_of_reply_code("node_failed"),
            "node_failed",
            &message,
            rid,
        ));
    }
    // From here the entry may be queued even if this handler is dropped (a
    // caller gone mid-push): the key is kept unless the push says it failed,
    // so a retry never runs the request a second time.
    let claimed = claimed.map(ClaimGuard::kept);
    if let Err(e) = s.queue.push(&stream, signed).await {
        tracing::warn!(request_id = %rid, error = %e, group, "queue push failed");
        hop.fail("queue push failed");
        if let Some(c) = claimed {
            c.release();
        }
        return Err(unavailable(rid));
    }
    drop(hop);
    if let Some(chunks) = following {
        let waiter = waiter.expect("a streamed request has a waiter");
        return Ok(Answer::Following(Following { waiter, chunks }));
    }
    // No waiter: the answer is stored, at `address`.
    let Some(waiter) = waiter.as_mut() else {
        if later {
            return Ok(Answer::Later(
                job.expect("an asynchronous request has an id"),
            ));
        }
        // Idempotent and waited for: the answer is where a repeat finds it.
        let address = address.expect("no waiter: the answer is stored");
        return match async_answers::wait_stored(s, it, &address, deadline).await {
            Some(answer) => answer.map(Answer::Now),
            None => Err(timeout()),
        };
    };
    let left = Duration::from_millis(deadline.saturating_sub(now_ms()));
    match tokio::time::timeout(left, &mut waiter.rx).await {
        Err(_) | Ok(Err(_)) => Err(timeout()),
        Ok(Ok(reply)) => {
            receive_span(&reply);
            match reply.error {
                None => Ok(Answer::Now(reply.payload)),
                Some(e) => Err(from_reply(e, rid)),
            }
        }
    }
}

/// Opens the stream an answer is stored in, at `address`, before the
/// request is sent: workers write replies only into streams that exist.
async fn open_store(
    s: &AppState,
    address: &str,
    timeout: Duration,
    rid: &str,
) -> Result<(), ApiError> {
    let answers = s.keys.reply(address);
    if let Err(e) = s
        .replies
        .open(&answers, async_answers::retention(s, timeout))
        .await
    {
        tracing::warn!(request_id = %rid, error = %e, "cannot open the answer stream");
        return Err(unavailable(rid));
    }
    Ok(())
}

/// A node of the ingress group panicked on `env`'s request: the request
/// (as it entered, so replaying it reproduces the crash) goes to the
/// dead-letter stream like a worker's crashed entry. Best effort: the
/// caller is answered whether or not the write succeeds.
async fn dead_letter_crash(s: &AppState, env: &mut Envelope, crash: &Crash) {
    tracing::error!(
        request_id = %env.rid,
        cid = %env.cid,
        node = %crash.node,
        panic = %crash.panic,
        "node panicked; dead-lettering the request"
    );
    let mut entry = match s.signer.sign(env) {
        Ok(entry) => entry,
        Err(e) => {
            tracing::warn!(request_id = %env.rid, error = %e, "dead-letter record not written: no key to sign it");
            return;
        }
    };
    let why = ReplyError::new("node_crashed", format!("node `{}` panicked", crash.node));
    entry.note = DeadLetterNote::new(s.signer.group(), 1, &why)
        .encode()
        .into();
    if let Err(e) = s
        .queue
        .push_capped(&s.keys.dead_letter(), entry, DEAD_LETTER_RETENTION)
        .await
    {
        tracing::warn!(request_id = %env.rid, error = %e, "dead-letter write failed");
    }
}

/// The reply's hop, from the worker signing it to this ingress taking it;
/// ends at once (the caller's answer is on the server span).
fn receive_span(reply: &Envelope) {
    if telemetry::enabled() {
        let signed = reply.ts.min(now_ms());
        let span = Span::start_at(
            "receive reply",
            telemetry::Kind::Consumer,
            reply.trace.as_deref(),
            Some(signed),
        );
        if reply.error.is_some() {
            span.fail("the pipeline answered with an error");
        }
    }
}

/// Runs `f` when dropped (the in-flight gauge must fall on every exit path,
/// including a caller hanging up).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    G(Some(f))
}
