//! Forged input on the wire: entries written straight onto a worker
//! group's stream by someone who can reach Redis but does not hold the key
//! ring (or replays what it captured). The `sluice-exec-worker` process
//! refuses every one, counts each by reason in
//! `sluice_envelopes_rejected_total{reason}`, executes none (no reply, no
//! forward), leaves nothing queued or pending, and keeps serving.
//!
//! ```text
//!   test ──XADD (forged)──▶ q:work ──▶ worker: size → version → kid → key → MAC → decode
//!                                             → freshness → kind/destination → replay guard
//! ```

use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;
use sluice_e2e::forge::unanswerable_request;
use sluice_e2e::resp::Probe;
use sluice_e2e::{eventually, scrape, Http, Sandbox, Service, Spec};
use sluice_platform::clock::now_ms;
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::signing::new_nonce;
use sluice_platform::{
    Envelope, Format, KeyRing, Keys, Queue, RedisBackend, RedisConfig, SharedKeyRing, Signer,
    StreamEntry,
};

const MANIFEST: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata:
  name: forge
spec:
  backends: { queue: redis, kv: redis, reply: redis }
  interfaces:
    - { name: stamp, kind: http, path: /v1/stamp, entry: stamp, timeout: 5s }
  groups:
    - { name: web, role: ingress }
    - { name: work, role: worker, concurrency: 4 }
  nodes:
    - name: stamp
      group: work
      uses: builtin/json-map
      with:
        template: { stamped: "${/id}" }
  security: { maxPayloadBytes: 4096 }
"#;
const MAX_PAYLOAD: usize = 4096;
/// `sluice_platform::signing::ENVELOPE_OVERHEAD`, restated: the documented
/// entry limit is `maxPayloadBytes` + 16 KiB.
const OVERHEAD: usize = 16 * 1024;

/// The raw key of the ring's current kid, read like an attacker who stole
/// the Secret would (used here to build entries with a valid MAC around
/// content the product's signer would never produce).
fn raw_current_key(dir: &Path) -> (String, Vec<u8>) {
    let kid = std::fs::read_to_string(dir.join("current"))
        .expect("read current")
        .trim()
        .to_string();
    let b64 = std::fs::read_to_string(dir.join(&kid)).expect("read the key");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("base64 key");
    (kid, raw)
}

/// HKDF-SHA256 (salt `sluice-ipc-v1`, info `sluice/request/<ns/p>/work`:
/// the request key of group `work`) as docs/wire-format.md specifies, then
/// lowercase-hex HMAC-SHA256 of v ‖ m.
fn request_mac(raw: &[u8], v: &[u8], m: &[u8]) -> Vec<u8> {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(b"sluice-ipc-v1"), raw);
    let mut key = [0u8; 32];
    hk.expand(b"sluice/request/default/forge/work", &mut key)
        .expect("32 bytes");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(v);
    mac.update(m);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into_bytes()
}

/// An entry with a valid MAC (current kid, `work`'s request key) over
/// arbitrary `v` and `m`: what a holder of that key can write.
fn mac_signed(kid: &str, raw: &[u8], v: &[u8], m: Vec<u8>) -> StreamEntry {
    StreamEntry {
        v: Bytes::copy_from_slice(v),
        k: Bytes::copy_from_slice(kid.as_bytes()),
        s: request_mac(raw, v, &m).into(),
        m: m.into(),
        note: Bytes::new(),
    }
}

/// A genuine-looking request for node `stamp`; executing it would show as
/// `reply_dropped`.
fn request(keys: &Keys) -> Envelope {
    unanswerable_request(keys, "work", "stamp", json!({"id": "forged"}))
}

/// A signer holding `kid` with a key that is not the ring's.
fn impostor(kid: &str) -> Signer {
    let raw = BTreeMap::from([(
        kid.to_string(),
        sluice_platform::keyring::random_key().to_vec(),
    )]);
    Signer::new(
        SharedKeyRing::fixed(KeyRing::from_raw(kid, &raw).expect("a valid ring")),
        &Keys::new("default", "forge"),
        "web",
    )
}

