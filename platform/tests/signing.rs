//! The verification chain: every rejection reason, counted, and nothing
//! decoded before the MAC verifies; per-group keys in both directory
//! layouts, and rotation with either.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::registry::Registry;
use proptest::prelude::*;
use serde_json::json;
use sluice_platform::clock::now_ms;
use sluice_platform::memory::MemoryKv;
use sluice_platform::metrics::Rejections;
use sluice_platform::signing::ENVELOPE_OVERHEAD;
use sluice_platform::*;

const MAX_PAYLOAD: usize = 4096;

fn ring(current: &str, kids: &[(&str, u8)]) -> KeyRing {
    let raw: BTreeMap<String, Vec<u8>> = kids
        .iter()
        .map(|(k, b)| (k.to_string(), vec![*b; 32]))
        .collect();
    KeyRing::from_raw(current, &raw).unwrap()
}

fn keys() -> Keys {
    Keys::new("ns", "p")
}

/// Signs like the process of group `cpu`.
fn signer(ring: SharedKeyRing) -> Signer {
    Signer::new(ring, &keys(), "cpu")
}

/// Signs, where the signer must hold the key.
fn signed(s: &Signer, env: &mut Envelope) -> StreamEntry {
    s.sign(env).expect("the signer holds this key")
}

struct Rig {
    signer: Signer,
    verifier: Verifier,
    rejections: Rejections,
}

fn rig() -> Rig {
    let shared = SharedKeyRing::fixed(ring("k1", &[("k1", 1)]));
    let mut reg = Registry::default();
    let rejections = Rejections::register(&mut reg);
    let verifier = Verifier::new(
        shared.clone(),
        Some(MemoryKv::new()),
        Keys::new("ns", "p"),
        Duration::from_secs(30),
        MAX_PAYLOAD,
        rejections.clone(),
    );
    Rig {
        signer: signer(shared),
        verifier,
        rejections,
    }
}

fn request(dest: &str) -> Envelope {
    sluice_platform::conformance::request("ns/p", dest)
}

/// Read from stream `q` under `id`, delivered `deliveries` times.
fn at(id: &str, deliveries: u32) -> At<'_> {
    At {
        stream: "q",
        id,
        deliveries,
    }
}

