//! One reconcile of one StreamPipeline (DESIGN §4).
//!
//! ```text
//! read owned objects (watch caches, cache.rs; label selector, each owned kind; controller uid checked)
//!   │
//!   ├─ desired() refuses the spec ─▶ status InvalidSpec (+ Warning event once per generation);
//!   │                                nothing created, nothing changed, nothing deleted
//!   ▼
//! GET by name the Secrets the spec names (referenced.rs; never list/watch)
//!   ├─ a node's or sidecar's Secret absent or without sluice.dev/allow-reference=true
//!   │     ─▶ status SecretReferenceRefused (+ Warning event once per generation);
//!   │        nothing created, nothing changed, nothing deleted
//!   ▼
//! create-if-absent the generated Secrets (GET by name); rotate the key ring; derive
//! each group's keys; re-render P-redis when the groups change
//!   ▼
//! server-side apply each desired object that differs from its live copy (apply::up_to_date)
//!   ├─ managed Redis ready and its users changed ─▶ ACL SETUSER/DELUSER in the background (redis_users.rs)
//!   ▼
//! delete owned objects no longer desired; delete obsolete Secrets by name
//!   ▼
//! status from the live workloads ─▶ patch /status only when it changed ─▶ requeue
//! ```
//!
//! The reconciler is not told why it runs: every step checks its own
//! property, so the same function handles a new pipeline, an edit, drift,
//! a workload's rollout progress and the periodic requeue. When nothing
//! changed it issues no write request at all.
//!
//! # Layout
//! - here: the controller's [`Context`], the reconcile and its error policy.
//! - `objects`: listing the owned objects, applying, pruning.
//! - `claims`: managed Redis's volume claim templates and their expansion.
//! - `report`: readiness, the status and event of a spec not applied, the
//!   status write.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions, TypeMeta,
};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sluice_crds::{ExposeSpec, Plan, StreamPipeline, StreamPipelineSpec, StreamPipelineStatus};
use tracing::{debug, info, warn, Instrument};

pub use crate::apply::FIELD_MANAGER;
pub use crate::error::Error;

use crate::apply::{self, Stamped};
use crate::autoscale::{self, Facts};
use crate::cache::{api_resource, OwnedCache};
use crate::config::Timing;
use crate::error::api_error;
use crate::events::{EventType, Events};
use crate::labels;
use crate::metrics::Metrics;
use crate::names;
use crate::object::PipelineObject;
use crate::pause;
use crate::redis_users::{self, RedisUsers, Wanted};
use crate::referenced;
use crate::render::redis_use::managed_address;
use crate::render::{self, owned_kinds, Child, Desired, OwnedKind};
use crate::secrets::{self, SecretChange};
use crate::settings::OperatorSettings;
use crate::status::{self, Readiness, Validity};

/// How soon a pipeline waiting for an object's deletion looks again.
mod claims;
mod objects;
mod report;

use claims::{claim_change, claims_held, expand_claims, ClaimChange};
use objects::{apply_objects, prune_objects, Applied, Live, Target};
use report::{readiness, report_not_applied, write_status, Refused};

const PENDING_RECHECK: Duration = Duration::from_secs(1);
/// How soon a pipeline whose pause (or resume) Redis does not hold yet is
/// looked at again, so its `Paused` condition follows.
const PAUSE_RECHECK: Duration = Duration::from_secs(2);

/// Consecutive write conflicts (`409`) of a pipeline retried quietly before
/// one is reported as a `ReconcileFailed` event.
const QUIET_CONFLICTS: u32 = 2;

/// The text of a caught panic, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

// === context ===

