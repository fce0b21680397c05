//! Managed Redis's passwords rotated under steady load: a real redis-server
//! started from the `redis.conf` the operator renders (TLS, per-role users),
//! the real ingress and workers authenticating from password files as their
//! pods do, and the operator's own steps (`secrets::redis_secret_update`,
//! `redis_users`) driving the rotation; the test plays the kubelet, swapping
//! each pod's password file atomically.
//!
//! ```text
//! load ──▶ ingress ──▶ cpu ──▶ io ──▶ answers          (never stops)
//!   request r1 ─▶ both accepted (Secret, live users) ─▶ files swapped
//!   a worker restarted (a new process reads the new file)
//!   propagation passed ─▶ old passwords gone ─▶ every client's
//!   connections cut: each reconnects with its file's new password
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use sluice_crds::{compile, PipelineId, StreamPipeline};
use sluice_e2e::resp::Probe;
use sluice_e2e::{Http, Sandbox, Service, Spec};
use sluice_operator::password_rotation;
use sluice_operator::redis_users::{RedisUsers, Wanted};
use sluice_operator::render::redis_acl;
use sluice_operator::{secrets, OperatorSettings};
use sluice_platform::redis::testing::RedisServer;

const NS: &str = "pwrot";
/// The kubelet's propagation delay, as the operator is told it.
const PROPAGATION: Duration = Duration::from_secs(3);
/// The test's own Redis user: may cut other clients' connections.
const CUTTER: &str = "test-cutter";
const CUTTER_PASSWORD: &str = "cutter-password-0123456789";

fn pipeline(request: Option<&str>) -> StreamPipeline {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/orders-redis.yaml");
    let mut sp: StreamPipeline =
        sluice_crds::yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    sp.metadata.namespace = Some(NS.into());
    sp.metadata.uid = Some("00000000-0000-4000-8000-0000000000b2".into());
    if let Some(r) = request {
        sp.metadata.annotations = Some(BTreeMap::from([(
            password_rotation::REQUEST.to_string(),
            r.to_string(),
        )]));
    }
    sp
}

fn settings() -> OperatorSettings {
    OperatorSettings {
        key_propagation: PROPAGATION,
        ..Default::default()
    }
}

/// What the operator applies live for `data` (a `P-redis`'s text data).
fn wanted(data: &BTreeMap<String, String>) -> Wanted {
    let plan = compile(
        PipelineId {
            namespace: NS.into(),
            name: "orders-redis".into(),
        },
        &pipeline(None).spec,
    )
    .unwrap();
    Wanted::from_secret(redis_acl::users(&plan, true), data).expect("a password per role")
}

