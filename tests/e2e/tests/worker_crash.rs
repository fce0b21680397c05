//! Worker crash: three `sluice-exec-worker` processes of group `cpu` (and
//! one of `io`) serve the orders example while one `cpu` worker after the
//! other is killed with SIGKILL and restarted, as a Deployment would. The
//! lease (500 ms) is far below the interface timeout (10 s), so a crash
//! costs a caller a short delay, never an error.
//!
//! ```text
//!   2000 requests, 32 at a time ──▶ ingress ──▶ q:cpu ──▶ cpu-0 cpu-1 cpu-2 ──▶ q:io ──▶ io ──▶ reply
//!                                                          ▲ kill -9 one every 2 s, restart it 300 ms later
//! ```
//!
//! The example's graph gets one more `cpu` node, `hold` (`builtin/delay`
//! 50 ms, which returns its input), in front of `summarize`: without it a
//! `cpu` worker holds work for a millisecond and a kill rarely catches any;
//! with it each kill interrupts a few entries, which must be reclaimed from
//! the dead consumer. Answers are unchanged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use sluice_e2e::metrics::try_scrape;
use sluice_e2e::resp::Probe;
use sluice_e2e::{eventually, orders, scrape, Answer, Http, Sandbox, Scrape, Service, Spec};
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::Keys;
use tokio::time::Instant;

const REQUESTS: usize = 2000;
const CONCURRENCY: usize = 32;
/// Request `i` starts no earlier than `i × PACE` into the run (≤ 250/s), so
/// the load spans several kills.
const PACE: Duration = Duration::from_millis(4);
const KILL_EVERY: Duration = Duration::from_secs(2);
const RESTART_AFTER: Duration = Duration::from_millis(300);
const CPU_WORKERS: usize = 3;

