//! Unit tests of the worker loop against the in-memory streams.

use std::sync::atomic::Ordering;

use serde_json::json;
use sluice_platform::memory::{MemoryKv, MemoryStreams};
use sluice_platform::{Kv, ReplyChannel, SharedKeyRing};

use super::*;
use crate::registry::Registry;
use crate::test_queue::StagedQueue;

const HELLO: &str = include_str!("../../../examples/hello.yaml");

/// The hello pipeline's worker parts, the streams, the reply stream, a
/// signed request for `work` and the ring that signed it.
async fn rig() -> (
    Arc<sluice_crds::Plan>,
    RuntimeParts,
    Arc<MemoryStreams>,
    String,
    sluice_platform::StreamEntry,
    SharedKeyRing,
) {
    let (_, plan) = sluice_crds::parse_manifest("hello.yaml", HELLO).unwrap();
    let plan = Arc::new(plan);
    let ring = SharedKeyRing::fixed(sluice_platform::KeyRing::ephemeral());
    let mut registry = prometheus_client::registry::Registry::default();
    let parts = RuntimeParts::new(
        &plan,
        "work",
        ring.clone(),
        Some(MemoryKv::new()),
        &mut registry,
    );
    let mem = MemoryStreams::new();
    let reply_stream = parts.keys.reply("ingress-1");
    mem.open(&reply_stream, Duration::from_secs(60))
        .await
        .unwrap();
    let mut env = Envelope {
        deadline: now_ms() + 30_000,
        node: Some("greet".into()),
        // The stream the tests read answers from.
        reply_to: Some("ingress-1".into()),
        payload: json!({"name": "x"}),
        ..sluice_platform::conformance::request(parts.keys.pipeline(), "work")
    };
    let entry = Signer::new(ring.clone(), &parts.keys, "web")
        .sign(&mut env)
        .unwrap();
    (plan, parts, mem, reply_stream, entry, ring)
}

/// Answers waiting in `reply_stream`.
async fn answers(mem: &MemoryStreams, reply_stream: &str) -> usize {
    mem.recv(reply_stream, 10, Duration::ZERO)
        .await
        .unwrap()
        .len()
}

