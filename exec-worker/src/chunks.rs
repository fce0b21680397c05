//! The chunks of a streamed answer, as a worker sends them.
//!
//! A request of an `sse` interface names two receivers for its replies:
//! `reply_to`, the stream where its answer is kept (`async:<handle>`,
//! readable by any ingress to resume the stream), and `live`, the ingress
//! instance following it. Each chunk a node emits is a signed reply with
//! `seq` (from 1) and `attempt` (this delivery), appended to both in one
//! round trip, before the node goes on; the final reply follows with
//! `last_seq`, handed off with the entry as any reply.
//!
//! ```text
//! node ─emit─▶ sign {kind: reply, seq, attempt} ─▶ XADD store NOMKSTREAM ┐ one round trip
//!                                                  XADD live  NOMKSTREAM ┘
//! output ─▶ sign {kind: reply, last_seq, attempt} ─▶ hand-off: store (+ copy to live), XACK, XDEL
//! ```
//!
//! A chunk must not be lost silently: one that cannot be sent fails the
//! node (retryable on a backend error, so the request runs again and the
//! caller is told to reset; permanent when it is too large, past
//! [`MAX_CHUNKS`] or past [`MAX_CHUNK_ENTRIES_BYTES`] entries' worth of
//! bytes), and a node that goes on regardless does not answer: its
//! delivery is run again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sluice_platform::{Envelope, Keys, Queue, Signer, Verifier};

use crate::node::{ChunkSink, NodeError};

/// Chunks one delivery of a request may send: each is kept in Redis for
/// the request's timeout plus `results.ttl`.
pub const MAX_CHUNKS: u64 = 10_000;

/// Stored bytes one delivery's chunks may take, in entries of the
/// pipeline's largest size: a node cannot turn a small input into an
/// unbounded amount of Redis memory.
pub const MAX_CHUNK_ENTRIES_BYTES: u64 = 16;

/// The chunk sink of one delivery of a streamed request.
pub struct StreamedAnswer {
    /// The request, without its payload: every chunk is a reply to it.
    request: Envelope,
    attempt: u32,
    signer: Signer,
    verifier: Verifier,
    queue: Arc<dyn Queue>,
    /// The answer's store, then the following ingress's reply stream.
    streams: [String; 2],
    sent: AtomicU64,
    /// Stored bytes of the chunks sent.
    bytes: AtomicU64,
    /// A chunk could not be sent: the delivery's answer would count a
    /// chunk the caller never gets, so the delivery must not answer.
    broken: AtomicBool,
}

impl StreamedAnswer {
    /// The sink for delivery `attempt` of `request`; `None` unless the
    /// request is streamed (names a store and a live follower).
    pub fn of(
        request: &Envelope,
        attempt: u32,
        signer: &Signer,
        verifier: &Verifier,
        queue: &Arc<dyn Queue>,
        keys: &Keys,
    ) -> Option<Arc<Self>> {
        let store = request.reply_to.as_deref()?;
        let live = request.live.as_deref()?;
        let streams = [keys.reply(store), keys.reply(live)];
        Some(Arc::new(Self {
            request: Envelope {
                payload: Value::Null,
                ..request.clone()
            },
            attempt,
            signer: signer.clone(),
            verifier: verifier.clone(),
            queue: queue.clone(),
            streams,
            sent: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            broken: AtomicBool::new(false),
        }))
    }

    /// Chunks sent so far: the final reply's `last_seq`.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst).min(MAX_CHUNKS)
    }

    /// Whether a chunk could not be sent (the node may have gone on
    /// regardless): the delivery must be run again rather than answer.
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    fn refuse(&self, e: NodeError) -> Result<(), NodeError> {
        self.broken.store(true, Ordering::SeqCst);
        Err(e)
    }
}

#[async_trait]
impl ChunkSink for StreamedAnswer {
    async fn send(&self, chunk: Value) -> Result<(), NodeError> {
        if self.broken() {
            return Err(NodeError::Retryable(
                "an earlier chunk of this answer was not sent".into(),
            ));
        }
        // Numbered as sent: a node emitting from concurrent tasks still
        // gives each chunk its own number (the ingress orders them).
        let seq = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        if seq > MAX_CHUNKS {
            return self.refuse(NodeError::Permanent(format!(
                "a streamed answer may have at most {MAX_CHUNKS} chunks"
            )));
        }
        let mut env = self.request.chunk(self.attempt, seq, chunk);
        let entry = match self.signer.sign(&mut env) {
            Ok(entry) => entry,
            Err(e) => {
                return self.refuse(NodeError::Permanent(format!("cannot sign a chunk: {e}")))
            }
        };
        let limit = self.verifier.max_entry_bytes() as u64;
        if !self.verifier.accepts_size(&entry) {
            return self.refuse(NodeError::Permanent(format!(
                "a chunk of {} bytes exceeds the pipeline's entry limit of {limit} bytes (maxPayloadBytes)",
                entry.stored_len(),
            )));
        }
        let total = self
            .bytes
            .fetch_add(entry.stored_len() as u64, Ordering::SeqCst)
            + entry.stored_len() as u64;
        if total > limit.saturating_mul(MAX_CHUNK_ENTRIES_BYTES) {
            return self.refuse(NodeError::Permanent(format!(
                "a streamed answer's chunks may take at most {} bytes ({MAX_CHUNK_ENTRIES_BYTES} × the entry limit)",
                limit.saturating_mul(MAX_CHUNK_ENTRIES_BYTES)
            )));
        }
        let [store, live] = &self.streams;
        match self.queue.append(&[store, live], &entry).await {
            // The store is gone: the request is past its deadline and
            // retention. Nobody can read the chunk; the node's output will
            // be dropped the same way.
            Ok(_) => Ok(()),
            Err(e) => self.refuse(NodeError::Retryable(format!("a chunk was not sent: {e}"))),
        }
    }
}
