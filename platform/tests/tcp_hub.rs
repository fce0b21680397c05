//! The tcp profile's hub and client over real loopback sockets: every port
//! operation a worker uses, the group's limits, the frame limit, and what
//! happens to held entries when a worker's connection ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_platform::conformance::{entry, request};
use sluice_platform::envelope::{Envelope, StreamEntry};
use sluice_platform::memory::MemoryStreams;
use sluice_platform::metrics::Rejections;
use sluice_platform::signing::{Rejection, Signer};
use sluice_platform::tcp::{Hub, HubConfig, Limits, Nonces, TcpBackend, TcpConfig};
use sluice_platform::{BackendError, Completion, Forward, Held, KeyRing, Keys, Kv, Queue};
use sluice_platform::{ReplyChannel, SharedKeyRing};
use tokio_util::sync::CancellationToken;

const GROUP: &str = "work";

struct Setup {
    keys: Keys,
    streams: Arc<MemoryStreams>,
    guard: Arc<Nonces>,
    ring: KeyRing,
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    connected: Arc<sluice_platform::tcp::Connected>,
    rejections: Rejections,
}

/// A hub of the test pipeline, its settings changed by `edit`.
async fn hub_with(edit: impl FnOnce(&mut HubConfig)) -> Setup {
    let keys = Keys::new("default", "hello");
    let streams = MemoryStreams::new();
    let ring = KeyRing::ephemeral();
    let rejections = Rejections::default();
    let mut cfg = HubConfig {
        keys: keys.clone(),
        groups: vec![GROUP.into(), "next".into()],
        limits: Limits::for_entries(64 << 10),
        max_nonces: 1000,
        max_nonce_ttl: Duration::from_secs(60),
        max_queue_depth: 1000,
        dead_letter_cap: 5,
        lease: Duration::from_millis(10),
        clock_skew: Duration::from_secs(5),
        max_payload_bytes: 32 << 10,
        rejections: rejections.clone(),
    };
    edit(&mut cfg);
    let hub = Hub::bind(
        "127.0.0.1:0".parse().unwrap(),
        cfg,
        SharedKeyRing::fixed(ring.clone()),
        streams.clone(),
    )
    .await
    .unwrap();
    let guard = hub.nonces();
    let addr = hub.local_addr().unwrap();
    let connected = hub.connected();
    let stop = CancellationToken::new();
    tokio::spawn(hub.serve(stop.clone()));
    Setup {
        keys,
        streams,
        guard,
        ring,
        addr,
        stop,
        connected,
        rejections,
    }
}

/// A request for `GROUP` signed by the ingress, as it pushes one.
fn signed(s: &Setup) -> StreamEntry {
    let mut env = request(s.keys.pipeline(), GROUP);
    Signer::new(SharedKeyRing::fixed(s.ring.clone()), &s.keys, "web")
        .sign(&mut env)
        .unwrap()
}

