//! `kubectl sluice`: what an on-call engineer asks of a pipeline, through
//! the Kubernetes API only (no Secret, no Redis password: RBAC on
//! StreamPipelines and DeadLetterActions is the authorisation).
//!
//! ```text
//! kubectl sluice status P   ─▶ GET streampipelines/P ─▶ conditions, groups, URL, queues
//! kubectl sluice pause P    ─▶ PATCH spec.paused=true  ─▶ wait for Paused=True  (reason Paused)
//! kubectl sluice resume P   ─▶ PATCH spec.paused=null  ─▶ wait for Paused=False (reason Running)
//! kubectl sluice dlq …  P   ─▶ CREATE deadletteractions ─▶ wait for the operator's status ([`dead_letters`])
//! ```
//!
//! The pipeline is read as plain JSON, so a stored object the types cannot
//! read still shows its status. A pause the spec cannot carry (no managed
//! Redis) is refused here with the operator's own rule, before anything is
//! written.
//!
//! This module must not read Secrets or reach Redis, and writes nothing
//! but `spec.paused` and DeadLetterActions.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Resource};
use serde_json::{json, Value};
use sluice_crds::{StreamPipeline, StreamPipelineSpec};

use crate::pause::{self, reason};

pub mod dead_letters;

/// Longest wait for one answer of the API server.
const API_TIMEOUT: Duration = Duration::from_secs(15);

/// Field manager of the plugin's writes.
pub const FIELD_MANAGER: &str = "kubectl-sluice";

/// `kubectl sluice`: inspect and operate sluice StreamPipelines.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-sluice",
    version,
    about = "Inspect and operate sluice StreamPipelines (installed as a kubectl plugin: `kubectl sluice …`)",
    after_help = "Needs get and patch on streampipelines.sluice.dev in the namespace (dlq: get on\n\
                  streampipelines, create and get on deadletteractions.sluice.dev); never Secrets.\n\
                  Exit status: 0 done, 1 failed or timed out (the message says why), 2 bad usage."
)]
pub struct Cli {
    /// Namespace of the pipeline [default: the kubeconfig context's, else `default`].
    #[arg(short, long, global = true, value_parser = parse_namespace)]
    pub namespace: Option<String>,
    /// Kubeconfig file [default: the files in $KUBECONFIG, else ~/.kube/config, else in-cluster].
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context [default: the current one].
    #[arg(long, global = true)]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Conditions, groups (desired and ready replicas, last scaling), URL, and (Redis backends)
    /// each worker queue's waiting and in-progress entries, arrival rate and the dead letters.
    Status {
        /// The StreamPipeline's name.
        #[arg(value_parser = parse_name)]
        pipeline: String,
    },
    /// Stops the pipeline taking requests and its workers reading (spec.paused=true); no pod restarts.
    Pause {
        #[arg(value_parser = parse_name)]
        pipeline: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Lets a paused pipeline run again (removes spec.paused).
    Resume {
        #[arg(value_parser = parse_name)]
        pipeline: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// A pipeline's dead letters (Redis backends): list, redrive, purge, carried
    /// out by the operator, which holds the key ring.
    Dlq {
        #[command(subcommand)]
        command: dead_letters::DlqCommand,
    },
}

#[derive(Debug, clap::Args)]
pub struct Wait {
    /// Return once the change is written, without waiting for the Paused condition.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the Paused condition (e.g. 30s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// A pipeline name as the API server and the operator take it: anything
/// else (a `/` would address another path, such as `P/status`) is refused.
fn parse_name(s: &str) -> Result<String, String> {
    use sluice_crds::{limits::MAX_PIPELINE_NAME, names::is_dns1035_label};
    if is_dns1035_label(s, MAX_PIPELINE_NAME) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "not a pipeline name (lowercase letters, digits and '-', starting with a letter, at most {MAX_PIPELINE_NAME} characters)"
        ))
    }
}

fn parse_namespace(s: &str) -> Result<String, String> {
    use sluice_crds::{limits::MAX_NAMESPACE, names::is_dns_label};
    if is_dns_label(s, MAX_NAMESPACE) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "not a namespace (lowercase letters, digits and '-', at most {MAX_NAMESPACE} characters)"
        ))
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = sluice_crds::units::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() || d > Duration::from_secs(3600) {
        return Err("between 1ms and 1h".into());
    }
    Ok(d)
}

