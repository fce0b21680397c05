//! `kubectl-sluice`: the kubectl plugin (`kubectl sluice …`). See `--help`
//! and `sluice_operator::plugin`.
//!
//! Exit status: 0 done, 1 failed or timed out, 2 bad usage.

use std::process::ExitCode;

use clap::Parser;
use sluice_operator::plugin::{run, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli, &mut std::io::stdout()).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
