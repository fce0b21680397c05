//! The tcp profile with the real binaries: `sluice-web-ingress` starts one
//! `sluice-exec-worker` per worker group and reaches it over loopback TCP.
//!
//! - start order and readiness: each group is started once the previous
//!   one is ready, and the ingress serves only after all are;
//! - keys reach a child only on its stdin: never in its arguments, its
//!   environment or a log line;
//! - only loopback addresses are accepted for the hub;
//! - a child killed under load: every caller gets its answer;
//! - the restart policy to its crash-loop limit, at start and later;
//! - SIGTERM with a child that ignores it: one forced stop, reported once.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_e2e::{binary, eventually, example, orders, Http, Sandbox, Service, Spec, WORKER_BIN};

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so split
        // after its closing parenthesis.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out.sort_unstable();
    out
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The child of `ingress` running `group`.
fn child_for(ingress: &Service, group: &str) -> Option<u32> {
    let flag = format!("--group {group} ");
    children_of(ingress.pid())
        .into_iter()
        .find(|c| cmdline(*c).contains(&flag))
}

fn script(sb: &Sandbox, name: &str, body: &str) -> PathBuf {
    let path = sb.write(name, &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn position(log: &str, needle: &str) -> usize {
    log.find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in the log:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_start_in_order_get_their_keys_on_stdin_only_and_serve() {
    let sb = Sandbox::new("tcp-start");
    let keys = sb.keygen();
    let ingress = Service::start(
        &sb,
        Spec::ingress(&example("orders-tcp.yaml"))
            .arg("--keys")
            .arg(&keys)
            // A variable meant for the ingress is not handed down.
            .env("SLUICE_KEYS_DIR", &keys),
    )
    .await;
    let log = ingress.log_text();
    let cpu = position(&log, "worker group ready group=cpu");
    let io = position(&log, "worker group ready group=io");
    let serving = position(&log, "sluice-web-ingress started");
    assert!(
        cpu < position(&log, "worker started group=io"),
        "io started before cpu was ready:\n{log}"
    );
    assert!(cpu < io && io < serving, "start order:\n{log}");

    let http = Http::new(Duration::from_secs(10));
    let input = orders::input("tcp", 1);
    let a = http
        .post(&ingress.url("/v1/orders"), &input, None)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), orders::expected(&input));

    // Every key byte of the ring, in the forms a file holds it.
    let secrets: Vec<String> = std::fs::read_dir(&keys)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "current")
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert!(!secrets.is_empty());
    let children = children_of(ingress.pid());
    assert_eq!(
        children.len(),
        2,
        "one child per worker group: {children:?}"
    );
    for c in &children {
        let args = cmdline(*c);
        assert!(args.contains("--keys-stdin"), "{args}");
        let environ = std::fs::read(format!("/proc/{c}/environ"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        assert!(
            !environ.contains("SLUICE_KEYS_DIR"),
            "the key directory leaked into a child's environment"
        );
        for s in &secrets {
            assert!(!args.contains(s.as_str()), "a key in a child's arguments");
            assert!(
                !environ.contains(s.as_str()),
                "a key in a child's environment"
            );
        }
        // The pipe the keys came through is closed and nothing else of the
        // key directory is open in the child.
        for fd in std::fs::read_dir(format!("/proc/{c}/fd"))
            .unwrap()
            .flatten()
        {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            assert!(!target.starts_with(&keys), "a child holds {target:?} open");
        }
    }
    let log = ingress.log_text();
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "a key in the log");
    }
}

