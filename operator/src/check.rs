//! `sluice-operator check`: is the operator installed and working? What the
//! chart's `helm test` runs, in the operator's own image, with a
//! ServiceAccount that may read one Deployment and list StreamPipelines in
//! the release namespace, and nothing else.
//!
//! Passes when, within `--timeout`, the operator's Deployment reports
//! `Available` with a ready replica and the StreamPipeline API is served
//! (a list in the namespace succeeds: the CRD is established). Reads only.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams};
use kube::Client;
use sluice_crds::StreamPipeline;

/// What to look at.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Namespace of the operator's Deployment (the release namespace)
    #[arg(long, value_name = "NS")]
    pub namespace: String,
    /// Name of the operator's Deployment
    #[arg(long, value_name = "NAME", default_value = "sluice-operator")]
    pub deployment: String,
    /// How long to wait for both to hold (e.g. `60s`)
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub timeout: String,
}

/// Waits until both checks pass; their report.
///
/// # Errors
/// The API server cannot be reached, `--timeout` is not a duration, or a
/// check still fails at the timeout (the error says which and why).
pub async fn check(args: &CheckArgs) -> anyhow::Result<String> {
    let timeout = sluice_crds::units::parse_duration(&args.timeout)
        .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    let client = Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the API server: {e}"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let failed = match once(&client, args).await {
            Ok(report) => return Ok(report),
            Err(why) => why,
        };
        if tokio::time::Instant::now() + Duration::from_secs(2) > deadline {
            anyhow::bail!("not ready after {}: {failed}", args.timeout);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn once(client: &Client, args: &CheckArgs) -> Result<String, String> {
    let ns = &args.namespace;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = deployments
        .get(&args.deployment)
        .await
        .map_err(|e| format!("deployment {ns}/{}: {e}", args.deployment))?;
    let status = d.status.unwrap_or_default();
    let available = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True");
    let ready = status.ready_replicas.unwrap_or(0);
    if !available || ready < 1 {
        return Err(format!(
            "deployment {ns}/{} is not available ({ready} ready replica(s))",
            args.deployment
        ));
    }
    let pipelines: Api<StreamPipeline> = Api::namespaced(client.clone(), ns);
    let listed = pipelines
        .list(&ListParams::default().limit(1))
        .await
        .map_err(|e| format!("the StreamPipeline API is not served: {e}"))?;
    Ok(format!(
        "ok: deployment {ns}/{} available with {ready} ready replica(s); the StreamPipeline API is served ({} in {ns} on the first page)",
        args.deployment,
        listed.items.len()
    ))
}