/// Runs one command; what it prints goes to `out` as it happens (a write
/// that fails, a closed pipe, is not an error of the command).
///
/// # Errors
/// The API server unreachable or refusing, the pipeline absent, a pause the
/// spec cannot carry, or the Paused condition not reached in time.
pub async fn run(cli: Cli, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let (client, default_ns) = connect(&cli).await?;
    let ns = cli.namespace.clone().unwrap_or(default_ns);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource());
    match cli.command {
        Command::Status { pipeline } => {
            let p = get(&api, &ns, &pipeline).await?;
            let mut text = String::new();
            status(&p, &mut text);
            let _ = out.write_all(text.as_bytes());
        }
        Command::Pause { pipeline, wait } => {
            set_paused(&api, &ns, &pipeline, true, &wait, out).await?
        }
        Command::Resume { pipeline, wait } => {
            set_paused(&api, &ns, &pipeline, false, &wait, out).await?
        }
        Command::Dlq { command } => dead_letters::run(client, &ns, command, out).await?,
    }
    Ok(())
}

fn resource() -> ApiResource {
    ApiResource::erase::<StreamPipeline>(&())
}

async fn connect(cli: &Cli) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options).await?
        }
        None if cli.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    };
    let ns = config.default_namespace.clone();
    let mut config = config;
    // A stalled API server fails the call rather than hanging the command.
    config.connect_timeout = Some(API_TIMEOUT);
    config.read_timeout = Some(API_TIMEOUT);
    config.write_timeout = Some(API_TIMEOUT);
    Ok((Client::try_from(config)?, ns))
}

async fn get(api: &Api<DynamicObject>, ns: &str, name: &str) -> anyhow::Result<Value> {
    match api.get_opt(name).await? {
        Some(o) => Ok(serde_json::to_value(o)?),
        None => anyhow::bail!("StreamPipeline {ns}/{name} not found"),
    }
}

/// A condition's `(status, reason, message)`.
fn condition<'a>(p: &'a Value, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let c = p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str().unwrap_or("?"),
        c["reason"].as_str().unwrap_or(""),
        c["message"].as_str().unwrap_or(""),
    ))
}

/// The status of `p` as text.
fn status(p: &Value, out: &mut String) {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let meta = &p["metadata"];
    let _ = writeln!(
        out,
        "StreamPipeline {}/{}  generation {} (observed {})",
        clean(&text(&meta["namespace"])),
        clean(&text(&meta["name"])),
        text(&meta["generation"]),
        text(&p["status"]["observedGeneration"]),
    );
    let _ = writeln!(out, "URL: {}", clean(&text(&p["status"]["ingressUrl"])));
    let mut rows = vec![["CONDITION", "STATUS", "REASON", "MESSAGE"].map(String::from)];
    for c in p["status"]["conditions"].as_array().into_iter().flatten() {
        rows.push([&c["type"], &c["status"], &c["reason"], &c["message"]].map(text));
    }
    table(&rows, out);
    let mut rows = vec![["GROUP", "DESIRED", "READY", "LAST SCALE"].map(String::from)];
    for g in p["status"]["groups"].as_array().into_iter().flatten() {
        let last = &g["lastScale"];
        let scale = if last.is_object() {
            format!(
                "{} → {} at {}: {}",
                text(&last["from"]),
                text(&last["to"]),
                text(&last["time"]),
                text(&last["reason"])
            )
        } else {
            "-".into()
        };
        rows.push([
            text(&g["name"]),
            text(&g["desiredReplicas"]),
            text(&g["readyReplicas"]),
            scale,
        ]);
    }
    out.push('\n');
    table(&rows, out);
    let q = &p["status"]["queues"];
    if q.is_object() {
        let _ = writeln!(
            out,
            "\nQueues, read at {}{}",
            clean(&text(&q["readAt"])),
            match q["error"].as_str() {
                Some(e) => format!(
                    " (this reading failed: {}; the numbers are older)",
                    clean(e)
                ),
                None => String::new(),
            }
        );
        let mut rows = vec![["GROUP", "WAITING", "IN PROGRESS", "PER SECOND"].map(String::from)];
        for g in q["groups"].as_array().into_iter().flatten() {
            rows.push([
                text(&g["name"]),
                text(&g["waiting"]),
                text(&g["inProgress"]),
                text(&g["perSecond"]),
            ]);
        }
        table(&rows, out);
        let _ = writeln!(out, "Dead letters: {}", clean(&text(&q["deadLetters"])));
    }
}

