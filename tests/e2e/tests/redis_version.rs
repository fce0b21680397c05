//! A Redis older than 7.0 is named in the log, with its version and what
//! sluice needs, instead of every request failing on its own.
//!
//! ```text
//!   sluice-web-ingress ──▶ VersionedServer: INFO says redis_version:6.2.14
//!   sluice-exec-worker ──▶        (no Redis 6 can be installed here)
//! ```

use std::time::Duration;

use sluice_e2e::resp::VersionedServer;
use sluice_e2e::{eventually, example, Sandbox, Service, Spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_and_worker_name_a_redis_older_than_7() {
    let sb = Sandbox::new("redis-version");
    let old = VersionedServer::start("6.2.14");
    let url = old.url(Some("hunter22"));
    let keys = sb.keygen();
    let pipeline = example("orders-redis.yaml");
    let worker = Service::start(&sb, Spec::worker(&pipeline, "cpu").redis(&url, &keys)).await;
    // Never ready: no Redis 7 ever answers it.
    let ingress = Service::spawn_unready(&sb, Spec::ingress(&pipeline).redis(&url, &keys));
    for service in [&worker, &ingress] {
        let log = eventually(
            Duration::from_secs(20),
            "the log names the Redis version",
            || async {
                let log = service.log_text();
                if log.contains("runs Redis 6.2.14; sluice needs Redis 7.0 or later") {
                    Ok(log)
                } else {
                    Err(format!("{} log so far:\n{log}", service.name()))
                }
            },
        )
        .await
        .0;
        assert!(!log.contains("hunter22"), "{log}");
    }
}
