//! Streamed answers on the Redis profile: the streaming example with a real
//! redis-server, two `sluice-web-ingress` processes and a
//! `sluice-exec-worker`, read with `curl -N`.
//!
//! - The worker is killed (SIGKILL) in the middle of a stream and started
//!   again: the entry is redelivered after its lease, and the caller reads
//!   the first delivery's chunks, a `reset` event, then every chunk of the
//!   second delivery and the result — no chunk of one spliced into the
//!   other.
//! - The same stream is resumed on the other ingress process with
//!   `Last-Event-ID`: the chunks after it, then the result.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::{Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const PATIENCE: Duration = Duration::from_secs(30);

/// One Server-Sent Event: name, id, data.
type Event = (String, Option<String>, Value);

/// Reads the events of a stream from `curl -sN` as they come; `stop_after`
/// returns true for the event after which the caller stops reading (and
/// curl is killed), or never.
async fn read_stream(args: &[&str], mut stop_after: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
    let mut child = Command::new("curl")
        .args(["-sN", "--max-time", "30"])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut events = vec![];
    let (mut name, mut id) = (String::new(), None);
    while let Ok(Ok(Some(line))) = tokio::time::timeout(PATIENCE, lines.next_line()).await {
        if let Some(v) = line.strip_prefix("event: ") {
            name = v.to_string();
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            let data = serde_json::from_str(v).expect("data is JSON");
            events.push((std::mem::take(&mut name), id.take(), data));
            if stop_after(&events) {
                break;
            }
        }
    }
    let _ = child.kill().await;
    events
}

fn chunk(id: &str, word: &str) -> Event {
    ("chunk".into(), Some(id.into()), json!(word))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_a_worker_crash_with_a_reset_and_resumes_on_another_ingress() {
    let sb = Sandbox::new("streaming");
    let redis = RedisServer::start(false);
    let keys = sb.keygen();
    let pipeline = sb.manifest_from_example(
        "streaming.yaml",
        &[
            (
                "spec:\n",
                "spec:\n  backends: { queue: redis, kv: redis, reply: redis }\n  \
                 limits: { lease: 1s }\n",
            ),
            (
                "  name: streaming\n",
                "  name: streaming\n  namespace: default\n",
            ),
        ],
    );
    let mut worker = Service::start(
        &sb,
        Spec::worker(&pipeline, "work").redis(&redis.url(), &keys),
    )
    .await;
    let first = Service::start(&sb, Spec::ingress(&pipeline).redis(&redis.url(), &keys)).await;
    let second = Service::start(
        &sb,
        Spec::ingress(&pipeline)
            .named("ingress-b")
            .redis(&redis.url(), &keys),
    )
    .await;
    let url = first.url("/v1/words");

    // The ingress connects to Redis lazily: until then, 503.
    let started = Instant::now();
    loop {
        let events = read_stream(&["-d", r#"{"words": ["x"]}"#, &url], |_| false).await;
        if events.last().is_some_and(|e| e.0 == "result") {
            assert_eq!(events[1], chunk("1.1", "x"));
            break;
        }
        assert!(started.elapsed() < PATIENCE, "never served: {events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Eight words, 200 ms apart. The worker dies after the second chunk.
    let words: Vec<String> = (1..=8).map(|i| format!("w{i}")).collect();
    let body = json!({ "words": words }).to_string();
    let two_chunks = AtomicBool::new(false);
    let crash = async {
        while !two_chunks.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Killed, and a new one started: it reclaims the entry once the
        // lease has lapsed.
        worker.restart().await;
    };
    let args = ["-d", body.as_str(), url.as_str()];
    let read = read_stream(&args, |events| {
        if events.len() == 3 {
            two_chunks.store(true, Ordering::SeqCst);
        }
        false
    });
    let (events, ()) = tokio::join!(read, crash);
    assert_eq!(events[0].0, "start");
    let id = events[0].2["id"].as_str().expect("an id").to_string();
    let reset = events
        .iter()
        .position(|e| e.0 == "reset")
        .unwrap_or_else(|| panic!("a reset: {events:?}"));
    // Before the reset, the first delivery's chunks, in order; after it,
    // every chunk of the second.
    let before = &events[1..reset];
    assert!(before.len() >= 2 && before.len() < 8, "{events:?}");
    for (i, e) in before.iter().enumerate() {
        assert_eq!(*e, chunk(&format!("1.{}", i + 1), &words[i]));
    }
    assert_eq!(events[reset].2, json!({"attempt": 2}));
    let after: Vec<Event> = (1..=8)
        .map(|i| chunk(&format!("2.{i}"), &words[i - 1]))
        .chain([("result".into(), None, json!({"chunks": 8}))])
        .collect();
    assert_eq!(events[reset + 1..], after[..], "{events:?}");

    // Any ingress resumes it, after the caller's last event.
    let resume = second.url(&format!("/v1/words/requests/{id}/events"));
    let rest = read_stream(&["-H", "last-event-id: 2.5", &resume], |_| false).await;
    assert_eq!(rest[..], after[5..], "{rest:?}");
    let everything = read_stream(&[&resume], |_| false).await;
    assert_eq!(everything.len(), before.len() + 1 + 8 + 1, "{everything:?}");
}
