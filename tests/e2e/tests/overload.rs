//! Overload on the Redis backbone: with no worker reading, a group's queue
//! fills up to `maxQueueDepth`; from then on the ingress refuses new work
//! with `503 overloaded` and `Retry-After` instead of queueing what nobody
//! will read in time, and it admits work again once a worker drains the
//! queue. The requests already queued are answered, none lost.
//!
//! ```text
//!   callers ─HTTP─▶ ingress ──▶ sluice:{default/overload}:q:work (XLEN sampled every 250 ms)
//!                                   ▲ no worker, then one
//! ```

use std::time::Duration;

use serde_json::json;
use sluice_e2e::resp::Probe;
use sluice_e2e::{eventually, scrape, Http, Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;

const PIPELINE: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: overload }
spec:
  backends: { queue: redis, kv: redis, reply: redis }
  interfaces:
    - { name: echo, kind: http, path: /v1/echo, entry: echo, timeout: 30s }
  groups:
    - { name: web, role: ingress }
    - { name: work, role: worker }
  nodes:
    - { name: echo, group: work, uses: builtin/echo }
  limits: { maxQueueDepth: 5, lease: 1s }
"#;

const DEPTH: usize = 5;
const QUEUE: &str = "sluice:{default/overload}:q:work";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_new_work_with_503_and_admits_it_again_once_drained() {
    let sb = Sandbox::new("overload");
    let redis = RedisServer::start(false);
    let probe = Probe::new(redis.port());
    let keys = sb.keygen();
    let pipeline = sb.write("overload.yaml", PIPELINE);
    let ingress = Service::start(&sb, Spec::ingress(&pipeline).redis(&redis.url(), &keys)).await;
    let metrics = ingress.url("/metrics");
    let depth = || {
        let metrics = metrics.clone();
        async move {
            let m = scrape(&metrics).await;
            let text = m.text().to_string();
            text.contains("sluice_ingress_queue_depth{group=\"work\"}")
                .then(|| m.sum("sluice_ingress_queue_depth", &[("group", "work")]))
                .ok_or(text)
        }
    };
    // Fill the queue: these wait, since no worker reads. Until its Redis
    // connection and reply stream are up the ingress answers 503
    // backend_unavailable at once; a request still waiting is queued.
    let http = Http::new(Duration::from_secs(40));
    let url = ingress.url("/v1/echo");
    let send = |i: usize| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move { http.post(&url, &json!({"n": i}), None).await })
    };
    let mut waiting = Vec::new();
    let started = std::time::Instant::now();
    while waiting.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "never queued");
        let first = send(0);
        // Queued once it is in the stream; answered at once (503) while
        // the ingress is not yet connected. Which of the two is read from
        // Redis and the answer, not guessed from how long it takes.
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "neither queued nor answered"
            );
            if first.is_finished() {
                let a = first.await.expect("the task").expect("an answer");
                assert_eq!(
                    a.error_code().as_deref(),
                    Some("backend_unavailable"),
                    "{}",
                    a.text()
                );
                break;
            }
            if probe.xlen(QUEUE).expect("XLEN") >= 1 {
                waiting.push(first);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    waiting.extend((1..DEPTH).map(send));
    eventually(
        Duration::from_secs(20),
        "the sampled depth at the limit",
        || async {
            match depth().await {
                Ok(d) if d >= DEPTH as f64 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // Full: refused at once, with a hint when to come back.
    let a = http
        .post(&url, &json!({"n": "extra"}), None)
        .await
        .expect("an answer");
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(
        a.error_code().as_deref(),
        Some("overloaded"),
        "{}",
        a.text()
    );
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert!(a.elapsed < Duration::from_secs(2), "{:?}", a.elapsed);

    // A worker drains the queue: every queued request gets its own answer.
    let _worker = Service::start(
        &sb,
        Spec::worker(&pipeline, "work").redis(&redis.url(), &keys),
    )
    .await;
    for (i, w) in waiting.into_iter().enumerate() {
        let a = w.await.expect("the task").expect("an answer");
        assert_eq!(a.status, 200, "request {i}: {}", a.text());
        assert_eq!(a.json(), json!({"n": i}));
    }
    // And new work is admitted again once the sampler has seen it.
    eventually(Duration::from_secs(20), "new work admitted", || async {
        let a = http.post(&url, &json!({"n": "after"}), None).await?;
        if a.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", a.status, a.text()))
        }
    })
    .await;
}
