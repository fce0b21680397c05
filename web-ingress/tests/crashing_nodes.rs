//! A node that panics: its request is dead-lettered at once (one call, no
//! redelivery), its caller answered `500 node_crashed` long before the
//! interface timeout, and nothing stays held — no pending entry, no waiter,
//! in-flight gauges back to zero — in the memory profile (every group in the
//! ingress process) and on a real `redis-server` (the worker library as its
//! own consumer, as `sluice-exec-worker` runs it).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{error_parts, eventually, json_response, metric, scrape, url, Calls, Counting};
use serde_json::json;
use sluice_crds::BackendKind;
use sluice_exec_worker::process::ProcessConfig;
use sluice_exec_worker::{Node, Registry};
use sluice_platform::redis::testing::RedisServer;
use sluice_web_ingress::Ingress;

/// The interface timeout of `crashes.yaml`; a crash is answered well within it.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Three leases of `crashes.yaml`: a retried entry would be redelivered in this time.
const THREE_LEASES: Duration = Duration::from_millis(600);

/// `rust/panic` and `rust/count` on top of the built-in catalog, counting
/// their calls.
fn nodes() -> (Arc<Calls>, Arc<Calls>, Registry) {
    let panics = Arc::new(Calls::default());
    let counts = Arc::new(Calls::default());
    let mut r = {
        let panics = panics.clone();
        common::registry_with("rust/panic", move || common::Panicking {
            calls: panics.clone(),
        })
    };
    {
        let counts = counts.clone();
        r.register("rust/count", move |_cfg| {
            Ok(Arc::new(Counting {
                calls: counts.clone(),
            }) as Arc<dyn Node>)
        });
    }
    (panics, counts, r)
}

