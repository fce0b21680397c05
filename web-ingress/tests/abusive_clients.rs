//! Slow and abusive clients against a real ingress over real TCP: bodies
//! and heads trickled byte by byte, idle keep-alive connections, more
//! connections than the cap, JSON built to blow up a parser. Each test
//! asserts the exact answer and that honest callers are still served.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{error_parts, eventually, json_response, metric, scrape, url};
use serde_json::{json, Value};
use sluice_web_ingress::{Config, HttpLimits, Ingress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `guarded.yaml`'s in-flight limit.
const MAX_IN_FLIGHT: usize = 4;
/// `guarded.yaml`'s interface timeout.
const INTERFACE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test waits for the server to end something it should end.
const PATIENCE: Duration = Duration::from_secs(10);

async fn start(limits: HttpLimits) -> Ingress {
    let mut cfg: Config = common::config(&common::pipeline("guarded.yaml"));
    cfg.http = limits;
    sluice_web_ingress::start(cfg)
        .await
        .expect("the ingress starts")
}

/// Sends a POST head announcing `length` body bytes, then `first` of them.
async fn slow_body(addr: SocketAddr, length: usize, first: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/echo HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(first).await.expect("write the first bytes");
    s
}

/// Reads until the server closes the connection (bounded by [`PATIENCE`]);
/// returns what it sent.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    match tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => panic!(
            "the server did not close the connection within {PATIENCE:?}; got so far: {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}

/// The status and JSON body of a raw HTTP/1.1 response.
fn parse_response(raw: &str) -> (u16, Value) {
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("no body: {raw:?}"));
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw:?}"));
    (status, body)
}

#[tokio::test]
async fn slow_bodies_hold_no_slot_and_are_cut_with_408_at_the_body_deadline() {
    // Long enough for four connections and an honest call on a loaded
    // machine, short of the interface's timeout.
    let body_timeout = Duration::from_secs(2);
    let ingress = start(HttpLimits {
        body_timeout,
        ..HttpLimits::default()
    })
    .await;
    let addr = ingress.local_addr();

    // As many slow bodies as the interface has slots, each announcing 1000
    // bytes and sending one.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..MAX_IN_FLIGHT {
        slow.push(slow_body(addr, 1000, b"{").await);
    }

    // An honest caller is served while they are all open.
    let resp = common::client()
        .post(url(addr, "/v1/echo"))
        .json(&json!({"honest": true}))
        .send()
        .await
        .expect("POST /v1/echo");
    let (status, _, body) = json_response(resp).await;
    assert_eq!((status, body), (200, json!({"honest": true})));
    assert!(
        started.elapsed() < body_timeout,
        "served while the slow bodies were still open (took {:?})",
        started.elapsed()
    );

    // Each slow body is answered 408 at its deadline, never later than the
    // interface timeout, and its connection closed.
    for mut s in slow {
        let raw = read_to_close(&mut s).await;
        let (status, body) = parse_response(&raw);
        assert_eq!(status, 408, "{raw}");
        let (code, message, _) = error_parts(&body);
        assert_eq!(code, "body_timeout");
        assert!(message.contains("--body-timeout"), "{message}");
    }
    let took = started.elapsed();
    assert!(
        took >= body_timeout,
        "cut before the body deadline: {took:?}"
    );
    assert!(
        took < INTERFACE_TIMEOUT,
        "a slow body outlived the interface timeout: {took:?}"
    );
    let text = scrape(&ingress);
    assert_eq!(
        metric(
            &text,
            "sluice_ingress_requests_total",
            &[("interface", "echo"), ("status", "408")]
        ),
        Some(MAX_IN_FLIGHT as f64),
        "{text}"
    );
    assert_eq!(
        metric(&text, "sluice_ingress_in_flight", &[("interface", "echo")]),
        Some(0.0)
    );
    common::stop(ingress).await;
}

