//! The `sluice-web-ingress` binary, black-box: the README's hello command,
//! drain on SIGTERM, start-up errors, `--help` and `keygen`.

mod common;

use std::time::Duration;

use common::{eventually, metric, url, Proc};
use serde_json::{json, Value};

/// The README's curl and the answer it says the curl prints.
const README_CURL: &str = r#"curl -s localhost:8080/v1/hello -d '{"name":"world"}'"#;
const README_ANSWER: &str = r#"{"greeting":"hello, world"}"#;

/// `sluice-web-ingress --pipeline examples/hello.yaml --listen 127.0.0.1:<port>`
/// run from the workspace root (the README's command, on a free port instead
/// of 8080), then the README's curl.
#[tokio::test]
async fn readme_hello_command_answers_as_documented() {
    let root = common::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    for documented in ["--pipeline examples/hello.yaml", README_CURL, README_ANSWER] {
        assert!(
            readme.contains(documented),
            "the README no longer documents `{documented}`: update this test with it"
        );
    }
    // The command line is the README's; only the readiness grace is shortened
    // (through its environment variable) so that the test does not sit out
    // the default 5s on SIGTERM.
    let (mut proc, addr, client) = start_hello(&[]).await;

    // `curl -s localhost:8080/v1/hello -d '{"name":"world"}'`: curl's `-d`
    // sends a form content type, which the ingress must not care about.
    let resp = client
        .post(url(addr, "/v1/hello"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"name":"world"}"#)
        .send()
        .await
        .expect("POST /v1/hello");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), README_ANSWER);

    proc.terminate();
    let status = proc.exit_status(Duration::from_secs(20)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}; stderr:\n{}",
        proc.stderr()
    );
    let log = proc.stderr();
    assert!(
        log.contains("sluice-web-ingress started"),
        "startup summary missing from the log:\n{log}"
    );
}

/// `sluice-web-ingress --pipeline examples/hello.yaml` on a free port, with a
/// 100 ms readiness grace on SIGTERM and `env`, once healthy.
async fn start_hello(env: &[(&str, &str)]) -> (Proc, std::net::SocketAddr, reqwest::Client) {
    let mut vars = vec![("SLUICE_DRAIN_GRACE", "100ms")];
    vars.extend_from_slice(env);
    let client = common::client();
    let (proc, addr) = common::spawn_healthy(
        &client,
        &["--pipeline", "examples/hello.yaml"],
        &common::workspace_root(),
        &vars,
    )
    .await;
    (proc, addr, client)
}

/// With debug logs on, each request leaves one line naming the caller's
/// request id, the interface, the status and the time it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_logged_with_its_request_id_at_debug() {
    let (mut proc, addr, client) =
        start_hello(&[("RUST_LOG", "info,sluice_web_ingress=debug")]).await;
    let resp = client
        .post(url(addr, "/v1/hello"))
        .header("x-request-id", "req-log-42")
        .body(r#"{"name":"world"}"#)
        .send()
        .await
        .expect("POST /v1/hello");
    assert_eq!(resp.status(), 200);
    proc.terminate();
    proc.exit_status(Duration::from_secs(20)).await;
    let log = proc.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("request_id=req-log-42"))
        .unwrap_or_else(|| panic!("no line for the request:\n{log}"));
    for field in ["interface=hello", "status=200", "elapsed_ms="] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
}

