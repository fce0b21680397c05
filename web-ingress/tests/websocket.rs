//! WebSocket interfaces on the memory profile, through a WebSocket client
//! library (tokio-tungstenite): answers in arrival order or as they finish,
//! the per-connection in-flight limit (the socket is not read past it, and
//! nothing is dropped), a stuck message that does not hold the ones behind
//! it, duplicate ids, malformed messages, close codes (binary, oversized,
//! idle, drain), and the upgrade's refusals (426, 405, 401). The Redis
//! profile is in tests/e2e.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{metric, scrape, NodeFuture};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_exec_worker::{Node, NodeContext, NodeOutput, Registry};
use sluice_web_ingress::Ingress;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PATIENCE: Duration = Duration::from_secs(10);

/// Calls of `rust/busy` running now, and the most at once.
#[derive(Default)]
struct Running {
    now: AtomicUsize,
    most: AtomicUsize,
    started: AtomicUsize,
}

/// `rust/busy`: takes 300 ms and records how many calls ran at once.
struct Busy(Arc<Running>);

impl Node for Busy {
    fn call<'s, 'c, 'f>(&'s self, input: Value, _ctx: &'c NodeContext) -> NodeFuture<'f>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            let running = &self.0;
            running.started.fetch_add(1, Ordering::SeqCst);
            let now = running.now.fetch_add(1, Ordering::SeqCst) + 1;
            running.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            running.now.fetch_sub(1, Ordering::SeqCst);
            Ok(NodeOutput::value(input))
        })
    }
}

async fn start() -> (Ingress, Arc<Running>) {
    let busy = Arc::new(Running::default());
    let shared = busy.clone();
    let nodes = common::registry_with("rust/busy", move || Busy(shared.clone()));
    (common::start_with("websocket.yaml", nodes).await, busy)
}

async fn open(ingress: &Ingress, path: &str) -> Socket {
    open_with(ingress, path, &[])
        .await
        .expect("the upgrade is accepted")
}

