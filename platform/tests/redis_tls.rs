//! `rediss://`: the Redis adapters over TLS against a real `redis-server`
//! serving a certificate signed by a private CA. With that CA given
//! ([`RedisConfig::with_ca_pem`]) the adapters pass the queue, reply and kv
//! suites; without it (system roots only) the server is not trusted and
//! connecting fails with a TLS error, never silently in plain text.

use std::sync::Arc;
use std::time::Duration;

use sluice_platform::conformance::{kv_suite, queue_suite, reply_suite};
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::redis::ConfigError;
use sluice_platform::{RedisBackend, RedisConfig};

fn prefix() -> String {
    format!("sluice:{{tls-{}/p}}", uuid::Uuid::new_v4())
}

async fn tls_backend(server: &RedisServer) -> Arc<RedisBackend> {
    let cfg = RedisConfig::from_url(&server.tls_url())
        .expect("test URL parses")
        .with_ca_pem(&server.ca_pem())
        .expect("the test CA loads");
    assert!(cfg.uses_tls());
    RedisBackend::connect(cfg)
        .await
        .expect("connects over TLS, trusting the test CA")
}

#[tokio::test]
async fn over_tls_with_a_private_ca_the_adapters_pass_every_suite() {
    let server = RedisServer::start_tls();
    let b = tls_backend(&server).await;
    queue_suite(|| {
        let b = b.clone();
        async move { (b, prefix()) }
    })
    .await;
    reply_suite(|| {
        let b = b.clone();
        async move { (b, prefix()) }
    })
    .await;
    kv_suite(|| {
        let b = b.clone();
        async move { (b, prefix()) }
    })
    .await;
}

#[tokio::test]
async fn a_server_signed_by_an_unknown_ca_is_refused() {
    let server = RedisServer::start_tls();
    // System roots only: the test CA is not among them.
    let cfg = RedisConfig::from_url(&server.tls_url())
        .unwrap()
        .with_connect_timeout(Duration::from_secs(1))
        .with_command_timeout(Duration::from_secs(1));
    let err = RedisBackend::connect(cfg)
        .await
        .expect_err("an untrusted server must not be used");
    assert_untrusted(&err.to_string());

    // Another CA than the one that signed the server: refused as well.
    let other = RedisServer::start_tls();
    let cfg = RedisConfig::from_url(&server.tls_url())
        .unwrap()
        .with_ca_pem(&other.ca_pem())
        .unwrap()
        .with_connect_timeout(Duration::from_secs(1))
        .with_command_timeout(Duration::from_secs(1));
    let err = RedisBackend::connect(cfg)
        .await
        .expect_err("a server signed by another CA must not be used");
    assert_untrusted(&err.to_string());
}

/// The error names the certificate problem (rustls: `UnknownIssuer` when
/// no root matches, `BadSignature` when a root of the same name does).
fn assert_untrusted(err: &str) {
    assert!(
        err.contains("InvalidCertificate(UnknownIssuer)")
            || err.contains("InvalidCertificate(BadSignature)"),
        "refused because the server's certificate is not trusted: {err}"
    );
}

#[test]
fn a_ca_needs_a_tls_url_and_real_certificates() {
    let plain = RedisConfig::from_url("redis://:hunter22@127.0.0.1:6379").unwrap();
    let err = plain.with_ca_pem(b"").unwrap_err();
    assert!(matches!(err, ConfigError::InvalidUrl { .. }), "{err}");
    assert!(!err.to_string().contains("hunter22"), "{err}");

    let tls = RedisConfig::from_url("rediss://127.0.0.1:6380").unwrap();
    for junk in [
        &b""[..],
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    ] {
        let err = tls.clone().with_ca_pem(junk).unwrap_err();
        assert!(matches!(err, ConfigError::InvalidCa { .. }), "{err}");
    }
}
