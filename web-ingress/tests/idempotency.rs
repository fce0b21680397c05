//! `Idempotency-Key` through a real HTTP client on the memory profile: a
//! repeat gets the first answer and the node runs once; another body with
//! the same key is 422; a repeat while the first runs is 409; keys are per
//! interface; asynchronous requests take keys too; malformed keys are 400.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{header, json_response, metric, scrape, url, Calls, Counting};
use serde_json::{json, Value};
use sluice_web_ingress::Ingress;

async fn start() -> (Ingress, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let c = calls.clone();
    let nodes = common::registry_with("rust/count", move || Counting { calls: c.clone() });
    (common::start_with("idempotent.yaml", nodes).await, calls)
}

async fn post(
    ingress: &Ingress,
    path: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = common::client()
        .post(url(ingress.local_addr(), path))
        .json(body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    for (n, v) in extra {
        req = req.header(*n, *v);
    }
    json_response(req.send().await.expect("an answer")).await
}

#[tokio::test]
async fn a_repeat_gets_the_first_answer_and_the_node_runs_once() {
    let (ingress, calls) = start().await;
    let key = "6c1a2bd4-0d6f-4f4e-8e2b-5d3f0f2c9a11";
    let body = json!({"amount": 42, "to": "acct-1"});
    let (status, _, first) = post(&ingress, "/v1/count", Some(key), &[], &body).await;
    assert_eq!((status, &first), (200, &body));
    // The same body written differently is the same request.
    let reordered: Value = serde_json::from_str(r#"{ "to": "acct-1", "amount": 42 }"#).unwrap();
    for _ in 0..3 {
        let (status, _, again) = post(&ingress, "/v1/count", Some(key), &[], &reordered).await;
        assert_eq!((status, &again), (200, &body));
    }
    assert_eq!(calls.started(), 1, "the node ran once");
    // Another body under the same key is refused, and runs nothing.
    let (status, _, e) = post(
        &ingress,
        "/v1/count",
        Some(key),
        &[],
        &json!({"amount": 43}),
    )
    .await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["error"]["code"], json!("idempotency_key_reused"));
    // Keys are per interface: the same key elsewhere is a new request.
    let (status, _, other) = post(&ingress, "/v1/other", Some(key), &[], &json!({"x": 1})).await;
    assert_eq!((status, other), (200, json!({"x": 1})));
    // Without a key nothing is deduplicated.
    for _ in 0..2 {
        let (status, _, _) = post(&ingress, "/v1/count", None, &[], &body).await;
        assert_eq!(status, 200);
    }
    assert_eq!(calls.started(), 4);
    common::stop(ingress).await;
}

#[tokio::test]
async fn a_repeat_while_the_first_runs_is_409_then_gets_its_answer() {
    let (ingress, calls) = start().await;
    let ingress = Arc::new(ingress);
    let key = "slow-1";
    let first = {
        let ingress = ingress.clone();
        tokio::spawn(
            async move { post(&ingress, "/v1/slow", Some(key), &[], &json!({"n": 1})).await },
        )
    };
    // The first is queued and waits 1.5 s in the pipeline.
    let started = Instant::now();
    while metric(
        &scrape(&ingress),
        "sluice_ingress_in_flight",
        &[("interface", "slow")],
    ) != Some(1.0)
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the first never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // In flight, then its key claimed microseconds later; its node takes
    // 1.5 s.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let conflict = loop {
        let (status, headers, body) =
            post(&ingress, "/v1/slow", Some(key), &[], &json!({"n": 1})).await;
        if status == 409 {
            break (headers, body);
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{status} {body}"
        );
    };
    assert_eq!(
        conflict.1["error"]["code"],
        json!("idempotency_key_in_progress")
    );
    assert_eq!(header(&conflict.0, "retry-after"), "1");
    let (status, _, answer) = first.await.expect("the first call");
    assert_eq!((status, &answer), (200, &json!({"n": 1})));
    let (status, _, again) = post(&ingress, "/v1/slow", Some(key), &[], &json!({"n": 1})).await;
    assert_eq!((status, again), (200, answer));
    assert_eq!(calls.started(), 1);
    Arc::into_inner(ingress)
        .map(common::stop)
        .expect("one owner")
        .await;
}

#[tokio::test]
async fn an_asynchronous_request_takes_a_key_too() {
    let (ingress, calls) = start().await;
    let async_ = [("prefer", "respond-async")];
    let (status, _, accepted) = post(
        &ingress,
        "/v1/slow",
        Some("job-7"),
        &async_,
        &json!({"n": 7}),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let location = accepted["location"]
        .as_str()
        .expect("a location")
        .to_string();
    let (status, _, e) = post(
        &ingress,
        "/v1/slow",
        Some("job-7"),
        &async_,
        &json!({"n": 7}),
    )
    .await;
    assert_eq!(status, 409, "{e}");
    // Once answered, a repeat gets the answer itself, as the fetch does.
    let started = Instant::now();
    loop {
        let resp = common::client()
            .get(url(ingress.local_addr(), &location))
            .send()
            .await
            .expect("an answer");
        if resp.status().as_u16() == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, again) = post(
        &ingress,
        "/v1/slow",
        Some("job-7"),
        &async_,
        &json!({"n": 7}),
    )
    .await;
    assert_eq!((status, again), (200, json!({"n": 7})));
    assert_eq!(calls.started(), 1);
    common::stop(ingress).await;
}

#[tokio::test]
async fn malformed_keys_are_refused_before_anything_runs() {
    let (ingress, calls) = start().await;
    let long = "k".repeat(256);
    for key in ["", long.as_str()] {
        let (status, _, e) = post(&ingress, "/v1/count", Some(key), &[], &json!({})).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["code"], json!("bad_idempotency_key"));
    }
    let (status, _, e) = post(
        &ingress,
        "/v1/count",
        Some("a"),
        &[("idempotency-key", "b")],
        &json!({}),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(calls.started(), 0);
    common::stop(ingress).await;
}
