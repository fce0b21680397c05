//! TLS termination in the ingress (`--tls-cert`, `--tls-key`), through
//! clients that are not ours: curl picks HTTP/2 or HTTP/1.1 by ALPN on one
//! port, reqwest posts over TLS, a renewed certificate is served without a
//! restart, a cleartext request and a silent connection get nothing, and a
//! key that does not match its certificate refuses the start.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_web_ingress::tls::TlsFiles;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// A self-signed certificate for `localhost` and its key, written as
/// `<name>.crt` and `<name>.key` in `dir`; returns their paths.
fn self_signed(dir: &Path, name: &str) -> TlsFiles {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a certificate");
    let files = TlsFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, made.cert.pem()).expect("write");
    std::fs::write(&files.key, made.signing_key.serialize_pem()).expect("write");
    files
}

async fn start(files: &TlsFiles) -> sluice_web_ingress::Ingress {
    let mut config = common::config(&common::workspace_root().join("examples/hello.yaml"));
    config.tls = Some(files.clone());
    config.tls_reload_every = Duration::from_millis(100);
    config.http.header_timeout = Duration::from_secs(1);
    sluice_web_ingress::start_with(config, sluice_exec_worker::Registry::builtin())
        .await
        .expect("the ingress starts with TLS")
}

/// curl over TLS trusting only `ca`: (exit success, body + "\n" + HTTP version).
async fn curl(port: u16, ca: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_version}"])
        .arg("--cacert")
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(extra)
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"name":"tls"}"#,
        ])
        .arg(format!("https://localhost:{port}/v1/hello"))
        .output()
        .await
        .expect("curl runs (scripts/test installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_picks_http2_or_http1_and_a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let files = self_signed(dir.path(), "served");
    let first_ca: PathBuf = dir.path().join("first-ca.crt");
    std::fs::copy(&files.cert, &first_ca).expect("copy");
    let ingress = start(&files).await;
    let port = ingress.local_addr().port();
    let answer = "{\"greeting\":\"hello, tls\"}";

    assert_eq!(
        curl(port, &first_ca, &["--http2"]).await,
        (true, format!("{answer}\n2"))
    );
    assert_eq!(
        curl(port, &first_ca, &["--http1.1"]).await,
        (true, format!("{answer}\n1.1"))
    );

    // reqwest, trusting the certificate.
    let pem = std::fs::read(&first_ca).expect("read");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM certificate"))
        .resolve("localhost", ingress.local_addr())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let resp = client
        .post(format!("https://localhost:{port}/v1/hello"))
        .json(&serde_json::json!({"name": "reqwest"}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.expect("JSON"),
        serde_json::json!({"greeting": "hello, reqwest"})
    );

    // Cleartext HTTP to the TLS port gets no HTTP answer, and the ingress
    // keeps serving.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{port}/v1/hello"))
        .output()
        .await
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "000", "{out:?}");

    // A connection that never starts its handshake is closed at the header
    // deadline (1 s here).
    let mut silent = tokio::net::TcpStream::connect(ingress.local_addr())
        .await
        .expect("connect");
    let opened = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(opened.elapsed() >= Duration::from_millis(900));

    // Renewed in place (a new key too): new connections get the new one.
    let renewed = self_signed(dir.path(), "renewed");
    std::fs::copy(&renewed.key, &files.key).expect("copy");
    std::fs::copy(&renewed.cert, &files.cert).expect("copy");
    common::eventually(
        Duration::from_secs(10),
        "the renewed certificate",
        || async {
            let (ok, _) = curl(port, &renewed.cert, &[]).await;
            ok.then_some(())
        },
    )
    .await;
    let (old_ok, _) = curl(port, &first_ca, &[]).await;
    assert!(!old_ok, "the first certificate is still served");

    // A broken renewal is not taken: the last good pair stays.
    std::fs::write(&files.key, "garbage").expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        curl(port, &renewed.cert, &["--http2"]).await,
        (true, format!("{answer}\n2"))
    );
    common::stop(ingress).await;
}

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_refuses_the_start() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let a = self_signed(dir.path(), "a");
    let b = self_signed(dir.path(), "b");
    let manifest = common::workspace_root().join("examples/hello.yaml");
    let (status, _, stderr) = common::run_binary(
        &[
            "--pipeline",
            manifest.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            a.cert.to_str().expect("utf-8"),
            "--tls-key",
            b.key.to_str().expect("utf-8"),
        ],
        dir.path(),
    )
    .await;
    assert!(!status.success());
    assert!(
        stderr.contains("a.crt") && stderr.contains("does not belong"),
        "{stderr}"
    );
    let (status, _, stderr) = common::run_binary(
        &[
            "--pipeline",
            manifest.to_str().expect("utf-8"),
            "--tls-cert",
            a.cert.to_str().expect("utf-8"),
        ],
        dir.path(),
    )
    .await;
    assert!(!status.success());
    assert!(stderr.contains("set both"), "{stderr}");
}