/// What every reconcile shares: the client, the settings, the event sink and
/// the metrics, and the per-pipeline failure counts for the backoff.
pub struct Context {
    pub client: Client,
    pub settings: OperatorSettings,
    pub timing: Timing,
    pub events: Arc<Events>,
    pub metrics: Arc<Metrics>,
    /// What the builtin autoscaler found, for status.
    pub facts: Arc<Facts>,
    /// Consecutive failures per `ns/name`; reset by a successful reconcile.
    failures: Mutex<HashMap<String, Failures>>,
    /// Watch caches of owned objects; without them every reconcile lists.
    cache: Option<Arc<OwnedCache>>,
    /// The ACL users given to each managed Redis.
    redis_users: Arc<RedisUsers>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: OperatorSettings,
        timing: Timing,
        events: Arc<Events>,
        metrics: Arc<Metrics>,
        facts: Arc<Facts>,
    ) -> Self {
        Self {
            client,
            settings,
            timing,
            events,
            metrics,
            facts,
            failures: Mutex::new(HashMap::new()),
            cache: None,
            redis_users: Arc::default(),
        }
    }

    /// The ACL users (and pauses) given to each managed Redis, shared with
    /// the autoscaler.
    pub fn redis_users(&self) -> Arc<RedisUsers> {
        self.redis_users.clone()
    }

    /// Reads owned objects from `cache` instead of listing them.
    #[must_use]
    pub fn with_cache(mut self, cache: Arc<OwnedCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Publishes an event about `sp`. A failure is logged, never fatal: an
    /// event is a courtesy, and the status says the same.
    async fn event(
        &self,
        sp: &impl Resource<DynamicType = ()>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let published = self
            .events
            .publish(&sp.object_ref(&()), type_, reason, action, &note)
            .await;
        if let Err(e) = published {
            warn!(error = %e, reason, "cannot publish event");
        }
    }

    /// Counts a failure of `key`: how many write conflicts in a row it
    /// ends, and the backoff after the `n`th failure, `min · 2^(n-1)` capped.
    fn backoff(&self, key: &str, conflict: bool) -> (u32, Duration) {
        let mut failures = self.failures.lock();
        let f = failures.entry(key.to_string()).or_default();
        f.failures = f.failures.saturating_add(1);
        f.conflicts = if conflict {
            f.conflicts.saturating_add(1)
        } else {
            0
        };
        (f.conflicts, backoff_delay(&self.timing, f.failures))
    }
}

/// A pipeline's failures in a row, and how many of the last were conflicts.
#[derive(Debug, Default)]
struct Failures {
    failures: u32,
    conflicts: u32,
}

pub(crate) fn backoff_delay(timing: &Timing, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    timing
        .backoff_min
        .saturating_mul(factor)
        .min(timing.backoff_max)
}

fn key_of(sp: &impl Resource) -> String {
    format!(
        "{}/{}",
        sp.meta().namespace.as_deref().unwrap_or(""),
        sp.meta().name.as_deref().unwrap_or("")
    )
}

// === reconcile ===

/// Reconciles one StreamPipeline: bookkeeping (metrics, span, backoff
/// reset) around [`reconcile_pipeline`].
///
/// # Errors
/// See [`Error`]; the controller calls [`error_policy`] with it.
pub async fn reconcile(obj: Arc<PipelineObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = key_of(obj.as_ref());
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let span =
        tracing::info_span!("reconcile", pipeline = %key, generation = obj.metadata.generation);
    // A panic must not end the controller's task (it would stop every
    // pipeline): it fails this reconcile, which backs off and reports it.
    let work = async {
        match obj.pipeline() {
            Some(sp) => reconcile_pipeline(&sp, &ctx).await,
            None => reconcile_unreadable(&obj, &ctx).await,
        }
    };
    let result = match AssertUnwindSafe(work.instrument(span)).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => Err(Error::Panicked(panic_message(panic.as_ref()))),
    };
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures.lock().remove(&key);
    }
    result
}

/// Records a failed reconcile and schedules the retry with backoff.
pub fn error_policy(sp: Arc<PipelineObject>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(sp.as_ref());
    ctx.metrics.error(error.kind());
    let conflict = error.kind() == "api_conflict";
    let (conflicts, delay) = ctx.backoff(&key, conflict);
    if conflict && conflicts <= QUIET_CONFLICTS {
        // Another writer changed the object since it was read (optimistic
        // concurrency): the retry reads again. Not worth a Warning.
        info!(pipeline = %key, error = %error, retry_in = ?delay, "write conflict; retrying");
        return Action::requeue(delay);
    }
    warn!(pipeline = %key, error = %error, kind = error.kind(), retry_in = ?delay, "reconcile failed");
    let note = error.to_string();
    // error_policy is synchronous; the event is best effort.
    tokio::spawn(async move {
        ctx.event(
            sp.as_ref(),
            EventType::Warning,
            "ReconcileFailed",
            "Reconcile",
            note,
        )
        .await;
    });
    Action::requeue(delay)
}

