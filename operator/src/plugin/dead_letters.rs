//! `kubectl sluice dlq list|redrive|purge P`: a pipeline's dead letters,
//! asked of the operator through a `DeadLetterAction` (it holds the key
//! ring; the person asking needs no Secret and no Redis password).
//!
//! ```text
//! GET streampipelines/P ─▶ CREATE deadletteractions (generateName P-dlq-, owned by P)
//!   ─▶ GET it until status.phase Succeeded|Failed ─▶ print status.output (stdout); Failed: message as the error
//! ```
//!
//! What the status holds is printed cell by cell through [`clean`]: it
//! lists what a compromised process may have written, and whoever may
//! write the status could write anything.
//!
//! This module must not read Secrets or reach Redis.

use std::time::Duration;

use clap::{Args, Subcommand};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{json, Value};
use sluice_crds::dead_letter_action::{
    DeadLetterAction, DeadLetterActionSpec, DeadLetterVerb, DEFAULT_LIST, MAX_LIST,
};
use sluice_crds::StreamPipeline;

use sluice_web_ingress::dlq_command::{Pick, RedriveOptions};

use super::{clean, get, parse_name, parse_timeout, FIELD_MANAGER};

/// What to do with the dead letters.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Lists dead letters, oldest first: id, age, group, node, request id,
    /// size, deliveries and reason (payloads only with --payloads)
    List {
        /// The StreamPipeline's name
        #[arg(value_parser = parse_name)]
        pipeline: String,
        /// At most this many
        #[arg(long, value_name = "N", default_value_t = DEFAULT_LIST,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LIST)))]
        limit: u32,
        /// Each one's payload (JSON) under it
        #[arg(long)]
        payloads: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Sends dead letters again (after a fix), each to the group that runs
    /// its node; prints where each answer is fetched
    Redrive {
        /// The StreamPipeline's name
        #[arg(value_parser = parse_name)]
        pipeline: String,
        #[command(flatten)]
        pick: Pick,
        #[command(flatten)]
        how: RedriveOptions,
        #[command(flatten)]
        wait: Wait,
    },
    /// Deletes dead letters
    Purge {
        /// The StreamPipeline's name
        #[arg(value_parser = parse_name)]
        pipeline: String,
        #[command(flatten)]
        pick: Pick,
        /// Say what would be deleted; delete nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: Wait,
    },
}

#[derive(Debug, Args)]
pub struct Wait {
    /// How long to wait for the operator to carry it out (e.g. 30s, 5m)
    #[arg(long, default_value = "2m", value_parser = parse_timeout)]
    timeout: Duration,
}

impl DlqCommand {
    fn into_spec(self) -> (DeadLetterActionSpec, Duration) {
        let spec = |pipeline: String, action| DeadLetterActionSpec::new(&pipeline, action);
        match self {
            Self::List {
                pipeline,
                limit,
                payloads,
                wait,
            } => (
                DeadLetterActionSpec {
                    limit: Some(limit),
                    payloads,
                    ..spec(pipeline, DeadLetterVerb::List)
                },
                wait.timeout,
            ),
            Self::Redrive {
                pipeline,
                pick,
                how,
                wait,
            } => (
                DeadLetterActionSpec {
                    ids: pick.ids,
                    all: pick.all,
                    interface: how.interface,
                    caller: how.caller,
                    follow_moved: how.follow_moved,
                    dry_run: how.dry_run,
                    ..spec(pipeline, DeadLetterVerb::Redrive)
                },
                wait.timeout,
            ),
            Self::Purge {
                pipeline,
                pick,
                dry_run,
                wait,
            } => (
                DeadLetterActionSpec {
                    ids: pick.ids,
                    all: pick.all,
                    dry_run,
                    ..spec(pipeline, DeadLetterVerb::Purge)
                },
                wait.timeout,
            ),
        }
    }
}

/// Asks the operator to carry out `command` and prints what it did.
///
/// # Errors
/// A spec the operator would refuse (said before anything is written), the
/// pipeline absent, the API server refusing, the action failed (its
/// message), or not carried out in time.
pub async fn run(
    client: kube::Client,
    ns: &str,
    command: DlqCommand,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let (spec, timeout) = command.into_spec();
    spec.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    let pipelines: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<StreamPipeline>(&()),
    );
    let p = get(&pipelines, ns, &spec.pipeline).await?;
    let actions: Api<DynamicObject> =
        Api::namespaced_with(client, ns, &ApiResource::erase::<DeadLetterAction>(&()));
    // Owned by the pipeline (deleted with it); without blockOwnerDeletion,
    // which would need more than create on actions.
    let object = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "DeadLetterAction",
        "metadata": {
            "generateName": format!("{}-dlq-", spec.pipeline),
            "ownerReferences": [{
                "apiVersion": "sluice.dev/v1alpha1",
                "kind": "StreamPipeline",
                "name": spec.pipeline,
                "uid": p["metadata"]["uid"],
            }],
        },
        "spec": spec,
    });
    let object: DynamicObject = serde_json::from_value(object)?;
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let created = actions.create(&pp, &object).await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    eprintln!("deadletteraction {ns}/{name} created");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = "not taken by the operator yet".to_string();
    loop {
        match tokio::time::timeout_at(deadline, actions.get_opt(&name)).await {
            Err(_) => {}
            Ok(Err(e)) => last = format!("last read failed: {e}"),
            Ok(Ok(None)) => anyhow::bail!("deadletteraction {ns}/{name} was deleted"),
            Ok(Ok(Some(o))) => {
                let status = &o.data["status"];
                match status["phase"].as_str() {
                    Some("Succeeded") => {
                        let _ = out.write_all(printed(&status["output"]).as_bytes());
                        return Ok(());
                    }
                    Some("Failed") => {
                        let _ = out.write_all(printed(&status["output"]).as_bytes());
                        anyhow::bail!("{}", clean(status["message"].as_str().unwrap_or("failed")));
                    }
                    Some("Running") => last = "running".into(),
                    _ => {}
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "deadletteraction {ns}/{name}: not done within {timeout:?} ({last}); the operator may still carry it out (kubectl get deadletteraction {name} -o yaml)"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The output as printed: each tab-separated cell [`clean`].
fn printed(output: &Value) -> String {
    let Some(text) = output.as_str() else {
        return String::new();
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let cells: Vec<String> = line.split('\t').map(clean).collect();
        out.push_str(&cells.join("\t"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_output_cannot_drive_the_terminal() {
        let v = json!("1-0\tsent\t/v1/o/requests/a\n2-0\tleft\t\u{1b}]0;owned\u{7}\n");
        let p = printed(&v);
        assert!(!p.contains('\u{1b}') && !p.contains('\u{7}'), "{p:?}");
        assert!(p.starts_with("1-0\tsent\t/v1/o/requests/a\n"), "{p:?}");
        assert_eq!(printed(&json!(null)), "");
    }
}
