//! `sluice-web-ingress dlq …` run as a user runs it, and its listings read.

use std::ffi::OsString;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::http::{Answer, Http};
use crate::{binary, eventually, INGRESS_BIN};

/// The `letters` pipeline of the dead-letter tests on `backend` (`redis`,
/// `tcp`): one http interface `fetch` (path `/v1/fetch`, 10 s) whose entry
/// node `node` (a YAML flow mapping naming `fetch`, group `io`) runs on the
/// worker group `io`; two deliveries at most, 500 ms leases.
pub fn letters_manifest(backend: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{ name: letters }}
spec:
  backends: {{ queue: {backend}, kv: {backend}, reply: {backend} }}
  interfaces:
    - {{ name: fetch, kind: http, path: /v1/fetch, entry: fetch, timeout: 10s }}
  groups:
    - {{ name: web, role: ingress }}
    - {{ name: io, role: worker }}
  nodes:
    - {node}
  limits: {{ maxDeliveries: 2, lease: 500ms }}
"#
    )
}

/// How long one `dlq` command may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Runs `cmd` to its end, killed (and the test failed) if that takes longer
/// than `patience`: a command that should fail at once must not hang the
/// suite when it starts (or waits) instead.
pub fn output_within(mut cmd: Command, patience: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the command");
    let until = Instant::now() + patience;
    while child.try_wait().expect("wait for the command").is_none() {
        if Instant::now() >= until {
            let _ = child.kill();
            let out = child.wait_with_output().expect("its output");
            panic!(
                "{cmd:?} still running after {patience:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("its output")
}

/// `sluice-web-ingress dlq <args> <target>` (the target flags: `--pipeline
/// … --redis … --keys …`, or `--admin … --admin-token-file …`), with no
/// `SLUICE_*` target variable inherited: its stdout, or its exit status and
/// stderr when it fails.
pub fn run(args: &[&str], target: &[OsString]) -> Result<String, String> {
    let mut cmd = Command::new(binary(INGRESS_BIN));
    cmd.arg("dlq")
        .args(args)
        .args(target)
        .env_remove("SLUICE_PIPELINE")
        .env_remove("SLUICE_REDIS_URL")
        .env_remove("SLUICE_KEYS_DIR");
    let out = output_within(cmd, PATIENCE);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!("{}: {}", out.status, text(&out.stderr)))
    }
}

/// Data lines of a listing, split at tabs (the header, payload lines and
/// the "(no dead letters)" line dropped).
pub fn rows(listing: &str) -> Vec<Vec<String>> {
    listing
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("  ") && !l.starts_with('('))
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Where the letter `id` was redriven to, from `dlq redrive`'s output
/// `out` (its line `<id>\tsent\t…\t<location>`); panics showing `out`
/// when there is no such line.
pub fn redrive_location(out: &str, id: &str) -> String {
    let sent = format!("{id}\tsent\t");
    out.lines()
        .find(|l| l.starts_with(&sent))
        .and_then(|l| l.rsplit('\t').next())
        .unwrap_or_else(|| panic!("no `{id}` sent in:\n{out}"))
        .to_string()
}

/// The answer of a redriven letter, fetched from `url` (the ingress's
/// address of the location `dlq redrive` printed) once it is there (200),
/// within 15 s.
pub async fn redriven_answer(http: &Http, url: &str) -> Answer {
    let (answer, _) = eventually(Duration::from_secs(15), "the redriven answer", || async {
        match http.get(url).await {
            Ok(a) if a.status == 200 => Ok(a),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    answer
}
