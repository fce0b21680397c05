//! Drain: SIGTERM to a worker under load loses nothing. The worker stops
//! reading, finishes and hands off what it holds, and exits 0; a second
//! worker serves the rest. Nothing the drained worker held has to be
//! reclaimed after a lease (the second worker sees no redelivery).
//!
//! ```text
//!   80 requests, 16 at a time ──▶ ingress ──▶ q:work ──▶ worker-a (SIGTERM while busy) ──▶ exit 0
//!                                                    └─▶ worker-b (keeps running)
//! ```

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use sluice_e2e::resp::Probe;
use sluice_e2e::{eventually, scrape, Http, Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::Keys;

const MANIFEST: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata:
  name: drain
spec:
  backends: { queue: redis, kv: redis, reply: redis }
  interfaces:
    - { name: slow, kind: http, path: /v1/slow, entry: wait, timeout: 10s }
  groups:
    - { name: web, role: ingress }
    - { name: work, role: worker, concurrency: 4 }
  nodes:
    - name: wait
      group: work
      uses: builtin/delay
      with: { duration: 300ms }
      next: stamp
    - name: stamp
      group: work
      uses: builtin/json-map
      with:
        template: { done: "${/n}" }
  limits: { lease: 1s }
"#;
const REQUESTS: usize = 80;
const CONCURRENCY: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_a_busy_worker_loses_nothing_and_it_exits_zero() {
    let sb = Sandbox::new("drain");
    let redis = RedisServer::start(false);
    let keys = sb.keygen();
    let pipeline = sb.write("drain.yaml", MANIFEST);
    let worker = |name: &str| {
        Spec::worker(&pipeline, "work")
            .named(name)
            .redis(&redis.url(), &keys)
            .arg("--concurrency")
            .arg("4")
            .arg("--drain-timeout")
            .arg("10s")
    };
    let mut a = Service::start(&sb, worker("worker-a")).await;
    let b = Service::start(&sb, worker("worker-b")).await;
    let ingress = Service::start(&sb, Spec::ingress(&pipeline).redis(&redis.url(), &keys)).await;
    let http = Http::new(Duration::from_secs(20));
    let url = ingress.url("/v1/slow");
    let warm = http
        .post_when_connected(&url, &json!({"n": -1}), Duration::from_secs(10))
        .await;
    assert_eq!(warm.status, 200, "{}", warm.text());

    let load = futures::stream::iter(0..REQUESTS)
        .map(|n| {
            let (http, url) = (&http, &url);
            async move { (n, http.post(url, &json!({"n": n}), None).await) }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>();
    let a_metrics = a.url("/metrics");
    let drain = async {
        // SIGTERM while worker-a has every slot busy.
        let (held, _) = eventually(Duration::from_secs(10), "worker-a busy", || async {
            let s = scrape(&a_metrics).await;
            match s.count("sluice_worker_in_flight", &[]) {
                4 => Ok(4),
                n => Err(format!("{n} in flight")),
            }
        })
        .await;
        a.terminate();
        let status = a.wait_exit(Duration::from_secs(10)).await;
        (held, status)
    };
    let (answers, (held, status)) = tokio::join!(load, drain);

    assert!(
        status.success(),
        "worker-a exited with {status} after SIGTERM"
    );
    for (n, answer) in &answers {
        let r = answer
            .as_ref()
            .unwrap_or_else(|e| panic!("request {n} got no answer: {e}"));
        assert_eq!(r.status, 200, "request {n}: {}", r.text());
        assert_eq!(r.json(), json!({"done": n}), "request {n}");
    }
    // Whatever worker-a held when it was told to stop, it handed off
    // itself: worker-b never had to reclaim a lapsed lease.
    let bm = scrape(&b.url("/metrics")).await;
    assert_eq!(
        bm.count("sluice_worker_redeliveries_total", &[]),
        0,
        "worker-b reclaimed entries worker-a left behind:\n{}",
        bm.text()
    );
    let probe = Probe::new(redis.port());
    let q = Keys::new("default", "drain").queue("work");
    assert_eq!(probe.pending(&q), Ok(0), "entries left pending");
    assert_eq!(probe.xlen(&q), Ok(0), "entries left queued");
    eprintln!("drain: worker-a held {held} entries at SIGTERM, exited {status}; {REQUESTS} requests answered 200");
}
