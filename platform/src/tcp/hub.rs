//! The ingress's side of the tcp profile: the queues and the replay guard
//! live in the ingress process (the memory adapters), and worker processes
//! reach them through this server on a loopback port.
//!
//! Every connection starts with the mutual handshake of [`super::session`],
//! which tells the hub the worker's group. From then on each call is checked
//! against what that group may touch, as the Redis ACLs do in the Redis
//! profile: its own queue (read, renew, reclaim, hand off), other groups'
//! queues and reply streams (append only) and the dead-letter stream
//! (capped append). Anything else is refused and logged. What a worker
//! writes is checked too: entries no larger than the ingress's entry limit,
//! pushes only to the pipeline's worker queues and only below their depth
//! limit, replies only to streams that exist, the dead-letter stream capped
//! by the hub.
//!
//! The replay guard runs here, not in the worker: every entry the hub hands
//! out passes the worker's own checks (size, MAC, freshness, kind,
//! destination) and then claims its nonce, as a Redis worker's first read
//! would. An entry refused by any of them is acknowledged, counted and never
//! handed out, so no entry reaches a worker unclaimed (a worker whose key
//! ring differs from the hub's cannot run what the hub refused). Workers
//! cannot touch the guard: no call reads or writes a nonce.
//! Connections are bounded before the handshake (a few seconds each) and
//! after it (a few per group), and so are the calls and answers of each.
//!
//! When a connection ends, the entries its consumers held become
//! reclaimable at once, so the group's next worker (the restarted child)
//! runs them again without waiting for their lease to lapse.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::nonces::Nonces;
use super::session::{self, Opener};
use super::wire::{Answer, Call};
use super::{require_loopback, Limits};
use crate::backend::Result;
use crate::keyring::SharedKeyRing;
use crate::keys::Keys;
use crate::memory::MemoryStreams;
use crate::metrics::Rejections;
use crate::queue::{Completion, Delivery, Held, Queue};
use crate::signing::{At, Rejection, Verifier, VerifyError};

/// What the hub serves.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub keys: Keys,
    /// The worker groups that may connect.
    pub groups: Vec<String>,
    pub limits: Limits,
    /// Most nonces the replay guard holds; past it nonce claims fail (the
    /// entry stays pending and is tried again).
    pub max_nonces: usize,
    /// Longest time to live of a nonce: the longest deadline plus the
    /// clock skew.
    pub max_nonce_ttl: Duration,
    /// Entries a worker queue may hold before pushes to it are refused.
    pub max_queue_depth: u64,
    /// Entries the dead-letter stream keeps.
    pub dead_letter_cap: u64,
    /// The pipeline's lease: nothing is reclaimed sooner (except what a
    /// gone worker held).
    pub lease: Duration,
    /// The pipeline's `clockSkew` and `maxPayloadBytes`, for the checks
    /// an entry passes before its nonce is claimed.
    pub clock_skew: Duration,
    pub max_payload_bytes: usize,
    /// Where the entries the hub refuses are counted (the ingress's
    /// `sluice_envelopes_rejected_total`).
    pub rejections: Rejections,
}

/// Connections in their handshake at most; more are closed at once.
const MAX_HANDSHAKES: usize = 32;
/// Connections past the handshake at most, and per group.
const MAX_CONNECTIONS: usize = 64;
const MAX_PER_GROUP: usize = 4;
/// A handshake not done by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Calls of one connection running at once; the connection is not read
/// further until one ends.
const CALLS_PER_CONNECTION: usize = 64;
/// Consumer names one connection may use (a worker uses one).
const CONSUMERS_PER_CONNECTION: usize = 4;
/// An answer not written within this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most items of one call's lists.
const MAX_COMPLETIONS: usize = 1024;
const MAX_HELD: usize = 16_384;
const MAX_APPEND_STREAMS: usize = 8;
/// The longest blocking read the hub waits out.
const MAX_BLOCK: Duration = Duration::from_secs(30);
/// Longest consumer name.
const MAX_CONSUMER: usize = 256;

/// Live connections per group, for readiness.
#[derive(Debug, Default)]
pub struct Connected {
    by_group: Mutex<HashMap<String, usize>>,
    changed: tokio::sync::Notify,
}

impl Connected {
    /// Live connections of `group`.
    pub fn of(&self, group: &str) -> usize {
        self.by_group.lock().get(group).copied().unwrap_or(0)
    }

