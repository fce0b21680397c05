//! Running a materialised container as a local process: the binary its
//! image names (`sluice-web-ingress` or `sluice-exec-worker`, built by
//! `sluice_e2e::binary` so a stale one is never tested) with exactly the
//! argv, environment and working directory the kubelet gave it.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

use super::Materialised;

/// The binary a container runs: its `command[0]`, else the image's
/// entrypoint, which for the project's images is the binary named like the
/// image repository (`ghcr.io/sluice-dev/sluice-web-ingress:<tag>`).
fn binary_for(m: &Materialised) -> (PathBuf, Vec<String>) {
    let (name, extra) = match &m.command {
        Some(cmd) => (
            cmd[0].rsplit('/').next().unwrap_or_default().to_string(),
            cmd[1..].to_vec(),
        ),
        None => {
            let repo = m.image.rsplit('/').next().unwrap_or_default();
            let repo = repo.split([':', '@']).next().unwrap_or_default();
            (repo.to_string(), Vec::new())
        }
    };
    assert!(
        [sluice_e2e::INGRESS_BIN, sluice_e2e::WORKER_BIN].contains(&name.as_str()),
        "{}: image `{}` / command {:?} is not a runtime binary",
        m.pod_name,
        m.image,
        m.command
    );
    (sluice_e2e::binary(&name), extra)
}

/// A runtime process, killed by its PID on drop; its output is printed
/// when the test fails.
pub struct Proc {
    /// `<pod>/<container>`.
    pub name: String,
    pub pod: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts the container's binary; output goes to
    /// `<root>/<pod>.<container>.log`.
    pub fn spawn(m: &Materialised) -> Self {
        let (bin, command_args) = binary_for(m);
        let log = m.root.join(format!("{}.{}.log", m.pod_name, m.container));
        // Appended to: a restarted container's output follows the last one's.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(&bin)
            .args(command_args)
            .args(&m.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(m.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&m.root)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Self {
            name: format!("{}/{}", m.pod_name, m.container),
            pod: m.pod_name.clone(),
            child,
            log,
        }
    }

    /// Kills the process (SIGKILL), as a crash would end it, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop (SIGTERM), as the kubelet ends a pod, and
    /// waits up to `patience` for it to exit; its exit status.
    ///
    /// # Panics
    /// When it is still running after `patience`.
    pub fn terminate(&mut self, patience: std::time::Duration) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "{}: kill -TERM failed", self.name);
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} still runs {patience:?} after SIGTERM",
                self.name
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "===== output of {} =====\n{}===== end of {} =====",
                self.name,
                self.output(),
                self.name
            );
        }
    }
}
