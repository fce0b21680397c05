//! The caller's side of a streamed answer: the response body being
//! written, what the caller has been shown (in order, once each, with
//! resets), the chunks held back until those before them come, and the
//! chunks of nodes that run in this process.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use serde_json::{json, Value};
use sluice_exec_worker::{ChunkSink, NodeError};
use sluice_platform::Envelope;
use tokio::sync::{mpsc, Mutex};

use crate::error::{from_reply, ApiError};
use crate::stream_events::{chunk_id, Format, Order, Take};

/// Chunks waiting for a slow caller before more are deferred to the store;
/// also the most held back out of order, and the store's page size.
pub(crate) const ROOM: usize = 16;
/// Events written ahead of the caller's reading.
const WRITTEN_AHEAD: usize = 8;

/// What happened to an offered chunk.
pub(crate) enum Offered {
    /// Written, or dropped as a duplicate or stale.
    Done,
    /// Held back: chunks before it are missing.
    Held,
    /// The caller is gone.
    Gone,
}

/// The caller's side of a stream: what it has been shown, and chunks
/// held back until those before them come.
pub(crate) struct Caller {
    pub out: Out,
    pub order: Order,
    held: BTreeMap<(u32, u64), Envelope>,
    /// The last event (result or error) was written.
    pub ended: bool,
}

impl Caller {
    pub fn new(out: Out, order: Order) -> Self {
        Self {
            out,
            order,
            held: BTreeMap::new(),
            ended: false,
        }
    }

    /// Writes `chunk` if it is next, and any held chunks it frees; holds
    /// it if chunks before it are missing (while there is room: the store
    /// has it too).
    pub async fn offer(&mut self, chunk: Envelope) -> Offered {
        let seq = chunk.seq.unwrap_or(0);
        match self.order.chunk(chunk.attempt, seq) {
            Take::Skip => Offered::Done,
            Take::Gap => {
                if self.held.len() < ROOM {
                    self.held.insert((chunk.attempt, seq), chunk);
                }
                Offered::Held
            }
            Take::Emit { reset } => {
                if !self.write(reset, &chunk).await {
                    return Offered::Gone;
                }
                // Held chunks this one frees, lowest first.
                while let Some(((attempt, seq), _)) = self.held.first_key_value() {
                    let (attempt, seq) = (*attempt, *seq);
                    match self.order.chunk(attempt, seq) {
                        Take::Gap => break,
                        Take::Skip => {
                            self.held.pop_first();
                        }
                        Take::Emit { reset } => {
                            let Some((_, next)) = self.held.pop_first() else {
                                break;
                            };
                            if !self.write(reset, &next).await {
                                return Offered::Gone;
                            }
                        }
                    }
                }
                Offered::Done
            }
        }
    }

    /// Whether chunk `seq` of `attempt` has been passed on (or is
    /// superseded).
    pub fn passed(&self, attempt: u32, seq: u64) -> bool {
        seq == 0 || self.order.clone().chunk(attempt, seq) == Take::Skip
    }

    async fn write(&mut self, reset: bool, chunk: &Envelope) -> bool {
        if reset
            && !self
                .out
                .event("reset", None, &json!({"attempt": chunk.attempt}))
                .await
        {
            return false;
        }
        let id = chunk_id(chunk.attempt, chunk.seq.unwrap_or(0));
        self.out.event("chunk", Some(&id), &chunk.payload).await
    }

    /// The final event: the answer's result or its error.
    pub async fn answer(&mut self, reply: Envelope, rid: &str) {
        match reply.error {
            None => self.ended = self.out.event("result", None, &reply.payload).await,
            Some(e) => self.error(&from_reply(e, rid)).await,
        }
    }

    pub async fn error(&mut self, e: &ApiError) {
        self.ended = self
            .out
            .event("error", None, &json!({"error": e.to_object()}))
            .await;
    }
}

/// Chunks of a node that runs on the ingress group: written to the
/// caller directly (they never leave the process), in order.
pub(crate) struct LocalChunks {
    pub caller: Arc<Mutex<Caller>>,
    pub attempt: u32,
    pub sent: AtomicU64,
}

#[async_trait]
impl ChunkSink for LocalChunks {
    async fn send(&self, chunk: Value) -> Result<(), NodeError> {
        let mut caller = self.caller.lock().await;
        let seq = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        let env = Envelope {
            attempt: self.attempt,
            seq: Some(seq),
            payload: chunk,
            ..local_template()
        };
        match caller.offer(env).await {
            Offered::Gone => Err(NodeError::Permanent("the caller is gone".into())),
            Offered::Done | Offered::Held => Ok(()),
        }
    }
}

/// The frame of a chunk made in this process: only its attempt, sequence
/// number and payload are read.
fn local_template() -> Envelope {
    Envelope {
        kind: sluice_platform::Kind::Reply,
        pipeline: String::new(),
        dest: String::new(),
        cid: String::new(),
        rid: String::new(),
        trace: None,
        ts: 0,
        nonce: String::new(),
        deadline: 0,
        attempt: 0,
        node: None,
        plan: None,
        reply_to: None,
        live: None,
        seq: None,
        last_seq: None,
        payload: Value::Null,
        error: None,
    }
}

/// The response body being written.
#[derive(Clone)]
pub(crate) struct Out {
    pub tx: mpsc::Sender<Bytes>,
    format: Format,
}

impl Out {
    pub fn new(format: Format) -> (Self, Body) {
        let (tx, rx) = mpsc::channel::<Bytes>(WRITTEN_AHEAD);
        let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
        }));
        (Self { tx, format }, body)
    }

    /// Writes one event, waiting while the caller is behind; false when
    /// the caller is gone.
    pub async fn event(&self, name: &str, id: Option<&str>, data: &Value) -> bool {
        self.tx
            .send(self.format.event(name, id, data))
            .await
            .is_ok()
    }

    pub async fn keep_alive(&self) -> bool {
        self.tx.send(self.format.keep_alive()).await.is_ok()
    }
}
