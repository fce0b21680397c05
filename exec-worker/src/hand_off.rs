//! Group commit of a worker's hand-offs.
//!
//! ```text
//!   finish ─▶ pending ──(no leader)──▶ this task leads: one scheduler turn, take what is pending (≤ 128 hand-offs, ≤ 1 MiB)
//!                │                          └▶ complete_all ─▶ answer each ─▶ again, until its own is answered;
//!                │                             what is still pending then is led on by a task of its own
//!                └──(a leader runs)───▶ wait for the answer
//! ```
//!
//! A worker hands off many entries at once: while one `complete_all` is on
//! its way, the hand-offs finished meanwhile wait and go together in the
//! next. The first hand-off to find no commit running lets the scheduler
//! run one turn (hand-offs of tasks already woken on its thread usually
//! join it; it resumes once that thread has nothing else ready), then commits
//! (leads) until its own is answered; if others wait then, a spawned task
//! leads on until none is pending. Idle, a hand-off goes alone after that
//! one turn, on its own task; busy, a batch costs one round trip, and one
//! commit runs at a time.
//!
//! # Guarantees
//! - Every hand-off is answered: committed, refused, or `Unavailable` when
//!   its leader was dropped before committing it (the entry then stays
//!   pending and is redelivered after its lease).
//! - A batch the backend refused as a whole before applying any of it
//!   ([`BackendError::NotApplied`]) is committed again one by one, so one
//!   hand-off Redis refuses does not take the others with it.
//! - A batch applied only in part ([`BackendError::PartlyApplied`]: its
//!   entries acknowledged and deleted, a forward maybe missing) has each
//!   forward sent again on its own; a hand-off whose forward still cannot
//!   be sent is answered `PartlyApplied` (the worker dead-letters its
//!   entry). Any other failure (a timeout, a lost connection: maybe
//!   applied) is reported to every hand-off of the batch, never retried
//!   here.
//!
//! It must not hold the pending list's lock across an `await`.

use std::sync::Arc;

use parking_lot::Mutex;
use sluice_platform::{BackendError, Completion, Queue};
use tokio::sync::oneshot;

/// Most hand-offs committed in one `complete_all`…
pub const MAX_BATCH: usize = 128;
/// …and most entry bytes appended by one (a batch holds at least one).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

type Answer = Result<bool, BackendError>;
type Waiting = (Completion, oneshot::Sender<Answer>);

/// Hand-offs waiting, and whether a task is committing them.
#[derive(Default)]
pub struct HandOffs {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: Vec<Waiting>,
    leading: bool,
}

/// The mark of the task committing. Dropped while armed (its task
/// cancelled or panicking during its turn of the scheduler or mid-commit),
/// it clears the mark and answers
/// every pending hand-off `Unavailable`, so none waits for a leader that
/// is gone.
struct Lead<'a> {
    hand_offs: &'a HandOffs,
    armed: bool,
}

