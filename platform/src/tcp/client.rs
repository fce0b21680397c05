//! The worker's side of the tcp profile: the `Queue` port as calls to the
//! hub over one authenticated connection. The replay guard is the hub's
//! (it claims each entry's nonce as it hands the entry out), so a worker
//! has no `Kv` port here.
//!
//! Calls are multiplexed: each carries an id, answers come back in any
//! order (a blocking read does not hold up a hand-off). The connection is
//! made on first use and again after it broke; a call in flight when it
//! broke fails with [`BackendError::Unavailable`], which the worker treats
//! like any backend error (it retries; its entries stay pending in the hub
//! and are reclaimed if it does not come back).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::session::{self, Opener};
use super::wire::{Answer, Call, ThenRead};
use super::{require_loopback, Limits};
use crate::backend::{BackendError, Result};
use crate::envelope::StreamEntry;
use crate::keyring::SharedKeyRing;
use crate::queue::{Completion, Delivery, Depth, Held, Queue};

/// Where the hub is and who this worker is.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// The hub's address; loopback only.
    pub hub: SocketAddr,
    /// `ns/p`.
    pub pipeline: String,
    /// The worker group this process serves.
    pub group: String,
    pub limits: Limits,
    /// Longest wait for an answer (a blocking read waits its block on top).
    pub timeout: Duration,
}

/// Calls sent but not answered, by id.
type Waiting = Mutex<HashMap<u64, oneshot::Sender<Answer>>>;

/// One live connection.
struct Conn {
    calls: mpsc::Sender<Vec<u8>>,
    waiting: Arc<Waiting>,
    dead: CancellationToken,
    ahead: Mutex<Ahead>,
}

/// What a hand-off's answer brought for the last reader (`stream`,
/// `consumer`): as many entries as the hand-off freed slots, handed out by
/// that reader's next read without a call. They live and die with the
/// connection: when it ends the hub makes them reclaimable, and nothing
/// here hands them out any more.
#[derive(Default)]
struct Ahead {
    reader: Option<(String, String)>,
    entries: VecDeque<Delivery>,
    /// Reads waiting in the hub: while one is, a hand-off brings nothing
    /// (it would take what that read is waiting for).
    reading: usize,
}

/// Counts a read as waiting in the hub for as long as it lives.
struct Reading<'a>(&'a Mutex<Ahead>);

impl<'a> Reading<'a> {
    fn start(ahead: &'a Mutex<Ahead>) -> Self {
        ahead.lock().reading += 1;
        Self(ahead)
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.lock().reading -= 1;
    }
}

impl Conn {
    /// Up to `max` entries that came ahead for `stream` read by
    /// `consumer`.
    fn take_ahead(&self, stream: &str, consumer: &str, max: usize) -> Vec<Delivery> {
        let mut ahead = self.ahead.lock();
        let is_reader = ahead
            .reader
            .as_ref()
            .is_some_and(|(s, c)| s == stream && c == consumer);
        if !is_reader {
            return vec![];
        }
        let n = max.min(ahead.entries.len());
        ahead.entries.drain(..n).collect()
    }
}

/// The `Queue` port over a connection to the hub.
pub struct TcpBackend {
    cfg: TcpConfig,
    ring: SharedKeyRing,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU64,
    /// Set by [`Queue::done_reading`]: hand-offs bring nothing any more.
    draining: AtomicBool,
}

impl std::fmt::Debug for TcpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpBackend")
            .field("hub", &self.cfg.hub)
            .field("group", &self.cfg.group)
            .finish_non_exhaustive()
    }
}

/// Frames queued for the writer at most; a caller waits for room beyond.
const CALLS_QUEUED: usize = 1024;

impl TcpBackend {
    /// A backend that connects on first use.
    ///
    /// # Errors
    /// The hub's address is not a loopback address.
    pub fn new(cfg: TcpConfig, ring: SharedKeyRing) -> Result<Arc<Self>, String> {
        require_loopback("--hub", cfg.hub)?;
        Ok(Arc::new(Self {
            cfg,
            ring,
            conn: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
        }))
    }

    /// Connects now (readiness: the hub accepted this worker's proof).
    ///
    /// # Errors
    /// The hub cannot be reached or refused the handshake.
    pub async fn connect(&self) -> Result<()> {
        self.live().await.map(|_| ())
    }