/// The reconcile proper.
///
/// # Guarantees
/// - An invalid spec, or one naming for a node or sidecar a Secret that is
///   absent or lacks the opt-in label, creates, changes and deletes
///   nothing; the status says why, and a Warning event is published once
///   per generation.
/// - A pipeline being deleted is left to garbage collection.
/// - With nothing to change, no write request is issued.
///
/// # Errors
/// API failures and unusable live objects.
pub async fn reconcile_pipeline(sp: &StreamPipeline, ctx: &Context) -> Result<Action, Error> {
    let keys = Keys::of(&sp.metadata)?;
    let (ns, name, uid) = (&keys.ns, &keys.name, &keys.uid);
    if sp.metadata.deletion_timestamp.is_some() {
        ctx.redis_users.forget(&redis_users::key(ns, name, uid));
        // Owner references make garbage collection remove every child.
        return Ok(Action::await_change());
    }
    let target = keys.target(ctx);
    let mut live = target.list_owned().await?;

    let mut desired = match render::desired(sp, &ctx.settings) {
        Ok(d) => d,
        Err(render::Error::InvalidSpec(errors)) => {
            let message = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let validity = Validity::Invalid(message);
            report_not_applied(&Refused::of(sp), ctx, &target, &live, validity).await?;
            return Ok(Action::requeue(ctx.timing.requeue_interval));
        }
        Err(e) => return Err(e.into()),
    };

    let suspended = sp.spec.suspend == Some(true);
    let paused = pause::wanted(&sp.spec);
    let users_key = redis_users::key(ns, name, uid);
    let mut requeue = ctx.timing.requeue_interval;
    let mut applied = Applied::default();
    // Where the generated key ring's rotation stands (a condition), once read.
    let mut key_ring = None;
    if !suspended {
        let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        // First: a Secret that is not open to pipelines holds everything of
        // this spec, as an invalid spec does, so no object naming it is
        // written and no group runs a spec the others do not.
        let referenced =
            referenced::read(&secrets_api, &sp.spec, &desired.referenced_secrets).await?;
        if !referenced.refused.is_empty() {
            let validity = Validity::SecretsRefused(referenced.refused.join("; "));
            report_not_applied(&Refused::of(sp), ctx, &target, &live, validity).await?;
            return Ok(Action::requeue(ctx.timing.requeue_interval));
        }
        let users_hold = |data: &BTreeMap<String, String>| {
            wanted_users(&desired.plan, data, paused)
                .is_some_and(|w| ctx.redis_users.holds(&users_key, &w))
        };
        let ensured = secrets::ensure(
            &secrets_api,
            sp,
            uid,
            &desired.generated_secrets,
            &ctx.settings,
            &users_hold,
        )
        .await?;
        if let Some(after) = ensured.recheck_after {
            requeue = requeue.min(after);
        }
        key_ring = ensured
            .key_ring
            .as_ref()
            .map(crate::key_ring_status::condition);
        let mut changes = ensured.changes;
        if let Some(versions) = &referenced.versions {
            desired.annotate_runtime_pods(labels::SECRET_VERSIONS, versions);
        }
        if let Some(ca) = ensured
            .redis_secret
            .as_ref()
            .and_then(|d| d.get(crate::redis_tls::CA_CERT_KEY))
        {
            desired
                .annotate_redis_and_runtime_pods(labels::REDIS_CA, &crate::redis_tls::digest(ca));
        }
        applied = apply_objects(sp, ctx, &target, &desired, &mut live).await?;
        if let Some(passwords) = &ensured.redis_secret {
            sync_redis_users(ctx, &users_key, &desired.plan, &live, passwords, paused);
            let settled = pause::settled(paused, ctx.redis_users.paused(&users_key));
            if !settled && ctx.redis_users.is_running(&users_key) {
                // The status follows the pause soon after Redis holds it.
                requeue = requeue.min(PAUSE_RECHECK);
            } else if !settled {
                // Tried again after a failure (backing off), or once Redis
                // is ready.
                let retry = ctx.redis_users.pause_retry_in(&users_key);
                requeue = requeue.min(retry.unwrap_or(redis_users::PAUSED_RESYNC));
            } else if paused {
                // Written again while paused: a Redis restarted without
                // persistence lost it.
                requeue = requeue.min(redis_users::PAUSED_RESYNC);
            }
        } else {
            // No managed Redis (any more): no pause it could hold.
            ctx.redis_users.forget_pause(&users_key);
        }
        applied.missing_secrets = referenced.missing;
        if applied.pending {
            requeue = requeue.min(PENDING_RECHECK);
        }
        if desired
            .generated_secrets
            .iter()
            .any(|g| matches!(g, render::GeneratedSecret::RoleKeys { .. }))
        {
            let gone = unwanted_role_keys(name, &desired.generated_secrets, &live);
            desired.obsolete_secrets.extend(gone);
        }
        prune_objects(sp, ctx, &target, &desired, &mut live).await?;
        changes
            .extend(secrets::delete_obsolete(&secrets_api, uid, &desired.obsolete_secrets).await?);
        for c in changes {
            let (reason, verb, note) = match c {
                SecretChange::Created(n) => ("Created", "Create", format!("Secret {n}")),
                SecretChange::Updated(n) => ("Updated", "Update", format!("Secret {n}")),
                SecretChange::Deleted(n) => ("Deleted", "Delete", format!("Secret {n}")),
                SecretChange::Rotated(what) => ("KeyRotation", "Rotate", what),
            };
            info!(%note, reason, "secret");
            ctx.event(sp, EventType::Normal, reason, verb, note).await;
        }
    }

    if !applied.missing_secrets.is_empty()
        && degraded_for(
            sp.status.as_ref(),
            sp.metadata.generation,
            status::reason::SECRET_MISSING,
        )
        .is_none()
    {
        let note = applied.missing_secrets.join("; ");
        warn!(%note, "referenced secret missing");
        ctx.event(sp, EventType::Warning, "SecretMissing", "Read", note)
            .await;
    }
    if !applied.conflicts.is_empty() {
        let reported = degraded_for(
            sp.status.as_ref(),
            sp.metadata.generation,
            status::reason::CONFLICT,
        )
        .is_some();
        if !reported {
            let note = applied.conflict_note();
            warn!(%note, "name conflict");
            ctx.event(sp, EventType::Warning, "Conflict", "Apply", note)
                .await;
        }
    }
    let workloads = readiness(sp, &desired.objects, &live)?;
    let scaling = ctx.facts.get(&key_of(sp));
    let cold_start = autoscale::cold_start_risk(&sp.spec, &desired.plan, ctx.settings.cold_start);
    if let Some((type_, _, _, message)) = &cold_start {
        let reported = sp.status.as_ref().is_some_and(|s| {
            status::condition(s, type_).is_some_and(|c| {
                c.status == "True" && c.observed_generation == sp.metadata.generation
            })
        });
        if !reported {
            ctx.event(
                sp,
                EventType::Warning,
                "ColdStartRisk",
                "Validate",
                message.clone(),
            )
            .await;
        }
    }
    let pause_condition = pause::condition(
        paused,
        ctx.redis_users.paused(&users_key),
        ctx.redis_users.pause_error(&users_key).as_deref(),
    );
    let extra = autoscale::condition(&sp.spec, scaling.as_ref(), applied.missing_apis)
        .into_iter()
        .chain(cold_start)
        .chain([pause_condition])
        .chain(key_ring)
        .collect();
    let status = status::compute(&status::Inputs {
        generation: sp.metadata.generation,
        previous: sp.status.as_ref(),
        validity: Validity::Valid,
        suspended,
        workloads,
        ingress_url: Some(ingress_url(name, ns, sp.spec.expose.as_ref())),
        now: now(),
        decisions: scaling.map(|s| s.decisions).unwrap_or_default(),
        degraded: applied.degraded(),
        extra,
    });
    write_status(sp.status.as_ref(), ctx, &target, status).await?;
    Ok(Action::requeue(requeue))
}

