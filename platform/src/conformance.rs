//! Conformance suites, one per port, written once and run against every
//! adapter (memory here, Redis in its own tests).
//!
//! Each suite takes a constructor so every case starts from a fresh adapter
//! (or a fresh key namespace of a shared one). Panics describe the broken
//! promise. Timing cases use real, short durations because a Redis server
//! cannot follow a paused test clock.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::envelope::{Envelope, Kind, StreamEntry};
use crate::kv::Kv;
use crate::queue::{Completion, Delivery, Forward, Held, Queue, ReplyChannel};

/// A recognisable entry; `n` goes into `m`.
pub fn entry(n: usize) -> StreamEntry {
    StreamEntry {
        v: Bytes::from_static(b"1"),
        k: Bytes::from_static(b"kid"),
        m: format!("message-{n}").into(),
        s: Bytes::from_static(b"sig"),
        note: Bytes::new(),
    }
}

/// An unsigned request of `pipeline` for `dest`, due in ten seconds.
pub fn request(pipeline: &str, dest: &str) -> Envelope {
    Envelope {
        kind: Kind::Request,
        pipeline: pipeline.into(),
        dest: dest.into(),
        cid: "c-1".into(),
        rid: "r-1".into(),
        trace: None,
        ts: 0,
        nonce: String::new(),
        deadline: crate::clock::now_ms() + 10_000,
        attempt: 1,
        node: Some("n".into()),
        plan: None,
        reply_to: Some("ing-1".into()),
        live: None,
        seq: None,
        last_seq: None,
        payload: serde_json::json!({"hello": "world"}),
        error: None,
    }
}

const NO_WAIT: Duration = Duration::from_millis(10);

/// Runs every `Queue` case. `make` returns an adapter and a stream-name
/// prefix unique to the case.
pub async fn queue_suite<Q, F, Fut>(make: F)
where
    Q: Queue + ?Sized,
    F: Fn() -> Fut,
    Fut: Future<Output = (Arc<Q>, String)>,
{
    let (q, p) = make().await;
    push_then_read_delivers_in_order_once(&*q, &p).await;
    let (q, p) = make().await;
    read_never_returns_more_than_max(&*q, &p).await;
    let (q, p) = make().await;
    complete_forwards_acks_and_deletes(&*q, &p).await;
    let (q, p) = make().await;
    complete_all_hands_off_a_batch_with_one_answer_each(&*q, &p).await;
    let (q, p) = make().await;
    lapsed_lease_is_reclaimed_with_a_higher_count(&*q, &p).await;
    let (q, p) = make().await;
    renewed_lease_is_not_reclaimed(&*q, &p).await;
    let (q, p) = make().await;
    renewal_leaves_a_reclaimed_entry_with_its_new_owner(&*q, &p).await;
    let (q, p) = make().await;
    blocking_read_wakes_on_push(q, &p).await;
    let (q, p) = make().await;
    ensure_group_is_idempotent_and_depth_counts_bytes(&*q, &p).await;
    let (q, p) = make().await;
    capped_push_keeps_only_the_newest_entries(&*q, &p).await;
    let (q, p) = make().await;
    a_handed_back_entry_is_reclaimed_at_once_uncounted(&*q, &p).await;
    let (q, p) = make().await;
    delete_removes_exactly_the_ids_given(&*q, &p).await;
}

async fn delete_removes_exactly_the_ids_given<Q: Queue + ?Sized>(q: &Q, p: &str) {
    let s = format!("{p}:dlq");
    let mut ids = vec![];
    for i in 0..4 {
        ids.push(q.push_capped(&s, entry(i), 100).await.unwrap());
    }
    let gone = vec![ids[1].clone(), ids[3].clone(), "1-1".to_string()];
    assert_eq!(q.delete(&s, &gone).await.unwrap(), 2, "two of them existed");
    assert_eq!(q.delete(&s, &[]).await.unwrap(), 0);
    assert_eq!(q.delete(&format!("{p}:none"), &gone).await.unwrap(), 0);
    assert_eq!(q.depth(&s).await.unwrap().entries, 2);
}