async fn open_with(
    ingress: &Ingress,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<Socket, WsError> {
    let mut req = format!("ws://{}{path}", ingress.local_addr())
        .into_client_request()
        .expect("a request");
    for (name, value) in headers {
        req.headers_mut()
            .insert(*name, value.parse().expect("a header value"));
    }
    let (socket, resp) = tokio_tungstenite::connect_async(req).await?;
    assert_eq!(resp.status(), 101);
    Ok(socket)
}

async fn send(ws: &mut Socket, message: Value) {
    ws.send(Message::text(message.to_string()))
        .await
        .expect("sent");
}

/// The next answer, skipping pings.
async fn answer(ws: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("an answer in time")
            .expect("the socket is open")
            .expect("a frame");
        match frame {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected an answer, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame, answers it (as clients do), and
/// returns its code and reason.
async fn closed_why(ws: &mut Socket) -> (u16, String) {
    loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("closed in time");
        let why = match frame {
            Some(Ok(Message::Close(Some(f)))) => (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => (1005, String::new()),
            Some(Ok(Message::Text(t))) => panic!("unexpected answer {t}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("no close frame: {e}"),
            None => panic!("ended without a close frame"),
        };
        // Polled once more, the client sends its close reply.
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
        return why;
    }
}

async fn closed(ws: &mut Socket) -> u16 {
    closed_why(ws).await.0
}

async fn gauge(ingress: &Ingress, interface: &str, want: f64) {
    common::eventually(PATIENCE, "the connections gauge", || async {
        let v = metric(
            &scrape(ingress),
            "sluice_ingress_websocket_connections",
            &[("interface", interface)],
        );
        (v == Some(want)).then_some(())
    })
    .await;
}

fn ids(answers: &[Value]) -> Vec<String> {
    answers
        .iter()
        .map(|a| match &a["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn example() -> std::path::PathBuf {
    common::workspace_root().join("examples/websocket.yaml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_answers_keep_arrival_order_and_unordered_ones_come_as_they_finish() {
    let ingress = sluice_web_ingress::start_with(common::config(&example()), Registry::builtin())
        .await
        .expect("the example starts");
    for (path, want) in [
        ("/v1/ordered", ["a", "b", "c"]),
        ("/v1/as-done", ["c", "b", "a"]),
    ] {
        let mut ws = open(&ingress, path).await;
        for (id, speed) in [("a", "slow"), ("b", "medium"), ("c", "fast")] {
            send(&mut ws, json!({"id": id, "input": {"speed": speed}})).await;
        }
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(answer(&mut ws).await);
        }
        assert_eq!(ids(&answers), want, "{path}: {answers:?}");
        for a in &answers {
            let speed = match a["id"].as_str() {
                Some("a") => "slow",
                Some("b") => "medium",
                _ => "fast",
            };
            assert_eq!(a["result"], json!({"speed": speed, "done": true}), "{a}");
        }
        ws.close(None).await.expect("closed");
    }
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_its_in_flight_limit_is_not_read_and_loses_nothing() {
    let (ingress, busy) = start().await;
    let mut ws = open(&ingress, "/v1/narrow").await;
    gauge(&ingress, "narrow", 1.0).await;
    let started = Instant::now();
    for n in 0..6 {
        send(&mut ws, json!({"input": {"n": n}})).await;
    }
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(answer(&mut ws).await);
    }
    // Two at a time, 300 ms each: three rounds.
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(busy.most.load(Ordering::SeqCst), 2);
    assert_eq!(ids(&answers), ["#1", "#2", "#3", "#4", "#5", "#6"]);
    for (n, a) in answers.iter().enumerate() {
        assert_eq!(a["result"], json!({"n": n}), "{a}");
    }
    ws.close(None).await.expect("closed");
    gauge(&ingress, "narrow", 0.0).await;

    // Messages past the limit stay in the client's socket: sending 30 MB
    // (more than the kernel buffers hold) blocks, where a server reading
    // everything would take it all in well within a second.
    let ws = open(&ingress, "/v1/narrow").await;
    let (mut tx, mut rx) = ws.split();
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    let filler = json!({"input": "f".repeat(3000)}).to_string();
    let writer = tokio::spawn(async move {
        for _ in 0..10_000 {
            if tx.send(Message::text(filler.clone())).await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!writer.is_finished(), "the ingress read past its limit");
    assert_eq!(busy.most.load(Ordering::SeqCst), 2);
    writer.abort();
    reader.abort();
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_message_ends_at_its_deadline_and_the_next_follows() {
    let (ingress, _) = start().await;
    let mut ws = open(&ingress, "/v1/stuck").await;
    let started = Instant::now();
    send(&mut ws, json!({"id": "a", "input": {"speed": "stuck"}})).await;
    send(
        &mut ws,
        json!({"id": "b", "input": {"speed": "fast", "x": 1}}),
    )
    .await;
    let first = answer(&mut ws).await;
    assert_eq!(first["id"], json!("a"));
    assert_eq!(first["error"]["code"], json!("timeout"), "{first}");
    assert_eq!(first["error"]["status"], json!(504));
    let second = answer(&mut ws).await;
    assert_eq!(
        second,
        json!({"id": "b", "result": {"speed": "fast", "x": 1}})
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Two stuck messages take the interface's two slots: a message on
    // another connection is refused, and its id is free again after.
    send(&mut ws, json!({"id": "s1", "input": {"speed": "stuck"}})).await;
    send(&mut ws, json!({"id": "s2", "input": {"speed": "stuck"}})).await;
    common::eventually(PATIENCE, "both stuck messages in flight", || async {
        let v = metric(
            &scrape(&ingress),
            "sluice_ingress_in_flight",
            &[("interface", "stuck")],
        );
        (v == Some(2.0)).then_some(())
    })
    .await;
    let mut other = open(&ingress, "/v1/stuck").await;
    send(&mut other, json!({"id": "z", "input": {"speed": "fast"}})).await;
    let refused = answer(&mut other).await;
    assert_eq!(refused["id"], json!("z"));
    assert_eq!(
        refused["error"]["code"],
        json!("too_many_requests"),
        "{refused}"
    );
    for _ in 0..2 {
        assert_eq!(answer(&mut ws).await["error"]["code"], json!("timeout"));
    }
    send(&mut other, json!({"id": "z", "input": {"speed": "fast"}})).await;
    assert_eq!(
        answer(&mut other).await,
        json!({"id": "z", "result": {"speed": "fast"}})
    );
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_in_flight_are_unique_and_malformed_messages_are_answered_with_errors() {
    let (ingress, _) = start().await;
    let mut ws = open(&ingress, "/v1/narrow").await;
    send(&mut ws, json!({"id": "x", "input": 1})).await;
    send(&mut ws, json!({"id": "x", "input": 2})).await;
    let first = answer(&mut ws).await;
    assert_eq!(first, json!({"id": "x", "result": 1}));
    let dup = answer(&mut ws).await;
    assert_eq!(dup["id"], json!("x"));
    assert_eq!(dup["error"]["code"], json!("duplicate_id"), "{dup}");
    assert_eq!(dup["error"]["status"], json!(409));
    // Answered: the id may be used again, and integers are ids too.
    send(&mut ws, json!({"id": "x", "input": 3})).await;
    assert_eq!(answer(&mut ws).await, json!({"id": "x", "result": 3}));
    send(&mut ws, json!({"id": 7})).await;
    assert_eq!(answer(&mut ws).await, json!({"id": 7, "result": null}));

    let big = "y".repeat(5000);
    let cases: [(&str, Value, &str, u16); 7] = [
        ("{not json", Value::Null, "invalid_json", 400),
        ("[1]", Value::Null, "bad_message", 400),
        (r##"{"id": "#1"}"##, Value::Null, "bad_message", 400),
        (r#"{"id": 1.5}"#, Value::Null, "bad_message", 400),
        (
            r#"{"id": "a", "colour": 1}"#,
            json!("a"),
            "bad_message",
            400,
        ),
        (
            &format!(r#"{{"id": "big", "input": "{big}"}}"#),
            json!("big"),
            "payload_too_large",
            413,
        ),
        (
            &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
            Value::Null,
            "json_too_deep",
            400,
        ),
    ];
    for (text, id, code, status) in cases {
        ws.send(Message::text(text)).await.expect("sent");
        let a = answer(&mut ws).await;
        assert_eq!(a["id"], id, "{text}: {a}");
        assert_eq!(a["error"]["code"], json!(code), "{text}: {a}");
        assert_eq!(a["error"]["status"], json!(status), "{text}: {a}");
        assert!(a["error"]["request_id"].is_string(), "{a}");
    }
    // Still open and serving.
    send(&mut ws, json!({"input": "after"})).await;
    assert_eq!(answer(&mut ws).await["result"], json!("after"));
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_oversized_and_idle_connections_are_closed_with_their_codes() {
    let (ingress, _) = start().await;
    let mut ws = open(&ingress, "/v1/narrow").await;
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("sent");
    assert_eq!(closed(&mut ws).await, 1003);

    let mut ws = open(&ingress, "/v1/narrow").await;
    let huge = format!(r#"{{"input": "{}"}}"#, "z".repeat(4096 + 2048));
    ws.send(Message::text(huge)).await.expect("sent");
    assert_eq!(closed(&mut ws).await, 1009);

    // Answered pings do not keep a connection that sends nothing open.
    let mut ws = open(&ingress, "/v1/narrow").await;
    let started = Instant::now();
    assert_eq!(closed_why(&mut ws).await, (4408, "idle".to_string()));
    assert!(started.elapsed() >= Duration::from_millis(900));

    for code in ["1003", "1009", "4408"] {
        common::eventually(PATIENCE, "the close counted", || async {
            let v = metric(
                &scrape(&ingress),
                "sluice_ingress_websocket_closed_total",
                &[("interface", "narrow"), ("code", code)],
            );
            (v == Some(1.0)).then_some(())
        })
        .await;
    }
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_answers_what_is_in_flight_then_closes_with_1001() {
    let (ingress, busy) = start().await;
    let mut ws = open(&ingress, "/v1/narrow").await;
    send(&mut ws, json!({"id": "last", "input": "in flight"})).await;
    send(&mut ws, json!({"id": "also", "input": "in flight too"})).await;
    // Both are read (the limit is two) and running before the drain starts.
    common::eventually(PATIENCE, "both messages running", || {
        let started = busy.started.load(Ordering::SeqCst);
        std::future::ready((started == 2).then_some(()))
    })
    .await;
    ingress.begin_drain();
    // What the drain found still running (300 ms each; a machine slow
    // enough to finish both first would not test the drain's wait, and
    // fails here rather than passing without it).
    assert!(
        busy.now.load(Ordering::SeqCst) > 0,
        "both calls finished before the drain began"
    );
    assert_eq!(
        answer(&mut ws).await,
        json!({"id": "last", "result": "in flight"})
    );
    assert_eq!(
        answer(&mut ws).await,
        json!({"id": "also", "result": "in flight too"})
    );
    assert_eq!(closed(&mut ws).await, 1001);
    tokio::time::timeout(Duration::from_secs(20), ingress.wait())
        .await
        .expect("drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_refused_without_the_protocol_or_the_caller() {
    let (ingress, _) = start().await;
    let client = common::client();
    let url = common::url(ingress.local_addr(), "/v1/narrow");
    let (status, headers, body) =
        common::json_response(client.get(&url).send().await.expect("an answer")).await;
    assert_eq!(status, 426, "{body}");
    assert_eq!(common::header(&headers, "upgrade"), "websocket");
    assert_eq!(body["error"]["code"], json!("upgrade_required"));
    let (status, _, body) = common::json_response(
        client
            .post(&url)
            .json(&json!({}))
            .send()
            .await
            .expect("an answer"),
    )
    .await;
    assert_eq!(status, 405, "{body}");

    // The caller is identified on the upgrade: 401 before any message.
    match open_with(&ingress, "/v1/limited", &[]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401),
        Ok(_) => panic!("opened without a caller"),
        Err(e) => panic!("{e}"),
    }
    // Rate limited per caller, counting the upgrade and each message: a
    // burst of three, then one a second.
    let mut ws = open_with(&ingress, "/v1/limited", &[("x-caller", "ana")])
        .await
        .expect("opened");
    for n in 0..3 {
        send(&mut ws, json!({"id": n, "input": n})).await;
    }
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(answer(&mut ws).await);
    }
    answers.sort_by_key(|a| a["id"].as_i64());
    assert_eq!(answers[0]["result"], json!(0));
    assert_eq!(answers[1]["result"], json!(1));
    assert_eq!(
        answers[2]["error"]["code"],
        json!("rate_limited"),
        "{:?}",
        answers[2]
    );
    assert_eq!(answers[2]["error"]["status"], json!(429));
    // A refused message's id is not taken: once a token is back, it is
    // used again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send(&mut ws, json!({"id": 2, "input": "again"})).await;
    assert_eq!(answer(&mut ws).await, json!({"id": 2, "result": "again"}));
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .expect("closed");
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_answers_no_ping_is_closed_and_connections_are_capped() {
    let (ingress, _) = start().await;
    let mut ws = open(&ingress, "/v1/quiet").await;
    // maxConnections: 1.
    match open_with(&ingress, "/v1/quiet", &[]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 503),
        Ok(_) => panic!("a second connection was opened"),
        Err(e) => panic!("{e}"),
    }
    // Not read for three ping intervals: no pong goes back.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(closed_why(&mut ws).await, (4408, "no pong".to_string()));
    drop(ws);
    // The place is free again.
    gauge(&ingress, "quiet", 0.0).await;
    let mut ws = open(&ingress, "/v1/quiet").await;
    send(&mut ws, json!({"input": "back"})).await;
    assert_eq!(answer(&mut ws).await["result"], json!("back"));
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_held_at_its_limit_outlives_the_pong_clock_and_idles_from_its_last_answer() {
    let (ingress, _) = start().await;
    let mut ws = open(&ingress, "/v1/paused").await;
    // One in flight at a time, 2.2 s each (more than two 1 s ping
    // intervals): the second is not read until the first is answered, and
    // the connection stays open meanwhile.
    send(&mut ws, json!({"id": 1, "input": "first"})).await;
    send(&mut ws, json!({"id": 2, "input": "second"})).await;
    assert_eq!(answer(&mut ws).await, json!({"id": 1, "result": "first"}));
    assert_eq!(answer(&mut ws).await, json!({"id": 2, "result": "second"}));
    // idleTimeout 1 s, shorter than a message: it counts from the answer.
    let answered = Instant::now();
    assert_eq!(closed_why(&mut ws).await, (4408, "idle".to_string()));
    assert!(
        answered.elapsed() >= Duration::from_millis(900),
        "{:?}",
        answered.elapsed()
    );
    common::stop(ingress).await;
}
