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

/// A process's view of its pipeline's pause; cheap to clone.
#[derive(Debug, Clone)]
pub struct Pause {
    state: watch::Receiver<bool>,
}

impl Pause {
    /// A pipeline that is never paused.
    pub fn never() -> Self {
        // A receiver whose sender is gone keeps its last value.
        let (_, state) = watch::channel(false);
        Self { state }
    }

    /// Reads `key` in `kv` every `every` until `stop`; paused while the key
    /// exists.
    pub fn watch(kv: Arc<dyn Kv>, key: String, every: Duration, stop: CancellationToken) -> Self {
        let (tx, state) = watch::channel(false);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match kv.get(&key).await {
                    Ok(v) => {
                        let paused = v.is_some();
                        tx.send_if_modified(|was| {
                            let changed = *was != paused;
                            if changed {
                                *was = paused;
                                tracing::info!(
                                    paused,
                                    "pipeline {}",
                                    if paused { "paused" } else { "resumed" }
                                );
                            }
                            changed
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read the pause key; state left as it was")
                    }
                }
            }
        });
        Self { state }
    }

    /// Whether the pipeline is paused now.
    pub fn is_paused(&self) -> bool {
        *self.state.borrow()
    }

    /// Returns once the pipeline is not paused (at once if it is not).
    pub async fn resumed(&self) {
        let mut state = self.state.clone();
        // An error means the watcher stopped: the state stays as it was,
        // and a process shutting down does not wait on it.
        let _ = state.wait_for(|paused| !paused).await;
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

    #[tokio::test]
    async fn never_is_never_paused() {
        let p = Pause::never();
        assert!(!p.is_paused());
        tokio::time::timeout(Duration::from_secs(1), p.resumed())
            .await
            .unwrap();
    }
}
