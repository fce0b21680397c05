//! Redis restarts under load, with AOF and without persistence. While Redis
//! is down, callers get `503 backend_unavailable` at once (or `504 timeout`
//! for requests already queued), nothing hangs past its timeout, `/readyz`
//! stays 200 (DESIGN §5: an outage must not take every pod out of the
//! Service); after the restart the ingress and the workers reconnect by
//! themselves within seconds, and the consumer groups lost with a
//! non-persistent Redis are created again.
//!
//! ```text
//!   load ──▶ ingress ──▶ redis ◀── cpu, io workers
//!   |── 1.5 s ──|── killed 1.5 s ──|── restarted: first 200 within seconds ──|── 2 s more ──|
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sluice_e2e::resp::Probe;
use sluice_e2e::{eventually, orders, Answer, Http, Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::Keys;
use tokio::time::Instant;

/// The interface timeout of the test pipeline.
const TIMEOUT: Duration = Duration::from_secs(4);
/// What a request may take beyond its timeout (scheduling, a command
/// timing out while the connection breaks).
const MARGIN: Duration = Duration::from_millis(1500);
const CALLERS: usize = 8;
const BEFORE: Duration = Duration::from_millis(1500);
const OUTAGE: Duration = Duration::from_millis(1500);
const AFTER: Duration = Duration::from_secs(2);
/// Requests sent at `kill + PROBE_FROM + n × PROBE_EVERY`, all inside the outage.
const OUTAGE_PROBES: u32 = 10;
const PROBE_FROM: Duration = Duration::from_millis(300);
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How soon after Redis is back a new request must get 200.
const RECOVERY: Duration = Duration::from_secs(8);

struct Call {
    started: Instant,
    answer: Result<Answer, String>,
}

async fn redis_restart_during_load(persistence: bool) {
    let name = if persistence {
        "redis-restart-aof"
    } else {
        "redis-restart-none"
    };
    let sb = Sandbox::new(name);
    let mut redis = RedisServer::start(persistence);
    let keys = sb.keygen();
    let pipeline = sb.manifest_from_example(
        "orders-redis.yaml",
        &[
            ("timeout: 5s", "timeout: 4s"),
            ("lease: 1s", "lease: 500ms"),
        ],
    );
    let mut cpu = Service::start(
        &sb,
        Spec::worker(&pipeline, "cpu").redis(&redis.url(), &keys),
    )
    .await;
    let mut io = Service::start(
        &sb,
        Spec::worker(&pipeline, "io").redis(&redis.url(), &keys),
    )
    .await;
    let mut ingress =
        Service::start(&sb, Spec::ingress(&pipeline).redis(&redis.url(), &keys)).await;
    // A client timeout far above the interface timeout: a hang shows up as
    // an elapsed time over TIMEOUT + MARGIN, or as an `Err`.
    let http = Http::new(TIMEOUT * 4);
    let url = ingress.url("/v1/orders");
    let a = http
        .post_when_connected(&url, &orders::input("warm-up", 0), Duration::from_secs(10))
        .await;
    assert_eq!(a.status, 200, "warm-up: {}", a.text());

    let stop = AtomicBool::new(false);
    let calls = Mutex::new(Vec::<Call>::new());
    let callers = futures::future::join_all((0..CALLERS).map(|c| {
        let (http, url, stop, calls) = (&http, &url, &stop, &calls);
        async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("{name}-{c}-{i}");
                let started = Instant::now();
                let answer = http.post(url, &orders::input(&id, i), None).await;
                // Errors come back at once during the outage: do not spin.
                if !answer.as_ref().is_ok_and(|a| a.status == 200) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                calls.lock().unwrap().push(Call { started, answer });
                i += 1;
            }
        }
    }));
    let faults = async {
        tokio::time::sleep(BEFORE).await;
        // Blocking calls (signal, reap, wait for PING): let the runtime move
        // the HTTP connections' tasks elsewhere meanwhile.
        tokio::task::block_in_place(|| redis.kill());
        let killed = Instant::now();
        // Fresh requests at fixed times inside the outage, whatever the
        // callers are doing (they may all be waiting on requests queued
        // before the kill, legitimately, until their timeout).
        let outage_probes = futures::future::join_all((0..OUTAGE_PROBES).map(|n| {
            let (http, url, calls) = (&http, &url, &calls);
            async move {
                tokio::time::sleep_until(killed + PROBE_FROM + PROBE_EVERY * n).await;
                let started = Instant::now();
                let answer = http
                    .post(url, &orders::input(&format!("{name}-outage-{n}"), 1), None)
                    .await;
                calls.lock().unwrap().push(Call { started, answer });
            }
        }));
        let restart = async {
            tokio::time::sleep(OUTAGE / 2).await;
            // Readiness does not follow Redis.
            let ready = http.get(&ingress.url("/readyz")).await;
            assert!(
                ready.as_ref().is_ok_and(|a| a.status == 200),
                "ingress /readyz during the outage: {ready:?}"
            );
            for w in [&cpu, &io] {
                let ready = http.get(&w.url("/readyz")).await;
                assert!(
                    ready.as_ref().is_ok_and(|a| a.status == 200),
                    "{} /readyz during the outage: {ready:?}",
                    w.name()
                );
            }
            tokio::time::sleep(OUTAGE / 2).await;
            let restarting = Instant::now();
            tokio::task::block_in_place(|| redis.restart());
            let restarted = Instant::now();
            // A new request gets its 200 within seconds: both processes found
            // Redis again by themselves.
            let probe_http = Http::new(TIMEOUT * 4);
            let (_, recovery) = eventually(RECOVERY, "a 200 after the restart", || {
                let (h, u) = (&probe_http, &url);
                async move {
                    let a = h.post(u, &orders::input("probe", 1), None).await?;
                    if a.status == 200 {
                        Ok(())
                    } else {
                        Err(format!("{} {}", a.status, a.text()))
                    }
                }
            })
            .await;
            tokio::time::sleep(AFTER).await;
            stop.store(true, Ordering::SeqCst);
            (killed, restarting, restarted, recovery)
        };
        tokio::join!(outage_probes, restart).1
    };
    let (_, (killed, restarting, restarted, recovery)) = tokio::join!(callers, faults);
    let calls = calls.into_inner().unwrap();

    let mut during = (0, 0, 0); // 200, 503, 504 among calls started while Redis was down
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for c in &calls {
        let a = match &c.answer {
            Ok(a) => a,
            Err(e) => panic!("a request got no answer: {e}"),
        };
        let code = a.error_code().unwrap_or_default();
        *statuses.entry(format!("{} {code}", a.status)).or_default() += 1;
        assert!(
            matches!(
                (a.status, code.as_str()),
                (200, "") | (503, "backend_unavailable") | (504, "timeout")
            ),
            "unexpected answer {} {}",
            a.status,
            a.text()
        );
        assert!(
            a.elapsed <= TIMEOUT + MARGIN,
            "a request took {:?} (timeout {TIMEOUT:?}): {} {}",
            a.elapsed,
            a.status,
            a.text()
        );
        // Started after the kill was surely noticed, before Redis was back.
        if c.started >= killed + Duration::from_millis(300) && c.started < restarting {
            match a.status {
                200 => during.0 += 1,
                503 => during.1 += 1,
                _ => during.2 += 1,
            }
        }
    }
    assert_eq!(
        during.0, 0,
        "{} requests started while Redis was down got 200 (statuses during: {during:?})",
        during.0
    );
    assert!(
        during.1 > 0,
        "no request started during the outage got 503 (statuses during: {during:?})"
    );
    let ok_after = calls
        .iter()
        .filter(|c| c.started >= restarted + recovery)
        .filter(|c| c.answer.as_ref().is_ok_and(|a| a.status == 200))
        .count();
    assert!(ok_after > 0, "no caller got 200 after the recovery");

    // After the restart everything is served again, both lanes.
    for i in 0..10 {
        let input = orders::input(&format!("after-{i}"), i);
        let a = http.post(&url, &input, None).await.expect("an answer");
        assert_eq!(a.status, 200, "request {i} after recovery: {}", a.text());
        assert_eq!(a.json(), orders::expected(&input));
    }
    let probe = Probe::new(redis.port());
    let k = Keys::new("default", "orders-redis");
    for g in ["cpu", "io"] {
        let groups = probe.groups(&k.queue(g)).expect("the queue exists again");
        assert_eq!(groups, vec!["sluice".to_string()], "consumer groups of {g}");
    }
    // No process crashed or restarted: they recovered by themselves.
    for s in [&mut cpu, &mut io, &mut ingress] {
        assert!(
            s.exited().is_none(),
            "{} exited during the outage",
            s.name()
        );
    }
    eprintln!(
        "{name}: {} calls {statuses:?}; started during the outage: {during:?} (200, 503, 504); \
         first 200 {recovery:?} after the restart",
        calls.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_aof_during_load_gives_503s_then_recovers_by_itself() {
    redis_restart_during_load(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_without_persistence_during_load_gives_503s_then_recovers_by_itself() {
    redis_restart_during_load(false).await;
}

/// An ingress that has never reached Redis is not ready: a pod of a rolling
/// update takes no traffic it would answer `503 backend_unavailable`. Once
/// Redis has answered it is ready, and a later outage does not take that
/// back (the tests above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_is_not_ready_before_redis_first_answers() {
    let sb = Sandbox::new("ready-after-redis");
    let redis = RedisServer::start(false);
    let keys = sb.keygen();
    let pipeline = sb.manifest_from_example("orders-redis.yaml", &[]);
    // Connections open, nothing answers.
    redis.freeze();
    let mut ingress =
        Service::spawn_unready(&sb, Spec::ingress(&pipeline).redis(&redis.url(), &keys));
    let http = Http::new(Duration::from_secs(2));
    eventually(
        Duration::from_secs(30),
        "the ingress serves /healthz",
        || async {
            match http.get(&ingress.url("/healthz")).await {
                Ok(a) if a.status == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    for _ in 0..10 {
        let a = http.get(&ingress.url("/readyz")).await.expect("/readyz");
        assert_eq!(
            (a.status, a.text().as_str()),
            (503, "the backend has not answered yet")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ingress.exited().is_none(), "{}", ingress.log_text());
    redis.thaw();
    eventually(
        Duration::from_secs(30),
        "ready once Redis answers",
        || async {
            match http.get(&ingress.url("/readyz")).await {
                Ok(a) if a.status == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}