/// Signs `env` with a full ring, which derives every key.
fn signed(signer: &Signer, env: &mut Envelope) -> StreamEntry {
    signer.sign(env).expect("a ring derives every key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_entries_on_a_group_stream_are_refused_by_reason_and_never_executed() {
    let sb = Sandbox::new("forged-entries");
    let redis = RedisServer::start(false);
    let keys_dir = sb.keygen();
    let pipeline = sb.write("forge.yaml", MANIFEST);
    let worker = Service::start(
        &sb,
        Spec::worker(&pipeline, "work").redis(&redis.url(), &keys_dir),
    )
    .await;
    let ingress =
        Service::start(&sb, Spec::ingress(&pipeline).redis(&redis.url(), &keys_dir)).await;
    let http = Http::new(Duration::from_secs(15));
    let url = ingress.url("/v1/stamp");

    // Baseline: a genuine request is executed and answered.
    let a = http
        .post_when_connected(&url, &json!({"id": "before"}), Duration::from_secs(10))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"stamped": "before"}));
    let metrics_url = worker.url("/metrics");
    let metrics = || scrape(&metrics_url);
    let outcome =
        |s: &sluice_e2e::Scrape, o: &str| s.count("sluice_worker_entries_total", &[("outcome", o)]);
    // The reply reaches the caller before the worker counts it: the
    // baseline is read once the worker is idle and has counted the one reply.
    let (before, _) = eventually(
        Duration::from_secs(10),
        "the baseline reply counted and the worker idle",
        || async {
            let s = metrics().await;
            let replied = outcome(&s, "replied");
            let busy = s.count("sluice_worker_in_flight", &[("group", "work")]);
            if replied == 1 && busy == 0 {
                Ok(s)
            } else {
                Err(format!("replied {replied} (want 1), in flight {busy}"))
            }
        },
    )
    .await;

    let keys = Keys::new("default", "forge");
    let queue = keys.queue("work");
    let ring = SharedKeyRing::from_dir(&keys_dir).expect("the test reads the same ring");
    let signer = Signer::new(ring, &keys, "web");
    let (kid, raw) = raw_current_key(&keys_dir);
    // The test's own MAC matches the product's: the entries below that
    // claim a valid MAC really have one.
    let genuine = signed(&signer, &mut request(&keys));
    assert_eq!(
        mac_signed(&kid, &raw, &genuine.v, genuine.m.to_vec()),
        genuine,
        "the test's HMAC differs from the product's signer"
    );

    let redis_q = RedisBackend::connect(RedisConfig::from_url(&redis.url()).expect("URL"))
        .await
        .expect("connect to Redis");
    let probe = Probe::new(redis.port());
    let mut entries: Vec<(&str, StreamEntry)> = vec![];
    let mut expect: BTreeMap<&str, u64> = BTreeMap::new();
    let mut add = |reason: &'static str, e: StreamEntry| {
        *expect.entry(reason).or_default() += 1;
        entries.push((reason, e));
    };

    // Bad MAC: the ring's kid, another key.
    add("bad_mac", signed(&impostor(&kid), &mut request(&keys)));
    // Unknown kid.
    add(
        "unknown_kid",
        signed(&impostor("k-not-in-the-ring"), &mut request(&keys)),
    );
    // Timestamp from the future (beyond the 30 s default clock skew).
    let mut env = request(&keys);
    env.ts = now_ms() + 600_000;
    env.nonce = new_nonce();
    add("from_future", signer.sign_as_is(&env).expect("a ring"));
    // Deadline passed.
    let mut env = request(&keys);
    env.deadline = now_ms() - 1_000;
    add("expired", signed(&signer, &mut env));
    // Genuinely signed for another group (with that group's request key)
    // and copied here: the MAC fails under `work`'s key.
    for dest in ["other", "web"] {
        let mut env = request(&keys);
        env.dest = dest.to_string();
        add("bad_mac", signed(&signer, &mut env));
    }
    // Signed with `work`'s own request key, but addressed to another
    // group, the ingress group, another pipeline: only a holder of that
    // key can write these, and they still do not run.
    for (dest, pipe) in [
        ("other", "default/forge"),
        ("web", "default/forge"),
        ("work", "default/elsewhere"),
    ] {
        let mut env = request(&keys);
        env.dest = dest.to_string();
        env.pipeline = pipe.to_string();
        env.ts = now_ms();
        env.nonce = new_nonce();
        let m = sluice_platform::codec::encode(&env, Format::Binary);
        add("wrong_destination", mac_signed(&kid, &raw, b"3", m));
    }
    // A reply (signed with a reply key) pushed as a request: its key id
    // `<kid>/<group>` is no request's...
    let mut reply = request(&keys).reply(Ok(json!({"stamped": "forged"})));
    let reply = signed(&signer, &mut reply);
    add("unknown_kid", reply.clone());
    // ...and with the kid alone it fails the MAC.
    add(
        "bad_mac",
        StreamEntry {
            k: Bytes::copy_from_slice(kid.as_bytes()),
            ..reply
        },
    );
    // A reply-kind message under a valid request MAC.
    let mut reply = request(&keys).reply(Ok(json!(1)));
    reply.ts = now_ms();
    reply.nonce = new_nonce();
    add(
        "wrong_kind",
        mac_signed(
            &kid,
            &raw,
            b"2",
            sluice_platform::codec::encode(&reply, Format::Json),
        ),
    );
    // The previous format version, with a valid MAC over it.
    add(
        "bad_version",
        mac_signed(&kid, &raw, b"1", genuine.m.to_vec()),
    );
    // Valid MACs around things that are not envelopes, in either format
    // read.
    add(
        "malformed",
        mac_signed(&kid, &raw, b"2", b"{not json".to_vec()),
    );
    add(
        "malformed",
        mac_signed(&kid, &raw, b"3", b"\x07 no kind".to_vec()),
    );
    let mut trailing = sluice_platform::codec::encode(&request(&keys), Format::Binary);
    trailing.extend_from_slice(b" {}");
    add("malformed", mac_signed(&kid, &raw, b"3", trailing));
    let mut with_extra = serde_json::to_value(request(&keys)).unwrap();
    with_extra["exec"] = json!("rm -rf /");
    add(
        "malformed",
        mac_signed(&kid, &raw, b"2", serde_json::to_vec(&with_extra).unwrap()),
    );
    // Garbage in every field.
    add(
        "bad_version",
        StreamEntry {
            v: Bytes::from_static(b"\xff\x00garbage"),
            k: Bytes::from_static(b"??"),
            m: Bytes::from_static(b"\x00\x01\x02"),
            s: Bytes::from_static(b"zz"),
            note: Bytes::new(),
        },
    );
    add(
        "bad_mac",
        StreamEntry {
            v: Bytes::from_static(b"2"),
            k: Bytes::copy_from_slice(kid.as_bytes()),
            m: Bytes::from_static(b"garbage"),
            s: Bytes::from_static(b"not hex at all"),
            note: Bytes::new(),
        },
    );
    // Oversized: refused before anything is looked at.
    add(
        "oversized",
        StreamEntry {
            v: genuine.v.clone(),
            k: genuine.k.clone(),
            m: vec![b'x'; MAX_PAYLOAD + OVERHEAD + 1].into(),
            s: genuine.s.clone(),
            note: Bytes::new(),
        },
    );
    // Any single byte flipped, in every field of a valid entry.
    for field in 0..4 {
        let len = [&genuine.v, &genuine.k, &genuine.m, &genuine.s][field].len();
        for i in 0..len {
            let mut e = genuine.clone();
            let target = match field {
                0 => &mut e.v,
                1 => &mut e.k,
                2 => &mut e.m,
                _ => &mut e.s,
            };
            let mut bytes = target.to_vec();
            bytes[i] ^= 0x01;
            // `2` flipped is `3`, a version also read: the MAC, which
            // covers `v`, refuses it.
            let reason = match field {
                0 if sluice_platform::codec::readable(&bytes) => "bad_mac",
                _ => ["bad_version", "unknown_kid", "bad_mac", "bad_mac"][field],
            };
            *target = bytes.into();
            add(reason, e);
        }
    }
    // Replay: a valid entry added twice. One of the two runs (its reply
    // address is gone, so it ends as `reply_dropped`); the other is a replay.
    add("replay", genuine.clone());
    entries.push(("genuine", genuine));

    for (_, e) in &entries {
        redis_q
            .push(&queue, e.clone())
            .await
            .expect("push a forged entry");
    }
    // Fields that are not v/k/m/s at all.
    probe
        .xadd(&queue, &[(b"foo", b"bar"), (b"\xff", b"\x00")])
        .expect("XADD garbage fields");
    *expect.entry("bad_version").or_default() += 1;

    let (after, _) = eventually(
        Duration::from_secs(20),
        "every forged entry refused, counted by reason, and removed",
        || async {
            let s = metrics().await;
            let got = s.by_label("sluice_envelopes_rejected_total", "reason");
            let got: BTreeMap<&str, u64> = got
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.as_str(), *n))
                .collect();
            let (len, pending) = (probe.xlen(&queue)?, probe.pending(&queue)?);
            // The hand-off empties the queue before the worker counts the
            // outcome: wait for the worker to be idle too.
            let busy = s.count("sluice_worker_in_flight", &[("group", "work")]);
            if got == expect && len == 0 && pending == 0 && busy == 0 {
                Ok(s)
            } else {
                Err(format!(
                    "rejections {got:?} (want {expect:?}); queue length {len}, pending {pending}, in flight {busy}"
                ))
            }
        },
    )
    .await;

    // Nothing forged executed: no reply and no forward beyond the baseline,
    // and exactly one execution of the genuine entry that was replayed.
    assert_eq!(outcome(&after, "replied"), outcome(&before, "replied"));
    assert_eq!(outcome(&after, "forwarded"), outcome(&before, "forwarded"));
    assert_eq!(
        outcome(&after, "reply_dropped"),
        1,
        "the genuine entry ran exactly once (its replay did not):\n{}",
        after.text()
    );
    let refused: u64 = expect.values().sum();
    assert_eq!(
        outcome(&after, "rejected") + outcome(&after, "expired"),
        refused,
        "every refused entry is counted as an outcome too"
    );

    // The worker keeps serving.
    let a = http
        .post(&url, &json!({"id": "after"}), None)
        .await
        .expect("an answer");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"stamped": "after"}));
    eprintln!("forged entries: {refused} refused by reason {expect:?}; worker still serving");
}
