//! Caller identity through a real HTTP client on the memory profile:
//! bearer tokens read from a mounted Secret key (and read again when it
//! changes), a header set by a proxy in front, 401 with a challenge for
//! everyone else, and what one caller stores (asynchronous answers,
//! idempotency keys) out of every other caller's reach.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{header, json_response, url};
use serde_json::{json, Value};
use sluice_web_ingress::Ingress;

const BILLING: &str = "billing-0123456789abcdef";
const SEARCH: &str = "search-fedcba9876543210";

fn write_tokens(dir: &Path, text: &str) {
    let d = dir.join("api-tokens");
    std::fs::create_dir_all(&d).unwrap();
    // Written aside and renamed, as the kubelet swaps a Secret volume.
    std::fs::write(d.join(".tokens.new"), text).unwrap();
    std::fs::rename(d.join(".tokens.new"), d.join("tokens")).unwrap();
}

async fn start(secrets: &Path) -> Ingress {
    let mut cfg = common::config(&common::pipeline("authed.yaml"));
    cfg.secrets_dir = secrets.to_path_buf();
    sluice_web_ingress::start(cfg)
        .await
        .expect("the ingress starts")
}

async fn call(
    ingress: &Ingress,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = common::client().request(method, url(ingress.local_addr(), path));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    json_response(req.send().await.expect("an answer")).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn only_callers_with_a_listed_token_are_served() {
    let secrets = tempfile::tempdir().unwrap();
    write_tokens(
        secrets.path(),
        &format!("# callers\nbilling:{BILLING}\nsearch:{SEARCH}\n"),
    );
    let ingress = start(secrets.path()).await;
    let body = json!({"n": 1});
    for headers in [
        vec![],
        vec![("authorization", "Bearer not-a-listed-token-at-all")],
        vec![("authorization", "Basic YmlsbGluZzpzZWNyZXQ=")],
        vec![("authorization", "Bearer ")],
    ] {
        let (status, h, e) = call(
            &ingress,
            reqwest::Method::POST,
            "/v1/echo",
            &headers,
            Some(&body),
        )
        .await;
        assert_eq!(status, 401, "{headers:?}: {e}");
        assert_eq!(e["error"]["code"], json!("unauthorized"));
        assert_eq!(header(&h, "www-authenticate"), "Bearer");
        assert!(!e.to_string().contains(BILLING));
    }
    let auth = bearer(BILLING);
    let (status, _, got) = call(
        &ingress,
        reqwest::Method::POST,
        "/v1/echo",
        &[("authorization", &auth)],
        Some(&body),
    )
    .await;
    assert_eq!((status, got), (200, body));
    common::stop(ingress).await;
}

#[tokio::test]
async fn one_callers_answers_and_keys_are_not_anothers() {
    let secrets = tempfile::tempdir().unwrap();
    write_tokens(
        secrets.path(),
        &format!("billing:{BILLING}\nsearch:{SEARCH}\n"),
    );
    let ingress = start(secrets.path()).await;
    let (billing, search) = (bearer(BILLING), bearer(SEARCH));
    let as_billing = [
        ("authorization", billing.as_str()),
        ("prefer", "respond-async"),
    ];
    let (status, _, accepted) = call(
        &ingress,
        reqwest::Method::POST,
        "/v1/echo",
        &as_billing,
        Some(&json!({"secret": 1})),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let location = accepted["location"].as_str().unwrap().to_string();
    // Its caller fetches it.
    let started = Instant::now();
    loop {
        let (status, _, got) = call(
            &ingress,
            reqwest::Method::GET,
            &location,
            &as_billing[..1],
            None,
        )
        .await;
        if status == 200 {
            assert_eq!(got, json!({"secret": 1}));
            break;
        }
        assert!(
            status == 202 && started.elapsed() < Duration::from_secs(5),
            "{status} {got}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another caller holding the id finds nothing; nobody unauthenticated gets in.
    let (status, _, _) = call(
        &ingress,
        reqwest::Method::GET,
        &location,
        &[("authorization", &search)],
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = call(&ingress, reqwest::Method::GET, &location, &[], None).await;
    assert_eq!(status, 401);
    // The same idempotency key from two callers: two requests, each its own answer.
    for (who, n) in [(&billing, 1), (&search, 2)] {
        let h = [
            ("authorization", who.as_str()),
            ("idempotency-key", "order-1"),
        ];
        let (status, _, got) = call(
            &ingress,
            reqwest::Method::POST,
            "/v1/echo",
            &h,
            Some(&json!({"n": n})),
        )
        .await;
        assert_eq!((status, got), (200, json!({"n": n})));
    }
    common::stop(ingress).await;
}

#[tokio::test]
async fn a_changed_token_file_takes_effect_without_a_restart() {
    let secrets = tempfile::tempdir().unwrap();
    write_tokens(secrets.path(), &format!("billing:{BILLING}\n"));
    let ingress = start(secrets.path()).await;
    let (billing, search) = (bearer(BILLING), bearer(SEARCH));
    let status_with = |auth: String| {
        let ingress = &ingress;
        async move {
            call(
                ingress,
                reqwest::Method::POST,
                "/v1/echo",
                &[("authorization", &auth)],
                Some(&json!({})),
            )
            .await
            .0
        }
    };
    assert_eq!(status_with(search.clone()).await, 401);
    // billing's token is withdrawn, search's added.
    write_tokens(secrets.path(), &format!("search:{SEARCH}\n"));
    let started = Instant::now();
    while status_with(search.clone()).await != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new token never worked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status_with(billing.clone()).await, 401);
    // A file that no longer parses keeps the tokens last loaded.
    write_tokens(secrets.path(), "not a token line\n");
    tokio::time::sleep(sluice_web_ingress::auth::RELOAD_EVERY + Duration::from_millis(500)).await;
    assert_eq!(status_with(search).await, 200);
    common::stop(ingress).await;
}

#[tokio::test]
async fn a_trusted_header_names_the_caller_and_is_required() {
    let secrets = tempfile::tempdir().unwrap();
    write_tokens(secrets.path(), &format!("billing:{BILLING}\n"));
    let ingress = start(secrets.path()).await;
    let body = json!({"via": "proxy"});
    let (status, _, got) = call(
        &ingress,
        reqwest::Method::POST,
        "/v1/proxied",
        &[("x-auth-request-user", "alice@example.com")],
        Some(&body),
    )
    .await;
    assert_eq!((status, got), (200, body.clone()));
    for headers in [
        vec![],
        vec![("x-auth-request-user", "")],
        vec![("x-auth-request-user", "a"), ("x-auth-request-user", "b")],
        // A bearer token is no identity on this interface.
        vec![("authorization", "Bearer billing-0123456789abcdef")],
    ] {
        let (status, _, e) = call(
            &ingress,
            reqwest::Method::POST,
            "/v1/proxied",
            &headers,
            Some(&body),
        )
        .await;
        assert_eq!(status, 401, "{headers:?}: {e}");
    }
    common::stop(ingress).await;
}

#[tokio::test]
async fn each_caller_has_its_own_rate_limit() {
    let secrets = tempfile::tempdir().unwrap();
    write_tokens(secrets.path(), &format!("billing:{BILLING}\n"));
    let ingress = start(secrets.path()).await;
    let as_user = |who: &'static str| [("x-auth-request-user", who)];
    let body = json!({"n": 1});
    // A burst of three, then 429 with when to come back.
    for _ in 0..3 {
        let (status, _, _) = call(
            &ingress,
            reqwest::Method::POST,
            "/v1/limited",
            &as_user("alice"),
            Some(&body),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, h, e) = call(
        &ingress,
        reqwest::Method::POST,
        "/v1/limited",
        &as_user("alice"),
        Some(&body),
    )
    .await;
    assert_eq!(status, 429, "{e}");
    assert_eq!(e["error"]["code"], json!("rate_limited"));
    assert_eq!(header(&h, "retry-after"), "1");
    // Another caller is not held back by alice.
    let (status, _, _) = call(
        &ingress,
        reqwest::Method::POST,
        "/v1/limited",
        &as_user("bob"),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200);
    // A request a second: alice is served again after one. (Slow enough
    // that the four requests above, each a round trip, refill no token.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) = call(
        &ingress,
        reqwest::Method::POST,
        "/v1/limited",
        &as_user("alice"),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200);
    common::stop(ingress).await;
}