    /// Waits until `group` has a live connection.
    pub async fn wait_for(&self, group: &str) {
        loop {
            let changed = self.changed.notified();
            if self.of(group) > 0 {
                return;
            }
            changed.await;
        }
    }

    fn add(&self, group: &str, n: isize) {
        let mut m = self.by_group.lock();
        let c = m.entry(group.to_string()).or_default();
        *c = c.saturating_add_signed(n);
        drop(m);
        self.changed.notify_waiters();
    }
}

/// The bound hub, before it serves.
pub struct Hub {
    listener: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    cfg: HubConfig,
    ring: SharedKeyRing,
    streams: Arc<MemoryStreams>,
    /// Checks each entry handed out and claims its nonce in the guard.
    guard: Verifier,
    nonces: Arc<Nonces>,
    connected: Arc<Connected>,
    handshakes: Arc<Semaphore>,
    open: Arc<Semaphore>,
    /// Live connections per consumer name: a worker that reconnects keeps
    /// its name, and its entries are released only when none is left.
    consumers: Mutex<HashMap<String, usize>>,
    replies_prefix: String,
}

/// The hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    NotLoopback(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Hub {
    /// Binds `addr` (loopback only).
    ///
    /// # Errors
    /// A non-loopback address, or the port cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        cfg: HubConfig,
        ring: SharedKeyRing,
        streams: Arc<MemoryStreams>,
    ) -> Result<Self, HubError> {
        require_loopback("--hub", addr).map_err(HubError::NotLoopback)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HubError::Listen { addr, source })?;
        let nonces = Arc::new(Nonces::new(cfg.max_nonces, cfg.max_nonce_ttl));
        let guard = Verifier::new(
            ring.clone(),
            Some(nonces.clone()),
            cfg.keys.clone(),
            cfg.clock_skew,
            cfg.max_payload_bytes,
            cfg.rejections.clone(),
        )
        // The longest nonce lifetime is the longest deadline plus the skew.
        .with_max_lifetime(cfg.max_nonce_ttl.saturating_sub(cfg.clock_skew));
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                ring,
                streams,
                guard,
                nonces,
                connected: Arc::default(),
                handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
                open: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
                consumers: Mutex::default(),
                replies_prefix: cfg.keys.reply(""),
                cfg,
            }),
        })
    }

    /// The bound address (the port, when bound to port 0).
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The replay guard's nonces (held for as long as the hub lives).
    pub fn nonces(&self) -> Arc<Nonces> {
        self.shared.nonces.clone()
    }

    /// Live connections per group.
    pub fn connected(&self) -> Arc<Connected> {
        self.shared.connected.clone()
    }

    /// Accepts and serves connections until `stop`; open connections end
    /// with it.
    pub async fn serve(self, stop: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                a = self.listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "hub: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(handshake) = self.shared.handshakes.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "hub: too many handshakes; closing the new connection");
                continue;
            };
            let shared = self.shared.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                shared.serve_one(stream, peer, handshake, stop).await;
            });
        }
    }
}

