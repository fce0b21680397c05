//! Distributed traces (DESIGN §7): with `OTEL_EXPORTER_OTLP_ENDPOINT` set,
//! `sluice-web-ingress` and each `sluice-exec-worker` export spans over
//! OTLP/HTTP, linked into one trace by the W3C `traceparent` that travels in
//! the signed envelope. A small OTLP receiver in the test collects them.
//!
//! ```text
//!   caller (traceparent) ─▶ POST /v1/orders (ingress, server)
//!                            └─ send cpu (ingress, producer) ══ q:cpu ══▶ process rush (cpu worker, consumer)
//!                                 ══ q:io ══▶ process summarize (io worker, consumer)
//!                                 ══ reply stream ══▶ receive reply (ingress, consumer)
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use serde_json::{json, Value};
use sluice_e2e::{eventually, example, Http, Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;
use tokio::task::JoinHandle;

/// What the receiver got: one `(content-type, body)` per export request.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Bytes)>>>);

/// An OTLP/HTTP trace receiver on a free loopback port.
struct Collector {
    received: Received,
    url: String,
    task: JoinHandle<()>,
}

impl Collector {
    async fn start() -> Self {
        let received = Received::default();
        let store = received.clone();
        let app = Router::new().route(
            "/v1/traces",
            post(move |headers: HeaderMap, body: Bytes| {
                let store = store.clone();
                async move {
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    store.0.lock().unwrap().push((ct.clone(), body));
                    // An empty ExportTraceServiceResponse, in the request's encoding.
                    let empty: &[u8] = if ct.contains("json") { b"{}" } else { b"" };
                    (StatusCode::OK, [("content-type", ct)], empty.to_vec())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            received,
            url,
            task,
        }
    }

    /// Every span received so far, decoded by its content type.
    fn spans(&self) -> Vec<SpanRec> {
        let got = self.received.0.lock().unwrap().clone();
        let mut out = vec![];
        for (ct, body) in got {
            let req = if ct.contains("json") {
                serde_json::from_slice::<ExportTraceServiceRequest>(&body)
                    .unwrap_or_else(|e| panic!("OTLP JSON that does not decode: {e}"))
            } else {
                assert_eq!(ct, "application/x-protobuf", "OTLP/HTTP content type");
                ExportTraceServiceRequest::decode(body.as_ref())
                    .unwrap_or_else(|e| panic!("OTLP protobuf that does not decode: {e}"))
            };
            for rs in req.resource_spans {
                let res = attrs(&rs.resource.map(|r| r.attributes).unwrap_or_default());
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        out.push(SpanRec {
                            trace: hex(&s.trace_id),
                            id: hex(&s.span_id),
                            parent: hex(&s.parent_span_id),
                            name: s.name,
                            kind: s.kind,
                            service: res.get("service.name").cloned().unwrap_or_default(),
                            attrs: attrs(&s.attributes),
                            error: s.status.is_some_and(|st| st.code == 2),
                        });
                    }
                }
            }
        }
        out
    }

    /// The raw bytes of everything received, for leak checks.
    fn raw(&self) -> Vec<u8> {
        let got = self.received.0.lock().unwrap();
        got.iter().flat_map(|(_, b)| b.to_vec()).collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct SpanRec {
    trace: String,
    id: String,
    parent: String,
    name: String,
    kind: i32,
    service: String,
    attrs: HashMap<String, String>,
    error: bool,
}

// OTLP SpanKind values.
const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => s.clone(),
                Some(Any::IntValue(i)) => i.to_string(),
                Some(Any::BoolValue(b)) => b.to_string(),
                Some(Any::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// The five spans of the answered priority order in `trace`, each found as
/// the child of the one before; `Err` says what is still missing. (A trace
/// may also hold the server spans of 503s answered while Redis connected.)
fn chain(spans: &[SpanRec], trace: &str) -> Result<[SpanRec; 5], String> {
    let in_trace: Vec<&SpanRec> = spans.iter().filter(|s| s.trace == trace).collect();
    let missing = |what: &str| {
        let seen: Vec<_> = in_trace.iter().map(|s| (&s.name, &s.parent)).collect();
        format!("no {what} in trace {trace} yet (have {seen:?})")
    };
    let server = in_trace
        .iter()
        .find(|s| {
            s.name == "POST /v1/orders"
                && s.attrs.get("http.response.status_code").map(String::as_str) == Some("200")
        })
        .ok_or_else(|| missing("answered server span"))?;
    let child = |parent: &SpanRec, name: &str| {
        in_trace
            .iter()
            .find(|s| s.parent == parent.id && s.name == name)
            .map(|s| (*s).clone())
            .ok_or_else(|| missing(&format!("{name:?} under {:?}", parent.name)))
    };
    let send = child(server, "send cpu")?;
    let rush = child(&send, "process rush")?;
    let summarize = child(&rush, "process summarize")?;
    let reply = child(&summarize, "receive reply")?;
    Ok([(*server).clone(), send, rush, summarize, reply])
}

/// Asserts the parent links, kinds and processes of one order's spans.
fn assert_linked(c: &[SpanRec; 5], caller_span: Option<&str>) {
    let [server, send, rush, summarize, reply] = c;
    match caller_span {
        Some(id) => assert_eq!(
            server.parent, id,
            "the server span continues the caller's span"
        ),
        None => assert!(
            server.parent.is_empty(),
            "without a traceparent the server span is a root: {server:?}"
        ),
    }
    for (child, parent) in [
        (send, server),
        (rush, send),
        (summarize, rush),
        (reply, summarize),
    ] {
        assert_eq!(
            child.parent, parent.id,
            "{:?} is a child of {:?}:\n{child:?}\n{parent:?}",
            child.name, parent.name
        );
    }
    assert_eq!((server.kind, send.kind), (SERVER, PRODUCER));
    assert_eq!(
        (rush.kind, summarize.kind, reply.kind),
        (CONSUMER, CONSUMER, CONSUMER)
    );
    for s in [server, send, reply] {
        assert_eq!(s.service, "sluice-web-ingress", "{s:?}");
    }
    for s in [rush, summarize] {
        assert_eq!(s.service, "sluice-exec-worker", "{s:?}");
        assert!(s.attrs.contains_key("sluice.queue_wait_ms"), "{s:?}");
        assert_eq!(
            s.attrs.get("sluice.attempt").map(String::as_str),
            Some("1"),
            "{s:?}"
        );
    }
    assert_eq!(rush.attrs["sluice.group"], "cpu");
    assert_eq!(summarize.attrs["sluice.group"], "io");
    assert_eq!(rush.attrs["sluice.node"], "rush");
    assert_eq!(server.attrs["http.response.status_code"], "200");
    assert_eq!(server.attrs["sluice.interface"], "orders");
    assert!(c.iter().all(|s| !s.error), "no span failed: {c:?}");
}

/// The orders example over Redis: one worker per group and the ingress,
/// all exporting to `collector` with `env` on top.
struct Pipeline {
    _redis: RedisServer,
    _workers: Vec<Service>,
    ingress: Service,
}

async fn start(sb: &Sandbox, env: &[(&str, &str)]) -> Pipeline {
    let redis = RedisServer::start(false);
    let keys = sb.keygen();
    let pipeline = example("orders-redis.yaml");
    let with_env = |mut spec: Spec| {
        for (k, v) in env {
            spec = spec.env(k, v);
        }
        spec
    };
    let mut workers = vec![];
    for g in ["cpu", "io"] {
        let spec = with_env(Spec::worker(&pipeline, g).redis(&redis.url(), &keys));
        workers.push(Service::start(sb, spec).await);
    }
    let ingress = Service::start(
        sb,
        with_env(Spec::ingress(&pipeline).redis(&redis.url(), &keys)),
    )
    .await;
    Pipeline {
        _redis: redis,
        _workers: workers,
        ingress,
    }
}

/// POSTs a priority order, with `traceparent` when given; expects a 200.
async fn order(url: &str, id: &str, traceparent: Option<&str>) -> Value {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut req = client.post(url).json(
            &json!({"id": id, "type": "priority", "items": 2, "card": "4111-SECRET-PAYLOAD"}),
        );
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let r = req.send().await.expect("POST an order");
        let status = r.status();
        let body: Value = r.json().await.expect("a JSON answer");
        // 503 until the processes' Redis connections are up.
        if status == 503 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(status, 200, "{body}");
        return body;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_ingress_queue_hops_workers_and_reply_over_otlp_json() {
    let sb = Sandbox::new("tracing-json");
    let collector = Collector::start().await;
    let p = start(
        &sb,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let shown = format!("traces=\"otlp http/json to {}\"", collector.url);
    assert!(
        p.ingress.log_text().contains(&shown),
        "the startup summary says where spans go ({shown}):\n{}",
        p.ingress.log_text()
    );
    let url = p.ingress.url("/v1/orders");

    // A caller that is itself traced.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let a = order(&url, "T1", Some(&format!("00-{trace}-{caller}-01"))).await;
    assert_eq!(a["order"], "T1");
    let (c, _) = eventually(
        Duration::from_secs(20),
        "the traced order's five spans",
        || async { chain(&collector.spans(), trace) },
    )
    .await;
    assert_linked(&c, Some(caller));

    // A caller without trace context, and one with a malformed header: each
    // starts a new trace at the ingress.
    for (id, tp) in [("T2", None), ("T3", Some("00-not-a-trace-context-01"))] {
        let before: Vec<String> = collector.spans().into_iter().map(|s| s.trace).collect();
        order(&url, id, tp).await;
        let (c, _) = eventually(
            Duration::from_secs(20),
            "a new trace's five spans",
            || async {
                let spans = collector.spans();
                let fresh = spans
                    .iter()
                    .find(|s| {
                        s.name == "POST /v1/orders"
                            && !before.contains(&s.trace)
                            && s.attrs.get("http.response.status_code").map(String::as_str)
                                == Some("200")
                    })
                    .ok_or("no new server span yet")?;
                chain(&spans, &fresh.trace.clone())
            },
        )
        .await;
        assert_ne!(c[0].trace, trace);
        assert_linked(&c, None);
    }

    // Payloads never leave in spans.
    let raw = collector.raw();
    assert!(
        !raw.windows(b"SECRET-PAYLOAD".len())
            .any(|w| w == b"SECRET-PAYLOAD"),
        "a payload value was exported in a span"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_is_the_default_and_spans_are_flushed_at_shutdown() {
    let sb = Sandbox::new("tracing-protobuf");
    let collector = Collector::start().await;
    // A schedule delay far beyond the test: only the flush at exit exports.
    let p = start(
        &sb,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    )
    .await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    order(
        &p.ingress.url("/v1/orders"),
        "P1",
        Some(&format!("00-{trace}-b7ad6b7169203331-01")),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        collector.spans().is_empty(),
        "nothing is exported before the batch is due or the process exits"
    );
    p.ingress.terminate();
    for w in &p._workers {
        w.terminate();
    }
    let (c, _) = eventually(
        Duration::from_secs(20),
        "the spans flushed at exit",
        || async { chain(&collector.spans(), trace) },
    )
    .await;
    assert_linked(&c, Some("b7ad6b7169203331"));
    let types: Vec<String> = collector
        .received
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    assert!(
        types.iter().all(|t| t == "application/x-protobuf"),
        "{types:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_no_request() {
    let sb = Sandbox::new("tracing-down");
    // A port nothing listens on.
    let dead = format!("http://127.0.0.1:{}", sluice_e2e::process::free_port());
    let p = start(
        &sb,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", dead.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let url = p.ingress.url("/v1/orders");
    let http = Http::new(Duration::from_secs(15));
    order(&url, "D0", None).await;
    for i in 1..=20 {
        let a = http
            .post(
                &url,
                &json!({"id": format!("D{i}"), "type": "priority", "items": 1}),
                None,
            )
            .await
            .expect("an answer");
        assert_eq!(a.status, 200, "{}", a.text());
    }
}