async fn a_handed_back_entry_is_reclaimed_at_once_uncounted<Q: Queue + ?Sized>(q: &Q, p: &str) {
    let s = format!("{p}:q:hand-back");
    let lease = Duration::from_secs(60);
    q.ensure_group(&s).await.unwrap();
    q.push(&s, entry(0)).await.unwrap();
    let first = q.read(&s, "old", 1, NO_WAIT).await.unwrap();
    assert_eq!(first.len(), 1);
    // A first delivery goes back as a new entry, with what it is given.
    let noted = StreamEntry {
        note: Bytes::from_static(b"handed back"),
        ..entry(0)
    };
    assert!(
        q.hand_back(&s, "old", &first[0], &noted, Instant::now(), lease)
            .await
            .unwrap(),
        "a first delivery is handed back"
    );
    assert_eq!(q.pending(&s).await.unwrap(), 0, "the read entry is gone");
    assert_eq!(q.depth(&s).await.unwrap().entries, 1);
    let again = q.read(&s, "new", 10, NO_WAIT).await.unwrap();
    assert_eq!(again.len(), 1, "read again like any new entry");
    assert_ne!(again[0].id, first[0].id);
    assert_eq!((&again[0].entry, again[0].deliveries), (&noted, 1));

    // A redelivery keeps its id and count and is reclaimed at once by
    // anyone, whatever their lease.
    let redelivered = q.reclaim(&s, "third", Duration::ZERO, 10).await.unwrap();
    assert_eq!(redelivered.len(), 1);
    assert_eq!(redelivered[0].deliveries, 2);
    assert!(q
        .hand_back(&s, "third", &redelivered[0], &noted, Instant::now(), lease)
        .await
        .unwrap());
    let got = q
        .reclaim(&s, "fourth", Duration::from_secs(3600), 10)
        .await
        .unwrap();
    assert_eq!(
        got.len(),
        1,
        "a handed-back redelivery is reclaimed at once"
    );
    assert_eq!(
        (got[0].id.as_str(), got[0].deliveries),
        (again[0].id.as_str(), 2),
        "the same entry, the delivery handed back not counted"
    );

    // A consumer that may no longer hold it (read over half a lease ago)
    // gives nothing back.
    let stale = Instant::now()
        .checked_sub(Duration::from_millis(200))
        .unwrap_or_else(Instant::now);
    assert!(!q
        .hand_back(
            &s,
            "fourth",
            &got[0],
            &noted,
            stale,
            Duration::from_millis(300)
        )
        .await
        .unwrap());
    // A completed entry is not pending: nothing to hand back.
    q.complete(&s, &got[0].id, None).await.unwrap();
    assert!(!q
        .hand_back(&s, "fourth", &got[0], &noted, Instant::now(), lease)
        .await
        .unwrap());
    assert_eq!(q.pending(&s).await.unwrap(), 0);
    assert_eq!(q.depth(&s).await.unwrap().entries, 0);
}

async fn capped_push_keeps_only_the_newest_entries<Q: Queue + ?Sized>(q: &Q, p: &str) {
    let s = format!("{p}:dlq");
    for i in 0..5 {
        q.push_capped(&s, entry(i), 3).await.unwrap();
    }
    assert_eq!(
        q.depth(&s).await.unwrap().entries,
        3,
        "a capped stream keeps max_len entries"
    );
    q.ensure_group(&s).await.unwrap();
    let kept: Vec<_> = q
        .read(&s, "c", 10, NO_WAIT)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.entry)
        .collect();
    assert_eq!(
        kept,
        vec![entry(2), entry(3), entry(4)],
        "the oldest entries are trimmed"
    );
}

async fn push_then_read_delivers_in_order_once<Q: Queue + ?Sized>(q: &Q, p: &str) {
    let s = format!("{p}:q:order");
    q.ensure_group(&s).await.unwrap();
    for i in 0..3 {
        q.push(&s, entry(i)).await.unwrap();
    }
    let got = q.read(&s, "c1", 10, NO_WAIT).await.unwrap();
    let ms: Vec<_> = got.iter().map(|d| d.entry.clone()).collect();
    assert_eq!(
        ms,
        vec![entry(0), entry(1), entry(2)],
        "entries come back in push order"
    );
    assert!(
        got.iter().all(|d| d.deliveries == 1),
        "first delivery counts 1"
    );
    let again = q.read(&s, "c2", 10, NO_WAIT).await.unwrap();
    assert!(
        again.is_empty(),
        "a read entry is not handed to another consumer as new"
    );
    assert_eq!(q.pending(&s).await.unwrap(), 3, "read entries are pending");
}