async fn rejection(r: &Rig, e: &StreamEntry, id: &str, group: &str) -> Rejection {
    match r.verifier.verify_request(e, &at(id, 1), group).await {
        Err(VerifyError::Rejected(why)) => why,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_valid_request_verifies_and_decodes() {
    let r = rig();
    let mut env = request("cpu");
    let e = signed(&r.signer, &mut env);
    let got = r
        .verifier
        .verify_request(&e, &at("1-0", 1), "cpu")
        .await
        .unwrap();
    assert_eq!(got, env);
}

/// Both forms of `m` are read: a process of this release verifies what
/// one of the release before wrote (JSON) and what the memory profile
/// writes (binary), under the same keys; the form is named in `v` and
/// covered by the MAC.
#[tokio::test]
async fn requests_and_replies_in_either_format_verify_and_decode_alike() {
    let r = rig();
    for (i, format) in [Format::Json, Format::Binary].into_iter().enumerate() {
        let s = r.signer.clone().with_format(format);
        let mut env = request("cpu");
        env.trace = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let e = signed(&s, &mut env);
        assert_eq!(&e.v[..], format.version().as_bytes());
        let id = format!("{i}-0");
        let got = r.verifier.verify_request(&e, &at(&id, 1), "cpu").await;
        assert_eq!(got.unwrap(), env, "{format:?}");

        let mut reply = env.reply(Ok(json!({"n": 1.5, "s": "ünï"})));
        reply.dest = "ingress-1".into();
        let e = signed(&s, &mut reply);
        let got = r.verifier.verify_reply(&e, "ingress-1").await;
        let got = got.unwrap();
        assert_eq!(
            (got.envelope, got.from.as_str()),
            (reply, "cpu"),
            "{format:?}"
        );
    }
}

#[tokio::test]
async fn each_forgery_is_rejected_with_its_own_reason_and_counted() {
    let r = rig();
    let good = signed(&r.signer, &mut request("cpu"));

    let mut bad_mac = good.clone();
    let mut m = bad_mac.m.to_vec();
    m[3] ^= 1;
    bad_mac.m = m.into();
    assert_eq!(
        rejection(&r, &bad_mac, "1-0", "cpu").await,
        Rejection::BadMac
    );

    let other = signer(SharedKeyRing::fixed(ring("k9", &[("k9", 9)])));
    let unknown = signed(&other, &mut request("cpu"));
    assert_eq!(
        rejection(&r, &unknown, "1-0", "cpu").await,
        Rejection::UnknownKid
    );

    let mut future = request("cpu");
    future.ts = now_ms() + 120_000;
    future.nonce = "f".into();
    assert_eq!(
        rejection(&r, &r.signer.sign_as_is(&future).unwrap(), "1-0", "cpu").await,
        Rejection::FromFuture
    );

    let mut late = request("cpu");
    late.ts = now_ms() - 5_000;
    late.deadline = now_ms() - 1;
    late.nonce = "l".into();
    assert_eq!(
        rejection(&r, &r.signer.sign_as_is(&late).unwrap(), "1-0", "cpu").await,
        Rejection::Expired
    );

    // Signed with cpu's *request* key (an insider holding it), but says reply.
    let wrong_kind = Envelope {
        kind: Kind::Reply,
        ts: now_ms(),
        nonce: "wk".into(),
        ..request("cpu")
    };
    assert_eq!(
        rejection(
            &r,
            &forge(&wrong_kind, "sluice/request/ns/p/cpu"),
            "1-0",
            "cpu"
        )
        .await,
        Rejection::WrongKind
    );

    // Signed with cpu's request key, but addressed to io: only an insider
    // holding cpu's key can make one, and it still does not run.
    let wrong_dest = Envelope {
        ts: now_ms(),
        nonce: "wd".into(),
        ..request("io")
    };
    assert_eq!(
        rejection(
            &r,
            &forge(&wrong_dest, "sluice/request/ns/p/cpu"),
            "2-0",
            "cpu"
        )
        .await,
        Rejection::WrongDestination
    );

    let mut reply = request("ing-1");
    reply.kind = Kind::Reply;
    let reply_entry = signed(&r.signer, &mut reply);
    assert_eq!(
        rejection(&r, &reply_entry, "3-0", "cpu").await,
        Rejection::UnknownKid,
        "a reply presented as a request: its key id `<kid>/<group>` is no request's"
    );
    let as_request = StreamEntry {
        k: Bytes::from_static(b"k1"),
        ..reply_entry
    };
    assert_eq!(
        rejection(&r, &as_request, "3-0", "cpu").await,
        Rejection::BadMac,
        "with a request's key id it fails the MAC: replies use a different derived key"
    );

    let mut bad_version = good.clone();
    bad_version.v = Bytes::from_static(b"1");
    assert_eq!(
        rejection(&r, &bad_version, "1-0", "cpu").await,
        Rejection::BadVersion,
        "a version-1 entry is told apart from a forgery"
    );

    for why in [
        Rejection::BadMac,
        Rejection::UnknownKid,
        Rejection::FromFuture,
        Rejection::Expired,
        Rejection::WrongKind,
        Rejection::WrongDestination,
        Rejection::BadVersion,
    ] {
        assert!(r.rejections.get(why) >= 1, "{why:?} counted");
    }
    assert_eq!(r.rejections.get(Rejection::BadMac), 2);
    assert_eq!(r.rejections.get(Rejection::UnknownKid), 2);
}

/// `env` signed as it is with k1's key derived under `info`, the way a
/// process holding that key could: derived exactly as docs/wire-format.md
/// says, independently of the product's code.
fn forge(env: &Envelope, info: &str) -> StreamEntry {
    use hkdf::Hkdf;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::Sha256;
    let hk = Hkdf::<Sha256>::new(Some(b"sluice-ipc-v1"), &[1u8; 32]);
    let mut key = [0u8; 32];
    hk.expand(info.as_bytes(), &mut key).unwrap();
    let v = b"2".to_vec();
    let m = serde_json::to_vec(env).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(&v);
    mac.update(&m);
    let s: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    StreamEntry {
        v: v.into(),
        k: Bytes::from_static(b"k1"),
        m: m.into(),
        s: s.into(),
        note: Bytes::new(),
    }
}

/// A request handed back (another generation of the graph, a node the
/// receiver does not run) passes every check up to its destination first,
/// and leaves its nonce for the worker that runs it.
#[tokio::test]
async fn a_handed_back_request_claims_no_nonce_and_is_checked_first() {
    let r = rig();
    let e = signed(&r.signer, &mut request("cpu"));
    let back = |_: &Envelope| true;
    assert!(matches!(
        r.verifier
            .verify_request_unless(&e, &at("5-0", 1), "cpu", &back)
            .await,
        Err(VerifyError::HandedBack(_))
    ));
    r.verifier
        .verify_request(&e, &at("5-0", 1), "cpu")
        .await
        .expect("the first delivery to a worker that runs it");
    // A forgery, or a request read from another group's queue (its MAC is
    // checked with that group's key), is refused, not handed back.
    let mut forged = signed(&r.signer, &mut request("cpu"));
    forged.s = flipped(&forged.s, 0);
    for (entry, dest, why) in [
        (&forged, "cpu", Rejection::BadMac),
        (&e, "io", Rejection::BadMac),
    ] {
        match r
            .verifier
            .verify_request_unless(entry, &at("7-0", 1), dest, &back)
            .await
        {
            Err(VerifyError::Rejected(got)) => assert_eq!(got, why),
            other => panic!("{why:?}: {other:?}"),
        }
    }
    assert_eq!(r.rejections.get(Rejection::Replay), 0);
}

/// A request's deadline may not lie further ahead than the bound (plus the
/// clock skew), on the receiver's clock.
#[tokio::test]
async fn a_deadline_beyond_the_longest_timeout_is_refused() {
    let shared = SharedKeyRing::fixed(ring("k1", &[("k1", 1)]));
    let mut reg = Registry::default();
    let rejections = Rejections::register(&mut reg);
    let verifier = Verifier::new(
        shared.clone(),
        Some(MemoryKv::new()),
        keys(),
        Duration::from_secs(5),
        MAX_PAYLOAD,
        rejections.clone(),
    )
    .with_max_lifetime(Duration::from_secs(30));
    let s = signer(shared);
    let verify = |env: Envelope| {
        let e = s.sign_as_is(&env).unwrap();
        let v = verifier.clone();
        async move { v.verify_request(&e, &at("1-0", 1), "cpu").await }
    };
    let now = now_ms();
    let mut far = request("cpu");
    far.ts = now;
    far.deadline = now + 36_000;
    far.nonce = "far".into();
    match verify(far).await {
        Err(VerifyError::Rejected(Rejection::FarDeadline)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(rejections.get(Rejection::FarDeadline), 1);
    assert_eq!(Rejection::FarDeadline.reason(), "far_deadline");
    let mut near = request("cpu");
    near.ts = now;
    near.deadline = now + 34_000;
    near.nonce = "near".into();
    verify(near).await.expect("within the timeout and the skew");
}

#[tokio::test]
async fn redelivery_is_accepted_and_replay_is_rejected() {
    let r = rig();
    let e = signed(&r.signer, &mut request("cpu"));
    r.verifier
        .verify_request(&e, &at("5-0", 1), "cpu")
        .await
        .unwrap();
    r.verifier
        .verify_request(&e, &at("5-0", 2), "cpu")
        .await
        .expect("the same entry delivered again by its queue is a redelivery");
    assert_eq!(
        rejection(&r, &e, "6-0", "cpu").await,
        Rejection::Replay,
        "same nonce, new entry id"
    );
    assert_eq!(
        rejection(&r, &e, "5-0", "cpu").await,
        Rejection::Replay,
        "same stream and id delivered as new: the entry was added back"
    );
    assert_eq!(
        rejection(&r, &e, "4-0", "cpu").await,
        Rejection::Replay,
        "an older id"
    );
    assert_eq!(r.rejections.get(Rejection::Replay), 3);
}

#[tokio::test]
async fn the_guard_remembers_the_entry_id_and_reads_the_older_stream_slash_id_values() {
    let kv = MemoryKv::new();
    let shared = SharedKeyRing::fixed(KeyRing::ephemeral());
    let v = Verifier::new(
        shared.clone(),
        Some(kv.clone()),
        keys(),
        Duration::from_secs(30),
        MAX_PAYLOAD,
        Rejections::default(),
    );
    let e = signed(&signer(shared.clone()), &mut request("cpu"));
    let env = sluice_platform::codec::decode(&e.v, &e.m).unwrap();
    let kid = std::str::from_utf8(&e.k).unwrap();
    let key = keys().nonce("cpu", kid, &env.nonce);
    v.verify_request(&e, &at("7-0", 1), "cpu").await.unwrap();
    assert_eq!(kv.get(&key).await.unwrap().as_deref(), Some("7-0"));

    // A nonce claimed by an earlier version, as `<stream>/<id>`: its
    // redelivery passes, a new entry with it does not.
    let e = signed(&signer(shared), &mut request("cpu"));
    let env = sluice_platform::codec::decode(&e.v, &e.m).unwrap();
    let key = keys().nonce("cpu", kid, &env.nonce);
    kv.set_nx(&key, "q/8-0", Duration::from_secs(60))
        .await
        .unwrap();
    v.verify_request(&e, &at("8-0", 2), "cpu")
        .await
        .expect("the redelivery of the entry an earlier version claimed");
    for (id, deliveries) in [("8-0", 1), ("9-0", 2)] {
        assert!(matches!(
            v.verify_request(&e, &at(id, deliveries), "cpu").await,
            Err(VerifyError::Rejected(Rejection::Replay))
        ));
    }
}

#[tokio::test]
async fn without_a_guard_nothing_is_remembered_and_everything_else_is_checked() {
    let shared = SharedKeyRing::fixed(ring("k1", &[("k1", 1)]));
    let v = Verifier::new(
        shared.clone(),
        None,
        keys(),
        Duration::from_secs(30),
        MAX_PAYLOAD,
        Rejections::default(),
    );
    let e = signed(&signer(shared), &mut request("cpu"));
    for _ in 0..2 {
        v.verify_request(&e, &at("1-0", 1), "cpu")
            .await
            .expect("no guard: the same nonce again is not refused");
    }
    let mut forged = e.clone();
    forged.s = vec![b'0'; 64].into();
    assert!(matches!(
        v.verify_request(&forged, &at("2-0", 1), "cpu").await,
        Err(VerifyError::Rejected(Rejection::BadMac))
    ));
    assert!(
        matches!(
            v.verify_request(&e, &at("3-0", 1), "io").await,
            Err(VerifyError::Rejected(Rejection::BadMac))
        ),
        "group io verifies with its own request key"
    );
}

#[tokio::test]
async fn a_copy_for_another_group_does_not_use_up_the_nonce() {
    let r = rig();
    let e = signed(&r.signer, &mut request("cpu"));
    let before = r.verifier.decoded();
    assert_eq!(
        rejection(&r, &e, "1-0", "io").await,
        Rejection::BadMac,
        "io verifies with io's request key"
    );
    assert_eq!(r.verifier.decoded(), before, "refused before decoding");
    r.verifier
        .verify_request(&e, &at("2-0", 1), "cpu")
        .await
        .expect("the original still verifies at its destination");
}

#[tokio::test]
async fn oversized_entries_are_rejected_before_decoding() {
    let r = rig();
    let mut env = request("cpu");
    env.payload = json!("x".repeat(MAX_PAYLOAD + ENVELOPE_OVERHEAD));
    let e = signed(&r.signer, &mut env);
    let before = r.verifier.decoded();
    assert_eq!(rejection(&r, &e, "1-0", "cpu").await, Rejection::Oversized);
    assert_eq!(
        r.verifier.decoded(),
        before,
        "the decoder was never reached"
    );
    // And a forged MAC is also refused before decoding.
    let mut forged = signed(&r.signer, &mut request("cpu"));
    forged.s = vec![b'0'; 64].into();
    assert_eq!(
        rejection(&r, &forged, "1-0", "cpu").await,
        Rejection::BadMac
    );
    assert_eq!(r.verifier.decoded(), before);
}

#[tokio::test]
async fn replay_guard_backend_failure_is_not_a_rejection() {
    let kv = MemoryKv::new();
    let shared = SharedKeyRing::fixed(ring("k1", &[("k1", 1)]));
    let v = Verifier::new(
        shared.clone(),
        Some(kv.clone()),
        Keys::new("ns", "p"),
        Duration::from_secs(30),
        MAX_PAYLOAD,
        Rejections::default(),
    );
    let e = signed(&signer(shared), &mut request("cpu"));
    kv.faults().fail_next(1);
    assert!(matches!(
        v.verify_request(&e, &at("1-0", 1), "cpu").await,
        Err(VerifyError::Backend(_))
    ));
    v.verify_request(&e, &at("1-0", 1), "cpu")
        .await
        .expect("verifies once the backend answers");
}

#[tokio::test]
async fn a_key_added_to_the_directory_is_picked_up_and_signing_follows_current() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let b64 = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
    std::fs::write(dir.path().join("old"), b64(1)).unwrap();
    std::fs::write(dir.path().join("current"), "old\n").unwrap();
    let shared = SharedKeyRing::from_dir(dir.path()).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let _watch = shared.watch(Duration::from_millis(50), cancel.clone());
    let signer = signer(shared.clone());
    let old_entry = signed(&signer, &mut request("cpu"));
    assert_eq!(old_entry.k, &b"old"[..]);

    // Kubelet-style update: add the new key first, then switch `current`.
    std::fs::write(dir.path().join("new"), b64(2)).unwrap();
    std::fs::write(dir.path().join("current"), "new").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while shared.get().current() != "new" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher picked up the new current kid within 5s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_entry = signed(&signer, &mut request("cpu"));
    assert_eq!(new_entry.k, &b"new"[..], "signing follows current");
    let v = Verifier::new(
        shared,
        Some(MemoryKv::new()),
        Keys::new("ns", "p"),
        Duration::from_secs(30),
        MAX_PAYLOAD,
        Rejections::default(),
    );
    v.verify_request(&old_entry, &at("1-0", 1), "cpu")
        .await
        .expect("the older kid still verifies");
    v.verify_request(&new_entry, &at("2-0", 1), "cpu")
        .await
        .expect("the new kid verifies");

    // A broken update keeps the previous ring.
    std::fs::write(dir.path().join("current"), "missing").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        signed(&signer, &mut request("cpu")).k,
        &b"new"[..],
        "an invalid directory keeps the last good ring"
    );
    cancel.cancel();
}

// === per-group keys ===

/// A verifier of pipeline ns/p over `ring`, and its rejection counts.
fn verifier(ring: SharedKeyRing) -> (Verifier, Rejections) {
    let rejections = Rejections::default();
    let v = Verifier::new(
        ring,
        Some(MemoryKv::new()),
        keys(),
        Duration::from_secs(30),
        MAX_PAYLOAD,
        rejections.clone(),
    );
    (v, rejections)
}

/// A derived ring holding `needs` of pipeline ns/p from `ring`.
fn derived(ring: &KeyRing, needs: &[(Kind, &str)]) -> SharedKeyRing {
    let files = sluice_platform::keyring::derived_files(ring, "ns/p", needs).unwrap();
    SharedKeyRing::fixed(KeyRing::from_files(&files).unwrap())
}

fn reply_to_ing1(dest_of_request: &str) -> Envelope {
    request(dest_of_request).reply(Ok(json!({"answer": 42})))
}

async fn reply_rejection(v: &Verifier, e: &StreamEntry) -> Rejection {
    match v.verify_reply(e, "ing-1").await {
        Err(VerifyError::Rejected(why)) => why,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_request_signed_for_one_group_fails_verification_in_another() {
    let shared = SharedKeyRing::fixed(ring("k1", &[("k1", 1)]));
    let (v, rejections) = verifier(shared.clone());
    let e = signed(&signer(shared), &mut request("io"));
    v.verify_request(&e, &at("1-0", 1), "io")
        .await
        .expect("verifies in its destination group");
    assert!(matches!(
        v.verify_request(&e, &at("2-0", 1), "cpu").await,
        Err(VerifyError::Rejected(Rejection::BadMac))
    ));
    assert_eq!(rejections.get(Rejection::BadMac), 1);
}

#[tokio::test]
async fn a_reply_names_its_sender_and_verifies_only_with_that_groups_key() {
    let shared = SharedKeyRing::fixed(ring("k1", &[("k1", 1)]));
    let (v, rejections) = verifier(shared.clone());
    let io = Signer::new(shared, &keys(), "io");
    let e = signed(&io, &mut reply_to_ing1("io"));
    assert_eq!(e.k, &b"k1/io"[..], "a reply's key id names its group");
    let got = v.verify_reply(&e, "ing-1").await.unwrap();
    assert_eq!(got.from, "io");
    assert_eq!(got.envelope.payload, json!({"answer": 42}));

    // Claiming another sender picks another key: the MAC fails.
    let claimed = StreamEntry {
        k: Bytes::from_static(b"k1/cpu"),
        ..e.clone()
    };
    assert_eq!(reply_rejection(&v, &claimed).await, Rejection::BadMac);
    // Key ids that are no reply's are refused before any key is chosen.
    for k in [
        &b"k1"[..],
        b"k1/",
        b"k1/IO",
        b"k1/io/x",
        b"k1.io",
        b"/io",
        b"\xff/io",
    ] {
        let bad = StreamEntry {
            k: Bytes::copy_from_slice(k),
            ..e.clone()
        };
        assert_eq!(
            reply_rejection(&v, &bad).await,
            Rejection::UnknownKid,
            "{}",
            String::from_utf8_lossy(k)
        );
    }
    assert_eq!(rejections.get(Rejection::UnknownKid), 7);
    assert_eq!(rejections.get(Rejection::BadMac), 1);
}

#[tokio::test]
async fn a_derived_directory_signs_only_for_its_groups_and_never_panics() {
    let raw = ring("k1", &[("k1", 1)]);
    // A worker of cpu that forwards to io and does not answer.
    let cpu = Signer::new(
        derived(&raw, &[(Kind::Request, "cpu"), (Kind::Request, "io")]),
        &keys(),
        "cpu",
    );
    signed(&cpu, &mut request("io"));
    let mut env = request("web");
    assert_eq!(
        cpu.sign(&mut env),
        Err(SignError::MissingKey {
            kind: "request",
            group: "web".into(),
            kid: "k1".into()
        })
    );
    let e = cpu.sign(&mut reply_to_ing1("cpu")).unwrap_err();
    assert!(
        e.to_string().contains("no reply key for group `cpu`"),
        "{e}"
    );
    let mut hostile = request("a/b\n");
    assert!(
        cpu.sign(&mut hostile).is_err(),
        "an invalid group signs nothing"
    );
}

#[tokio::test]
async fn a_verifier_without_the_key_counts_missing_key_before_decoding() {
    let raw = ring("k1", &[("k1", 1)]);
    let full = SharedKeyRing::fixed(raw.clone());
    // An ingress that takes replies from io only.
    let (v, rejections) = verifier(derived(&raw, &[(Kind::Reply, "io")]));
    let from_cpu = signed(
        &Signer::new(full.clone(), &keys(), "cpu"),
        &mut reply_to_ing1("cpu"),
    );
    assert_eq!(reply_rejection(&v, &from_cpu).await, Rejection::MissingKey);
    // A request for a group this process does not verify.
    let req = signed(&signer(full.clone()), &mut request("cpu"));
    assert!(matches!(
        v.verify_request(&req, &at("1-0", 1), "cpu").await,
        Err(VerifyError::Rejected(Rejection::MissingKey))
    ));
    // An unknown kid stays `unknown_kid`.
    let stranger = Signer::new(
        SharedKeyRing::fixed(ring("k9", &[("k9", 9)])),
        &keys(),
        "io",
    );
    let e = signed(&stranger, &mut reply_to_ing1("io"));
    assert_eq!(reply_rejection(&v, &e).await, Rejection::UnknownKid);
    assert_eq!(rejections.get(Rejection::MissingKey), 2);
    assert_eq!(v.decoded(), 0, "nothing was decoded");
    let from_io = signed(&Signer::new(full, &keys(), "io"), &mut reply_to_ing1("io"));
    assert_eq!(v.verify_reply(&from_io, "ing-1").await.unwrap().from, "io");
}

#[tokio::test]
async fn ring_and_derived_layouts_interoperate_both_ways() {
    let raw = ring("k1", &[("k1", 1)]);
    let full = SharedKeyRing::fixed(raw.clone());
    // The worker of cpu: verifies cpu's requests, forwards to io, answers.
    let worker = derived(
        &raw,
        &[
            (Kind::Request, "cpu"),
            (Kind::Request, "io"),
            (Kind::Reply, "cpu"),
        ],
    );
    // The ingress: sends to cpu, takes cpu's replies.
    let ingress = derived(&raw, &[(Kind::Request, "cpu"), (Kind::Reply, "cpu")]);

    // ring → derived
    let (v, _) = verifier(worker.clone());
    let e = signed(&signer(full.clone()), &mut request("cpu"));
    v.verify_request(&e, &at("1-0", 1), "cpu").await.unwrap();
    let (v, _) = verifier(ingress.clone());
    let e = signed(&signer(full.clone()), &mut reply_to_ing1("cpu"));
    assert_eq!(v.verify_reply(&e, "ing-1").await.unwrap().from, "cpu");

    // derived → ring
    let (v, _) = verifier(full.clone());
    let e = signed(&signer(ingress), &mut request("cpu"));
    v.verify_request(&e, &at("2-0", 1), "cpu").await.unwrap();
    let e = signed(&signer(worker.clone()), &mut request("io"));
    v.verify_request(&e, &at("3-0", 1), "io").await.unwrap();
    let e = signed(&signer(worker), &mut reply_to_ing1("cpu"));
    assert_eq!(v.verify_reply(&e, "ing-1").await.unwrap().from, "cpu");
}

#[tokio::test]
async fn rotation_works_with_derived_directories() {
    use sluice_platform::keyring::derived_files;
    let dir = tempfile::tempdir().unwrap();
    let needs = [(Kind::Request, "cpu"), (Kind::Reply, "cpu")];
    // Writes the derived files of `ring` the way a Secret update does: the
    // whole set at once, stale files gone.
    let render = |ring: &KeyRing| {
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        for (name, content) in derived_files(ring, "ns/p", &needs).unwrap() {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
    };
    render(&ring("old", &[("old", 1)]));
    let shared = SharedKeyRing::from_dir(dir.path()).unwrap();
    assert_eq!(shared.get().layout_name(), "derived");
    let signer = signer(shared.clone());
    let (v, _) = verifier(shared.clone());
    let old_entry = signed(&signer, &mut request("cpu"));
    let old_reply = signed(&signer, &mut reply_to_ing1("cpu"));
    assert_eq!(old_reply.k, &b"old/cpu"[..]);

    // added: the new kid verifies, the old one still signs.
    render(&ring("old", &[("old", 1), ("new", 2)]));
    assert!(shared.reload().unwrap());
    assert_eq!(signed(&signer, &mut request("cpu")).k, &b"old"[..]);
    // retiring: the new kid signs, the old one still verifies.
    render(&ring("new", &[("old", 1), ("new", 2)]));
    assert!(shared.reload().unwrap());
    let new_entry = signed(&signer, &mut request("cpu"));
    assert_eq!(new_entry.k, &b"new"[..], "signing follows current");
    v.verify_request(&old_entry, &at("1-0", 1), "cpu")
        .await
        .expect("the older kid still verifies");
    v.verify_reply(&old_reply, "ing-1")
        .await
        .expect("the older kid's reply still verifies");
    v.verify_request(&new_entry, &at("2-0", 1), "cpu")
        .await
        .expect("the new kid verifies");
    // stable: the old kid is gone.
    render(&ring("new", &[("new", 2)]));
    assert!(shared.reload().unwrap());
    assert!(matches!(
        v.verify_request(&old_entry, &at("3-0", 1), "cpu").await,
        Err(VerifyError::Rejected(Rejection::UnknownKid))
    ));
}

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    (
        "[a-z]{1,8}",
        "[ -~]{0,40}",
        any::<u32>(),
        prop::option::of("[a-z]{1,8}"),
        prop::option::of("[0-9a-f]{16}"),
        any::<i64>(),
    )
        .prop_map(|(dest, rid, attempt, node, plan, n)| Envelope {
            kind: Kind::Request,
            pipeline: "ns/p".into(),
            dest,
            cid: "c".into(),
            rid,
            trace: None,
            ts: now_ms(),
            nonce: "n".into(),
            deadline: now_ms() + 60_000,
            attempt,
            node,
            plan,
            reply_to: None,
            live: None,
            seq: None,
            last_seq: None,
            payload: json!({"n": n, "list": [1, "two", null]}),
            error: None,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn codec_round_trips(env in arb_envelope()) {
        for format in [Format::Binary, Format::Json] {
            let m = sluice_platform::codec::encode(&env, format);
            prop_assert_eq!(&sluice_platform::codec::decode(format.version().as_bytes(), &m).unwrap(), &env);
        }
    }

    #[test]
    fn any_single_flipped_byte_fails_verification(env in arb_envelope(), binary in any::<bool>(), field in 0usize..4, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let r = rig();
        let dest = env.dest.clone();
        let format = if binary { Format::Binary } else { Format::Json };
        let mut e = r.signer.clone().with_format(format).sign_as_is(&env).unwrap();
        let target = match field { 0 => &mut e.v, 1 => &mut e.k, 2 => &mut e.m, _ => &mut e.s };
        let i = pos.index(target.len());
        let mut bytes = target.to_vec();
        bytes[i] ^= 1 << bit;
        *target = bytes.into();
        let res = rt.block_on(r.verifier.verify_request(&e, &at("1-0", 1), &dest));
        prop_assert!(matches!(res, Err(VerifyError::Rejected(_))), "flipped field {} byte {} verified", field, i);
    }
}

#[tokio::test]
async fn a_stored_answer_verifies_past_its_deadline_and_only_at_its_own_address() {
    let shared = SharedKeyRing::fixed(ring("k1", &[("k1", 1)]));
    let (v, rejections) = verifier(shared.clone());
    let io = Signer::new(shared, &keys(), "io");
    let mut req = request("io");
    req.reply_to = Some("async:aa".into());
    // Its deadline has passed: fetched later, as an answer may be.
    req.deadline = now_ms() - 1;
    let e = signed(&io, &mut req.reply(Ok(json!({"answer": 42}))));
    let got = v.verify_stored_reply(&e, "async:aa").await.unwrap();
    assert_eq!(
        (got.from.as_str(), got.envelope.payload),
        ("io", json!({"answer": 42}))
    );
    // A waiting caller would be too late for it.
    assert!(matches!(
        v.verify_reply(&e, "async:aa").await,
        Err(VerifyError::Rejected(Rejection::Expired))
    ));
    // Another request's address, or an ingress's, refuses it.
    for dest in ["async:bb", "ing-1"] {
        assert!(matches!(
            v.verify_stored_reply(&e, dest).await,
            Err(VerifyError::Rejected(Rejection::WrongDestination))
        ));
    }
    // The MAC is checked all the same.
    let mut forged = e.clone();
    forged.s = flipped(&forged.s, 0);
    assert!(matches!(
        v.verify_stored_reply(&forged, "async:aa").await,
        Err(VerifyError::Rejected(Rejection::BadMac))
    ));
    assert_eq!(rejections.get(Rejection::WrongDestination), 2);
}

/// `b` with byte `i` changed to another hex digit.
fn flipped(b: &Bytes, i: usize) -> Bytes {
    let mut v = b.to_vec();
    v[i] = if v[i] == b'0' { b'1' } else { b'0' };
    v.into()
}
