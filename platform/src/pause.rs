//! Whether the pipeline is paused (`spec.paused`, docs/operator.md
//! "Pause and resume").
//!
//! ```text
//! operator ─ SET/DEL sluice:{ns/p}:paused (Redis user admin)
//!                 │ GET every POLL, by every ingress and worker process
//!                 ▼
//!             Pause ─▶ ingress: new requests 503 `paused` + Retry-After
//!                   └▶ worker: no read, no reclaim; what it holds is finished
//! ```
//!
//! The key's presence is the signal; its value is not read for meaning.
//! A read that fails leaves the last state as it was: a Redis that does not
//! answer neither pauses nor resumes a pipeline. The memory and tcp
//! profiles have no such key and never pause ([`Pause::never`]).
//!
//! This module must not write the key: only the operator does.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::kv::Kv;

/// How often a process reads the pause key: a pause or resume takes effect
/// within this (plus one blocking read of a worker).
pub const POLL: Duration = Duration::from_secs(1);
/// How long reads of the pause key may fail at start before the pipeline
/// is taken as not paused; meanwhile a worker reads nothing.
pub const FIRST_READ_PATIENCE: Duration = Duration::from_secs(10);
/// Pause between reads of the key until the first answers.
const FIRST_READ_RETRY: Duration = Duration::from_millis(100);

/// A process's view of its pipeline's pause; cheap to clone.
#[derive(Debug, Clone)]
pub struct Pause {
    /// `None` until the first read of the key has answered or failed.
    state: watch::Receiver<Option<bool>>,
}

impl Pause {
    /// A pipeline that is never paused.
    pub fn never() -> Self {
        // A receiver whose sender is gone keeps its last value.
        let (_, state) = watch::channel(Some(false));
        Self { state }
    }

