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
//! create-if-absent the generated Secrets (GET by name)
//!   ▼
//! server-side apply each desired object that differs from its live copy (apply::up_to_date)
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
use sluice_crds::{
    compile, ExposeSpec, PipelineId, StreamPipeline, StreamPipelineSpec, StreamPipelineStatus,
};
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
use crate::redis_users::{RedisUsers, Wanted};
use crate::referenced;
use crate::render::redis_use::{managed_address, RedisUse};
use crate::render::{self, owned_kinds, Child, Desired, OwnedKind};
use crate::secrets::{self, SecretChange};
use crate::settings::OperatorSettings;
use crate::status::{self, Readiness, Validity};

/// How soon a pipeline waiting for an object's deletion looks again.
const PENDING_RECHECK: Duration = Duration::from_secs(1);

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
        ctx.redis_users.forget(&format!("{ns}/{name}"));
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
    let mut requeue = ctx.timing.requeue_interval;
    let mut applied = Applied::default();
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
        let ensured = secrets::ensure(
            &secrets_api,
            sp,
            uid,
            &desired.generated_secrets,
            &ctx.settings,
        )
        .await?;
        if let Some(after) = ensured.recheck_after {
            requeue = requeue.min(after);
        }
        let mut changes = ensured.changes;
        if let Some(versions) = &referenced.versions {
            desired.annotate_runtime_pods(labels::SECRET_VERSIONS, versions);
        }
        applied = apply_objects(sp, ctx, &target, &desired, &mut live).await?;
        if let Some(passwords) = &ensured.redis_secret {
            sync_redis_users(sp, ctx, &live, passwords);
        }
        applied.missing_secrets = referenced.missing;
        if applied.pending {
            requeue = requeue.min(PENDING_RECHECK);
        }
        // A group that is gone takes its derived keys with it; its
        // Deployment, about to be pruned, names it.
        if desired
            .generated_secrets
            .iter()
            .any(|g| matches!(g, render::GeneratedSecret::RoleKeys { .. }))
        {
            let gone = live
                .iter()
                .filter(|((kind, _), _)| *kind == "Deployment")
                .filter_map(|(_, o)| o.labels().get(labels::GROUP))
                .filter(|g| !desired.plan.groups.contains_key(*g))
                .map(|g| names::role_keys(name, g))
                .collect::<Vec<_>>();
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
    let extra = autoscale::condition(&sp.spec, scaling.as_ref(), applied.missing_apis)
        .into_iter()
        .chain(cold_start)
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

/// The pipeline whose objects a reconcile touches.
struct Target<'a> {
    client: &'a Client,
    cache: Option<&'a OwnedCache>,
    ns: &'a str,
    name: &'a str,
    uid: &'a str,
}

/// Live owned objects by `(kind, name)`.
/// Gives a running managed Redis the users `P-redis` describes
/// ([`crate::redis_users`]), in the background. Only once its StatefulSet
/// has a ready pod: a Redis still starting reads them from its file.
fn sync_redis_users(
    sp: &StreamPipeline,
    ctx: &Context,
    live: &Live,
    passwords: &BTreeMap<String, String>,
) {
    let (Some(ns), Some(name)) = (
        sp.metadata.namespace.as_deref(),
        sp.metadata.name.as_deref(),
    ) else {
        return;
    };
    let ready = live
        .get(&("StatefulSet", names::redis(name)))
        .and_then(|s| s.data["status"]["readyReplicas"].as_i64())
        .unwrap_or(0)
        > 0;
    if !ready
        || !matches!(
            render::redis_use::redis_use(&sp.spec, &ctx.settings),
            Ok(RedisUse::Managed(_))
        )
    {
        return;
    }
    let id = PipelineId {
        namespace: ns.to_string(),
        name: name.to_string(),
    };
    let Ok(plan) = compile(id, &sp.spec) else {
        return;
    };
    if let Some(wanted) = Wanted::from_secret(render::redis_acl::users(&plan), passwords) {
        ctx.redis_users
            .sync(&format!("{ns}/{name}"), &managed_address(name, ns), wanted);
    }
}

