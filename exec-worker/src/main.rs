//! `sluice-exec-worker`: runs one worker group with the built-in catalog.
//! See `--help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice_exec_worker::process::main_with(sluice_exec_worker::Registry::builtin()).await
}
