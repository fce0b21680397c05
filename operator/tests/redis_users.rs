//! A running managed Redis gets the users of a changed spec without a
//! restart: a real `redis-server` started from the `redis.conf` the
//! operator renders, then the operator's admin connection
//! (`sluice_operator::redis_users`) after the spec moves a node to a new
//! group and drops the old one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_crds::{compile, PipelineId, StreamPipeline};
use sluice_e2e::resp::Probe;
use sluice_operator::redis_users::{RedisUsers, Wanted};
use sluice_operator::render::redis_acl;
use sluice_operator::{redis_secret, secrets};
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::Keys;

fn orders() -> StreamPipeline {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/orders-redis.yaml");
    let mut sp: StreamPipeline =
        sluice_crds::yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    sp.metadata.namespace = Some("users".into());
    sp.metadata.uid = Some("00000000-0000-4000-8000-0000000000a1".into());
    sp
}

fn wanted(sp: &StreamPipeline, passwords: &BTreeMap<String, String>) -> Wanted {
    let id = PipelineId {
        namespace: "users".into(),
        name: "orders-redis".into(),
    };
    let plan = compile(id, &sp.spec).unwrap();
    Wanted::from_secret(redis_acl::users(&plan), passwords).expect("a password per role")
}

async fn applied(users: &RedisUsers, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !users.is_applied(key) {
        assert!(Instant::now() < deadline, "users not applied within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_new_group_gets_its_user_and_a_removed_one_loses_it_without_a_restart() {
    let sp = orders();
    let before = secrets::text_data(&secrets::fresh_redis_secret(&sp).unwrap());
    let server =
        RedisServer::start_with_config(&before["redis.conf"], "probe", &before["probe.password"]);
    let pid = server.pid();
    let redis = Probe::new(server.port());
    let addr = format!("127.0.0.1:{}", server.port());
    let keys = Keys::new("users", "orders-redis");

    // The spec moves `summarize` from `io` to a new group `gpu`.
    let mut changed = sp.clone();
    let spec = serde_json::to_string(&changed.spec)
        .unwrap()
        .replace(r#""name":"io""#, r#""name":"gpu""#)
        .replace(r#""group":"io""#, r#""group":"gpu""#);
    changed.spec = serde_json::from_str(&spec).unwrap();
    // What the reconciler stores: the old passwords kept, one new one.
    let after = secrets::text_data(
        &redis_secret(&changed, |role| {
            before
                .get(&role.password_key())
                .cloned()
                .unwrap_or_else(|| "fresh-password-for-gpu-0123456789".into())
        })
        .unwrap(),
    );
    assert!(!after.contains_key("group-io.password"));
    let gpu = redis.as_user("group-gpu", &after["group-gpu.password"]);
    assert!(
        gpu.cmd(&[b"PING"]).is_err(),
        "the running Redis does not know group-gpu yet"
    );

    let users = Arc::new(RedisUsers::default());
    let key = "users/orders-redis";
    assert!(users.sync(key, &addr, wanted(&changed, &after)));
    applied(&users, key).await;

    assert!(gpu.cmd(&[b"XLEN", keys.queue("gpu").as_bytes()]).is_ok());
    let refused = gpu.cmd(&[b"XLEN", keys.queue("cpu").as_bytes()]);
    assert!(
        matches!(&refused, Err(e) if e.starts_with("NOPERM")),
        "group-gpu is held to its own queue: {refused:?}"
    );
    let io = redis.as_user("group-io", &before["group-io.password"]);
    let gone = io.cmd(&[b"PING"]);
    assert!(
        matches!(&gone, Err(e) if e.starts_with("WRONGPASS")),
        "the removed group's user is gone: {gone:?}"
    );
    // The roles that stayed keep their passwords and rights.
    let cpu = redis.as_user("group-cpu", &after["group-cpu.password"]);
    assert!(cpu.cmd(&[b"XLEN", keys.queue("cpu").as_bytes()]).is_ok());
    assert!(redis.cmd(&[b"PING"]).is_err(), "default stays off");
    assert_eq!(server.pid(), pid, "no restart");

    // The same users again: nothing to do.
    assert!(!users.sync(key, &addr, wanted(&changed, &after)));

    // A Redis that does not answer: nothing applied, and a later sync tries
    // again.
    let other = "users/elsewhere";
    assert!(users.sync(other, "127.0.0.1:1", wanted(&changed, &after)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !users.sync(other, "127.0.0.1:1", wanted(&changed, &after)) {
        assert!(Instant::now() < deadline, "a failed sync is never retried");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!users.is_applied(other));
}
