//! Pause and resume against the processes the operator asks for (the rig
//! of `runtime_roundtrip.rs`): the operator's admin Redis user writes the
//! pause key, and the real binaries honour it.

mod kubelet;
mod roundtrip;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::resp::Resp;
use sluice_platform::Keys;

use kubelet::process::Proc;
use roundtrip::*;

/// An asynchronous bulk order of two items, `id`.
async fn submit(client: &reqwest::Client, base: &str, id: &str) -> reqwest::Response {
    client
        .post(format!("{base}/v1/orders"))
        .header("prefer", "respond-async")
        .json(&json!({"id": id, "type": "bulk", "items": 2}))
        .send()
        .await
        .expect("an answer")
}

/// Pause and resume (`spec.paused`) as the operator does them, against the
/// processes it asks for: its admin Redis user sets the pause key with the
/// users it applies (`redis_users::apply`), the ingress then answers 503
/// `paused`, a worker started while paused reads nothing of the entries
/// waiting for it, and after the resume every one of them is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_intake_and_reading_and_a_resume_answers_what_waited() {
    use sluice_operator::redis_users::{apply, Wanted};
    use sluice_operator::render::redis_acl;
    use sluice_platform::{RedisBackend, RedisConfig};

    let mut sp = load("orders-redis.yaml");
    // Asynchronous answers outlive the pause.
    sp.spec.interfaces[0].async_timeout = Some("60s".into());
    let (mut run, client, (status, got)) =
        start_orders_redis(sp, json!({"id": "A0", "type": "bulk", "items": 1})).await;
    assert_eq!(status, 200, "{got}");

    // Entries wait for group io: its worker is gone.
    let io = run
        .procs
        .iter()
        .position(|(p, _)| p.name.starts_with("orders-redis-io"))
        .expect("an io process");
    run.procs[io].0.kill();
    let base = format!("http://{}", run.ingress);
    let ids = ["P1", "P2", "P3", "P4", "P5"];
    let mut locations = vec![];
    for id in ids {
        let r = submit(&client, &base, id).await;
        assert_eq!(r.status().as_u16(), 202, "{id}");
        let v: Value = r.json().await.unwrap();
        locations.push(v["location"].as_str().expect("a location").to_string());
    }
    let keys = Keys::new(NAMESPACE, "orders-redis");
    let io_queue = keys.queue("io");
    let looker = run.redis_as("autoscaler");
    let length = || match looker.cmd(&[b"XLEN", io_queue.as_bytes()]) {
        Ok(Resp::Int(n)) => n,
        other => panic!("XLEN: {other:?}"),
    };
    let pending = || match looker.cmd(&[b"XPENDING", io_queue.as_bytes(), b"sluice"]) {
        Ok(Resp::Array(Some(a))) => match a.first() {
            Some(Resp::Int(n)) => *n,
            other => panic!("XPENDING count: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    // Handed-off entries are deleted: the queue holds those waiting.
    while length() < ids.len() as i64 {
        assert!(Instant::now() < deadline, "entries never reached q:io");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The operator's apply, as its admin user.
    let admin = {
        let port = run.redis.as_ref().unwrap().port();
        let password = &run.redis_secret["admin.password"];
        let cfg = RedisConfig::from_url(&format!("redis://admin:{password}@127.0.0.1:{port}"))
            .unwrap()
            .with_pool_size(1);
        RedisBackend::connect(cfg).await.expect("admin connects")
    };
    let wanted = |paused: bool| {
        Wanted::from_secret(redis_acl::users(&run.plan, true), &run.redis_secret)
            .expect("P-redis holds every password")
            .with_pause(keys.paused(), paused)
    };
    let outcome = apply(&admin, &wanted(true)).await;
    assert_eq!(outcome.pause, Some(Ok(true)));
    assert!(matches!(outcome.users, Some(Ok(_))), "{:?}", outcome.users);

    // The ingress refuses new work within a poll of the key; what it
    // accepted before waits with the rest.
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let id = format!("X{}", ids.len());
        let r = submit(&client, &base, &id).await;
        if r.status().as_u16() == 503 {
            assert_eq!(r.headers()["retry-after"], "5");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "paused", "{v}");
            break;
        }
        assert_eq!(r.status().as_u16(), 202, "before the pause arrives");
        let v: Value = r.json().await.unwrap();
        locations.push(v["location"].as_str().expect("a location").to_string());
        ids.push(id);
        assert!(Instant::now() < deadline, "the ingress never paused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A worker started while paused takes nothing.
    let restarted = Proc::spawn(&run.procs[io].1);
    run.procs[io].0 = restarted;
    let deadline = Instant::now() + READY_PATIENCE;
    while probe(&client, &run.procs[io].1, "readiness").await != Some(200) {
        assert!(Instant::now() < deadline, "io worker not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pending(), 0, "a paused worker read entries");
    let r = client
        .get(format!("{base}{}", locations[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "answered while paused");

    let outcome = apply(&admin, &wanted(false)).await;
    assert_eq!(outcome.pause, Some(Ok(false)));
    for (id, location) in ids.iter().zip(&locations) {
        let want = json!({"order": id, "price": 5, "status": "accepted", "summary": "2 item(s) in the standard lane"});
        answered(&client, &base, location, &want, Duration::from_secs(15)).await;
    }
    // The ingress takes requests again within a poll of the key.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, got) = post(
            &client,
            run.ingress,
            json!({"id": "R1", "type": "priority", "items": 1}),
        )
        .await;
        if status == 200 {
            break;
        }
        assert!(
            status == 503 && got["error"]["code"] == "paused" && Instant::now() < deadline,
            "after the resume: {status} {got}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (p, _) in &mut run.procs {
        assert!(p.exited().is_none(), "{} exited", p.name);
    }
}
