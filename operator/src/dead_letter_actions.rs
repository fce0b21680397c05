//! Carries out `DeadLetterAction`s (docs/operator.md "Dead letters"): a
//! person lists, redrives or purges a pipeline's dead letters through the
//! Kubernetes API, and the operator — which holds the key ring — does it.
//!
//! ```text
//! watch DeadLetterActions (leader only; each object parsed alone)
//!   no phase ─▶ spec checked ─▶ status Running ─▶ StreamPipeline P (same namespace), compiled
//!            ─▶ key ring Secret (by name) ─▶ P's Redis as `admin` (managed) or the pipeline's URL (external)
//!            ─▶ dead_letters (list | redrive | purge), bounded in time
//!            ─▶ status Succeeded|Failed + output (≤ 256 KiB) ─▶ Event on the action and on P
//!   Running, not taken by this process ─▶ Failed: interrupted (never done twice)
//! every minute: finished actions older than an hour are deleted
//! ```
//!
//! Each action is carried out at most once: it is marked Running before
//! anything is done, and one found Running that this process did not take
//! (its operator stopped midway) is failed, not redone — a redrive sent
//! twice would run twice. Actions run one at a time.
//!
//! What the action lists comes from the dead-letter stream, which any of
//! the pipeline's processes may write: it is verified before it is decoded
//! and made printable before it is shown (`sluice_web_ingress::dead_letters`).
//! No key material or password reaches a status, an event or a log.
//!
//! This module must not write anything but actions' status, actions'
//! deletion and events; the key ring it reads is never stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use futures::stream::{self, StreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use sluice_crds::dead_letter_action::{
    is_entry_id, DeadLetterAction, DeadLetterActionSpec, DeadLetterPhase, DeadLetterVerb,
    DEFAULT_LIST, MAX_OUTPUT,
};
use sluice_crds::{compile, BackendKind, PipelineId, StreamPipeline};
use sluice_platform::{KeyRing, SharedKeyRing};
use sluice_web_ingress::dead_letters::DeadLetters;
use sluice_web_ingress::dlq_command::{act, Act, ActError, Pick};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::events::{EventType, Events};
use crate::object::PipelineObject;
use crate::redis_target::Connection;
use crate::render::key_ring_secret;
use crate::render::redis_acl::Role;
use crate::secrets::text_data;

/// Field manager of the status writes.
pub const FIELD_MANAGER: &str = "sluice-operator-dead-letters";
/// Longest an action may take, connecting included.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(300);
/// Timeout of each Redis command and connection attempt.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a finished action is kept (its status readable) before it is
/// deleted; its events outlive it by the cluster's event TTL.
pub const KEEP_FINISHED: Duration = Duration::from_secs(3600);
/// How often finished actions are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How long this process remembers it took an action (to tell its own
/// Running actions from interrupted ones): longer than any action lasts.
const REMEMBER: Duration = Duration::from_secs(2 * 3600);
/// An action not taken within this long of its creation is refused: it
/// may no longer say what its author wants (a `purge --all` of letters
/// written since).
pub const STALE: Duration = Duration::from_secs(600);
/// Tries of the final status write.
const STATUS_TRIES: u32 = 3;

/// The operator's dead-letter actions, run by the leader.
pub struct DeadLetterActions {
    pub client: Client,
    /// Watched namespaces (empty: all).
    pub namespaces: Vec<String>,
    pub events: Arc<Events>,
}

fn resource() -> ApiResource {
    ApiResource::erase::<DeadLetterAction>(&())
}

impl DeadLetterActions {
    fn apis(&self) -> Vec<Api<DynamicObject>> {
        if self.namespaces.is_empty() {
            vec![Api::all_with(self.client.clone(), &resource())]
        } else {
            self.namespaces
                .iter()
                .map(|ns| Api::namespaced_with(self.client.clone(), ns, &resource()))
                .collect()
        }
    }

