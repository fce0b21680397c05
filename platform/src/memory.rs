//! In-memory adapters of the three ports, for the memory profile and tests.
//!
//! They honour the same contracts as the Redis adapters (the conformance
//! suites prove it): consumer-group semantics with pending entries, delivery
//! counts and reclaim; atomic complete; reply streams that only their owner
//! creates and that expire when not refreshed; keys with TTLs. Each adapter
//! carries a [`Faults`] injector.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{BackendError, Faults, Result};
use crate::envelope::StreamEntry;
use crate::kv::Kv;
use crate::queue::{Completion, Delivery, Depth, Held, Queue, ReplyChannel};

#[derive(Default)]
struct Stream {
    seq: u64,
    entries: BTreeMap<u64, StreamEntry>,
    bytes: u64,
    /// Highest id handed out by `read` (the group's last-delivered id).
    last_delivered: u64,
    pending: BTreeMap<u64, Pending>,
    /// Reply streams: expiry, refreshed by `open`.
    expires: Option<Instant>,
}

struct Pending {
    consumer: String,
    since: Instant,
    count: u32,
    /// Its consumer is gone ([`MemoryStreams::release`]): reclaimable now.
    released: bool,
}

impl Stream {
    fn append(&mut self, entry: StreamEntry) -> u64 {
        self.seq += 1;
        self.bytes += entry.stored_len() as u64;
        self.entries.insert(self.seq, entry);
        self.seq
    }

    fn remove(&mut self, seq: u64) {
        self.take(seq);
    }

    /// Removes an entry and returns it.
    fn take(&mut self, seq: u64) -> Option<StreamEntry> {
        self.pending.remove(&seq);
        let e = self.entries.remove(&seq)?;
        self.bytes -= e.stored_len() as u64;
        Some(e)
    }
}

/// `0-<seq>`, written without the formatting machinery (every entry
/// pushed, read or answered gets one).
fn id_of(seq: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(seq);
    let mut id = String::with_capacity(2 + digits.len());
    id.push_str("0-");
    id.push_str(digits);
    id
}

fn seq_of(id: &str) -> Option<u64> {
    id.rsplit_once('-').and_then(|(_, s)| s.parse().ok())
}

/// Streams for both the `Queue` and the `ReplyChannel` ports, as one Redis
/// holds both: a completion can forward to a reply stream atomically.
#[derive(Default)]
pub struct MemoryStreams {
    /// By name. Names are the pipeline's own (queues, reply streams, answer
    /// streams under ids it made), not a caller's, so a hasher cheaper than
    /// SipHash serves.
    streams: Mutex<foldhash::HashMap<String, Stream>>,
    /// Per stream, woken on every append to it; its readers re-check it.
    /// Kept apart from the streams, so a stream deleted and made again
    /// keeps its waiters.
    appended: Mutex<foldhash::HashMap<String, Arc<Notify>>>,
    /// Every expiry `open` set, soonest first: expired streams nobody
    /// reads again (answers never fetched) are dropped from here, a few at
    /// each `open`, instead of by a sweep of the whole map.
    expiring: Mutex<BinaryHeap<Reverse<(Instant, String)>>>,
    faults: Faults,
}

impl MemoryStreams {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The fault injector of this adapter.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Makes every entry `consumer` holds in `stream` reclaimable at once,
    /// as if its lease had lapsed: the consumer is known to be gone (its
    /// connection to the tcp hub ended). Returns how many it held. Should
    /// the consumer still be alive, it finds its entries taken at its next
    /// renewal if another took them, like any consumer whose lease lapsed.
    pub fn release(&self, stream: &str, consumer: &str) -> usize {
        let mut map = self.streams.lock();
        let Some(s) = map.get_mut(stream) else {
            return 0;
        };
        let mut n = 0;
        for p in s.pending.values_mut().filter(|p| p.consumer == consumer) {
            p.released = true;
            n += 1;
        }
        n
    }

