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
/// Pause between reads of the key until the first answers, for the first
/// this many tries (3 s); then the usual [`POLL`].
const FIRST_READ_RETRY: Duration = Duration::from_millis(100);
const FIRST_READ_QUICK_TRIES: u32 = 30;

/// A process's view of its pipeline's pause; cheap to clone.
#[derive(Debug, Clone)]
pub struct Pause {
    /// `None` until a read of the key has answered.
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
    /// exists. Until a read has answered, [`Self::resumed`] waits (a worker
    /// started during a pause, or while Redis cannot be reached, reads
    /// nothing) and [`Self::is_paused`] is false. A read Redis refuses for
    /// want of permission (`NOPERM`: a user from before pausing existed, or
    /// an external Redis's) is an answer: not paused, so such a user cannot
    /// hold the pipeline back.
    pub fn watch(kv: Arc<dyn Kv>, key: String, every: Duration, stop: CancellationToken) -> Self {
        let (tx, state) = watch::channel(None);
        tokio::spawn(async move {
            let mut warned = false;
            let mut reads: u32 = 0;
            loop {
                let read = kv.get(&key).await;
                let answer = match &read {
                    Ok(v) => Some(v.is_some()),
                    // Some other type under the key: it exists.
                    Err(e) if e.to_string().contains("WRONGTYPE") => Some(true),
                    Err(e) if e.to_string().contains("NOPERM") => {
                        if !warned {
                            warned = true;
                            tracing::warn!(error = %e, "this process's Redis user may not read the pause key; the pipeline is taken as not paused");
                        }
                        Some(false)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read the pause key; state left as it was");
                        None
                    }
                };
                if let Some(now) = answer {
                    tx.send_if_modified(|was| {
                        let changed = *was != Some(now);
                        if changed && (now || was.is_some()) {
                            tracing::info!(
                                paused = now,
                                "pipeline {}",
                                if now { "paused" } else { "resumed" }
                            );
                        }
                        *was = Some(now);
                        changed
                    });
                }
                // Until the first answer (the connection is still coming
                // up), again soon; after a few seconds at the usual pace.
                reads = reads.saturating_add(1);
                let next = if tx.borrow().is_some() || reads > FIRST_READ_QUICK_TRIES {
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
    /// is not): true; false if the key is no longer watched (the process is
    /// stopping) and it never will be known.
    pub async fn resumed(&self) -> bool {
        let mut state = self.state.clone();
        let answered = state
            .wait_for(|paused| *paused == Some(false))
            .await
            .is_ok();
        answered
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
    async fn nothing_is_read_before_the_first_answer_and_a_refused_read_is_no_pause() {
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

        // Redis out of reach: nothing is known, and nothing read, however long.
        let kv = MemoryKv::new();
        let stop = CancellationToken::new();
        kv.faults().fail_next(u32::MAX);
        let pause = Pause::watch(kv.clone(), KEY.into(), POLL, stop.clone());
        tokio::time::timeout(POLL * 60, pause.resumed())
            .await
            .expect_err("resumed without an answer");
        assert!(!pause.is_paused() && !pause.is_running());
        stop.cancel();

        // A user that may not read the key: an answer, not paused.
        let stop = CancellationToken::new();
        let pause = Pause::watch(Arc::new(Refusing), KEY.into(), POLL, stop.clone());
        let resumed = tokio::time::timeout(POLL, pause.resumed())
            .await
            .expect("NOPERM is no pause");
        assert!(resumed && pause.is_running());
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
        assert!(!p.is_paused() && p.is_running());
        let resumed = tokio::time::timeout(Duration::from_secs(1), p.resumed())
            .await
            .unwrap();
        assert!(resumed, "a pause never watched still answers: running");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_watch_says_so_rather_than_resume() {
        let kv = MemoryKv::new();
        kv.faults().fail_next(u32::MAX);
        let stop = CancellationToken::new();
        let pause = Pause::watch(kv, KEY.into(), POLL, stop.clone());
        let waiting = tokio::spawn({
            let p = pause.clone();
            async move { p.resumed().await }
        });
        tokio::time::sleep(POLL).await;
        stop.cancel();
        // Its watcher gone, the wait ends without pretending to resume.
        let resumed = tokio::time::timeout(POLL, waiting).await.unwrap().unwrap();
        assert!(!resumed);
    }

    /// A Redis user without `GET` on the key.
    struct Refusing;

    #[async_trait::async_trait]
    impl Kv for Refusing {
        async fn set_nx(
            &self,
            _: &str,
            _: &str,
            _: Duration,
        ) -> crate::backend::Result<Option<String>> {
            unreachable!()
        }
        async fn get(&self, _: &str) -> crate::backend::Result<Option<String>> {
            Err(crate::BackendError::Unavailable(
                "redis: NOPERM User ingress has no permissions to access the 'sluice:{t/p}:paused' key".into(),
            ))
        }
        async fn delete(&self, _: &str) -> crate::backend::Result<bool> {
            unreachable!()
        }
    }
}
