//! `cluster-sim` binary: start the simulator on 127.0.0.1, write its admin kubeconfig to
//! `--kubeconfig-out`, print the URL, and serve until interrupted.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use cluster_sim::{ClusterSim, ClusterSimOptions};

/// In-memory Kubernetes API stand-in for tests.
#[derive(Debug, Parser)]
#[command(name = "cluster-sim", version)]
struct Args {
    /// Where to write the admin kubeconfig.
    #[arg(long)]
    kubeconfig_out: PathBuf,
    /// Enforce RBAC for ServiceAccount tokens.
    #[arg(long)]
    rbac: bool,
    /// Delay between rollout steps of the workload controllers, in milliseconds.
    #[arg(long, default_value_t = 50)]
    step_delay_ms: u64,
    /// Length of one `progressDeadlineSeconds` second, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    progress_deadline_unit_ms: u64,
    /// Port on 127.0.0.1 (0 = ephemeral).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let sim = ClusterSim::start_with(ClusterSimOptions {
        rbac: args.rbac,
        step_delay: Duration::from_millis(args.step_delay_ms),
        progress_deadline_unit: Duration::from_millis(args.progress_deadline_unit_ms),
        port: args.port,
        ..Default::default()
    })
    .await
    .context("starting cluster-sim")?;
    std::fs::copy(sim.kubeconfig_path(), &args.kubeconfig_out)
        .with_context(|| format!("writing kubeconfig to {}", args.kubeconfig_out.display()))?;
    println!("{}", sim.url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    sim.shutdown().await;
    Ok(())
}