    /// Drops expired reply streams; returns the live stream, if any.
    fn live<'a>(
        map: &'a mut foldhash::HashMap<String, Stream>,
        name: &str,
    ) -> Option<&'a mut Stream> {
        let expired = map
            .get(name)
            .and_then(|s| s.expires)
            .is_some_and(|t| t <= Instant::now());
        if expired {
            map.remove(name);
        }
        map.get_mut(name)
    }

    /// Remembers that `stream` expires at `expires` and drops the streams
    /// whose expiry has passed (a stream opened again since is kept: its
    /// later expiry has its own entry).
    fn drop_expired(&self, stream: &str, expires: Instant) {
        let now = Instant::now();
        let mut due = vec![];
        {
            let mut heap = self.expiring.lock();
            heap.push(Reverse((expires, stream.to_string())));
            while heap.peek().is_some_and(|Reverse((t, _))| *t <= now) {
                if let Some(Reverse((_, name))) = heap.pop() {
                    due.push(name);
                }
            }
        }
        let mut map = self.streams.lock();
        for name in due {
            Self::live(&mut map, &name);
        }
    }

    /// The notifier of `stream`'s appends.
    fn notifier(&self, stream: &str) -> Arc<Notify> {
        let mut map = self.appended.lock();
        match map.get(stream) {
            Some(n) => n.clone(),
            None => map.entry(stream.to_string()).or_default().clone(),
        }
    }

    /// Wakes the readers of `stream`, if any wait.
    fn appended_to(&self, stream: &str) {
        if let Some(n) = self.appended.lock().get(stream) {
            n.notify_waiters();
        }
    }

    /// Polls `take` until it yields something or `block` elapses; woken by
    /// appends to `stream`.
    async fn wait_for<T>(
        &self,
        stream: &str,
        block: Duration,
        mut take: impl FnMut(&mut foldhash::HashMap<String, Stream>) -> Vec<T>,
    ) -> Vec<T> {
        let deadline = Instant::now() + block;
        let appended = self.notifier(stream);
        loop {
            // Register interest before looking, so an append between the
            // look and the wait is not missed.
            let notified = appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = take(&mut self.streams.lock());
            if !got.is_empty() || Instant::now() >= deadline {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return take(&mut self.streams.lock());
            }
        }
    }
}

#[async_trait]
impl Queue for MemoryStreams {
    async fn ensure_group(&self, stream: &str) -> Result<()> {
        self.faults.check().await?;
        self.streams.lock().entry(stream.to_string()).or_default();
        Ok(())
    }

    async fn push(&self, stream: &str, entry: StreamEntry) -> Result<String> {
        self.faults.check().await?;
        let seq = self
            .streams
            .lock()
            .entry(stream.to_string())
            .or_default()
            .append(entry);
        self.appended_to(stream);
        Ok(id_of(seq))
    }

    async fn push_capped(&self, stream: &str, entry: StreamEntry, max_len: u64) -> Result<String> {
        self.faults.check().await?;
        let seq = {
            let mut map = self.streams.lock();
            let s = map.entry(stream.to_string()).or_default();
            let seq = s.append(entry);
            while s.entries.len() as u64 > max_len {
                match s.entries.keys().next().copied() {
                    Some(oldest) => s.remove(oldest),
                    None => break,
                }
            }
            seq
        };
        self.appended_to(stream);
        Ok(id_of(seq))
    }

