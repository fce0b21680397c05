//! Containment by derived keys (DESIGN §6, docs/wire-format.md): every
//! process gets a key directory holding only its role's keys, rendered from
//! the pipeline's ring with `derived_files` and `Plan::key_needs` as the
//! operator will. The pipeline answers as with the whole ring; a worker's
//! keys cannot make a reply the ingress takes for an interface that worker
//! does not answer, nor sign for a group it has no edge to.
//!
//! ```text
//!   orders: web classify ─▶ cpu rush/standard ─▶ io summarize ─▶ reply
//!   audit:  other audit ─▶ reply
//!   cpu stopped, an orders request queued on q:cpu; forged onto r:<ingress>:
//!     answer signed with other's keys as other      ─▶ wrong_sender
//!     answer signed with cpu's keys as cpu          ─▶ wrong_sender
//!     other's reply relabelled as io's (`k`)        ─▶ bad_mac
//!   cpu restarted ─▶ the caller gets the genuine answer
//! ```

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sluice_crds::Plan;
use sluice_e2e::forge::queued;
use sluice_e2e::resp::Probe;
use sluice_e2e::{eventually, scrape, Http, Sandbox, Service, Spec};
use sluice_platform::keyring::derived_files;
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::{
    Envelope, KeyRing, Keys, Kind, Queue, RedisBackend, RedisConfig, SharedKeyRing, Signer,
    StreamEntry,
};

const MANIFEST: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata:
  name: roles
spec:
  backends: { queue: redis, kv: redis, reply: redis }
  interfaces:
    - { name: orders, kind: http, path: /v1/orders, entry: classify, timeout: 60s }
    - { name: audit, kind: http, path: /v1/audit, entry: audit, timeout: 10s }
  groups:
    - { name: web, role: ingress }
    - { name: cpu, role: worker }
    - { name: io, role: worker }
    - { name: other, role: worker }
  nodes:
    - name: classify
      group: web
      uses: builtin/route
      with: { field: /type }
      next: [ { when: priority, to: rush }, { to: standard } ]
    - { name: rush, group: cpu, uses: builtin/json-map, with: { template: { id: "${/id}", lane: rush } }, next: summarize }
    - { name: standard, group: cpu, uses: builtin/json-map, with: { template: { id: "${/id}", lane: standard } }, next: summarize }
    - { name: summarize, group: io, uses: builtin/json-map, with: { template: { order: "${/id}", lane: "${/lane}" } } }
    - { name: audit, group: other, uses: builtin/json-map, with: { template: { audited: "${/id}" } } }
  limits: { lease: 1s }
"#;

/// The derived directory of `group`'s role, rendered from the ring in
/// `ring_dir`; checks it holds nothing but derived keys.
fn role_keys(sb: &Sandbox, plan: &Plan, ring_dir: &Path, group: &str) -> std::path::PathBuf {
    let ring = KeyRing::load(ring_dir).expect("the ring loads");
    let needs = plan.key_needs(group);
    let needs: Vec<(Kind, &str)> = needs
        .request
        .iter()
        .map(|g| (Kind::Request, g.as_str()))
        .chain(needs.reply.iter().map(|g| (Kind::Reply, g.as_str())))
        .collect();
    let files = derived_files(&ring, &plan.id.to_string(), &needs).expect("render the role's keys");
    let kid = ring.current();
    assert!(
        !files.contains_key(kid),
        "a derived directory never holds the raw key"
    );
    let dir = sb.key_dir(&format!("keys-{group}"), &files);
    let loaded = KeyRing::load(&dir).expect("the role's directory loads");
    assert_eq!(loaded.layout_name(), "derived");
    dir
}