type Live = BTreeMap<(&'static str, String), DynamicObject>;

impl Target<'_> {
    fn api(&self, k: &OwnedKind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), self.ns, &api_resource(k))
    }

    /// Every object of an owned kind that carries the pipeline's labels and
    /// is controlled by it (same uid: a deleted and recreated pipeline of
    /// the same name does not adopt its predecessor's leftovers). Read from
    /// the watch caches; a kind whose cache is not ready is listed.
    async fn list_owned(&self) -> Result<Live, Error> {
        let lp = ListParams::default().labels(&labels::owned_selector(self.name));
        let mut live = Live::new();
        for k in owned_kinds() {
            let cached = self.cache.and_then(|c| c.objects(k, self.ns, self.name));
            let items = match cached {
                Some(items) => items,
                None => match self.api(k).list(&lp).await {
                    Ok(l) => l.items,
                    // The API is not installed (KEDA): there is nothing of it.
                    Err(kube::Error::Api(e)) if e.code == 404 && k.optional() => continue,
                    Err(e) => return Err(api_error("list", k.kind, self.name, e)),
                },
            };
            for mut o in items {
                let controlled = o
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.controller == Some(true) && r.uid == self.uid);
                if !controlled {
                    continue;
                }
                // List items may come without apiVersion and kind.
                o.types = Some(TypeMeta {
                    api_version: k.api_version.into(),
                    kind: k.kind.into(),
                });
                live.insert((k.kind, o.name_any()), o);
            }
        }
        Ok(live)
    }

    /// Whether `name` of kind `k` is free to create: absent, or ours (created
    /// a moment ago, not in the cache yet), or still being deleted, or
    /// someone else's and who controls it. Asked only before creating an object (at steady
    /// state every object is in the cache as the pipeline's own): an apply
    /// would take it over from its owner — another pipeline whose names
    /// overlap (`a` with group `b-c` and `a-b` with group `c` both name a
    /// Deployment `a-b-c`), or a user's object of that name.
    async fn taken(&self, k: &OwnedKind, name: &str) -> Result<Taken, Error> {
        let found = match self.api(k).get_opt(name).await {
            Ok(found) => found,
            // The API is not installed (KEDA): nothing can be there.
            Err(kube::Error::Api(e)) if e.code == 404 && k.optional() => None,
            Err(e) => return Err(api_error("get", k.kind, name, e)),
        };
        let Some(o) = found else {
            return Ok(Taken::Free);
        };
        // A predecessor's child being collected, or an object this
        // pipeline replaces: free once it is gone.
        if o.metadata.deletion_timestamp.is_some() {
            return Ok(Taken::Pending);
        }
        let controller = o
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true));
        Ok(match controller {
            Some(r) if r.uid == self.uid => Taken::Free,
            Some(r) => Taken::By(format!("controlled by {} {}", r.kind, r.name)),
            None => Taken::By("not made by sluice-operator".to_string()),
        })
    }

    /// Deletes `name` of kind `k` (in the background: dependents follow),
    /// only if it is still the object with `uid`: a copy read a moment ago
    /// never deletes a successor of the same name. Returns false when it
    /// was already gone.
    async fn delete(&self, k: &OwnedKind, name: &str, uid: Option<&str>) -> Result<bool, Error> {
        self.delete_with(k, name, uid, DeleteParams::background())
            .await
    }

    /// Like [`Self::delete`], but the object's dependents (a StatefulSet's
    /// pods) are orphaned, not deleted: a successor with the same selector
    /// adopts them.
    async fn delete_orphaning(
        &self,
        k: &OwnedKind,
        name: &str,
        uid: Option<&str>,
    ) -> Result<bool, Error> {
        self.delete_with(k, name, uid, DeleteParams::orphan()).await
    }

    async fn delete_with(
        &self,
        k: &OwnedKind,
        name: &str,
        uid: Option<&str>,
        base: DeleteParams,
    ) -> Result<bool, Error> {
        let cache = self.cache.zip(uid);
        if let Some((cache, uid)) = cache {
            cache.deleting(uid);
        }
        let params = DeleteParams {
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..base
        };
        match self.api(k).delete(name, &params).await {
            Ok(_) => Ok(true),
            // Gone, or another object by now (the uid precondition).
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
            Err(e) => {
                if let Some((cache, uid)) = cache {
                    cache.not_deleted(uid);
                }
                Err(api_error("delete", k.kind, name, e))
            }
        }
    }
}

