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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::conn::{unexpected, Conn, Reader};
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

/// The `Queue` port over a connection to the hub.
pub struct TcpBackend {
    cfg: TcpConfig,
    ring: SharedKeyRing,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
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
        let c = &self.cfg;
        Conn::open(
            c.hub,
            &self.ring.get(),
            &c.pipeline,
            &c.group,
            c.limits.max_frame,
        )
        .await
    }

    async fn call(&self, call: Call, wait: Duration) -> Result<Answer> {
        self.live().await?.call(call, wait).await
    }

    /// `n` entries asked for in one call, at most a frame's worth.
    fn read_max(&self, n: usize) -> u32 {
        u32::try_from(n.min(self.cfg.limits.max_read)).unwrap_or(u32::MAX)
    }

    async fn ask(&self, call: Call) -> Result<Answer> {
        self.call(call, self.cfg.timeout).await
    }
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
        let who: Reader = (stream.to_string(), consumer.to_string());
        let mut deadline = tokio::time::Instant::now() + block + self.cfg.timeout;
        // The read in the hub this one waits on: its own, or one a read
        // before it sent and stopped waiting for.
        let mut mine: Option<u64> = None;
        loop {
            let arrived = conn.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut ahead = conn.ahead.lock();
                // The hub released what waits ahead with the connection.
                if conn.dead.is_cancelled() {
                    return Err(conn.gone());
                }
                let got = ahead.take(&who, max);
                if !got.is_empty() {
                    return Ok(got);
                }
                match (ahead.reading.get(&who).copied(), mine) {
                    (Some(r), _) => {
                        mine = Some(r.n);
                        deadline = deadline.max(r.due);
                    }
                    (None, Some(n)) => {
                        return match ahead.failed.get(&who) {
                            Some((failed, e)) if *failed == n => Err(e.clone()),
                            // It came back empty.
                            _ => Ok(vec![]),
                        };
                    }
                    (None, None) => {
                        let call = Call::Read {
                            stream: stream.into(),
                            consumer: consumer.into(),
                            max: self.read_max(max),
                            block,
                        };
                        let wait = block + self.cfg.timeout;
                        mine = Some(conn.start_read(&mut ahead, &who, call, max, wait).n);
                    }
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(BackendError::Timeout);
            }
        }
    }

    async fn renew(
        &self,
        stream: &str,
        consumer: &str,
        held: &[Held],
        lease: Duration,
    ) -> Result<Vec<String>> {
        let conn = self.live().await?;
        let who: Reader = (stream.to_string(), consumer.to_string());
        let mut ids: Vec<(String, Duration)> = held
            .iter()
            .map(|h| (h.id.clone(), h.since.elapsed()))
            .collect();
        // What waits ahead is this reader's too: renewed with it, so that
        // waiting for a free slot never costs its lease. Not once the
        // worker drains: then it waits only until the worker exits.
        let waiting: Vec<String> = if self.draining.load(Ordering::Relaxed) {
            vec![]
        } else {
            conn.ahead
                .lock()
                .entries
                .get(&who)
                .map(|w| w.iter().map(|d| d.id.clone()).collect())
                .unwrap_or_default()
        };
        ids.extend(waiting.iter().map(|id| (id.clone(), Duration::ZERO)));
        let call = Call::Renew {
            stream: stream.into(),
            consumer: consumer.into(),
            held: ids,
            lease,
        };
        match conn.call(call, self.cfg.timeout).await? {
            Answer::Ids(mut lost) => {
                // Lost while waiting ahead: not handed out any more, and
                // not the caller's to hear of (unless a read handed it
                // out meanwhile).
                let mut dropped = vec![];
                if let Some(w) = conn.ahead.lock().entries.get_mut(&who) {
                    w.retain(|d| {
                        let keep = !lost.contains(&d.id);
                        if !keep {
                            dropped.push(d.id.clone());
                        }
                        keep
                    });
                }
                lost.retain(|id| !dropped.contains(id));
                Ok(lost)
            }
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
        // reclaim finds. What the read still in the hub may bring counts
        // against the slots left.
        let conn = self.live().await?;
        let who: Reader = (stream.to_string(), consumer.to_string());
        let (mut out, room) = {
            let mut ahead = conn.ahead.lock();
            if conn.dead.is_cancelled() {
                return Err(conn.gone());
            }
            let out = ahead.take(&who, max);
            let promised = ahead.reading.get(&who).map_or(0, |r| r.max);
            let room = max.saturating_sub(out.len()).saturating_sub(promised);
            (out, room)
        };
        if room == 0 {
            return Ok(out);
        }
        let call = Call::Reclaim {
            stream: stream.into(),
            consumer: consumer.into(),
            min_idle,
            max: self.read_max(room),
        };
        match conn.call(call, self.cfg.timeout).await {
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

    /// Takes nothing ahead any more; waits for a read still in the hub
    /// (at most until its answer is due) and returns all that waits ahead.
    async fn done_reading(&self, stream: &str, consumer: &str) -> Result<Vec<Delivery>> {
        self.draining.store(true, Ordering::Relaxed);
        let Some(conn) = self.conn.lock().await.clone() else {
            return Ok(vec![]);
        };
        // Released by the hub with the connection: another run's now.
        if conn.dead.is_cancelled() {
            return Ok(vec![]);
        }
        let who: Reader = (stream.to_string(), consumer.to_string());
        loop {
            let arrived = conn.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let due = {
                let mut ahead = conn.ahead.lock();
                match ahead.reading.get(&who) {
                    Some(r) => r.due,
                    None => return Ok(ahead.take(&who, usize::MAX)),
                }
            };
            if tokio::time::timeout_at(due, arrived).await.is_err() {
                return Ok(conn.ahead.lock().take(&who, usize::MAX));
            }
        }
    }

    /// Hands off `done` and, for the stream's reader, takes as many new
    /// entries as the batch frees slots in the same round trip.
    async fn complete_all(&self, stream: &str, done: &[Completion]) -> Result<Vec<bool>> {
        let conn = self.live().await?;
        // As many as the batch frees slots, less what came ahead and is not
        // handed out yet.
        let then = {
            let ahead = conn.ahead.lock();
            ahead
                .reader
                .as_ref()
                .filter(|(s, _)| s == stream && !self.draining.load(Ordering::Relaxed))
                .and_then(|who| {
                    let room = done.len().saturating_sub(ahead.count(who));
                    (room > 0).then(|| ThenRead {
                        consumer: who.1.clone(),
                        max: u32::try_from(room).unwrap_or(u32::MAX),
                    })
                })
        };
        let asked = then
            .as_ref()
            .map(|t| (stream.to_string(), t.consumer.clone()));
        let call = Call::CompleteAll {
            stream: stream.into(),
            done: done.to_vec(),
            then,
        };
        match conn.call(call, self.cfg.timeout).await? {
            // Flags alone also when asked: the hub may leave the read out.
            Answer::Flags(f) if f.len() == done.len() => Ok(f),
            Answer::Handed { flags, deliveries }
                if flags.len() == done.len() && deliveries.len() <= done.len() =>
            {
                let Some(who) = asked else {
                    // The batch is acknowledged whatever came with it; what
                    // came waits, held, until the connection ends.
                    tracing::warn!(
                        entries = deliveries.len(),
                        "the hub brought entries to a hand-off that asked for none"
                    );
                    return Ok(flags);
                };
                if !deliveries.is_empty() {
                    conn.ahead.lock().put(who, deliveries);
                    // A read waiting in the hub hands them out now.
                    conn.arrived.notify_waiters();
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::entry;
    use crate::keyring::KeyRing;
    use crate::tcp::session::{self, Opener, Sealer};
    use tokio::io::AsyncWriteExt;
    use tokio::io::BufReader;
    use tokio::net::tcp::OwnedWriteHalf;
    use tokio::net::TcpListener;

    const Q: &str = "q";

    /// The hub's end of one connection, each answer written by the test.
    struct Scripted {
        r: BufReader<tokio::net::tcp::OwnedReadHalf>,
        w: OwnedWriteHalf,
        opener: Opener,
        sealer: Sealer,
    }

    impl Scripted {
        async fn next(&mut self) -> (u64, Call) {
            let frame = self.opener.open(&mut self.r).await.unwrap();
            Call::decode(frame).unwrap()
        }

        async fn answer(&mut self, id: u64, a: Answer) {
            let mut out = vec![];
            self.sealer.seal_into(&a.encode(id), &mut out);
            self.w.write_all(&out).await.unwrap();
        }
    }

    /// A backend and the hub's end of its first connection.
    async fn scripted() -> (Arc<TcpBackend>, tokio::task::JoinHandle<Scripted>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ring = KeyRing::ephemeral();
        let limits = Limits::for_entries(64 << 10);
        let backend = TcpBackend::new(
            TcpConfig {
                hub: listener.local_addr().unwrap(),
                pipeline: "default/p".into(),
                group: "work".into(),
                limits,
                timeout: Duration::from_secs(5),
            },
            SharedKeyRing::fixed(ring.clone()),
        )
        .unwrap();
        let hub = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (s, _) =
                session::accept(&mut stream, &ring, "default/p", |_| true, limits.max_frame)
                    .await
                    .unwrap();
            let (r, w) = stream.into_split();
            Scripted {
                r: BufReader::new(r),
                w,
                opener: s.opener,
                sealer: s.sealer,
            }
        });
        (backend, hub)
    }

    fn delivery(id: &str) -> Delivery {
        Delivery {
            id: id.into(),
            entry: entry(1),
            deliveries: 1,
        }
    }

    fn done(id: &str) -> Completion {
        Completion {
            id: id.into(),
            forward: None,
        }
    }

    /// A backend whose first read (of consumer `c1`) the hub served with
    /// `1-0`.
    async fn served_once() -> (Arc<TcpBackend>, Scripted) {
        let (w, hub) = scripted().await;
        let first = tokio::spawn({
            let w = w.clone();
            async move { w.read(Q, "c1", 1, Duration::ZERO).await }
        });
        let mut hub = hub.await.unwrap();
        let (id, call) = hub.next().await;
        assert!(matches!(call, Call::Read { .. }), "{call:?}");
        hub.answer(id, Answer::Deliveries(vec![delivery("1-0")]))
            .await;
        assert_eq!(first.await.unwrap().unwrap().len(), 1);
        (w, hub)
    }

    /// Hands off `1-0`, the hub's answer bringing `next`; returns the call
    /// the hub got.
    async fn hand_off_bringing(w: &Arc<TcpBackend>, hub: &mut Scripted, next: &str) -> Call {
        let handing = tokio::spawn({
            let w = w.clone();
            async move { w.complete_all(Q, &[done("1-0")]).await }
        });
        let (id, call) = hub.next().await;
        hub.answer(
            id,
            Answer::Handed {
                flags: vec![true],
                deliveries: vec![delivery(next)],
            },
        )
        .await;
        assert_eq!(handing.await.unwrap().unwrap(), vec![true]);
        call
    }

    #[tokio::test]
    async fn a_read_waiting_in_the_hub_hands_out_what_a_hand_off_brings_meanwhile() {
        let (w, mut hub) = served_once().await;

        // A read waits in the hub (the hub does not answer it yet)…
        let waiting = tokio::spawn({
            let w = w.clone();
            async move { w.read(Q, "c1", 2, Duration::from_secs(60)).await }
        });
        let (read_id, call) = hub.next().await;
        assert!(matches!(call, Call::Read { max: 2, .. }));
        // …and a hand-off brings an entry: that read hands it out at once.
        let call = hand_off_bringing(&w, &mut hub, "2-0").await;
        let Call::CompleteAll {
            then: Some(then), ..
        } = call
        else {
            panic!("a hand-off asking for the reader's next entries: {call:?}")
        };
        assert_eq!((then.consumer.as_str(), then.max), ("c1", 1));
        let got = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("handed out without the hub answering the read")
            .unwrap()
            .unwrap();
        let ids: Vec<&str> = got.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["2-0"]);

        // The read's own answer comes later and waits ahead for the next
        // read, which sends nothing to the hub.
        hub.answer(read_id, Answer::Deliveries(vec![delivery("3-0")]))
            .await;
        let next = tokio::time::timeout(
            Duration::from_secs(10),
            w.read(Q, "c1", 2, Duration::from_secs(60)),
        )
        .await
        .unwrap()
        .unwrap();
        let ids: Vec<&str> = next.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["3-0"]);
        let renewing = tokio::spawn({
            let w = w.clone();
            async move { w.renew(Q, "c1", &[], Duration::from_secs(30)).await }
        });
        let (id, call) = hub.next().await;
        let Call::Renew { held, .. } = call else {
            panic!("the next call is the renewal, no read: {call:?}")
        };
        assert!(held.is_empty(), "nothing waits ahead any more");
        hub.answer(id, Answer::Ids(vec![])).await;
        assert!(renewing.await.unwrap().unwrap().is_empty());
    }

    #[tokio::test]
    async fn entries_waiting_ahead_are_renewed_and_one_lost_meanwhile_is_not_handed_out() {
        let (w, mut hub) = served_once().await;
        hand_off_bringing(&w, &mut hub, "2-0").await;

        // The worker renews what it holds; what waits ahead goes with it,
        // and the hub finds it lost.
        let since = std::time::Instant::now();
        let renewing = tokio::spawn({
            let w = w.clone();
            async move {
                let held = [Held {
                    id: "0-1".into(),
                    since,
                }];
                w.renew(Q, "c1", &held, Duration::from_secs(30)).await
            }
        });
        let (id, call) = hub.next().await;
        let Call::Renew { held, .. } = call else {
            panic!("a renewal: {call:?}")
        };
        let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["0-1", "2-0"]);
        hub.answer(id, Answer::Ids(vec!["2-0".into(), "0-1".into()]))
            .await;
        assert_eq!(
            renewing.await.unwrap().unwrap(),
            ["0-1"],
            "an entry the worker never held is not its loss to hear of"
        );
        // The lost entry is not handed out: the next read asks the hub.
        let reading = tokio::spawn({
            let w = w.clone();
            async move { w.read(Q, "c1", 1, Duration::ZERO).await }
        });
        let (id, call) = hub.next().await;
        assert!(matches!(call, Call::Read { .. }), "{call:?}");
        hub.answer(id, Answer::Deliveries(vec![])).await;
        assert!(reading.await.unwrap().unwrap().is_empty());
    }

    /// A backend whose read `1-0` was served and handed off, with `2-0`
    /// brought ahead, and a read (its number returned) waiting in the hub.
    async fn reading_with_one_ahead_handed_out(max: usize) -> (Arc<TcpBackend>, Scripted, u64) {
        let (w, mut hub) = served_once().await;
        let waiting = tokio::spawn({
            let w = w.clone();
            async move { w.read(Q, "c1", max, Duration::from_secs(60)).await }
        });
        let (read_id, _) = hub.next().await;
        hand_off_bringing(&w, &mut hub, "2-0").await;
        assert_eq!(waiting.await.unwrap().unwrap().len(), 1);
        (w, hub, read_id)
    }

    #[tokio::test]
    async fn a_reclaim_leaves_the_slots_a_read_in_the_hub_may_fill() {
        let (w, mut hub, read_id) = reading_with_one_ahead_handed_out(3).await;
        // Four slots free, three of them the read's in the hub: the
        // reclaim asks for one.
        let reclaiming = tokio::spawn({
            let w = w.clone();
            async move { w.reclaim(Q, "c1", Duration::from_secs(30), 4).await }
        });
        let (id, call) = hub.next().await;
        let Call::Reclaim { max, .. } = call else {
            panic!("a reclaim: {call:?}")
        };
        assert_eq!(max, 1);
        hub.answer(id, Answer::Deliveries(vec![])).await;
        assert!(reclaiming.await.unwrap().unwrap().is_empty());
        // As many as the read may bring: no reclaim is sent at all.
        let none = w.reclaim(Q, "c1", Duration::from_secs(30), 3).await;
        assert!(none.unwrap().is_empty());
        hub.answer(read_id, Answer::Deliveries(vec![])).await;
    }

    #[tokio::test]
    async fn a_draining_worker_gets_what_the_read_in_the_hub_brings() {
        let (w, mut hub, read_id) = reading_with_one_ahead_handed_out(2).await;
        let draining = tokio::spawn({
            let w = w.clone();
            async move { w.done_reading(Q, "c1").await }
        });
        // Nothing waits ahead now: what it returns is what the read in the
        // hub brought after the drain began.
        hub.answer(read_id, Answer::Deliveries(vec![delivery("3-0")]))
            .await;
        let left = tokio::time::timeout(Duration::from_secs(10), draining)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let ids: Vec<&str> = left.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["3-0"]);
    }

    #[tokio::test]
    async fn a_failed_read_fails_the_reads_that_waited_on_it_only() {
        let (w, mut hub, read_id) = reading_with_one_ahead_handed_out(2).await;
        // The read in the hub fails after its caller went: the next read
        // sends its own instead of taking that failure.
        hub.answer(read_id, Answer::Failed("boom".into())).await;
        let conn = w.live().await.unwrap();
        while !conn.ahead.lock().reading.is_empty() {
            tokio::task::yield_now().await;
        }
        let reading = tokio::spawn({
            let w = w.clone();
            async move { w.read(Q, "c1", 2, Duration::from_secs(60)).await }
        });
        let (id, call) = hub.next().await;
        assert!(matches!(call, Call::Read { .. }), "{call:?}");
        // And a read that waited on one that fails gets the failure.
        hub.answer(id, Answer::Failed("boom".into())).await;
        let err = reading.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }
}
