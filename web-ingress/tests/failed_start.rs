//! A start that fails after its worker groups began (here: the HTTP port is
//! taken) stops them before returning the error, so a process embedding
//! the ingress is not left running workers nobody can drain.
//!
//! Alone in its test binary: it counts the process's threads by name, and
//! no other test may start ingresses beside it.

mod common;

use std::time::Duration;

use sluice_exec_worker::Registry;
use sluice_web_ingress::StartError;

/// The threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end().starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_refused_late_stops_the_workers_it_started() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let mut config = common::config(&common::pipeline("two-hops.yaml"));
    config.listen = taken.local_addr().expect("bound address");

    let refused = sluice_web_ingress::start_with(config, Registry::builtin()).await;
    match refused {
        Err(StartError::Listen { .. }) => {}
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("started on a port that is taken"),
    }

    // The inline runtime's threads end once its workers have stopped.
    common::eventually(
        Duration::from_secs(10),
        "the inline workers stopped",
        || async {
            (threads_named("sluice-inline") == 0 && threads_named("sluice-worker") == 0)
                .then_some(())
        },
    )
    .await;
}