/// SIGTERM with five requests in flight: readiness fails first while
/// liveness and serving go on through the grace, then new connections are
/// refused while the requests still in flight are answered, and the
/// process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_first_answers_every_request_in_flight_and_exits_zero() {
    // Each request takes 6s (drain.yaml), twice the grace: every one is
    // still in flight when the ingress stops accepting. The grace is long
    // enough for the checks made inside it (/readyz 503, /healthz 200, a
    // late request connected) on a loaded machine.
    const GRACE: &str = "3s";
    let manifest = common::pipeline("drain.yaml");
    let client = common::client();
    let (mut proc, addr) = common::spawn_healthy(
        &client,
        &[
            "--pipeline",
            manifest.to_str().expect("a UTF-8 path"),
            "--drain-grace",
            GRACE,
        ],
        &common::workspace_root(),
        &[],
    )
    .await;
    assert_eq!(
        client
            .get(url(addr, "/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "ready before the drain"
    );

    let send = |name: String| {
        let client = client.clone();
        tokio::spawn(async move {
            let resp = client
                .post(url(addr, "/v1/slow"))
                .json(&json!({ "name": name }))
                .send()
                .await
                .expect("a request in flight is answered, not cut");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("a JSON body");
            (status, body)
        })
    };
    let in_flight: Vec<_> = (0..5).map(|i| send(format!("caller-{i}"))).collect();
    {
        let (client, metrics) = (&client, &url(addr, "/metrics"));
        eventually(
            Duration::from_secs(10),
            "5 requests in flight in /metrics",
            move || async move {
                let text = client.get(metrics).send().await.ok()?.text().await.ok()?;
                (metric(&text, "sluice_ingress_in_flight", &[("interface", "slow")]) == Some(5.0))
                    .then_some(())
            },
        )
        .await;
    }

    proc.terminate();
    {
        let (client, readyz) = (&client, &url(addr, "/readyz"));
        eventually(
            Duration::from_secs(2),
            "/readyz to answer 503 once SIGTERM is received",
            move || async move {
                let r = client.get(readyz).send().await.ok()?;
                (r.status() == 503).then_some(())
            },
        )
        .await;
    }
    // Still in the grace: alive, and still taking new requests.
    assert_eq!(
        client
            .get(url(addr, "/healthz"))
            .send()
            .await
            .expect("/healthz during the grace")
            .status(),
        200
    );
    let late = send("late-caller".into());

    // After the grace: new connections are refused...
    {
        let healthz = &url(addr, "/healthz");
        eventually(
            Duration::from_secs(10),
            "new connections to be refused after the grace",
            move || async move {
                let fresh = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(2))
                    .build()
                    .ok()?;
                fresh
                    .get(healthz)
                    .send()
                    .await
                    .err()
                    .filter(|e| e.is_connect())
                    .map(|_| ())
            },
        )
        .await;
    }
    assert_eq!(
        proc.try_exit_status(),
        None,
        "the process waits for its requests in flight"
    );

    // ... while every request in flight is answered.
    for (i, h) in in_flight.into_iter().enumerate() {
        let (status, body) = h.await.expect("request task");
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(body, json!({ "greeting": format!("hello, caller-{i}") }));
    }
    let (status, body) = late.await.expect("request task");
    assert_eq!(status, 200, "request sent during the grace: {body}");
    assert_eq!(body, json!({ "greeting": "hello, late-caller" }));

    let status = proc.exit_status(Duration::from_secs(20)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after the drain: {status}; stderr:\n{}",
        proc.stderr()
    );
}