impl Shared {
    async fn serve_one(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        handshake: tokio::sync::OwnedSemaphorePermit,
        stop: CancellationToken,
    ) {
        let _ = stream.set_nodelay(true);
        let ring = self.ring.get();
        let groups = &self.cfg.groups;
        let accepted = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            session::accept(
                &mut stream,
                &ring,
                self.cfg.keys.pipeline(),
                |g| groups.iter().any(|x| x == g),
                self.cfg.limits.max_frame,
            ),
        )
        .await;
        let (s, group) = match accepted {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "hub: connection refused");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "hub: handshake timed out");
                return;
            }
        };
        drop(handshake);
        if self.connected.of(&group) >= MAX_PER_GROUP {
            tracing::warn!(%peer, group = %group, "hub: too many connections of this group; closing the new one");
            return;
        }
        let Ok(_slot) = self.open.clone().try_acquire_owned() else {
            tracing::warn!(%peer, group = %group, "hub: too many connections; closing the new one");
            return;
        };
        tracing::info!(%peer, group = %group, "hub: worker connected");
        self.connected.add(&group, 1);
        let consumers = Arc::new(Mutex::new(HashSet::new()));
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::channel(CALLS_PER_CONNECTION);
        let done = CancellationToken::new();
        let writer = tokio::spawn(session::write_frames(
            write,
            s.sealer,
            rx,
            done.clone(),
            Some(WRITE_TIMEOUT),
        ));
        let access = Access::new(&self.cfg, &group);
        self.clone()
            .read_calls(
                BufReader::new(read),
                s.opener,
                &access,
                &consumers,
                tx,
                stop,
                done.clone(),
            )
            .await;
        done.cancel();
        let _ = writer.await;
        // What this connection's consumers held is theirs no more, unless
        // another live connection uses the same name (a reconnect).
        let held: Vec<String> = consumers.lock().drain().collect();
        for c in held {
            let last = {
                let mut all = self.consumers.lock();
                let left = all.get_mut(&c).map(|n| {
                    *n -= 1;
                    *n
                });
                if left == Some(0) {
                    all.remove(&c);
                }
                left == Some(0)
            };
            if !last {
                continue;
            }
            let n = self.streams.release(&access.own, &c);
            if n > 0 {
                tracing::info!(group = %group, consumer = %c, entries = n, "hub: a worker's entries are free to reclaim");
            }
        }
        self.connected.add(&group, -1);
        tracing::info!(%peer, group = %group, "hub: worker disconnected");
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_calls(
        self: Arc<Self>,
        mut r: BufReader<tokio::net::tcp::OwnedReadHalf>,
        mut opener: Opener,
        access: &Access,
        consumers: &Arc<Mutex<HashSet<String>>>,
        tx: mpsc::Sender<Vec<u8>>,
        stop: CancellationToken,
        done: CancellationToken,
    ) {
        let running = Arc::new(Semaphore::new(CALLS_PER_CONNECTION));
        // The connection's calls: all of them end (aborted) before what its
        // consumers held is released, so none takes entries afterwards.
        let mut calls = tokio::task::JoinSet::new();
        loop {
            while calls.try_join_next().is_some() {}
            let frame = tokio::select! {
                _ = stop.cancelled() => break,
                _ = done.cancelled() => break,
                f = opener.open(&mut r) => f,
            };
            let (id, mut call) = match frame.map(Call::decode) {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::warn!(group = %access.group, error = %e, "hub: closing a connection");
                    break;
                }
                Err(e) => {
                    tracing::debug!(group = %access.group, error = %e, "hub: connection ended");
                    break;
                }
            };
            if let Err(why) = access.check(&call) {
                tracing::warn!(group = %access.group, refused = why, "hub: call refused");
                let _ = tx
                    .send(Answer::Failed(format!("refused by the hub: {why}")).encode(id))
                    .await;
                continue;
            }
            let reader = match &call {
                Call::Read { consumer, .. } | Call::Reclaim { consumer, .. } => Some(consumer),
                Call::CompleteAll { then, .. } => then.as_ref().map(|t| &t.consumer),
                _ => None,
            };
            if let Some(consumer) = reader {
                let refused = {
                    let mut c = consumers.lock();
                    if c.contains(consumer) {
                        false
                    } else if c.len() >= CONSUMERS_PER_CONNECTION {
                        true
                    } else {
                        c.insert(consumer.clone());
                        *self.consumers.lock().entry(consumer.clone()).or_default() += 1;
                        false
                    }
                };
                if refused {
                    tracing::warn!(group = %access.group, "hub: too many consumer names on one connection");
                    if let Call::CompleteAll { then, .. } = &mut call {
                        // The hand-off itself stands: only the read
                        // after it is left out.
                        *then = None;
                    } else {
                        let why =
                            Answer::Failed("refused by the hub: too many consumer names".into());
                        let _ = tx.send(why.encode(id)).await;
                        continue;
                    }
                }
            }
            // A call that cannot wait (all but a blocking read) runs here:
            // it only takes the queues' lock, and a task of its own would
            // cost more than the call.
            let blocks = matches!(&call, Call::Read { block, .. } if !block.is_zero());
            if !blocks {
                let answer = self.run(call, &access.group).await;
                if tx.send(answer.encode(id)).await.is_err() {
                    break;
                }
                continue;
            }
            let Ok(permit) = running.clone().acquire_owned().await else {
                break;
            };
            let this = self.clone();
            let tx = tx.clone();
            let group = access.group.clone();
            calls.spawn(async move {
                let answer = this.run(call, &group).await;
                let _ = tx.send(answer.encode(id)).await;
                drop(permit);
            });
        }
        calls.abort_all();
        while calls.join_next().await.is_some() {}
    }

    async fn run(&self, call: Call, group: &str) -> Answer {
        let max_read = self.cfg.limits.max_read;
        let q = &*self.streams;
        let r = match call {
            Call::EnsureGroup { stream } => q.ensure_group(&stream).await.map(|()| Answer::Done),
            Call::Push { stream, entry } => match q.depth(&stream).await {
                Ok(d) if d.entries >= self.cfg.max_queue_depth => {
                    return Answer::Failed(format!("{stream} is full; try again later"))
                }
                _ => q.push(&stream, entry).await.map(Answer::Id),
            },
            // The hub's cap, not the caller's: a worker cannot empty the
            // dead letters by asking for a cap of zero.
            Call::PushCapped { stream, entry, .. } => q
                .push_capped(&stream, entry, self.cfg.dead_letter_cap)
                .await
                .map(Answer::Id),
            Call::Read {
                stream,
                consumer,
                max,
                block,
            } => {
                let taken = q
                    .read(
                        &stream,
                        &consumer,
                        (max as usize).min(max_read),
                        block.min(MAX_BLOCK),
                    )
                    .await;
                self.hand_out(&stream, group, taken).await
            }
            Call::Renew {
                stream,
                consumer,
                held,
                lease,
            } => {
                let now = std::time::Instant::now();
                let held: Vec<Held> = held
                    .into_iter()
                    .map(|(id, age)| Held {
                        id,
                        since: now.checked_sub(age).unwrap_or(now),
                    })
                    .collect();
                q.renew(&stream, &consumer, &held, lease)
                    .await
                    .map(Answer::Ids)
            }
            Call::Reclaim {
                stream,
                consumer,
                min_idle,
                max,
            } => {
                let taken = q
                    .reclaim(
                        &stream,
                        &consumer,
                        min_idle.max(self.cfg.lease),
                        (max as usize).min(max_read),
                    )
                    .await;
                self.hand_out(&stream, group, taken).await
            }
            Call::CompleteAll {
                stream,
                mut done,
                then,
            } => {
                // Replies go only to streams that exist: a worker cannot
                // make streams nobody reads or expires.
                for f in done.iter_mut().filter_map(|c| c.forward.as_mut()) {
                    if f.stream.starts_with(&self.replies_prefix) {
                        f.must_exist = true;
                    }
                }
                match (q.complete_all(&stream, &done).await, then) {
                    (Err(e), _) => Err(e),
                    (Ok(flags), None) => Ok(Answer::Flags(flags)),
                    // The slots this batch frees are filled in the same
                    // round trip; a failed read only leaves them to the
                    // worker's next one.
                    (Ok(flags), Some(t)) => {
                        let max = (t.max as usize).min(max_read).min(done.len());
                        let taken = q
                            .read(&stream, &t.consumer, max, Duration::ZERO)
                            .await
                            .unwrap_or_default();
                        Ok(Answer::Handed {
                            flags,
                            deliveries: self.guarded(&stream, group, taken).await,
                        })
                    }
                }
            }
            Call::Append { streams, entry } => {
                let names: Vec<&str> = streams.iter().map(String::as_str).collect();
                q.append(&names, &entry)
                    .await
                    .map(|n| Answer::Count(n as u64))
            }
            Call::Depth { stream } => q.depth(&stream).await.map(Answer::Depth),
            Call::Pending { stream } => q.pending(&stream).await.map(Answer::Count),
        };
        r.unwrap_or_else(|e| Answer::Failed(e.to_string()))
    }

    /// The answer to a read or reclaim of `group`'s queue `stream`: what
    /// it took, through [`Self::guarded`].
    async fn hand_out(
        &self,
        stream: &str,
        group: &str,
        taken: Result<Vec<Delivery>>,
    ) -> Result<Answer> {
        Ok(Answer::Deliveries(
            self.guarded(stream, group, taken?).await,
        ))
    }

    /// What of `deliveries`, just taken from `group`'s queue `stream`, is
    /// handed out: all but refused entries (replays, forgeries, expired:
    /// acknowledged here and counted, never run) and entries whose nonce
    /// cannot be claimed now (the guard is full: they stay pending and are
    /// reclaimed after their lease).
    async fn guarded(&self, stream: &str, group: &str, deliveries: Vec<Delivery>) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(deliveries.len());
        let mut refused = vec![];
        for d in deliveries {
            let at = At {
                stream,
                id: &d.id,
                deliveries: d.deliveries,
            };
            match self.guard.verify_request(&d.entry, &at, group).await {
                Err(VerifyError::Rejected(why)) => {
                    if why == Rejection::Replay || why == Rejection::BadMac {
                        tracing::warn!(group, id = %d.id, reason = why.reason(), "hub: entry refused");
                    } else {
                        tracing::debug!(group, id = %d.id, reason = why.reason(), "hub: entry refused");
                    }
                    refused.push(Completion {
                        id: d.id,
                        forward: None,
                    });
                }
                Err(VerifyError::Backend(e)) => {
                    tracing::warn!(group, id = %d.id, error = %e, "hub: replay guard unavailable; entry left pending");
                }
                // The hub asks for no hand-back (the worker decides that):
                // should one come, the entry is not handed out unguarded.
                Err(VerifyError::HandedBack(_)) => {
                    tracing::warn!(group, id = %d.id, "hub: entry held back by the guard; left pending");
                }
                Ok(_) => out.push(d),
            }
        }
        if !refused.is_empty() {
            if let Err(e) = self.streams.complete_all(stream, &refused).await {
                tracing::warn!(group, error = %e, "hub: cannot acknowledge refused entries");
            }
        }
        out
    }
}