#[tokio::test]
async fn a_head_sent_too_slowly_or_an_idle_keep_alive_connection_is_closed() {
    let header_timeout = Duration::from_millis(500);
    let ingress = start(HttpLimits {
        header_timeout,
        ..HttpLimits::default()
    })
    .await;
    let addr = ingress.local_addr();

    // Half a head, then nothing. The deadline counts from the accept:
    // measured from before the connect.
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /v1/echo HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write half a head");
    let _ = read_to_close(&mut s).await;
    assert!(
        started.elapsed() >= header_timeout,
        "closed before the header deadline: {:?}",
        started.elapsed()
    );

    // A full request, answered; then the connection idles.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write a request");
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.expect("a response");
    assert_eq!(&first, b"HTTP/1.1 200");
    let raw = read_to_close(&mut s).await;
    assert!(
        raw.ends_with("ok"),
        "only the rest of the one response: {raw:?}"
    );

    eventually(PATIENCE, "both connections counted as closed", || {
        let text = scrape(&ingress);
        std::future::ready(
            (metric(&text, "sluice_ingress_connections", &[]) == Some(0.0)).then_some(()),
        )
    })
    .await;
    common::stop(ingress).await;
}

#[tokio::test]
async fn connections_over_the_cap_are_answered_503_closed_and_counted() {
    let ingress = start(HttpLimits {
        max_connections: 2,
        ..HttpLimits::default()
    })
    .await;
    let addr = ingress.local_addr();
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(addr).await.expect("connect"),
        TcpStream::connect(addr).await.expect("connect"),
    ];
    eventually(PATIENCE, "two open connections in the gauge", || {
        let text = scrape(&ingress);
        std::future::ready(
            (metric(&text, "sluice_ingress_connections", &[]) == Some(2.0)).then_some(()),
        )
    })
    .await;

    let mut third = TcpStream::connect(addr).await.expect("connect");
    let raw = read_to_close(&mut third).await;
    let (status, body) = parse_response(&raw);
    assert_eq!(status, 503, "{raw}");
    assert_eq!(error_parts(&body).0, "too_many_connections");
    assert!(raw.to_ascii_lowercase().contains("retry-after: 1"), "{raw}");
    let text = scrape(&ingress);
    assert_eq!(
        metric(&text, "sluice_ingress_connections_refused_total", &[]),
        Some(1.0),
        "{text}"
    );

    // A freed place is taken again.
    drop(held);
    let probe = || async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        let r = client.get(url(addr, "/healthz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    };
    eventually(
        PATIENCE,
        "/healthz served once the held connections closed",
        probe,
    )
    .await;
    common::stop(ingress).await;
}

#[tokio::test]
async fn deep_or_wide_json_is_refused_before_parsing_naming_the_limit() {
    let ingress = start(HttpLimits {
        max_json_depth: 16,
        max_json_elements: 1000,
        ..HttpLimits::default()
    })
    .await;
    let addr = ingress.local_addr();
    let client = common::client();
    let post = |body: String| {
        let client = client.clone();
        async move {
            let resp = client
                .post(url(addr, "/v1/echo"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("POST /v1/echo");
            json_response(resp).await
        }
    };

    let deep = format!("{}{}", "[".repeat(17), "]".repeat(17));
    let (status, _, body) = post(deep).await;
    assert_eq!(status, 400, "{body}");
    let (code, message, _) = error_parts(&body);
    assert_eq!(code, "json_too_deep");
    assert!(
        message.contains("16") && message.contains("--max-json-depth"),
        "{message}"
    );

    // A deeper body than serde_json's own recursion limit, well inside the
    // size limit, gets the same named refusal.
    let (status, _, body) = post("[".repeat(100_000)).await;
    assert_eq!(
        (status, error_parts(&body).0.as_str()),
        (400, "json_too_deep")
    );

    let wide = serde_json::to_string(&vec![0; 1001]).expect("JSON");
    let (status, _, body) = post(wide).await;
    assert_eq!(status, 413, "{body}");
    let (code, message, _) = error_parts(&body);
    assert_eq!(code, "json_too_many_elements");
    assert!(
        message.contains("1000") && message.contains("--max-json-elements"),
        "{message}"
    );

    let (status, _, body) = post(serde_json::to_string(&vec![0; 1000]).expect("JSON")).await;
    assert_eq!(status, 200, "at the limit is fine: {body}");
    common::stop(ingress).await;
}
