//! `builtin/http` against a real HTTP server: an axum app bound to
//! `127.0.0.1:0` inside each test, driven through the builtin registry the way
//! the worker builds nodes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{json, Value};
use sluice_exec_worker::{Node, NodeConfig, NodeContext, NodeError, Registry};

/// How long `/slow` takes to answer; every deadline test must finish well
/// before it.
const SLOW_ANSWER: Duration = Duration::from_secs(5);

/// Requests the server has received, to prove some calls send nothing.
#[derive(Clone, Default)]
struct Hits(Arc<AtomicUsize>);

/// Starts the test server and returns its base URL.
async fn serve() -> (String, Hits) {
    let hits = Hits::default();
    let app = Router::new()
        .route("/echo", any(echo))
        .route("/empty", any(|| async { StatusCode::OK }))
        .route("/text", any(|| async { "plain words" }))
        .route(
            "/reject",
            any(|headers: HeaderMap| async move {
                // Echoes a header back, as careless services do, so the test
                // can check that secrets are redacted from error messages.
                let token = header(&headers, "x-token");
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "invalid field `amount` (token {token}) {}",
                        "x".repeat(1000)
                    ),
                )
            }),
        )
        .route(
            "/unavailable",
            any(|| async { (StatusCode::SERVICE_UNAVAILABLE, "try later") }),
        )
        .route("/busy", any(|| async { StatusCode::TOO_MANY_REQUESTS }))
        // Redirects: within this origin (`/moved`, `/loop`), and to another
        // server's `/echo` (`/away/{port}`).
        .route(
            "/moved",
            any(|| async { (StatusCode::PERMANENT_REDIRECT, [("location", "/echo")]) }),
        )
        .route(
            "/loop",
            any(|| async { (StatusCode::FOUND, [("location", "/loop")]) }),
        )
        .route(
            "/away/{port}",
            any(|UrlPath(port): UrlPath<u16>| async move {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(
                        "location",
                        format!("http://127.0.0.1:{port}/echo?from=redirect"),
                    )],
                )
            }),
        )
        .route(
            "/slow",
            any(|| async {
                tokio::time::sleep(SLOW_ANSWER).await;
                Json(json!({"late": true}))
            }),
        )
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

/// Answers with what it received: method, body, and the headers under test.
async fn echo(
    State(hits): State<Hits>,
    method: Method,
    headers: HeaderMap,
    body: String,
) -> Json<Value> {
    hits.0.fetch_add(1, Ordering::SeqCst);
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap()
    };
    Json(json!({
        "method": method.as_str(),
        "body": body,
        "contentType": header(&headers, "content-type"),
        "idempotencyKey": header(&headers, "idempotency-key"),
        "requestId": header(&headers, "x-request-id"),
        "version": header(&headers, "x-version"),
        "token": header(&headers, "x-token"),
    }))
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn build(with: Value, secrets_dir: &Path) -> Arc<dyn Node> {
    Registry::builtin()
        .build(&NodeConfig {
            name: "enrich".into(),
            uses: "builtin/http".into(),
            with,
            secrets_dir: secrets_dir.to_owned(),
        })
        .unwrap()
}

fn node(url: String) -> Arc<dyn Node> {
    build(json!({"url": url}), Path::new("/nonexistent"))
}

