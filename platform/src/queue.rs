//! The `Queue` and `ReplyChannel` ports: streams of signed entries.
//!
//! A queue stream is consumed through one consumer group (`sluice`). Each
//! read entry becomes *pending* for the reading consumer with a delivery
//! count; the consumer renews its lease while busy, and entries whose lease
//! lapsed (a dead consumer) are reclaimed by others with the count increased.
//! A consumer finishes entries with [`Queue::complete_all`], which atomically
//! forwards the next envelope of each (if any), acknowledges and deletes them
//! — so a stream's length is always backlog plus work in progress. Finishing
//! many entries in one step is how a busy worker keeps its hand-offs to one
//! round trip and a few commands for a whole batch.
//!
//! A reply stream belongs to one ingress instance: only it creates the stream
//! ([`ReplyChannel::open`]); workers write with "must exist" semantics, so the
//! stream of a dead instance is never recreated.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::backend::Result;
use crate::envelope::StreamEntry;

/// One entry handed to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Stream entry id (e.g. `1700000000000-0`).
    pub id: String,
    pub entry: StreamEntry,
    /// How many times the entry has been delivered, this one included.
    pub deliveries: u32,
}

/// An entry a consumer works on, as it asks to renew its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Stream entry id.
    pub id: String,
    /// When the consumer last learned the entry was its own: the answer to
    /// the read, reclaim or renewal that reset the entry's idle time
    /// arrived then. The entry has been idle at least this long unless
    /// someone else took it in the meantime, which is how a backend without
    /// an owner check in one step tells the two apart.
    pub since: Instant,
}

/// What [`Queue::complete`] appends before acknowledging.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub stream: String,
    pub entry: StreamEntry,
    /// Append only if the stream exists (replies: `NOMKSTREAM`).
    pub must_exist: bool,
    /// A second stream that gets the same entry if it exists: the ingress
    /// following a streamed answer, when `stream` is where it is kept. It
    /// does not decide the hand-off's answer.
    pub copy_to: Option<String>,
}

/// One entry's hand-off, for [`Queue::complete_all`].
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Stream entry id of the entry finished.
    pub id: String,
    /// What to append before acknowledging it.
    pub forward: Option<Forward>,
}

impl Completion {
    /// A first delivery given back ([`Queue::hand_back`]): `entry`, the same
    /// request, appended to its own `stream` again (if it still exists) as
    /// a new entry, and delivery `id` acknowledged and deleted.
    pub fn hand_back(id: &str, stream: &str, entry: StreamEntry) -> Self {
        Self {
            id: id.to_string(),
            forward: Some(Forward {
                stream: stream.to_string(),
                entry,
                must_exist: true,
                copy_to: None,
            }),
        }
    }
}

/// Size of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Entries in the stream: backlog plus pending work.
    pub entries: u64,
    /// Approximate bytes of those entries.
    pub bytes: u64,
}