impl Lead<'_> {
    /// Whether nothing is pending in `st`; if so the mark is cleared, under
    /// the lock that saw it, so a hand-off pushed after this leads itself.
    fn idle(&mut self, st: &mut State) -> bool {
        let idle = st.pending.is_empty();
        if idle {
            st.leading = false;
            self.armed = false;
        }
        idle
    }

    /// The next batch, or `None` (and the mark cleared) when there is none.
    fn next_batch(&mut self) -> Option<Vec<Waiting>> {
        let hand_offs = self.hand_offs;
        let mut st = hand_offs.state.lock();
        if self.idle(&mut st) {
            return None;
        }
        let mut bytes = 0usize;
        let n = st
            .pending
            .iter()
            .take(MAX_BATCH)
            .take_while(|(c, _)| {
                let len = c.forward.as_ref().map_or(0, |f| f.entry.stored_len());
                let first = bytes == 0;
                bytes = bytes.saturating_add(len.max(1));
                first || bytes <= MAX_BATCH_BYTES
            })
            .count();
        Some(st.pending.drain(..n).collect())
    }

    /// Whether anything is pending; if not, the mark is cleared.
    fn more(&mut self) -> bool {
        let hand_offs = self.hand_offs;
        !self.idle(&mut hand_offs.state.lock())
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.hand_offs.state.lock();
            st.leading = false;
            st.pending.clear();
        }
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
    pub async fn commit(
        self: &Arc<Self>,
        queue: &Arc<dyn Queue>,
        stream: &str,
        done: Completion,
    ) -> Answer {
        let (tx, mut rx) = oneshot::channel();
        let lead = {
            let mut st = self.state.lock();
            st.pending.push((done, tx));
            !std::mem::replace(&mut st.leading, true)
        };
        if !lead {
            return rx.await.unwrap_or_else(|_| Err(stopped()));
        }
        let mut lead = Lead {
            hand_offs: self,
            armed: true,
        };
        // One turn of the scheduler first: hand-offs whose tasks are
        // already runnable on this thread (woken by the same read of the
        // connection) usually join this batch instead of waiting for the
        // next commit.
        tokio::task::yield_now().await;
        while let Some(batch) = lead.next_batch() {
            commit_batch(&**queue, stream, batch).await;
            if let Ok(answer) = rx.try_recv() {
                if lead.more() {
                    // Its own is done; the rest is led on by a task of its
                    // own, so this entry's handler can return.
                    lead.armed = false;
                    let (this, queue, stream) = (self.clone(), queue.clone(), stream.to_string());
                    tokio::spawn(async move { this.lead_on(&*queue, &stream).await });
                }
                return answer;
            }
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Commits until nothing is pending; the mark is already this task's.
    async fn lead_on(&self, queue: &dyn Queue, stream: &str) {
        let mut lead = Lead {
            hand_offs: self,
            armed: true,
        };
        while let Some(batch) = lead.next_batch() {
            commit_batch(queue, stream, batch).await;
        }
    }
}

async fn commit_batch(queue: &dyn Queue, stream: &str, batch: Vec<Waiting>) {
    let (done, waiting): (Vec<Completion>, Vec<_>) = batch.into_iter().unzip();
    let answers = commit_all(queue, stream, &done).await;
    for (answer, tx) in answers.into_iter().zip(waiting) {
        let _ = tx.send(answer);
    }
}

/// One answer per hand-off of `done`.
async fn commit_all(queue: &dyn Queue, stream: &str, done: &[Completion]) -> Vec<Answer> {
    match queue.complete_all(stream, done).await {
        Ok(answers) if answers.len() == done.len() => answers.into_iter().map(Ok).collect(),
        Ok(_) => done.iter().map(|_| Err(stopped())).collect(),
        Err(BackendError::NotApplied(_)) if done.len() > 1 => {
            let mut answers = Vec::with_capacity(done.len());
            for c in done {
                let one = std::slice::from_ref(c);
                answers.push(match queue.complete_all(stream, one).await {
                    Err(BackendError::PartlyApplied(why)) => {
                        send_again(queue, one, &why).await.remove(0)
                    }
                    one => one.map(|mut a| a.pop().unwrap_or(true)),
                });
            }
            answers
        }
        Err(BackendError::PartlyApplied(why)) => send_again(queue, done, &why).await,
        Err(e) => done.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// The forwards of `done` sent again, each on its own, their entries
/// being acknowledged and deleted already by a hand-off applied only in
/// part (`why`): which forwards landed then is not known (the client
/// reports the first failure inside `EXEC` for the whole transaction), and
/// a copy of one that had is harmless (the same signed entry: a worker's
/// replay guard refuses it, the ingress drops a second reply). All are
/// sent at once; those that fail are sent again after a pause, in
/// [`SEND_AGAIN_ROUNDS`] rounds in all (a connection lost at that moment
/// must not make a dead letter of a forward that landed), so the pauses
/// add up to 300 ms per batch. An answer `PartlyApplied` when one still
/// fails: nothing but the worker holds that entry then. A follower's copy
/// goes only once its forward is kept.
pub(crate) async fn send_again(queue: &dyn Queue, done: &[Completion], why: &str) -> Vec<Answer> {
    let sent = |round: u32, r: Result<bool, BackendError>| {
        r.map_err(|e| {
            BackendError::PartlyApplied(format!(
                "{why}; sent again on its own {round} time(s): {e}"
            ))
        })
    };
    let first = done.iter().map(|c| send_forward(queue, c));
    let mut answers: Vec<Answer> = futures::future::join_all(first)
        .await
        .into_iter()
        .map(|r| sent(1, r))
        .collect();
    for round in 2..=SEND_AGAIN_ROUNDS {
        let left: Vec<usize> = (0..done.len()).filter(|&i| answers[i].is_err()).collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(SEND_AGAIN_PAUSE * (round - 1)).await;
        let again = left.iter().map(|&i| send_forward(queue, &done[i]));
        for (&i, r) in left.iter().zip(futures::future::join_all(again).await) {
            answers[i] = sent(round, r);
        }
    }
    answers
}

/// Sends `c`'s forward, then its follower's copy if the forward was kept;
/// whether it was kept (true when there is none: the acknowledgement was
/// the whole hand-off).
async fn send_forward(queue: &dyn Queue, c: &Completion) -> Result<bool, BackendError> {
    let Some(f) = &c.forward else {
        return Ok(true);
    };
    let kept = if f.must_exist {
        queue.append(&[f.stream.as_str()], &f.entry).await? > 0
    } else {
        queue.push(&f.stream, f.entry.clone()).await.map(|_| true)?
    };
    if let (true, Some(copy)) = (kept, &f.copy_to) {
        // A follower's copy: a lost one costs it the live view only.
        let _ = queue.append(&[copy.as_str()], &f.entry).await;
    }
    Ok(kept)
}

/// Rounds of sending forwards again after a hand-off applied in part…
const SEND_AGAIN_ROUNDS: u32 = 3;
/// …and the first pause between two, growing by as much each time.
const SEND_AGAIN_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use sluice_platform::conformance::entry;
    use sluice_platform::memory::MemoryStreams;
    use sluice_platform::{Forward, StreamEntry};

    use super::*;
    use crate::test_queue::StagedQueue;

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

    fn done(id: &str, forward: Option<Forward>) -> Completion {
        Completion {
            id: id.to_string(),
            forward,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_hand_offs_are_all_committed_and_answered() {
        let mem = MemoryStreams::new();
        let ids = read_all(&mem, "q", 200).await;
        let q: Arc<dyn Queue> = mem.clone();
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
                        copy_to: None,
                    };
                    (i, h.commit(&q, "q", done(&id, Some(forward))).await)
                })
            })
            .collect();
        for t in tasks {
            let (i, answer) = t.await.unwrap();
            assert_eq!(answer, Ok(i % 2 == 0), "hand-off {i}");
        }
        assert_eq!(mem.depth("q").await.unwrap().entries, 0);
        assert_eq!(mem.depth("next").await.unwrap().entries, 100);
        // A continuing leader may still be clearing its mark.
        for _ in 0..100 {
            if !h.state.lock().leading {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!h.state.lock().leading, "no leader left behind");
        assert!(h.state.lock().pending.is_empty());
    }

    #[tokio::test]
    async fn a_failed_batch_is_answered_and_the_next_hand_off_leads_again() {
        let mem = MemoryStreams::new();
        let ids = read_all(&mem, "q", 2).await;
        let q: Arc<dyn Queue> = mem.clone();
        let h = Arc::new(HandOffs::default());
        mem.faults().fail_next(1);
        assert!(h.commit(&q, "q", done(&ids[0], None)).await.is_err());
        assert_eq!(h.commit(&q, "q", done(&ids[1], None)).await, Ok(true));
        assert_eq!(
            mem.depth("q").await.unwrap().entries,
            1,
            "the failed one stays"
        );
    }

    #[tokio::test]
    async fn a_leader_dropped_mid_commit_answers_everyone_waiting() {
        let mem = MemoryStreams::new();
        let ids = read_all(&mem, "q", 2).await;
        let q: Arc<dyn Queue> = mem.clone();
        let h = Arc::new(HandOffs::default());
        mem.faults().set_latency(Duration::from_secs(60));
        let leader = {
            let (h, q, id) = (h.clone(), q.clone(), ids[0].clone());
            tokio::spawn(async move { h.commit(&q, "q", done(&id, None)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let follower = {
            let (h, q, id) = (h.clone(), q.clone(), ids[1].clone());
            tokio::spawn(async move { h.commit(&q, "q", done(&id, None)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader.abort();
        let answer = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("the follower is answered")
            .unwrap();
        assert!(answer.is_err(), "{answer:?}");
        assert!(!h.state.lock().leading);
        assert!(h.state.lock().pending.is_empty());
    }

    /// Three hand-offs queued behind a slow first one, committed as one
    /// batch against `refusal`; returns their answers and the calls made.
    async fn batch_against(refusal: BackendError) -> (Vec<Answer>, usize) {
        let mem = MemoryStreams::new();
        let ids = read_all(&mem, "q", 4).await;
        let refusing = Arc::new(StagedQueue {
            refuse_batches: Some(refusal),
            ..StagedQueue::new(mem.clone())
        });
        let q: Arc<dyn Queue> = refusing.clone();
        let h = Arc::new(HandOffs::default());
        // The first commits alone, slowly; the other three wait behind it
        // and go together.
        mem.faults().set_latency(Duration::from_millis(200));
        let spawn = |id: String| {
            let (h, q) = (h.clone(), q.clone());
            tokio::spawn(async move { h.commit(&q, "q", done(&id, None)).await })
        };
        let first = spawn(ids[0].clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rest: Vec<_> = ids[1..].iter().cloned().map(spawn).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        mem.faults().set_latency(Duration::ZERO);
        assert_eq!(first.await.unwrap(), Ok(true));
        let mut answers = vec![];
        for t in rest {
            answers.push(t.await.unwrap());
        }
        (answers, refusing.commits.load(Ordering::SeqCst))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn hand_offs_started_in_one_turn_of_the_scheduler_go_in_one_batch() {
        let mem = MemoryStreams::new();
        let ids = read_all(&mem, "q", 4).await;
        let staged = Arc::new(StagedQueue::new(mem.clone()));
        let q: Arc<dyn Queue> = staged.clone();
        let h = Arc::new(HandOffs::default());
        // All four are runnable before any runs: the first to run leads,
        // and its turn of the scheduler lets the other three join it.
        let tasks: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let (h, q) = (h.clone(), q.clone());
                tokio::spawn(async move { h.commit(&q, "q", done(&id, None)).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(true));
        }
        assert_eq!(staged.commits.load(Ordering::SeqCst), 1, "one batch");
        assert_eq!(mem.pending("q").await.unwrap(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_leader_dropped_during_its_turn_of_the_scheduler_answers_everyone_waiting() {
        let mem = MemoryStreams::new();
        let ids = read_all(&mem, "q", 2).await;
        let q: Arc<dyn Queue> = mem.clone();
        let h = Arc::new(HandOffs::default());
        let leader = {
            let (h, q, id) = (h.clone(), q.clone(), ids[0].clone());
            tokio::spawn(async move { h.commit(&q, "q", done(&id, None)).await })
        };
        // The leader runs up to its yield, and is dropped there.
        tokio::task::yield_now().await;
        let follower = {
            let (h, q, id) = (h.clone(), q.clone(), ids[1].clone());
            tokio::spawn(async move { h.commit(&q, "q", done(&id, None)).await })
        };
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        let answer = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("the follower is answered")
            .unwrap();
        assert!(
            matches!(answer, Err(BackendError::Unavailable(_)) | Ok(true)),
            "{answer:?}"
        );
        // Nothing was acknowledged by the dropped leader; whatever is
        // answered Unavailable stays pending for its lease.
        let pending = mem.pending("q").await.unwrap();
        assert_eq!(pending, if answer.is_ok() { 1 } else { 2 });
        // A later hand-off leads again.
        let again = h.commit(&q, "q", done(&ids[0], None)).await;
        assert_eq!(again, Ok(true));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_refused_whole_is_committed_one_by_one() {
        let (answers, calls) = batch_against(BackendError::NotApplied("EXECABORT".into())).await;
        assert_eq!(answers, vec![Ok(true); 3]);
        assert_eq!(calls, 1 + 1 + 3, "the first, the refused batch, then each");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_may_have_applied_is_not_retried() {
        let lost = BackendError::Unavailable("connection lost".into());
        let (answers, calls) = batch_against(lost.clone()).await;
        assert_eq!(answers, vec![Err(lost); 3]);
        assert_eq!(calls, 2, "the first and the batch, nothing retried");
    }

    #[tokio::test]
    async fn a_batch_applied_in_part_sends_each_forward_again_on_its_own() {
        let mem = MemoryStreams::new();
        sluice_platform::ReplyChannel::open(&*mem, "r:live", Duration::from_secs(60))
            .await
            .unwrap();
        let q = StagedQueue {
            refuse_batches: Some(BackendError::PartlyApplied("WRONGTYPE".into())),
            broken_stream: Some("broken".into()),
            ..StagedQueue::new(mem.clone())
        };
        let forward = |stream: &str, must_exist| {
            Some(Forward {
                stream: stream.into(),
                entry: entry(1),
                must_exist,
                copy_to: None,
            })
        };
        let batch = vec![
            done("1-0", forward("next", false)),
            done("2-0", forward("broken", false)),
            done("3-0", None),
            done("4-0", forward("r:live", true)),
            done("5-0", forward("r:gone", true)),
        ];
        let answers = commit_all(&q, "q", &batch).await;
        assert_eq!(answers[0], Ok(true));
        assert!(
            matches!(&answers[1], Err(BackendError::PartlyApplied(m)) if m.contains("WRONGTYPE") && m.contains("sent again")),
            "{:?}",
            answers[1]
        );
        // Nothing to send: its acknowledgement was the whole hand-off.
        assert_eq!(answers[2], Ok(true));
        assert_eq!(answers[3], Ok(true));
        // A reply stream gone stays gone: not created by the second send.
        assert_eq!(answers[4], Ok(false));
        assert_eq!(mem.depth("next").await.unwrap().entries, 1);
        assert_eq!(mem.depth("r:live").await.unwrap().entries, 1);
        assert_eq!(mem.depth("r:gone").await.unwrap().entries, 0);
    }

    #[tokio::test]
    async fn a_forward_that_fails_when_sent_again_is_tried_again_and_its_copy_follows_it() {
        let mem = MemoryStreams::new();
        for follower in ["flaky-follower", "broken-follower"] {
            sluice_platform::ReplyChannel::open(&*mem, follower, Duration::from_secs(60))
                .await
                .unwrap();
        }
        let once = StagedQueue {
            broken_stream: Some("flaky".into()),
            broken_for: std::sync::atomic::AtomicUsize::new(1),
            ..StagedQueue::new(mem.clone())
        };
        let with_copy = |stream: &str| Completion {
            id: "1-0".into(),
            forward: Some(Forward {
                stream: stream.into(),
                entry: entry(1),
                must_exist: false,
                copy_to: Some(format!("{stream}-follower")),
            }),
        };
        // Fails once, lands in the second round, its copy after it.
        let answers = send_again(&once, &[with_copy("flaky")], "WRONGTYPE").await;
        assert_eq!(answers, vec![Ok(true)]);
        assert_eq!(mem.depth("flaky").await.unwrap().entries, 1);
        assert_eq!(mem.depth("flaky-follower").await.unwrap().entries, 1);
        // Fails every round: no copy for the follower of what never landed.
        let never = StagedQueue {
            broken_stream: Some("broken".into()),
            ..StagedQueue::new(mem.clone())
        };
        let answers = send_again(&never, &[with_copy("broken")], "WRONGTYPE").await;
        assert!(
            matches!(&answers[0], Err(BackendError::PartlyApplied(m)) if m.contains("3 time(s)")),
            "{answers:?}"
        );
        assert_eq!(mem.depth("broken-follower").await.unwrap().entries, 0);
    }

    #[test]
    fn a_batch_stops_at_its_byte_budget_but_holds_at_least_one() {
        let h = HandOffs::default();
        let big = |n: usize| {
            let (tx, _rx) = oneshot::channel();
            let entry = StreamEntry {
                v: Default::default(),
                k: Default::default(),
                m: vec![0; n].into(),
                s: Default::default(),
                note: Default::default(),
            };
            let f = Forward {
                stream: "next".into(),
                entry,
                must_exist: false,
                copy_to: None,
            };
            (done("1-0", Some(f)), tx)
        };
        {
            let mut st = h.state.lock();
            st.leading = true;
            st.pending.push(big(MAX_BATCH_BYTES + 10));
            st.pending.push(big(10));
            st.pending.push(big(MAX_BATCH_BYTES / 2));
            st.pending.push(big(MAX_BATCH_BYTES / 2));
        }
        let mut lead = Lead {
            hand_offs: &h,
            armed: true,
        };
        let sizes: Vec<usize> = std::iter::from_fn(|| lead.next_batch().map(|b| b.len())).collect();
        assert_eq!(sizes, vec![1, 2, 1]);
        assert!(!h.state.lock().leading);
    }
}
