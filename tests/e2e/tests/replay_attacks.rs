//! Replay attacks by someone who can write to Redis and has captured a
//! genuine entry (DESIGN §6): neither steers the replay guard of the
//! `sluice-exec-worker` processes.
//!
//! ```text
//!   copy ─XADD─▶ q:other ─▶ other worker: bad_mac, its own request key (nonce untouched)
//!        ─XADD─▶ q:work  ─▶ work worker: runs once, its nonce claimed with the entry id
//!   DEL q:work; XADD q:work <original id> <captured entry>
//!                        ─▶ work worker: replay (a first delivery of a seen id)
//! ```

use std::time::Duration;

use serde_json::json;
use sluice_e2e::forge::unanswerable_request;
use sluice_e2e::resp::{Probe, Resp};
use sluice_e2e::{eventually, scrape, Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::{Keys, Queue, RedisBackend, RedisConfig, SharedKeyRing, Signer};

const MANIFEST: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata:
  name: replays
spec:
  backends: { queue: redis, kv: redis, reply: redis }
  interfaces:
    - { name: stamp, kind: http, path: /v1/stamp, entry: stamp, timeout: 5s }
    - { name: audit, kind: http, path: /v1/audit, entry: audit, timeout: 5s }
  groups:
    - { name: web, role: ingress }
    - { name: work, role: worker }
    - { name: other, role: worker }
  nodes:
    - { name: stamp, group: work, uses: builtin/json-map, with: { template: { stamped: "${/id}" } } }
    - { name: audit, group: other, uses: builtin/echo }
"#;

/// `(executions, replays, bad MACs)` a worker counted.
async fn counts(worker: &Service) -> (u64, u64, u64) {
    let s = scrape(&worker.url("/metrics")).await;
    (
        s.count(
            "sluice_worker_entries_total",
            &[("outcome", "reply_dropped")],
        ),
        s.count("sluice_envelopes_rejected_total", &[("reason", "replay")]),
        s.count("sluice_envelopes_rejected_total", &[("reason", "bad_mac")]),
    )
}

async fn settle(worker: &Service, what: &str, want: (u64, u64, u64)) {
    eventually(Duration::from_secs(15), what, || async {
        let got = counts(worker).await;
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "(executions, replays, bad MACs) {got:?}, want {want:?}"
            ))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_into_another_queue_or_a_rewritten_queue_history_never_runs_an_entry_twice() {
    let sb = Sandbox::new("replay-attacks");
    let redis = RedisServer::start(false);
    let keys_dir = sb.keygen();
    let pipeline = sb.write("replays.yaml", MANIFEST);
    let work = Service::start(
        &sb,
        Spec::worker(&pipeline, "work").redis(&redis.url(), &keys_dir),
    )
    .await;
    let other = Service::start(
        &sb,
        Spec::worker(&pipeline, "other").redis(&redis.url(), &keys_dir),
    )
    .await;
    let keys = Keys::new("default", "replays");
    let signer = Signer::new(
        SharedKeyRing::from_dir(&keys_dir).expect("the ring"),
        &keys,
        "web",
    );
    let captured = signer
        .sign(&mut unanswerable_request(
            &keys,
            "work",
            "stamp",
            json!({"id": "captured"}),
        ))
        .expect("a ring derives every key");
    let q = RedisBackend::connect(RedisConfig::from_url(&redis.url()).expect("URL"))
        .await
        .expect("connect to Redis");

    // 1. The captured entry copied into another group's queue first: that
    // group verifies with its own request key, so the MAC fails before
    // anything is decoded and no nonce is claimed...
    q.push(&keys.queue("other"), captured.clone())
        .await
        .expect("XADD the copy");
    settle(&other, "the copy refused by the other group", (0, 0, 1)).await;
    // ...so the original still runs, once, where it belongs.
    let original_id = q
        .push(&keys.queue("work"), captured.clone())
        .await
        .expect("XADD the original");
    settle(&work, "the original run once", (1, 0, 0)).await;

    // 2. History rewritten: the queue deleted and the captured entry added
    // back under its original id. It arrives as a first delivery (count 1)
    // of the id the guard has seen: a replay.
    let probe = Probe::new(redis.port());
    let stream = keys.queue("work");
    probe
        .cmd(&[b"DEL", stream.as_bytes()])
        .expect("DEL the queue");
    probe
        .cmd(&[
            b"XADD",
            stream.as_bytes(),
            original_id.as_bytes(),
            b"v",
            &captured.v,
            b"k",
            &captured.k,
            b"m",
            &captured.m,
            b"s",
            &captured.s,
        ])
        .expect("XADD under the original id");
    settle(&work, "the re-added entry refused as a replay", (1, 1, 0)).await;
    let nonce_keys = probe
        .cmd(&[b"KEYS", b"sluice:{default/replays}:n:*"])
        .expect("KEYS");
    let listed: Vec<String> = match nonce_keys {
        Resp::Array(Some(items)) => items
            .into_iter()
            .filter_map(|i| match i {
                Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            })
            .collect(),
        other => panic!("KEYS answered {other:?}"),
    };
    let listed = listed.join(" ");
    assert!(
        listed.contains(":n:work:") && !listed.contains(":n:other:"),
        "the nonce lives under its destination group only: {listed}"
    );
}
