//! Cleartext HTTP/2 (prior knowledge) on the same port as HTTP/1.1, with
//! clients that are not ours: curl, h2load for many multiplexed requests,
//! and the `h2` crate driven frame by frame
//! for what curl will not do (header floods, rapid resets, idling, a
//! trickled preface). Each test asserts the exact answer and that honest
//! callers are still served afterwards.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{json_response, metric, scrape, url};
use http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use sluice_web_ingress::{Config, HttpLimits, Ingress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

const PATIENCE: Duration = Duration::from_secs(10);

async fn start(limits: HttpLimits) -> Ingress {
    let mut cfg: Config = common::config(&common::pipeline("guarded.yaml"));
    cfg.http = limits;
    sluice_web_ingress::start(cfg)
        .await
        .expect("the ingress starts")
}

/// An HTTP/2 connection by prior knowledge; its driver runs on a task that
/// ends when the server closes the connection.
async fn connect(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    (send, tokio::spawn(conn))
}

/// POSTs `body` as JSON to `/v1/echo` on a new stream; the status and the
/// JSON answer.
async fn post(send: &mut h2::client::SendRequest<Bytes>, body: &Value) -> (StatusCode, Value) {
    post_to(send, "/v1/echo", body).await
}

async fn post_to(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/json")
        .body(())
        .expect("a request");
    let mut send = send.clone().ready().await.expect("a stream slot");
    let (response, mut stream) = send.send_request(req, false).expect("send");
    stream
        .send_data(Bytes::from(body.to_string()), true)
        .expect("send the body");
    let response = response.await.expect("a response");
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("a body chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("{e}: {:?}", String::from_utf8_lossy(&bytes));
    });
    (status, value)
}

