//! Where the product binaries are.
//!
//! They belong to other packages, so `cargo test -p sluice-e2e` does not
//! build them. They are looked up next to the test executable
//! (`<target>/<profile>/deps/<test>` → `<target>/<profile>/<name>`) after one
//! `cargo build` per test process: a no-op when they are current, and the
//! guarantee that a test never exercises a stale binary left by an older
//! build; a product that does not build fails these tests. Set
//! `SLUICE_E2E_NO_BUILD=1` to skip the build and knowingly test the
//! binaries already there (e.g. while a shared checkout is mid-edit).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The ingress binary (package `sluice-web-ingress`).
pub const INGRESS_BIN: &str = "sluice-web-ingress";
/// The worker binary (package `sluice-exec-worker`).
pub const WORKER_BIN: &str = "sluice-exec-worker";

const PACKAGES: [&str; 2] = ["sluice-exec-worker", "sluice-web-ingress"];
const NO_BUILD: &str = "SLUICE_E2E_NO_BUILD";

/// The workspace root (this crate lives in `tests/e2e`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/e2e sits two levels below the workspace root")
        .to_path_buf()
}

/// A file of the workspace's `examples/` folder.
///
/// # Panics
/// When it does not exist.
pub fn example(name: &str) -> PathBuf {
    let p = workspace_root().join("examples").join(name);
    assert!(p.is_file(), "example {} is missing", p.display());
    p
}

/// `<target>/<profile>`, the folder holding the test executable's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let deps = exe.parent().expect("the test executable is in a directory");
    // Integration tests run from <profile>/deps; anything else (a copied
    // executable) is taken as sitting in the profile folder itself.
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

fn build_once() -> &'static Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = profile_dir();
        if std::env::var_os(NO_BUILD).is_some() {
            return Ok(dir);
        }
        let target = dir
            .parent()
            .ok_or_else(|| format!("{} has no parent", dir.display()))?;
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(workspace_root()).arg("build");
        for p in PACKAGES {
            cmd.args(["-p", p]);
        }
        cmd.arg("--bins").arg("--target-dir").arg(target);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run `{}`: {e}", env!("CARGO")))?;
        if !out.status.success() {
            return Err(format!(
                "`cargo build -p {}` failed ({}); set {NO_BUILD}=1 to test the binaries \
                 already built:\n{}",
                PACKAGES.join(" -p "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(dir)
    })
}

/// The path of product binary `name`, built first if needed.
///
/// # Panics
/// When the build fails or the binary is still missing afterwards.
pub fn binary(name: &str) -> PathBuf {
    let dir = match build_once() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing (unset {NO_BUILD} to build it)",
        p.display()
    );
    p
}
