//! One authenticated connection to the hub, as the worker's client uses it:
//! calls multiplexed by id, the task reading answers, and the entries taken
//! in the hub for a reader and not handed out yet ([`Ahead`]).
//!
//! ```text
//!   Conn::call ──frame──▶ writer task ──▶ hub
//!        ▲                                 │
//!        └── oneshot ◀── read_answers ◀────┘   (marks the connection dead when it ends)
//!   Conn::start_read: a read on a task of its own; its answer lands in Ahead
//! ```
//!
//! It must not outlive its socket: once `dead`, nothing here hands an entry
//! out (the hub released them).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::session::{self, Opener};
use super::wire::{Answer, Call};
use crate::backend::{BackendError, Result};
use crate::keyring::KeyRing;
use crate::queue::Delivery;

/// Frames queued for the writer at most; a caller waits for room beyond.
const CALLS_QUEUED: usize = 1024;

/// Calls sent but not answered, by id.
type Waiting = Mutex<HashMap<u64, oneshot::Sender<Answer>>>;

/// One live connection.
pub(super) struct Conn {
    hub: SocketAddr,
    max_frame: usize,
    next_id: AtomicU64,
    calls: mpsc::Sender<Vec<u8>>,
    waiting: Arc<Waiting>,
    pub(super) dead: CancellationToken,
    pub(super) ahead: Mutex<Ahead>,
    /// Woken whenever entries arrive ahead or a read in the hub ends.
    pub(super) arrived: Notify,
}

/// A stream and the consumer reading it.
pub(super) type Reader = (String, String);

/// Entries taken in the hub for a reader and not handed out yet, and the
/// reads waiting there.
///
/// Entries get here two ways: a read's answer, and a hand-off's answer,
/// which brings as many entries as the hand-off freed slots for the last
/// reader the hub served. A read hands out what waits here first, and
/// while it waits for the hub it also takes what a hand-off brings
/// meanwhile; its own call then lives on, and what it brings waits here
/// for the next read. What waits here and what the read in the hub may
/// still bring count against the slots a hand-off or a reclaim asks to
/// fill. Entries waiting here are renewed with the reader's held entries.
/// They live and die with the connection: when it ends the hub makes them
/// reclaimable, and nothing here hands them out any more.
#[derive(Default)]
pub(super) struct Ahead {
    pub(super) reader: Option<Reader>,
    pub(super) entries: HashMap<Reader, VecDeque<Delivery>>,
    /// The read waiting in the hub, per reader.
    pub(super) reading: HashMap<Reader, InHub>,
    /// How a reader's read `n` failed: for the reads that waited on it
    /// only (a later read sends its own).
    pub(super) failed: HashMap<Reader, (u64, BackendError)>,
    /// Numbers the reads sent.
    pub(super) sent: u64,
}

/// A read waiting in the hub.
#[derive(Clone, Copy)]
pub(super) struct InHub {
    pub(super) n: u64,
    /// The most entries it may bring.
    pub(super) max: usize,
    /// When its answer is due at the latest.
    pub(super) due: tokio::time::Instant,
}

impl Ahead {
    /// Up to `max` entries waiting for `who`.
    pub(super) fn take(&mut self, who: &Reader, max: usize) -> Vec<Delivery> {
        let Some(waiting) = self.entries.get_mut(who) else {
            return vec![];
        };
        let n = max.min(waiting.len());
        let out = waiting.drain(..n).collect();
        if waiting.is_empty() {
            self.entries.remove(who);
        }
        out
    }

    pub(super) fn count(&self, who: &Reader) -> usize {
        self.entries.get(who).map_or(0, VecDeque::len)
    }

    /// `deliveries` wait for `who`, after those already waiting.
    pub(super) fn put(&mut self, who: Reader, deliveries: Vec<Delivery>) {
        if !deliveries.is_empty() {
            self.entries.entry(who).or_default().extend(deliveries);
        }
    }
}

