//! `sluice-web-ingress`: the web ingress binary. See `--help`.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sluice_crds::Plan;
use sluice_exec_worker::Registry as NodeRegistry;
use sluice_web_ingress::{Cli, Command, Config, LogFormat};

/// mimalloc: under load, glibc's malloc cost more CPU than any part of the
/// ingress's own code (many small allocations freed on other threads).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("installing the SIGINT handler")?,
    }
    Ok(())
}

/// `keygen` and `dlq`: a command, then exit.
async fn command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen { dir } => {
            let kid = sluice_web_ingress::keygen(&dir)
                .with_context(|| format!("writing a key ring into {}", dir.display()))?;
            println!("wrote a key ring to {} (current kid: {kid})", dir.display());
            Ok(())
        }
        Command::Dlq(action) => {
            use sluice_web_ingress::{admin_client, dlq_command};
            let (target, what) = action.split();
            let done = match (target.admin, &target.admin_token_file) {
                (Some(at), Some(token_file)) => admin_client::ask(at, token_file, &what).await?,
                _ => dlq_command::on_redis(&target, what).await?,
            };
            dlq_command::report(done)
        }
    }
}

/// Serves the pipeline until SIGTERM or SIGINT, then drains.
async fn serve(config: Config, plan: Plan) -> anyhow::Result<()> {
    let telemetry = sluice_platform::telemetry::init(
        "sluice-web-ingress",
        env!("CARGO_PKG_VERSION"),
        config.log_format == LogFormat::Json,
    );
    // StartError's messages already carry their causes; as a plain message
    // the `{:#}` below does not print each cause twice.
    let ingress = sluice_web_ingress::start_planned(config, plan, NodeRegistry::builtin())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    shutdown_signal().await?;
    ingress.begin_drain();
    ingress.wait().await;
    telemetry.shutdown().await;
    Ok(())
}

/// A runtime of `threads` threads (`None`: one per CPU) running `f`.
fn run_on<F: std::future::Future<Output = anyhow::Result<()>>>(
    threads: Option<usize>,
    f: F,
) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(f)
}

fn run(mut cli: Cli) -> anyhow::Result<()> {
    if let Some(c) = cli.command.take() {
        return run_on(None, command(c));
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = Config::resolve(&cli, &env)?;
    // Read once, before the runtime is sized: with memory backends the
    // HTTP runtime shares the CPUs with the inline workers' runtime.
    let plan = sluice_web_ingress::load_plan(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    run_on(
        Some(sluice_web_ingress::http_threads(&config, &plan)),
        serve(config, plan),
    )
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-web-ingress: {e:#}");
            ExitCode::from(2)
        }
    }
}