/// Work queues.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Creates the stream and its consumer group if absent. Idempotent.
    async fn ensure_group(&self, stream: &str) -> Result<()>;

    /// Appends an entry; returns its id.
    async fn push(&self, stream: &str, entry: StreamEntry) -> Result<String>;

    /// Appends an entry and trims the stream to its newest `max_len` entries
    /// (bounded retention, e.g. the dead-letter stream); returns its id.
    async fn push_capped(&self, stream: &str, entry: StreamEntry, max_len: u64) -> Result<String>;

    /// Up to `max` entries never delivered before, waiting up to `block` for
    /// the first one. They become pending for `consumer`.
    async fn read(
        &self,
        stream: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>>;

    /// Resets the idle time of those of `held` that are still pending for
    /// `consumer` (lease renewal), without changing their delivery counts;
    /// returns the ids of the others — taken over by another consumer after
    /// their `lease` lapsed, or completed — which are left alone. A backend
    /// that cannot check the owner in one step tells a held entry from a
    /// taken one by idle time, with half a lease of margin either way (see
    /// the Redis adapter): a misjudged entry is run twice, never lost.
    async fn renew(
        &self,
        stream: &str,
        consumer: &str,
        held: &[Held],
        lease: Duration,
    ) -> Result<Vec<String>>;

    /// Takes over up to `max` pending entries idle for at least `min_idle`,
    /// increasing their delivery counts.
    async fn reclaim(
        &self,
        stream: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>>;

    /// Gives back `d`, which `consumer` read and holds (it last learned so
    /// at `since`), without counting this delivery, for another consumer to
    /// take soon: a worker gives back a request of another generation of
    /// the graph whose node it does not run (docs/wire-format.md,
    /// "Delivery"). A first delivery goes back as a new entry, `entry` (the
    /// same request, its note telling the hand-backs), read like any new
    /// one; its nonce was never claimed. A redelivery keeps its id (its
    /// nonce was claimed under it): it becomes pending as if its lease had
    /// long lapsed, its count set back by one, and the next
    /// [`Queue::reclaim`] of any consumer takes it. Nothing is done when
    /// `consumer` may no longer hold it (`since` is over half a `lease`
    /// ago). True when given back; false when not, or when the backend
    /// cannot (its lease then lapses and it is reclaimed, counted).
    async fn hand_back(
        &self,
        _stream: &str,
        _consumer: &str,
        _d: &Delivery,
        _entry: &StreamEntry,
        _since: Instant,
        _lease: Duration,
    ) -> Result<bool> {
        Ok(false)
    }

    /// Atomically: append `forward` (if any), acknowledge and delete `id`.
    /// Returns false when a `must_exist` forward found no stream (the entry
    /// is still acknowledged and deleted).
    async fn complete(&self, stream: &str, id: &str, forward: Option<Forward>) -> Result<bool> {
        let done = Completion {
            id: id.to_string(),
            forward,
        };
        let mut answers = self.complete_all(stream, &[done]).await?;
        Ok(answers.pop().unwrap_or(true))
    }

    /// Atomically, for all of `done` in one step: append each forward, then
    /// acknowledge and delete every id. One answer per completion, in
    /// order: false when its `must_exist` forward found no stream (the entry
    /// is still acknowledged and deleted).
    async fn complete_all(&self, stream: &str, done: &[Completion]) -> Result<Vec<bool>>;

    /// Appends `entry` to each of `streams` that exists (`NOMKSTREAM`), in
    /// one round trip; how many did. A chunk of a streamed answer, to its
    /// store and to the ingress following it.
    async fn append(&self, streams: &[&str], entry: &StreamEntry) -> Result<usize>;

    /// Deletes the entries `ids` of `stream` (a stream without a consumer
    /// group: the dead letters); how many there were. Ids the stream does
    /// not hold are no error. A backend that cannot says so.
    async fn delete(&self, _stream: &str, _ids: &[String]) -> Result<u64> {
        Err(crate::backend::BackendError::Unavailable(
            "this backend cannot delete entries".into(),
        ))
    }

    /// Entries and bytes in the stream.
    async fn depth(&self, stream: &str) -> Result<Depth>;

    /// Entries delivered but not yet completed.
    async fn pending(&self, stream: &str) -> Result<u64>;

    /// `consumer` reads `stream` no more (a worker draining): a backend
    /// that takes entries ahead of reads stops doing so, and returns those
    /// it took and did not hand out yet, for the caller to finish.
    async fn done_reading(&self, _stream: &str, _consumer: &str) -> Result<Vec<Delivery>> {
        Ok(vec![])
    }
}

/// Reply streams, read by the one ingress instance they belong to.
#[async_trait]
pub trait ReplyChannel: Send + Sync + 'static {
    /// Creates the stream (or refreshes its expiry); called periodically by
    /// its live ingress with `ttl` well above the period.
    async fn open(&self, stream: &str, ttl: Duration) -> Result<()>;

    /// Up to `max` entries not read before, waiting up to `block`. Each is
    /// returned once; returned entries are deleted from the stream, at once
    /// or in bulk a little later (the Redis adapter trims every few hundred
    /// replies or half a second).
    async fn recv(
        &self,
        stream: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<(String, StreamEntry)>>;

    /// Deletes the stream (clean shutdown).
    async fn close(&self, stream: &str) -> Result<()>;

    /// Up to `max` entries of `stream` from its start, without consuming
    /// them; `None` when the stream does not exist (never opened, or
    /// expired). For streams with no reader of their own: the answers of
    /// asynchronous requests, one stream per request.
    async fn peek(&self, stream: &str, max: usize) -> Result<Option<Vec<StreamEntry>>> {
        Ok(self
            .read_after(stream, None, max)
            .await?
            .map(|got| got.into_iter().map(|(_, e)| e).collect()))
    }

    /// Up to `max` entries of `stream` with ids after `after` (from its
    /// start for `None`), with their ids, without consuming them; `None`
    /// when the stream does not exist. Pages through a stored stream: the
    /// chunks of a streamed answer.
    async fn read_after(
        &self,
        stream: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Option<Vec<(String, StreamEntry)>>>;

    /// The id of the newest entry of `stream`; `None` when it holds none.
    /// Marks where "every entry there is now" ends, in the stream's own
    /// order (no clock involved).
    async fn last_id(&self, stream: &str) -> Result<Option<String>>;
}
