//! A queue for unit tests: memory streams with two operations a test may
//! replace — what a reclaim hands over, and how a batch of hand-offs is
//! committed — to stage races and refusals a real backend shows only by
//! chance.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use sluice_platform::backend::Result;
use sluice_platform::memory::MemoryStreams;
use sluice_platform::queue::{Delivery, Depth, Held};
use sluice_platform::{BackendError, Completion, Queue, StreamEntry};

/// Memory streams with staged behaviour.
pub struct StagedQueue {
    pub inner: Arc<MemoryStreams>,
    /// Handed over by the next reclaim, instead of the streams' own.
    pub reclaim_next: Mutex<Option<Delivery>>,
    pub reclaims: AtomicUsize,
    /// Returned for any batch of more than one hand-off.
    pub refuse_batches: Option<BackendError>,
    pub commits: AtomicUsize,
    /// Pushes and appends to this stream fail (a key of another type)…
    pub broken_stream: Option<String>,
    /// …this many times (then they succeed).
    pub broken_for: AtomicUsize,
    /// Every commit is applied (but its forwards to `broken_stream`), then
    /// answered with this error (a Redis transaction with a command failing
    /// inside `EXEC`); the hand-back of a first delivery too, which the
    /// Redis adapter commits the same way.
    pub applied_then: Option<BackendError>,
}

impl StagedQueue {
    fn refuse_broken(&self, streams: &[&str]) -> Result<()> {
        match &self.broken_stream {
            Some(b)
                if streams.contains(&b.as_str())
                    && self
                        .broken_for
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok() =>
            {
                Err(BackendError::Unavailable(
                    "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    pub fn new(inner: Arc<MemoryStreams>) -> Self {
        Self {
            inner,
            reclaim_next: Mutex::new(None),
            reclaims: AtomicUsize::new(0),
            refuse_batches: None,
            commits: AtomicUsize::new(0),
            broken_stream: None,
            broken_for: AtomicUsize::new(usize::MAX),
            applied_then: None,
        }
    }
}

#[async_trait]
impl Queue for StagedQueue {
    async fn ensure_group(&self, s: &str) -> Result<()> {
        self.inner.ensure_group(s).await
    }
    async fn push(&self, s: &str, e: StreamEntry) -> Result<String> {
        self.refuse_broken(&[s])?;
        self.inner.push(s, e).await
    }
    async fn push_capped(&self, s: &str, e: StreamEntry, n: u64) -> Result<String> {
        self.inner.push_capped(s, e, n).await
    }
    async fn read(&self, s: &str, c: &str, n: usize, b: Duration) -> Result<Vec<Delivery>> {
        self.inner.read(s, c, n, b).await
    }
    async fn renew(&self, s: &str, c: &str, h: &[Held], l: Duration) -> Result<Vec<String>> {
        self.inner.renew(s, c, h, l).await
    }
    async fn reclaim(&self, s: &str, c: &str, i: Duration, n: usize) -> Result<Vec<Delivery>> {
        self.reclaims.fetch_add(1, Ordering::SeqCst);
        if let Some(d) = self.reclaim_next.lock().take() {
            return Ok(vec![d]);
        }
        self.inner.reclaim(s, c, i, n).await
    }
    async fn complete_all(&self, s: &str, done: &[Completion]) -> Result<Vec<bool>> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        match (&self.refuse_batches, &self.applied_then) {
            (Some(e), _) if done.len() > 1 => Err(e.clone()),
            (_, Some(e)) => {
                // As Redis runs it: every command but a forward to the
                // broken stream.
                let ran: Vec<Completion> =
                    done.iter()
                        .map(|c| Completion {
                            id: c.id.clone(),
                            forward: c.forward.clone().filter(|f| {
                                self.broken_stream.as_deref() != Some(f.stream.as_str())
                            }),
                        })
                        .collect();
                self.inner.complete_all(s, &ran).await?;
                Err(e.clone())
            }
            _ => self.inner.complete_all(s, done).await,
        }
    }
    async fn hand_back(
        &self,
        s: &str,
        c: &str,
        d: &Delivery,
        e: &StreamEntry,
        since: std::time::Instant,
        lease: Duration,
    ) -> Result<bool> {
        if self.applied_then.is_none() || d.deliveries > 1 || since.elapsed() >= lease / 2 {
            return self.inner.hand_back(s, c, d, e, since, lease).await;
        }
        // As the Redis adapter gives back a first delivery: one commit of
        // the entry, written again as new, and of its acknowledgement.
        let back = Completion::hand_back(&d.id, s, e.clone());
        Ok(self.complete_all(s, &[back]).await?.first() == Some(&true))
    }
    async fn append(&self, s: &[&str], e: &StreamEntry) -> Result<usize> {
        self.refuse_broken(s)?;
        self.inner.append(s, e).await
    }
    async fn depth(&self, s: &str) -> Result<Depth> {
        self.inner.depth(s).await
    }
    async fn pending(&self, s: &str) -> Result<u64> {
        self.inner.pending(s).await
    }
}