/// `s` with what a stored object may carry to fool a terminal (control
/// characters, bidirectional overrides) shown escaped.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Left-aligned columns, two spaces apart, every cell [`clean`].
fn table(rows: &[[String; 4]], out: &mut String) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

async fn set_paused(
    api: &Api<DynamicObject>,
    ns: &str,
    name: &str,
    paused: bool,
    wait: &Wait,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let p = get(api, ns, name).await?;
    let verb = if paused { "pause" } else { "resume" };
    if p["spec"]["suspend"] == json!(true) {
        anyhow::bail!(
            "cannot {verb} {ns}/{name}: it is suspended (spec.suspend: true), so the operator writes nothing; unsuspend it first"
        );
    }
    if paused {
        // The operator's own rule, so a pause it would refuse is not written.
        if let Ok(mut spec) = serde_json::from_value::<StreamPipelineSpec>(p["spec"].clone()) {
            spec.paused = Some(true);
            let refused: Vec<String> = sluice_crds::validate(&spec)
                .into_iter()
                .filter(|e| e.path == "spec.paused")
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect();
            if !refused.is_empty() {
                anyhow::bail!("cannot pause {ns}/{name}: {}", refused.join("; "));
            }
        }
    }
    let patch = json!({"spec": {"paused": if paused { json!(true) } else { Value::Null }}});
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let written = api.patch(name, &pp, &Patch::Merge(&patch)).await?;
    let generation = written.meta().generation.unwrap_or(0);
    let _ = writeln!(out, "{ns}/{name}: {verb} written (generation {generation})");
    let _ = out.flush();
    if wait.no_wait {
        return Ok(());
    }
    let (want_status, want_reason) = if paused {
        ("True", reason::PAUSED)
    } else {
        ("False", reason::RUNNING)
    };
    let deadline = tokio::time::Instant::now() + wait.timeout;
    // Where it stands, for the message when time runs out.
    let mut last = "no answer yet".to_string();
    loop {
        let read = tokio::time::timeout_at(deadline, get(api, ns, name)).await;
        match read {
            Err(_) => {}
            // A failed read is tried again until the deadline.
            Ok(Err(e)) => last = format!("last read failed: {e}"),
            Ok(Ok(p)) => {
                let observed = p["status"]["observedGeneration"].as_i64().unwrap_or(0);
                let c = condition(&p, pause::CONDITION);
                if observed >= generation {
                    if c.is_some_and(|(s, r, _)| s == want_status && r == want_reason) {
                        let done = if paused { "paused" } else { "running" };
                        let _ = writeln!(out, "{ns}/{name}: {done}");
                        return Ok(());
                    }
                    if let Some(("True", r, m)) = condition(&p, crate::status::DEGRADED) {
                        if REFUSALS.contains(&r) {
                            anyhow::bail!(
                                "the operator refused generation {generation} ({r}): {}; spec.paused stays as written",
                                clean(m)
                            );
                        }
                    }
                }
                last = match c {
                    Some((s, r, m)) => format!(
                        "Paused={s} {r}: {}{}",
                        clean(m),
                        if observed >= generation {
                            ""
                        } else {
                            " (of an earlier generation)"
                        }
                    ),
                    None => "no Paused condition yet".into(),
                };
            }
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{ns}/{name}: not {verb}d within {:?} ({last}); the change is written and the operator goes on",
                wait.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `Degraded` reasons that mean the operator does not apply a generation.
const REFUSALS: [&str; 2] = [
    crate::status::reason::INVALID_SPEC,
    crate::status::reason::SECRET_REFERENCE_REFUSED,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        json!({
            "metadata": {"namespace": "prod", "name": "orders", "generation": 4},
            "status": {
                "observedGeneration": 4,
                "ingressUrl": "http://orders.prod.svc",
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "AllReplicasReady", "message": "4 workload(s) ready"},
                    {"type": "Paused", "status": "False", "reason": "Running", "message": "the pipeline is not paused\u{1b}[2J"}
                ],
                "groups": [
                    {"name": "web", "desiredReplicas": 1, "readyReplicas": 1},
                    {"name": "cpu", "desiredReplicas": 2, "readyReplicas": 2,
                     "lastScale": {"time": "2026-12-03T10:00:00Z", "from": 1, "to": 2, "reason": "backlog 120 over 50 per replica"}}
                ]
            }
        })
    }

    #[test]
    fn the_status_names_every_condition_and_group_and_escapes_control_characters() {
        let mut out = String::new();
        status(&sample(), &mut out);
        assert!(
            out.starts_with("StreamPipeline prod/orders  generation 4 (observed 4)\n"),
            "{out}"
        );
        assert!(out.contains("URL: http://orders.prod.svc"), "{out}");
        assert!(out.contains("Paused     False   Running"), "{out}");
        assert!(
            out.contains("cpu    2        2      1 → 2 at 2026-12-03T10:00:00Z: backlog 120"),
            "{out}"
        );
        assert!(
            !out.contains('\u{1b}'),
            "a control character reached the terminal: {out:?}"
        );
        assert!(out.contains("\\u{1b}[2J"), "{out}");
    }

    #[test]
    fn the_queues_show_with_their_reading_time() {
        let mut p = sample();
        p["status"]["queues"] = json!({
            "readAt": "2026-12-04T10:00:00Z",
            "deadLetters": 4,
            "groups": [{"name": "cpu", "waiting": 12, "inProgress": 3, "perSecond": "10.0"}]
        });
        let mut out = String::new();
        status(&p, &mut out);
        assert!(
            out.contains("Queues, read at 2026-12-04T10:00:00Z\n"),
            "{out}"
        );
        assert!(out.contains("cpu    12       3            10.0"), "{out}");
        assert!(out.contains("Dead letters: 4"), "{out}");
        p["status"]["queues"]["error"] = json!("NOPERM\u{1b}[2J");
        let mut out = String::new();
        status(&p, &mut out);
        assert!(
            out.contains("this reading failed: NOPERM\\u{1b}[2J"),
            "{out}"
        );
        // Without queues (memory and tcp backends) nothing is said of them.
        let mut out = String::new();
        status(&sample(), &mut out);
        assert!(!out.contains("Queues"), "{out}");
    }

    #[test]
    fn what_could_fool_a_terminal_is_escaped() {
        assert_eq!(clean("ok\u{1b}[2J"), "ok\\u{1b}[2J");
        assert_eq!(clean("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(clean("plain text, ünïcode"), "plain text, ünïcode");
    }

    #[test]
    fn a_status_without_status_still_prints() {
        let mut out = String::new();
        status(
            &json!({"metadata": {"namespace": "a", "name": "b"}}),
            &mut out,
        );
        assert!(out.contains("generation - (observed -)"), "{out}");
    }

    #[test]
    fn help_documents_every_command() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for c in [
            "status",
            "pause",
            "resume",
            "--namespace",
            "--kubeconfig",
            "--context",
        ] {
            assert!(help.contains(c), "{c} missing from --help:\n{help}");
        }
        let pause = Cli::command()
            .find_subcommand_mut("pause")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            pause.contains("--timeout") && pause.contains("--no-wait"),
            "{pause}"
        );
        assert!(Cli::try_parse_from(["kubectl-sluice", "pause", "p", "--timeout", "0s"]).is_err());
        assert!(Cli::try_parse_from(["kubectl-sluice", "pause"]).is_err());
        for bad in ["p/status", "P", "-x", "", "a..b"] {
            assert!(
                Cli::try_parse_from(["kubectl-sluice", "status", "--", bad]).is_err(),
                "{bad:?} taken as a name"
            );
        }
        assert!(Cli::try_parse_from(["kubectl-sluice", "-n", "a/b", "status", "p"]).is_err());
        assert!(
            Cli::try_parse_from(["kubectl-sluice", "-n", "prod", "status", "orders-1"]).is_ok()
        );
    }
}
