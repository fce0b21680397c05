//! WebSocket interfaces on the Redis profile: the websocket example with a
//! real redis-server, `sluice-web-ingress` and `sluice-exec-worker` as
//! processes, called with a WebSocket client library (tokio-tungstenite).
//!
//! - Messages that finish in reverse order (their inputs pick 600 ms,
//!   300 ms, no delay) are answered in arrival order on `/v1/ordered` and
//!   as they finish on `/v1/as-done`.
//! - The worker is killed (SIGKILL) with messages in flight and started
//!   again: their entries are redelivered after the lease, and the answers
//!   still reach the socket, in order.
//! - SIGTERM to the ingress with messages in flight: they are answered,
//!   then the socket is closed with 1001 and the process exits 0.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_e2e::{Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PATIENCE: Duration = Duration::from_secs(20);

async fn open(ingress: &Service, path: &str) -> Socket {
    let url = ingress.url(path).replacen("http://", "ws://", 1);
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the upgrade is accepted");
    socket
}

async fn send(ws: &mut Socket, id: &str, speed: &str) {
    let m = json!({"id": id, "input": {"speed": speed}});
    ws.send(Message::text(m.to_string())).await.expect("sent");
}

/// The next frame that is not a ping or pong.
async fn next(ws: &mut Socket) -> Message {
    loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a frame");
        if !matches!(frame, Message::Ping(_) | Message::Pong(_)) {
            return frame;
        }
    }
}

async fn answers(ws: &mut Socket, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for _ in 0..n {
        match next(ws).await {
            Message::Text(t) => out.push(serde_json::from_str(t.as_str()).expect("JSON")),
            other => panic!("expected an answer, got {other:?}"),
        }
    }
    out
}

fn ids(answers: &[Value]) -> Vec<&str> {
    answers
        .iter()
        .map(|a| a["id"].as_str().unwrap_or("?"))
        .collect()
}

fn assert_results(answers: &[Value]) {
    for a in answers {
        let speed = match a["id"].as_str() {
            Some(id) if id.starts_with('a') => "slow",
            Some(id) if id.starts_with('b') => "medium",
            _ => "fast",
        };
        assert_eq!(a["result"], json!({"speed": speed, "done": true}), "{a}");
    }
}

/// Waits until a message gets an answer rather than `backend_unavailable`
/// (the ingress connects to Redis lazily).
async fn connected(ingress: &Service) {
    let started = Instant::now();
    loop {
        let mut ws = open(ingress, "/v1/as-done").await;
        send(&mut ws, "probe", "fast").await;
        let a = answers(&mut ws, 1).await.remove(0);
        if a.get("result").is_some() {
            return;
        }
        assert!(started.elapsed() < PATIENCE, "never connected: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_answered_in_order_through_redis_across_a_worker_crash_and_a_drain() {
    let sb = Sandbox::new("websocket");
    let redis = RedisServer::start(false);
    let keys = sb.keygen();
    let pipeline = sb.manifest_from_example(
        "websocket.yaml",
        &[
            (
                "spec:\n",
                "spec:\n  backends: { queue: redis, kv: redis, reply: redis }\n  \
                 limits: { lease: 1s }\n",
            ),
            (
                "  name: websocket\n",
                "  name: websocket\n  namespace: default\n",
            ),
            ("timeout: 5s, ordered: true", "timeout: 15s, ordered: true"),
        ],
    );
    let mut worker = Service::start(
        &sb,
        Spec::worker(&pipeline, "work").redis(&redis.url(), &keys),
    )
    .await;
    let mut ingress = Service::start(
        &sb,
        Spec::ingress(&pipeline)
            .redis(&redis.url(), &keys)
            .arg("--drain-grace")
            .arg("500ms"),
    )
    .await;
    connected(&ingress).await;

    // Reverse completion order: kept on /v1/ordered, not on /v1/as-done.
    for (path, want) in [
        ("/v1/ordered", ["a", "b", "c"]),
        ("/v1/as-done", ["c", "b", "a"]),
    ] {
        let mut ws = open(&ingress, path).await;
        for (id, speed) in [("a", "slow"), ("b", "medium"), ("c", "fast")] {
            send(&mut ws, id, speed).await;
        }
        let got = answers(&mut ws, 3).await;
        assert_eq!(ids(&got), want, "{path}: {got:?}");
        assert_results(&got);
    }

    // The worker dies holding the slow messages; its successor takes them
    // over after the lease, and the socket still gets every answer in order.
    let mut ws = open(&ingress, "/v1/ordered").await;
    for (id, speed) in [
        ("a1", "slow"),
        ("b1", "medium"),
        ("a2", "slow"),
        ("c1", "fast"),
    ] {
        send(&mut ws, id, speed).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    worker.restart().await;
    let got = answers(&mut ws, 4).await;
    assert_eq!(ids(&got), ["a1", "b1", "a2", "c1"], "{got:?}");
    assert_results(&got);

    // SIGTERM with messages in flight: answered, then 1001, then exit 0.
    send(&mut ws, "a3", "slow").await;
    send(&mut ws, "c3", "fast").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    ingress.terminate();
    let got = answers(&mut ws, 2).await;
    assert_eq!(ids(&got), ["a3", "c3"], "{got:?}");
    assert_results(&got);
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    let status = ingress.wait_exit(PATIENCE).await;
    assert!(status.success(), "{status}: {}", ingress.log_text());
}
