//! Dead letters on Redis, with the real binaries: a request whose node
//! keeps failing is dead-lettered, listed with `sluice-web-ingress dlq list`,
//! the node is fixed (the worker restarted with a changed pipeline), the
//! letter is sent again with `dlq redrive` and its answer fetched from the
//! ingress; a forged entry in the stream is listed as refused, never sent,
//! and purged.
//!
//! ```text
//! caller ─▶ ingress ─▶ q:io ─▶ io worker: fetch = builtin/http to a closed port ─▶ retries exhausted ─▶ dlq
//! dlq redrive ─▶ q:io ─▶ io worker: fetch = builtin/echo ─▶ answer store ─▶ GET /v1/fetch/requests/<id>
//! ```

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sluice_e2e::dlq::{letters_manifest, redrive_location, redriven_answer, rows};
use sluice_e2e::process::free_port;
use sluice_e2e::resp::{Probe, Resp};
use sluice_e2e::{eventually, scrape, Http, Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::Keys;

fn manifest(fetch: &str) -> String {
    letters_manifest("redis", fetch)
}

/// `sluice-web-ingress dlq <args> --pipeline … --redis … --keys …`.
fn dlq(args: &[&str], pipeline: &Path, redis: &str, keys: &Path) -> Result<String, String> {
    let target: Vec<OsString> = vec![
        "--pipeline".into(),
        pipeline.into(),
        "--redis".into(),
        redis.into(),
        "--keys".into(),
        keys.into(),
    ];
    sluice_e2e::dlq::run(args, &target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_request_is_listed_fixed_redriven_and_answered() {
    let sb = Sandbox::new("dead-letters");
    let redis = RedisServer::start(false);
    let keys = sb.keygen();
    let closed = free_port();
    let broken = sb.write(
        "broken.yaml",
        &manifest(&format!(
            "{{ name: fetch, group: io, uses: builtin/http, with: {{ url: \"http://127.0.0.1:{closed}/\", timeout: 1s }} }}"
        )),
    );
    let fixed = sb.write(
        "fixed.yaml",
        &manifest("{ name: fetch, group: io, uses: builtin/echo }"),
    );
    let url = redis.url();
    let mut io = Service::start(&sb, Spec::worker(&broken, "io").redis(&url, &keys)).await;
    let ingress = Service::start(&sb, Spec::ingress(&broken).redis(&url, &keys)).await;

    // Each delivery fails to connect: dead-lettered after two.
    let http = Http::new(Duration::from_secs(15));
    let input = json!({"order": "P-1", "items": [1, 2]});
    let a = http
        .post(&ingress.url("/v1/fetch"), &input, Some("poison-1"))
        .await
        .expect("an answer");
    assert_eq!(a.status, 502, "{}", a.text());
    assert!(a.text().contains("retries_exhausted"), "{}", a.text());

    // A forged entry beside it: under the ring's kid, with no valid MAC.
    let kid = std::fs::read_to_string(keys.join("current")).expect("the current kid");
    let dlq_key = Keys::new("default", "letters").dead_letter();
    let forged = Probe::new(redis.port())
        .cmd(&[
            b"XADD",
            dlq_key.as_bytes(),
            b"*",
            b"v",
            b"2",
            b"k",
            kid.trim().as_bytes(),
            b"m",
            br#"{"kind":"request","node":"fetch","rid":"evil\u001b[2J"}"#,
            b"s",
            &[b'0'; 64],
        ])
        .expect("XADD");
    let Resp::Bulk(Some(forged)) = forged else {
        panic!("XADD answered {forged:?}")
    };
    let forged = String::from_utf8(forged).unwrap();

    let listing = dlq(&["list", "--payloads"], &broken, &url, &keys).unwrap();
    let r = rows(&listing);
    assert_eq!(r.len(), 2, "{listing}");
    let poison = r[0][0].clone();
    assert_eq!(&r[0][2..5], ["io", "fetch", "poison-1"], "{listing}");
    // As the io worker recorded it: two deliveries, then its caller's error.
    assert_eq!(r[0][6], "2", "{listing}");
    assert!(
        r[0][7].starts_with("retries_exhausted: ") && r[0][7].contains("cannot connect"),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("  {input}")),
        "the payload: {listing}"
    );
    assert_eq!(r[1][0], forged);
    assert_eq!(r[1].last().unwrap(), "refused: bad_mac", "{listing}");

    // Nothing sent on a dry run; then the node is fixed.
    let dry = dlq(&["redrive", "--all", "--dry-run"], &fixed, &url, &keys).unwrap();
    assert!(dry.contains(&format!("{poison}\twould be sent")), "{dry}");
    assert_eq!(rows(&dlq(&["list"], &fixed, &url, &keys).unwrap()).len(), 2);
    io.terminate();
    io.wait_exit(Duration::from_secs(20)).await;
    let _io = Service::start(&sb, Spec::worker(&fixed, "io").redis(&url, &keys)).await;

    let out = dlq(&["redrive", "--all"], &fixed, &url, &keys).unwrap();
    let location = redrive_location(&out, &poison);
    assert!(location.starts_with("/v1/fetch/requests/"), "{location}");
    assert!(
        out.contains(&format!("{forged}\tleft\tnot trusted (bad_mac): purge it")),
        "{out}"
    );
    let answer = redriven_answer(&http, &ingress.url(&location)).await;
    assert_eq!(answer.json(), input);

    // Only the forged entry is left; purged, nothing is.
    let left = rows(&dlq(&["list"], &fixed, &url, &keys).unwrap());
    assert_eq!(left.len(), 1);
    assert_eq!(left[0][0], forged);
    let err = dlq(&["redrive", "--id", &poison], &fixed, &url, &keys).unwrap_err();
    assert!(err.contains("not in the dead-letter stream"), "{err}");
    let purged = dlq(&["purge", "--all"], &fixed, &url, &keys).unwrap();
    assert_eq!(purged.trim(), "deleted 1 dead letter(s)");
    assert!(dlq(&["list"], &fixed, &url, &keys)
        .unwrap()
        .contains("(no dead letters)"));
}

/// A pipeline whose worker group `a` hands every request on to group `b`.
const HAND_OFF: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: handoff }
spec:
  backends: { queue: redis, kv: redis, reply: redis }
  interfaces:
    - { name: go, kind: http, path: /v1/go, entry: first, timeout: 2s }
  groups:
    - { name: web, role: ingress }
    - { name: a, role: worker }
    - { name: b, role: worker }
  nodes:
    - { name: first, group: a, uses: builtin/echo, next: second }
    - { name: second, group: b, uses: builtin/echo }
  limits: { lease: 500ms }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_that_fails_inside_its_transaction_is_dead_lettered_not_lost() {
    let sb = Sandbox::new("hand-off-failed");
    let redis = RedisServer::start(false);
    let keys = sb.keygen();
    let pipeline = sb.write("handoff.yaml", HAND_OFF);
    let url = redis.url();
    let a = Service::start(&sb, Spec::worker(&pipeline, "a").redis(&url, &keys)).await;
    let ingress = Service::start(&sb, Spec::ingress(&pipeline).redis(&url, &keys)).await;
    // The next group's queue key holds a string: the XADD of a's hand-off
    // fails inside EXEC, while its XACK and XDEL run.
    let names = Keys::new("default", "handoff");
    let probe = Probe::new(redis.port());
    let next = names.queue("b");
    probe
        .cmd(&[b"SET", next.as_bytes(), b"not a stream"])
        .expect("SET");

    let http = Http::new(Duration::from_secs(10));
    let input = json!({"order": "H-1"});
    let answer = http
        .post(&ingress.url("/v1/go"), &input, Some("hand-off-1"))
        .await
        .expect("an answer");
    assert_eq!(answer.status, 504, "{}", answer.text());

    // Not in its queue, not pending there: kept as a dead letter instead.
    let own = names.queue("a");
    let (listing, _) = eventually(Duration::from_secs(10), "the dead letter", || async {
        let listing = dlq(&["list"], &pipeline, &url, &keys)?;
        match rows(&listing).len() {
            1 => Ok(listing),
            _ => Err(listing),
        }
    })
    .await;
    let r = rows(&listing);
    assert_eq!(&r[0][2..5], ["a", "first", "hand-off-1"], "{listing}");
    assert!(r[0][7].starts_with("hand_off_failed: "), "{listing}");
    assert_eq!(
        probe.cmd(&[b"XLEN", own.as_bytes()]).expect("XLEN"),
        Resp::Int(0)
    );
    // Counted once the dead-letter write has returned.
    eventually(
        Duration::from_secs(5),
        "hand_off_failed counted",
        || async {
            let m = scrape(&a.url("/metrics")).await;
            let labels = [("group", "a"), ("outcome", "hand_off_failed")];
            match m.count("sluice_worker_entries_total", &labels) {
                1 => Ok(()),
                _ => Err(m.text().to_string()),
            }
        },
    )
    .await;

    // The key fixed and group b running, the letter is sent again and
    // answered: nothing was lost.
    probe.cmd(&[b"DEL", next.as_bytes()]).expect("DEL");
    let _b = Service::start(&sb, Spec::worker(&pipeline, "b").redis(&url, &keys)).await;
    let out = dlq(&["redrive", "--all"], &pipeline, &url, &keys).unwrap();
    let location = redrive_location(&out, &r[0][0]);
    let answer = redriven_answer(&http, &ingress.url(&location)).await;
    assert_eq!(answer.json(), input);
}