#[test]
fn a_hub_on_a_non_loopback_address_is_refused_at_start() {
    let hello = example("orders-tcp.yaml");
    let out = Command::new(binary(sluice_e2e::INGRESS_BIN))
        .args([
            "--pipeline",
            hello.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--hub",
            "0.0.0.0:7311",
        ])
        .env_remove("SLUICE_HUB")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--hub 0.0.0.0:7311") && stderr.contains("loopback"),
        "{stderr}"
    );

    let out = Command::new(binary(WORKER_BIN))
        .args([
            "--pipeline",
            hello.to_str().unwrap(),
            "--group",
            "cpu",
            "--hub",
            "10.1.2.3:7311",
            "--keys-stdin",
        ])
        .env_remove("SLUICE_HUB")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--hub") && stderr.contains("loopback"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_under_load_costs_no_caller_its_answer() {
    let sb = Sandbox::new("tcp-kill");
    let ingress = Service::start(&sb, Spec::ingress(&example("orders-tcp.yaml"))).await;
    let http = Arc::new(Http::new(Duration::from_secs(10)));
    let url = ingress.url("/v1/orders");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = vec![];
    for s in 0..8 {
        let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut results = vec![];
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let input = orders::input(&format!("s{s}"), i);
                let started = Instant::now();
                let a = http.post(&url, &input, None).await;
                results.push((input, a, started.elapsed()));
                i += 1;
            }
            results
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let victim = child_for(&ingress, "cpu").expect("the cpu child");
    Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    // Load goes on through the restart.
    eventually(
        Duration::from_secs(10),
        "the cpu child restarted",
        || async {
            match child_for(&ingress, "cpu") {
                Some(c) if c != victim => Ok(()),
                other => Err(format!("cpu child: {other:?}")),
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for s in senders {
        for (input, a, took) in s.await.unwrap() {
            total += 1;
            let a = a.unwrap_or_else(|e| panic!("{input}: no answer: {e}"));
            // The interface timeout is 5 s; nobody waits past it.
            assert!(took < Duration::from_secs(6), "{input} took {took:?}");
            assert_eq!(a.status, 200, "{input}: {}", a.text());
            assert_eq!(a.json(), orders::expected(&input));
        }
    }
    assert!(total > 50, "only {total} requests ran");
    let log = ingress.log_text();
    assert!(
        log.contains("worker exited group=cpu status=signal: 9"),
        "{log}"
    );
}

#[test]
fn a_group_that_never_comes_up_fails_the_start_with_the_reason() {
    let sb = Sandbox::new("tcp-crashloop-start");
    let out = Command::new(binary(sluice_e2e::INGRESS_BIN))
        .args([
            "--pipeline",
            example("orders-tcp.yaml").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args([
            "--worker-bin",
            "io=/bin/false",
            "--restart-limit",
            "3",
            "--restart-window",
            "1m",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let _ = sb;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stderr}\n{stdout}");
    assert!(
        stderr.contains(
            "worker group io exited 3 times within 60s (last: exit status: 1); not restarted"
        ),
        "{stderr}\n{stdout}"
    );
    // cpu came up first and was stopped with it.
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("worker group ready group=cpu"), "{all}");
    assert!(
        all.contains("worker stopped group=cpu stop=\"graceful\""),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_keeps_crashing_later_fails_readiness_with_the_reason() {
    let sb = Sandbox::new("tcp-crashloop-run");
    let real = binary(WORKER_BIN);
    let marker = sb.path().join("started-once");
    // Runs the real worker the first time only; every restart fails.
    let flaky = script(
        &sb,
        "flaky-worker",
        &format!(
            "if [ -e '{m}' ]; then exit 3; fi\ntouch '{m}'\nexec '{w}' \"$@\"",
            m = marker.display(),
            w = real.display()
        ),
    );
    let ingress = Service::start(
        &sb,
        Spec::ingress(&example("orders-tcp.yaml"))
            .arg("--worker-bin")
            .arg(format!("io={}", flaky.display()))
            .arg("--restart-limit")
            .arg("2")
            .arg("--restart-window")
            .arg("1m"),
    )
    .await;
    let http = Http::new(Duration::from_secs(10));
    let io = child_for(&ingress, "io").expect("the io child");
    Command::new("kill")
        .args(["-KILL", &io.to_string()])
        .status()
        .unwrap();
    let (why, _) = eventually(
        Duration::from_secs(10),
        "readiness fails with the reason",
        || async {
            let r = http
                .get(&ingress.url("/readyz"))
                .await
                .map_err(|e| e.to_string())?;
            // Between the kill and the last exit it says the group has no
            // live worker; then why it was given up on.
            if r.status == 503 && r.text().contains("exited") {
                Ok(r.text())
            } else {
                Err(format!("{} {}", r.status, r.text()))
            }
        },
    )
    .await;
    assert_eq!(
        why,
        "worker group io exited 2 times within 60s (last: exit status: 3); not restarted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stuck_child_ends_in_one_forced_stop() {
    let sb = Sandbox::new("tcp-stuck");
    let real = binary(WORKER_BIN);
    // Ignores SIGTERM itself and keeps the real worker as its child: the
    // supervisor's SIGTERM reaches only the script.
    let stuck = script(
        &sb,
        "stuck-worker",
        &format!(
            "trap '' TERM\n# A background job's stdin is /dev/null: pass the keys on through fd 3.\nexec 3<&0\n'{}' \"$@\" <&3 &\nwhile true; do wait; done",
            real.display()
        ),
    );
    let mut ingress = Service::start(
        &sb,
        Spec::ingress(&example("orders-tcp.yaml"))
            .arg("--worker-bin")
            .arg(format!("io={}", stuck.display()))
            .arg("--drain-grace")
            .arg("0s")
            .arg("--drain-timeout")
            .arg("1s"),
    )
    .await;
    let http = Http::new(Duration::from_secs(10));
    let input = orders::input("stuck", 1);
    let a = http
        .post(&ingress.url("/v1/orders"), &input, None)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    let script_pid = child_for(&ingress, "io").expect("the io script");
    let worker_pid = *children_of(script_pid)
        .first()
        .expect("the real io worker under the script");
    ingress.terminate();
    let status = ingress.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}");
    let log = ingress.log_text();
    assert_eq!(log.matches("worker stopped group=io").count(), 1, "{log}");
    assert!(
        log.contains("worker stopped group=io stop=\"forced\""),
        "{log}"
    );
    assert_eq!(log.matches("worker stopped group=cpu").count(), 1, "{log}");
    assert!(
        log.contains("worker stopped group=cpu stop=\"graceful\""),
        "{log}"
    );
    // The real worker under the killed script saw its parent go and left.
    eventually(Duration::from_secs(10), "no worker left behind", || async {
        let stat = std::fs::read_to_string(format!("/proc/{worker_pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next());
        match state {
            None | Some("Z") => Ok(()),
            Some(s) => Err(format!("worker {worker_pid} still running (state {s})")),
        }
    })
    .await;
}