    /// Watches actions and carries out new ones until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let apis = self.apis();
        // Objects, not typed actions: one object the types cannot read
        // must not stop the watch of all the others.
        let mut watch = stream::select_all(apis.iter().map(|api| {
            watcher(api.clone(), watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed()
        }));
        let mut seen = Seen::default();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = sweep.tick() => self.sweep(&mut seen).await,
                got = watch.next() => match got {
                    Some(Ok(o)) => self.on(o, &mut seen).await,
                    Some(Err(e)) => warn!(error = %e, "watching DeadLetterActions"),
                    None => return,
                },
            }
        }
    }

    /// One action as the watch saw it.
    async fn on(&self, o: DynamicObject, seen: &mut Seen) {
        let (Some(uid), Some(ns)) = (o.metadata.uid.clone(), o.metadata.namespace.clone()) else {
            return;
        };
        let name = o.name_any();
        if let Some(ended) = ended_at(&o.data) {
            seen.finished.insert((ns, name), ended);
            return;
        }
        if seen.taken.contains_key(&uid) {
            return;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, &resource());
        let regarding = reference(&o);
        seen.taken.insert(uid.clone(), Instant::now());
        match phase(&o.data) {
            Ok(None) => {}
            Ok(Some(DeadLetterPhase::Running)) => {
                let why = "interrupted: the operator stopped while it ran, and what it did before is not known (list the dead letters again)";
                self.finish(&api, &name, &regarding, None, Err(why.into()))
                    .await;
                return;
            }
            // Finished without a completion time: nothing to do.
            Ok(Some(_)) => return,
            Err(e) => {
                self.finish(&api, &name, &regarding, None, Err(e)).await;
                return;
            }
        }
        let spec = match serde_json::from_value::<DeadLetterActionSpec>(
            o.data.get("spec").cloned().unwrap_or(Value::Null),
        ) {
            Ok(s) => s,
            Err(e) => {
                let why = format!("spec does not parse: {e}");
                self.finish(&api, &name, &regarding, None, Err(why)).await;
                return;
            }
        };
        if let Err(e) = spec.check() {
            self.finish(&api, &name, &regarding, Some(&spec), Err(e))
                .await;
            return;
        }
        let age = o
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| (Utc::now() - crate::clock::datetime_of(t)).to_std().ok())
            .unwrap_or_default();
        if age > STALE {
            let why = format!(
                "not taken within {} minutes of its creation (the operator was away or busy): create it again if it still says what you want",
                STALE.as_secs() / 60
            );
            self.finish(&api, &name, &regarding, Some(&spec), Err(why))
                .await;
            return;
        }
        // Taken only if nobody changed it since it was read: two operators
        // that both saw it new cannot both carry it out.
        let running = json!({
            "metadata": {"resourceVersion": o.metadata.resource_version},
            "status": {"phase": "Running", "startTime": now()},
        });
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&running))
            .await
        {
            // Nothing was done: taken by another (its next event shows
            // it Running or finished), gone, or the API server failed (the
            // watch's next event of it, or a relist, brings it again).
            warn!(action = %format!("{ns}/{name}"), error = %e, "cannot mark a DeadLetterAction Running; not acted on");
            seen.taken.remove(&uid);
            return;
        }
        info!(action = %format!("{ns}/{name}"), pipeline = %spec.pipeline, verb = ?spec.action, "carrying out a DeadLetterAction");
        let deadline = tokio::time::Instant::now() + ACTION_TIMEOUT;
        // The action stops itself between reads at the deadline, saying
        // how far it got; this bounds a call that hangs.
        let outcome = match tokio::time::timeout(
            ACTION_TIMEOUT + REDIS_TIMEOUT * 4,
            self.carry_out(&ns, &spec, deadline),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(format!(
                "stopped after {}s; what it did before is not known (list the dead letters again)",
                ACTION_TIMEOUT.as_secs()
            )),
        };
        self.finish(&api, &name, &regarding, Some(&spec), outcome)
            .await;
    }

    /// Does what `spec` asks: the output, or why it stopped (with what was
    /// done before, when something was).
    async fn carry_out(
        &self,
        ns: &str,
        spec: &DeadLetterActionSpec,
        deadline: tokio::time::Instant,
    ) -> Result<Done, String> {
        let letters = self.open(ns, &spec.pipeline).await?;
        let verb = match spec.action {
            DeadLetterVerb::List => Act::List {
                limit: spec.limit.unwrap_or(DEFAULT_LIST) as usize,
                payloads: spec.payloads,
            },
            DeadLetterVerb::Redrive => Act::Redrive {
                pick: pick(spec),
                interface: spec.interface.clone(),
                caller: spec.caller.clone(),
                follow_moved: spec.follow_moved,
                dry_run: spec.dry_run,
            },
            DeadLetterVerb::Purge => Act::Purge {
                pick: pick(spec),
                dry_run: spec.dry_run,
            },
        };
        match act(&letters, verb, Some(deadline)).await {
            Ok(output) => Ok(Done {
                message: summary(spec.action, &output),
                output,
            }),
            Err(ActError::Refused(why)) => Err(why),
            Err(ActError::Stopped { done, error }) if done.is_empty() => Err(error),
            Err(ActError::Stopped { done, error }) => Err(format!("{error}\n{done}")),
        }
    }

    /// The dead letters of pipeline `ns/name`, on its Redis, with its key ring.
    async fn open(&self, ns: &str, name: &str) -> Result<DeadLetters, String> {
        // Read as the controller reads it: a spec the types cannot read is
        // refused with its path.
        let pipelines: Api<PipelineObject> = Api::namespaced(self.client.clone(), ns);
        let o = pipelines
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read StreamPipeline {name}: {e}"))?
            .ok_or_else(|| format!("StreamPipeline {name} does not exist in namespace {ns}"))?;
        let sp = StreamPipeline {
            spec: o
                .spec
                .map_err(|e| format!("StreamPipeline {name}: spec does not parse: {e}"))?,
            metadata: o.metadata,
            status: o.status,
        };
        let spec = &sp.spec;
        let id = PipelineId {
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        let plan = compile(id, spec).map_err(|errors| {
            let first = errors.first().map(ToString::to_string).unwrap_or_default();
            format!("StreamPipeline {name} is not valid ({first}): fix it first")
        })?;
        match plan.backend {
            BackendKind::Redis => {}
            kind @ (BackendKind::Memory | BackendKind::Tcp) => {
                return Err(format!(
                    "StreamPipeline {name} runs on {kind} backends: its dead letters live in each of its ingress pods' process, \
                     which the operator does not reach; run it on redis backends for dead letters to act on \
                     (docs/operator.md \"Dead letters\")"
                ))
            }
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let ring_secret = key_ring_secret(spec, name);
        let s = secrets
            .get_opt(&ring_secret)
            .await
            .map_err(|e| format!("cannot read Secret {ring_secret}: {e}"))?
            .ok_or_else(|| format!("Secret {ring_secret} (the key ring) does not exist"))?;
        let ring = KeyRing::from_files(&text_data(&s))
            .map_err(|e| format!("the key ring in Secret {ring_secret}: {e}"))?;
        let redis = Connection::refresh(&self.client, &sp, Role::Admin, None, REDIS_TIMEOUT, true)
            .await?
            .backend;
        Ok(DeadLetters::on_redis(
            plan,
            SharedKeyRing::fixed(ring),
            redis,
        ))
    }

    /// Writes how the action ended, and tells it in events on the action
    /// and on its pipeline.
    async fn finish(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        regarding: &ObjectReference,
        spec: Option<&DeadLetterActionSpec>,
        outcome: Result<Done, String>,
    ) {
        let (phase, message, output) = match &outcome {
            Ok(d) => ("Succeeded", d.message.clone(), Some(bounded(&d.output))),
            Err(e) => {
                // A failure midway carries what was done after its first line.
                let (first, rest) = e.split_once('\n').unwrap_or((e, ""));
                let rest = (!rest.is_empty()).then(|| bounded(rest));
                ("Failed", first.to_string(), rest)
            }
        };
        let message = crate::events::truncate(&message, 4000).to_string();
        let status = json!({"status": {
            "phase": phase,
            "message": message,
            "output": output,
            "completionTime": now(),
        }});
        let at = format!("{}/{name}", regarding.namespace.as_deref().unwrap_or(""));
        // What was done must be told: a few tries before giving up (the
        // action then stays Running, and a restart fails it as interrupted).
        for attempt in 1..=STATUS_TRIES {
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    warn!(action = %at, attempt, error = %e, "cannot write a DeadLetterAction's status");
                    if attempt < STATUS_TRIES {
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    }
                }
            }
        }
        let (type_, reason) = match (&outcome, spec.map(|s| s.action)) {
            (Err(_), _) => (EventType::Warning, "DeadLetterActionFailed"),
            (Ok(_), Some(DeadLetterVerb::Redrive)) => (EventType::Normal, "DeadLettersRedriven"),
            (Ok(_), Some(DeadLetterVerb::Purge)) => (EventType::Normal, "DeadLettersPurged"),
            (Ok(_), _) => (EventType::Normal, "DeadLettersListed"),
        };
        let note = format!("{message} (DeadLetterAction {name})");
        let mut regards = vec![regarding.clone()];
        if let Some(s) = spec {
            regards.push(ObjectReference {
                api_version: Some(StreamPipeline::api_version(&()).into_owned()),
                kind: Some(StreamPipeline::kind(&()).into_owned()),
                namespace: regarding.namespace.clone(),
                name: Some(s.pipeline.clone()),
                ..Default::default()
            });
        }
        for r in regards {
            if let Err(e) = self
                .events
                .publish(&r, type_, reason, "DeadLetters", &note)
                .await
            {
                warn!(action = %at, error = %e, "cannot publish event");
            }
        }
        info!(action = %at, phase, %message, "DeadLetterAction finished");
    }

    /// Deletes the finished actions the watch showed that ended more than
    /// [`KEEP_FINISHED`] ago (nothing is listed: the watch knows them).
    async fn sweep(&self, seen: &mut Seen) {
        seen.taken.retain(|_, at| at.elapsed() < REMEMBER);
        let now = Utc::now();
        let old: Vec<(String, String)> = seen
            .finished
            .iter()
            .filter(|(_, ended)| expired(**ended, now))
            .map(|(k, _)| k.clone())
            .collect();
        for (ns, name) in old {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &ns, &resource());
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    seen.finished.remove(&(ns, name));
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    seen.finished.remove(&(ns, name));
                }
                Err(e) => {
                    warn!(action = %format!("{ns}/{name}"), error = %e, "cannot delete a finished DeadLetterAction");
                }
            }
        }
    }
}

