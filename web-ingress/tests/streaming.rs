//! Streamed answers (`kind: sse`) on the memory profile, read with curl
//! (`curl -N`) and, for a caller that reads slowly, with reqwest: the
//! exact events in order, NDJSON by `Accept`, a node whose first delivery
//! fails mid-stream (reset, then the second delivery's chunks), a node that
//! fails after a chunk, chunks deferred past a slow reader and read back
//! from the store, resuming with `Last-Event-ID`, the deadline, and what
//! an sse interface refuses.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{metric, scrape, stop, url};
use serde_json::{json, Value};
use sluice_exec_worker::{Node, NodeContext, NodeError, NodeOutput, Registry};
use sluice_web_ingress::Ingress;
use tokio::process::Command;

/// `rust/second-try`: its first delivery of a request emits two chunks
/// and fails retryably; the second emits three and answers. An input with
/// `"fail": true` emits one chunk, then fails for good.
#[derive(Default)]
struct SecondTry {
    calls: AtomicUsize,
}

#[async_trait]
impl Node for SecondTry {
    async fn call(&self, input: Value, ctx: &NodeContext) -> Result<NodeOutput, NodeError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if input["fail"] == json!(true) {
            ctx.emit(json!("before the failure")).await?;
            return Err(NodeError::Permanent("this input cannot succeed".into()));
        }
        if ctx.attempt == 1 {
            ctx.emit(json!("a1")).await?;
            ctx.emit(json!("a2")).await?;
            return Err(NodeError::Retryable("the upstream went away".into()));
        }
        for c in ["b1", "b2", "b3"] {
            ctx.emit(json!(c)).await?;
        }
        Ok(NodeOutput::value(json!({"attempt": ctx.attempt})))
    }
}

/// `rust/many`: emits `n` chunks `{"i", "pad"}` of `size` bytes of padding.
struct Many;

#[async_trait]
impl Node for Many {
    async fn call(&self, input: Value, ctx: &NodeContext) -> Result<NodeOutput, NodeError> {
        let n = input["n"].as_u64().unwrap_or(0);
        let pad = "x".repeat(input["size"].as_u64().unwrap_or(0) as usize);
        for i in 1..=n {
            ctx.emit(json!({"i": i, "pad": pad})).await?;
        }
        Ok(NodeOutput::value(json!({"sent": n})))
    }
}

async fn start() -> (Ingress, Arc<SecondTry>) {
    let second = Arc::new(SecondTry::default());
    let mut r = Registry::builtin();
    let s = second.clone();
    r.register("rust/second-try", move |_| Ok(s.clone() as Arc<dyn Node>));
    r.register("rust/many", |_| Ok(Arc::new(Many) as Arc<dyn Node>));
    (common::start_with("streaming.yaml", r).await, second)
}

/// One event as the caller reads it.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    name: String,
    id: Option<String>,
    data: Value,
}

/// Reads Server-Sent Events: `id:`, `event:` and `data:` lines up to a
/// blank line; comment lines are skipped.
fn sse_events(text: &str) -> Vec<Event> {
    let mut out = vec![];
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let (mut name, mut id, mut data) = (String::new(), None, None);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_string();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(v).expect("data is JSON"));
            } else {
                assert!(line.starts_with(':'), "unexpected line {line:?}");
            }
        }
        if let Some(data) = data {
            out.push(Event { name, id, data });
        }
    }
    out
}

fn ndjson_events(text: &str) -> Vec<Event> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("each line is JSON");
            Event {
                name: v["event"].as_str().expect("an event name").to_string(),
                id: v.get("id").and_then(Value::as_str).map(str::to_string),
                data: v["data"].clone(),
            }
        })
        .collect()
}

/// `curl -sN` with `args`; its output.
async fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sN", "--max-time", "30"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    String::from_utf8(out.stdout).expect("UTF-8")
}

async fn post(ingress: &Ingress, path: &str, body: &Value, extra: &[&str]) -> String {
    let u = url(ingress.local_addr(), path);
    let body = body.to_string();
    let mut args = vec!["-H", "content-type: application/json", "-d", &body];
    args.extend_from_slice(extra);
    args.push(&u);
    curl(&args).await
}

/// POSTs `body` and reads the stream as it comes until `n` events have
/// come (or it ends), then goes away: the connection closes mid-stream.
async fn post_until(ingress: &Ingress, path: &str, body: &Value, n: usize) -> Vec<Event> {
    let mut resp = common::client()
        .post(url(ingress.local_addr(), path))
        .json(body)
        .send()
        .await
        .expect("the stream opens");
    let mut text = String::new();
    // Only whole events: a read may end inside one.
    let whole = |text: &str| sse_events(&text[..text.rfind("\n\n").map_or(0, |i| i + 2)]);
    while whole(&text).len() < n {
        match tokio::time::timeout(Duration::from_secs(30), resp.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            _ => break,
        }
    }
    let mut events = whole(&text);
    events.truncate(n);
    events
}

fn chunk(id: &str, data: Value) -> Event {
    Event {
        name: "chunk".into(),
        id: Some(id.into()),
        data,
    }
}