async fn read_never_returns_more_than_max<Q: Queue + ?Sized>(q: &Q, p: &str) {
    let s = format!("{p}:q:max");
    q.ensure_group(&s).await.unwrap();
    for i in 0..5 {
        q.push(&s, entry(i)).await.unwrap();
    }
    assert_eq!(q.read(&s, "c", 2, NO_WAIT).await.unwrap().len(), 2);
    assert_eq!(
        q.read(&s, "c", 0, NO_WAIT).await.unwrap().len(),
        0,
        "max 0 reads nothing"
    );
    assert_eq!(q.read(&s, "c", 10, NO_WAIT).await.unwrap().len(), 3);
}

async fn complete_forwards_acks_and_deletes<Q: Queue + ?Sized>(q: &Q, p: &str) {
    let a = format!("{p}:q:a");
    let b = format!("{p}:q:b");
    q.ensure_group(&a).await.unwrap();
    q.ensure_group(&b).await.unwrap();
    q.push(&a, entry(1)).await.unwrap();
    let d = q.read(&a, "c", 1, NO_WAIT).await.unwrap().remove(0);
    let fwd = Forward {
        stream: b.clone(),
        entry: entry(2),
        must_exist: false,
        copy_to: None,
    };
    assert!(q.complete(&a, &d.id, Some(fwd)).await.unwrap());
    assert_eq!(
        q.depth(&a).await.unwrap().entries,
        0,
        "completed entry is deleted"
    );
    assert_eq!(
        q.pending(&a).await.unwrap(),
        0,
        "completed entry is acknowledged"
    );
    let next = q.read(&b, "c", 10, NO_WAIT).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].entry, entry(2), "forwarded entry arrives");

    // A must-exist forward to a missing stream is dropped; the source still completes.
    q.push(&a, entry(3)).await.unwrap();
    let d = q.read(&a, "c", 1, NO_WAIT).await.unwrap().remove(0);
    let gone = Forward {
        stream: format!("{p}:r:nobody"),
        entry: entry(4),
        must_exist: true,
        copy_to: None,
    };
    assert!(
        !q.complete(&a, &d.id, Some(gone)).await.unwrap(),
        "forward to a missing stream reports false"
    );
    assert_eq!(q.depth(&a).await.unwrap().entries, 0);
    assert_eq!(
        q.depth(&format!("{p}:r:nobody")).await.unwrap().entries,
        0,
        "must-exist never creates the stream"
    );
}

async fn complete_all_hands_off_a_batch_with_one_answer_each<Q: Queue + ?Sized>(q: &Q, p: &str) {
    let a = format!("{p}:q:a");
    let b = format!("{p}:q:b");
    let gone = format!("{p}:r:nobody");
    q.ensure_group(&a).await.unwrap();
    q.ensure_group(&b).await.unwrap();
    for i in 0..4 {
        q.push(&a, entry(i)).await.unwrap();
    }
    let ds = q.read(&a, "c", 4, NO_WAIT).await.unwrap();
    assert_eq!(ds.len(), 4);
    let to = |stream: &str, n, must_exist| {
        Some(Forward {
            stream: stream.to_string(),
            entry: entry(n),
            must_exist,
            copy_to: None,
        })
    };
    let done: Vec<Completion> = [
        to(&b, 10, false),
        None,
        to(&gone, 12, true),
        to(&b, 13, false),
    ]
    .into_iter()
    .zip(&ds)
    .map(|(forward, d)| Completion {
        id: d.id.clone(),
        forward,
    })
    .collect();
    assert_eq!(
        q.complete_all(&a, &done).await.unwrap(),
        vec![true, true, false, true],
        "one answer per hand-off, in order; false for the missing must-exist stream"
    );
    assert_eq!(q.complete_all(&a, &[]).await.unwrap(), Vec::<bool>::new());
    assert_eq!(q.depth(&a).await.unwrap().entries, 0, "all deleted");
    assert_eq!(q.pending(&a).await.unwrap(), 0, "all acknowledged");
    let next = q.read(&b, "c", 10, NO_WAIT).await.unwrap();
    let got: Vec<_> = next.iter().map(|d| d.entry.clone()).collect();
    assert_eq!(got, vec![entry(10), entry(13)], "forwards arrive in order");
    assert_eq!(
        q.depth(&gone).await.unwrap().entries,
        0,
        "must-exist never creates the stream"
    );
}