/// What one connection's group may touch.
struct Access {
    group: String,
    own: String,
    /// The worker groups' queues: the only streams pushed to.
    queues: HashSet<String>,
    replies: String,
    dead_letter: String,
    max_entry: usize,
}

impl Access {
    fn new(cfg: &HubConfig, group: &str) -> Self {
        let keys = &cfg.keys;
        Self {
            group: group.to_string(),
            own: keys.queue(group),
            queues: cfg.groups.iter().map(|g| keys.queue(g)).collect(),
            replies: keys.reply(""),
            dead_letter: keys.dead_letter(),
            max_entry: cfg.limits.max_entry,
        }
    }

    fn entry(&self, e: &crate::envelope::StreamEntry) -> Result<(), &'static str> {
        if e.signed_len() > self.max_entry || e.note.len() > crate::envelope::MAX_NOTE_BYTES {
            Err("an entry larger than the pipeline's entry limit")
        } else {
            Ok(())
        }
    }

    fn queue(&self, stream: &str) -> Result<(), &'static str> {
        if self.queues.contains(stream) {
            Ok(())
        } else {
            Err("pushes go to a worker queue of this pipeline")
        }
    }

    fn own(&self, stream: &str) -> Result<(), &'static str> {
        if stream == self.own {
            Ok(())
        } else {
            Err("a group reads and hands off its own queue only")
        }
    }

    fn reply(&self, stream: &str) -> Result<(), &'static str> {
        if stream.len() > self.replies.len() && stream.starts_with(&self.replies) {
            Ok(())
        } else {
            Err("not a reply stream of this pipeline")
        }
    }

    fn consumer(consumer: &str) -> Result<(), &'static str> {
        if consumer.is_empty() || consumer.len() > MAX_CONSUMER {
            Err("a consumer name is 1-256 bytes")
        } else {
            Ok(())
        }
    }

    fn check(&self, call: &Call) -> Result<(), &'static str> {
        match call {
            Call::EnsureGroup { stream } | Call::Depth { stream } | Call::Pending { stream } => {
                self.own(stream)
            }
            Call::Read {
                stream, consumer, ..
            }
            | Call::Reclaim {
                stream, consumer, ..
            } => {
                self.own(stream)?;
                Self::consumer(consumer)
            }
            Call::Renew {
                stream,
                consumer,
                held,
                ..
            } => {
                self.own(stream)?;
                Self::consumer(consumer)?;
                if held.len() > MAX_HELD {
                    return Err("too many held entries in one renewal");
                }
                Ok(())
            }
            Call::Push { stream, entry } => {
                self.queue(stream)?;
                self.entry(entry)
            }
            Call::PushCapped { stream, entry, .. } => {
                if *stream != self.dead_letter {
                    return Err("capped pushes go to the dead-letter stream");
                }
                self.entry(entry)
            }
            Call::CompleteAll { stream, done, then } => {
                self.own(stream)?;
                if let Some(t) = then {
                    Self::consumer(&t.consumer)?;
                }
                if done.len() > MAX_COMPLETIONS {
                    return Err("too many hand-offs in one call");
                }
                for f in done.iter().filter_map(|c| c.forward.as_ref()) {
                    if self.queue(&f.stream).is_err() {
                        self.reply(&f.stream)?;
                    }
                    if let Some(copy) = &f.copy_to {
                        self.reply(copy)?;
                    }
                    self.entry(&f.entry)?;
                }
                Ok(())
            }
            Call::Append { streams, entry } => {
                if streams.len() > MAX_APPEND_STREAMS {
                    return Err("too many streams in one append");
                }
                streams.iter().try_for_each(|s| self.reply(s))?;
                self.entry(entry)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::StreamEntry;
    use crate::queue::{Completion, Forward};

    fn entry() -> StreamEntry {
        StreamEntry {
            v: bytes::Bytes::from_static(b"1"),
            k: bytes::Bytes::new(),
            m: bytes::Bytes::new(),
            s: bytes::Bytes::new(),
            note: bytes::Bytes::new(),
        }
    }

    #[test]
    fn a_group_touches_what_its_redis_user_would_and_nothing_else() {
        let keys = Keys::new("default", "hello");
        let cfg = HubConfig {
            keys: keys.clone(),
            groups: vec!["work".into(), "next".into()],
            limits: Limits::for_entries(1024),
            max_nonces: 10,
            max_nonce_ttl: Duration::from_secs(10),
            max_queue_depth: 10,
            dead_letter_cap: 10,
            lease: Duration::from_secs(1),
            clock_skew: Duration::from_secs(5),
            max_payload_bytes: 1024,
            rejections: Rejections::default(),
        };
        let a = Access::new(&cfg, "work");
        let own = keys.queue("work");
        let ok = [
            Call::Read {
                stream: own.clone(),
                consumer: "c".into(),
                max: 1,
                block: Duration::ZERO,
            },
            Call::Push {
                stream: keys.queue("next"),
                entry: entry(),
            },
            Call::PushCapped {
                stream: keys.dead_letter(),
                entry: entry(),
                max_len: 1,
            },
            Call::CompleteAll {
                stream: own.clone(),
                then: None,
                done: vec![Completion {
                    id: "0-1".into(),
                    forward: Some(Forward {
                        stream: keys.reply("ing-1"),
                        entry: entry(),
                        must_exist: true,
                        copy_to: Some(keys.reply("ing-2")),
                    }),
                }],
            },
            Call::Append {
                streams: vec![keys.reply("async:abc")],
                entry: entry(),
            },
        ];
        for c in &ok {
            assert_eq!(a.check(c), Ok(()), "{c:?}");
        }
        let refused = [
            Call::Read {
                stream: keys.queue("other"),
                consumer: "c".into(),
                max: 1,
                block: Duration::ZERO,
            },
            Call::Read {
                stream: own.clone(),
                consumer: String::new(),
                max: 1,
                block: Duration::ZERO,
            },
            Call::Push {
                stream: keys.dead_letter(),
                entry: entry(),
            },
            Call::Push {
                stream: Keys::new("default", "other").queue("work"),
                entry: entry(),
            },
            Call::PushCapped {
                stream: keys.queue("work"),
                entry: entry(),
                max_len: 0,
            },
            Call::CompleteAll {
                stream: own.clone(),
                then: None,
                done: vec![Completion {
                    id: "0-1".into(),
                    forward: Some(Forward {
                        stream: keys.dead_letter(),
                        entry: entry(),
                        must_exist: false,
                        copy_to: None,
                    }),
                }],
            },
            Call::Append {
                streams: vec![keys.queue("work")],
                entry: entry(),
            },
            Call::Depth {
                stream: keys.queue("other"),
            },
            // A queue no group of the pipeline reads.
            Call::Push {
                stream: keys.queue("made-up"),
                entry: entry(),
            },
            // An entry over the entry limit.
            Call::Push {
                stream: keys.queue("next"),
                entry: StreamEntry {
                    m: vec![b'x'; 2048].into(),
                    ..entry()
                },
            },
            Call::Append {
                streams: vec![keys.reply("a"); 9],
                entry: entry(),
            },
        ];
        for c in &refused {
            assert!(a.check(c).is_err(), "{c:?}");
        }
    }
}
