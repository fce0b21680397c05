//! Asynchronous requests on the Redis profile: the answer is stored in
//! Redis, not in the ingress that took the request, so it is fetched from
//! another ingress process after the first one was killed (SIGKILL, no
//! drain) — as on a cluster, where any web pod serves the fetch.
//!
//! ```text
//!   POST (Prefer: respond-async) ─▶ ingress A ─XADD─▶ q:work ◀─ worker ─▶ r:async:<sha256(id)>
//!   kill -9 A
//!   GET /v1/greet/requests/<id> ─▶ ingress B ─MULTI{EXISTS, XREAD}─▶ r:async:<sha256(id)> ─▶ 200
//! ```

use std::time::Duration;

use serde_json::json;
use sluice_e2e::resp::{Probe, Resp};
use sluice_e2e::{Http, Sandbox, Service, Spec};
use sluice_platform::redis::testing::RedisServer;

const PIPELINE: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: later, namespace: default }
spec:
  backends: { queue: redis, kv: redis, reply: redis }
  interfaces:
    - { name: greet, kind: http, path: /v1/greet, entry: wait, timeout: 5s, asyncTimeout: 20s }
  groups:
    - { name: web, role: ingress }
    - { name: work, role: worker }
  nodes:
    - { name: wait, group: work, uses: builtin/delay, with: { duration: 1s }, next: greet }
    - name: greet
      group: work
      uses: builtin/json-map
      with:
        template: { greeting: "hello, ${/name}" }
  results: { ttl: 1m }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_fetched_from_another_ingress_after_the_first_was_killed() {
    let sb = Sandbox::new("async-requests");
    let redis = RedisServer::start(false);
    let keys = sb.keygen();
    let pipeline = sb.write("later.yaml", PIPELINE);
    let spec = |name: &str| {
        Spec::ingress(&pipeline)
            .redis(&redis.url(), &keys)
            .arg("--ingress-id")
            .arg(name)
            .named(name)
    };
    let mut first = Service::start(&sb, spec("ingress-a")).await;
    let _worker = Service::start(
        &sb,
        Spec::worker(&pipeline, "work").redis(&redis.url(), &keys),
    )
    .await;
    let http = Http::new(Duration::from_secs(10));

    // Submitted to the first ingress, which answers before the 1 s wait is
    // over.
    let url = first.url("/v1/greet");
    let submitted = http
        .post_async_when_connected(&url, &json!({"name": "survivor"}), Duration::from_secs(20))
        .await;
    assert_eq!(submitted.status, 202, "{}", submitted.text());
    let location = submitted.json()["location"]
        .as_str()
        .expect("a location")
        .to_string();
    let id = submitted.json()["id"].as_str().expect("an id").to_string();

    // Neither the id nor anything that leads to it by name is in Redis:
    // the answer's stream is named by the id's digest.
    let probe = Probe::new(redis.port());
    match probe.cmd(&[b"KEYS", b"*"]) {
        Ok(Resp::Array(Some(keys))) => {
            let names: Vec<String> = keys
                .iter()
                .map(|k| match k {
                    Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
                    other => format!("{other:?}"),
                })
                .collect();
            assert!(names.iter().any(|n| n.contains(":r:async:")), "{names:?}");
            assert!(!names.iter().any(|n| n.contains(&id)), "{names:?}");
        }
        other => panic!("KEYS answered {other:?}"),
    }

    // The first ingress dies before the answer exists.
    first.kill9();
    let second = Service::start(&sb, spec("ingress-b")).await;
    let fetch = second.url(&location);
    let answer = http.get_when_settled(&fetch, Duration::from_secs(20)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json(), json!({"greeting": "hello, survivor"}));
    // An id that was never issued is unknown here too.
    let never = format!("{}{:012x}", "ab".repeat(16), u64::MAX >> 16);
    let unknown = http
        .get(&second.url(&format!("/v1/greet/requests/{never}")))
        .await
        .expect("an answer");
    assert_eq!(unknown.status, 404, "{}", unknown.text());
}
