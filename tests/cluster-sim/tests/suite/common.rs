//! Helpers shared by the suite: start a simulator with a kube client, bounded waiting.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use cluster_sim::{ClusterSim, ClusterSimHandle, ClusterSimOptions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A kube client for a kubeconfig file (read explicitly: no test touches `KUBECONFIG`).
pub async fn client_for(path: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(path).context("reading kubeconfig")?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("building kube config")?;
    // bounded patience for every request, so a hung server fails a test instead of stalling it
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    Client::try_from(config).context("building kube client")
}

/// Start a simulator with `opts` and an admin client for it.
pub async fn start_with(opts: ClusterSimOptions) -> anyhow::Result<(ClusterSimHandle, Client)> {
    let sim = ClusterSim::start_with(opts)
        .await
        .context("starting cluster-sim")?;
    let client = client_for(sim.kubeconfig_path()).await?;
    Ok((sim, client))
}

/// Start with defaults tuned for tests (fast rollout steps).
pub async fn start() -> anyhow::Result<(ClusterSimHandle, Client)> {
    start_with(ClusterSimOptions {
        step_delay: Duration::from_millis(10),
        ..Default::default()
    })
    .await
}

/// Poll `check` until it returns `Some`, for at most `patience`; the error says what was awaited.
pub async fn eventually<T, F, Fut>(
    what: &str,
    patience: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {patience:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The HTTP status of a kube error, if it was an API error.
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}
