//! Group commit of a worker's hand-offs.
//!
//! ```text
//!   finish ─▶ pending ──(no leader)──▶ this task leads: take all pending (≤ 128)
//!                │                          └▶ complete_all ─▶ answer each ─▶ again until none
//!                └──(a leader runs)───▶ wait for the answer
//! ```
//!
//! A worker hands off many entries at once: while one `complete_all` is on
//! its way, the hand-offs finished meanwhile wait and go together in the
//! next. No task of its own commits them: the first hand-off to find no
//! commit running commits (leads), and keeps committing until nothing is
//! pending. Idle, a hand-off goes alone at once, on its own task; busy, a
//! batch costs one round trip.
//!
//! # Guarantees
//! - Every hand-off is answered: committed, refused, or `Unavailable` when
//!   its leader was dropped before committing it (the entry then stays
//!   pending and is redelivered after its lease).
//! - A batch refused as a whole for a reason other than a timeout (which
//!   may have applied it) is committed again one by one, so one hand-off
//!   Redis refuses does not take the others with it.
//!
//! It must not hold the pending list's lock across an `await`.

use parking_lot::Mutex;
use sluice_platform::{BackendError, Completion, Queue};
use tokio::sync::oneshot;

/// Most hand-offs committed in one `complete_all`.
pub const MAX_BATCH: usize = 128;

type Answer = Result<bool, BackendError>;

/// Hand-offs waiting, and whether a task is committing them.
#[derive(Default)]
pub struct HandOffs {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: Vec<(Completion, oneshot::Sender<Answer>)>,
    leading: bool,
}

/// Clears the leader's mark when its task ends, however it ends, so a
/// leader dropped mid-commit does not leave hand-offs without one.
struct Lead<'a>(&'a HandOffs);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.0.state.lock().leading = false;
    }
}

fn stopped() -> BackendError {
    BackendError::Unavailable("the hand-off was not committed".to_string())
}

impl HandOffs {
    /// Commits `done` on `stream` of `queue`, with whatever else is pending;
    /// true unless its `must_exist` forward found no stream.
    ///
    /// # Errors
    /// The backend's, when the batch holding it failed.
    pub async fn commit(&self, queue: &dyn Queue, stream: &str, done: Completion) -> Answer {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut st = self.state.lock();
            st.pending.push((done, tx));
            !std::mem::replace(&mut st.leading, true)
        };
        if lead {
            let _lead = Lead(self);
            loop {
                let batch: Vec<_> = {
                    let mut st = self.state.lock();
                    if st.pending.is_empty() {
                        // Cleared under the same lock that saw nothing
                        // pending: a hand-off pushed after this leads itself.
                        st.leading = false;
                        break;
                    }
                    let n = st.pending.len().min(MAX_BATCH);
                    st.pending.drain(..n).collect()
                };
                let (done, waiting): (Vec<Completion>, Vec<_>) = batch.into_iter().unzip();
                let answers = commit_all(queue, stream, &done).await;
                for (answer, tx) in answers.into_iter().zip(waiting) {
                    let _ = tx.send(answer);
                }
            }
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// One answer per hand-off of `done`.
async fn commit_all(queue: &dyn Queue, stream: &str, done: &[Completion]) -> Vec<Answer> {
    match queue.complete_all(stream, done).await {
        Ok(answers) if answers.len() == done.len() => answers.into_iter().map(Ok).collect(),
        Ok(_) => done.iter().map(|_| Err(stopped())).collect(),
        Err(e) if done.len() == 1 || matches!(e, BackendError::Timeout) => {
            done.iter().map(|_| Err(e.clone())).collect()
        }
        Err(_) => {
            let mut answers = Vec::with_capacity(done.len());
            for c in done {
                let one = queue.complete_all(stream, std::slice::from_ref(c)).await;
                answers.push(one.map(|mut a| a.pop().unwrap_or(true)));
            }
            answers
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use sluice_platform::conformance::entry;
    use sluice_platform::memory::MemoryStreams;
    use sluice_platform::Forward;

    use super::*;

    async fn read_all(q: &MemoryStreams, stream: &str, n: usize) -> Vec<String> {
        q.ensure_group(stream).await.unwrap();
        for i in 0..n {
            q.push(stream, entry(i)).await.unwrap();
        }
        q.read(stream, "c", n, Duration::ZERO)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_hand_offs_are_all_committed_and_answered() {
        let q = MemoryStreams::new();
        let ids = read_all(&q, "q", 200).await;
        let h = Arc::new(HandOffs::default());
        let tasks: Vec<_> = ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                let (q, h) = (q.clone(), h.clone());
                tokio::spawn(async move {
                    let forward = Forward {
                        stream: if i % 2 == 0 {
                            "next".into()
                        } else {
                            "r:gone".into()
                        },
                        entry: entry(i),
                        must_exist: i % 2 == 1,
                    };
                    let done = Completion {
                        id,
                        forward: Some(forward),
                    };
                    (i, h.commit(&*q, "q", done).await)
                })
            })
            .collect();
        for t in tasks {
            let (i, answer) = t.await.unwrap();
            assert_eq!(answer, Ok(i % 2 == 0), "hand-off {i}");
        }
        assert_eq!(q.depth("q").await.unwrap().entries, 0);
        assert_eq!(q.depth("next").await.unwrap().entries, 100);
        assert!(!h.state.lock().leading, "no leader left behind");
        assert!(h.state.lock().pending.is_empty());
    }

    #[tokio::test]
    async fn a_failed_batch_is_answered_and_the_next_hand_off_leads_again() {
        let q = MemoryStreams::new();
        let ids = read_all(&q, "q", 2).await;
        let h = HandOffs::default();
        q.faults().fail_next(1);
        let first = Completion {
            id: ids[0].clone(),
            forward: None,
        };
        assert!(h.commit(&*q, "q", first).await.is_err());
        let second = Completion {
            id: ids[1].clone(),
            forward: None,
        };
        assert_eq!(h.commit(&*q, "q", second).await, Ok(true));
        assert_eq!(
            q.depth("q").await.unwrap().entries,
            1,
            "the failed one stays"
        );
    }

    #[tokio::test]
    async fn a_leader_dropped_mid_commit_leaves_no_mark() {
        let q = MemoryStreams::new();
        let ids = read_all(&q, "q", 1).await;
        let h = HandOffs::default();
        q.faults().set_latency(Duration::from_secs(60));
        let done = Completion {
            id: ids[0].clone(),
            forward: None,
        };
        let commit = h.commit(&*q, "q", done);
        assert!(tokio::time::timeout(Duration::from_millis(50), commit)
            .await
            .is_err());
        assert!(!h.state.lock().leading);
    }
}
