//! Delivery over leases: a handler that runs several lease periods is not
//! redelivered while its worker is alive (the lease is renewed), and a node
//! that always fails retryably is tried `maxDeliveries` times, then
//! dead-lettered, and its caller gets `502 retries_exhausted`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice_e2e::resp::Probe;
use sluice_e2e::{eventually, scrape, Http, Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::Keys;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The handler runs three lease periods. The lease is renewed every
/// `lease/3`, so a renewal may stall for about two thirds of a lease before
/// the other worker reclaims: 1 s keeps that well above a slow machine's
/// scheduling hiccups (the timeout leaves the 3 s handler room to queue).
const SLOW: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata:
  name: slow
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
      with: { duration: 3s }
      next: stamp
    - name: stamp
      group: work
      uses: builtin/json-map
      with:
        template: { done: "${/n}" }
  limits: { lease: 1s }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_running_several_leases_is_not_redelivered() {
    let sb = Sandbox::new("slow-but-alive");
    let redis = RedisServer::start(false);
    let keys = sb.keygen();
    let pipeline = sb.write("slow.yaml", SLOW);
    // Two workers: a lapsed lease would be reclaimed by the other one.
    let mut workers = vec![];
    for name in ["worker-a", "worker-b"] {
        let spec = Spec::worker(&pipeline, "work")
            .named(name)
            .redis(&redis.url(), &keys);
        workers.push(Service::start(&sb, spec).await);
    }
    let ingress = Service::start(&sb, Spec::ingress(&pipeline).redis(&redis.url(), &keys)).await;
    let http = Http::new(Duration::from_secs(15));
    let url = ingress.url("/v1/slow");
    let a = http
        .post_when_connected(&url, &json!({"n": 0}), Duration::from_secs(10))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let answers = futures::future::join_all((1..=6).map(|n| {
        let (http, url) = (&http, &url);
        async move { (n, http.post(url, &json!({"n": n}), None).await) }
    }))
    .await;
    for (n, r) in answers {
        let r = r.unwrap_or_else(|e| panic!("request {n}: {e}"));
        assert_eq!(r.status, 200, "request {n}: {}", r.text());
        assert_eq!(r.json(), json!({"done": n}));
    }
    // A reply reaches its caller before the worker counts it: read the
    // counts once both workers are idle.
    let (redeliveries, _) = eventually(
        Duration::from_secs(10),
        "each request counted as replied exactly once, both workers idle",
        || async {
            let (mut redeliveries, mut replied, mut busy) = (0, 0, 0);
            for w in &workers {
                let m = scrape(&w.url("/metrics")).await;
                redeliveries += m.count("sluice_worker_redeliveries_total", &[]);
                replied += m.count("sluice_worker_entries_total", &[("outcome", "replied")]);
                busy += m.count("sluice_worker_in_flight", &[("group", "work")]);
            }
            if replied == 7 && busy == 0 {
                Ok(redeliveries)
            } else {
                Err(format!("replied {replied} (want 7), in flight {busy}"))
            }
        },
    )
    .await;
    assert_eq!(redeliveries, 0, "a busy worker's entries were redelivered");
    let im = scrape(&ingress.url("/metrics")).await;
    assert_eq!(
        im.count("sluice_ingress_replies_dropped_total", &[]),
        0,
        "duplicate or late replies reached the ingress:\n{}",
        im.text()
    );
}

/// A local HTTP service that answers every request `500` and counts them.
async fn failing_service() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let port = listener.local_addr().expect("local address").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                // Read the head and the body it announces, then answer.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n\
                          content-length: 4\r\nconnection: close\r\n\r\noops",
                    )
                    .await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (port, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_failing_retryably_is_dead_lettered_after_max_deliveries() {
    let sb = Sandbox::new("dead-letter");
    let redis = RedisServer::start(false);
    let keys = sb.keygen();
    let (port, hits) = failing_service().await;
    let pipeline = sb.write(
        "dlq.yaml",
        &format!(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata:
  name: dlq
spec:
  backends: {{ queue: redis, kv: redis, reply: redis }}
  interfaces:
    - {{ name: call, kind: http, path: /v1/call, entry: call, timeout: 10s }}
  groups:
    - {{ name: web, role: ingress }}
    - {{ name: work, role: worker, concurrency: 2 }}
  nodes:
    - name: call
      group: work
      uses: builtin/http
      with: {{ url: "http://127.0.0.1:{port}/always-500", timeout: 2s }}
  limits: {{ maxDeliveries: 3, lease: 200ms }}
"#
        ),
    );
    let worker = Service::start(
        &sb,
        Spec::worker(&pipeline, "work").redis(&redis.url(), &keys),
    )
    .await;
    let ingress = Service::start(&sb, Spec::ingress(&pipeline).redis(&redis.url(), &keys)).await;
    let http = Http::new(Duration::from_secs(20));
    let a = http
        .post_when_connected(
            &ingress.url("/v1/call"),
            &json!({"order": 7}),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(
        a.error_code().as_deref(),
        Some("retries_exhausted"),
        "{}",
        a.text()
    );
    assert!(
        a.json().pointer("/error/request_id").is_some(),
        "error body has a request id: {}",
        a.text()
    );

    let k = Keys::new("default", "dlq");
    let probe = Probe::new(redis.port());
    assert_eq!(
        probe.xlen(&k.dead_letter()),
        Ok(1),
        "dead-letter stream length"
    );
    // Exactly maxDeliveries attempts, and no more later (several leases on).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "attempts at the failing service"
    );
    assert_eq!(
        probe.xlen(&k.dead_letter()),
        Ok(1),
        "dead-letter stream length"
    );
    eventually(Duration::from_secs(5), "work queue empty", || async {
        let (len, pending) = (
            probe.xlen(&k.queue("work"))?,
            probe.pending(&k.queue("work"))?,
        );
        if (len, pending) == (0, 0) {
            Ok(())
        } else {
            Err(format!("length {len}, pending {pending}"))
        }
    })
    .await;
    let m = scrape(&worker.url("/metrics")).await;
    let outcome = |o| m.count("sluice_worker_entries_total", &[("outcome", o)]);
    assert_eq!(outcome("retried"), 2, "{}", m.text());
    assert_eq!(outcome("dead_lettered"), 1, "{}", m.text());
    assert_eq!(
        m.count("sluice_worker_redeliveries_total", &[]),
        2,
        "{}",
        m.text()
    );
}