#[tokio::test]
async fn manifest_errors_at_start_are_clear_and_never_panic() {
    let root = common::workspace_root();
    let cycle = common::pipeline("cycle.yaml");
    let unknown = common::pipeline("unknown-field.yaml");
    let missing = common::pipeline("no-such-pipeline.yaml");
    let run = |path: &std::path::Path| {
        let path = path.to_str().expect("a UTF-8 path").to_string();
        let root = root.clone();
        async move { common::run_binary(&["--pipeline", &path, "--listen", "127.0.0.1:0"], &root).await }
    };

    let (status, _, stderr) = run(&cycle).await;
    assert!(!status.success(), "a cycle must not start: {status}");
    assert!(
        stderr.contains("spec.nodes[") && stderr.contains("cycle"),
        "the error names the node's field and the cycle:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (status, _, stderr) = run(&missing).await;
    assert!(
        !status.success(),
        "a missing manifest must not start: {status}"
    );
    assert!(
        stderr.contains(missing.to_str().unwrap()),
        "the error names the missing path:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (status, _, stderr) = run(&unknown).await;
    assert!(
        !status.success(),
        "an unknown field must not start: {status}"
    );
    assert!(
        stderr.contains("timout") && stderr.contains("spec.interfaces"),
        "the error names the unknown field and where it is:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn help_mentions_every_flag_and_exits_zero() {
    let (status, stdout, stderr) = common::run_binary(&["--help"], &common::workspace_root()).await;
    assert!(status.success(), "--help exit status {status}: {stderr}");
    for needle in [
        "--pipeline",
        "--listen",
        "--backend",
        "--redis",
        "--keys",
        "SLUICE_PIPELINE",
        "--hub",
        "SLUICE_HUB",
        "--workers",
        "--worker-bin",
        "--restart-limit",
        "--restart-window",
    ] {
        assert!(
            stdout.contains(needle),
            "--help lacks `{needle}`:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("keygen"),
        "--help lacks the keygen subcommand:\n{stdout}"
    );
}

#[tokio::test]
async fn keygen_writes_a_ring_that_loads_and_serves_and_refuses_to_overwrite_it() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path().join("ring");
    let dir_s = dir.to_str().expect("a UTF-8 path");
    let (status, stdout, stderr) =
        common::run_binary(&["keygen", dir_s], &common::workspace_root()).await;
    assert!(status.success(), "keygen exit status {status}: {stderr}");

    let ring = sluice_platform::KeyRing::load(&dir).expect("the written ring loads");
    assert_eq!(ring.kids().count(), 1, "one key: {ring:?}");
    assert!(
        stdout.contains(ring.current()),
        "keygen reports the current kid `{}`:\n{stdout}",
        ring.current()
    );

    let (status, _, stderr) =
        common::run_binary(&["keygen", dir_s], &common::workspace_root()).await;
    assert!(
        !status.success(),
        "a second keygen must not overwrite the ring"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        sluice_platform::KeyRing::load(&dir)
            .expect("the ring still loads")
            .current(),
        ring.current(),
        "the ring was left as it was"
    );

    // The ring signs and verifies a real request end to end.
    let mut config = common::config(&common::workspace_root().join("examples/hello.yaml"));
    config.keys = Some(dir.clone());
    let ingress = sluice_web_ingress::start(config)
        .await
        .expect("an ingress with the generated ring starts");
    let resp = common::client()
        .post(url(ingress.local_addr(), "/v1/hello"))
        .json(&json!({"name": "keys"}))
        .send()
        .await
        .expect("POST /v1/hello");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"greeting": "hello, keys"})
    );
    common::stop(ingress).await;
}

#[tokio::test]
async fn startup_summary_names_key_ids_but_never_key_bytes() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path().join("ring");
    let kid = sluice_web_ingress::keygen(&dir).expect("a ring");
    let key_text = std::fs::read_to_string(dir.join(&kid)).expect("the key file");
    let key_text = key_text.trim();
    assert!(key_text.len() >= 40, "a base64 key: {key_text:?}");

    let client = common::client();
    let (mut proc, addr) = common::spawn_healthy(
        &client,
        &[
            "--pipeline",
            "examples/hello.yaml",
            "--keys",
            dir.to_str().expect("a UTF-8 path"),
            "--drain-grace",
            "100ms",
        ],
        &common::workspace_root(),
        &[("RUST_LOG", "debug")],
    )
    .await;
    let resp = client
        .post(url(addr, "/v1/hello"))
        .json(&json!({"name": "keys"}))
        .send()
        .await
        .expect("POST /v1/hello");
    assert_eq!(resp.status(), 200);
    proc.terminate();
    let status = proc.exit_status(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{status}");

    let log = proc.stderr();
    assert!(
        log.contains("sluice-web-ingress started") && log.contains(&kid),
        "the startup summary names the signing kid `{kid}`:\n{log}"
    );
    assert!(
        !log.contains(key_text),
        "the key bytes appear in the log:\n{log}"
    );
}