fn now() -> Time {
    crate::clock::now_seconds()
}

/// Where clients reach the pipeline: the Ingress host when exposed through
/// one, else the Service inside the cluster.
pub fn ingress_url(name: &str, ns: &str, expose: Option<&ExposeSpec>) -> String {
    match expose.and_then(|e| e.ingress.as_ref()) {
        Some(i) if i.tls_secret.is_some() => format!("https://{}", i.host),
        Some(i) => format!("http://{}", i.host),
        // TLS on the Service's port 80, not https's 443.
        None if expose.is_some_and(|e| e.tls_secret.is_some()) => {
            format!("https://{name}.{ns}.svc:{}", crate::render::SERVICE_PORT)
        }
        None => format!("http://{name}.{ns}.svc"),
    }
}

// === owned objects ===

/// What a pipeline's objects are found by.
struct Keys {
    ns: String,
    name: String,
    uid: String,
}

impl Keys {
    fn of(meta: &ObjectMeta) -> Result<Self, Error> {
        let key = |k: &'static str, v: &Option<String>| v.clone().ok_or(Error::MissingObjectKey(k));
        Ok(Keys {
            ns: key("metadata.namespace", &meta.namespace)?,
            name: key("metadata.name", &meta.name)?,
            uid: key("metadata.uid", &meta.uid)?,
        })
    }

