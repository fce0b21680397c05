//! Dead letters of the tcp profile, with the real binaries: they live in
//! the ingress process, and `sluice-web-ingress dlq … --admin` reaches them
//! through its admin listener. A request whose upstream is down is
//! dead-lettered by its worker process, listed, redriven once the upstream
//! is back and answered; then purged. Without `--keys` the listener is
//! refused at start (the spawned workers could read its token).
//!
//! ```text
//! caller ─▶ ingress ─▶ hub ─▶ io worker process: builtin/http to a closed port ─▶ retries exhausted ─▶ dlq (in the ingress)
//! dlq redrive --admin ─▶ admin listener ─▶ q:io ─▶ io worker: the upstream answers ─▶ answer store ─▶ GET /v1/fetch/requests/<id>
//! ```

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_e2e::dlq::{letters_manifest, output_within, redrive_location, redriven_answer, rows};
use sluice_e2e::process::free_port;
use sluice_e2e::{binary, Http, Sandbox, Service, Spec, INGRESS_BIN};

fn manifest(upstream: u16) -> String {
    letters_manifest(
        "tcp",
        &format!(
            r#"{{ name: fetch, group: io, uses: builtin/http, with: {{ url: "http://127.0.0.1:{upstream}/", timeout: 1s }} }}"#
        ),
    )
}

/// `sluice-web-ingress dlq <args> --admin … --admin-token-file …`.
fn dlq(args: &[&str], admin: u16, token_file: &Path) -> Result<String, String> {
    let target: Vec<OsString> = vec![
        "--admin".into(),
        format!("127.0.0.1:{admin}").into(),
        "--admin-token-file".into(),
        token_file.into(),
    ];
    sluice_e2e::dlq::run(args, &target)
}

/// An upstream on `port` that answers a POST with the JSON it got, or `500`
/// when that holds `"fail": true`.
async fn upstream_on(port: u16) -> tokio::task::JoinHandle<()> {
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(|axum::Json(v): axum::Json<Value>| async move {
            if v["fail"] == true {
                Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
            } else {
                Ok(axum::Json(v))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the upstream's port");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_of_a_worker_process_is_listed_redriven_and_answered_through_the_admin_listener(
) {
    let sb = Sandbox::new("tcp-dead-letters");
    let keys = sb.keygen();
    let upstream = free_port();
    let pipeline = sb.write("letters.yaml", &manifest(upstream));
    let admin = free_port();
    let token_file = sb.path().join("admin-token");
    let ingress = Service::start(
        &sb,
        Spec::ingress(&pipeline)
            .arg("--keys")
            .arg(&keys)
            .arg("--admin")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--admin-token-file")
            .arg(&token_file),
    )
    .await;

    // The upstream is down: each delivery fails to connect, dead-lettered after two.
    let http = Http::new(Duration::from_secs(15));
    let input = json!({"order": "T-1"});
    let a = http
        .post(&ingress.url("/v1/fetch"), &input, Some("tcp-poison-1"))
        .await
        .expect("an answer");
    assert_eq!(a.status, 502, "{}", a.text());
    assert!(a.text().contains("retries_exhausted"), "{}", a.text());

    // A token from elsewhere is refused.
    let wrong = sb.write("wrong-token", &"ab".repeat(32));
    let err = dlq(&["list"], admin, &wrong).unwrap_err();
    assert!(err.contains("refused the token"), "{err}");

    let listing = dlq(&["list", "--payloads"], admin, &token_file).unwrap();
    let r = rows(&listing);
    assert_eq!(r.len(), 1, "{listing}");
    let letter = r[0][0].clone();
    assert_eq!(&r[0][2..5], ["io", "fetch", "tcp-poison-1"], "{listing}");
    assert_eq!(r[0][6], "2", "as the worker process recorded it: {listing}");
    assert!(
        r[0][7].starts_with("retries_exhausted: "),
        "the reason: {listing}"
    );
    assert!(listing.contains(&format!("  {input}")), "{listing}");

    // Refusals come back as the command's own, with nothing done.
    let err = dlq(&["redrive", "--id", "1-0"], admin, &token_file).unwrap_err();
    assert!(err.contains("not in the dead-letter stream"), "{err}");
    let err = dlq(
        &["redrive", "--all", "--interface", "nope"],
        admin,
        &token_file,
    )
    .unwrap_err();
    assert!(err.contains("no such http interface"), "{err}");

    // The upstream is back: the letter is sent again and answered.
    let up = upstream_on(upstream).await;
    let out = dlq(&["redrive", "--id", &letter], admin, &token_file).unwrap();
    let location = redrive_location(&out, &letter);
    assert!(location.starts_with("/v1/fetch/requests/"), "{location}");
    let answer = redriven_answer(&http, &ingress.url(&location)).await;
    assert_eq!(answer.json(), input);
    assert!(dlq(&["list"], admin, &token_file)
        .unwrap()
        .contains("(no dead letters)"));

    // Another, failing upstream, purged.
    let b = http
        .post(
            &ingress.url("/v1/fetch"),
            &json!({"order": "T-2", "fail": true}),
            None,
        )
        .await
        .expect("an answer");
    assert_eq!(b.status, 502, "{}", b.text());
    let dry = dlq(&["purge", "--all", "--dry-run"], admin, &token_file).unwrap();
    assert_eq!(dry.trim(), "would delete 1 dead letter(s)");
    let purged = dlq(&["purge", "--all"], admin, &token_file).unwrap();
    assert_eq!(purged.trim(), "deleted 1 dead letter(s)");
    assert!(dlq(&["list"], admin, &token_file)
        .unwrap()
        .contains("(no dead letters)"));
    up.abort();
}

#[test]
fn the_tcp_profile_refuses_the_admin_listener_without_a_key_directory_or_with_worker_containers() {
    let sb = Sandbox::new("tcp-admin-refused");
    let pipeline = sb.write("letters.yaml", &manifest(free_port()));
    let keys = sb.keygen();
    let token = sb.path().join("admin-token");
    let hub = format!("127.0.0.1:{}", free_port());
    for extra in [
        vec![],
        vec![
            "--workers".into(),
            "external".into(),
            "--hub".into(),
            hub,
            "--keys".into(),
            keys.display().to_string(),
        ],
    ] {
        let mut cmd = Command::new(binary(INGRESS_BIN));
        cmd.arg("--pipeline")
            .arg(&pipeline)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--admin", &format!("127.0.0.1:{}", free_port())])
            .arg("--admin-token-file")
            .arg(&token)
            .args(&extra)
            .env_remove("SLUICE_KEYS_DIR")
            .env_remove("SLUICE_WORKERS");
        let out = output_within(cmd, Duration::from_secs(20));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(
            err.contains("--admin with tcp backends needs --workers spawn and --keys DIR"),
            "{extra:?}: {err}"
        );
        assert!(
            !token.exists(),
            "no token written for a listener that is refused"
        );
    }
}
