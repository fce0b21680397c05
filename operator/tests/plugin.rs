//! `kubectl-sluice` (the binary) against the API stand-in with RBAC on: an
//! on-call user who may only get and patch StreamPipelines in one namespace
//! reads a pipeline's status, pauses and resumes it, and is refused a pause
//! the pipeline cannot carry before anything is written. The operator runs
//! with its documented rules beside it.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::*;

const PATIENCE: Duration = Duration::from_secs(30);
const NS: &str = "oncall";

/// Runs the plugin as the kubeconfig's user: (exit code, stdout, stderr).
async fn plugin(kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
    kubectl_sluice(kubeconfig, NS, args).await
}

#[tokio::test]
async fn an_on_call_user_reads_status_pauses_and_resumes_with_pipeline_rights_only(
) -> anyhow::Result<()> {
    let h = Harness::start_with(cluster_sim::ClusterSimOptions {
        rbac: true,
        ..sim_options()
    })
    .await?;
    grant_documented_rbac(&h, "op")?;
    let _op = Operator::start(&h, "op", &[]).await?;
    h.namespace(NS)?;
    let kubeconfig = namespace_user(
        &h,
        NS,
        "oncall",
        json!([{"apiGroups": ["sluice.dev"], "resources": ["streampipelines"], "verbs": ["get", "patch"]}]),
    )?;
    for p in ["orders-redis", "orders"] {
        h.apply(NS, example(p)).await?;
        h.wait_ready(NS, p, PATIENCE).await?;
    }

    let (code, out, err) = plugin(&kubeconfig, &["status", "orders-redis"]).await;
    assert_eq!(code, 0, "{err}");
    for want in [
        "StreamPipeline oncall/orders-redis",
        "URL: http://orders-redis.oncall.svc",
        "Ready",
        "AllReplicasReady",
        "Paused",
        "GROUP",
        "cpu",
        "io",
    ] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }

    // No Redis answers in the stand-in: the pause is written, and the
    // plugin says it is not in place yet.
    let (code, out, err) = plugin(&kubeconfig, &["pause", "orders-redis", "--timeout", "2s"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("pause written"), "{out}");
    assert!(err.contains("Paused=False Pausing"), "{err}");
    assert_eq!(
        h.pipeline(NS, "orders-redis").unwrap()["spec"]["paused"],
        json!(true)
    );
    let (code, out, err) = plugin(&kubeconfig, &["resume", "orders-redis"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("orders-redis: running"), "{out}");
    assert!(h.pipeline(NS, "orders-redis").unwrap()["spec"]
        .get("paused")
        .is_none());

    // Without waiting: written, and the command returns at once.
    let (code, out, err) = plugin(&kubeconfig, &["pause", "orders-redis", "--no-wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("orders-redis: pause written"), "{out}");
    assert!(!out.contains("paused\n"), "{out}");
    let (code, out, err) = plugin(&kubeconfig, &["resume", "orders-redis", "--no-wait"]).await;
    assert_eq!(code, 0, "{out}{err}");

    // A suspended pipeline: the operator would write nothing, so neither does the plugin.
    let mut m = example("orders-redis");
    m["spec"]["suspend"] = json!(true);
    h.apply(NS, m).await?;
    let (code, _, err) = plugin(&kubeconfig, &["pause", "orders-redis"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("it is suspended"), "{err}");
    assert!(h.pipeline(NS, "orders-redis").unwrap()["spec"]
        .get("paused")
        .is_none());

    // A pause the memory profile cannot carry: refused, nothing written.
    let generation = h.pipeline(NS, "orders").unwrap()["metadata"]["generation"].clone();
    let (code, _, err) = plugin(&kubeconfig, &["pause", "orders"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot pause oncall/orders: spec.paused"),
        "{err}"
    );
    assert_eq!(
        h.pipeline(NS, "orders").unwrap()["metadata"]["generation"],
        generation
    );

    let (code, _, err) = plugin(&kubeconfig, &["status", "absent"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("StreamPipeline oncall/absent not found"),
        "{err}"
    );

    // Everything it asked was allowed, and it asked for no Secret.
    let (asked, denied) = authz_of(&h, &format!("system:serviceaccount:{NS}:oncall"));
    assert!(asked > 0);
    assert!(denied.is_empty(), "{denied:#?}");
    Ok(())
}

/// The binary's own exit codes (what `--help` lists is checked by the
/// unit tests of `plugin`).
#[test]
fn help_succeeds_and_bad_usage_exits_2() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-sluice"))
            .args(args)
            .output()
            .unwrap()
    };
    let help = run(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("never Secrets"));
    assert_eq!(
        run(&["pause"]).status.code(),
        Some(2),
        "usage errors exit 2"
    );
}