fn rejected(s: &sluice_e2e::Scrape, reason: &str) -> u64 {
    s.count("sluice_envelopes_rejected_total", &[("reason", reason)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_holding_only_their_roles_keys_serve_and_cannot_answer_for_others() {
    let sb = Sandbox::new("derived-keys");
    let redis = RedisServer::start(false);
    let ring_dir = sb.keygen();
    let pipeline = sb.write("roles.yaml", MANIFEST);
    let (_, plan) = sluice_crds::load_manifest(&pipeline).expect("the manifest compiles");
    let keys = Keys::new("default", "roles");
    let dirs: Vec<_> = ["web", "cpu", "io", "other"]
        .iter()
        .map(|g| role_keys(&sb, &plan, &ring_dir, g))
        .collect();
    let [web_keys, cpu_keys, io_keys, other_keys] = &dirs[..] else {
        unreachable!("four groups")
    };
    assert!(
        !other_keys
            .join(format!("{}.reply.io", read_kid(&ring_dir)))
            .exists(),
        "other holds no reply key of io"
    );

    let mut cpu = Service::start(
        &sb,
        Spec::worker(&pipeline, "cpu").redis(&redis.url(), cpu_keys),
    )
    .await;
    let _io = Service::start(
        &sb,
        Spec::worker(&pipeline, "io").redis(&redis.url(), io_keys),
    )
    .await;
    let _other = Service::start(
        &sb,
        Spec::worker(&pipeline, "other").redis(&redis.url(), other_keys),
    )
    .await;
    let ingress = Service::start(&sb, Spec::ingress(&pipeline).redis(&redis.url(), web_keys)).await;
    for log in [cpu.log_text(), ingress.log_text()] {
        assert!(
            !log.contains("lacks keys"),
            "every role holds what it needs:\n{log}"
        );
    }

    // 1. Every path answers, each hop signed and verified with role keys.
    let http = Http::new(Duration::from_secs(90));
    let orders = ingress.url("/v1/orders");
    let a = http
        .post_when_connected(
            &orders,
            &json!({"id": "A1", "type": "priority"}),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"order": "A1", "lane": "rush"}));
    let a = http
        .post(&orders, &json!({"id": "B2", "type": "bulk"}), None)
        .await
        .expect("an answer");
    assert_eq!(a.json(), json!({"order": "B2", "lane": "standard"}));
    let a = http
        .post(&ingress.url("/v1/audit"), &json!({"id": "C3"}), None)
        .await
        .expect("an answer");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"audited": "C3"}));

    // 2. A request left waiting: cpu is stopped, its entry stays queued,
    // where anyone reading Redis finds its correlation id and reply stream.
    cpu.terminate();
    cpu.wait_exit(Duration::from_secs(30)).await;
    let waiting = {
        let (http, orders) = (http.clone(), orders.clone());
        tokio::spawn(async move {
            http.post(&orders, &json!({"id": "D4", "type": "priority"}), None)
                .await
        })
    };
    let probe = Probe::new(redis.port());
    let (queued_request, _) = eventually(
        Duration::from_secs(10),
        "the request queued for cpu",
        || async {
            queued(&probe, &keys.queue("cpu"))
                .into_iter()
                .find_map(|(entry, env)| {
                    // Written as JSON (format version 2), which every
                    // release reads: other processes, of the release
                    // before during an upgrade, read Redis queues.
                    assert_eq!(&entry.v[..], b"2", "the format on Redis");
                    env.filter(|e| e.payload["id"] == "D4")
                })
                .ok_or_else(|| "nothing queued yet".to_string())
        },
    )
    .await;
    let reply_stream = keys.reply(queued_request.reply_to.as_deref().expect("a reply address"));

    // 3. Forgeries with the workers' own keys.
    let forged_answer = || queued_request.reply(Ok(json!({"order": "D4", "lane": "forged"})));
    let as_group = |dir: &Path, group: &str| {
        Signer::new(
            SharedKeyRing::from_dir(dir).expect("the role's keys"),
            &keys,
            group,
        )
    };
    let other = as_group(other_keys, "other");
    // other holds no key to sign as io, nor to send work to cpu or io.
    assert!(as_group(other_keys, "io")
        .sign(&mut forged_answer())
        .is_err());
    let mut hop: Envelope = queued_request.hop("io", "summarize", json!({}));
    assert!(other.sign(&mut hop).is_err(), "other has no edge to io");
    let from_other = other.sign(&mut forged_answer()).expect("other's reply key");
    let from_cpu = as_group(cpu_keys, "cpu")
        .sign(&mut forged_answer())
        .expect("cpu's reply key");
    let kid = read_kid(&ring_dir);
    let relabelled = StreamEntry {
        k: format!("{kid}/io").into(),
        ..from_other.clone()
    };
    let q = RedisBackend::connect(RedisConfig::from_url(&redis.url()).expect("URL"))
        .await
        .expect("connect to Redis");
    let metrics_url = ingress.url("/metrics");
    let before = scrape(&metrics_url).await;
    for e in [from_other, from_cpu, relabelled] {
        q.push(&reply_stream, e).await.expect("XADD a forged reply");
    }
    eventually(
        Duration::from_secs(15),
        "the forged replies refused by the ingress",
        || async {
            let s = scrape(&metrics_url).await;
            let got = (
                rejected(&s, "wrong_sender") - rejected(&before, "wrong_sender"),
                rejected(&s, "bad_mac") - rejected(&before, "bad_mac"),
            );
            if got == (2, 1) {
                Ok(())
            } else {
                Err(format!("(wrong_sender, bad_mac) {got:?}, want (2, 1)"))
            }
        },
    )
    .await;
    assert!(!waiting.is_finished(), "no forged reply reached the caller");

    // 4. The caller still gets the genuine answer once cpu is back.
    cpu.restart().await;
    let a = waiting
        .await
        .expect("the caller's task")
        .expect("an answer");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"order": "D4", "lane": "rush"}));
}

/// The ring's current kid.
fn read_kid(ring_dir: &Path) -> String {
    std::fs::read_to_string(ring_dir.join("current"))
        .expect("read current")
        .trim()
        .to_string()
}