/// What `consumer` reclaims of `q` once the hub released it (at most a
/// second's wait).
async fn reclaim_soon(w: &TcpBackend, q: &str, consumer: &str) -> Vec<sluice_platform::Delivery> {
    for _ in 0..100 {
        let got = w
            .reclaim(q, consumer, Duration::from_millis(10), 10)
            .await
            .unwrap();
        if !got.is_empty() {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    vec![]
}

async fn hub() -> Setup {
    hub_with(|_| {}).await
}

fn client(s: &Setup, group: &str, ring: KeyRing) -> Arc<TcpBackend> {
    TcpBackend::new(
        TcpConfig {
            hub: s.addr,
            pipeline: s.keys.pipeline().to_string(),
            group: group.into(),
            limits: Limits::for_entries(64 << 10),
            timeout: Duration::from_secs(5),
        },
        SharedKeyRing::fixed(ring),
    )
    .unwrap()
}

#[tokio::test]
async fn a_worker_reads_renews_reclaims_and_hands_off_through_the_hub() {
    let s = hub().await;
    let w = client(&s, GROUP, s.ring.clone());
    let q = s.keys.queue(GROUP);
    let reply = s.keys.reply("ing-1");
    s.streams
        .open(&reply, Duration::from_secs(60))
        .await
        .unwrap();
    let store = s.keys.reply("async:abc");
    s.streams
        .open(&store, Duration::from_secs(60))
        .await
        .unwrap();

    w.ensure_group(&q).await.unwrap();
    // The ingress pushes in process; the worker reads over TCP.
    let sent: Vec<StreamEntry> = (0..3).map(|_| signed(&s)).collect();
    for e in &sent {
        s.streams.push(&q, e.clone()).await.unwrap();
    }
    let got = w
        .read(&q, "c1", 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].entry, sent[0]);
    assert_eq!(got[0].deliveries, 1);
    assert_eq!(w.pending(&q).await.unwrap(), 3);
    assert_eq!(w.depth(&q).await.unwrap().entries, 3);

    // A blocking read wakes when the ingress pushes.
    let reader = {
        let w = w.clone();
        let q = q.clone();
        tokio::spawn(async move { w.read(&q, "c1", 1, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let late = signed(&s);
    s.streams.push(&q, late.clone()).await.unwrap();
    let woke = reader.await.unwrap().unwrap();
    assert_eq!(woke[0].entry, late);

    let held = [Held {
        id: got[0].id.clone(),
        since: Instant::now(),
    }];
    assert!(w
        .renew(&q, "c1", &held, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        w.renew(&q, "c2", &held, Duration::from_secs(30))
            .await
            .unwrap(),
        vec![got[0].id.clone()],
        "another consumer's renewal names the entry as not its own"
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    let again = w
        .reclaim(&q, "c2", Duration::from_millis(10), 1)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].deliveries, 2);

    // A chunk to the store and a follower; a hop and an answer in one batch.
    assert_eq!(w.append(&[&store, &reply], &entry(5)).await.unwrap(), 2);
    let answers = w
        .complete_all(
            &q,
            &[
                Completion {
                    id: got[0].id.clone(),
                    forward: Some(Forward {
                        stream: reply.clone(),
                        entry: entry(6),
                        must_exist: true,
                        copy_to: None,
                    }),
                },
                Completion {
                    id: got[1].id.clone(),
                    forward: Some(Forward {
                        stream: s.keys.queue("next"),
                        entry: entry(7),
                        must_exist: false,
                        copy_to: None,
                    }),
                },
                Completion {
                    id: got[2].id.clone(),
                    forward: Some(Forward {
                        stream: s.keys.reply("gone"),
                        entry: entry(8),
                        must_exist: true,
                        copy_to: None,
                    }),
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(answers, vec![true, true, false]);
    assert_eq!(
        w.pending(&q).await.unwrap(),
        1,
        "only the woken entry is left"
    );
    let replies = s.streams.recv(&reply, 10, Duration::ZERO).await.unwrap();
    let got_replies: Vec<_> = replies.into_iter().map(|(_, e)| e).collect();
    assert_eq!(got_replies, vec![entry(5), entry(6)]);
    assert_eq!(
        s.streams
            .depth(&s.keys.queue("next"))
            .await
            .unwrap()
            .entries,
        1
    );

    // Pushes to another group and capped pushes to the dead letters.
    w.push(&s.keys.queue("next"), entry(1)).await.unwrap();
    w.push_capped(&s.keys.dead_letter(), entry(2), 5)
        .await
        .unwrap();
    assert_eq!(
        s.streams
            .depth(&s.keys.dead_letter())
            .await
            .unwrap()
            .entries,
        1
    );
    s.stop.cancel();
}

#[tokio::test]
async fn calls_outside_the_group_are_refused_with_the_reason() {
    let s = hub().await;
    let w = client(&s, GROUP, s.ring.clone());
    let err = w
        .read(&s.keys.queue("next"), "c", 1, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable(m) if m.contains("refused by the hub") && m.contains("own queue")),
        "{err:?}"
    );
    // The connection survives a refused call.
    w.ensure_group(&s.keys.queue(GROUP)).await.unwrap();
}

#[tokio::test]
async fn a_worker_without_the_ring_never_gets_in() {
    let s = hub().await;
    let stranger = client(&s, GROUP, KeyRing::ephemeral());
    let err = stranger.connect().await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
    let unknown = client(&s, "nobody", s.ring.clone());
    assert!(unknown.connect().await.is_err());
    assert_eq!(s.connected.of(GROUP), 0);
    assert_eq!(s.connected.of("nobody"), 0);
}

#[tokio::test]
async fn a_hub_or_worker_on_another_address_is_refused_at_start() {
    let e = Hub::bind(
        "0.0.0.0:0".parse().unwrap(),
        HubConfig {
            keys: Keys::new("default", "hello"),
            groups: vec![],
            limits: Limits::for_entries(1024),
            max_nonces: 1,
            max_nonce_ttl: Duration::from_secs(1),
            max_queue_depth: 1,
            dead_letter_cap: 1,
            lease: Duration::from_secs(1),
            clock_skew: Duration::from_secs(1),
            max_payload_bytes: 1024,
            rejections: Rejections::default(),
        },
        SharedKeyRing::fixed(KeyRing::ephemeral()),
        MemoryStreams::new(),
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("loopback"), "{e}");
    let e = TcpBackend::new(
        TcpConfig {
            hub: "192.0.2.1:7".parse().unwrap(),
            pipeline: "default/hello".into(),
            group: GROUP.into(),
            limits: Limits::for_entries(1024),
            timeout: Duration::from_secs(1),
        },
        SharedKeyRing::fixed(KeyRing::ephemeral()),
    )
    .unwrap_err();
    assert!(e.contains("--hub") && e.contains("loopback"), "{e}");
}

#[tokio::test]
async fn entries_of_a_worker_whose_connection_ended_are_reclaimable_at_once() {
    let s = hub().await;
    let q = s.keys.queue(GROUP);
    let first = client(&s, GROUP, s.ring.clone());
    first.ensure_group(&q).await.unwrap();
    s.streams.push(&q, signed(&s)).await.unwrap();
    let held = first.read(&q, "dead", 1, Duration::ZERO).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(s.connected.of(GROUP), 1);
    // A lease far from lapsing: nothing to reclaim while the worker lives.
    let second = client(&s, GROUP, s.ring.clone());
    assert!(second
        .reclaim(&q, "next", Duration::from_secs(300), 10)
        .await
        .unwrap()
        .is_empty());
    drop(first);
    // The connection ends when the client's tasks see it dropped; wait
    // for the hub to count it gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.connected.of(GROUP) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got = vec![];
    while got.is_empty() && Instant::now() < deadline {
        got = second
            .reclaim(&q, "next", Duration::from_secs(300), 10)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        got.len(),
        1,
        "the dead worker's entry is reclaimed before its lease"
    );
    assert_eq!(got[0].deliveries, 2);
}

#[tokio::test]
async fn the_hub_claims_each_nonce_drops_a_replay_and_hands_out_a_redelivery() {
    let s = hub().await;
    let w = client(&s, GROUP, s.ring.clone());
    let q = s.keys.queue(GROUP);
    w.ensure_group(&q).await.unwrap();
    let e = signed(&s);
    s.streams.push(&q, e.clone()).await.unwrap();
    let first = w.read(&q, "c1", 10, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    let kid = String::from_utf8(e.k.to_vec()).unwrap();
    let claimed = s.keys.nonce(GROUP, &kid, &nonce_of(&e));
    assert_eq!(
        s.guard.get(&claimed).await.unwrap().as_deref(),
        Some(first[0].id.as_str()),
        "the hub claimed the nonce under the entry id"
    );

    // The same signed entry added again: acknowledged, never handed out.
    s.streams.push(&q, e.clone()).await.unwrap();
    let again = w.read(&q, "c1", 10, Duration::ZERO).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(s.rejections.get(Rejection::Replay), 1);
    assert_eq!(
        s.streams.pending(&q).await.unwrap(),
        1,
        "only the first is held"
    );

    // The first one's redelivery (its worker gone) passes its own nonce.
    drop(w);
    let next = client(&s, GROUP, s.ring.clone());
    let got = reclaim_soon(&next, &q, "c2").await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].id.as_str(), got[0].deliveries),
        (first[0].id.as_str(), 2)
    );
    assert_eq!(s.rejections.get(Rejection::Replay), 1);
}

#[tokio::test]
async fn an_entry_failing_any_check_is_refused_by_the_hub_never_handed_out() {
    let s = hub().await;
    let w = client(&s, GROUP, s.ring.clone());
    let q = s.keys.queue(GROUP);
    w.ensure_group(&q).await.unwrap();
    // Not signed, and signed for another group: no worker gets to judge
    // them with a key ring of its own.
    s.streams.push(&q, entry(1)).await.unwrap();
    let mut elsewhere = Envelope {
        dest: "next".into(),
        ..{
            let e = signed(&s);
            sluice_platform::codec::decode(&e.v, &e.m).unwrap()
        }
    };
    let elsewhere = Signer::new(SharedKeyRing::fixed(s.ring.clone()), &s.keys, "web")
        .sign(&mut elsewhere)
        .unwrap();
    s.streams.push(&q, elsewhere).await.unwrap();
    assert!(w
        .read(&q, "c1", 10, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    // The second is checked with this group's key, as it was read here.
    assert_eq!(s.rejections.get(Rejection::BadMac), 1);
    let all: u64 = [
        Rejection::Oversized,
        Rejection::BadVersion,
        Rejection::UnknownKid,
        Rejection::MissingKey,
        Rejection::BadMac,
        Rejection::Malformed,
    ]
    .into_iter()
    .map(|r| s.rejections.get(r))
    .sum();
    assert_eq!(all, 2, "each counted once, for its reason");
    assert_eq!(s.streams.pending(&q).await.unwrap(), 0, "acknowledged");
    assert_eq!(s.guard.len(), 0, "no nonce claimed for them");
}

#[tokio::test]
async fn a_full_replay_guard_leaves_entries_pending_not_lost() {
    let s = hub_with(|c| c.max_nonces = 1).await;
    let w = client(&s, GROUP, s.ring.clone());
    let q = s.keys.queue(GROUP);
    w.ensure_group(&q).await.unwrap();
    for _ in 0..2 {
        s.streams.push(&q, signed(&s)).await.unwrap();
    }
    let got = w.read(&q, "c1", 10, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1, "the second nonce finds the guard full");
    assert_eq!(
        s.streams.pending(&q).await.unwrap(),
        2,
        "the other entry waits, pending, for a later reclaim"
    );
    assert_eq!(s.rejections.get(Rejection::Replay), 0);
}

/// The nonce inside a signed entry (tests only: the hub verifies first).
fn nonce_of(e: &StreamEntry) -> String {
    sluice_platform::codec::decode(&e.v, &e.m).unwrap().nonce
}

#[tokio::test]
async fn a_frame_over_the_limit_ends_the_connection_and_the_worker_reconnects() {
    // The hub accepts frames of a 1 KiB entry's limits; this client sends
    // a bigger one.
    let s = hub_with(|c| c.limits = Limits::for_entries(16)).await;
    let w = client(&s, GROUP, s.ring.clone());
    let q = s.keys.queue(GROUP);
    w.ensure_group(&q).await.unwrap();
    let mut big = entry(1);
    big.m = vec![b'x'; 2 << 20].into();
    let err = w.push(&s.keys.queue("next"), big).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
    assert_eq!(
        s.streams
            .depth(&s.keys.queue("next"))
            .await
            .unwrap()
            .entries,
        0
    );
    // A new connection serves the next call.
    w.ensure_group(&q).await.unwrap();
}

#[tokio::test]
async fn the_hub_caps_what_a_worker_writes_whatever_it_asks() {
    let s = hub().await;
    let w = client(&s, GROUP, s.ring.clone());
    let q = s.keys.queue(GROUP);
    w.ensure_group(&q).await.unwrap();
    // A cap of zero asked for: the hub's own cap (5) applies.
    for n in 0..7 {
        w.push_capped(&s.keys.dead_letter(), entry(n), 0)
            .await
            .unwrap();
    }
    assert_eq!(
        s.streams
            .depth(&s.keys.dead_letter())
            .await
            .unwrap()
            .entries,
        5
    );

    // A reply forward that asks to create its stream does not.
    s.streams.push(&q, signed(&s)).await.unwrap();
    let got = w.read(&q, "c", 1, Duration::ZERO).await.unwrap();
    let nobody = s.keys.reply("nobody");
    let answers = w
        .complete_all(
            &q,
            &[Completion {
                id: got[0].id.clone(),
                forward: Some(Forward {
                    stream: nobody.clone(),
                    entry: entry(2),
                    must_exist: false,
                    copy_to: None,
                }),
            }],
        )
        .await
        .unwrap();
    assert_eq!(answers, vec![false]);
    assert_eq!(s.streams.depth(&nobody).await.unwrap().entries, 0);
}

#[tokio::test]
async fn a_full_queue_refuses_pushes() {
    let s = hub_with(|c| c.max_queue_depth = 2).await;
    let w = client(&s, GROUP, s.ring.clone());
    let (keys, streams) = (&s.keys, &s.streams);
    let next = keys.queue("next");
    w.push(&next, entry(1)).await.unwrap();
    w.push(&next, entry(2)).await.unwrap();
    let err = w.push(&next, entry(3)).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable(m) if m.contains("full")),
        "{err:?}"
    );
    assert_eq!(streams.depth(&next).await.unwrap().entries, 2);
}

#[tokio::test]
async fn a_consumer_still_connected_elsewhere_keeps_its_entries() {
    let s = hub().await;
    let q = s.keys.queue(GROUP);
    let first = client(&s, GROUP, s.ring.clone());
    let second = client(&s, GROUP, s.ring.clone());
    first.ensure_group(&q).await.unwrap();
    s.streams.push(&q, signed(&s)).await.unwrap();
    // The same consumer name on two connections (a worker that reconnected
    // before its old connection was seen gone).
    let held = first.read(&q, "same", 1, Duration::ZERO).await.unwrap();
    assert_eq!(held.len(), 1);
    assert!(second
        .read(&q, "same", 1, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.connected.of(GROUP) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.connected.of(GROUP), 1);
    // Not released: a third consumer finds nothing to reclaim early.
    let third = client(&s, GROUP, s.ring.clone());
    assert!(third
        .reclaim(&q, "other", Duration::from_secs(300), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.streams.pending(&q).await.unwrap(), 1);
}

fn handed(ds: &[sluice_platform::Delivery]) -> Vec<Completion> {
    ds.iter()
        .map(|d| Completion {
            id: d.id.clone(),
            forward: None,
        })
        .collect()
}

#[tokio::test]
async fn a_hand_off_brings_the_readers_next_entries_in_its_answer() {
    let s = hub().await;
    let w = client(&s, GROUP, s.ring.clone());
    let q = s.keys.queue(GROUP);
    w.ensure_group(&q).await.unwrap();
    let mut ids = vec![];
    for _ in 0..4 {
        ids.push(s.streams.push(&q, signed(&s)).await.unwrap());
    }
    let first = w.read(&q, "c1", 2, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(
        w.complete_all(&q, &handed(&first)).await.unwrap(),
        vec![true, true]
    );
    // The two slots the hand-off freed are filled already: the next two
    // entries are this consumer's before it reads again.
    assert_eq!(s.streams.pending(&q).await.unwrap(), 2);
    s.streams.push(&q, signed(&s)).await.unwrap();
    let next = w.read(&q, "c1", 10, Duration::ZERO).await.unwrap();
    let got: Vec<&str> = next.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        got,
        [ids[2].as_str(), ids[3].as_str()],
        "what came ahead, only"
    );
    // Nothing is left ahead: the next read asks the hub.
    assert_eq!(w.read(&q, "c1", 10, Duration::ZERO).await.unwrap().len(), 1);
    // A hand-off by a process that never read brings nothing.
    let other = client(&s, GROUP, s.ring.clone());
    let flags = other.complete_all(&q, &handed(&next)).await.unwrap();
    assert_eq!(flags, vec![true, true]);
}

#[tokio::test]
async fn entries_brought_ahead_die_with_their_connection() {
    // A push over the hub's entry limit ends the connection.
    let s = hub_with(|c| c.limits = Limits::for_entries(16)).await;
    let w = client(&s, GROUP, s.ring.clone());
    let q = s.keys.queue(GROUP);
    w.ensure_group(&q).await.unwrap();
    let mut ids = vec![];
    for _ in 0..3 {
        ids.push(s.streams.push(&q, signed(&s)).await.unwrap());
    }
    let first = w.read(&q, "c1", 1, Duration::ZERO).await.unwrap();
    w.complete_all(&q, &handed(&first)).await.unwrap();
    assert_eq!(s.streams.pending(&q).await.unwrap(), 1, "one came ahead");
    let mut big = entry(1);
    big.m = vec![b'x'; 2 << 20].into();
    assert!(w.push(&s.keys.queue("next"), big).await.is_err());
    // A new connection: the entry that came ahead is not handed out from
    // the old one; the hub released it, and a reclaim takes it up.
    let fresh = w.read(&q, "c1", 10, Duration::ZERO).await.unwrap();
    let got: Vec<&str> = fresh.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(got, [ids[2].as_str()]);
    let again = reclaim_soon(&w, &q, "c1").await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.as_str(), again[0].deliveries),
        (ids[1].as_str(), 2)
    );
}

#[tokio::test]
async fn what_came_ahead_counts_against_the_next_hand_offs_and_a_reclaim_hands_it_out() {
    let s = hub().await;
    let w = client(&s, GROUP, s.ring.clone());
    let q = s.keys.queue(GROUP);
    w.ensure_group(&q).await.unwrap();
    for _ in 0..8 {
        s.streams.push(&q, signed(&s)).await.unwrap();
    }
    // Two held; their hand-off brings two ahead.
    let first = w.read(&q, "c1", 2, Duration::ZERO).await.unwrap();
    w.complete_all(&q, &handed(&first)).await.unwrap();
    assert_eq!(s.streams.pending(&q).await.unwrap(), 2);
    // A reclaim falls due before the next read and hands out one of them.
    let reclaimed = w
        .reclaim(&q, "c1", Duration::from_secs(60), 1)
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(
        reclaimed[0].deliveries, 1,
        "what came ahead, not a redelivery"
    );
    // Its hand-off frees one slot, and one entry still waits ahead: it
    // brings nothing, so no more are held than slots were freed.
    w.complete_all(&q, &handed(&reclaimed)).await.unwrap();
    assert_eq!(s.streams.pending(&q).await.unwrap(), 1);
    let next = w.read(&q, "c1", 10, Duration::ZERO).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(s.streams.pending(&q).await.unwrap(), 1);
    // Its hand-off brings one more; a worker that drains gets it back to
    // finish, and later hand-offs bring nothing.
    w.complete_all(&q, &handed(&next)).await.unwrap();
    let left = w.done_reading(&q, "c1").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(s.streams.pending(&q).await.unwrap(), 1);
    w.complete_all(&q, &handed(&left)).await.unwrap();
    assert_eq!(s.streams.pending(&q).await.unwrap(), 0);
    assert_eq!(
        s.streams.depth(&q).await.unwrap().entries,
        3,
        "three never taken"
    );
}
