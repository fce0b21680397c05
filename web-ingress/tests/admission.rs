//! Admission control: blocked workers never stall acceptance, the in-flight
//! limit answers 429 and the backlog limit 503, exactly at their limits.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    error_parts, eventually, header, json_response, metric, scrape, url, Calls, NodeFuture,
};
use serde_json::{json, Value};
use sluice_exec_worker::{Node, NodeContext, NodeOutput};
use sluice_web_ingress::metrics::InterfaceLabel;
use sluice_web_ingress::Ingress;

/// How long `/healthz` may take while every worker thread is blocked: it
/// separates "served at once" from "served once a blocked thread returns",
/// with room for a loaded machine.
const HEALTHZ_BOUND: Duration = Duration::from_millis(750);

/// Holds `rust/block` calls until opened. It opens when dropped too (a
/// failed assertion unwinds through it), so no thread stays blocked after
/// the test: declare it after the ingress, so it is dropped first.
struct Gate(Arc<AtomicBool>);

impl Gate {
    fn open(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

/// `rust/block`: blocks its thread with `std::thread::sleep` (a node doing
/// synchronous I/O or a tight loop) until the test opens its [`Gate`], then
/// echoes its input. A fixed hold would have to outlast every check the
/// test makes meanwhile, however slow the machine.
struct Gated {
    open: Arc<AtomicBool>,
    calls: Arc<Calls>,
}

impl Node for Gated {
    fn call<'s, 'c, 'f>(&'s self, input: Value, _ctx: &'c NodeContext) -> NodeFuture<'f>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            self.calls.started.fetch_add(1, Ordering::SeqCst);
            while !self.open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            self.calls.finished.fetch_add(1, Ordering::SeqCst);
            Ok(NodeOutput::value(input))
        })
    }
}

fn in_flight(ingress: &Ingress, interface: &str) -> i64 {
    ingress
        .state()
        .metrics
        .in_flight
        .get_or_create(&InterfaceLabel {
            interface: interface.to_string(),
        })
        .get()
}

