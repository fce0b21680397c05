//! GraphQL interfaces on the Redis profile: the graphql example with a real
//! redis-server, `sluice-web-ingress` and `sluice-exec-worker` as
//! processes, called with plain POSTs of GraphQL documents. A query with
//! two aliased operations (two requests through Redis), a mutation, and,
//! with the worker killed, an operation that reaches its deadline: a
//! GraphQL error with the POST route's code.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::{Http, Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;

async fn post(http: &Http, url: &str, query: &str) -> (u16, Value) {
    let a = http
        .post(url, &json!({"query": query}), None)
        .await
        .expect("an answer");
    (a.status, a.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_mutations_run_through_redis() {
    let sb = Sandbox::new("graphql");
    let redis = RedisServer::start(false);
    let keys = sb.keygen();
    let pipeline = sb.manifest_from_example(
        "graphql.yaml",
        &[
            (
                "spec:\n",
                "spec:\n  backends: { queue: redis, kv: redis, reply: redis }\n",
            ),
            (
                "  name: graphql\n",
                "  name: graphql\n  namespace: default\n",
            ),
        ],
    );
    let mut worker = Service::start(
        &sb,
        Spec::worker(&pipeline, "work").redis(&redis.url(), &keys),
    )
    .await;
    let ingress = Service::start(&sb, Spec::ingress(&pipeline).redis(&redis.url(), &keys)).await;
    let http = Http::new(Duration::from_secs(10));
    let url = ingress.url("/v1/graphql");

    // Until connected, the operation is a 503 error.
    let started = Instant::now();
    let two = r#"{ a: greet(name: "a") { greeting } b: greet(name: "b") { greeting } }"#;
    let body = loop {
        let (status, body) = post(&http, &url, two).await;
        assert_eq!(status, 200, "{body}");
        if body.get("errors").is_none() {
            break body;
        }
        assert_eq!(
            body["errors"][0]["extensions"]["code"],
            json!("backend_unavailable"),
            "{body}"
        );
        assert!(started.elapsed() < Duration::from_secs(20), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        body,
        json!({"data": {"a": {"greeting": "hello, a"}, "b": {"greeting": "hello, b"}}})
    );
    let (_, body) = post(
        &http,
        &url,
        r#"mutation { submit(id: 42, items: 2) { id items accepted } }"#,
    )
    .await;
    assert_eq!(
        body,
        json!({"data": {"submit": {"id": "42", "items": 2, "accepted": true}}})
    );

    // No worker: the operation waits out the interface timeout (5 s).
    worker.kill9();
    let (status, body) = post(&http, &url, r#"{ greet(name: "late") { greeting } }"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], json!({"greet": null}), "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        json!("timeout"),
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["status"],
        json!(504),
        "{body}"
    );
}
