//! Helpers shared by the Redis test files: key prefixes, `redis-cli`, and
//! backends on one connection or as a restricted ACL user.

#![allow(dead_code)]

use std::sync::Arc;

use sluice_platform::redis::testing::RedisServer;
use sluice_platform::{RedisBackend, RedisConfig};

/// A key prefix no other case uses, shaped like a pipeline's (`{ns/p}` tag).
pub fn prefix() -> String {
    format!("sluice:{{t-{}/p}}", uuid::Uuid::new_v4())
}

/// One command through `redis-cli` against the test server.
pub fn cli(server: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(server.port().to_string())
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A backend on the test server with the default pool.
pub async fn backend(server: &RedisServer) -> Arc<RedisBackend> {
    let cfg = RedisConfig::from_url(&server.url()).expect("test URL parses");
    RedisBackend::connect(cfg)
        .await
        .expect("connects to the test server")
}

/// A backend on one pooled connection to `url`: every ordinary command
/// shares it.
pub async fn one_connection(url: &str) -> Arc<RedisBackend> {
    let cfg = RedisConfig::from_url(url)
        .expect("test URL parses")
        .with_pool_size(1);
    RedisBackend::connect(cfg)
        .await
        .expect("connects to the test server")
}

/// A backend on one pooled connection, as a Redis user `w` with `rules`
/// (`ACL SETUSER w on >… <rules>`).
pub async fn backend_as(server: &RedisServer, rules: &[&str]) -> Arc<RedisBackend> {
    let mut setuser = vec!["ACL", "SETUSER", "w", "on", ">w-password-0123"];
    setuser.extend_from_slice(rules);
    cli(server, &setuser);
    one_connection(&format!(
        "redis://w:w-password-0123@127.0.0.1:{}",
        server.port()
    ))
    .await
}