    async fn read(
        &self,
        stream: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>> {
        self.faults.check().await?;
        if max == 0 {
            return Ok(vec![]);
        }
        Ok(self
            .wait_for(stream, block, |map| {
                let s = map.entry(stream.to_string()).or_default();
                let fresh: Vec<u64> = s
                    .entries
                    .range(s.last_delivered + 1..)
                    .take(max)
                    .map(|(k, _)| *k)
                    .collect();
                let now = Instant::now();
                fresh
                    .into_iter()
                    .map(|seq| {
                        s.last_delivered = seq;
                        s.pending.insert(
                            seq,
                            Pending {
                                consumer: consumer.to_string(),
                                since: now,
                                count: 1,
                                released: false,
                            },
                        );
                        Delivery {
                            id: id_of(seq),
                            entry: s.entries[&seq].clone(),
                            deliveries: 1,
                        }
                    })
                    .collect()
            })
            .await)
    }

    async fn delete(&self, stream: &str, ids: &[String]) -> Result<u64> {
        self.faults.check().await?;
        let mut map = self.streams.lock();
        let Some(s) = map.get_mut(stream) else {
            return Ok(0);
        };
        // Only ids this adapter made: `1-1` is not `0-1`.
        Ok(ids
            .iter()
            .filter_map(|id| seq_of(id).filter(|seq| id_of(*seq) == *id))
            .filter(|seq| s.take(*seq).is_some())
            .count() as u64)
    }

    async fn hand_back(
        &self,
        stream: &str,
        consumer: &str,
        d: &Delivery,
        entry: &StreamEntry,
        since: std::time::Instant,
        lease: Duration,
    ) -> Result<bool> {
        self.faults.check().await?;
        if since.elapsed() >= lease / 2 {
            return Ok(false);
        }
        let mut map = self.streams.lock();
        let Some(s) = map.get_mut(stream) else {
            return Ok(false);
        };
        let Some(seq) =
            seq_of(&d.id).filter(|seq| s.pending.get(seq).is_some_and(|p| p.consumer == consumer))
        else {
            return Ok(false);
        };
        if d.deliveries <= 1 {
            s.take(seq);
            s.append(entry.clone());
            drop(map);
            self.appended_to(stream);
        } else if let Some(p) = s.pending.get_mut(&seq) {
            p.count = d.deliveries.saturating_sub(1);
            p.released = true;
        }
        Ok(true)
    }

    async fn renew(
        &self,
        stream: &str,
        consumer: &str,
        held: &[Held],
        _lease: Duration,
    ) -> Result<Vec<String>> {
        self.faults.check().await?;
        let mut map = self.streams.lock();
        let now = Instant::now();
        let mut lost = Vec::new();
        // The owner is known here: `since` is not needed.
        for Held { id, .. } in held {
            let mine = map
                .get_mut(stream)
                .zip(seq_of(id))
                .and_then(|(s, seq)| s.pending.get_mut(&seq))
                .filter(|p| p.consumer == consumer);
            match mine {
                // Resets idle, keeps the count; a live owner's entries are
                // no longer free to reclaim.
                Some(p) => {
                    p.since = now;
                    p.released = false;
                }
                None => lost.push(id.clone()),
            }
        }
        Ok(lost)
    }

    async fn reclaim(
        &self,
        stream: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>> {
        self.faults.check().await?;
        let mut map = self.streams.lock();
        let Some(s) = map.get_mut(stream) else {
            return Ok(vec![]);
        };
        let now = Instant::now();
        let stale: Vec<u64> = s
            .pending
            .iter()
            .filter(|(_, p)| p.released || now.duration_since(p.since) >= min_idle)
            .take(max)
            .map(|(k, _)| *k)
            .collect();
        let mut out = vec![];
        for seq in stale {
            let Some(entry) = s.entries.get(&seq).cloned() else {
                // Deleted while pending (as XAUTOCLAIM does): forget it.
                s.pending.remove(&seq);
                continue;
            };
            // The loop only visits keys present in `pending`.
            let p = s.pending.get_mut(&seq).expect("stale seq is pending");
            p.consumer = consumer.to_string();
            p.since = now;
            p.count += 1;
            p.released = false;
            out.push(Delivery {
                id: id_of(seq),
                entry,
                deliveries: p.count,
            });
        }
        Ok(out)
    }

    async fn complete_all(&self, stream: &str, done: &[Completion]) -> Result<Vec<bool>> {
        self.faults.check().await?;
        let mut answers = Vec::with_capacity(done.len());
        let mut appended: Vec<&str> = Vec::new();
        {
            let mut map = self.streams.lock();
            for c in done {
                let mut forwarded = true;
                if let Some(f) = &c.forward {
                    match Self::live(&mut map, &f.stream) {
                        Some(target) => {
                            target.append(f.entry.clone());
                        }
                        None if f.must_exist => forwarded = false,
                        None => {
                            map.entry(f.stream.clone())
                                .or_default()
                                .append(f.entry.clone());
                        }
                    }
                    if forwarded && !appended.contains(&f.stream.as_str()) {
                        appended.push(&f.stream);
                    }
                    if let Some(copy) = &f.copy_to {
                        if let Some(target) = Self::live(&mut map, copy) {
                            target.append(f.entry.clone());
                            if !appended.contains(&copy.as_str()) {
                                appended.push(copy);
                            }
                        }
                    }
                }
                if let (Some(s), Some(seq)) = (map.get_mut(stream), seq_of(&c.id)) {
                    s.remove(seq);
                }
                answers.push(forwarded);
            }
        }
        for stream in appended {
            self.appended_to(stream);
        }
        Ok(answers)
    }

    async fn append(&self, streams: &[&str], entry: &StreamEntry) -> Result<usize> {
        self.faults.check().await?;
        let mut appended = vec![];
        {
            let mut map = self.streams.lock();
            for s in streams {
                if let Some(target) = Self::live(&mut map, s) {
                    target.append(entry.clone());
                    appended.push(*s);
                }
            }
        }
        for s in &appended {
            self.appended_to(s);
        }
        Ok(appended.len())
    }

    async fn depth(&self, stream: &str) -> Result<Depth> {
        self.faults.check().await?;
        let map = self.streams.lock();
        Ok(map
            .get(stream)
            .map(|s| Depth {
                entries: s.entries.len() as u64,
                bytes: s.bytes,
            })
            .unwrap_or_default())
    }

    async fn pending(&self, stream: &str) -> Result<u64> {
        self.faults.check().await?;
        Ok(self
            .streams
            .lock()
            .get(stream)
            .map_or(0, |s| s.pending.len() as u64))
    }
}

#[async_trait]
impl ReplyChannel for MemoryStreams {
    async fn open(&self, stream: &str, ttl: Duration) -> Result<()> {
        self.faults.check().await?;
        let mut map = self.streams.lock();
        let s = match Self::live(&mut map, stream) {
            Some(s) => s,
            None => map.entry(stream.to_string()).or_default(),
        };
        let expires = Instant::now() + ttl;
        s.expires = Some(expires);
        drop(map);
        self.drop_expired(stream, expires);
        Ok(())
    }

    async fn recv(
        &self,
        stream: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<(String, StreamEntry)>> {
        self.faults.check().await?;
        Ok(self
            .wait_for(stream, block, |map| {
                let Some(s) = Self::live(map, stream) else {
                    return vec![];
                };
                let seqs: Vec<u64> = s.entries.keys().take(max).copied().collect();
                seqs.into_iter()
                    .filter_map(|seq| s.take(seq).map(|e| (id_of(seq), e)))
                    .collect()
            })
            .await)
    }

    async fn close(&self, stream: &str) -> Result<()> {
        self.faults.check().await?;
        self.streams.lock().remove(stream);
        Ok(())
    }

    async fn read_after(
        &self,
        stream: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Option<Vec<(String, StreamEntry)>>> {
        self.faults.check().await?;
        // An id this adapter did not make reads from the start, as Redis
        // refuses it; readers pass back ids they were given.
        let from = after.and_then(seq_of).map_or(0, |s| s.saturating_add(1));
        let mut map = self.streams.lock();
        Ok(Self::live(&mut map, stream).map(|s| {
            s.entries
                .range(from..)
                .take(max)
                .map(|(seq, e)| (id_of(*seq), e.clone()))
                .collect()
        }))
    }

    async fn last_id(&self, stream: &str) -> Result<Option<String>> {
        self.faults.check().await?;
        let mut map = self.streams.lock();
        Ok(Self::live(&mut map, stream)
            .and_then(|s| s.entries.keys().next_back().map(|seq| id_of(*seq))))
    }
}

/// Keys with expiry.
#[derive(Default)]
pub struct MemoryKv {
    map: Mutex<KvMap>,
    faults: Faults,
}

#[derive(Default)]
struct KvMap {
    entries: HashMap<Arc<str>, (String, Instant)>,
    /// Every key with the expiry it was set with, soonest first. A pair
    /// whose key was since removed or set again is stale and skipped.
    expiry: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
}

/// Expired keys removed per write, at most: more than the one a write
/// adds, so the queue drains as fast as it fills and no write pays for a
/// sweep of the whole map.
const EXPIRE_PER_WRITE: usize = 4;

impl KvMap {
    /// Removes up to `budget` expired keys, soonest first.
    fn expire(&mut self, now: Instant, budget: usize) {
        for _ in 0..budget {
            match self.expiry.peek() {
                Some(Reverse((exp, _))) if *exp <= now => {}
                _ => return,
            }
            let Some(Reverse((exp, key))) = self.expiry.pop() else {
                return;
            };
            if self.entries.get(&key).is_some_and(|(_, e)| *e == exp) {
                self.entries.remove(&key);
            }
        }
    }
}

impl MemoryKv {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Keys currently held, expired ones included until the expiry queue
    /// reaches them (a few writes later).
    pub fn len(&self) -> usize {
        self.map.lock().entries.len()
    }

    /// Entries of the expiry queue, stale ones included: bounded by the
    /// keys set within their TTL plus what writes have not drained yet.
    pub fn queued(&self) -> usize {
        self.map.lock().expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Kv for MemoryKv {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<Option<String>> {
        self.faults.check().await?;
        let now = Instant::now();
        let mut m = self.map.lock();
        m.expire(now, EXPIRE_PER_WRITE);
        if let Some((v, exp)) = m.entries.get(key) {
            if *exp > now {
                return Ok(Some(v.clone()));
            }
        }
        let exp = now.checked_add(ttl).ok_or_else(|| {
            BackendError::Unavailable("a key's time to live is out of range".into())
        })?;
        let key: Arc<str> = Arc::from(key);
        m.entries.insert(key.clone(), (value.to_string(), exp));
        m.expiry.push(Reverse((exp, key)));
        Ok(None)
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        self.faults.check().await?;
        let now = Instant::now();
        Ok(self
            .map
            .lock()
            .entries
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v.clone()))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.faults.check().await?;
        let now = Instant::now();
        Ok(self
            .map
            .lock()
            .entries
            .remove(key)
            .is_some_and(|(_, exp)| exp > now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_are_written_as_redis_writes_them_and_read_back() {
        for seq in [0, 1, 9, 10, 99, 100, 12_345, u64::MAX - 1, u64::MAX] {
            let id = id_of(seq);
            assert_eq!(id, format!("0-{seq}"));
            assert_eq!(seq_of(&id), Some(seq));
        }
    }

    #[tokio::test]
    async fn streams_opened_once_and_never_read_again_are_dropped_after_their_expiry() {
        let streams = MemoryStreams::new();
        let ttl = Duration::from_millis(100);
        for i in 0..1000 {
            streams.open(&format!("r:async:{i}"), ttl).await.unwrap();
        }
        assert_eq!(streams.streams.lock().len(), 1000);
        tokio::time::sleep(Duration::from_millis(150)).await;
        streams.open("r:async:last", ttl).await.unwrap();
        assert_eq!(streams.streams.lock().len(), 1, "only the live one is left");
        assert_eq!(streams.expiring.lock().len(), 1);
        // A stream opened again outlives the first expiry it was given.
        streams.open("r:ingress", ttl).await.unwrap();
        streams
            .open("r:ingress", Duration::from_secs(60))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        streams.open("r:async:other", ttl).await.unwrap();
        assert!(streams.peek("r:ingress", 1).await.unwrap().is_some());
    }

    /// The replay guard's load: one fresh key per request at a steady rate,
    /// each kept for `ttl`.
    async fn steady(kv: &MemoryKv, per_second: u64, seconds: u64, ttl: Duration) {
        let step = Duration::from_secs(1) / u32::try_from(per_second).unwrap();
        for i in 0..per_second * seconds {
            assert_eq!(
                kv.set_nx(&format!("n:{i}"), "s/1-0", ttl).await.unwrap(),
                None
            );
            tokio::time::advance(step).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn held_keys_plateau_at_rate_times_ttl_with_no_sweep_of_the_whole_map() {
        let kv = MemoryKv::new();
        let ttl = Duration::from_secs(2);
        // 1,000 keys a second, each for 2 s: about 2,000 live at any time.
        steady(&kv, 1000, 5, ttl).await;
        let after_5s = (kv.len(), kv.queued());
        steady(&kv, 1000, 20, ttl).await;
        let after_25s = (kv.len(), kv.queued());
        assert!(
            after_25s.0 <= 2_100 && after_25s.1 <= 2_100,
            "held {after_25s:?}: bounded by rate × TTL"
        );
        assert_eq!(after_5s, after_25s, "a plateau, not growth");
    }

    #[tokio::test(start_paused = true)]
    async fn keys_set_again_or_deleted_expire_by_their_latest_ttl_only() {
        let kv = MemoryKv::new();
        kv.set_nx("a", "1", Duration::from_secs(1)).await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        // Expired: set again for longer; its first expiry must not take it.
        assert_eq!(
            kv.set_nx("a", "2", Duration::from_secs(10)).await.unwrap(),
            None
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        kv.set_nx("other", "x", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(kv.get("a").await.unwrap().as_deref(), Some("2"));
        assert!(kv.delete("a").await.unwrap());
        assert_eq!(
            kv.set_nx("a", "3", Duration::from_secs(10)).await.unwrap(),
            None
        );
        assert_eq!(kv.get("a").await.unwrap().as_deref(), Some("3"));
        tokio::time::advance(Duration::from_secs(11)).await;
        for i in 0..4 {
            kv.set_nx(&format!("later-{i}"), "x", Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert_eq!(kv.get("a").await.unwrap(), None);
        assert_eq!(kv.len(), 4, "only the later keys are held");
    }
}
