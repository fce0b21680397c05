//! What the operator writes is what the runtime reads.
//!
//! For an example pipeline, `sluice_operator::desired` (the pure function
//! the reconciler applies) gives the Deployments, ConfigMap and Services;
//! the Secrets it creates when absent come from the operator's own
//! generators (`secrets::fresh_key_ring`, `secrets::fresh_redis_secret`:
//! random kid, key and password, as in a cluster). Each Deployment's pod
//! template is turned by a small kubelet (`kubelet/mod.rs`) into the argv,
//! environment and mounted files of its runtime container: `P-pipeline`
//! and `P-ipc-keys` laid out with the kubelet's `..data` symlinks,
//! `secretKeyRef`/`fieldRef` resolved, `$(VAR)` expanded. The real
//! `sluice-web-ingress` / `sluice-exec-worker` binaries (chosen by the
//! container image) are started with exactly that, one process per
//! container of each Deployment's pod, and must become ready on their
//! readiness probes and serve both routes of the orders pipeline.
//!
//! Only what differs between a pod and this machine is translated: mount
//! paths to the materialised directories, the managed Redis Service to a
//! local `redis-server` that requires the password from `P-redis`, and the
//! pod's ports (declared container ports, and the tcp hub's loopback port)
//! to free local ports, the same for every container of one pod.

mod kubelet;
mod roundtrip;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::resp::{Probe, UserProbe};
use sluice_platform::Keys;

use kubelet::process::Proc;
use kubelet::Materialised;
use roundtrip::*;

// === checks of these tests ===

/// Sends `command` (words separated by spaces) and asserts Redis refused it
/// for want of permission.
fn assert_refused(user: &UserProbe, command: &str, what: &str) {
    let words: Vec<&[u8]> = command.split(' ').map(str::as_bytes).collect();
    let got = user.cmd(&words);
    assert!(
        matches!(&got, Err(e) if e.starts_with("NOPERM")),
        "{what}: `{command}` answered {got:?}"
    );
}

async fn both_routes_answer(run: &Running, client: &reqwest::Client) {
    let (status, got) = first_request(
        run,
        client,
        json!({"id": "A1", "type": "priority", "items": 3}),
    )
    .await;
    assert_eq!(status, 200, "priority order: {got}");
    assert_eq!(
        got,
        json!({"order": "A1", "price": 0, "status": "accepted", "summary": "3 item(s) in the rush lane"})
    );
    let (status, got) = post(
        client,
        run.ingress,
        json!({"id": "B2", "type": "bulk", "items": 2}),
    )
    .await;
    assert_eq!(status, 200, "bulk order: {got}");
    assert_eq!(
        got,
        json!({"order": "B2", "price": 5, "status": "accepted", "summary": "2 item(s) in the standard lane"})
    );
    asynchronous_and_idempotent_requests_answer(run, client).await;
}

/// An asynchronous request answered at its Location, and a request repeated
/// under one Idempotency-Key answered twice alike: each role's Redis user
/// allows what that takes (answer streams, idempotency keys).
async fn asynchronous_and_idempotent_requests_answer(run: &Running, client: &reqwest::Client) {
    let base = format!("http://{}", run.ingress);
    let order = json!({"id": "C3", "type": "bulk", "items": 1});
    let want = json!({"order": "C3", "price": 5, "status": "accepted", "summary": "1 item(s) in the standard lane"});
    let r = client
        .post(format!("{base}/v1/orders"))
        .header("prefer", "respond-async")
        .json(&order)
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status().as_u16(), 202);
    let accepted: Value = r.json().await.expect("JSON");
    let location = accepted["location"]
        .as_str()
        .expect("a location")
        .to_string();
    answered(client, &base, &location, &want, Duration::from_secs(10)).await;
    for _ in 0..2 {
        let r = client
            .post(format!("{base}/v1/orders"))
            .header("idempotency-key", "order-C3")
            .json(&order)
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.json::<Value>().await.expect("JSON"), want);
    }
}

// === tests ===

/// Redis profile: the ingress and each worker group as separate processes,
/// Redis reached through the URL the operator composes from `P-redis`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_profile_runs_from_what_the_operator_writes() {
    let mut run = start(
        "orders-redis.yaml",
        &["orders-redis-web", "orders-redis-cpu", "orders-redis-io"],
    );
    // The key ring is mounted with the kubelet's bookkeeping entries, which
    // the runtime must skip.
    let keys = run.procs[0].1.mounts["/etc/sluice/keys"].clone();
    assert!(keys.join("..data").is_symlink(), "{}", keys.display());
    let client = client();
    wait_ready(&mut run, &client).await;
    both_routes_answer(&run, &client).await;
    for (p, _) in &mut run.procs {
        assert!(p.exited().is_none(), "{} exited while serving", p.name);
    }
}