    async fn live(&self) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.dead.is_cancelled()) {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(self.cfg.timeout, self.open())
            .await
            .map_err(|_| BackendError::Timeout)??;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn open(&self) -> Result<Arc<Conn>> {
        let unavailable = |e: &dyn std::fmt::Display| {
            BackendError::Unavailable(format!("hub {}: {e}", self.cfg.hub))
        };
        let mut stream = TcpStream::connect(self.cfg.hub)
            .await
            .map_err(|e| unavailable(&e))?;
        let _ = stream.set_nodelay(true);
        let ring = self.ring.get();
        let s = session::connect(
            &mut stream,
            &ring,
            &self.cfg.pipeline,
            &self.cfg.group,
            self.cfg.limits.max_frame,
        )
        .await
        .map_err(|e| unavailable(&e))?;
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::channel(CALLS_QUEUED);
        let conn = Arc::new(Conn {
            calls: tx,
            waiting: Arc::default(),
            dead: CancellationToken::new(),
            ahead: Mutex::default(),
        });
        tokio::spawn(session::write_frames(
            write,
            s.sealer,
            rx,
            conn.dead.clone(),
            None,
        ));
        tokio::spawn(read_answers(
            BufReader::new(read),
            s.opener,
            conn.waiting.clone(),
            conn.dead.clone(),
        ));
        Ok(conn)
    }

    async fn call(&self, call: Call, wait: Duration) -> Result<Answer> {
        let conn = self.live().await?;
        self.call_on(&conn, call, wait).await
    }

    /// [`Self::call`] on `conn`, which the caller already holds.
    async fn call_on(&self, conn: &Conn, call: Call, wait: Duration) -> Result<Answer> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = call.encode(id);
        // Refused here, not by the hub: a frame over the limit would end
        // the connection for every call on it.
        if frame.len() > self.cfg.limits.max_frame {
            return Err(BackendError::Unavailable(format!(
                "a call of {} bytes is over the hub's frame limit",
                frame.len()
            )));
        }
        let (tx, rx) = oneshot::channel();
        conn.waiting.lock().insert(id, tx);
        // Whatever ends this call (answer, failure, timeout, or the caller
        // dropping it) takes its entry out of the map.
        let _forget = Forget {
            waiting: &conn.waiting,
            id,
        };
        let gone = || BackendError::Unavailable(format!("hub {}: connection closed", self.cfg.hub));
        // The reader marks the connection dead before it fails what is
        // waiting, so a call registered after that sees the mark here.
        if conn.dead.is_cancelled() {
            return Err(gone());
        }
        let answered = async {
            tokio::select! {
                sent = conn.calls.send(frame) => sent.map_err(|_| gone())?,
                _ = conn.dead.cancelled() => return Err(gone()),
            }
            rx.await.map_err(|_| gone())
        };
        match tokio::time::timeout(wait, answered).await {
            Ok(Ok(Answer::Failed(why))) => Err(BackendError::Unavailable(why)),
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BackendError::Timeout),
        }
    }

    /// `n` entries asked for in one call, at most a frame's worth.
    fn read_max(&self, n: usize) -> u32 {
        u32::try_from(n.min(self.cfg.limits.max_read)).unwrap_or(u32::MAX)
    }

    async fn ask(&self, call: Call) -> Result<Answer> {
        self.call(call, self.cfg.timeout).await
    }
}

/// Removes a call's entry from the waiting map when the call ends.
struct Forget<'a> {
    waiting: &'a Waiting,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.waiting.lock().remove(&self.id);
    }
}

fn unexpected<T>(a: &Answer) -> Result<T> {
    let kind = match a {
        Answer::Done => "done",
        Answer::Id(_) => "id",
        Answer::Deliveries(_) => "deliveries",
        Answer::Ids(_) => "ids",
        Answer::Flags(_) => "flags",
        Answer::Handed { .. } => "hand-off",
        Answer::Count(_) => "count",
        Answer::Depth(_) => "depth",
        Answer::Failed(_) => "failure",
    };
    Err(BackendError::Unavailable(format!(
        "hub answered with an unexpected {kind}"
    )))
}

async fn read_answers(
    mut r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    mut opener: Opener,
    waiting: Arc<Waiting>,
    dead: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            _ = dead.cancelled() => break,
            f = opener.open(&mut r) => f,
        };
        let answer = match frame {
            Ok(f) => Answer::decode(f),
            Err(e) => {
                tracing::warn!(error = %e, "connection to the hub ended");
                break;
            }
        };
        match answer {
            Ok((id, a)) => {
                if let Some(tx) = waiting.lock().remove(&id) {
                    let _ = tx.send(a);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the hub sent an answer that does not decode");
                break;
            }
        }
    }
    dead.cancel();
    // Every call still waiting fails now, not at its timeout.
    waiting.lock().clear();
}

#[async_trait]
impl Queue for TcpBackend {
    async fn ensure_group(&self, stream: &str) -> Result<()> {
        match self
            .ask(Call::EnsureGroup {
                stream: stream.into(),
            })
            .await?
        {
            Answer::Done => Ok(()),
            a => unexpected(&a),
        }
    }

    async fn push(&self, stream: &str, entry: StreamEntry) -> Result<String> {
        match self
            .ask(Call::Push {
                stream: stream.into(),
                entry,
            })
            .await?
        {
            Answer::Id(id) => Ok(id),
            a => unexpected(&a),
        }
    }

    async fn push_capped(&self, stream: &str, entry: StreamEntry, max_len: u64) -> Result<String> {
        match self
            .ask(Call::PushCapped {
                stream: stream.into(),
                entry,
                max_len,
            })
            .await?
        {
            Answer::Id(id) => Ok(id),
            a => unexpected(&a),
        }
    }

