//! Requests through an in-process ingress: answers, request ids, and every
//! error a caller can get (timeouts, node failures, malformed requests).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{error_parts, eventually, header, json_response, metric, scrape, url, Calls, Flaky};
use serde_json::{json, Value};

async fn post(client: &reqwest::Client, u: String, body: &Value) -> (u16, Value) {
    let resp = client.post(u).json(body).send().await.expect("POST");
    let (status, _, body) = json_response(resp).await;
    (status, body)
}

/// POSTs `body` and returns the status and the body text, unparsed.
async fn post_text(client: &reqwest::Client, u: &str, body: &str) -> (u16, String) {
    let resp = client
        .post(u)
        .body(body.to_string())
        .send()
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("a body"))
}

#[tokio::test]
async fn orders_example_answers_through_every_node() {
    let root = common::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let ingress = sluice_web_ingress::start(common::config(&root.join("examples/orders.yaml")))
        .await
        .expect("examples/orders.yaml starts");
    let client = common::client();
    let orders = url(ingress.local_addr(), "/v1/orders");

    // (input, answer): the first two exactly as the README documents them.
    let cases = [
        // classify (web) ─priority─▶ rush (cpu) ─▶ summarize (io)
        (
            r#"{"id":"A1","type":"priority","items":3}"#,
            r#"{"order":"A1","price":0,"status":"accepted","summary":"3 item(s) in the rush lane"}"#,
        ),
        // classify (web) ─default─▶ standard (cpu) ─▶ price (cpu) ─▶ summarize (io)
        (
            r#"{"id":"B2","type":"bulk","items":2}"#,
            r#"{"order":"B2","price":5,"status":"accepted","summary":"2 item(s) in the standard lane"}"#,
        ),
        // No `type` at all: no tag, so the default route too.
        (
            r#"{"id":"C3","items":1}"#,
            r#"{"order":"C3","price":5,"status":"accepted","summary":"1 item(s) in the standard lane"}"#,
        ),
    ];
    for (i, (input, answer)) in cases.iter().enumerate() {
        if i < 2 {
            assert!(
                readme.contains(input) && readme.contains(answer),
                "the README no longer documents {input} → {answer}: update this test"
            );
        }
        let (status, body) = post_text(&client, &orders, input).await;
        assert_eq!(status, 200, "{input}: {body}");
        assert_eq!(&body, answer, "answer to {input}");
    }

    let text = scrape(&ingress);
    for node in ["classify", "rush", "standard", "price", "summarize"] {
        let runs = metric(
            &text,
            "sluice_node_duration_seconds_count",
            &[("node", node)],
        );
        assert!(
            runs.is_some_and(|n| n >= 1.0),
            "node `{node}` never ran: {runs:?}\n{text}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "sluice_node_duration_seconds_count",
            &[("node", "summarize")]
        ),
        Some(3.0),
        "every request ends in summarize"
    );
    common::stop(ingress).await;
}