fn plain(name: &str, data: Value) -> Event {
    Event {
        name: name.into(),
        id: None,
        data,
    }
}

/// The `start` event's stream id, after checking it names its resume path.
fn started(events: &[Event], path: &str) -> String {
    assert_eq!(events[0].name, "start", "{events:?}");
    let id = events[0].data["id"].as_str().expect("an id").to_string();
    assert_eq!(
        events[0].data["events"],
        json!(format!("{path}/requests/{id}/events"))
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_arrive_in_order_then_the_result_in_both_formats() {
    let (ingress, _) = start().await;
    let words = json!({"words": ["streams", "of", {"signed": true}, "chunks"]});
    let events = sse_events(&post(&ingress, "/v1/words", &words, &[]).await);
    started(&events, "/v1/words");
    assert_eq!(
        events[1..],
        [
            chunk("1.1", json!("streams")),
            chunk("1.2", json!("of")),
            chunk("1.3", json!({"signed": true})),
            chunk("1.4", json!("chunks")),
            plain("result", json!({"chunks": 4})),
        ]
    );

    let lines = post(
        &ingress,
        "/v1/words",
        &json!({"words": ["a"]}),
        &["-H", "accept: application/x-ndjson"],
    )
    .await;
    let events = ndjson_events(&lines);
    started(&events, "/v1/words");
    assert_eq!(
        events[1..],
        [
            chunk("1.1", json!("a")),
            plain("result", json!({"chunks": 1}))
        ]
    );

    // Headers: the stream's type, never cached, and where to resume it.
    let head = post(&ingress, "/v1/words", &json!({"words": []}), &["-i"]).await;
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{head}");
    assert!(lower.contains("content-type: text/event-stream"), "{head}");
    assert!(lower.contains("cache-control: no-store"), "{head}");
    assert!(
        lower.contains("content-location: /v1/words/requests/"),
        "{head}"
    );

    // Nodes on the ingress group stream too (pairs: size 2).
    let events = sse_events(&post(&ingress, "/v1/near", &json!([1, 2, 3]), &[]).await);
    assert_eq!(
        events[1..],
        [
            chunk("1.1", json!([1, 2])),
            chunk("1.2", json!([3])),
            plain("result", json!({"chunks": 2})),
        ]
    );

    // A streaming node with a `next` does not answer: its chunks go
    // nowhere, and the node after it answers.
    let events =
        sse_events(&post(&ingress, "/v1/relayed", &json!({"words": ["x", "y"]}), &[]).await);
    assert_eq!(events[1..], [plain("result", json!({"counted": 2}))]);

    // On an http interface a streaming node answers with its output only.
    let answer = post(&ingress, "/v1/plain", &json!({"words": ["x", "y"]}), &[]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        json!({"chunks": 2})
    );
    stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_node_resets_the_stream_and_a_failure_ends_it() {
    let (ingress, node) = start().await;
    let events = sse_events(&post(&ingress, "/v1/retried", &json!({}), &[]).await);
    started(&events, "/v1/retried");
    assert_eq!(
        events[1..],
        [
            chunk("1.1", json!("a1")),
            chunk("1.2", json!("a2")),
            plain("reset", json!({"attempt": 2})),
            chunk("2.1", json!("b1")),
            chunk("2.2", json!("b2")),
            chunk("2.3", json!("b3")),
            plain("result", json!({"attempt": 2})),
        ]
    );
    assert_eq!(node.calls.load(Ordering::SeqCst), 2);

    let events = sse_events(&post(&ingress, "/v1/retried", &json!({"fail": true}), &[]).await);
    assert_eq!(events[1], chunk("1.1", json!("before the failure")));
    assert_eq!(events.len(), 3, "{events:?}");
    let error = &events[2];
    assert_eq!(error.name, "error");
    assert_eq!(error.data["error"]["code"], "node_failed");
    assert_eq!(error.data["error"]["status"], 422);
    assert_eq!(error.data["error"]["message"], "this input cannot succeed");
    stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_chunk_once_in_order() {
    let (ingress, _) = start().await;
    // 300 chunks of 20 KB: far more than the socket and the follower's
    // room hold while the reader sleeps, so chunks are deferred to the
    // store and read back from it.
    let n = 300;
    let resp = common::client()
        .post(url(ingress.local_addr(), "/v1/many"))
        .json(&json!({"n": n, "size": 20_000}))
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = resp.text().await.expect("the whole stream");
    let events = sse_events(&text);
    started(&events, "/v1/many");
    let chunks: Vec<_> = events[1..events.len() - 1].iter().collect();
    assert_eq!(chunks.len(), n);
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.id.as_deref(), Some(format!("1.{}", i + 1).as_str()));
        assert_eq!(c.data["i"], json!(i + 1));
    }
    assert_eq!(events.last(), Some(&plain("result", json!({"sent": n}))));
    let deferred = metric(
        &scrape(&ingress),
        "sluice_ingress_replies_dropped_total",
        &[("reason", "chunk_deferred")],
    )
    .unwrap_or(0.0);
    assert!(deferred > 0.0, "the reader was slow enough to defer chunks");
    stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_is_resumed_after_its_last_event() {
    let (ingress, _) = start().await;
    // The caller goes after the first chunk.
    let items = json!(["one", "two", "three"]);
    let events = post_until(&ingress, "/v1/paced", &items, 2).await;
    let id = started(&events, "/v1/paced");
    assert_eq!(events[1..], [chunk("1.1", json!("one"))]);

    let resume = url(
        ingress.local_addr(),
        &format!("/v1/paced/requests/{id}/events"),
    );
    let rest = sse_events(&curl(&["-H", "last-event-id: 1.1", &resume]).await);
    assert_eq!(
        rest,
        [
            chunk("1.2", json!("two")),
            chunk("1.3", json!("three")),
            plain("result", json!({"chunks": 3})),
        ]
    );
    // Without Last-Event-ID (or with one this ingress did not write):
    // everything, from the start; as NDJSON by Accept.
    for extra in [&[][..], &["-H", "last-event-id: 7"][..]] {
        let mut args = extra.to_vec();
        args.push(&resume);
        let all = sse_events(&curl(&args).await);
        assert_eq!(all.len(), 4, "{all:?}");
        assert_eq!(all[0], chunk("1.1", json!("one")));
    }
    let all = ndjson_events(&curl(&["-H", "accept: application/x-ndjson", &resume]).await);
    assert_eq!(all.last(), Some(&plain("result", json!({"chunks": 3}))));

    // Unknown ids: 404.
    for bad in [
        format!("/v1/paced/requests/{}0/events", &id[1..]),
        "/v1/paced/requests/nope/events".to_string(),
    ] {
        let out = curl(&["-i", &url(ingress.local_addr(), &bad)]).await;
        assert!(out.starts_with("HTTP/1.1 404"), "{bad}: {out}");
        assert!(out.contains("\"code\":\"not_found\""), "{out}");
    }
    stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_timeout_ends_with_a_timeout_event() {
    let (ingress, _) = start().await;
    let items = json!(["1", "2", "3", "4", "5", "6"]);
    let events = sse_events(&post(&ingress, "/v1/short", &items, &[]).await);
    started(&events, "/v1/short");
    let last = events.last().expect("events");
    assert_eq!(last.name, "error", "{events:?}");
    assert_eq!(last.data["error"]["code"], "timeout");
    assert_eq!(last.data["error"]["status"], 504);
    let chunks = &events[1..events.len() - 1];
    assert!(!chunks.is_empty() && chunks.len() < 6, "{events:?}");
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(
            *c,
            chunk(&format!("1.{}", i + 1), json!(format!("{}", i + 1)))
        );
    }
    stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_interface_refuses_what_it_does_not_serve() {
    let (ingress, _) = start().await;
    let out = post(
        &ingress,
        "/v1/words",
        &json!({"words": []}),
        &["-i", "-H", "idempotency-key: k1"],
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("do not take Idempotency-Key"), "{out}");
    let out = curl(&["-i", &url(ingress.local_addr(), "/v1/words")]).await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    let out = post(&ingress, "/v1/words", &json!({"words": "no"}), &[]).await;
    let events = sse_events(&out);
    assert_eq!(events.last().unwrap().data["error"]["code"], "node_failed");
    stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_reading_is_ended_at_the_deadline() {
    let (ingress, _) = start().await;
    // A POST whose answer is many large chunks, by a caller that never
    // reads: the writes block once the socket's buffers are full. Up to
    // 2,000 chunks of 20 KB (the node is stopped at 16 MB): more than the
    // buffers hold.
    let body = json!({"n": 2_000, "size": 20_000}).to_string();
    // Its deadline counts from its arrival: measured from before it is sent.
    let sent = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(ingress.local_addr())
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/stalled HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut tcp, head.as_bytes())
        .await
        .expect("send");
    // The interface takes one stream at a time: held by the stalled one.
    let u = url(ingress.local_addr(), "/v1/stalled");
    let small = json!({"n": 1, "size": 1}).to_string();
    let status = |out: String| out.lines().next().unwrap_or_default().to_string();
    common::eventually(
        Duration::from_secs(5),
        "the stalled stream holds the slot",
        || {
            let (u, small) = (u.clone(), small.clone());
            async move {
                let s = status(curl(&["-i", "-d", &small, &u]).await);
                s.contains("429").then_some(())
            }
        },
    )
    .await;
    // Its deadline (1 s) passes, and a little after (time to write its
    // last event) the stream ends and gives the slot back.
    common::eventually(Duration::from_secs(10), "the slot comes back", || {
        let (u, small) = (u.clone(), small.clone());
        async move {
            let s = status(curl(&["-i", "-d", &small, &u]).await);
            s.contains("200").then_some(())
        }
    })
    .await;
    let waited = sent.elapsed();
    assert!(
        waited > Duration::from_millis(1500) && waited < Duration::from_secs(8),
        "held until the deadline and a little after, not forever: {waited:?}"
    );
    drop(tcp);
    stop(ingress).await;
}