/// How the volume claim templates of a StatefulSet change from its live
/// copy to the desired one. The API server refuses any change of them on a
/// StatefulSet, so each calls for its own way round.
#[derive(Debug, PartialEq)]
enum ClaimChange {
    /// The same claims of the same sizes (in whatever spelling).
    Same,
    /// The same claims, some larger: `(template, new size)`. The claims are
    /// expanded in place, the StatefulSet replaced without its pods.
    Grow(Vec<(String, String)>),
    /// A claim would shrink, which no volume can, or move to another
    /// StorageClass, which a bound claim cannot: refused, the StatefulSet is
    /// left as it is. `(reason, message)`.
    Refused(&'static str, String),
    /// Claims added or removed (persistence switched on or off): the
    /// StatefulSet is recreated; the retention policy keeps the volumes.
    Replace,
}

fn claim_change(live: &Value, desired: &Value) -> ClaimChange {
    let (live, desired) = (claim_templates(live), claim_templates(desired));
    let names = |v: &[Claim]| v.iter().map(|(n, _, _)| n.clone()).collect::<Vec<_>>();
    if names(&live) != names(&desired) {
        return ClaimChange::Replace;
    }
    let mut grow = Vec::new();
    for ((name, was, was_class), (_, is, is_class)) in live.iter().zip(&desired) {
        if was_class != is_class {
            return ClaimChange::Refused(
                status::reason::STORAGE_CLASS_CHANGE_REFUSED,
                format!(
                    "volume claim {name} cannot move from StorageClass {} to {}; set redis.storageClassName back",
                    was_class.as_deref().unwrap_or("(default)"),
                    is_class.as_deref().unwrap_or("(default)")
                ),
            );
        }
        match (crate::quantity::nanos(was), crate::quantity::nanos(is)) {
            (Some(w), Some(i)) if i < w => {
                return ClaimChange::Refused(
                    status::reason::STORAGE_SHRINK_REFUSED,
                    format!(
                        "volume claim {name} cannot shrink from {was} to {is}; set redis.storage back to at least {was}"
                    ),
                )
            }
            (Some(w), Some(i)) if i > w => grow.push((name.clone(), is.clone())),
            (Some(_), Some(_)) => {}
            _ if was == is => {}
            _ => return ClaimChange::Replace,
        }
    }
    if grow.is_empty() {
        ClaimChange::Same
    } else {
        ClaimChange::Grow(grow)
    }
}

/// Why the StatefulSet's live claims must stay as they are, if they must:
/// a shrink or a class change (never possible), or an expansion the API
/// server refused before for this generation (not asked again on every
/// reconcile: no writes at steady state).
fn claims_held(sp: &StreamPipeline, change: &ClaimChange) -> Option<(&'static str, String)> {
    match change {
        ClaimChange::Refused(reason, message) => Some((reason, message.clone())),
        ClaimChange::Grow(_) => degraded_for(
            sp.status.as_ref(),
            sp.metadata.generation,
            status::reason::STORAGE_RESIZE_REFUSED,
        )
        .map(|message| (status::reason::STORAGE_RESIZE_REFUSED, message)),
        ClaimChange::Same | ClaimChange::Replace => None,
    }
}

/// A volume claim template: name, storage request, StorageClass.
type Claim = (String, String, Option<String>);

/// `spec.volumeClaimTemplates` as (name, storage request, class).
fn claim_templates(v: &Value) -> Vec<Claim> {
    v.pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                t.pointer("/spec/resources/requests/storage")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                t.pointer("/spec/storageClassName")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            )
        })
        .collect()
}