async fn lapsed_lease_is_reclaimed_with_a_higher_count<Q: Queue + ?Sized>(q: &Q, p: &str) {
    let s = format!("{p}:q:reclaim");
    q.ensure_group(&s).await.unwrap();
    q.push(&s, entry(7)).await.unwrap();
    let first = q.read(&s, "dead", 1, NO_WAIT).await.unwrap().remove(0);
    assert!(
        q.reclaim(&s, "alive", Duration::from_millis(300), 10)
            .await
            .unwrap()
            .is_empty(),
        "a fresh lease is not reclaimed"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let got = q
        .reclaim(&s, "alive", Duration::from_millis(300), 10)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "a lapsed lease is reclaimed");
    assert_eq!(got[0].id, first.id);
    assert_eq!(got[0].entry, entry(7));
    assert_eq!(got[0].deliveries, 2, "reclaim increases the delivery count");
}

/// The lease of the renewal tests: reclaims below wait 100 ms or more.
const LEASE: Duration = Duration::from_millis(100);

/// What a consumer holds right after `deliveries` arrived.
fn held_since(deliveries: &[Delivery], since: Instant) -> Vec<Held> {
    deliveries
        .iter()
        .map(|d| Held {
            id: d.id.clone(),
            since,
        })
        .collect()
}

async fn renewed_lease_is_not_reclaimed<Q: Queue + ?Sized>(q: &Q, p: &str) {
    let s = format!("{p}:q:renew");
    q.ensure_group(&s).await.unwrap();
    q.push(&s, entry(1)).await.unwrap();
    let d = q.read(&s, "busy", 1, NO_WAIT).await.unwrap();
    let mut held = held_since(&d, Instant::now());
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lost = q.renew(&s, "busy", &held, LEASE).await.unwrap();
        assert!(lost.is_empty(), "its own entry is renewed: {lost:?}");
        held[0].since = Instant::now();
    }
    let got = q
        .reclaim(&s, "thief", Duration::from_millis(250), 10)
        .await
        .unwrap();
    assert!(
        got.is_empty(),
        "a renewed lease (400ms total, renewed every 100ms) is not reclaimed at 250ms idle"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = q
        .reclaim(&s, "thief", Duration::from_millis(250), 10)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].deliveries, 2, "renewals do not count as deliveries");
}

async fn renewal_leaves_a_reclaimed_entry_with_its_new_owner<Q: Queue + ?Sized>(q: &Q, p: &str) {
    let s = format!("{p}:q:steal");
    q.ensure_group(&s).await.unwrap();
    for i in 1..=3 {
        q.push(&s, entry(i)).await.unwrap();
    }
    let slow = q.read(&s, "slow", 3, NO_WAIT).await.unwrap();
    let mut held = held_since(&slow, Instant::now());
    // The slow consumer misses its lease on all three; another takes over
    // two, and renews neither for a while.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let taken = q
        .reclaim(&s, "fast", Duration::from_millis(100), 2)
        .await
        .unwrap();
    assert_eq!(taken.len(), 2);
    let fast = held_since(&taken, Instant::now());
    // The slow one renews late, once right away and once after the new
    // owner left its entries idle for longer than the lease: it keeps what
    // is still its own and never gets back what it lost.
    let mut taken_ids: Vec<String> = taken.iter().map(|d| d.id.clone()).collect();
    taken_ids.sort();
    for pause in [0, 200] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let mut lost = q.renew(&s, "slow", &held, LEASE).await.unwrap();
        lost.sort();
        assert_eq!(
            lost, taken_ids,
            "after {pause}ms: the reclaimed entries are reported lost"
        );
        let renewed = Instant::now();
        for h in held.iter_mut().filter(|h| !lost.contains(&h.id)) {
            h.since = renewed;
        }
    }
    let still = q.renew(&s, "fast", &fast, LEASE).await.unwrap();
    assert!(
        still.is_empty(),
        "a late renewal took an entry back: {still:?}"
    );
    let mine = q
        .reclaim(&s, "third", Duration::from_millis(150), 10)
        .await
        .unwrap();
    assert!(
        mine.is_empty(),
        "every lease was renewed just now: {mine:?}"
    );
}

