//! `sluice-operator`: the StreamPipeline controller binary. See `--help`.
//!
//! Exit status: 0 after SIGTERM/SIGINT, 2 for a bad flag or an unreachable
//! API server, 3 when the leader lease was lost (the Deployment restarts
//! the process, which then stands by).

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sluice_operator::config::{Cli, Command, Config, LogFormat};
use sluice_operator::run::RunError;

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGTERM handler; only Ctrl-C stops the operator");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = Config::resolve(&cli, &env).context("invalid configuration")?;
    sluice_platform::telemetry::init_logs(config.log_format == LogFormat::Json);
    sluice_operator::run(config, shutdown_signal()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Check(args)) = &cli.command {
        return match sluice_operator::check::check(args).await {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice-operator check: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "sluice-operator stopped");
            eprintln!("sluice-operator: {e:#}");
            if matches!(
                e.downcast_ref::<RunError>(),
                Some(RunError::LostLeadership(_))
            ) {
                ExitCode::from(3)
            } else {
                ExitCode::from(2)
            }
        }
    }
}