/// What applying the desired objects left to report in status.
#[derive(Debug, Default)]
struct Applied {
    /// An optional API (KEDA) was missing, so its objects could not be
    /// applied (reported in status, not an error).
    missing_apis: bool,
    /// Managed Redis's storage could not follow the spec: `(reason, message)`.
    storage: Option<(&'static str, String)>,
    /// Objects the pipeline would write that exist and are not its own
    /// (another pipeline's, or made by hand): `Kind/name (whose)`.
    conflicts: Vec<String>,
    /// An object is still being deleted (a StatefulSet orphaning its pods,
    /// a predecessor's child being collected): look again shortly.
    pending: bool,
    /// Secrets the spec names that are absent or lack their key.
    missing_secrets: Vec<String>,
}

impl Applied {
    /// What the `Conflict` condition and event say.
    fn conflict_note(&self) -> String {
        format!(
            "not applied, the name is taken: {}",
            self.conflicts.join("; ")
        )
    }

    /// What makes the pipeline `Degraded` beyond an invalid spec.
    fn degraded(&self) -> Option<(String, String)> {
        if !self.conflicts.is_empty() {
            return Some((status::reason::CONFLICT.to_string(), self.conflict_note()));
        }
        if !self.missing_secrets.is_empty() {
            return Some((
                status::reason::SECRET_MISSING.to_string(),
                self.missing_secrets.join("; "),
            ));
        }
        self.storage
            .as_ref()
            .map(|(reason, message)| ((*reason).to_string(), message.clone()))
    }
}

/// Server-side applies every desired object whose live copy differs, in
/// the desired order; `live` is updated with what the API server answered.
async fn apply_objects(
    sp: &StreamPipeline,
    ctx: &Context,
    target: &Target<'_>,
    desired: &Desired,
    live: &mut Live,
) -> Result<Applied, Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let mut outcome = Applied::default();
    for child in &desired.objects {
        let kind = child.kind();
        let name = child.name().to_string();
        let mut stamped: Stamped = apply::stamp(child)?;
        let key = (kind.kind, name.clone());
        let current = live.get(&key).map(serde_json::to_value).transpose();
        let current = current.map_err(|source| Error::Decode {
            kind: kind.kind.into(),
            name: name.clone(),
            source,
        })?;
        // How a live StatefulSet's claim templates would change.
        let mut claims = match (child, &current) {
            (Child::StatefulSet(_), Some(cur)) => Some(claim_change(cur, &stamped.body)),
            _ => None,
        };
        if let (Some(change), Some(cur)) = (&claims, &current) {
            // Claims that cannot follow the spec stay as they are; the rest
            // of the StatefulSet (image, config, resources) still does.
            if let Some(refusal) = claims_held(sp, change) {
                outcome.storage = Some(refusal);
                claims = Some(ClaimChange::Same);
                let mut body = stamped.body;
                body["spec"]["volumeClaimTemplates"] = cur["spec"]["volumeClaimTemplates"].clone();
                if let Some(a) = body
                    .pointer_mut("/metadata/annotations")
                    .and_then(Value::as_object_mut)
                {
                    a.remove(apply::APPLIED_HASH);
                }
                stamped = apply::stamp_value(body)?;
            }
        }
        if let Some(cur) = &current {
            if apply::up_to_date(&stamped, cur) {
                continue;
            }
        }
        let api = target.api(&kind);
        // An object on its way out takes no apply: the API server would
        // refuse a StatefulSet's new claim templates while it waits for its
        // pods to be orphaned. Its successor is created once it is gone.
        let terminating = |o: &Value| {
            o.pointer("/metadata/deletionTimestamp")
                .is_some_and(|t| !t.is_null())
        };
        if current.as_ref().is_some_and(terminating) {
            outcome.pending = true;
            continue;
        }
        if current.is_none() {
            match target.taken(&kind, &name).await? {
                Taken::Free => {}
                Taken::Pending => {
                    outcome.pending = true;
                    continue;
                }
                Taken::By(whose) => {
                    outcome
                        .conflicts
                        .push(format!("{} {name} ({whose})", kind.kind));
                    continue;
                }
            }
        }
        let mut existed = current.is_some();
        if let (Some(change), Some(cur)) = (claims, &current) {
            let uid = cur.pointer("/metadata/uid").and_then(Value::as_str);
            match change {
                // A refused change was held above: the live claims are applied.
                ClaimChange::Same | ClaimChange::Refused(..) => {}
                ClaimChange::Grow(sizes) => {
                    if let Err(message) = expand_claims(target, &name, cur, &sizes).await? {
                        outcome.storage = Some((status::reason::STORAGE_RESIZE_REFUSED, message));
                        continue;
                    }
                    // The claims are larger now; the StatefulSet's templates
                    // cannot follow, so it is replaced — without its pods,
                    // which the new one adopts, and without its volumes.
                    if target.delete_orphaning(&kind, &name, uid).await? {
                        ctx.metrics.deleted(kind.kind);
                        let sizes: Vec<String> =
                            sizes.iter().map(|(n, s)| format!("{n} to {s}")).collect();
                        ctx.event(
                            sp,
                            EventType::Normal,
                            "Resized",
                            "Resize",
                            format!(
                                "StatefulSet {name}: volume claims expanded in place ({}); the StatefulSet is replaced, its pods and volumes kept",
                                sizes.join(", ")
                            ),
                        )
                        .await;
                    }
                    // The successor is created once the old one is gone.
                    live.remove(&key);
                    outcome.pending = true;
                    continue;
                }
                ClaimChange::Replace => {
                    if target.delete(&kind, &name, uid).await? {
                        ctx.metrics.deleted(kind.kind);
                        ctx.event(
                            sp,
                            EventType::Normal,
                            "Recreating",
                            "Delete",
                            format!("StatefulSet {name}: its volume claims were added or removed"),
                        )
                        .await;
                    }
                    existed = false;
                }
            }
        }
        let applied = match api.patch(&name, &pp, &Patch::Apply(&stamped.body)).await {
            Ok(a) => a,
            Err(kube::Error::Api(e)) if e.code == 404 && kind.optional() => {
                outcome.missing_apis = true;
                continue;
            }
            Err(e) => return Err(api_error("apply", kind.kind, &name, e)),
        };
        ctx.metrics.applied(kind.kind);
        let (reason, verb) = if existed {
            ("Updated", "Update")
        } else {
            ("Created", "Create")
        };
        info!(kind = kind.kind, object = %name, reason, "applied");
        ctx.event(
            sp,
            EventType::Normal,
            reason,
            verb,
            format!("{} {name}", kind.kind),
        )
        .await;
        let mut applied = applied;
        applied.types = Some(TypeMeta {
            api_version: kind.api_version.into(),
            kind: kind.kind.into(),
        });
        live.insert(key, applied);
    }
    Ok(outcome)
}