fn ctx(left: Duration) -> NodeContext {
    NodeContext {
        request_id: "req-42".into(),
        correlation_id: "corr-1".into(),
        node: "enrich".into(),
        deadline: SystemTime::now() + left,
        attempt: 1,
        chunks: sluice_exec_worker::Chunks::none(),
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "sluice-catalog-http-{label}-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, key: &str, content: &str) {
        std::fs::create_dir_all(self.0.join(name)).unwrap();
        std::fs::write(self.0.join(name).join(key), content).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn success_returns_the_json_answer() {
    let (base, _) = serve().await;
    let out = node(format!("{base}/echo"))
        .call(json!({"amount": 3}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(out.value["method"], "POST");
    assert_eq!(out.value["body"], json!({"amount": 3}));
    assert_eq!(out.value["contentType"], "application/json");
    assert_eq!(out.tag, None);
}

#[tokio::test]
async fn idempotency_key_and_request_id_headers_are_sent() {
    let (base, _) = serve().await;
    let out = node(format!("{base}/echo"))
        .call(json!({}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(out.value["idempotencyKey"], "corr-1/enrich");
    assert_eq!(out.value["requestId"], "req-42");
}

#[tokio::test]
async fn idempotency_key_follows_the_correlation_id_never_the_callers_request_id() {
    let (base, _) = serve().await;
    let node = node(format!("{base}/echo"));
    let key = |ctx: NodeContext| {
        let node = node.clone();
        async move {
            let out = node.call(json!({}), &ctx).await.unwrap();
            (
                out.value["idempotencyKey"].as_str().unwrap().to_owned(),
                out.value["requestId"].as_str().unwrap().to_owned(),
            )
        }
    };
    // Two requests whose callers both chose `X-Request-Id: 1`.
    let first = NodeContext {
        request_id: "1".into(),
        correlation_id: "0b6f1c2e-first".into(),
        ..ctx(Duration::from_secs(10))
    };
    let second = NodeContext {
        correlation_id: "7d3a9e41-second".into(),
        ..first.clone()
    };
    let (k1, rid1) = key(first.clone()).await;
    let (k2, rid2) = key(second).await;
    assert_eq!(
        (rid1.as_str(), rid2.as_str()),
        ("1", "1"),
        "the label is passed on"
    );
    assert_ne!(k1, k2, "two requests never share a key");
    assert_eq!(k1, "0b6f1c2e-first/enrich");

    // A redelivery of the same entry carries the same envelope: same key.
    let (again, _) = key(NodeContext {
        attempt: 2,
        deadline: SystemTime::now() + Duration::from_secs(5),
        ..first
    })
    .await;
    assert_eq!(again, k1);
}

/// `headersFrom: {X-Token: api/token}` holding `the-secret`.
fn with_secret(url: String, extra: Value, secrets: &TempDir) -> Arc<dyn Node> {
    secrets.write("api", "token", "the-secret");
    let mut with = json!({
        "url": url,
        "headersFrom": {"X-Token": {"secretRef": {"name": "api", "key": "token"}}}
    });
    if let (Some(w), Some(extra)) = (with.as_object_mut(), extra.as_object()) {
        w.extend(extra.clone());
    }
    build(with, &secrets.0)
}

#[tokio::test]
async fn redirect_to_another_origin_is_not_followed_and_the_secret_never_reaches_it() {
    let (base, _) = serve().await;
    let (other, other_hits) = serve().await;
    let other_port = other.rsplit(':').next().unwrap().to_owned();
    let secrets = TempDir::new("redirect");
    for extra in [json!({}), json!({"followRedirects": "sameOrigin"})] {
        let node = with_secret(format!("{base}/away/{other_port}"), extra.clone(), &secrets);
        let err = node
            .call(json!({}), &ctx(Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert!(matches!(err, NodeError::Permanent(_)), "{extra}: {err}");
        let msg = err.message();
        assert!(
            msg.contains("307") && msg.contains(&format!("a redirect to {other}")),
            "{extra}: {msg}"
        );
        assert!(
            !msg.contains("from=redirect"),
            "only the origin is quoted: {msg}"
        );
        assert!(!msg.contains("the-secret"), "{msg}");
    }
    assert_eq!(
        other_hits.0.load(Ordering::SeqCst),
        0,
        "the other origin was called (with the secret header)"
    );
}

#[tokio::test]
async fn no_redirect_is_followed_by_default_even_within_the_origin() {
    let (base, hits) = serve().await;
    let err = node(format!("{base}/moved"))
        .call(json!({}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::Permanent(_)), "{err}");
    assert!(
        err.message().contains("308") && err.message().contains("follows no redirects"),
        "{err}"
    );
    assert_eq!(hits.0.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn same_origin_redirects_are_followed_when_asked_with_their_headers() {
    let (base, hits) = serve().await;
    let secrets = TempDir::new("same-origin");
    let node = with_secret(
        format!("{base}/moved"),
        json!({"followRedirects": "sameOrigin"}),
        &secrets,
    );
    let out = node
        .call(json!({"n": 1}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap();
    // 308 keeps the method and the body.
    assert_eq!(out.value["method"], "POST");
    assert_eq!(out.value["body"], json!({"n": 1}));
    assert_eq!(out.value["token"], "the-secret");
    assert_eq!(out.value["idempotencyKey"], "corr-1/enrich");
    assert_eq!(hits.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_same_origin_redirect_loop_ends_as_a_permanent_error() {
    let (base, _) = serve().await;
    let node = build(
        json!({"url": format!("{base}/loop"), "followRedirects": "sameOrigin"}),
        std::path::Path::new("/nonexistent"),
    );
    let err = node
        .call(json!({}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::Permanent(_)), "{err}");
    assert!(err.message().contains("302"), "{err}");
}

#[tokio::test]
async fn get_sends_no_body_and_static_headers_are_sent() {
    let (base, _) = serve().await;
    let node = build(
        json!({"url": format!("{base}/echo"), "method": "GET", "headers": {"X-Version": 2}}),
        Path::new("/nonexistent"),
    );
    let out = node
        .call(json!({"ignored": true}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(out.value["method"], "GET");
    assert_eq!(out.value["body"], Value::Null);
    assert_eq!(out.value["contentType"], "");
    assert_eq!(out.value["version"], "2");
}

#[tokio::test]
async fn empty_success_body_is_null() {
    let (base, _) = serve().await;
    let out = node(format!("{base}/empty"))
        .call(json!({}), &ctx(Duration::from_secs(10)))
        .await;
    assert_eq!(out.map(|o| o.value), Ok(Value::Null));
}

#[tokio::test]
async fn non_json_success_body_is_permanent() {
    let (base, _) = serve().await;
    let err = node(format!("{base}/text"))
        .call(json!({}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.message().contains("not JSON") && err.message().contains("plain words"),
        "{err}"
    );
}

#[tokio::test]
async fn client_error_is_permanent_with_status_and_short_excerpt() {
    let (base, _) = serve().await;
    let err = node(format!("{base}/reject"))
        .call(json!({}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::Permanent(_)), "{err}");
    let msg = err.message();
    assert!(
        msg.contains("422") && msg.contains("invalid field `amount`"),
        "{msg}"
    );
    assert!(
        msg.len() < 600 && msg.ends_with('…'),
        "excerpt not truncated: {msg}"
    );
}

#[tokio::test]
async fn server_errors_and_429_are_retryable() {
    let (base, _) = serve().await;
    for path in ["unavailable", "busy"] {
        let err = node(format!("{base}/{path}"))
            .call(json!({}), &ctx(Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "/{path}: {err}");
    }
    let err = node(format!("{base}/unavailable"))
        .call(json!({}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("503") && err.message().contains("try later"),
        "{err}"
    );
}

#[tokio::test]
async fn refused_connection_is_retryable() {
    // A port that was free a moment ago: nothing listens there now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = node(format!("http://{addr}/"))
        .call(json!({}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.message().contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn deadline_shorter_than_timeout_cuts_a_slow_call_short() {
    let (base, _) = serve().await;
    let node = build(
        json!({"url": format!("{base}/slow"), "timeout": "1m"}),
        Path::new("/nonexistent"),
    );
    let started = Instant::now();
    let err = node
        .call(json!({}), &ctx(Duration::from_millis(300)))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_retryable(), "{err}");
    assert!(err.message().contains("deadline reached"), "{err}");
    // Bounded margins: it waited for the deadline, and returned long before
    // the server (5s) or the configured timeout (1m) would have ended it.
    assert!(
        took >= Duration::from_millis(250),
        "returned before the deadline: {took:?}"
    );
    assert!(
        took < SLOW_ANSWER / 2,
        "did not honour the deadline: {took:?}"
    );
}

#[tokio::test]
async fn configured_timeout_shorter_than_deadline_applies() {
    let (base, _) = serve().await;
    let node = build(
        json!({"url": format!("{base}/slow"), "timeout": "200ms"}),
        Path::new("/nonexistent"),
    );
    let started = Instant::now();
    let err = node
        .call(json!({}), &ctx(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(
        err.is_retryable() && err.message().contains("timed out"),
        "{err}"
    );
    assert!(
        started.elapsed() < SLOW_ANSWER / 2,
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn past_deadline_sends_nothing() {
    let (base, hits) = serve().await;
    let err = node(format!("{base}/echo"))
        .call(json!({}), &ctx(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(
        hits.0.load(Ordering::SeqCst),
        0,
        "a request was sent past the deadline"
    );
}

#[tokio::test]
async fn secret_header_is_read_from_the_secrets_dir_at_call_time() {
    let (base, _) = serve().await;
    let secrets = TempDir::new("rotation");
    secrets.write("api", "token", "first-value\n");
    let node = build(
        json!({
            "url": format!("{base}/echo"),
            "headersFrom": {"X-Token": {"secretRef": {"name": "api", "key": "token"}}}
        }),
        &secrets.0,
    );
    let out = node
        .call(json!({}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(
        out.value["token"], "first-value",
        "trailing newline must be trimmed"
    );

    // The kubelet rewrites the mounted file when the Secret rotates.
    secrets.write("api", "token", "second-value");
    let out = node
        .call(json!({}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(out.value["token"], "second-value");
}

#[tokio::test]
async fn missing_secret_error_names_it_but_never_leaks_secret_values() {
    let (base, hits) = serve().await;
    let secrets = TempDir::new("missing");
    secrets.write("api", "token", "very-secret-value");
    // Headers are read in name order: `X-Token` has been read when
    // `X-Unset` fails, so its value is in memory while the error is built.
    let node = build(
        json!({
            "url": format!("{base}/echo"),
            "headersFrom": {
                "X-Token": {"secretRef": {"name": "api", "key": "token"}},
                "X-Unset": {"secretRef": {"name": "api", "key": "absent"}}
            }
        }),
        &secrets.0,
    );
    let err = node
        .call(json!({}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("`api`") && msg.contains("`absent`"), "{msg}");
    assert!(!msg.contains("very-secret-value"), "secret leaked: {msg}");
    assert_eq!(
        hits.0.load(Ordering::SeqCst),
        0,
        "sent without all its headers"
    );
}

#[tokio::test]
async fn secret_echoed_in_an_error_body_is_redacted() {
    let (base, _) = serve().await;
    let secrets = TempDir::new("redact");
    secrets.write("api", "token", "very-secret-value\n");
    let node = build(
        json!({
            "url": format!("{base}/reject"),
            "headersFrom": {"X-Token": {"secretRef": {"name": "api", "key": "token"}}}
        }),
        &secrets.0,
    );
    let err = node
        .call(json!({}), &ctx(Duration::from_secs(10)))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("[redacted]"), "{msg}");
    assert!(!msg.contains("very-secret-value"), "secret leaked: {msg}");
}