    fn target<'a>(&'a self, ctx: &'a Context) -> Target<'a> {
        Target {
            client: &ctx.client,
            cache: ctx.cache.as_deref(),
            ns: &self.ns,
            name: &self.name,
            uid: &self.uid,
        }
    }
}

/// Whether a name is free for the pipeline to create an object under.
enum Taken {
    Free,
    /// An object of that name is being deleted.
    Pending,
    /// Someone else's: who controls it.
    By(String),
}

/// The message of the `Degraded=True` condition with `reason` that
/// `status` already reports for `generation`: what was reported (with its
/// event) need not be done again.
fn degraded_for(
    status: Option<&StreamPipelineStatus>,
    generation: Option<i64>,
    reason: &str,
) -> Option<String> {
    let c = status::condition(status?, status::DEGRADED)?;
    (c.status == "True" && c.reason == reason && c.observed_generation == generation)
        .then(|| c.message.clone())
}

/// The derived keys Secrets (`P-ipc-keys-<group>`) that the live
/// Deployments name and `generated` no longer lists: those of a group that
/// is gone, or of a group that no longer runs a process of its own (after a
/// switch to memory backends). A Deployment names them by its group label
/// and by the Secret volumes of its pods — the one pod of a tcp pipeline
/// mounts every worker group's, and has no Deployment per group. Read
/// before the prune, so the Deployments about to go still name theirs.
fn unwanted_role_keys(
    pipeline: &str,
    generated: &[render::GeneratedSecret],
    live: &Live,
) -> Vec<String> {
    let prefix = names::role_keys(pipeline, "");
    let mut named = std::collections::BTreeSet::new();
    for ((kind, _), o) in live {
        if *kind != "Deployment" {
            continue;
        }
        if let Some(g) = o.labels().get(labels::GROUP) {
            named.insert(names::role_keys(pipeline, g));
        }
        let volumes = o
            .data
            .pointer("/spec/template/spec/volumes")
            .and_then(Value::as_array);
        for v in volumes.into_iter().flatten() {
            let secret = v.pointer("/secret/secretName").and_then(Value::as_str);
            if let Some(s) = secret.filter(|s| s.starts_with(&prefix)) {
                named.insert(s.to_string());
            }
        }
    }
    named
        .into_iter()
        .filter(|n| {
            !generated
                .iter()
                .any(|g| matches!(g, render::GeneratedSecret::RoleKeys { name, .. } if name == n))
        })
        .collect()
}

/// Gives a running managed Redis the users `P-redis` describes
/// ([`crate::redis_users`]), in the background. Only once its StatefulSet
/// has a ready pod: a Redis still starting reads them from its file.
/// `passwords` exists only for managed Redis (its `P-redis`).
fn sync_redis_users(
    ctx: &Context,
    key: &str,
    plan: &Plan,
    live: &Live,
    passwords: &BTreeMap<String, String>,
    paused: bool,
) {
    let (ns, name) = (&plan.id.namespace, &plan.id.name);
    let ready = live
        .get(&("StatefulSet", names::redis(name)))
        .and_then(|s| s.data["status"]["readyReplicas"].as_i64())
        .unwrap_or(0)
        > 0;
    if !ready {
        return;
    }
    if let Some(wanted) = wanted_users(plan, passwords, paused) {
        ctx.redis_users
            .sync(key, &managed_address(name, ns), wanted);
    }
}

/// The live users a `P-redis`'s data describes for `plan`, and the pause.
fn wanted_users(plan: &Plan, data: &BTreeMap<String, String>, paused: bool) -> Option<Wanted> {
    let tls = data.contains_key(crate::redis_tls::CA_CERT_KEY);
    let key = sluice_platform::Keys::new(&plan.id.namespace, &plan.id.name).paused();
    Wanted::from_secret(render::redis_acl::users(plan, tls), data)
        .map(|w| w.with_pause(key, paused))
}

