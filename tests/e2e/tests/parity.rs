//! Parity between profiles, and the README's by-hand Redis run: the same
//! inputs through the orders example give byte-identical answers when one
//! `sluice-web-ingress` runs everything in memory (`examples/orders.yaml`),
//! when it starts one `sluice-exec-worker` per group and reaches them over
//! loopback TCP (`examples/orders-tcp.yaml`), and when the ingress and one
//! worker per group talk through Redis (`examples/orders-redis.yaml`, the
//! same graph). Concurrent senders see their own answers in their own
//! order in every profile.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_e2e::{eventually, example, orders, scrape, Http, Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;

/// Twenty inputs: the README's, both lanes, and the awkward corners of
/// JSON (escapes, non-ASCII, numbers of every shape, extra fields).
fn inputs() -> Vec<Value> {
    vec![
        json!({"id": "A1", "type": "priority", "items": 3}),
        json!({"id": "B2", "type": "bulk", "items": 2}),
        json!({"id": "ordre-été-№5", "type": "priority", "items": 1}),
        json!({"id": "emoji-📦", "type": "standard", "items": 0}),
        json!({"id": "q\"uote\\back", "type": "bulk", "items": 7}),
        json!({"id": "half", "type": "bulk", "items": 2.5}),
        json!({"id": "minus", "type": "priority", "items": -1}),
        json!({"id": "big", "type": "bulk", "items": 12_345_678_901_234_i64}),
        json!({"id": "word", "type": "bulk", "items": "three"}),
        json!({"id": "extra", "type": "priority", "items": 1, "note": "ignored", "nested": {"a": [1, 2]}}),
        json!({"id": "case", "type": "PRIORITY", "items": 4}),
        json!({"id": "x".repeat(500), "type": "bulk", "items": 9}),
        json!({"id": 42, "type": "priority", "items": 6}),
        json!({"id": "bool", "type": "bulk", "items": true}),
        json!({"id": "null", "type": "priority", "items": null}),
        json!({"id": "line\nbreak\ttab", "type": "bulk", "items": 1}),
        json!({"id": "tiny", "type": "bulk", "items": 1e-7}),
        json!({"id": "<script>alert(1)</script>", "type": "priority", "items": 2}),
        json!({"id": "list", "type": "bulk", "items": [1, 2, 3]}),
        json!({"id": "unicode-\u{2028}-sep", "type": "priority", "items": 8}),
    ]
}

/// The orders pipeline on Redis, by hand, as the README and the example's
/// header say: redis-server, keygen, one exec-worker per group, the ingress.
struct OnRedis {
    _redis: RedisServer,
    cpu: Service,
    io: Service,
    ingress: Service,
}

async fn on_redis(sb: &Sandbox) -> OnRedis {
    let redis = RedisServer::start(false);
    let keys = sb.keygen();
    let pipeline = example("orders-redis.yaml");
    let worker = |group: &str| Spec::worker(&pipeline, group).redis(&redis.url(), &keys);
    let cpu = Service::start(sb, worker("cpu")).await;
    let io = Service::start(sb, worker("io")).await;
    let ingress = Service::start(
        sb,
        Spec::ingress(&pipeline)
            .named("ingress-redis")
            .redis(&redis.url(), &keys),
    )
    .await;
    OnRedis {
        _redis: redis,
        cpu,
        io,
        ingress,
    }
}

