//! The ingress's threads, as its runtimes report them in the start-up line:
//! with memory backends the CPUs are shared between the runtime serving
//! HTTP and the one running the worker groups inline (`--threads`,
//! `--inline-threads`, their variables), and the pipeline answers either way.

use std::time::Duration;

use serde_json::json;
use sluice_e2e::{example, Http, Sandbox, Service, Spec};

/// The start-up line's `field=N` (the text log format).
fn reported(log: &str, field: &str) -> usize {
    let line = log
        .lines()
        .find(|l| l.contains("sluice-web-ingress started"))
        .unwrap_or_else(|| panic!("no start-up line in the log:\n{log}"));
    let prefix = format!("{field}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{field}=N` in the start-up line: {line}"))
}

/// The hello pipeline with its node on the ingress group: no worker group.
const INGRESS_ONLY: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: hello }
spec:
  interfaces:
    - { name: hello, kind: http, path: /v1/hello, entry: greet, timeout: 5s }
  groups:
    - { name: web, role: ingress }
  nodes:
    - { name: greet, group: web, uses: builtin/json-map, with: { template: { greeting: "hello, ${/name}" } } }
"#;

/// Starts the hello example with `spec`'s extra flags, checks that it
/// answers, and returns (HTTP threads, inline threads) as reported.
async fn threads_of(name: &str, spec: impl FnOnce(Spec) -> Spec) -> (usize, usize) {
    threads_of_pipeline(name, None, spec).await
}

/// [`threads_of`], for `manifest` when given.
async fn threads_of_pipeline(
    name: &str,
    manifest: Option<&str>,
    spec: impl FnOnce(Spec) -> Spec,
) -> (usize, usize) {
    let sb = Sandbox::new(name);
    let pipeline = match manifest {
        Some(m) => sb.write("pipeline.yaml", m),
        None => example("hello.yaml"),
    };
    let ingress = Service::start(&sb, spec(Spec::ingress(&pipeline))).await;
    let a = Http::new(Duration::from_secs(5))
        .post_when_connected(
            &ingress.url("/v1/hello"),
            &json!({"name": "threads"}),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"greeting": "hello, threads"}));
    let log = ingress.log_text();
    (reported(&log, "threads"), reported(&log, "inline_threads"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_profile_shares_the_cpus_between_http_and_the_inline_workers() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let inline = (cpus / 2).max(1);
    assert_eq!(
        threads_of("threads-default", |s| s).await,
        ((cpus - inline).max(1), inline),
        "{cpus} CPUs"
    );
    // Given for one runtime: the other takes what is left, at least one.
    assert_eq!(
        threads_of("threads-env", |s| s.env("SLUICE_THREADS", "2")).await,
        (2, cpus.saturating_sub(2).max(1)),
        "{cpus} CPUs"
    );
    // Given for both: as given, whatever the CPUs.
    assert_eq!(
        threads_of("threads-flags", |s| s
            .arg("--threads")
            .arg("3")
            .arg("--inline-threads")
            .arg("2"))
        .await,
        (3, 2)
    );
    // No worker group runs in the process: every CPU serves HTTP.
    assert_eq!(
        threads_of_pipeline("threads-ingress-only", Some(INGRESS_ONLY), |s| s).await,
        (cpus, 0),
        "{cpus} CPUs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_count_out_of_bounds_is_refused_at_start_naming_the_flag() {
    let out = std::process::Command::new(sluice_e2e::binary("sluice-web-ingress"))
        .arg("--pipeline")
        .arg(example("hello.yaml"))
        .arg("--inline-threads")
        .arg("100000")
        .output()
        .expect("run sluice-web-ingress");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--inline-threads: must be 1 … 256"), "{err}");
}