struct Outcome {
    id: String,
    input: serde_json::Value,
    started: Instant,
    ended: Instant,
    answer: Result<Answer, String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_workers_under_load_loses_no_request_and_never_mixes_up_answers() {
    let sb = Sandbox::new("worker-crash");
    let redis = RedisServer::start(false);
    let keys = sb.keygen();
    let pipeline = sb.manifest_from_example(
        "orders-redis.yaml",
        &[
            ("timeout: 5s", "timeout: 10s"),
            ("lease: 1s", "lease: 500ms"),
            ("      next: summarize\n", "      next: hold\n"),
            (
                "    - name: summarize\n",
                "    - name: hold\n      group: cpu\n      uses: builtin/delay\n      \
                 with: { duration: 50ms }\n      next: summarize\n    - name: summarize\n",
            ),
        ],
    );
    let mut cpu = vec![];
    for i in 0..CPU_WORKERS {
        let spec = Spec::worker(&pipeline, "cpu")
            .named(&format!("worker-cpu-{i}"))
            .redis(&redis.url(), &keys);
        cpu.push(Service::start(&sb, spec).await);
    }
    let io = Service::start(
        &sb,
        Spec::worker(&pipeline, "io").redis(&redis.url(), &keys),
    )
    .await;
    let ingress = Service::start(&sb, Spec::ingress(&pipeline).redis(&redis.url(), &keys)).await;
    let http = Http::new(Duration::from_secs(20));
    let url = ingress.url("/v1/orders");
    let warm = orders::input("warm-up", 0);
    let a = http
        .post_when_connected(&url, &warm, Duration::from_secs(10))
        .await;
    assert_eq!(a.status, 200, "warm-up request: {}", a.text());

    let done = AtomicBool::new(false);
    let t0 = Instant::now();
    let load = async {
        let out: Vec<Outcome> = futures::stream::iter(0..REQUESTS)
            .map(|i| {
                let (http, url) = (&http, &url);
                async move {
                    tokio::time::sleep_until(t0 + PACE * i as u32).await;
                    let id = format!("crash-{i}-{}", uuid::Uuid::new_v4().simple());
                    let input = orders::input(&id, i);
                    let started = Instant::now();
                    let answer = http.post(url, &input, Some(&id)).await;
                    Outcome {
                        id,
                        input,
                        started,
                        ended: Instant::now(),
                        answer,
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        done.store(true, Ordering::SeqCst);
        out
    };
    // Metrics of each killed incarnation, scraped just before its kill
    // (a killed process takes its counters with it).
    let mut retired: Vec<Scrape> = vec![];
    let mut kills: Vec<Instant> = vec![];
    let killer = async {
        let mut next = t0 + KILL_EVERY;
        'outer: loop {
            while Instant::now() < next {
                if done.load(Ordering::SeqCst) {
                    break 'outer;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let victim = &mut cpu[kills.len() % CPU_WORKERS];
            if let Ok(s) = try_scrape(&victim.url("/metrics")).await {
                retired.push(s);
            }
            victim.kill9();
            kills.push(Instant::now());
            tokio::time::sleep(RESTART_AFTER).await;
            victim.restart().await;
            next += KILL_EVERY;
        }
    };
    let (outcomes, ()) = tokio::join!(load, killer);
    let load_time = t0.elapsed();

    assert!(
        kills.len() >= 3,
        "only {} kills happened during the load ({load_time:?}); the test did not test much",
        kills.len()
    );

    // Every request got an HTTP answer: no refused or reset connection,
    // nothing hanging past the client's timeout.
    let no_answer: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.answer.as_ref().err().map(|e| (&o.id, e)))
        .collect();
    assert!(
        no_answer.is_empty(),
        "{} requests got no answer, e.g. {:?}",
        no_answer.len(),
        no_answer.first()
    );

    // Every 200 is the answer to its own request.
    let mut by_status: BTreeMap<(u16, String), usize> = BTreeMap::new();
    for o in &outcomes {
        let a = o.answer.as_ref().expect("checked above");
        *by_status
            .entry((a.status, a.error_code().unwrap_or_default()))
            .or_default() += 1;
        if a.status == 200 {
            assert_eq!(
                a.json(),
                orders::expected(&o.input),
                "request {} got an answer that is not its own",
                o.id
            );
        }
        assert_eq!(
            a.request_id.as_deref(),
            Some(o.id.as_str()),
            "X-Request-Id not echoed"
        );
    }
    let ok = by_status
        .iter()
        .filter(|((s, _), _)| *s == 200)
        .map(|(_, n)| n)
        .sum::<usize>();
    assert!(
        ok * 100 >= REQUESTS * 99,
        "only {ok} of {REQUESTS} requests got 200: {by_status:?}"
    );
    // Those in flight at a kill (their entries may have been held by the
    // killed worker) get their 200 as well.
    let in_flight_at_kill: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| kills.iter().any(|k| o.started <= *k && *k <= o.ended))
        .collect();
    let ok_at_kill = in_flight_at_kill
        .iter()
        .filter(|o| o.answer.as_ref().is_ok_and(|a| a.status == 200))
        .count();
    assert!(
        !in_flight_at_kill.is_empty() && ok_at_kill * 100 >= in_flight_at_kill.len() * 99,
        "{ok_at_kill} of {} requests in flight at a kill got 200",
        in_flight_at_kill.len()
    );

    // Nothing stays pending, nothing stays queued. A worker counts an entry
    // after handing it off (which empties the queue), so the live workers'
    // final scrapes are taken once they are idle too.
    let keys_of = Keys::new("default", "orders-redis");
    let probe = Probe::new(redis.port());
    let (live, _) = eventually(
        Duration::from_secs(10),
        "queues empty, nothing pending, every live worker idle",
        || async {
            let mut seen = vec![];
            let mut settled = true;
            for g in ["cpu", "io"] {
                let q = keys_of.queue(g);
                let p = probe.pending(&q)?;
                let l = probe.xlen(&q)?;
                settled &= (p, l) == (0, 0);
                seen.push(format!("{g}: pending {p}, length {l}"));
            }
            let mut live = vec![];
            for (w, g) in cpu.iter().map(|w| (w, "cpu")).chain([(&io, "io")]) {
                let s = scrape(&w.url("/metrics")).await;
                let busy = s.count("sluice_worker_in_flight", &[("group", g)]);
                settled &= busy == 0;
                seen.push(format!("{}: in flight {busy}", w.name()));
                live.push(s);
            }
            if settled {
                Ok(live)
            } else {
                Err(seen.join("; "))
            }
        },
    )
    .await;

    // A request executed to completion twice is counted as a redelivery:
    // replies written ≤ requests + redeliveries (every group, every
    // incarnation, the killed ones included).
    let mut scrapes = retired;
    scrapes.extend(live);
    let total = |name: &str, labels: &[(&str, &str)]| -> u64 {
        scrapes.iter().map(|s| s.count(name, labels)).sum()
    };
    let replied = total("sluice_worker_entries_total", &[("outcome", "replied")]);
    let redeliveries = total("sluice_worker_redeliveries_total", &[]);
    let requests = REQUESTS as u64 + 1;
    assert!(
        redeliveries > 0,
        "no entry was redelivered: the kills interrupted no work, so nothing was tested"
    );
    // One reply per 200, the warm-up's included.
    let answered = ok as u64 + 1;
    assert!(
        replied >= answered,
        "{replied} replies written but {ok} requests (and the warm-up) got 200"
    );
    assert!(
        replied <= requests + redeliveries,
        "{replied} replies for {requests} requests with only {redeliveries} redeliveries counted: \
         some request ran to completion twice uncounted"
    );
    let ingress_m = scrape(&ingress.url("/metrics")).await;
    let duplicates = ingress_m.count(
        "sluice_ingress_replies_dropped_total",
        &[("reason", "duplicate")],
    );
    assert!(
        duplicates <= redeliveries,
        "the ingress dropped {duplicates} duplicate replies but only {redeliveries} redeliveries were counted"
    );
    eprintln!(
        "worker crash: {REQUESTS} requests in {load_time:?}, {} kills, statuses {by_status:?}, \
         {} in flight at a kill ({ok_at_kill} got 200), {replied} replies, {redeliveries} redeliveries, \
         {duplicates} duplicates dropped by the ingress",
        kills.len(),
        in_flight_at_kill.len()
    );
}
