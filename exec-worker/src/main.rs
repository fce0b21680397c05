//! `sluice-exec-worker`: runs one worker group with the built-in catalog.
//! See `--help`.

/// mimalloc: under load, glibc's malloc cost more CPU than any part of the
/// worker's own code (many small allocations freed on other threads).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sluice_exec_worker::process::run(sluice_exec_worker::Registry::builtin())
}