async fn apply(users: &Arc<RedisUsers>, address: &str, data: &BTreeMap<String, String>) {
    let key = format!("{NS}/orders-redis");
    assert!(
        users.sync(&key, address, wanted(data)),
        "a new set of users"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !users.is_applied(&key) {
        assert!(Instant::now() < deadline, "users not applied within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// As the kubelet swaps a Secret volume: the new content appears at once.
fn swap(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Each role's password file, as its pod's `redis-auth` volume holds it.
fn password_files(sandbox: &Sandbox, data: &BTreeMap<String, String>) -> BTreeMap<String, PathBuf> {
    ["ingress", "group-cpu", "group-io"]
        .into_iter()
        .map(|user| {
            let file = sandbox.write(
                &format!("{user}.password"),
                &data[&format!("{user}.password")],
            );
            (user.to_string(), file)
        })
        .collect()
}

fn spec(base: Spec, user: &str, url: &str, keys: &Path, ca: &Path, file: &Path) -> Spec {
    base.redis(&format!("rediss://{user}@{url}"), keys)
        .arg("--redis-ca-file")
        .arg(ca)
        .arg("--redis-password-file")
        .arg(file)
}

#[tokio::test]
async fn rotating_the_redis_passwords_under_load_fails_no_request_and_restarts_nothing() {
    let sandbox = Sandbox::new("password-rotation");
    let fresh =
        secrets::fresh_redis_secret(&pipeline(None), Duration::from_secs(24 * 3600)).unwrap();
    let before = secrets::text_data(&fresh);
    let conf = format!(
        "{}\nuser {CUTTER} on >{CUTTER_PASSWORD} -@all +client|kill\n",
        before["redis.conf"]
    );
    let files: Vec<(&str, &[u8])> = ["tls.crt", "tls.key", "ca.crt"]
        .into_iter()
        .map(|k| (k, before[k].as_bytes()))
        .collect();
    let server =
        RedisServer::start_with_config_files(&conf, "probe", &before["probe.password"], &files);
    let redis_pid = server.pid();
    let address = server.tls_address();
    let ca = sandbox.write("ca.crt", &before["ca.crt"]);
    let keys = sandbox.keygen();
    let manifest = sandbox.manifest_from_example(
        "orders-redis.yaml",
        &[(
            "  name: orders-redis\n",
            "  name: orders-redis\n  namespace: pwrot\n",
        )],
    );
    let pw = password_files(&sandbox, &before);
    let ingress = Service::start(
        &sandbox,
        spec(
            Spec::ingress(&manifest),
            "ingress",
            &address,
            &keys,
            &ca,
            &pw["ingress"],
        ),
    )
    .await;
    let worker = |group: &str| {
        let user = format!("group-{group}");
        spec(
            Spec::worker(&manifest, group),
            &user,
            &address,
            &keys,
            &ca,
            &pw[&user],
        )
        .named(&format!("worker-{group}"))
    };
    let mut cpu = Service::start(&sandbox, worker("cpu")).await;
    let io = Service::start(&sandbox, worker("io")).await;
    let url = ingress.url("/v1/orders");
    let http = Http::new(Duration::from_secs(10));
    let first = http
        .post_when_connected(
            &url,
            &json!({"id": "A0", "type": "priority", "items": 1}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text());

    // Steady load from 8 callers until told to stop; every answer counted.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..8)
        .map(|c| {
            let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
            tokio::spawn(async move {
                let http = Http::new(Duration::from_secs(10));
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let body = json!({"id": format!("L{c}-{i}"), "type": "standard", "items": 2});
                    match http.post(&url, &body, None).await {
                        Ok(a) if a.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(a) => {
                            eprintln!("failed: {} {}", a.status, a.text());
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            eprintln!("failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Stage: new passwords Redis accepts besides the old; no pod mounts
    // them yet. The operator moves on only once they are accepted live.
    let users = Arc::new(RedisUsers::default());
    let key = format!("{NS}/orders-redis");
    let holds = |data: &BTreeMap<String, String>| users.holds(&key, &wanted(data));
    let asked = pipeline(Some("r1"));
    let (staged, note) =
        secrets::redis_secret_update(&asked, fresh, Utc::now(), &settings(), &holds)
            .unwrap()
            .expect("the rotation starts");
    assert!(note.is_some(), "a rotation step is reported");
    let staged_data = secrets::text_data(&staged);
    for user in ["ingress", "group-cpu", "group-io"] {
        let key = format!("{user}.password");
        assert_eq!(
            staged_data[&key], before[&key],
            "{user}: pods still read the old one"
        );
    }
    assert_eq!(
        secrets::redis_secret_update(&asked, staged.clone(), Utc::now(), &settings(), &holds)
            .unwrap()
            .map(|(s, _)| s.metadata.annotations),
        None,
        "not promoted before Redis accepts the new passwords"
    );
    apply(&users, &address, &staged_data).await;
    let plain = Probe::new(server.port());
    for user in ["ingress", "group-cpu", "group-io"] {
        let key = format!("{user}.password");
        for p in [&before[&key], &staged_data[&format!("{key}.next")]] {
            assert!(
                plain.as_user(user, p).cmd(&[b"PING"]).is_ok(),
                "{user}: both passwords accepted"
            );
        }
    }

    // Promote: the new passwords are what the pods' files hold now.
    let (both, note) =
        secrets::redis_secret_update(&asked, staged, Utc::now(), &settings(), &holds)
            .unwrap()
            .expect("promoted once accepted");
    assert!(note.is_some());
    let both_data = secrets::text_data(&both);
    assert!(holds(&both_data), "promotion changes nothing live");

    // The kubelet shows the new files; a worker pod restarts meanwhile.
    for (user, file) in &pw {
        swap(file, &both_data[&format!("{user}.password")]);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cpu.terminate();
    cpu.wait_exit(Duration::from_secs(30)).await;
    let cpu2 = Service::start(&sandbox, worker("cpu").named("worker-cpu-2")).await;

    // Finish once the propagation delay has passed.
    tokio::time::sleep(PROPAGATION).await;
    let (done, note) = secrets::redis_secret_update(&asked, both, Utc::now(), &settings(), &holds)
        .unwrap()
        .expect("the rotation ends");
    assert!(note.is_some());
    let done_data = secrets::text_data(&done);
    apply(&users, &address, &done_data).await;
    for user in ["ingress", "group-cpu", "group-io"] {
        let key = format!("{user}.password");
        let old = plain.as_user(user, &before[&key]).cmd(&[b"PING"]);
        assert!(
            matches!(&old, Err(e) if e.starts_with("WRONGPASS")),
            "{user}: the old password is refused: {old:?}"
        );
        assert!(plain
            .as_user(user, &done_data[&key])
            .cmd(&[b"PING"])
            .is_ok());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (served, lost) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(served > 100, "the load ran: {served} answers");
    assert_eq!(
        lost, 0,
        "no request failed while the passwords rotated ({served} served)"
    );

    // Every long-running process reconnects with its file's password: cut
    // their connections, and the pipeline answers again.
    let cutter = plain.as_user(CUTTER, CUTTER_PASSWORD);
    for user in ["ingress", "group-cpu", "group-io"] {
        cutter
            .cmd(&[b"CLIENT", b"KILL", b"USER", user.as_bytes()])
            .unwrap_or_else(|e| panic!("cut {user}'s connections: {e}"));
    }
    let again = http
        .post_when_connected(
            &url,
            &json!({"id": "Z9", "type": "priority", "items": 1}),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(server.pid(), redis_pid, "Redis never restarted");
    drop((ingress, cpu2, io, cpu));
}
