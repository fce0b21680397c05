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
//! caller is told to reset; permanent when it is too large or past
//! [`MAX_CHUNKS`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sluice_platform::{Envelope, Keys, Queue, Signer, Verifier};

use crate::node::{ChunkSink, NodeError};

/// Chunks one delivery of a request may send: each is kept in Redis for
/// the request's timeout plus `results.ttl`.
pub const MAX_CHUNKS: u64 = 10_000;

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
        }))
    }

    /// Chunks sent so far: the final reply's `last_seq`.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst).min(MAX_CHUNKS)
    }

    /// The stream the answer is kept in, and the follower's.
    pub fn streams(&self) -> &[String; 2] {
        &self.streams
    }
}

#[async_trait]
impl ChunkSink for StreamedAnswer {
    async fn send(&self, chunk: Value) -> Result<(), NodeError> {
        // Numbered as sent: a node emitting from concurrent tasks still
        // gives each chunk its own number (the ingress orders them).
        let seq = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        if seq > MAX_CHUNKS {
            return Err(NodeError::Permanent(format!(
                "a streamed answer may have at most {MAX_CHUNKS} chunks"
            )));
        }
        let mut env = self.request.chunk(self.attempt, seq, chunk);
        let entry = self
            .signer
            .sign(&mut env)
            .map_err(|e| NodeError::Permanent(format!("cannot sign a chunk: {e}")))?;
        if !self.verifier.accepts_size(&entry) {
            return Err(NodeError::Permanent(format!(
                "a chunk of {} bytes exceeds the pipeline's entry limit of {} bytes (maxPayloadBytes)",
                entry.stored_len(),
                self.verifier.max_entry_bytes()
            )));
        }
        let [store, live] = &self.streams;
        match self.queue.append(&[store, live], &entry).await {
            // The store is gone: the request is past its deadline and
            // retention. Nobody can read the chunk; the node's output will
            // be dropped the same way.
            Ok(_) => Ok(()),
            Err(e) => Err(NodeError::Retryable(format!("a chunk was not sent: {e}"))),
        }
    }
}
