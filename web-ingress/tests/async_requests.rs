//! Asynchronous requests on the memory profile, through a real HTTP client:
//! `Prefer: respond-async` and `mode: async` answer 202 with a Location,
//! the answer is fetched there (202 while pending, then the answer or its
//! error, as often as asked), a request past its asyncTimeout is 504, an
//! answer past results.ttl and an id never issued are 404. The Redis
//! profile (an answer fetched from another ingress process after the first
//! one died) is in tests/e2e.

mod common;

use std::time::{Duration, Instant};

use common::{header, json_response, url};
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(10);

async fn submit(
    addr: std::net::SocketAddr,
    path: &str,
    body: &Value,
    prefer: bool,
) -> (u16, String, Value) {
    let mut req = common::client().post(url(addr, path)).json(body);
    if prefer {
        req = req.header("prefer", "respond-async");
    }
    let (status, headers, body) = json_response(req.send().await.expect("an answer")).await;
    let location = headers
        .get("location")
        .map(|v| v.to_str().expect("printable").to_string())
        .unwrap_or_default();
    if status == 202 {
        assert_eq!(header(&headers, "preference-applied"), "respond-async");
        assert_eq!(body["location"], json!(location));
        assert_eq!(body["status"], json!("pending"));
    }
    (status, location, body)
}

async fn fetch(addr: std::net::SocketAddr, location: &str) -> (u16, Value) {
    let resp = common::client()
        .get(url(addr, location))
        .send()
        .await
        .expect("an answer");
    let (status, _, body) = json_response(resp).await;
    (status, body)
}

/// Fetches until the answer is no longer pending.
async fn settled(addr: std::net::SocketAddr, location: &str) -> (u16, Value) {
    let started = Instant::now();
    loop {
        let (status, body) = fetch(addr, location).await;
        if status != 202 {
            return (status, body);
        }
        assert!(started.elapsed() < PATIENCE, "still pending: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_preferred_async_request_is_accepted_then_fetched_while_pending_and_once_answered() {
    let ingress = common::start("async.yaml").await;
    let addr = ingress.local_addr();
    let started = Instant::now();
    let (status, location, body) = submit(addr, "/v1/greet", &json!({"name": "later"}), true).await;
    assert_eq!(status, 202, "{body}");
    // Answered well before the pipeline's 1.5 s wait is over (and fetched
    // again before it is).
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let id = body["id"].as_str().expect("an id");
    assert_eq!(location, format!("/v1/greet/requests/{id}"));
    assert_eq!(id.len(), 44);
    let (status, pending) = fetch(addr, &location).await;
    assert_eq!(
        (status, pending),
        (202, json!({"id": id, "status": "pending"}))
    );
    let answer = (200, json!({"greeting": "hello, later"}));
    assert_eq!(settled(addr, &location).await, answer);
    // Fetched again: the same answer, until results.ttl.
    assert_eq!(fetch(addr, &location).await, answer);
    // Without the preference the same interface waits for the answer.
    let (status, _, body) = submit(addr, "/v1/greet", &json!({"name": "now"}), false).await;
    assert_eq!((status, body), (200, json!({"greeting": "hello, now"})));
    common::stop(ingress).await;
}

#[tokio::test]
async fn an_async_interface_accepts_without_asking_and_reports_node_errors_at_the_fetch() {
    let ingress = common::start("async.yaml").await;
    let addr = ingress.local_addr();
    let (status, location, body) = submit(addr, "/v1/jobs", &json!({"name": "job"}), false).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        settled(addr, &location).await,
        (200, json!({"greeting": "hello, job"}))
    );
    // The template's pointer is missing: the node fails permanently, and
    // the fetch answers as the POST would have.
    let (status, location, _) = submit(addr, "/v1/strict", &json!({"no": "name"}), true).await;
    assert_eq!(status, 202);
    let (status, body) = settled(addr, &location).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], json!("node_failed"));
    common::stop(ingress).await;
}

#[tokio::test]
async fn past_its_async_timeout_a_request_is_504_and_past_results_ttl_404() {
    let ingress = common::start("async.yaml").await;
    let addr = ingress.local_addr();
    let (status, location, _) = submit(addr, "/v1/stuck", &json!({}), true).await;
    assert_eq!(status, 202);
    let (status, body) = settled(addr, &location).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], json!("timeout"));
    // asyncTimeout 1 s + results.ttl 1 s + clockSkew (default 5 s).
    let started = Instant::now();
    loop {
        let (status, body) = fetch(addr, &location).await;
        if status == 404 {
            assert_eq!(body["error"]["code"], json!("not_found"));
            break;
        }
        assert_eq!(status, 504, "{body}");
        assert!(started.elapsed() < Duration::from_secs(12), "never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    common::stop(ingress).await;
}

#[tokio::test]
async fn ids_never_issued_are_404_whatever_their_shape() {
    let ingress = common::start("async.yaml").await;
    let addr = ingress.local_addr();
    let made_up = format!("{}{:012x}", "ab".repeat(16), u64::MAX >> 16);
    // Ids of the wrong shape, one that is not even UTF-8 (`%ff`), and a
    // path that only looks like one (it reaches the router's fallback).
    for id in [
        made_up.as_str(),
        "x",
        "%ff",
        "..%2F..%2Fmetrics",
        &"0".repeat(4096),
    ] {
        let (status, body) = fetch(addr, &format!("/v1/greet/requests/{id}")).await;
        assert_eq!(status, 404, "{id}: {body}");
    }
    // Only GET fetches.
    let resp = common::client()
        .post(url(addr, &format!("/v1/greet/requests/{made_up}")))
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status().as_u16(), 405);
    common::stop(ingress).await;
}