/// POSTs to `path` and checks the answer is `500 node_crashed` naming the
/// node but not quoting the panic, within the interface timeout.
async fn expect_crash_answer(client: &reqwest::Client, ingress: &Ingress, path: &str, node: &str) {
    let started = Instant::now();
    let resp = client
        .post(url(ingress.local_addr(), path))
        .json(&json!({"items": []}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let (status, _, body) = json_response(resp).await;
    assert_eq!(status, 500, "POST {path}: {body}");
    let (code, message, _) = error_parts(&body);
    assert_eq!(code, "node_crashed", "{body}");
    assert!(message.contains(&format!("`{node}`")), "{message}");
    assert!(
        !message.contains("index out of bounds"),
        "the panic's own text stays in the logs: {message}"
    );
    assert!(
        started.elapsed() < TIMEOUT,
        "answered only after the interface timeout: {:?}",
        started.elapsed()
    );
}

/// Entries in the pipeline's dead-letter stream.
async fn dead_letters(ingress: &Ingress) -> u64 {
    let st = ingress.state();
    st.queue
        .depth(&st.keys.dead_letter())
        .await
        .expect("dead-letter depth")
        .entries
}

/// Entries of the `work` queue delivered and not yet completed.
async fn pending_work(ingress: &Ingress) -> u64 {
    let st = ingress.state();
    st.queue
        .pending(&st.keys.queue("work"))
        .await
        .expect("pending entries of the work queue")
}

/// Waits until `text_of()` shows `sluice_worker_in_flight{group="work"}` at
/// 0 and `crashed` outcomes at `crashed`.
async fn await_worker_settled<F, Fut>(crashed: f64, mut text_of: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    eventually(
        Duration::from_secs(5),
        "worker in-flight gauge back to 0 and the crashes counted",
        move || {
            let text = text_of();
            async move {
                let text = text.await;
                let in_flight = metric(&text, "sluice_worker_in_flight", &[("group", "work")]);
                let outcome = metric(
                    &text,
                    "sluice_worker_entries_total",
                    &[("group", "work"), ("outcome", "crashed")],
                );
                (in_flight == Some(0.0) && outcome == Some(crashed)).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn memory_profile_worker_node_panic_is_dead_lettered_once_and_answered_at_once() {
    let (panics, counts, nodes) = nodes();
    let ingress = common::start_with("crashes.yaml", nodes).await;
    let client = common::client();

    // Three crashes on a group of concurrency 2: if a crash kept its slot
    // or its lease, the third (and the count below) would never be served.
    for _ in 0..3 {
        expect_crash_answer(&client, &ingress, "/v1/crash", "crash").await;
    }
    assert_eq!(panics.started(), 3, "one call per request");
    assert_eq!(panics.finished(), 0);
    assert_eq!(dead_letters(&ingress).await, 3, "one dead letter per crash");
    assert_eq!(pending_work(&ingress).await, 0, "no entry left pending");
    await_worker_settled(3.0, || std::future::ready(scrape(&ingress))).await;

    // Not redelivered: no further call once several leases have passed.
    tokio::time::sleep(THREE_LEASES).await;
    assert_eq!(panics.started(), 3, "a crashed entry is never retried");
    let text = scrape(&ingress);
    assert_eq!(
        metric(
            &text,
            "sluice_worker_redeliveries_total",
            &[("group", "work")]
        )
        .unwrap_or(0.0),
        0.0,
        "{text}"
    );

    // The worker keeps serving.
    let resp = client
        .post(url(ingress.local_addr(), "/v1/count"))
        .json(&json!({"n": 1}))
        .send()
        .await
        .expect("POST /v1/count");
    let (status, _, body) = json_response(resp).await;
    assert_eq!((status, body), (200, json!({"n": 1})));
    assert_eq!(counts.finished(), 1);
    assert_eq!(ingress.waiters(), 0);
    common::stop(ingress).await;
}

#[tokio::test]
async fn ingress_group_node_panic_is_dead_lettered_and_answered_without_retry() {
    let (panics, _, nodes) = nodes();
    let ingress = common::start_with("crashes.yaml", nodes).await;
    let client = common::client();

    expect_crash_answer(&client, &ingress, "/v1/crash-here", "crash-here").await;
    assert_eq!(panics.started(), 1, "an ingress-group crash is not retried");
    assert_eq!(dead_letters(&ingress).await, 1);
    let text = scrape(&ingress);
    assert_eq!(
        metric(
            &text,
            "sluice_ingress_in_flight",
            &[("interface", "crash-here")]
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(ingress.waiters(), 0);
    common::stop(ingress).await;
}

#[tokio::test]
async fn redis_profile_worker_node_panic_is_dead_lettered_once_and_answered_at_once() {
    let redis = RedisServer::start(false);
    let keys = tempfile::tempdir().expect("a key ring dir");
    sluice_web_ingress::keygen(&keys.path().join("ring")).expect("a key ring");
    let ring = keys.path().join("ring");
    let manifest = common::pipeline("crashes.yaml");

    let (panics, _, nodes) = nodes();
    let mut cfg = common::config(&manifest);
    cfg.backend = Some(BackendKind::Redis);
    cfg.redis = Some(redis.url());
    cfg.keys = Some(ring.clone());
    let ingress = sluice_web_ingress::start_with(cfg, nodes.clone())
        .await
        .expect("the ingress starts on redis");
    let worker = sluice_exec_worker::process::start(
        ProcessConfig {
            pipeline: manifest,
            backend: Some(BackendKind::Redis),
            group: "work".into(),
            redis: Some(redis.url()),
            hub: None,
            redis_timeout: None,
            redis_pool_size: None,
            redis_ca_file: None,
            redis_password_file: None,
            keys: sluice_exec_worker::process::KeySource::Dir(ring),
            admin: "127.0.0.1:0".parse().expect("an address"),
            concurrency: None,
            threads: 1,
            secrets_dir: "/nonexistent".into(),
            drain_timeout: Duration::from_secs(5),
            json_logs: false,
            exit_with_parent: false,
        },
        nodes,
    )
    .await
    .expect("the worker starts on redis");
    let client = common::client();
    let admin_metrics = url(worker.admin_addr, "/metrics");
    {
        let st = ingress.state().clone();
        eventually(
            Duration::from_secs(10),
            "the ingress's reply stream open on redis",
            move || std::future::ready(st.replies_open.load(Ordering::SeqCst).then_some(())),
        )
        .await;
    }

    expect_crash_answer(&client, &ingress, "/v1/crash", "crash").await;
    assert_eq!(panics.started(), 1);
    assert_eq!(dead_letters(&ingress).await, 1, "one dead letter");
    assert_eq!(pending_work(&ingress).await, 0, "no entry left pending");
    await_worker_settled(1.0, || {
        let client = client.clone();
        let admin_metrics = admin_metrics.clone();
        async move {
            match client.get(&admin_metrics).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        }
    })
    .await;
    tokio::time::sleep(THREE_LEASES).await;
    assert_eq!(panics.started(), 1, "a crashed entry is never retried");
    assert_eq!(pending_work(&ingress).await, 0);

    // The ingress-group path writes its dead letter to Redis as well.
    expect_crash_answer(&client, &ingress, "/v1/crash-here", "crash-here").await;
    assert_eq!(dead_letters(&ingress).await, 2);
    assert_eq!(ingress.waiters(), 0);

    worker.begin_drain();
    tokio::time::timeout(Duration::from_secs(10), worker.wait())
        .await
        .expect("the worker drains");
    common::stop(ingress).await;
}