/// Raises the storage request of the StatefulSet's claims (`<template>-<set>-<ordinal>`)
/// to `sizes`. `Ok(Err(why))` when the API server refuses (the StorageClass
/// does not allow expansion, or the claim is not bound to one that can).
///
/// # Errors
/// Other API failures.
async fn expand_claims(
    target: &Target<'_>,
    set: &str,
    live: &Value,
    sizes: &[(String, String)],
) -> Result<Result<(), String>, Error> {
    let replicas = live
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0);
    let api: Api<PersistentVolumeClaim> = Api::namespaced(target.client.clone(), target.ns);
    for (template, size) in sizes {
        for ordinal in 0..replicas {
            let claim = format!("{template}-{set}-{ordinal}");
            let body = json!({"spec": {"resources": {"requests": {"storage": size}}}});
            match api
                .patch(&claim, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => info!(claim, size, "volume claim expanded"),
                // Not created yet: the new StatefulSet creates it at the new size.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => {
                    return Ok(Err(format!(
                        "volume claim {claim} cannot be expanded to {size}: {}",
                        e.message
                    )));
                }
                Err(e) => return Err(api_error("patch", "PersistentVolumeClaim", &claim, e)),
            }
        }
    }
    Ok(Ok(()))
}

/// Deletes owned objects that are no longer desired (a removed group's
/// Deployment, managed Redis after switching to external, ...).
async fn prune_objects(
    sp: &StreamPipeline,
    ctx: &Context,
    target: &Target<'_>,
    desired: &Desired,
    live: &mut Live,
) -> Result<(), Error> {
    let obsolete: Vec<_> = live
        .keys()
        .filter(|(kind, name)| !desired.contains(kind, name))
        .cloned()
        .collect();
    for key in obsolete {
        let (kind, name) = &key;
        let Some(k) = owned_kinds().iter().find(|k| k.kind == *kind) else {
            continue;
        };
        let uid = live.get(&key).and_then(|o| o.metadata.uid.clone());
        let deleted = target.delete(k, name, uid.as_deref()).await?;
        live.remove(&key);
        if !deleted {
            continue;
        }
        ctx.metrics.deleted(kind);
        info!(kind, object = %name, "deleted, no longer desired");
        ctx.event(
            sp,
            EventType::Normal,
            "Deleted",
            "Delete",
            format!("{kind} {name}: no longer desired"),
        )
        .await;
    }
    Ok(())
}

