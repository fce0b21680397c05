//! A running managed Redis gets the users of a changed spec without a
//! restart: a real `redis-server` started from the `redis.conf` the
//! operator renders, then the operator's admin connection
//! (`sluice_operator::redis_users`) after the spec moves a node to a new
//! group and drops the old one; and a renewed TLS certificate served
//! without a restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_crds::{compile, PipelineId, StreamPipeline};
use sluice_e2e::resp::Probe;
use sluice_operator::redis_tls::{Stored, TlsMaterial};
use sluice_operator::redis_users::{RedisUsers, Tls, Wanted};
use sluice_operator::render::redis_acl;
use sluice_operator::{redis_secret, secrets};
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::Keys;
use sluice_platform::{RedisBackend, RedisConfig};

fn orders() -> StreamPipeline {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/orders-redis.yaml");
    let mut sp: StreamPipeline =
        sluice_crds::yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    sp.metadata.namespace = Some("users".into());
    sp.metadata.uid = Some("00000000-0000-4000-8000-0000000000a1".into());
    sp
}

/// Lifetime of the test certificates.
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A redis-server started as the Redis pod starts: from the `redis.conf`
/// in `P-redis`, with the server certificate and key beside it.
fn start(data: &BTreeMap<String, String>) -> RedisServer {
    let files: Vec<(&str, &[u8])> = ["tls.crt", "tls.key", "ca.crt"]
        .into_iter()
        .map(|k| (k, data[k].as_bytes()))
        .collect();
    RedisServer::start_with_config_files(
        &data["redis.conf"],
        "probe",
        &data["probe.password"],
        &files,
    )
}

