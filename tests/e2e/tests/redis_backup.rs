//! Backup and restore of a pipeline's Redis, as docs/operator.md ("Backup
//! and restore") tells an operator to do it: `tar` of the live server's
//! `appendonlydir`, checked with `redis-check-aof`, unpacked into a new
//! server's directory. What was queued and what a worker was running when
//! the copy was taken is answered from the new server; the copy only
//! verifies under the key ring that signed it.
//!
//! ```text
//!   POST ×4 (async) ─▶ ingress ─▶ redis A ◀── worker (takes one, killed -9 mid-run)
//!   tar appendonlydir of A ─▶ backup.tar ; A and the ingress die
//!   untar ─▶ redis B ◀── ingress + worker, same key ring ─▶ GET each request: 200
//! ```

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_e2e::resp::Probe;
use sluice_e2e::{Http, Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::Keys;

const PIPELINE: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: kept, namespace: default }
spec:
  backends: { queue: redis, kv: redis, reply: redis }
  interfaces:
    - { name: greet, kind: http, path: /v1/greet, entry: wait, timeout: 5s, asyncTimeout: 60s }
  groups:
    - { name: web, role: ingress }
    - { name: work, role: worker, concurrency: 1 }
  nodes:
    - { name: wait, group: work, uses: builtin/delay, with: { duration: 1s }, next: greet }
    - name: greet
      group: work
      uses: builtin/json-map
      with:
        template: { greeting: "hello, ${/name}" }
  limits: { lease: 1s }
  results: { ttl: 5m }
"#;

const REQUESTS: usize = 4;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// The backup step: `tar` of the live server's `appendonlydir`.
fn backup(from: &Path, tar: &Path) {
    run(Command::new("tar")
        .arg("-C")
        .arg(from)
        .arg("-cf")
        .arg(tar)
        .arg("appendonlydir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_the_append_only_file_answers_what_was_queued_and_running() {
    let sb = Sandbox::new("redis-backup");
    let old = RedisServer::start(true);
    let keys = sb.keygen();
    let pipeline = sb.write("kept.yaml", PIPELINE);
    let http = Http::new(Duration::from_secs(10));
    let mut ingress = Service::start(&sb, Spec::ingress(&pipeline).redis(&old.url(), &keys)).await;

    let mut ids = vec![];
    for i in 0..REQUESTS {
        let a = http
            .post_async_when_connected(
                &ingress.url("/v1/greet"),
                &json!({ "name": format!("n{i}") }),
                Duration::from_secs(20),
            )
            .await;
        assert_eq!(a.status, 202, "{}", a.text());
        ids.push(
            a.json()["location"]
                .as_str()
                .expect("a location")
                .to_string(),
        );
    }

    // A worker takes the first and dies in the middle of it: one entry
    // pending, the rest queued.
    let mut worker = Service::start(
        &sb,
        Spec::worker(&pipeline, "work").redis(&old.url(), &keys),
    )
    .await;
    let queue = Keys::new("default", "kept").queue("work");
    let probe = Probe::new(old.port());
    let started = Instant::now();
    while probe.pending(&queue).unwrap_or(0) == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "never taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.kill9();
    let held = (probe.xlen(&queue).unwrap(), probe.pending(&queue).unwrap());
    assert_eq!(held.1, 1, "one running when the worker died");

    // Backup: what the AOF holds (synced, as `appendfsync everysec` does
    // within a second), copied from the live server, and checked.
    old.sync_aof();
    let tar = sb.path().join("backup.tar");
    backup(old.dir(), &tar);
    let restore_dir = sb.path().join("restore");
    std::fs::create_dir_all(&restore_dir).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&restore_dir)
        .arg("-xf")
        .arg(&tar));
    let manifest = std::fs::read_dir(restore_dir.join("appendonlydir"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "manifest"))
        .expect("a manifest in the backup");
    let checked = run(Command::new("redis-check-aof").arg(&manifest));
    assert!(checked.contains("is valid"), "{checked}");

    // The old server and its ingress are gone; a new server starts from
    // the copy, and a new ingress and worker with the same key ring.
    ingress.kill9();
    drop(old);
    let new = RedisServer::start_from_aof(&restore_dir);
    let probe = Probe::new(new.port());
    assert_eq!(
        (probe.xlen(&queue).unwrap(), probe.pending(&queue).unwrap()),
        held,
        "the queue and its pending entry as they were"
    );
    let ingress = Service::start(&sb, Spec::ingress(&pipeline).redis(&new.url(), &keys)).await;
    let _worker = Service::start(
        &sb,
        Spec::worker(&pipeline, "work").redis(&new.url(), &keys),
    )
    .await;
    for (i, location) in ids.iter().enumerate() {
        let a = http
            .get_when_settled(&ingress.url(location), Duration::from_secs(30))
            .await;
        assert_eq!(a.status, 200, "{location}: {}", a.text());
        assert_eq!(a.json(), json!({ "greeting": format!("hello, n{i}") }));
    }
}