#[tokio::test]
async fn curl_speaks_http2_by_prior_knowledge_and_http1_on_the_same_port() {
    let ingress = start(HttpLimits::default()).await;
    let target = url(ingress.local_addr(), "/v1/echo");
    // tokio's Command: the ingress runs on this test's runtime.
    let run = async |extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_version}"])
            .args(extra)
            .args(["-H", "content-type: application/json", "-d", r#"{"n":1}"#])
            .arg(&target)
            .output()
            .await
            .expect("curl runs (scripts/test installs it)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    assert_eq!(run(&["--http2-prior-knowledge"]).await, "{\"n\":1}\n2");
    assert_eq!(run(&["--http1.1"]).await, "{\"n\":1}\n1.1");
    common::stop(ingress).await;
}

#[tokio::test]
async fn many_requests_share_one_http2_connection() {
    let ingress = start(HttpLimits::default()).await;
    let (send, conn) = connect(ingress.local_addr()).await;
    // The guarded interface admits four at once; send them together.
    let calls = (0..4).map(|i| {
        let mut send = send.clone();
        tokio::spawn(async move { post(&mut send, &json!({ "n": i })).await })
    });
    for (i, call) in calls.enumerate() {
        let (status, body) = call.await.expect("the call");
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!({ "n": i }));
    }
    // The server's limit on concurrent streams is announced.
    assert_eq!(
        send.clone()
            .ready()
            .await
            .expect("ready")
            .current_max_send_streams(),
        sluice_web_ingress::listener::MAX_STREAMS as usize
    );
    drop(send);
    let _ = conn.await;
    common::stop(ingress).await;
}

#[tokio::test]
async fn a_header_block_over_the_limit_is_refused_and_the_connection_still_serves() {
    let ingress = start(HttpLimits::default()).await;
    let (mut send, _conn) = connect(ingress.local_addr()).await;
    let huge = "x".repeat(sluice_web_ingress::listener::MAX_HEAD_BYTES + 1);
    let req = Request::builder()
        .method(Method::POST)
        .uri("http://localhost/v1/echo")
        .header("x-filler", huge)
        .body(())
        .expect("a request");
    let mut ready = send.clone().ready().await.expect("ready");
    let (response, _stream) = ready.send_request(req, true).expect("send");
    match response.await {
        // h2 answers an oversized header block with 431 on its stream.
        Ok(r) => assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        // Or resets the stream; either way nothing reached the pipeline.
        Err(e) => assert!(e.is_reset() || e.is_remote(), "{e}"),
    }
    let (status, body) = post(&mut send, &json!({"after": "huge"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"after": "huge"}));
    common::stop(ingress).await;
}

#[tokio::test]
async fn rapidly_reset_streams_leave_nothing_in_flight_and_others_are_served() {
    let ingress = start(HttpLimits::default()).await;
    let addr = ingress.local_addr();
    let (send, conn) = connect(addr).await;
    // One answered request first, so the interface's in-flight gauge exists.
    let (status, _) = post(&mut send.clone(), &json!({"before": "resets"})).await;
    assert_eq!(status, StatusCode::OK);
    // Open streams whose bodies never come and reset each at once, as in
    // the "rapid reset" attack (CVE-2023-44487), until the server ends
    // the connection or 5,000 streams were spent.
    let mut sent = 0;
    while sent < 5_000 && !conn.is_finished() {
        let Ok(mut ready) = send.clone().ready().await else {
            break;
        };
        let req = Request::builder()
            .method(Method::POST)
            .uri("http://localhost/v1/echo")
            .body(())
            .expect("a request");
        let Ok((_response, mut stream)) = ready.send_request(req, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    // Whatever was admitted before its reset is let go.
    let started = Instant::now();
    loop {
        let text = scrape(&ingress);
        let in_flight = metric(&text, "sluice_ingress_in_flight", &[("interface", "echo")]);
        if in_flight == Some(0.0) {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "still in flight after the resets: {in_flight:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new connection is served.
    let (mut fresh, _c) = connect(addr).await;
    let (status, body) = post(&mut fresh, &json!({"after": "resets"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // And HTTP/1.1 callers too.
    let resp = common::client()
        .post(url(addr, "/v1/echo"))
        .json(&json!({"h1": true}))
        .send()
        .await
        .expect("an answer");
    let (status, _, body) = json_response(resp).await;
    assert_eq!((status, body), (200, json!({"h1": true})));
    common::stop(ingress).await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_at_the_header_deadline() {
    let header_timeout = Duration::from_secs(1);
    let ingress = start(HttpLimits {
        header_timeout,
        ..HttpLimits::default()
    })
    .await;
    let (mut send, conn) = connect(ingress.local_addr()).await;
    // Used once, then left idle: the server sends GOAWAY and closes.
    let (status, _) = post(&mut send, &json!({"n": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let started = Instant::now();
    let ended = tokio::time::timeout(PATIENCE, conn).await;
    assert!(ended.is_ok(), "the idle connection is still open");
    assert!(
        started.elapsed() >= header_timeout / 2,
        "closed too early: {:?}",
        started.elapsed()
    );
    common::stop(ingress).await;
}

#[tokio::test]
async fn a_trickled_preface_is_closed_at_the_header_deadline() {
    let header_timeout = Duration::from_secs(1);
    let ingress = start(HttpLimits {
        header_timeout,
        ..HttpLimits::default()
    })
    .await;
    let mut s = TcpStream::connect(ingress.local_addr())
        .await
        .expect("connect");
    // Most of the preface, then nothing.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\n").await.expect("write");
    let started = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection is still open");
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    assert!(started.elapsed() >= header_timeout / 2);
    // Honest callers are served.
    let (mut send, _c) = connect(ingress.local_addr()).await;
    let (status, _) = post(&mut send, &json!({"n": 2})).await;
    assert_eq!(status, StatusCode::OK);
    common::stop(ingress).await;
}

#[tokio::test]
async fn a_drain_answers_the_http2_requests_in_flight() {
    let ingress = common::start("slow-greet.yaml").await;
    let (send, conn) = connect(ingress.local_addr()).await;
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let mut send = send.clone();
            let name = format!("h2-{i}");
            tokio::spawn(
                async move { post_to(&mut send, "/v1/greet", &json!({ "name": name })).await },
            )
        })
        .collect();
    // All three admitted (each waits 300 ms in the pipeline), then drain.
    let started = Instant::now();
    while metric(
        &scrape(&ingress),
        "sluice_ingress_in_flight",
        &[("interface", "greet")],
    ) != Some(3.0)
    {
        assert!(started.elapsed() < PATIENCE, "never three in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ingress.begin_drain();
    for (i, call) in calls.into_iter().enumerate() {
        let (status, body) = call.await.expect("the call");
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!({ "greeting": format!("hello, h2-{i}") }));
    }
    drop(send);
    tokio::time::timeout(PATIENCE, ingress.wait())
        .await
        .expect("the ingress drains");
    // The server ended the connection (GOAWAY) as it stopped.
    let ended = tokio::time::timeout(PATIENCE, conn).await;
    assert!(ended.is_ok(), "the connection outlived the drain");
}

/// h2load (nghttp2) by prior knowledge: 2,000 POSTs on 4 connections, 16
/// streams in flight on each, through two worker groups. Every one must
/// be answered 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_gets_every_multiplexed_request_answered() {
    let cfg = common::config(&common::pipeline("two-hops.yaml"));
    let ingress = sluice_web_ingress::start(cfg)
        .await
        .expect("the ingress starts");
    let dir = std::env::temp_dir().join(format!("sluice-h2load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let body = dir.join("body.json");
    std::fs::write(&body, r#"{"n":1}"#).expect("write the body");
    let out = Command::new("h2load")
        .args(["-n", "2000", "-c", "4", "-m", "16", "-T", "10"])
        .args(["-H", "content-type: application/json", "-d"])
        .arg(&body)
        .arg(url(ingress.local_addr(), "/v1/hops"))
        .output()
        .await
        .expect("h2load runs (scripts/test installs nghttp2-client)");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout"),
        "{text}"
    );
    assert!(
        text.contains("status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx"),
        "{text}"
    );
    assert!(
        text.contains("Application protocol: h2c"),
        "spoken over cleartext HTTP/2: {text}"
    );
}