#[tokio::test]
async fn timeout_returns_the_stable_504_body_and_leaves_no_waiter() {
    let ingress = common::start("timeout.yaml").await;
    let client = common::client();
    let resp = client
        .post(url(ingress.local_addr(), "/v1/slow"))
        .header("x-request-id", "caller-504")
        .json(&json!({"n": 1}))
        .send()
        .await
        .expect("POST /v1/slow");
    let (status, headers, body) = json_response(resp).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(header(&headers, "x-request-id"), "caller-504");
    let (code, _, rid) = error_parts(&body);
    assert_eq!(code, "timeout");
    assert_eq!(rid, "caller-504");

    {
        let ingress = &ingress;
        eventually(
            Duration::from_secs(5),
            "the waiter registry to be empty",
            move || std::future::ready((ingress.waiters() == 0).then_some(())),
        )
        .await;
    }
    let text = scrape(&ingress);
    assert_eq!(
        metric(
            &text,
            "sluice_ingress_timeouts_total",
            &[("interface", "slow")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "sluice_ingress_requests_total",
            &[("interface", "slow"), ("status", "504")]
        ),
        Some(1.0),
        "{text}"
    );
    // The same counter as the HTTP endpoint serves it.
    let served = client
        .get(url(ingress.local_addr(), "/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    assert_eq!(
        metric(
            &served,
            "sluice_ingress_timeouts_total",
            &[("interface", "slow")]
        ),
        Some(1.0),
        "{served}"
    );
    common::stop(ingress).await;
}

#[tokio::test]
async fn malformed_requests_get_json_errors_with_their_status() {
    let ingress = common::start("small-payload.yaml").await;
    let client = common::client();
    let addr = ingress.local_addr();

    // Just under the limit is fine.
    let fits = json!({"pad": "x".repeat(900)});
    let (status, body) = post(&client, url(addr, "/v1/echo"), &fits).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, fits);

    // 2000 bytes of valid JSON over a 1024-byte limit.
    let big = serde_json::to_vec(&json!({"pad": "x".repeat(1990)})).unwrap();
    assert!(big.len() >= 2000);
    let resp = client
        .post(url(addr, "/v1/echo"))
        .header("content-type", "application/json")
        .header("x-request-id", "too-big")
        .body(big)
        .send()
        .await
        .expect("POST over the limit");
    let (status, _, body) = json_response(resp).await;
    assert_eq!(status, 413, "{body}");
    let (code, _, rid) = error_parts(&body);
    assert_eq!(
        (code.as_str(), rid.as_str()),
        ("payload_too_large", "too-big")
    );

    let resp = client
        .post(url(addr, "/v1/echo"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("POST bad JSON");
    let (status, _, body) = json_response(resp).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_parts(&body).0, "invalid_json");

    let resp = client
        .post(url(addr, "/v1/nowhere"))
        .json(&json!({}))
        .send()
        .await
        .expect("POST unknown path");
    let (status, _, body) = json_response(resp).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_parts(&body).0, "not_found");

    let resp = client
        .get(url(addr, "/v1/echo"))
        .send()
        .await
        .expect("GET an interface");
    let (status, _, body) = json_response(resp).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(error_parts(&body).0, "method_not_allowed");

    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_made_and_never_mix_up_callers() {
    let ingress = common::start("slow-greet.yaml").await;
    let client = common::client();
    let greet = url(ingress.local_addr(), "/v1/greet");

    let resp = client
        .post(&greet)
        .header("x-request-id", "mine-123")
        .json(&json!({"name": "ada"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(resp.headers(), "x-request-id"), "mine-123");

    let mut made = vec![];
    for _ in 0..2 {
        let resp = client
            .post(&greet)
            .json(&json!({"name": "bob"}))
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), 200);
        made.push(header(resp.headers(), "x-request-id").to_string());
    }
    assert!(
        !made[0].is_empty() && made[0] != made[1],
        "each request without an id gets a fresh one: {made:?}"
    );

    // An id unfit for headers and logs (too long) is replaced, not echoed.
    let unfit = "x".repeat(200);
    let resp = client
        .post(&greet)
        .header("x-request-id", &unfit)
        .json(&json!({"name": "eve"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 200);
    let got = header(resp.headers(), "x-request-id");
    assert!(
        !got.is_empty() && got != unfit,
        "an unfit id is replaced: {got}"
    );

    // Two callers choosing the same id at the same time each get their own answer.
    let same = |name: &'static str| {
        let (client, greet) = (client.clone(), greet.clone());
        tokio::spawn(async move {
            let resp = client
                .post(greet)
                .header("x-request-id", "shared-id")
                .json(&json!({ "name": name }))
                .send()
                .await
                .expect("POST");
            let rid = header(resp.headers(), "x-request-id").to_string();
            let (status, _, body) = json_response(resp).await;
            (status, rid, body)
        })
    };
    let (a, b) = (same("alice"), same("bernard"));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(
        a,
        (200, "shared-id".into(), json!({"greeting": "hello, alice"}))
    );
    assert_eq!(
        b,
        (
            200,
            "shared-id".into(),
            json!({"greeting": "hello, bernard"})
        )
    );
    common::stop(ingress).await;
}

/// An ingress for `failures.yaml`, its `rust/flaky` nodes counting calls.
async fn failures_with_flaky() -> (Arc<Calls>, sluice_web_ingress::Ingress) {
    let calls = Arc::new(Calls::default());
    let nodes = {
        let calls = calls.clone();
        common::registry_with("rust/flaky", move || Flaky {
            calls: calls.clone(),
        })
    };
    (calls, common::start_with("failures.yaml", nodes).await)
}

#[tokio::test]
async fn a_retryable_failure_on_the_ingress_group_is_tried_max_deliveries_times() {
    let (calls, ingress) = failures_with_flaky().await;
    let client = common::client();
    let (status, body) = post(
        &client,
        url(ingress.local_addr(), "/v1/flaky-here"),
        &json!({"n": 1}),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(error_parts(&body).0, "retries_exhausted");
    assert_eq!(calls.started(), 3, "tried exactly maxDeliveries (3) times");
    common::stop(ingress).await;
}

#[tokio::test]
async fn permanent_node_error_is_422_and_retryable_one_is_dead_lettered_after_max_deliveries() {
    let (calls, ingress) = failures_with_flaky().await;
    let client = common::client();
    let addr = ingress.local_addr();

    let resp = client
        .post(url(addr, "/v1/strict"))
        .header("x-request-id", "no-name")
        .json(&json!({"nickname": "x"}))
        .send()
        .await
        .expect("POST /v1/strict");
    let (status, _, body) = json_response(resp).await;
    assert_eq!(status, 422, "{body}");
    let (code, message, rid) = error_parts(&body);
    assert_eq!((code.as_str(), rid.as_str()), ("node_failed", "no-name"));
    assert!(
        message.contains("/name"),
        "the message names the missing pointer: {message}"
    );

    let resp = client
        .post(url(addr, "/v1/flaky"))
        .json(&json!({"n": 1}))
        .send()
        .await
        .expect("POST /v1/flaky");
    let (status, _, body) = json_response(resp).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(error_parts(&body).0, "retries_exhausted");
    assert_eq!(
        calls.started(),
        3,
        "delivered exactly maxDeliveries (3) times"
    );

    // The worker counts the outcome just after its hand-off, which is what
    // answered the caller: wait for the count rather than race it.
    {
        let ingress = &ingress;
        eventually(
            Duration::from_secs(5),
            "one dead letter after two retries in the worker metrics",
            move || {
                let text = scrape(ingress);
                let outcome = |o| {
                    metric(
                        &text,
                        "sluice_worker_entries_total",
                        &[("group", "work"), ("outcome", o)],
                    )
                };
                std::future::ready(
                    (outcome("dead_lettered") == Some(1.0) && outcome("retried") == Some(2.0))
                        .then_some(()),
                )
            },
        )
        .await;
    }
    let st = ingress.state();
    let dlq = st
        .queue
        .depth(&st.keys.dead_letter())
        .await
        .expect("dead-letter depth");
    assert_eq!(dlq.entries, 1, "the envelope is in the dead-letter stream");
    // No more attempts after the dead letter.
    assert_eq!(calls.started(), 3);
    common::stop(ingress).await;
}

#[tokio::test]
async fn a_caller_hanging_up_removes_its_waiter_and_its_late_reply_is_counted() {
    // The node takes 6s; the caller gives up after 1.5s (time enough for
    // its request to be queued first, on a loaded machine too). The depth
    // check below must land while the node still runs: seconds of room.
    let ingress = common::start("hang-up.yaml").await;
    let st = ingress.state().clone();
    let err = common::client()
        .post(url(ingress.local_addr(), "/v1/slow"))
        .timeout(Duration::from_millis(1500))
        .json(&json!({"n": 1}))
        .send()
        .await
        .expect_err("the caller hangs up before the answer");
    assert!(err.is_timeout(), "{err}");
    {
        let ingress = &ingress;
        eventually(
            Duration::from_secs(5),
            "the hung-up caller's waiter to be removed and in-flight to fall to 0",
            move || {
                let in_flight = metric(
                    &scrape(ingress),
                    "sluice_ingress_in_flight",
                    &[("interface", "slow")],
                );
                std::future::ready((ingress.waiters() == 0 && in_flight == Some(0.0)).then_some(()))
            },
        )
        .await;
    }
    let depth = st.queue.depth(&st.keys.queue("work")).await.unwrap();
    assert_eq!(
        depth.entries, 1,
        "the waiter went while its request was still being worked on"
    );
    {
        let ingress = &ingress;
        eventually(
            Duration::from_secs(15),
            "the reply that found no waiter to be counted as late",
            move || {
                let text = scrape(ingress);
                let late = metric(
                    &text,
                    "sluice_ingress_replies_dropped_total",
                    &[("reason", "late")],
                );
                std::future::ready((late == Some(1.0)).then_some(()))
            },
        )
        .await;
    }
    common::stop(ingress).await;
}

#[tokio::test]
async fn error_answers_outside_interfaces_carry_a_fresh_request_id() {
    let ingress = common::start("small-payload.yaml").await;
    let client = common::client();
    let addr = ingress.local_addr();
    for req in [
        client.post(url(addr, "/v1/nowhere")).json(&json!({})),
        client.get(url(addr, "/v1/echo")),
    ] {
        let resp = req.send().await.expect("a response");
        let (status, headers, body) = json_response(resp).await;
        let (_, _, rid) = error_parts(&body);
        assert!(!rid.is_empty(), "{status}: empty request_id in {body}");
        assert_eq!(header(&headers, "x-request-id"), rid, "{status}");
    }
    common::stop(ingress).await;
}

/// `rust/inflate`: answers `{"text": "xxx…"}` with `/bytes` of text.
struct Inflate;

impl sluice_exec_worker::Node for Inflate {
    fn call<'s, 'c, 'f>(
        &'s self,
        input: Value,
        _ctx: &'c sluice_exec_worker::NodeContext,
    ) -> common::NodeFuture<'f>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            let n = input["bytes"].as_u64().unwrap_or(0) as usize;
            Ok(sluice_exec_worker::NodeOutput::value(
                json!({"text": "x".repeat(n)}),
            ))
        })
    }
}

#[tokio::test]
async fn an_output_no_receiver_would_accept_fails_at_once_instead_of_timing_out() {
    let ingress = common::start_with(
        "oversized-output.yaml",
        common::registry_with("rust/inflate", || Inflate),
    )
    .await;
    let client = common::client();
    let addr = ingress.local_addr();
    for path in ["/v1/worker", "/v1/ingress"] {
        // Within the entry limit (1 KiB + 16 KiB): answered.
        let (status, body) = post(&client, url(addr, path), &json!({"bytes": 8000})).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["text"].as_str().map(str::len), Some(8000), "{path}");

        // Over it: refused by the sender, so the caller hears of it now, not
        // after the 5 s timeout.
        let started = std::time::Instant::now();
        let (status, body) = post(&client, url(addr, path), &json!({"bytes": 40_000})).await;
        assert_eq!(status, 422, "{path}: {body}");
        let (code, message, _) = error_parts(&body);
        assert_eq!(code, "node_failed", "{path}");
        assert!(message.contains("is too large"), "{path}: {message}");
        assert!(message.contains("inflate"), "{path}: {message}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{path}: answered after {:?}, the interface timeout is 5s",
            started.elapsed()
        );
    }
    common::stop(ingress).await;
}