/// The backlog of `group` as the ingress last sampled it (what admission uses).
fn sampled_backlog(ingress: &Ingress, group: &str) -> Option<u64> {
    ingress
        .state()
        .backlog
        .read()
        .as_ref()
        .and_then(|s| s.get(group))
        .map(|b| b.entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_node_saturating_all_workers_does_not_stop_healthz_and_new_requests() {
    let calls = Arc::new(Calls::default());
    let open = Arc::new(AtomicBool::new(false));
    let nodes = {
        let (calls, open) = (calls.clone(), open.clone());
        common::registry_with("rust/block", move || Gated {
            open: open.clone(),
            calls: calls.clone(),
        })
    };
    // Two inline threads (Config::for_pipeline) and two slots: two calls
    // block every worker thread there is.
    let ingress = common::start_with("blocking.yaml", nodes).await;
    let gate = Gate(open);
    let addr = ingress.local_addr();
    let client = common::client();
    let send = |i: usize| {
        let client = client.clone();
        tokio::spawn(async move {
            let resp = client
                .post(url(addr, "/v1/stall"))
                .json(&json!({ "i": i }))
                .send()
                .await
                .unwrap_or_else(|e| panic!("request {i} refused or cut: {e}"));
            let (status, _, body) = json_response(resp).await;
            (status, body)
        })
    };
    let blockers: Vec<_> = (0..4).map(send).collect();
    {
        let calls = &calls;
        eventually(
            Duration::from_secs(10),
            "two calls blocking both worker threads",
            move || std::future::ready((calls.started() >= 2).then_some(())),
        )
        .await;
    }

    // A fresh connection each time: the accept loop itself must answer. The
    // blocked threads return only once the gate opens, so a /healthz stuck
    // behind them would fail here on the client's timeout.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(4 * HEALTHZ_BOUND)
        .build()
        .unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let resp = fresh
            .get(url(addr, "/healthz"))
            .send()
            .await
            .expect("/healthz answers while the workers are blocked");
        let took = t.elapsed();
        assert_eq!(resp.status(), 200);
        assert!(took < HEALTHZ_BOUND, "/healthz took {took:?}");
    }
    let newcomer = send(4);
    {
        let ingress = &ingress;
        eventually(
            Duration::from_secs(5),
            "the new request to be admitted (5 in flight)",
            move || std::future::ready((in_flight(ingress, "stall") == 5).then_some(())),
        )
        .await;
    }
    assert_eq!(
        calls.finished(),
        0,
        "the checks above ran while both worker threads were blocked"
    );
    gate.open();

    for (i, h) in blockers.into_iter().enumerate() {
        let (status, body) = h.await.expect("request task");
        assert_eq!((status, body), (200, json!({ "i": i })));
    }
    let (status, body) = newcomer.await.expect("request task");
    assert_eq!((status, body), (200, json!({ "i": 4 })));
    assert_eq!(calls.finished(), 5);
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limit_admits_exactly_max_in_flight_then_answers_429() {
    let ingress = common::start("in-flight.yaml").await;
    let addr = ingress.local_addr();
    let client = common::client();
    let send = |i: usize| {
        let client = client.clone();
        tokio::spawn(async move {
            let resp = client
                .post(url(addr, "/v1/capped"))
                .json(&json!({ "i": i }))
                .send()
                .await
                .expect("POST /v1/capped");
            json_response(resp).await
        })
    };
    let admitted: Vec<_> = (0..3).map(send).collect();
    {
        let ingress = &ingress;
        eventually(Duration::from_secs(10), "3 requests in flight", move || {
            std::future::ready((in_flight(ingress, "capped") == 3).then_some(()))
        })
        .await;
    }

    let (status, headers, body) = send(3).await.expect("request task");
    assert_eq!(status, 429, "{body}");
    assert_eq!(error_parts(&body).0, "too_many_requests");
    let retry: u64 = header(&headers, "retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry >= 1, "Retry-After: {retry}");
    assert!(
        admitted.iter().all(|h| !h.is_finished()),
        "the 429 came while the 3 admitted requests were still in flight"
    );

    for (i, h) in admitted.into_iter().enumerate() {
        let (status, _, body) = h.await.expect("request task");
        assert_eq!((status, body), (200, json!({ "i": i })));
    }
    // The slots are free again.
    let (status, _, body) = send(4).await.expect("request task");
    assert_eq!((status, body), (200, json!({ "i": 4 })));
    let text = scrape(&ingress);
    assert_eq!(
        metric(
            &text,
            "sluice_ingress_requests_total",
            &[("interface", "capped"), ("status", "429")]
        ),
        Some(1.0),
        "{text}"
    );
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_limit_answers_503_exactly_once_the_queue_holds_max_queue_depth() {
    let ingress = common::start("backlog.yaml").await;
    let addr = ingress.local_addr();
    let client = common::client();
    let send = |i: usize| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .post(url(addr, "/v1/queued"))
                .json(&json!({ "i": i }))
                .send()
                .await
                .expect("POST /v1/queued")
        })
    };

    enum Seen {
        Queued,
        Answered,
    }
    let mut accepted = vec![];
    let rejected = loop {
        assert!(
            accepted.len() <= 4,
            "{} requests were queued with a backlog limit of 4",
            accepted.len()
        );
        let h = send(accepted.len());
        let want = accepted.len() as u64 + 1;
        let seen = {
            let (ingress, h) = (&ingress, &h);
            eventually(
                Duration::from_secs(10),
                &format!("request {want} to be queued (sampled backlog {want}) or answered"),
                move || {
                    std::future::ready(if h.is_finished() {
                        Some(Seen::Answered)
                    } else if sampled_backlog(ingress, "work") == Some(want) {
                        Some(Seen::Queued)
                    } else {
                        None
                    })
                },
            )
            .await
        };
        match seen {
            Seen::Queued => accepted.push(h),
            Seen::Answered => break h.await.expect("request task"),
        }
    };
    assert_eq!(
        accepted.len(),
        4,
        "requests queued before the first 503 (maxQueueDepth: 4)"
    );
    let (status, headers, body) = json_response(rejected).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_parts(&body).0, "overloaded");
    let retry: u64 = header(&headers, "retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry >= 1, "Retry-After: {retry}");
    assert!(
        accepted.iter().all(|h| !h.is_finished()),
        "the queued requests are still waiting"
    );
    let text = scrape(&ingress);
    assert_eq!(
        metric(&text, "sluice_ingress_queue_depth", &[("group", "work")]),
        Some(4.0),
        "{text}"
    );

    // The queued callers give up; nothing else is asserted about them.
    for h in accepted {
        h.abort();
    }
    common::stop(ingress).await;
}