impl Conn {
    /// Connects to the hub at `hub` as `group` of `pipeline`, proves the
    /// ring in the handshake, and starts the writer and the answer reader.
    pub(super) async fn open(
        hub: SocketAddr,
        ring: &KeyRing,
        pipeline: &str,
        group: &str,
        max_frame: usize,
    ) -> Result<Arc<Self>> {
        let unavailable =
            |e: &dyn std::fmt::Display| BackendError::Unavailable(format!("hub {hub}: {e}"));
        let mut stream = TcpStream::connect(hub).await.map_err(|e| unavailable(&e))?;
        let _ = stream.set_nodelay(true);
        let s = session::connect(&mut stream, ring, pipeline, group, max_frame)
            .await
            .map_err(|e| unavailable(&e))?;
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::channel(CALLS_QUEUED);
        let conn = Arc::new(Self {
            hub,
            max_frame,
            next_id: AtomicU64::new(1),
            calls: tx,
            waiting: Arc::default(),
            dead: CancellationToken::new(),
            ahead: Mutex::default(),
            arrived: Notify::new(),
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

    /// Sends `call` and waits up to `wait` for its answer.
    pub(super) async fn call(&self, call: Call, wait: Duration) -> Result<Answer> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = call.encode(id);
        // Refused here, not by the hub: a frame over the limit would end
        // the connection for every call on it.
        if frame.len() > self.max_frame {
            return Err(BackendError::Unavailable(format!(
                "a call of {} bytes is over the hub's frame limit",
                frame.len()
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(id, tx);
        // Whatever ends this call (answer, failure, timeout, or the caller
        // dropping it) takes its entry out of the map.
        let _forget = Forget {
            waiting: &self.waiting,
            id,
        };
        // The reader marks the connection dead before it fails what is
        // waiting, so a call registered after that sees the mark here.
        if self.dead.is_cancelled() {
            return Err(self.gone());
        }
        let answered = async {
            tokio::select! {
                sent = self.calls.send(frame) => sent.map_err(|_| self.gone())?,
                _ = self.dead.cancelled() => return Err(self.gone()),
            }
            rx.await.map_err(|_| self.gone())
        };
        match tokio::time::timeout(wait, answered).await {
            Ok(Ok(Answer::Failed(why))) => Err(BackendError::Unavailable(why)),
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BackendError::Timeout),
        }
    }

    /// Sends a read of up to `max` entries for `who` on a task of its
    /// own, so that it outlives its caller: its answer waits ahead for
    /// whichever read comes next. Returns the read's number.
    pub(super) fn start_read(
        self: &Arc<Self>,
        ahead: &mut Ahead,
        who: &Reader,
        call: Call,
        max: usize,
        wait: Duration,
    ) -> InHub {
        ahead.sent += 1;
        let read = InHub {
            n: ahead.sent,
            max,
            due: tokio::time::Instant::now() + wait,
        };
        ahead.reading.insert(who.clone(), read);
        ahead.failed.remove(who);
        let conn = self.clone();
        let who = who.clone();
        tokio::spawn(async move {
            let answer = match conn.call(call, wait).await {
                Ok(Answer::Deliveries(d)) => Ok(d),
                Ok(a) => unexpected(&a),
                Err(e) => Err(e),
            };
            {
                let mut ahead = conn.ahead.lock();
                ahead.reading.remove(&who);
                match answer {
                    Ok(d) => {
                        ahead.reader = Some(who.clone());
                        ahead.put(who, d);
                    }
                    Err(e) => {
                        ahead.failed.insert(who, (read.n, e));
                    }
                }
            }
            conn.arrived.notify_waiters();
        });
        read
    }

    pub(super) fn gone(&self) -> BackendError {
        BackendError::Unavailable(format!("hub {}: connection closed", self.hub))
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

/// The error for an answer of the wrong kind.
pub(super) fn unexpected<T>(a: &Answer) -> Result<T> {
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
