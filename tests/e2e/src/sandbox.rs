//! A test's temporary directory: manifests, the key ring, and one log file
//! per process. When the test fails, the tail of every log is printed and
//! the directory is kept for a closer look.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::binaries::{binary, INGRESS_BIN};

/// Lines of each log printed when a test fails.
const TAIL_LINES: usize = 60;

/// A test's temporary directory, shared by the processes of the test.
///
/// # Guarantees
/// The directory is removed when the last clone is dropped, unless the
/// thread is panicking (a failed assertion): then every log's tail is
/// printed, and the directory is kept and its path printed.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    dir: Mutex<tempfile::TempDir>,
    path: PathBuf,
    logs: Mutex<Vec<PathBuf>>,
}

impl Sandbox {
    /// A fresh directory for the test `name`.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sluice-e2e-{name}-"))
            .tempdir()
            .expect("create the test's temporary directory");
        let path = dir.path().to_path_buf();
        Self {
            inner: Arc::new(Inner {
                name: name.to_string(),
                dir: Mutex::new(dir),
                path,
                logs: Mutex::new(vec![]),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Writes `contents` to `name` in the sandbox.
    ///
    /// # Panics
    /// On I/O errors.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// Copies the example `example` into the sandbox with each `(from, to)`
    /// replacement applied, so a test can shorten a timeout or a lease.
    ///
    /// # Panics
    /// When a `from` does not occur in the example (the example changed and
    /// the test would silently run something else).
    pub fn manifest_from_example(&self, example: &str, edits: &[(&str, &str)]) -> PathBuf {
        let path = crate::binaries::example(example);
        let mut text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        for (from, to) in edits {
            assert!(
                text.contains(from),
                "example {example} no longer contains `{from}`; update the test's edits"
            );
            text = text.replace(from, to);
        }
        self.write(example, &text)
    }

    /// Writes a fresh key ring with `sluice-web-ingress keygen DIR`, as an
    /// operator does by hand, and returns the directory.
    ///
    /// # Panics
    /// When keygen fails.
    pub fn keygen(&self) -> PathBuf {
        let dir = self.path().join("keys");
        let out = Command::new(binary(INGRESS_BIN))
            .arg("keygen")
            .arg(&dir)
            .output()
            .expect("run sluice-web-ingress keygen");
        assert!(
            out.status.success(),
            "keygen failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            dir.join("current").is_file(),
            "keygen wrote no `current` file"
        );
        dir
    }

    /// Writes `files` (name → content) into a new directory `name` of the
    /// sandbox, as a mounted key Secret would hold them, and returns it.
    ///
    /// # Panics
    /// On I/O errors, or when the directory exists.
    pub fn key_dir<T: AsRef<str>>(
        &self,
        name: &str,
        files: &std::collections::BTreeMap<String, T>,
    ) -> PathBuf {
        let dir = self.path().join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        for (file, content) in files {
            let p = dir.join(file);
            std::fs::write(&p, content.as_ref())
                .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        }
        dir
    }

    /// A new log file named after `name`, listed in the failure report.
    pub fn log_file(&self, name: &str) -> PathBuf {
        let mut logs = self.inner.logs.lock().unwrap_or_else(|e| e.into_inner());
        let p = self.path().join(format!("{name}.{}.log", logs.len()));
        logs.push(p.clone());
        p
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        for log in logs.iter() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(TAIL_LINES);
            eprintln!(
                "──── {} (last {} of {} lines) ────",
                log.display(),
                lines.len() - from,
                lines.len()
            );
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        }
        self.dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .disable_cleanup(true);
        eprintln!(
            "──── {} failed; its files are kept in {} ────",
            self.name,
            self.path.display()
        );
    }
}