fn wanted(sp: &StreamPipeline, passwords: &BTreeMap<String, String>) -> Wanted {
    let id = PipelineId {
        namespace: "users".into(),
        name: "orders-redis".into(),
    };
    let plan = compile(id, &sp.spec).unwrap();
    let tls = passwords.contains_key("ca.crt");
    Wanted::from_secret(redis_acl::users(&plan, tls), passwords).expect("a password per role")
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
    let fresh = secrets::fresh_redis_secret(&sp, DAY).unwrap();
    let before = secrets::text_data(&fresh);
    let server = start(&before);
    let pid = server.pid();
    let redis = Probe::new(server.port());
    // The operator's admin connection speaks TLS, trusting the CA of P-redis.
    let addr = server.tls_address();
    let tls = match TlsMaterial::from_data(&before) {
        Stored::Usable(m) => m,
        _ => panic!("a fresh P-redis holds TLS material"),
    };
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
        &redis_secret(
            &changed,
            |role| {
                before
                    .get(&role.password_key())
                    .cloned()
                    .unwrap_or_else(|| "fresh-password-for-gpu-0123456789".into())
            },
            Some(&tls),
        )
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

/// Whether a client trusting only `ca` gets through to `address` as the
/// probe user.
async fn connects_trusting(address: &str, password: &str, ca: &str) -> bool {
    let cfg = RedisConfig::from_url(&format!("rediss://probe:{password}@{address}"))
        .unwrap()
        .with_ca_pem(ca.as_bytes())
        .unwrap()
        .with_connect_timeout(Duration::from_secs(2))
        .with_command_timeout(Duration::from_secs(2))
        .with_pool_size(1);
    RedisBackend::connect(cfg).await.is_ok()
}

#[tokio::test]
async fn a_renewed_certificate_is_served_after_the_next_apply_without_a_restart() {
    let sp = orders();
    let data = secrets::text_data(&secrets::fresh_redis_secret(&sp, DAY).unwrap());
    let server = start(&data);
    let pid = server.pid();
    let addr = server.tls_address();
    let old_ca = data["ca.crt"].clone();
    assert!(connects_trusting(&addr, &data["probe.password"], &old_ca).await);
    let plain = Probe::new(server.port());
    assert!(
        plain.cmd(&[b"PING"]).is_err(),
        "nobody gets in without a password"
    );

    // The kubelet swaps in a new pair, from another CA so the switch shows
    // (a renewal keeps the CA, and clients could not tell).
    let new = TlsMaterial::fresh("orders-redis", "users", chrono::Utc::now(), DAY)
        .unwrap()
        .to_data();
    for k in ["tls.crt", "tls.key"] {
        std::fs::write(server.dir().join(k), &new[k]).unwrap();
    }
    assert!(
        connects_trusting(&addr, &data["probe.password"], &old_ca).await,
        "Redis keeps serving the certificate it loaded"
    );

    // The operator's next apply, trusting both CAs as a client would while
    // a CA changes, makes Redis load the files again.
    let mut w = wanted(&sp, &data);
    w.tls = Some(Tls {
        ca: format!("{old_ca}{}", new["ca.crt"]),
        cert: new["tls.crt"].clone(),
    });
    let users = Arc::new(RedisUsers::default());
    let key = "users/orders-redis";
    assert!(users.sync(key, &addr, w));
    applied(&users, key).await;
    assert!(connects_trusting(&addr, &data["probe.password"], &new["ca.crt"]).await);
    assert!(
        !connects_trusting(&addr, &data["probe.password"], &old_ca).await,
        "the old certificate is no longer served"
    );
    assert_eq!(server.pid(), pid, "no restart");
}

/// The operator's dead-letter actions run as `admin` on managed Redis: a
/// real `redis-server` from the rendered `redis.conf` (TLS), a dead letter
/// written by group `cpu`'s user as its worker writes one, then the same
/// list, redrive and purge `kubectl sluice dlq` asks for. The admin may
/// not read a queue's entries (against mistakes: its `ACL SETUSER` could
/// grant it anything).
#[tokio::test]
async fn the_admin_user_lists_redrives_and_purges_dead_letters_and_reads_no_queue() {
    use sluice_platform::envelope::{Envelope, Kind, ReplyError};
    use sluice_platform::{DeadLetterNote, KeyRing, Queue, SharedKeyRing, Signer};
    use sluice_web_ingress::dead_letters::DeadLetters;
    use sluice_web_ingress::dlq_command::{act, Act, Pick};

    let sp = orders();
    let data = secrets::text_data(&secrets::fresh_redis_secret(&sp, DAY).unwrap());
    let server = start(&data);
    let addr = server.tls_address();
    let connect = |user: &str| {
        let url = format!(
            "rediss://{user}:{}@{addr}",
            data[&format!("{user}.password")]
        );
        let cfg = RedisConfig::from_url(&url)
            .unwrap()
            .with_ca_pem(data["ca.crt"].as_bytes())
            .unwrap()
            .with_pool_size(1);
        RedisBackend::connect(cfg)
    };
    let keys = Keys::new("users", "orders-redis");
    let ring = SharedKeyRing::fixed(KeyRing::ephemeral());
    let plan = compile(
        PipelineId {
            namespace: "users".into(),
            name: "orders-redis".into(),
        },
        &sp.spec,
    )
    .unwrap();

    // What group cpu's worker writes when `price` fails for good.
    let cpu = connect("group-cpu").await.unwrap();
    let mut env = Envelope {
        kind: Kind::Request,
        pipeline: "users/orders-redis".into(),
        dest: "cpu".into(),
        cid: "c".into(),
        rid: "order-1".into(),
        trace: None,
        ts: 0,
        nonce: String::new(),
        deadline: sluice_platform::clock::now_ms() + 5_000,
        attempt: 1,
        node: Some("price".into()),
        plan: None,
        reply_to: Some("ingress-1".into()),
        live: None,
        seq: None,
        last_seq: None,
        payload: serde_json::json!({"id": "order-1"}),
        error: None,
    };
    let mut entry = Signer::new(ring.clone(), &keys, "web")
        .sign(&mut env)
        .unwrap();
    let error = ReplyError {
        code: "node_failed".into(),
        message: "no price".into(),
    };
    entry.note = DeadLetterNote::new("cpu", 3, &error).encode().into();
    let id = cpu.push(&keys.dead_letter(), entry).await.unwrap();

    let d = DeadLetters::on_redis(plan, ring, connect("admin").await.unwrap());
    let listed = act(
        &d,
        Act::List {
            limit: 10,
            payloads: false,
        },
        None,
    )
    .await
    .unwrap();
    assert!(
        listed.contains(&format!("{id}\t")) && listed.contains("\tcpu\tprice\torder-1\t"),
        "{listed}"
    );
    let pick = Pick {
        ids: vec![id.clone()],
        all: false,
    };
    let sent = act(
        &d,
        Act::Redrive {
            pick,
            interface: None,
            caller: None,
            follow_moved: false,
            dry_run: false,
        },
        None,
    )
    .await
    .unwrap();
    assert!(
        sent.starts_with(&format!("{id}\tsent\t/v1/orders/requests/")),
        "{sent}"
    );
    let probe = Probe::new(server.port());
    let group_cpu = probe.as_user("group-cpu", &data["group-cpu.password"]);
    assert!(
        matches!(
            group_cpu.cmd(&[b"XLEN", keys.queue("cpu").as_bytes()]),
            Ok(sluice_e2e::resp::Resp::Int(1))
        ),
        "the redriven request is on cpu's queue"
    );
    cpu.push(&keys.dead_letter(), sluice_platform::conformance::entry(1))
        .await
        .unwrap();
    let purged = act(
        &d,
        Act::Purge {
            pick: Pick {
                ids: vec![],
                all: true,
            },
            dry_run: false,
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(purged, "deleted 1 dead letter(s)\n");

    // The autoscaler user counts the dead letters (status.queues) and
    // reads none of them.
    let autoscaler = probe.as_user("autoscaler", &data["autoscaler.password"]);
    assert!(matches!(
        autoscaler.cmd(&[b"XLEN", keys.dead_letter().as_bytes()]),
        Ok(sluice_e2e::resp::Resp::Int(0))
    ));
    let refused = autoscaler.cmd(&[b"XRANGE", keys.dead_letter().as_bytes(), b"-", b"+"]);
    assert!(
        matches!(&refused, Err(e) if e.starts_with("NOPERM")),
        "{refused:?}"
    );

    // Nothing more: the admin sends to queues but reads none (the rules
    // as written; they bind mistakes, not a holder of the password).
    let admin = probe.as_user("admin", &data["admin.password"]);
    for cmd in [
        vec![
            b"XREAD".as_slice(),
            b"STREAMS",
            keys.queue("cpu").as_bytes(),
            b"0",
        ],
        vec![
            b"XRANGE".as_slice(),
            keys.dead_letter().as_bytes(),
            b"-",
            b"+",
        ],
        vec![b"DEL".as_slice(), keys.queue("cpu").as_bytes()],
    ] {
        let refused = admin.cmd(&cmd);
        assert!(
            matches!(&refused, Err(e) if e.starts_with("NOPERM")),
            "{:?}: {refused:?}",
            String::from_utf8_lossy(cmd[0])
        );
    }
}