/// The first answers to arrive in `reply_stream`, waiting up to 2 s.
async fn first_answers(
    mem: &MemoryStreams,
    reply_stream: &str,
) -> Vec<(String, sluice_platform::StreamEntry)> {
    for _ in 0..200 {
        let got = mem.recv(reply_stream, 10, Duration::ZERO).await.unwrap();
        if !got.is_empty() {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    vec![]
}

/// The builtin nodes of group `work`.
fn executor_of(plan: &Arc<sluice_crds::Plan>, parts: &RuntimeParts) -> Executor {
    Executor::build(
        plan.clone(),
        "work",
        &Registry::builtin(),
        std::path::Path::new("/nonexistent"),
        parts.durations.clone(),
    )
    .unwrap()
}

fn worker_on(
    plan: &Arc<sluice_crds::Plan>,
    parts: &RuntimeParts,
    queue: Arc<StagedQueue>,
) -> Arc<Worker> {
    let executor = executor_of(plan, parts);
    let cfg = WorkerConfig {
        lease: Duration::from_millis(100),
        block: Duration::from_millis(20),
        ..WorkerConfig::from_plan(plan, "work", "w1".into())
    };
    Worker::new(cfg, executor, queue, parts)
}

#[tokio::test]
async fn a_reclaimed_entry_this_worker_still_runs_is_not_run_twice() {
    let (plan, parts, mem, reply_stream, entry, _) = rig().await;
    // Running here already: delivered to this worker, still in a node.
    let q = parts.keys.queue("work");
    mem.ensure_group(&q).await.unwrap();
    let id = mem.push(&q, entry.clone()).await.unwrap();
    assert_eq!(
        mem.read(&q, "w1", 1, Duration::ZERO).await.unwrap().len(),
        1
    );
    let queue = Arc::new(StagedQueue::new(mem.clone()));
    *queue.reclaim_next.lock() = Some(Delivery {
        id: id.clone(),
        entry,
        deliveries: 2,
    });
    let worker = worker_on(&plan, &parts, queue.clone());
    worker.held.lock().insert(id.clone(), Instant::now());
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.clone().run(stop.clone()));
    for _ in 0..100 {
        if queue.reclaim_next.lock().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        queue.reclaim_next.lock().is_none(),
        "the reclaim handed it over"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        worker.held.lock().contains_key(&id),
        "the first run still holds it: no second run started and ended"
    );
    worker.held.lock().remove(&id);
    stop.cancel();
    run.await.unwrap();
    assert_eq!(
        answers(&mem, &reply_stream).await,
        0,
        "nothing answered twice"
    );
}

#[tokio::test]
async fn a_redelivery_handed_off_meanwhile_is_not_run_again() {
    let (plan, parts, mem, reply_stream, entry, _) = rig().await;
    // Not pending for anyone: its first worker handed it off after the
    // reclaim read it.
    let queue = Arc::new(StagedQueue::new(mem.clone()));
    *queue.reclaim_next.lock() = Some(Delivery {
        id: "0-99".into(),
        entry,
        deliveries: 2,
    });
    let worker = worker_on(&plan, &parts, queue.clone());
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.clone().run(stop.clone()));
    for _ in 0..100 {
        if queue.reclaims.load(Ordering::SeqCst) > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    run.await.unwrap();
    assert!(
        queue.reclaim_next.lock().is_none(),
        "the reclaim handed it over"
    );
    let metrics = &parts.worker_metrics;
    assert_eq!(metrics.count("work", "replied"), 0, "run again");
    assert_eq!(
        answers(&mem, &reply_stream).await,
        0,
        "a second answer was sent"
    );
}

/// A worker busy with its one slot when the pause arrives takes nothing
/// more once the slot frees, and reads again on resume.
#[tokio::test]
async fn a_busy_worker_takes_nothing_more_once_paused() {
    const SLOW: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: slow }
spec:
  interfaces:
    - { name: slow, kind: http, path: /v1/slow, entry: wait, timeout: 10s }
  groups:
    - { name: web, role: ingress }
    - { name: work, role: worker, concurrency: 1 }
  nodes:
    - { name: wait, group: work, uses: builtin/delay, with: { duration: 400ms } }
"#;
    let (_, plan) = sluice_crds::parse_manifest("slow.yaml", SLOW).unwrap();
    let plan = Arc::new(plan);
    let ring = SharedKeyRing::fixed(sluice_platform::KeyRing::ephemeral());
    let mut registry = prometheus_client::registry::Registry::default();
    let mut parts = RuntimeParts::new(
        &plan,
        "work",
        ring.clone(),
        Some(MemoryKv::new()),
        &mut registry,
    );
    let flags = MemoryKv::new();
    let stop = CancellationToken::new();
    let poll = Duration::from_millis(20);
    parts.pause = Pause::watch(flags.clone(), parts.keys.paused(), poll, stop.clone());
    let mem = MemoryStreams::new();
    let reply_stream = parts.keys.reply("ingress-1");
    mem.open(&reply_stream, Duration::from_secs(60))
        .await
        .unwrap();
    let q = parts.keys.queue("work");
    mem.ensure_group(&q).await.unwrap();
    let signer = Signer::new(ring, &parts.keys, "web");
    for cid in ["c-1", "c-2"] {
        let mut env = Envelope {
            cid: cid.into(),
            deadline: now_ms() + 30_000,
            node: Some("wait".into()),
            reply_to: Some("ingress-1".into()),
            ..sluice_platform::conformance::request(parts.keys.pipeline(), "work")
        };
        mem.push(&q, signer.sign(&mut env).unwrap()).await.unwrap();
    }
    let executor = executor_of(&plan, &parts);
    let cfg = WorkerConfig {
        block: Duration::from_millis(20),
        ..WorkerConfig::from_plan(&plan, "work", "w1".into())
    };
    let worker = Worker::new(cfg, executor, mem.clone(), &parts);
    let run = tokio::spawn(worker.clone().run(stop.clone()));
    // Busy with the first entry, then paused.
    for _ in 0..100 {
        if !worker.held.lock().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(worker.held.lock().len(), 1, "the first entry is running");
    flags
        .set_nx(&parts.keys.paused(), "1", Duration::from_secs(60))
        .await
        .unwrap();
    tokio::time::sleep(poll * 5).await;
    assert!(parts.pause.is_paused());
    // Long after the first is done, the second still waits.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let mut got = mem
        .recv(&reply_stream, 10, Duration::ZERO)
        .await
        .unwrap()
        .len();
    assert_eq!(got, 1, "the held entry is finished, no other is taken");
    assert!(worker.held.lock().is_empty());

    flags.delete(&parts.keys.paused()).await.unwrap();
    for _ in 0..100 {
        got += mem
            .recv(&reply_stream, 10, Duration::ZERO)
            .await
            .unwrap()
            .len();
        if got == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, 2, "read again once resumed");
    stop.cancel();
    run.await.unwrap();
}

/// A request, unsigned, for `shout`: a node of another generation of the
/// graph, not in this worker's plan, sent by graph `generation`.
fn request_for_shout(parts: &RuntimeParts, cid: &str, generation: String) -> Envelope {
    Envelope {
        cid: cid.into(),
        deadline: now_ms() + 30_000,
        node: Some("shout".into()),
        plan: Some(generation),
        reply_to: Some("ingress-1".into()),
        ..sluice_platform::conformance::request(parts.keys.pipeline(), "work")
    }
}

/// A request for a node this worker does not run: handed back uncounted when
/// another generation of the graph sent it (a spec change rolling out),
/// refused when this generation did (sent to the wrong group).
#[tokio::test]
async fn a_request_for_a_node_not_run_here_is_handed_back_only_from_another_generation() {
    let (plan, parts, mem, reply_stream, _, ring) = rig().await;
    let q = parts.keys.queue("work");
    mem.ensure_group(&q).await.unwrap();
    // An ingress's signer, stamping no generation of its own.
    let signer = Signer::new(ring, &parts.keys, "web");
    let request = |cid: &str, generation: String| {
        let mut env = Envelope {
            payload: json!({"name": "x"}),
            ..request_for_shout(&parts, cid, generation)
        };
        signer.sign(&mut env).unwrap()
    };
    let newer = mem
        .push(&q, request("c-newer", "0123456789abcdef".into()))
        .await
        .unwrap();
    let executor = executor_of(&plan, &parts);
    let lease = Duration::from_millis(100);
    let cfg = WorkerConfig {
        lease,
        block: Duration::from_millis(20),
        ..WorkerConfig::from_plan(&plan, "work", "w1".into())
    };
    let worker = Worker::new(cfg, executor, mem.clone(), &parts);
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.clone().run(stop.clone()));
    // Read, handed back, reclaimed by this worker and handed back again.
    let handed_back = || parts.worker_metrics.count("work", "handed_back");
    for _ in 0..200 {
        if handed_back() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(handed_back() >= 3, "handed back {} times", handed_back());
    assert_eq!(answers(&mem, &reply_stream).await, 0, "nobody was answered");

    // The same node asked by this generation is a request sent to the
    // wrong group: refused, its caller answered with the error.
    mem.push(&q, request("c-same", plan.generation()))
        .await
        .unwrap();
    let got = first_answers(&mem, &reply_stream).await;
    stop.cancel();
    run.await.unwrap();
    assert_eq!(got.len(), 1, "the same generation's misroute is answered");
    let reply = sluice_platform::codec::decode(&got[0].1.v, &got[0].1.m).unwrap();
    assert_eq!(reply.cid, "c-same");
    let err = reply.error.expect("an error reply");
    assert_eq!(err.code, "node_failed");
    assert!(
        err.message.contains("does not run on group"),
        "{}",
        err.message
    );

    // The other generation's request waits as a new entry, never counted,
    // its nonce unclaimed, its note saying since when it is handed back: a
    // worker of its generation takes it as new.
    assert_eq!(mem.pending(&q).await.unwrap(), 0);
    let taken = mem
        .read(&q, "next-generation", 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_ne!(taken[0].id, newer);
    assert_eq!(taken[0].deliveries, 1);
    let note = sluice_platform::HandBackNote::decode(&taken[0].entry.note).expect("a note");
    assert!(note.times >= 3, "{note:?}");
    let at = sluice_platform::At {
        stream: &q,
        id: &taken[0].id,
        deliveries: 1,
    };
    let env = parts
        .verifier
        .verify_request(&taken[0].entry, &at, "work")
        .await
        .expect("its first claim of the nonce");
    assert_eq!(env.cid, "c-newer");
}

/// A request handed back for longer than the patience (its generation is
/// gone, or never was) is refused and its caller answered.
#[tokio::test]
async fn a_request_no_worker_of_its_generation_takes_is_refused_in_the_end() {
    let (plan, parts, mem, reply_stream, _, ring) = rig().await;
    let q = parts.keys.queue("work");
    mem.ensure_group(&q).await.unwrap();
    let mut env = request_for_shout(&parts, "c-orphan", "0123456789abcdef".into());
    let mut entry = Signer::new(ring, &parts.keys, "web")
        .sign(&mut env)
        .unwrap();
    let long_ago = now_ms() - HAND_BACK_PATIENCE.as_millis() as u64 - 1_000;
    entry.note = sluice_platform::HandBackNote {
        since: long_ago,
        times: 4_000,
    }
    .encode()
    .into();
    mem.push(&q, entry).await.unwrap();
    let worker = Worker::new(
        WorkerConfig {
            lease: Duration::from_millis(100),
            block: Duration::from_millis(20),
            ..WorkerConfig::from_plan(&plan, "work", "w1".into())
        },
        executor_of(&plan, &parts),
        mem.clone(),
        &parts,
    );
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.clone().run(stop.clone()));
    let got = first_answers(&mem, &reply_stream).await;
    stop.cancel();
    run.await.unwrap();
    assert_eq!(got.len(), 1);
    let err = sluice_platform::codec::decode(&got[0].1.v, &got[0].1.m)
        .unwrap()
        .error
        .expect("an error reply");
    assert_eq!(err.code, "node_failed");
    assert!(
        err.message.contains("no worker of the graph that sent it"),
        "{}",
        err.message
    );
    assert_eq!(parts.worker_metrics.count("work", "handed_back"), 0);
    assert_eq!(mem.depth(&q).await.unwrap().entries, 0, "acknowledged");
}

/// Runs a worker of group `work` on `mem` until one of `outcomes` is
/// counted (3 s at most), then stops it; every commit of its hand-offs and
/// hand-backs Redis applies only in part (a command failing inside
/// `EXEC`), writes to `broken` refused.
async fn run_applied_in_part(
    plan: &Arc<sluice_crds::Plan>,
    parts: &RuntimeParts,
    mem: &Arc<MemoryStreams>,
    broken: Option<String>,
    outcomes: &[&str],
) {
    let queue = Arc::new(StagedQueue {
        applied_then: Some(BackendError::PartlyApplied("WRONGTYPE".into())),
        broken_stream: broken,
        ..StagedQueue::new(mem.clone())
    });
    let worker = worker_on(plan, parts, queue);
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.clone().run(stop.clone()));
    let counted = || {
        outcomes
            .iter()
            .map(|o| parts.worker_metrics.count("work", o))
            .sum::<u64>()
    };
    for _ in 0..300 {
        if counted() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    run.await.unwrap();
}

/// A request of another generation handed back by a worker whose
/// hand-backs Redis applies only in part (acknowledged and deleted, then a
/// command failing inside `EXEC`), the queue itself refusing writes when
/// `broken`: (the queue's entries, the dead letters, the entries counted
/// `handed_back`, those counted `hand_off_failed`, the answers).
async fn handed_back_in_part(broken: bool) -> (u64, u64, u64, u64, usize) {
    let (plan, parts, mem, reply_stream, _, ring) = rig().await;
    let q = parts.keys.queue("work");
    mem.ensure_group(&q).await.unwrap();
    let mut env = Envelope {
        payload: json!({"name": "x"}),
        ..request_for_shout(&parts, "c-newer", "0123456789abcdef".into())
    };
    let entry = Signer::new(ring, &parts.keys, "web")
        .sign(&mut env)
        .unwrap();
    mem.push(&q, entry).await.unwrap();
    let broken = broken.then(|| q.clone());
    let outcomes = ["handed_back", "hand_off_failed"];
    run_applied_in_part(&plan, &parts, &mem, broken, &outcomes).await;
    let metrics = &parts.worker_metrics;
    (
        mem.depth(&q).await.unwrap().entries,
        mem.depth(&parts.keys.dead_letter()).await.unwrap().entries,
        metrics.count("work", "handed_back"),
        metrics.count("work", "hand_off_failed"),
        answers(&mem, &reply_stream).await,
    )
}

#[tokio::test]
async fn a_hand_back_applied_in_part_writes_its_copy_again() {
    let (queued, letters, handed_back, failed, answered) = handed_back_in_part(false).await;
    assert!(handed_back >= 1, "counted handed back");
    // The copy the transaction wrote and the one sent again (the next
    // worker to read the second drops it: the same nonce); each later
    // hand-back of a copy adds one more the same way.
    assert!(queued >= 2, "{queued} entries queued");
    assert_eq!((letters, failed, answered), (0, 0, 0));
}

#[tokio::test]
async fn a_hand_back_applied_in_part_whose_copy_cannot_be_written_is_dead_lettered() {
    let (queued, letters, handed_back, failed, answered) = handed_back_in_part(true).await;
    // Acknowledged and deleted, its copy refused three times: the dead
    // letter is all that holds the request, and nothing is lost.
    assert_eq!(queued, 0, "nothing left in the queue");
    assert_eq!(letters, 1, "kept as a dead letter");
    assert_eq!((handed_back, failed, answered), (0, 1, 0));
}

/// The hello pipeline's request handled by a worker whose every hand-off
/// Redis applies only in part, the reply stream refusing writes when
/// `broken`: (the answers in the reply stream, the dead letters, the
/// entries counted `replied`, those counted `hand_off_failed`).
async fn applied_in_part(broken: bool) -> (Vec<sluice_platform::StreamEntry>, u64, u64, u64) {
    let (plan, parts, mem, reply_stream, entry, _) = rig().await;
    let q = parts.keys.queue("work");
    mem.ensure_group(&q).await.unwrap();
    mem.push(&q, entry).await.unwrap();
    let broken = broken.then(|| reply_stream.clone());
    let outcomes = ["replied", "hand_off_failed"];
    run_applied_in_part(&plan, &parts, &mem, broken, &outcomes).await;
    let metrics = &parts.worker_metrics;
    let letters = mem.depth(&parts.keys.dead_letter()).await.unwrap().entries;
    let answers = mem.recv(&reply_stream, 10, Duration::ZERO).await.unwrap();
    (
        answers.into_iter().map(|(_, e)| e).collect(),
        letters,
        metrics.count("work", "replied"),
        metrics.count("work", "hand_off_failed"),
    )
}

#[tokio::test]
async fn a_hand_off_applied_in_part_sends_its_reply_again() {
    let (answered, letters, replied, failed) = applied_in_part(false).await;
    // Applied by the transaction and sent again: the same signed entry
    // twice, of which the ingress takes the first and drops the copy.
    assert_eq!(answered.len(), 2, "the reply, sent again on its own");
    assert_eq!(answered[0], answered[1], "a copy, the same nonce and MAC");
    assert_eq!((letters, replied, failed), (0, 1, 0));
}

#[tokio::test]
async fn a_hand_off_applied_in_part_whose_reply_cannot_be_sent_is_dead_lettered() {
    let (answered, letters, replied, failed) = applied_in_part(true).await;
    // The transaction could not write the reply stream either.
    assert!(answered.is_empty());
    assert_eq!(letters, 1, "kept: acknowledged, it is in no queue");
    assert_eq!((replied, failed), (0, 1));
}
