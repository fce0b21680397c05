//! A spec change rolled out under load, against the processes the operator
//! asks for (the rig of `runtime_roundtrip.rs`): pods of the old and the new
//! graph run side by side, as in a rolling update, while callers keep
//! sending, and no request fails.

mod kubelet;
mod roundtrip;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde_json::json;
use sluice_crds::StreamPipeline;

use kubelet::Materialised;
use roundtrip::*;

/// How long a caller waits for an answer: requests for a node whose new
/// workers have not started yet wait for them.
const PATIENCE: Duration = Duration::from_secs(40);

/// The orders pipeline's next generation: `price` moves from `cpu` to
/// `io` (the graph changes: `standard` now hands off to `io` for it) and
/// charges 7 instead of 5 (its configuration changes).
fn next_generation(sp: &StreamPipeline) -> StreamPipeline {
    let mut next = sp.clone();
    let price = next
        .spec
        .nodes
        .iter_mut()
        .find(|n| n.name == "price")
        .expect("a price node");
    price.group = "io".into();
    price.with = Some(json!({
        "template": {"id": "${/id}", "lane": "${/lane}", "items": "${/items}", "price": 7}
    }));
    next
}

/// `sluice_worker_entries_total{outcome}` of a worker, from its `/metrics`.
async fn outcome(client: &reqwest::Client, m: &Materialised, outcome: &str) -> u64 {
    let probe = m.readiness.as_ref().expect("a readiness probe");
    let (port, _) = m.http_probe(probe).unwrap();
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("sluice_worker_entries_total{")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What the callers got.
#[derive(Default)]
struct Tally {
    /// Answers with the price of the old generation (5), the new one (7)
    /// and of the rush lane (0).
    old: u64,
    new: u64,
    rush: u64,
    /// Anything else: status, order id and body.
    failures: Vec<(u16, String, String)>,
}

/// Callers sending orders to whichever ingress `target` names, until
/// `stop`; each checks its answer.
fn callers(
    n: usize,
    target: Arc<RwLock<SocketAddr>>,
    stop: Arc<AtomicBool>,
    tally: Arc<parking_lot::Mutex<Tally>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();
    (0..n)
        .map(|c| {
            let (client, target, stop, tally) =
                (client.clone(), target.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let id = format!("C{c}-{i}");
                    let kind = if i % 4 == 0 { "priority" } else { "standard" };
                    let addr = *target.read();
                    let (status, got) =
                        post(&client, addr, json!({"id": id, "type": kind, "items": 2})).await;
                    let mut t = tally.lock();
                    let lane = if kind == "priority" {
                        "rush"
                    } else {
                        "standard"
                    };
                    let well_formed = status == 200
                        && got["order"] == id
                        && got["status"] == "accepted"
                        && got["summary"] == format!("2 item(s) in the {lane} lane");
                    match (well_formed, kind, got["price"].as_i64()) {
                        (true, "priority", Some(0)) => t.rush += 1,
                        (true, "standard", Some(5)) => t.old += 1,
                        (true, "standard", Some(7)) => t.new += 1,
                        _ => t.failures.push((status, id, got.to_string())),
                    }
                }
            })
        })
        .collect()
}

