//! GraphQL interfaces on the memory profile, through plain POSTs of
//! GraphQL documents (reqwest): a query and a mutation run through the
//! pipeline (the graphql example), variables and operation names,
//! introspection, failures as GraphQL errors with the POST route's codes,
//! answers checked against their declared types, and the limits on a
//! document (depth, fields and aliases, batches). The Redis profile is in
//! tests/e2e.

mod common;

use std::sync::Arc;

use serde_json::{json, Value};
use sluice_web_ingress::Ingress;

async fn post(ingress: &Ingress, body: &Value) -> (u16, Value) {
    let resp = common::client()
        .post(common::url(ingress.local_addr(), "/v1/graphql"))
        .json(body)
        .send()
        .await
        .expect("an answer");
    let (status, _, body) = common::json_response(resp).await;
    (status, body)
}

async fn query(ingress: &Ingress, document: &str) -> Value {
    let (status, body) = post(ingress, &json!({"query": document})).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn example() -> Ingress {
    let path = common::workspace_root().join("examples/graphql.yaml");
    sluice_web_ingress::start_with(
        common::config(&path),
        sluice_exec_worker::Registry::builtin(),
    )
    .await
    .expect("the example starts")
}

async fn failing() -> Ingress {
    let calls = Arc::new(common::Calls::default());
    let nodes = common::registry_with("rust/flaky", move || common::Flaky {
        calls: calls.clone(),
    });
    common::start_with("graphql.yaml", nodes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_and_a_mutation_run_through_the_pipeline() {
    let ingress = example().await;
    assert_eq!(
        query(&ingress, r#"{ greet(name: "ada") { greeting } }"#).await,
        json!({"data": {"greet": {"greeting": "hello, ada"}}})
    );
    // Variables, an operation name, aliases: two requests in one document.
    let (status, body) = post(
        &ingress,
        &json!({
            "query": "query Two($a: String!, $b: String!) { x: greet(name: $a) { greeting } y: greet(name: $b) { greeting } }",
            "variables": {"a": "x", "b": "y"},
            "operationName": "Two",
        }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"data": {"x": {"greeting": "hello, x"}, "y": {"greeting": "hello, y"}}})
    );
    assert_eq!(
        query(
            &ingress,
            r#"mutation { submit(id: "A1", items: 3) { id items accepted } }"#
        )
        .await,
        json!({"data": {"submit": {"id": "A1", "items": 3, "accepted": true}}})
    );
    // The schema is what the manifest declares.
    let schema = query(
        &ingress,
        r#"{ __type(name: "Mutation") { fields { name args { name type { kind ofType { name } } } } } }"#,
    )
    .await;
    assert_eq!(
        schema["data"]["__type"]["fields"][0]["name"],
        json!("submit"),
        "{schema}"
    );
    assert_eq!(
        schema["data"]["__type"]["fields"][0]["args"][0],
        json!({"name": "id", "type": {"kind": "NON_NULL", "ofType": {"name": "ID"}}}),
        "{schema}"
    );
    // An argument of the wrong type never reaches the pipeline.
    let bad = query(
        &ingress,
        r#"mutation { submit(id: "A1", items: "three") { id } }"#,
    )
    .await;
    assert!(bad["data"].is_null(), "{bad}");
    assert!(bad["errors"][0]["message"].is_string(), "{bad}");
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_graphql_errors_with_the_post_routes_codes() {
    let ingress = failing().await;
    let body = query(&ingress, r#"{ ok: echo(value: {a: [1, "x"]}) fail }"#).await;
    // The other field is answered; the failed one is null with an error.
    assert_eq!(
        body["data"],
        json!({"ok": {"a": [1, "x"]}, "fail": null}),
        "{body}"
    );
    let e = &body["errors"][0];
    assert_eq!(e["path"], json!(["fail"]), "{body}");
    assert_eq!(
        e["extensions"]["code"],
        json!("retries_exhausted"),
        "{body}"
    );
    assert_eq!(e["extensions"]["status"], json!(502), "{body}");

    // An answer that is not the declared type.
    let body = query(&ingress, r#"{ count(value: "seven") }"#).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        json!("bad_result"),
        "{body}"
    );
    assert_eq!(
        query(&ingress, "{ count(value: 7) }").await,
        json!({"data": {"count": 7}})
    );
    let body = query(&ingress, "mutation { record(value: [1, 2]) }").await;
    assert_eq!(body, json!({"data": {"record": [1, 2]}}));
    // A single value stands for a list of one; Int is 32-bit.
    let body = query(&ingress, "mutation { record(value: 3) }").await;
    assert_eq!(body, json!({"data": {"record": [3]}}));
    let body = query(&ingress, "mutation { record(value: [5000000000]) }").await;
    assert!(body["data"].is_null(), "{body}");
    assert!(body["errors"][0]["message"].is_string(), "{body}");

    // A variable referenced twice is sent twice: past maxPayloadBytes for
    // the request, the second operation is refused.
    let big = "v".repeat(600_000);
    let (status, body) = post(
        &ingress,
        &json!({
            "query": "query($v: JSON) { a: echo(value: $v) b: echo(value: $v) }",
            "variables": {"v": big},
        }),
    )
    .await;
    assert_eq!(status, 200);
    let answered = [&body["data"]["a"], &body["data"]["b"]];
    assert_eq!(
        answered.iter().filter(|v| v.is_string()).count(),
        1,
        "one answered"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        json!("payload_too_large"),
        "{}",
        body["errors"]
    );

    // The interface timeout (2 s) bounds the whole request: the operation
    // answers its own deadline, as a GraphQL error (the document's own
    // bound, a grace later, never wins the race).
    let started = std::time::Instant::now();
    let (status, body) = post(&ingress, &json!({"query": "{ slow }"})).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        json!("timeout"),
        "{body}"
    );
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_past_the_limits_are_refused_before_any_request_runs() {
    let calls = Arc::new(common::Calls::default());
    let counted = calls.clone();
    let nodes = common::registry_with("rust/flaky", move || common::Flaky {
        calls: counted.clone(),
    });
    let ingress = common::start_with("graphql.yaml", nodes).await;
    let code = |body: &Value| body["errors"][0]["extensions"]["code"].clone();
    // maxComplexity 8: nine aliased operations would be nine pipeline
    // requests; none runs.
    let aliases: String = (0..9).map(|i| format!("a{i}: fail ")).collect();
    let body = query(&ingress, &format!("{{ {aliases} }}")).await;
    assert!(body["data"].is_null(), "{body}");
    assert_eq!(code(&body), json!("too_complex"), "{body}");
    assert_eq!(calls.started(), 0);
    // Fragments are counted expanded: thirty that each spread the next
    // twice select 2^30 fields, refused at once rather than walked.
    let mut bomb = String::from("{ ...F0 }");
    for i in 0..30 {
        bomb.push_str(&format!(
            " fragment F{i} on Query {{ ...F{} ...F{} }}",
            i + 1,
            i + 1
        ));
    }
    bomb.push_str(" fragment F30 on Query { fail }");
    let started = std::time::Instant::now();
    let body = query(&ingress, &bomb).await;
    assert_eq!(code(&body), json!("too_complex"), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(calls.started(), 0);
    // Nesting the parser would recurse through is refused on the text.
    let deep = format!(
        "{{ echo(value: {}1{}) }}",
        "[".repeat(300_000),
        "]".repeat(300_000)
    );
    let body = query(&ingress, &deep).await;
    assert_eq!(code(&body), json!("too_complex"), "{body}");
    // Still serving.
    assert_eq!(
        query(&ingress, "{ echo(value: 1) }").await,
        json!({"data": {"echo": 1}})
    );
    // maxDepth 4.
    let deep = "{ __schema { types { fields { type { ofType { name } } } } } }";
    let body = query(&ingress, deep).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nested too deep"),
        "{body}"
    );
    // Not GraphQL requests: 400 with the POST route's error body.
    for bad in [
        json!([{"query": "{ echo }"}]),
        json!({"colour": 1}),
        json!("{ echo }"),
    ] {
        let (status, body) = post(&ingress, &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], json!("bad_request"), "{body}");
    }
    let resp = common::client()
        .get(common::url(ingress.local_addr(), "/v1/graphql"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status(), 405);
    common::stop(ingress).await;
}
