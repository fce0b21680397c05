//! The backbone over TLS: `sluice-web-ingress` and `sluice-exec-worker`
//! reach a `redis-server` through `rediss://`, trusting the private CA
//! named by `--redis-ca-file`. Without that CA they do not trust the
//! server: the ingress answers 503 and says why in its log.
//!
//! ```text
//!   caller ─HTTP─▶ ingress ══TLS══▶ redis-server (--tls-port, cert by a test CA) ◀══TLS══ workers
//! ```

use std::time::Duration;

use serde_json::json;
use sluice_e2e::{eventually, example, orders, Http, Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_flow_over_rediss_with_a_private_ca() {
    let sb = Sandbox::new("redis-tls");
    let redis = RedisServer::start_tls();
    let keys = sb.keygen();
    let pipeline = example("orders-redis.yaml");
    let ca = redis.ca_path();
    let over_tls = |spec: Spec| {
        spec.redis(&redis.tls_url(), &keys)
            .arg("--redis-ca-file")
            .arg(&ca)
    };
    let _cpu = Service::start(&sb, over_tls(Spec::worker(&pipeline, "cpu"))).await;
    let _io = Service::start(&sb, over_tls(Spec::worker(&pipeline, "io"))).await;
    let ingress = Service::start(&sb, over_tls(Spec::ingress(&pipeline))).await;

    let http = Http::new(Duration::from_secs(15));
    let url = ingress.url("/v1/orders");
    for i in 0..10 {
        let input = orders::input("tls", i);
        let a = if i == 0 {
            http.post_when_connected(&url, &input, Duration::from_secs(20))
                .await
        } else {
            http.post(&url, &input, None).await.expect("an answer")
        };
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.json(), orders::expected(&input));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_the_server_is_not_trusted_the_ingress_is_not_ready_and_requests_get_503() {
    let sb = Sandbox::new("redis-tls-untrusted");
    let redis = RedisServer::start_tls();
    let keys = sb.keygen();
    let pipeline = example("orders-redis.yaml");
    let ingress =
        Service::spawn_unready(&sb, Spec::ingress(&pipeline).redis(&redis.tls_url(), &keys));
    let http = Http::new(Duration::from_secs(15));
    // Serving, and not ready: the backend never answered.
    eventually(Duration::from_secs(30), "the ingress serves", || async {
        match http.get(&ingress.url("/healthz")).await {
            Ok(a) if a.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let ready = http.get(&ingress.url("/readyz")).await.expect("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.text());
    let url = ingress.url("/v1/orders");
    let a = http
        .post(
            &url,
            &json!({"id": "x", "type": "priority", "items": 1}),
            None,
        )
        .await
        .expect("an answer");
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.error_code().as_deref(), Some("backend_unavailable"));
    eventually(
        Duration::from_secs(20),
        "the ingress log names the certificate problem",
        || async {
            let log = ingress.log_text();
            if log.contains("InvalidCertificate") {
                Ok(())
            } else {
                Err(format!("log so far:\n{log}"))
            }
        },
    )
    .await;
}