/// Waits until the readiness probe of every container of `pod` answers 200.
async fn ready(client: &reqwest::Client, pod: &mut Pod) {
    let deadline = Instant::now() + READY_PATIENCE;
    for (p, m) in &mut pod.procs {
        while probe(client, m, "readiness").await != Some(200) {
            if let Some(status) = p.exited() {
                panic!("{} exited ({status}) before becoming ready", p.name);
            }
            assert!(Instant::now() < deadline, "{} never ready", p.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Stops the process of the first generation named `name` as the kubelet ends a pod
/// (SIGTERM; it drains what it holds) and waits for it to exit.
fn terminate(run: &mut Running, name: &str) {
    let (p, _) = run
        .procs
        .iter_mut()
        .find(|(p, _)| p.name.starts_with(name))
        .unwrap_or_else(|| panic!("no process {name}"));
    let status = tokio::task::block_in_place(|| p.terminate(Duration::from_secs(30)));
    assert!(status.success(), "{}: {status}", p.name);
}

/// The orders pipeline changed under load, rolled out group by group the way
/// a rolling update overlaps old and new pods: a `cpu` pod of the new graph
/// joins while `io` still runs the old one, so its hand-offs of `price` (a
/// node the old `io` does not run) reach old workers, which give them back;
/// a new `io` pod takes them, and runs what old `cpu` pods still send
/// (`summarize`, unchanged). Then the ingress is replaced. Every caller is
/// answered 200 with a price of one generation or the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_rolled_out_under_load_fails_no_request() {
    let mut sp = load("orders-redis.yaml");
    sp.spec.interfaces[0].timeout = Some("30s".into());
    let next = next_generation(&sp);
    let (mut run, client, (status, got)) =
        start_orders_redis(sp, json!({"id": "A0", "type": "standard", "items": 2})).await;
    assert_eq!((status, &got["price"]), (200, &json!(5)), "{got}");

    let target = Arc::new(RwLock::new(run.ingress));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(parking_lot::Mutex::new(Tally::default()));
    let load = callers(6, target.clone(), stop.clone(), tally.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A cpu pod of the new graph: its `standard` hands `price` to `io`,
    // whose only worker runs the old graph.
    let mut cpu = run.start_new_pod(
        &next,
        "orders-redis-cpu",
        "orders-redis-cpu-7c9b5d4f8-n3x7p",
    );
    ready(&client, &mut cpu).await;
    let io_old = run
        .procs
        .iter()
        .find(|(p, _)| p.name.starts_with("orders-redis-io"))
        .map(|(_, m)| m)
        .expect("an io process");
    let deadline = Instant::now() + Duration::from_secs(20);
    while outcome(&client, io_old, "handed_back").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the old io worker never saw a request of the new graph"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(outcome(&client, io_old, "failed").await, 0);
    terminate(&mut run, "orders-redis-cpu");

    // The new io pod takes what waited, then the old one goes.
    let mut io = run.start_new_pod(&next, "orders-redis-io", "orders-redis-io-7c9b5d4f8-k8r2m");
    ready(&client, &mut io).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    terminate(&mut run, "orders-redis-io");
    // Each one went back in one step, none left to its lease (a Redis user
    // refusing the step would leave them all, each counted a delivery).
    let log = run
        .procs
        .iter()
        .find(|(p, _)| p.name.starts_with("orders-redis-io"))
        .map(|(p, _)| p.output())
        .unwrap_or_default();
    assert!(!log.contains("cannot hand back"), "{log}");

    // A new ingress; callers move to it, and the old one drains.
    let mut web = run.start_new_pod(
        &next,
        "orders-redis-web",
        "orders-redis-web-7c9b5d4f8-w5q9z",
    );
    ready(&client, &mut web).await;
    *target.write() = web.ingress.expect("an ingress pod");
    terminate(&mut run, "orders-redis-web");
    tokio::time::sleep(Duration::from_secs(1)).await;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("a caller");
    }
    for (p, m) in cpu.procs.iter().chain(&io.procs) {
        assert_eq!(outcome(&client, m, "failed").await, 0, "{}", p.name);
    }
    let t = tally.lock();
    eprintln!(
        "answered: {} at price 5, {} at price 7, {} rush; {} failed",
        t.old,
        t.new,
        t.rush,
        t.failures.len()
    );
    assert!(
        t.failures.is_empty(),
        "{} of {} requests failed, first ones: {:?}",
        t.failures.len(),
        t.old + t.new + t.rush + t.failures.len() as u64,
        &t.failures[..t.failures.len().min(5)]
    );
    assert!(
        t.old > 0 && t.new > 0 && t.rush > 0,
        "both generations answered"
    );
}