    /// Reads `key` in `kv` every `every` until `stop`; paused while the key
    /// exists. Until the first read has answered, [`Self::resumed`] waits
    /// (a worker started during a pause reads nothing) and
    /// [`Self::is_paused`] is false. Reads that fail for
    /// [`FIRST_READ_PATIENCE`] from the start count as not paused, so a Redis
    /// user that may not read the key (an external Redis) cannot stop the
    /// pipeline.
    pub fn watch(kv: Arc<dyn Kv>, key: String, every: Duration, stop: CancellationToken) -> Self {
        let (tx, state) = watch::channel(None);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            loop {
                let read = kv.get(&key).await;
                tx.send_if_modified(|was| {
                    let now = match (&read, *was) {
                        (Ok(v), _) => v.is_some(),
                        (Err(_), Some(last)) => last,
                        (Err(e), None) if started.elapsed() >= FIRST_READ_PATIENCE => {
                            tracing::warn!(error = %e, "cannot read whether the pipeline is paused; taken as not paused");
                            false
                        }
                        (Err(_), None) => return false,
                    };
                    let changed = *was != Some(now);
                    if changed && (now || was.is_some()) {
                        tracing::info!(paused = now, "pipeline {}", if now { "paused" } else { "resumed" });
                    }
                    *was = Some(now);
                    changed
                });
                if let Err(e) = read {
                    tracing::debug!(error = %e, "cannot read the pause key; state left as it was");
                }
                // Until the first answer (the connection is still coming
                // up), again soon.
                let next = if tx.borrow().is_some() {
                    every
                } else {
                    FIRST_READ_RETRY
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(next) => {}
                }
            }
        });
        Self { state }
    }

    /// Whether the pipeline is paused now.
    pub fn is_paused(&self) -> bool {
        *self.state.borrow() == Some(true)
    }

    /// Whether the pipeline is known not to be paused (false until the
    /// first read of the key has answered).
    pub fn is_running(&self) -> bool {
        *self.state.borrow() == Some(false)
    }

    /// Returns once the pipeline is known not to be paused (at once if it
    /// is not).
    pub async fn resumed(&self) {
        let mut state = self.state.clone();
        // An error means the watcher stopped: the state stays as it was,
        // and a process shutting down does not wait on it.
        let _ = state.wait_for(|paused| *paused == Some(false)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryKv;

    const KEY: &str = "sluice:{t/p}:paused";

    #[tokio::test(start_paused = true)]
    async fn the_keys_presence_pauses_and_its_absence_resumes() {
        let kv = MemoryKv::new();
        let stop = CancellationToken::new();
        let pause = Pause::watch(kv.clone(), KEY.into(), POLL, stop.clone());
        tokio::time::sleep(POLL * 2).await;
        assert!(!pause.is_paused());

        kv.set_nx(KEY, "1", Duration::from_secs(3600))
            .await
            .unwrap();
        tokio::time::sleep(POLL + Duration::from_millis(10)).await;
        assert!(pause.is_paused());
        let waiting = tokio::spawn({
            let p = pause.clone();
            async move { p.resumed().await }
        });
        tokio::time::sleep(POLL * 3).await;
        assert!(!waiting.is_finished(), "resumed while the key exists");

        kv.delete(KEY).await.unwrap();
        tokio::time::timeout(POLL * 2, waiting)
            .await
            .expect("resumed within a poll of the key's removal")
            .unwrap();
        assert!(!pause.is_paused());
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_read_keeps_the_last_state() {
        let kv = MemoryKv::new();
        let stop = CancellationToken::new();
        kv.set_nx(KEY, "1", Duration::from_secs(3600))
            .await
            .unwrap();
        let pause = Pause::watch(kv.clone(), KEY.into(), POLL, stop.clone());
        tokio::time::sleep(POLL).await;
        assert!(pause.is_paused());
        // Removed, but every read fails from now on.
        kv.delete(KEY).await.unwrap();
        kv.faults().fail_next(u32::MAX);
        tokio::time::sleep(POLL * 3).await;
        assert!(pause.is_paused(), "an unreadable key resumed the pipeline");
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_read_before_the_first_answer_and_a_failing_one_is_not_a_pause() {
        let kv = MemoryKv::new();
        let stop = CancellationToken::new();
        kv.faults().set_latency(Duration::from_millis(300));
        kv.set_nx(KEY, "1", Duration::from_secs(3600))
            .await
            .unwrap();
        let pause = Pause::watch(kv.clone(), KEY.into(), POLL, stop.clone());
        // Started during a pause: no read is let through before the key's.
        tokio::time::timeout(POLL * 3, pause.resumed())
            .await
            .expect_err("resumed before the key was read");
        assert!(pause.is_paused() && !pause.is_running());
        stop.cancel();

        // A key that cannot be read holds a worker back for a while only.
        let kv = MemoryKv::new();
        let stop = CancellationToken::new();
        kv.faults().fail_next(u32::MAX);
        let pause = Pause::watch(kv.clone(), KEY.into(), POLL, stop.clone());
        let waited = tokio::time::Instant::now();
        tokio::time::timeout(FIRST_READ_PATIENCE * 2, pause.resumed())
            .await
            .expect("an unreadable key at start is no pause");
        assert!(waited.elapsed() >= FIRST_READ_PATIENCE);
        assert!(!pause.is_paused() && pause.is_running());
        stop.cancel();

        // A connection that comes up late: read as soon as it is.
        let kv = MemoryKv::new();
        let stop = CancellationToken::new();
        kv.set_nx(KEY, "1", Duration::from_secs(3600))
            .await
            .unwrap();
        kv.faults().fail_next(3);
        let pause = Pause::watch(kv.clone(), KEY.into(), POLL, stop.clone());
        tokio::time::sleep(FIRST_READ_RETRY * 5).await;
        assert!(pause.is_paused(), "paused once the key is read");
        stop.cancel();
    }

    #[tokio::test]
    async fn never_is_never_paused() {
        let p = Pause::never();
        assert!(!p.is_paused());
        tokio::time::timeout(Duration::from_secs(1), p.resumed())
            .await
            .unwrap();
    }
}