async fn blocking_read_wakes_on_push<Q: Queue + ?Sized>(q: Arc<Q>, p: &str) {
    let s = format!("{p}:q:block");
    q.ensure_group(&s).await.unwrap();
    let reader = {
        let q = q.clone();
        let s = s.clone();
        tokio::spawn(async move { q.read(&s, "c", 1, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = std::time::Instant::now();
    q.push(&s, entry(9)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), reader)
        .await
        .expect("a blocked read returns soon after a push")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(start.elapsed() < Duration::from_secs(3));
}

async fn ensure_group_is_idempotent_and_depth_counts_bytes<Q: Queue + ?Sized>(q: &Q, p: &str) {
    let s = format!("{p}:q:depth");
    q.ensure_group(&s).await.unwrap();
    q.ensure_group(&s).await.unwrap();
    assert_eq!(q.depth(&s).await.unwrap().entries, 0);
    q.push(&s, entry(1)).await.unwrap();
    q.push(&s, entry(2)).await.unwrap();
    let d = q.depth(&s).await.unwrap();
    assert_eq!(d.entries, 2);
    assert!(
        d.bytes >= 2 * entry(1).stored_len() as u64,
        "depth counts at least the stored bytes"
    );
}

/// Runs every `ReplyChannel` case. `make` returns the adapter as both ports
/// (writers complete into reply streams through the queue) and a prefix.
pub async fn reply_suite<A, F, Fut>(make: F)
where
    A: Queue + ReplyChannel + ?Sized,
    F: Fn() -> Fut,
    Fut: Future<Output = (Arc<A>, String)>,
{
    let (a, p) = make().await;
    let r = format!("{p}:r:ing1");
    let q = format!("{p}:q:w");
    a.open(&r, Duration::from_secs(30)).await.unwrap();
    a.ensure_group(&q).await.unwrap();
    for i in 0..3 {
        a.push(&q, entry(i)).await.unwrap();
    }
    for d in Queue::read(&*a, &q, "w", 10, NO_WAIT).await.unwrap() {
        let fwd = Forward {
            stream: r.clone(),
            entry: entry(100 + d.deliveries as usize),
            must_exist: true,
            copy_to: None,
        };
        assert!(
            a.complete(&q, &d.id, Some(fwd)).await.unwrap(),
            "reply to an open stream is delivered"
        );
    }
    let got = a.recv(&r, 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 3, "every reply is received");
    assert!(
        a.recv(&r, 10, NO_WAIT).await.unwrap().is_empty(),
        "a reply is returned once"
    );
    assert!(
        Queue::depth(&*a, &r).await.unwrap().entries <= 3,
        "the reply stream holds nothing but read replies waiting to be trimmed"
    );

    // A stream that is not refreshed expires, and must-exist writes do not recreate it.
    let (a, p) = make().await;
    let r = format!("{p}:r:short");
    let q = format!("{p}:q:w");
    a.open(&r, Duration::from_millis(200)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !reply_through(&*a, &q, &r, 2).await,
        "an expired reply stream is not recreated"
    );
    assert!(a.recv(&r, 10, NO_WAIT).await.unwrap().is_empty());

    // Close removes the stream.
    let (a, p) = make().await;
    let r = format!("{p}:r:closed");
    a.open(&r, Duration::from_secs(30)).await.unwrap();
    a.close(&r).await.unwrap();
    let q = format!("{p}:q:w");
    assert!(
        !reply_through(&*a, &q, &r, 2).await,
        "a closed stream is not recreated"
    );

    // Peek: absent, open and empty, then what was written, left in place;
    // gone once expired.
    let (a, p) = make().await;
    let r = format!("{p}:r:async:abc");
    assert_eq!(a.peek(&r, 4).await.unwrap(), None, "never opened");
    a.open(&r, Duration::from_millis(600)).await.unwrap();
    assert_eq!(
        a.peek(&r, 4).await.unwrap(),
        Some(vec![]),
        "open, nothing yet"
    );
    let q = format!("{p}:q:w");
    assert!(reply_through(&*a, &q, &r, 7).await);
    for _ in 0..2 {
        assert_eq!(
            a.peek(&r, 4).await.unwrap(),
            Some(vec![entry(7)]),
            "peek leaves the entry"
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.peek(&r, 4).await.unwrap(), None, "expired");

    let (a, p) = make().await;
    streamed_answers_reach_their_store_and_their_follower(&*a, &p).await;
}

/// A streamed answer: chunks are appended to the store and the following
/// ingress's stream, only where they exist; the answer's hand-off copies
/// it to the follower; the store is paged through by id.
async fn streamed_answers_reach_their_store_and_their_follower<A>(a: &A, p: &str)
where
    A: Queue + ReplyChannel + ?Sized,
{
    let store = format!("{p}:r:async:s1");
    let live = format!("{p}:r:ing-live");
    let gone = format!("{p}:r:ing-gone");
    a.open(&store, Duration::from_secs(30)).await.unwrap();
    a.open(&live, Duration::from_secs(30)).await.unwrap();
    assert_eq!(a.append(&[&store, &live], &entry(1)).await.unwrap(), 2);
    assert_eq!(
        a.append(&[&store, &gone], &entry(2)).await.unwrap(),
        1,
        "a stream that does not exist is not created"
    );
    assert_eq!(a.append(&[], &entry(3)).await.unwrap(), 0);
    assert!(a.peek(&gone, 4).await.unwrap().is_none());
    let q = format!("{p}:q:w");
    a.ensure_group(&q).await.unwrap();
    a.push(&q, entry(9)).await.unwrap();
    let d = Queue::read(a, &q, "w", 1, NO_WAIT).await.unwrap().remove(0);
    let fwd = Forward {
        stream: store.clone(),
        entry: entry(4),
        must_exist: true,
        copy_to: Some(live.clone()),
    };
    assert!(a.complete(&q, &d.id, Some(fwd)).await.unwrap());
    let followed: Vec<_> = a
        .recv(&live, 10, Duration::from_secs(1))
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(followed, vec![entry(1), entry(4)]);
    // Paging: two at a time, each page after the last id of the one before.
    let first = a.read_after(&store, None, 2).await.unwrap().unwrap();
    assert_eq!(
        first.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        vec![entry(1), entry(2)]
    );
    let rest = a
        .read_after(&store, Some(&first[1].0), 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].1, entry(4));
    assert_eq!(
        a.read_after(&store, Some(&rest[0].0), 2).await.unwrap(),
        Some(vec![]),
        "nothing after the last"
    );
    assert_eq!(
        a.last_id(&store).await.unwrap().as_deref(),
        Some(rest[0].0.as_str()),
        "the newest entry's id"
    );
    assert_eq!(a.last_id(&gone).await.unwrap(), None, "no stream, no id");
    // A hand-off to a store that is gone is dropped, copy or not.
    a.push(&q, entry(9)).await.unwrap();
    let d = Queue::read(a, &q, "w", 1, NO_WAIT).await.unwrap().remove(0);
    let fwd = Forward {
        stream: gone.clone(),
        entry: entry(5),
        must_exist: true,
        copy_to: Some(live.clone()),
    };
    assert!(!a.complete(&q, &d.id, Some(fwd)).await.unwrap());
}

/// Pushes `entry(1)` to `q`, reads it, and completes it forwarding
/// `entry(reply)` to reply stream `r` (must exist); whether it was
/// forwarded.
async fn reply_through<A: Queue + ?Sized>(a: &A, q: &str, r: &str, reply: usize) -> bool {
    a.ensure_group(q).await.unwrap();
    a.push(q, entry(1)).await.unwrap();
    let d = Queue::read(a, q, "w", 1, NO_WAIT).await.unwrap().remove(0);
    let fwd = Forward {
        stream: r.to_string(),
        entry: entry(reply),
        must_exist: true,
        copy_to: None,
    };
    a.complete(q, &d.id, Some(fwd)).await.unwrap()
}

/// Runs every `Kv` case; `make` returns an adapter and a key prefix.
pub async fn kv_suite<K, F, Fut>(make: F)
where
    K: Kv + ?Sized,
    F: Fn() -> Fut,
    Fut: Future<Output = (Arc<K>, String)>,
{
    let (kv, p) = make().await;
    let k = format!("{p}:n:a");
    assert_eq!(
        kv.set_nx(&k, "1-0", Duration::from_secs(10)).await.unwrap(),
        None,
        "first set wins"
    );
    assert_eq!(
        kv.set_nx(&k, "2-0", Duration::from_secs(10))
            .await
            .unwrap()
            .as_deref(),
        Some("1-0"),
        "second set returns the existing value"
    );
    assert_eq!(
        kv.get(&k).await.unwrap().as_deref(),
        Some("1-0"),
        "value unchanged by a losing set"
    );
    assert!(kv.delete(&k).await.unwrap());
    assert!(
        !kv.delete(&k).await.unwrap(),
        "deleting twice reports absence"
    );
    assert_eq!(kv.get(&k).await.unwrap(), None);

    let (kv, p) = make().await;
    let k = format!("{p}:n:ttl");
    kv.set_nx(&k, "x", Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(kv.get(&k).await.unwrap().as_deref(), Some("x"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        kv.get(&k).await.unwrap(),
        None,
        "a key expires after its TTL"
    );
    assert_eq!(
        kv.set_nx(&k, "y", Duration::from_secs(1)).await.unwrap(),
        None,
        "an expired key can be set again"
    );
}