    async fn read(
        &self,
        stream: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>> {
        let conn = self.live().await?;
        let ahead = conn.take_ahead(stream, consumer, max);
        if !ahead.is_empty() {
            return Ok(ahead);
        }
        let reading = Reading::start(&conn.ahead);
        let call = Call::Read {
            stream: stream.into(),
            consumer: consumer.into(),
            max: self.read_max(max),
            block,
        };
        let answer = self.call_on(&conn, call, block + self.cfg.timeout).await;
        drop(reading);
        match answer? {
            Answer::Deliveries(d) => {
                // The reader hand-offs bring entries for: the last one the
                // hub served (unless entries still wait for another).
                let mut ahead = conn.ahead.lock();
                if ahead.entries.is_empty() {
                    ahead.reader = Some((stream.to_string(), consumer.to_string()));
                }
                Ok(d)
            }
            a => unexpected(&a),
        }
    }

    async fn renew(
        &self,
        stream: &str,
        consumer: &str,
        held: &[Held],
        lease: Duration,
    ) -> Result<Vec<String>> {
        let held = held
            .iter()
            .map(|h| (h.id.clone(), h.since.elapsed()))
            .collect();
        match self
            .ask(Call::Renew {
                stream: stream.into(),
                consumer: consumer.into(),
                held,
                lease,
            })
            .await?
        {
            Answer::Ids(ids) => Ok(ids),
            a => unexpected(&a),
        }
    }

    async fn reclaim(
        &self,
        stream: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>> {
        // What came ahead first: it is as much this consumer's as what a
        // reclaim finds, and it waits unrenewed until handed out.
        let conn = self.live().await?;
        let mut out = conn.take_ahead(stream, consumer, max);
        if out.len() >= max {
            return Ok(out);
        }
        let call = Call::Reclaim {
            stream: stream.into(),
            consumer: consumer.into(),
            min_idle,
            max: self.read_max(max - out.len()),
        };
        match self.call_on(&conn, call, self.cfg.timeout).await {
            Ok(Answer::Deliveries(d)) => {
                // One that waited ahead past its lease may come back too.
                let fresh: Vec<Delivery> = d
                    .into_iter()
                    .filter(|x| !out.iter().any(|o| o.id == x.id))
                    .collect();
                out.extend(fresh);
                Ok(out)
            }
            // Entries already taken are the caller's whatever the reclaim
            // did; it is tried again on its next pass.
            _ if !out.is_empty() => Ok(out),
            Ok(a) => unexpected(&a),
            Err(e) => Err(e),
        }
    }

    async fn done_reading(&self, stream: &str, consumer: &str) -> Result<Vec<Delivery>> {
        self.draining.store(true, Ordering::Relaxed);
        let slot = self.conn.lock().await;
        Ok(match slot.as_ref() {
            Some(conn) => conn.take_ahead(stream, consumer, usize::MAX),
            None => vec![],
        })
    }

    /// Hands off `done` and, for the stream's reader, takes as many new
    /// entries as the batch frees slots in the same round trip.
    async fn complete_all(&self, stream: &str, done: &[Completion]) -> Result<Vec<bool>> {
        let conn = self.live().await?;
        // As many as the batch frees slots, less what came ahead and is not
        // handed out yet: never more held than the worker can work on.
        let then = {
            let ahead = conn.ahead.lock();
            let room = done.len().saturating_sub(ahead.entries.len());
            let wanted = room > 0 && ahead.reading == 0 && !self.draining.load(Ordering::Relaxed);
            ahead
                .reader
                .as_ref()
                .filter(|(s, _)| s == stream && wanted)
                .map(|(_, c)| ThenRead {
                    consumer: c.clone(),
                    max: u32::try_from(room).unwrap_or(u32::MAX),
                })
        };
        let asked = then.is_some();
        let call = Call::CompleteAll {
            stream: stream.into(),
            done: done.to_vec(),
            then,
        };
        match self.call_on(&conn, call, self.cfg.timeout).await? {
            // Flags alone also when asked: the hub may leave the read out.
            Answer::Flags(f) if f.len() == done.len() => Ok(f),
            Answer::Handed { flags, deliveries }
                if asked && flags.len() == done.len() && deliveries.len() <= done.len() =>
            {
                conn.ahead.lock().entries.extend(deliveries);
                Ok(flags)
            }
            a => unexpected(&a),
        }
    }

    async fn append(&self, streams: &[&str], entry: &StreamEntry) -> Result<usize> {
        match self
            .ask(Call::Append {
                streams: streams.iter().map(|s| s.to_string()).collect(),
                entry: entry.clone(),
            })
            .await?
        {
            Answer::Count(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            a => unexpected(&a),
        }
    }

    async fn depth(&self, stream: &str) -> Result<Depth> {
        match self
            .ask(Call::Depth {
                stream: stream.into(),
            })
            .await?
        {
            Answer::Depth(d) => Ok(d),
            a => unexpected(&a),
        }
    }

    async fn pending(&self, stream: &str) -> Result<u64> {
        match self
            .ask(Call::Pending {
                stream: stream.into(),
            })
            .await?
        {
            Answer::Count(n) => Ok(n),
            a => unexpected(&a),
        }
    }
}
