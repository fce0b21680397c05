//! The replay guard's share of managed Redis: each request a worker takes
//! leaves one nonce key in Redis until its deadline plus `clockSkew`. The
//! ingress counts what its admitted requests may hold against its share of
//! `redis.maxMemory` and refuses more with `503 overloaded` and a
//! `Retry-After` of when the oldest nonces expire, instead of letting them
//! fill Redis until it refuses the writes that carry work. Once they have
//! expired, requests are admitted again.
//!
//! ```text
//!   caller ─HTTP─▶ ingress (budget: 8 MiB / nonce size / 1000 replicas) ─▶ Redis ◀─ worker (SET n:… NX PX)
//! ```

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_e2e::resp::{Probe, Resp};
use sluice_e2e::{Http, Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;

// The smallest maxMemory beside a queue larger than it leaves the floor, a
// quarter of maxMemory, for nonces; split over 1000 ingress replicas that is
// a few dozen per ingress.
const PIPELINE: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: budget, namespace: default }
spec:
  backends: { queue: redis, kv: redis, reply: redis }
  interfaces:
    - { name: echo, kind: http, path: /v1/echo, entry: echo, timeout: 5s }
  groups:
    - { name: web, role: ingress, replicas: 1000 }
    - { name: work, role: worker }
  nodes:
    - { name: echo, group: work, uses: builtin/echo }
  redis: { maxMemory: 32Mi }
  security: { clockSkew: 1s }
  limits: { lease: 1s }
"#;

fn nonce_keys(probe: &Probe) -> usize {
    match probe.cmd(&[b"KEYS", b"sluice:{default/budget}:n:*"]) {
        Ok(Resp::Array(Some(keys))) => keys.len(),
        other => panic!("KEYS answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_replay_budget_get_503_until_their_nonces_expire() {
    let (_, plan) = sluice_crds::parse_manifest("budget.yaml", PIPELINE).expect("the manifest");
    let budget = plan.replay_budget.expect("managed Redis has a budget") as usize;
    assert!((10..100).contains(&budget), "{budget}");

    let sb = Sandbox::new("replay-budget");
    let redis = RedisServer::start(false);
    let probe = Probe::new(redis.port());
    let keys = sb.keygen();
    let pipeline = sb.write("budget.yaml", PIPELINE);
    let ingress = Service::start(&sb, Spec::ingress(&pipeline).redis(&redis.url(), &keys)).await;
    let _worker = Service::start(
        &sb,
        Spec::worker(&pipeline, "work").redis(&redis.url(), &keys),
    )
    .await;
    let http = Http::new(Duration::from_secs(10));
    let url = ingress.url("/v1/echo");

    let mut retry = None;
    for attempt in 0..3 {
        // One request per nonce of the budget, one after the other; the
        // first waits for the ingress's Redis connection (at once, once
        // connected). The oldest nonce was claimed no earlier than its
        // request's own (last) attempt began.
        let first = http
            .post_when_connected(&url, &json!({"n": 0}), Duration::from_secs(20))
            .await;
        let started = Instant::now() - first.elapsed;
        assert_eq!(first.status, 200, "{}", first.text());
        for n in 1..budget {
            let a = http
                .post(&url, &json!({ "n": n }), None)
                .await
                .expect("an answer");
            assert_eq!(a.status, 200, "request {n}: {}", a.text());
        }
        // The oldest nonce lives 5 s (the deadline) + 1 s (skew). A fill
        // slower than that cannot show the refusal: every nonce is left to
        // expire and the budget is filled again.
        let filled = started.elapsed();
        if filled >= Duration::from_secs(5) {
            eprintln!("attempt {attempt}: filling the budget took {filled:?}; again once its nonces expired");
            tokio::time::sleep(Duration::from_secs(7)).await;
            continue;
        }
        // Every answered request left exactly one nonce in Redis.
        assert_eq!(nonce_keys(&probe), budget);

        // One more would exceed the budget: refused at once, told when to
        // come back (deadline 5 s + skew 1 s + 1 s for Redis's expiry, at
        // most).
        let refused = http
            .post(&url, &json!({"n": "over"}), None)
            .await
            .expect("an answer");
        assert_eq!(refused.status, 503, "{}", refused.text());
        assert_eq!(
            refused.error_code().as_deref(),
            Some("overloaded"),
            "{}",
            refused.text()
        );
        assert!(
            refused.text().contains("redis.maxMemory"),
            "{}",
            refused.text()
        );
        let after: u64 = refused
            .retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        assert!((1..=8).contains(&after), "Retry-After {after}");
        assert_eq!(
            nonce_keys(&probe),
            budget,
            "a refused request claims nothing"
        );
        retry = Some(after);
        break;
    }
    let retry = retry.expect("the budget was never filled within its oldest nonce's life");

    // After the oldest nonces' expiry, requests are admitted again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let again = http
        .post(&url, &json!({"n": "again"}), None)
        .await
        .expect("an answer");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json(), json!({"n": "again"}));
}