// === status ===

fn decode<K: serde::de::DeserializeOwned>(o: &DynamicObject) -> Result<K, Error> {
    serde_json::to_value(o)
        .and_then(serde_json::from_value)
        .map_err(|source| Error::Decode {
            kind: o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default(),
            name: o.name_any(),
            source,
        })
}

/// Readiness of the desired workloads from their live copies.
fn readiness(sp: &StreamPipeline, objects: &[Child], live: &Live) -> Result<Vec<Readiness>, Error> {
    let mut out = Vec::new();
    for child in objects {
        let group = child
            .meta()
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::GROUP).cloned());
        let name = child.name().to_string();
        match child {
            Child::Deployment(d) => {
                let autoscaled = d.spec.as_ref().is_some_and(|s| s.replicas.is_none());
                out.push(match live.get(&("Deployment", name.clone())) {
                    Some(o) => {
                        Readiness::of_deployment(&decode::<Deployment>(o)?, group, autoscaled)
                    }
                    None => Readiness::missing(
                        format!("Deployment/{name}"),
                        group,
                        d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    ),
                });
            }
            Child::StatefulSet(s) => {
                out.push(match live.get(&("StatefulSet", name.clone())) {
                    Some(o) => Readiness::of_stateful_set(&decode::<StatefulSet>(o)?, group),
                    None => Readiness::missing(
                        format!("StatefulSet/{name}"),
                        group,
                        s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    ),
                });
            }
            _ => {}
        }
    }
    debug!(pipeline = ?sp.metadata.name, workloads = out.len(), "readiness");
    Ok(out)
}

/// Readiness of whatever workloads run, for a pipeline whose spec is invalid.
fn live_readiness(spec: Option<&StreamPipelineSpec>, live: &Live) -> Result<Vec<Readiness>, Error> {
    let mut out = Vec::new();
    for ((kind, _), o) in live {
        let group = o.labels().get(labels::GROUP).cloned();
        match *kind {
            "Deployment" => {
                let autoscaled = group.as_deref().is_some_and(|g| {
                    spec.is_some_and(|s| {
                        s.groups
                            .iter()
                            .any(|x| x.name == g && x.autoscale.is_some())
                    })
                });
                out.push(Readiness::of_deployment(
                    &decode::<Deployment>(o)?,
                    group,
                    autoscaled,
                ));
            }
            "StatefulSet" => out.push(Readiness::of_stateful_set(
                &decode::<StatefulSet>(o)?,
                group,
            )),
            _ => {}
        }
    }
    Ok(out)
}

/// A pipeline whose spec is not applied: what reporting it needs.
struct Refused<'a> {
    object: &'a ObjectMeta,
    /// `None` when the spec could not even be read.
    spec: Option<&'a StreamPipelineSpec>,
    status: Option<&'a StreamPipelineStatus>,
}

