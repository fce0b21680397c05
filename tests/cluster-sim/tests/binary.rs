//! The binary, black-box: `cluster-sim --kubeconfig-out FILE` serves, and kube's
//! `Client::try_default()` works with `KUBECONFIG` pointing at the file. This is the only test
//! in this binary because it sets `KUBECONFIG` for the test process.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn binary_writes_a_kubeconfig_that_client_try_default_uses() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let kc = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cluster-sim"))
        .arg("--kubeconfig-out")
        .arg(&kc)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning cluster-sim")?;
    let mut lines = BufReader::new(child.stdout.take().context("piped stdout")?).lines();
    let url = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("cluster-sim printed its URL")??
        .context("stdout closed early")?;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    // only test in this binary, so no other test observes the variable
    std::env::set_var("KUBECONFIG", &kc);
    let client = kube::Client::try_default()
        .await
        .context("Client::try_default")?;
    let names: Vec<String> = Api::<Namespace>::all(client)
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_string()), "{names:?}");
    child.kill().await?;
    Ok(())
}