/// Reconciles a pipeline whose spec does not decode: its status says why
/// (`InvalidSpec` with the field path); what runs is left as it was.
///
/// # Errors
/// API failures.
async fn reconcile_unreadable(obj: &PipelineObject, ctx: &Context) -> Result<Action, Error> {
    let Err(message) = &obj.spec else {
        return Ok(Action::await_change());
    };
    if obj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let keys = Keys::of(&obj.metadata)?;
    let target = keys.target(ctx);
    let live = target.list_owned().await?;
    let refused = Refused {
        object: &obj.metadata,
        spec: None,
        status: obj.status.as_ref(),
    };
    let validity = Validity::Invalid(message.clone());
    report_not_applied(&refused, ctx, &target, &live, validity).await?;
    Ok(Action::requeue(ctx.timing.requeue_interval))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::IngressSpec;

    /// The live copies of the Deployments `desired` renders for `sp`.
    fn live_deployments(sp: &StreamPipeline) -> Live {
        let d = render::desired(sp, &OperatorSettings::default()).unwrap();
        d.objects
            .iter()
            .filter(|o| o.kind().kind == "Deployment")
            .map(|o| {
                let json = serde_json::to_value(o).unwrap();
                (
                    ("Deployment", o.name().to_string()),
                    serde_json::from_value(json).unwrap(),
                )
            })
            .collect()
    }

    fn pipeline(file: &str) -> StreamPipeline {
        let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
        let mut sp: StreamPipeline =
            sluice_crds::yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        sp.metadata.namespace = Some("demo".into());
        sp.metadata.uid = Some("7f3c1a52-0000-4000-8000-000000000002".into());
        sp
    }

    fn generated(sp: &StreamPipeline) -> Vec<render::GeneratedSecret> {
        render::desired(sp, &OperatorSettings::default())
            .unwrap()
            .generated_secrets
    }

    #[test]
    fn the_keys_of_a_removed_group_are_unwanted_in_every_profile() {
        for file in ["orders-redis.yaml", "orders-tcp.yaml"] {
            let before = pipeline(file);
            let name = before.metadata.name.clone().unwrap();
            let live = live_deployments(&before);
            assert_eq!(
                unwanted_role_keys(&name, &generated(&before), &live),
                Vec::<String>::new(),
                "{file}: nothing while the groups stay"
            );
            // Drop group io: summarize moves to cpu.
            let mut after = before.clone();
            after.spec.groups.retain(|g| g.name != "io");
            for n in &mut after.spec.nodes {
                if n.group == "io" {
                    n.group = "cpu".into();
                }
            }
            assert_eq!(
                unwanted_role_keys(&name, &generated(&after), &live),
                [format!("{name}-ipc-keys-io")],
                "{file}"
            );
        }
    }

    #[test]
    fn switching_to_memory_backends_leaves_only_the_ingress_keys_wanted() {
        let tcp = pipeline("orders-tcp.yaml");
        let mut memory = tcp.clone();
        memory.spec.backends = Default::default();
        assert_eq!(
            unwanted_role_keys("orders-tcp", &generated(&memory), &live_deployments(&tcp)),
            ["orders-tcp-ipc-keys-cpu", "orders-tcp-ipc-keys-io"]
        );
    }

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_maximum() {
        let t = Timing {
            requeue_interval: Duration::from_secs(300),
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_secs(60),
            ..Timing::default()
        };
        let d: Vec<u64> = (1..=6).map(|n| backoff_delay(&t, n).as_secs()).collect();
        assert_eq!(d, [5, 10, 20, 40, 60, 60]);
        assert_eq!(backoff_delay(&t, u32::MAX).as_secs(), 60);
    }

    #[test]
    fn the_url_is_the_service_or_the_ingress_host() {
        assert_eq!(ingress_url("p", "demo", None), "http://p.demo.svc");
        let pod_tls = ExposeSpec {
            service_type: Default::default(),
            ingress: None,
            tls_secret: Some("p-tls".into()),
        };
        assert_eq!(
            ingress_url("p", "demo", Some(&pod_tls)),
            "https://p.demo.svc:80"
        );
        let mut e = ExposeSpec {
            tls_secret: None,
            service_type: Default::default(),
            ingress: Some(IngressSpec {
                host: "p.example.com".into(),
                class_name: None,
                tls_secret: None,
            }),
        };
        assert_eq!(ingress_url("p", "demo", Some(&e)), "http://p.example.com");
        e.ingress.as_mut().unwrap().tls_secret = Some("tls".into());
        assert_eq!(ingress_url("p", "demo", Some(&e)), "https://p.example.com");
    }
}