/// Posts every input; each must be answered 200. Returns the raw bodies.
async fn answers(http: &Http, ingress: &Service, inputs: &[Value]) -> Vec<Vec<u8>> {
    let mut out = vec![];
    for (i, input) in inputs.iter().enumerate() {
        let a = http
            .post(
                &ingress.url("/v1/orders"),
                input,
                Some(&format!("parity-{i}")),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: input {i} got no answer: {e}", ingress.name()));
        assert_eq!(
            a.status,
            200,
            "{}: input {i} {input} answered {}",
            ingress.name(),
            a.text()
        );
        out.push(a.body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_give_byte_identical_answers_in_memory_and_on_redis_run_by_hand() {
    let sb = Sandbox::new("parity");
    let http = Http::new(Duration::from_secs(15));
    let inputs = inputs();

    // Memory profile: one process, no key ring, no Redis.
    let memory = Service::start(
        &sb,
        Spec::ingress(&example("orders.yaml")).named("ingress-memory"),
    )
    .await;
    let in_memory = answers(&http, &memory, &inputs).await;
    drop(memory);

    // Tcp: the ingress starts a worker process per group.
    let tcp = Service::start(
        &sb,
        Spec::ingress(&example("orders-tcp.yaml")).named("ingress-tcp"),
    )
    .await;
    let over_tcp = answers(&http, &tcp, &inputs).await;
    drop(tcp);
    for (i, (m, t)) in in_memory.iter().zip(&over_tcp).enumerate() {
        assert_eq!(
            String::from_utf8_lossy(m),
            String::from_utf8_lossy(t),
            "input {i} {}: memory and tcp answers differ",
            inputs[i]
        );
    }

    let OnRedis {
        _redis,
        cpu,
        io,
        ingress,
    } = on_redis(&sb).await;

    // The README's request.
    let readme = json!({"id": "A1", "type": "priority", "items": 3});
    let a = http
        .post_when_connected(&ingress.url("/v1/orders"), &readme, Duration::from_secs(10))
        .await;
    assert_eq!(a.status, 200, "the README's request: {}", a.text());
    assert_eq!(a.json(), orders::expected(&readme));

    let on_redis = answers(&http, &ingress, &inputs).await;
    for (i, (m, r)) in in_memory.iter().zip(&on_redis).enumerate() {
        assert_eq!(
            String::from_utf8_lossy(m),
            String::from_utf8_lossy(r),
            "input {i} {}: memory and Redis answers differ",
            inputs[i]
        );
        assert_eq!(m, r, "input {i}: bytes differ");
    }
    // Well-formed orders also get the documented answer (both profiles
    // could otherwise agree on something wrong).
    for (i, input) in inputs.iter().enumerate().take(2) {
        let got: Value = serde_json::from_slice(&on_redis[i]).expect("JSON answer");
        assert_eq!(got, orders::expected(input), "input {i}");
    }

    // The answers came through the worker processes, not an inline worker:
    // every request went cpu → io, and io replied to each.
    // A worker counts an entry after handing it off, so the counts are read
    // once both workers are idle.
    let n = inputs.len() as u64 + 1;
    eventually(
        Duration::from_secs(10),
        "cpu worker forwarded and io worker replied to every request, both idle",
        || async {
            let cpu_m = scrape(&cpu.url("/metrics")).await;
            let io_m = scrape(&io.url("/metrics")).await;
            let forwarded = cpu_m.count("sluice_worker_entries_total", &[("outcome", "forwarded")]);
            let replied = io_m.count("sluice_worker_entries_total", &[("outcome", "replied")]);
            let busy = (
                cpu_m.count("sluice_worker_in_flight", &[("group", "cpu")]),
                io_m.count("sluice_worker_in_flight", &[("group", "io")]),
            );
            if forwarded == n && replied == n && busy == (0, 0) {
                Ok(())
            } else {
                Err(format!(
                    "cpu forwarded {forwarded}, io replied {replied} (want {n} each); \
                     in flight (cpu, io) {busy:?}\ncpu:\n{}\nio:\n{}",
                    cpu_m.text(),
                    io_m.text()
                ))
            }
        },
    )
    .await;
}

/// `senders` callers at once, each posting `per_sender` orders one after
/// another; every answer must be 200. Returns each sender's answers in the
/// order it got them.
async fn concurrent_answers(url: &str, senders: usize, per_sender: usize) -> Vec<Vec<Vec<u8>>> {
    let mut tasks = vec![];
    for s in 0..senders {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let http = Http::new(Duration::from_secs(15));
            let mut got = vec![];
            for i in 0..per_sender {
                // The id names sender and position: an answer out of its
                // sender's order, or another sender's, never matches.
                let input = orders::input(&format!("sender-{s}-{i}"), i);
                let a = http
                    .post(&url, &input, None)
                    .await
                    .unwrap_or_else(|e| panic!("sender {s} order {i}: {e}"));
                assert_eq!(a.status, 200, "sender {s} order {i}: {}", a.text());
                got.push(a.body);
            }
            got
        }));
    }
    let mut out = vec![];
    for t in tasks {
        out.push(t.await.expect("a sender panicked"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_get_the_same_answers_in_their_order_on_every_profile() {
    let sb = Sandbox::new("parity-concurrent");
    let (senders, per_sender) = (6, 15);

    let memory = Service::start(
        &sb,
        Spec::ingress(&example("orders.yaml")).named("ingress-memory"),
    )
    .await;
    let in_memory = concurrent_answers(&memory.url("/v1/orders"), senders, per_sender).await;
    drop(memory);

    let tcp = Service::start(
        &sb,
        Spec::ingress(&example("orders-tcp.yaml")).named("ingress-tcp"),
    )
    .await;
    let over_tcp = concurrent_answers(&tcp.url("/v1/orders"), senders, per_sender).await;
    drop(tcp);

    // Every part bound: a part left to `..` would be dropped (stopped) here.
    let OnRedis {
        _redis,
        cpu: _cpu,
        io: _io,
        ingress,
    } = on_redis(&sb).await;
    let first = orders::input("warm-up", 0);
    let a = Http::new(Duration::from_secs(15))
        .post_when_connected(&ingress.url("/v1/orders"), &first, Duration::from_secs(10))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let on_redis = concurrent_answers(&ingress.url("/v1/orders"), senders, per_sender).await;

    for s in 0..senders {
        for i in 0..per_sender {
            let want = orders::expected(&orders::input(&format!("sender-{s}-{i}"), i));
            let got: Value = serde_json::from_slice(&in_memory[s][i]).expect("JSON answer");
            assert_eq!(
                got, want,
                "memory: sender {s} answer {i} is not its own order's"
            );
            assert_eq!(
                in_memory[s][i], over_tcp[s][i],
                "sender {s} answer {i}: memory and tcp differ"
            );
            assert_eq!(
                in_memory[s][i], on_redis[s][i],
                "sender {s} answer {i}: memory and Redis differ"
            );
        }
    }
}