impl<'a> Refused<'a> {
    fn of(sp: &'a StreamPipeline) -> Self {
        Refused {
            object: &sp.metadata,
            spec: Some(&sp.spec),
            status: sp.status.as_ref(),
        }
    }
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

/// Status and event for a spec that is not applied: invalid, or naming
/// Secrets not open to pipelines (`validity` says which). Nothing else is
/// touched: a new pipeline gets no objects, a running one keeps the objects
/// it has.
async fn report_not_applied(
    sp: &Refused<'_>,
    ctx: &Context,
    target: &Target<'_>,
    live: &Live,
    validity: Validity,
) -> Result<(), Error> {
    let Some((reason, why)) = validity.refusal().map(|(r, w)| (r, w.to_string())) else {
        return Ok(());
    };
    if reason == status::reason::INVALID_SPEC {
        ctx.metrics.invalid_specs.inc();
    }
    let workloads = live_readiness(sp.spec, live)?;
    let running = !live.is_empty();
    let generation = sp.object.generation;
    let reported = degraded_for(sp.status, generation, reason).is_some();
    if !reported {
        warn!(errors = %why, running, reason, "spec not applied");
        let note = match (running, reason == status::reason::INVALID_SPEC) {
            (true, true) => format!("not applied, the last valid spec keeps running: {why}"),
            (true, false) => {
                format!("not applied, the running objects are left as they are: {why}")
            }
            (false, _) => format!("nothing created: {why}"),
        };
        let about = PipelineObject {
            metadata: sp.object.clone(),
            spec: Err(String::new()),
            status: None,
        };
        ctx.event(&about, EventType::Warning, reason, "Validate", note)
            .await;
    }
    // Unread, the spec says nothing of suspension or exposure: the last
    // status's URL stands.
    let ingress_url = match sp.spec {
        Some(spec) => Some(ingress_url(target.name, target.ns, spec.expose.as_ref())),
        None => sp.status.and_then(|s| s.ingress_url.clone()),
    };
    let status = status::compute(&status::Inputs {
        generation,
        previous: sp.status,
        validity,
        suspended: sp.spec.is_some_and(|s| s.suspend == Some(true)),
        workloads,
        ingress_url,
        now: now(),
        decisions: BTreeMap::new(),
        degraded: None,
        extra: vec![],
    });
    write_status(sp.status, ctx, target, status).await
}

/// Server-side applies `status` on `/status` unless it equals the current one.
async fn write_status(
    previous: Option<&StreamPipelineStatus>,
    ctx: &Context,
    target: &Target<'_>,
    status: StreamPipelineStatus,
) -> Result<(), Error> {
    if previous == Some(&status) {
        return Ok(());
    }
    // The answer is the whole object: read leniently, so a spec the types
    // cannot read does not turn a successful write into an error.
    let api: Api<PipelineObject> = Api::namespaced(ctx.client.clone(), target.ns);
    let body = json!({
        "apiVersion": StreamPipeline::api_version(&()),
        "kind": StreamPipeline::kind(&()),
        "status": status,
    });
    api.patch_status(
        target.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| api_error("patch status of", "StreamPipeline", target.name, e))?;
    ctx.metrics.status_writes.inc();
    debug!("status written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::IngressSpec;

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
        let mut e = ExposeSpec {
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

    #[test]
    fn claims_grow_are_refused_to_shrink_or_move_and_compare_by_value() {
        let set = |size: &str, class: Option<&str>| {
            json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"storageClassName": class, "resources": {"requests": {"storage": size}}}}]}})
        };
        assert_eq!(
            claim_change(&set("1Gi", None), &set("1024Mi", None)),
            ClaimChange::Same
        );
        assert_eq!(
            claim_change(&set("1Gi", None), &set("2Gi", None)),
            ClaimChange::Grow(vec![("data".into(), "2Gi".into())])
        );
        assert!(matches!(
            claim_change(&set("2Gi", None), &set("1Gi", None)),
            ClaimChange::Refused(status::reason::STORAGE_SHRINK_REFUSED, _)
        ));
        assert!(matches!(
            claim_change(&set("1Gi", Some("std")), &set("1Gi", Some("fast"))),
            ClaimChange::Refused(status::reason::STORAGE_CLASS_CHANGE_REFUSED, _)
        ));
        assert_eq!(
            claim_change(&set("1Gi", None), &json!({"spec": {}})),
            ClaimChange::Replace
        );
    }

    #[test]
    fn claim_templates_compare_name_and_size() {
        let a = json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}}]}});
        let b = json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "2Gi"}}}}]}});
        assert_ne!(claim_templates(&a), claim_templates(&b));
        assert!(claim_templates(&json!({"spec": {}})).is_empty());
    }
}