/// Memory profile: the ingress Deployment alone runs every group inline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_profile_is_served_by_the_ingress_deployment_alone() {
    let mut run = start("orders.yaml", &["orders-web"]);
    let client = client();
    wait_ready(&mut run, &client).await;
    both_routes_answer(&run, &client).await;
}

/// The names of the files of a mounted Secret directory (not the kubelet's
/// `..data` bookkeeping).
fn key_files(m: &Materialised) -> Vec<String> {
    let dir = &m.mounts["/etc/sluice/keys"];
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Tcp profile: one Deployment whose pod holds the ingress and a container
/// per worker group. Started side by side as the kubelet starts them, the
/// workers find the ingress's hub on the pod's loopback, each holding only
/// its group's keys while the ingress holds every group's; the pod serves
/// both routes. A worker that dies makes the ingress unready until the
/// kubelet's restart of that container connects again, and then it serves
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_profile_runs_every_group_in_the_ingress_pod() {
    let mut run = start("orders-tcp.yaml", &["orders-tcp-web"]);
    let names: Vec<&str> = run
        .procs
        .iter()
        .map(|(_, m)| m.container.as_str())
        .collect();
    assert_eq!(names, ["ingress", "worker-cpu", "worker-io"]);
    // One hub address for the whole pod, wherever the kubelet put it.
    let hubs: Vec<&str> = run
        .procs
        .iter()
        .map(|(_, m)| {
            let i = m.args.iter().position(|a| a == "--hub").expect("--hub");
            m.args[i + 1].as_str()
        })
        .collect();
    assert!(
        hubs.iter()
            .all(|h| *h == hubs[0] && h.starts_with("127.0.0.1:")),
        "{hubs:?}"
    );

    let keys: BTreeMap<&str, Vec<String>> = run
        .procs
        .iter()
        .map(|(_, m)| (m.container.as_str(), key_files(m)))
        .collect();
    for (worker, group) in [("worker-cpu", "cpu"), ("worker-io", "io")] {
        let own = &keys[worker];
        assert!(own.contains(&"current".to_string()), "{worker}: {own:?}");
        assert!(
            own.iter()
                .any(|k| k.ends_with(&format!(".request.{group}"))),
            "{worker} verifies its own requests: {own:?}"
        );
        assert!(
            own.iter().all(|k| keys["ingress"].contains(k)),
            "the ingress holds every key of {worker}: {:?}",
            keys["ingress"]
        );
    }
    // Least privilege: io has no edge to cpu, and no worker holds all.
    assert!(
        keys["worker-io"].iter().all(|k| !k.ends_with(".cpu")),
        "{:?}",
        keys["worker-io"]
    );
    assert!(keys["worker-cpu"].len() < keys["ingress"].len());

    let client = client();
    wait_ready(&mut run, &client).await;
    both_routes_answer(&run, &client).await;

    // A crash of the io container: the ingress leaves the Service's
    // endpoints (its readiness fails) until the restarted container is back.
    let io = run
        .procs
        .iter()
        .position(|(_, m)| m.container == "worker-io")
        .unwrap();
    run.procs[io].0.kill();
    let ingress = &run.procs[0].1;
    let deadline = Instant::now() + READY_PATIENCE;
    while probe(&client, ingress, "readiness").await == Some(200) {
        assert!(
            Instant::now() < deadline,
            "ingress /readyz still 200 {READY_PATIENCE:?} after worker-io died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(probe(&client, ingress, "liveness").await, Some(200));
    run.procs[io].0 = Proc::spawn(&run.procs[io].1);
    wait_ready(&mut run, &client).await;
    both_routes_answer(&run, &client).await;
    for (p, _) in &mut run.procs {
        assert!(p.exited().is_none(), "{} exited while serving", p.name);
    }
}

/// A compromised worker of group `io` holds exactly what its pod holds: the
/// `group-io` user's password. With it Redis refuses everything outside its
/// role — another group's queue, a queue it has no edge to, rewriting
/// history, server-wide commands, other users — and counts each refusal,
/// while the pipeline keeps answering. The other roles are held to theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_refused_what_it_does_not_do_while_traffic_flows() {
    let mut run = start(
        "orders-redis.yaml",
        &["orders-redis-web", "orders-redis-cpu", "orders-redis-io"],
    );
    let client = client();
    wait_ready(&mut run, &client).await;
    both_routes_answer(&run, &client).await;
    // Serving needs nothing refused except `INFO` (the runtime's Redis
    // version check, which gives the server the benefit of the doubt).
    for user in ["ingress", "group-cpu", "group-io"] {
        let refused = run.refused(user);
        assert!(
            refused.keys().all(|c| c == "info"),
            "{user} was refused while serving: {refused:?}"
        );
    }
    // Refusals other than the version check's `INFO`, which a worker may
    // still retry after a reconnection while the attempts below run.
    let total = |user: &str| {
        run.refused(user)
            .into_iter()
            .filter(|(c, _)| c != "info")
            .map(|(_, n)| n)
            .sum::<i64>()
    };
    let legit_refusals = total("group-io");

    let k = Keys::new(NAMESPACE, "orders-redis");
    let (cpu, io) = (k.queue("cpu"), k.queue("io"));
    let reply = k.reply("orders-redis-web-6f9c8d7b5-q2w4x");
    let nonce = k.nonce("cpu", "k1", "00");
    let attempts = [
        (
            "read another group's queue",
            format!("XREADGROUP GROUP sluice x STREAMS {cpu} >"),
        ),
        (
            "range over another group's queue",
            format!("XRANGE {cpu} - +"),
        ),
        (
            "append to a queue it has no edge to",
            format!("XADD {cpu} * v 1"),
        ),
        (
            "read a caller's reply stream",
            format!("XREAD STREAMS {reply} 0"),
        ),
        ("claim another group's nonce", format!("SET {nonce} x")),
        ("delete its own queue", format!("DEL {io}")),
        ("rename its own queue", format!("RENAME {io} elsewhere")),
        ("move its queue's last id", format!("XSETID {io} 0-1")),
        ("trim its own queue", format!("XTRIM {io} MAXLEN 0")),
        (
            "destroy its consumer group",
            format!("XGROUP DESTROY {io} sluice"),
        ),
        ("list the keyspace", "KEYS *".into()),
        ("flush everything", "FLUSHALL".into()),
        ("change the configuration", "CONFIG SET maxmemory 1".into()),
        ("set a server password", "CONFIG SET requirepass x".into()),
        (
            "grant itself everything",
            "ACL SETUSER group-io +@all ~*".into(),
        ),
        (
            "turn the default user on",
            "ACL SETUSER default on nopass".into(),
        ),
        ("drop the script cache", "SCRIPT FLUSH".into()),
        // Any Lua could loop forever and freeze Redis for every pipeline
        // user: no role runs scripts (lease renewal is a plain XCLAIM).
        ("run a script", "EVAL return 1 0".into()),
        ("drop every function", "FUNCTION FLUSH".into()),
        ("call a function", format!("FCALL f 1 {io}")),
        ("switch database", "SELECT 1".into()),
    ];
    let io_user = run.redis_as("group-io");
    for (what, command) in &attempts {
        assert_refused(&io_user, command, &format!("group-io may not {what}"));
    }
    assert_eq!(
        total("group-io"),
        legit_refusals + attempts.len() as i64,
        "every refusal is counted in ACL LOG: {:?}",
        run.refused("group-io")
    );
    assert!(
        Probe::new(run.redis.as_ref().unwrap().port())
            .xlen(&io)
            .is_err(),
        "no password, no access"
    );

    // The other roles: the ingress reads no queue's entries; the autoscaler
    // and the probe write nothing; the admin reads no data.
    for (user, command) in [
        ("ingress", format!("XRANGE {cpu} - +")),
        // No scripts at all for the pod that faces callers.
        ("ingress", "EVAL return 1 0".into()),
        (
            "ingress",
            format!("XREADGROUP GROUP sluice x STREAMS {cpu} >"),
        ),
        ("autoscaler", format!("XADD {cpu} * v 1")),
        ("autoscaler", format!("XRANGE {cpu} - +")),
        ("probe", format!("XLEN {cpu}")),
        ("admin", format!("XRANGE {cpu} - +")),
    ] {
        assert_refused(&run.redis_as(user), &command, user);
    }
    // The admin may CONFIG SET (to reload a renewed certificate), but not
    // point Redis's files anywhere: those settings are protected.
    for (name, value) in [("dir", "/tmp"), ("dbfilename", "x.rdb")] {
        let got =
            run.redis_as("admin")
                .cmd(&[b"CONFIG", b"SET", name.as_bytes(), value.as_bytes()]);
        assert!(
            matches!(&got, Err(e) if e.contains("protected config")),
            "admin: CONFIG SET {name} answered {got:?}"
        );
    }
    // And what each role does need is still allowed.
    assert!(run
        .redis_as("autoscaler")
        .cmd(&[b"XLEN", cpu.as_bytes()])
        .is_ok());
    assert!(run.redis_as("probe").cmd(&[b"PING"]).is_ok());

    both_routes_answer(&run, &client).await;
    for (p, _) in &mut run.procs {
        assert!(p.exited().is_none(), "{} exited while serving", p.name);
    }
}