/// What this process knows of the actions it watched.
#[derive(Default)]
struct Seen {
    /// Actions it took (by uid), to tell its own Running actions from
    /// interrupted ones.
    taken: HashMap<String, Instant>,
    /// Finished actions by namespace and name, with when they ended.
    finished: HashMap<(String, String), DateTime<Utc>>,
}

/// When a finished action ended (its phase finished and its completion
/// time readable).
fn ended_at(data: &Value) -> Option<DateTime<Utc>> {
    if !matches!(phase(data), Ok(Some(p)) if p.finished()) {
        return None;
    }
    let t = data["status"]["completionTime"].as_str()?;
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Whether an action that ended at `ended` is due for deletion at `now`.
fn expired(ended: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    (now - ended).to_std().is_ok_and(|age| age > KEEP_FINISHED)
}

/// What a finished action did.
struct Done {
    /// One line.
    message: String,
    /// Its lines.
    output: String,
}

fn pick(spec: &DeadLetterActionSpec) -> Pick {
    Pick {
        ids: spec.ids.clone(),
        all: spec.all,
    }
}

/// The phase an object's status holds; an unknown one is an error.
fn phase(data: &Value) -> Result<Option<DeadLetterPhase>, String> {
    match data.get("status").and_then(|s| s.get("phase")) {
        None | Some(Value::Null) => Ok(None),
        Some(p) => serde_json::from_value(p.clone())
            .map(Some)
            .map_err(|_| "status.phase: not Running, Succeeded or Failed".into()),
    }
}

fn reference(o: &DynamicObject) -> ObjectReference {
    ObjectReference {
        api_version: Some(DeadLetterAction::api_version(&()).into_owned()),
        kind: Some(DeadLetterAction::kind(&()).into_owned()),
        namespace: o.metadata.namespace.clone(),
        name: o.metadata.name.clone(),
        uid: o.metadata.uid.clone(),
        ..Default::default()
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `output` cut at a line boundary to fit [`MAX_OUTPUT`], with a last line
/// saying how much was left out.
fn bounded(output: &str) -> String {
    const ROOM: usize = 200;
    if output.len() <= MAX_OUTPUT {
        return output.to_string();
    }
    let mut end = MAX_OUTPUT - ROOM;
    while !output.is_char_boundary(end) {
        end -= 1;
    }
    let end = output[..end].rfind('\n').map_or(0, |i| i + 1);
    let left = output[end..].lines().count();
    format!(
        "{}… {left} more line(s) not shown: the status holds {} KiB (list with a smaller limit)\n",
        &output[..end],
        MAX_OUTPUT / 1024
    )
}

/// One line saying what the output holds.
fn summary(verb: DeadLetterVerb, output: &str) -> String {
    let column = |word: &str| {
        output
            .lines()
            .filter(|l| l.split('\t').nth(1) == Some(word))
            .count()
    };
    match verb {
        // A header, then one line per letter (payloads indented under).
        DeadLetterVerb::List => {
            let n = output
                .lines()
                .filter(|l| l.split('\t').next().is_some_and(is_entry_id))
                .count();
            format!("{n} dead letter(s) listed")
        }
        DeadLetterVerb::Redrive => format!(
            "{} sent, {} would be sent, {} left",
            column("sent"),
            column("would be sent"),
            column("left")
        ),
        DeadLetterVerb::Purge => output.lines().next().unwrap_or("").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_output_is_cut_at_a_line_and_says_so() {
        let line = "1767225600000-0\tsent\t/v1/orders/requests/abc\n";
        let output = line.repeat(MAX_OUTPUT / line.len() + 50);
        let b = bounded(&output);
        assert!(b.len() <= MAX_OUTPUT, "{}", b.len());
        let (kept, last) = b.trim_end().rsplit_once('\n').unwrap();
        assert!(kept.lines().all(|l| l == line.trim_end()));
        assert!(last.contains("more line(s) not shown"), "{last}");
        assert_eq!(bounded("short\n"), "short\n");
    }

    #[test]
    fn the_summary_counts_what_the_output_says() {
        let redrive =
            "1-0\tsent\t/v1/o/requests/a\n2-0\tleft\tmoved\n3-0\tsent\t/v1/o/requests/b\n";
        assert_eq!(
            summary(DeadLetterVerb::Redrive, redrive),
            "2 sent, 0 would be sent, 1 left"
        );
        let list = "ID\tAGE\n1-0\t3s\n  {\"a\":1}\n2-0\t1s\n";
        assert_eq!(
            summary(DeadLetterVerb::List, "ID\tAGE\n(no dead letters)\n"),
            "0 dead letter(s) listed"
        );
        assert_eq!(
            summary(DeadLetterVerb::List, list),
            "2 dead letter(s) listed"
        );
        assert_eq!(
            summary(DeadLetterVerb::Purge, "deleted 2 dead letter(s)\n"),
            "deleted 2 dead letter(s)"
        );
    }

    #[test]
    fn a_finished_action_is_deleted_an_hour_after_it_ended() {
        let ended = |phase: &str, at: &str| {
            ended_at(&json!({"status": {"phase": phase, "completionTime": at}}))
        };
        let t = ended("Succeeded", "2026-12-04T10:00:00Z").expect("ended");
        assert!(ended("Failed", "2026-12-04T10:00:00Z").is_some());
        assert!(ended("Running", "2026-12-04T10:00:00Z").is_none());
        assert!(ended("Succeeded", "yesterday").is_none());
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert!(!expired(t, at("2026-12-04T10:59:59Z")));
        assert!(expired(t, at("2026-12-04T11:00:01Z")));
        // A completion time in the future (a skewed clock) is not expired.
        assert!(!expired(t, at("2026-12-04T09:00:00Z")));
    }

    #[test]
    fn a_phase_the_operator_does_not_know_is_an_error_not_a_new_action() {
        assert_eq!(phase(&json!({})), Ok(None));
        assert_eq!(
            phase(&json!({"status": {"phase": "Succeeded"}})),
            Ok(Some(DeadLetterPhase::Succeeded))
        );
        assert!(phase(&json!({"status": {"phase": "Done"}})).is_err());
    }
}
