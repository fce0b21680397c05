//! The builtin autoscaler's loop: one evaluation of every builtin group
//! per `--autoscale-interval`, run by the leader only.
//!
//! ```text
//! tick ─▶ StreamPipelines from the controllers' stores; worker Deployments of
//!         the autoscaled pipelines from the owned-object caches (each listed
//!         from the API server instead while its cache is not ready)
//!      ─▶ per pipeline (at most CONCURRENCY at once): Redis URL and CA (Secret GETs, cached),
//!         per builtin group: StreamStats (1 Redis round trip)
//!      ─▶ per group: Rates ─▶ recommend ─▶ decide ─▶ PATCH /scale when it changes
//!      ─▶ Facts changed (a decision, Redis lost or back) ─▶ ask for a reconcile (status)
//! ```
//!
//! State (recommendation history, rates) lives in memory: a new leader
//! starts empty and so waits a whole stabilisation window before any
//! scale-down. Nothing here writes status; the reconciler does, from [`Facts`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use sluice_crds::{AutoscaleEngine, ScaleDecision, StreamPipeline};
use sluice_platform::redis::StreamStats;

use crate::cache::OwnedCache;
use crate::object::PipelineObject;
use crate::pipelines::PipelineStores;
use crate::render::owned_kinds;
use sluice_platform::{Keys, RedisBackend};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::algorithm::{self, Rates, Sample, Stabilizer};
use super::{groups_with, params, Facts, FIELD_MANAGER};
use crate::events::{EventType, Events};
use crate::labels::{self, Component};
use crate::metrics::{DirectionLabel, GroupLabel, Metrics};
use crate::names;
use crate::redis_target::Connection;
use crate::render::redis_acl::Role;

/// Pipelines evaluated at once.
const CONCURRENCY: usize = 16;
/// Timeout of the autoscaler's Redis commands and connection attempts.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The builtin autoscaler of one operator process.
pub struct Autoscaler {
    pub client: Client,
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    /// The controllers' pipelines, read instead of listing them.
    pub pipelines: Arc<PipelineStores>,
    /// The owned-object caches, read instead of listing Deployments.
    pub cache: Arc<OwnedCache>,
    pub interval: Duration,
    pub facts: Arc<Facts>,
    pub metrics: Arc<Metrics>,
    pub events: Arc<Events>,
    /// Whether managed Redis holds each pipeline's pause.
    pub redis_users: Arc<crate::redis_users::RedisUsers>,
    /// Asks the controller to reconcile a pipeline (its status changed).
    pub trigger: broadcast::Sender<ObjectRef<PipelineObject>>,
}

/// Per group: what the algorithm remembers between evaluations.
#[derive(Default)]
struct GroupState {
    stab: Stabilizer,
    rates: Rates,
}

/// What one evaluation read about one group.
struct Reading {
    group: String,
    deployment: String,
    current: u32,
    ready: u32,
    stats: StreamStats,
    /// When the stats arrived. Rates are measured between these instants,
    /// not between ticks: a tick that first connects or reads a Secret
    /// reads the stream later than it started.
    read_at: Instant,
}

/// What one evaluation read about one pipeline.
struct PipelineReading {
    sp: Arc<StreamPipeline>,
    key: String,
    groups: Vec<Reading>,
    redis_error: Option<String>,
}

impl Autoscaler {
    /// Evaluates every `interval` until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let epoch = Instant::now();
        let mut state: HashMap<(String, String), GroupState> = HashMap::new();
        let mut conns: HashMap<String, Connection> = HashMap::new();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!(interval = ?self.interval, "autoscaler running");
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            self.evaluate(&mut state, &mut conns, epoch).await;
        }
    }

    fn scopes(&self) -> Vec<Api<PipelineObject>> {
        let c = &self.client;
        if self.namespaces.is_empty() {
            vec![Api::all(c.clone())]
        } else {
            self.namespaces
                .iter()
                .map(|ns| Api::namespaced(c.clone(), ns))
                .collect()
        }
    }

    /// Pipelines with builtin groups, and the worker Deployments of exactly
    /// those pipelines by `ns/name`. Read from memory; a cache that has not
    /// finished its first list is replaced by one list per scope (pipelines)
    /// or per namespace that has such a pipeline (Deployments), none at all
    /// when no pipeline autoscales.
    async fn list(&self) -> Option<(Vec<Arc<StreamPipeline>>, HashMap<String, Deployment>)> {
        let mut pipelines: Vec<Arc<StreamPipeline>> = match self.pipelines.snapshot() {
            // A pipeline whose spec does not decode is reported by the
            // reconciler; the autoscaler leaves it and serves the rest.
            Some(ps) => ps
                .iter()
                .filter_map(|p| p.pipeline())
                .map(Arc::new)
                .collect(),
            None => self.list_pipelines().await?,
        };
        pipelines.retain(|sp| {
            sp.metadata.deletion_timestamp.is_none()
                && sp.spec.suspend != Some(true)
                && !groups_with(&sp.spec, AutoscaleEngine::Builtin).is_empty()
                && sluice_crds::validate(&sp.spec).is_empty()
        });
        let deployment_kind = owned_kinds().iter().find(|k| k.kind == "Deployment")?;
        let mut deployments = HashMap::new();
        let mut uncached: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for sp in &pipelines {
            let ns = sp.namespace().unwrap_or_default();
            let name = sp.name_any();
            match self.cache.objects(deployment_kind, &ns, &name) {
                Some(objects) => {
                    for o in objects {
                        if o.labels().get(labels::COMPONENT).map(String::as_str)
                            != Some(Component::Worker.as_str())
                        {
                            continue;
                        }
                        // The cache holds what the API server sent; a
                        // Deployment it cannot read is not scaled.
                        match o.try_parse::<Deployment>() {
                            Ok(d) => {
                                deployments.insert(format!("{ns}/{}", d.name_any()), d);
                            }
                            Err(e) => {
                                warn!(error = %e, namespace = %ns, "autoscaler cannot read a cached deployment");
                            }
                        }
                    }
                }
                None => uncached.entry(ns).or_default().push(name),
            }
        }
        for (ns, names) in uncached {
            let selector = format!(
                "{}={},{}={},{} in ({})",
                labels::MANAGED_BY,
                labels::MANAGER,
                labels::COMPONENT,
                Component::Worker.as_str(),
                labels::PIPELINE,
                names.join(",")
            );
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
            match api.list(&ListParams::default().labels(&selector)).await {
                Ok(ds) => {
                    for d in ds.items {
                        deployments.insert(format!("{ns}/{}", d.name_any()), d);
                    }
                }
                Err(e) => {
                    self.metrics.autoscaler.error("api");
                    warn!(error = %e, namespace = %ns, "autoscaler cannot list deployments");
                    return None;
                }
            }
        }
        Some((pipelines, deployments))
    }

    /// Every pipeline, from the API server (while the stores are not ready).
    async fn list_pipelines(&self) -> Option<Vec<Arc<StreamPipeline>>> {
        let mut pipelines = vec![];
        for api in self.scopes() {
            match api.list(&ListParams::default()).await {
                Ok(ps) => pipelines.extend(
                    ps.items
                        .iter()
                        .filter_map(PipelineObject::pipeline)
                        .map(Arc::new),
                ),
                Err(e) => {
                    self.metrics.autoscaler.error("api");
                    warn!(error = %e, "autoscaler cannot list pipelines");
                    return None;
                }
            }
        }
        Some(pipelines)
    }

    async fn evaluate(
        &self,
        state: &mut HashMap<(String, String), GroupState>,
        conns: &mut HashMap<String, Connection>,
        epoch: Instant,
    ) {
        let now = epoch.elapsed();
        let Some((pipelines, deployments)) = self.list().await else {
            return;
        };
        // Connections first (may read a Secret), then every read at once.
        let mut backends = HashMap::new();
        let mut url_errors = HashMap::new();
        for sp in &pipelines {
            let key = key_of(sp);
            let cached = conns.remove(&key);
            // Lazy: a Redis that does not answer holds up no evaluation.
            match Connection::refresh(
                &self.client,
                sp,
                Role::Autoscaler,
                cached,
                REDIS_TIMEOUT,
                false,
            )
            .await
            {
                Ok(c) => {
                    backends.insert(key.clone(), c.backend.clone());
                    conns.insert(key, c);
                }
                Err(e) => {
                    url_errors.insert(key, e);
                }
            }
        }
        let readings: Vec<PipelineReading> = stream::iter(pipelines)
            .map(|sp| {
                let key = key_of(&sp);
                let backend = backends.get(&key).cloned();
                let url_error = url_errors.get(&key).cloned();
                let deployments = &deployments;
                async move { read(sp, key, backend, url_error, deployments).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;

        let mut seen_groups = HashSet::new();
        let mut seen_pipelines = HashSet::new();
        for r in readings {
            seen_pipelines.insert(r.key.clone());
            // After a failure the Secrets are read again next time: a
            // rotated password, a new CA or a moved Redis gets a new
            // connection; the same target keeps the one that may still be
            // connecting.
            if r.redis_error.is_some() {
                if let Some(c) = conns.get_mut(&r.key) {
                    c.stale = true;
                }
            }
            self.decide_pipeline(&r, state, epoch, now, &mut seen_groups)
                .await;
        }
        // Forget pipelines and groups that no longer autoscale.
        let gone: Vec<_> = state
            .keys()
            .filter(|k| !seen_groups.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            state.remove(&k);
            let (namespace, pipeline) = k.0.split_once('/').unwrap_or_default();
            self.metrics.autoscaler.remove(&GroupLabel {
                namespace: namespace.into(),
                pipeline: pipeline.into(),
                group: k.1.clone(),
            });
        }
        conns.retain(|k, _| seen_pipelines.contains(k));
        self.facts.retain(&seen_pipelines);
    }

    async fn decide_pipeline(
        &self,
        r: &PipelineReading,
        state: &mut HashMap<(String, String), GroupState>,
        epoch: Instant,
        now: Duration,
        seen: &mut HashSet<(String, String)>,
    ) {
        let sp = &r.sp;
        let was_down = self.facts.get(&r.key).and_then(|f| f.redis_error).is_some();
        let mut changed = self.facts.update(&r.key, |f| {
            f.redis_error.clone_from(&r.redis_error);
        });
        if let Some(e) = &r.redis_error {
            self.metrics.autoscaler.error("redis");
            if !was_down {
                warn!(pipeline = %r.key, error = %e, "autoscaler cannot read the backlog; replicas left as they are");
                self.event(
                    sp,
                    EventType::Warning,
                    "AutoscalerRedisUnreachable",
                    format!("cannot read the backlog, replicas are left as they are: {e}"),
                )
                .await;
            }
        } else if was_down {
            info!(pipeline = %r.key, "autoscaler reads the backlog again");
        }
        let (namespace, name) = r.key.split_once('/').unwrap_or_default();
        let specs = groups_with(&sp.spec, AutoscaleEngine::Builtin);
        for reading in &r.groups {
            let Some((g, a)) = specs.iter().find(|(g, _)| g.name == reading.group) else {
                continue;
            };
            let p = params(g, a);
            let gkey = (r.key.clone(), reading.group.clone());
            seen.insert(gkey.clone());
            let st = state.entry(gkey).or_default();
            let (arrival, measured) = st.rates.observe(Sample {
                at: reading.read_at.saturating_duration_since(epoch),
                entries_added: reading.stats.entries_added,
                completed: reading.stats.completed(),
                waiting: reading.stats.waiting(),
                replicas: reading.ready,
            });
            let obs = algorithm::Observation {
                length: reading.stats.length,
                pending: reading.stats.pending,
                arrival_rate: arrival,
                measured_rate_per_replica: measured,
            };
            let rec = algorithm::recommend(&p, &obs);
            let label = GroupLabel {
                namespace: namespace.into(),
                pipeline: name.into(),
                group: reading.group.clone(),
            };
            let m = &self.metrics.autoscaler;
            m.backlog
                .get_or_create(&label)
                .set(gauge(reading.stats.length));
            m.pending
                .get_or_create(&label)
                .set(gauge(reading.stats.pending));
            m.arrival_rate
                .get_or_create(&label)
                .set(arrival.unwrap_or(0.0));
            m.rate_per_replica
                .get_or_create(&label)
                .set(p.rate_per_replica.or(measured).unwrap_or(0.0));
            m.recommended
                .get_or_create(&label)
                .set(i64::from(rec.replicas));
            debug!(pipeline = %r.key, group = %reading.group, ?obs, recommended = rec.replicas, current = reading.current, "evaluated");
            let d = if crate::pause::wanted(&sp.spec) {
                let key = crate::redis_users::key(
                    namespace,
                    name,
                    sp.metadata.uid.as_deref().unwrap_or_default(),
                );
                let holds = self.redis_users.paused(&key) == Some(true);
                let Some(d) = crate::pause::scale_down(reading.current, p.min, holds) else {
                    continue;
                };
                d
            } else {
                let Some(d) = algorithm::decide(&p, reading.current, &rec, &mut st.stab, now)
                else {
                    continue;
                };
                d
            };
            if self.scale(sp, namespace, reading, &d).await {
                let decision = ScaleDecision {
                    time: crate::clock::now_seconds(),
                    from: i32::try_from(d.from).unwrap_or(i32::MAX),
                    to: i32::try_from(d.to).unwrap_or(i32::MAX),
                    reason: d.reason.clone(),
                };
                changed |= self.facts.update(&r.key, |f| {
                    f.decisions.insert(reading.group.clone(), decision);
                });
            }
        }
        if changed {
            // The receivers are the controllers; none (shutting down) is fine.
            let _ = self.trigger.send(pipeline_ref(sp));
        }
    }

    /// Writes the new replica count; true when it was written.
    async fn scale(
        &self,
        sp: &StreamPipeline,
        namespace: &str,
        reading: &Reading,
        d: &algorithm::Decision,
    ) -> bool {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let body = json!({"spec": {"replicas": d.to}});
        if let Err(e) = api
            .patch_scale(&reading.deployment, &pp, &Patch::Merge(&body))
            .await
        {
            self.metrics.autoscaler.error("api");
            warn!(deployment = %reading.deployment, error = %e, "cannot scale");
            return false;
        }
        let direction = if d.to > d.from { "up" } else { "down" };
        self.metrics
            .autoscaler
            .scalings
            .get_or_create(&DirectionLabel { direction })
            .inc();
        info!(deployment = %reading.deployment, from = d.from, to = d.to, reason = %d.reason, "scaled");
        self.event(
            sp,
            EventType::Normal,
            "Scaled",
            format!(
                "group {}: {} → {} replicas: {}",
                reading.group, d.from, d.to, d.reason
            ),
        )
        .await;
        true
    }

    async fn event(&self, sp: &StreamPipeline, type_: EventType, reason: &str, note: String) {
        let published = self
            .events
            .publish(&sp.object_ref(&()), type_, reason, "Autoscale", &note)
            .await;
        if let Err(e) = published {
            warn!(error = %e, reason, "cannot publish event");
        }
    }
}

/// The reconcile request for `sp`.
fn pipeline_ref(sp: &StreamPipeline) -> ObjectRef<PipelineObject> {
    let r = ObjectRef::new(&sp.name_any());
    match sp.metadata.namespace.as_deref() {
        Some(ns) => r.within(ns),
        None => r,
    }
}

fn key_of(sp: &StreamPipeline) -> String {
    format!("{}/{}", sp.namespace().unwrap_or_default(), sp.name_any())
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reads every builtin group of one pipeline: its Deployment's replicas and
/// its queue's counters. A Redis failure stops the reading (no group of
/// the pipeline changes this round); a Deployment not created yet skips its group.
async fn read(
    sp: Arc<StreamPipeline>,
    key: String,
    backend: Option<Arc<RedisBackend>>,
    url_error: Option<String>,
    deployments: &HashMap<String, Deployment>,
) -> PipelineReading {
    let mut out = PipelineReading {
        sp: sp.clone(),
        key,
        groups: vec![],
        redis_error: url_error,
    };
    let Some(backend) = backend else {
        return out;
    };
    let ns = sp.namespace().unwrap_or_default();
    let name = sp.name_any();
    let keys = Keys::new(&ns, &name);
    for (g, _) in groups_with(&sp.spec, AutoscaleEngine::Builtin) {
        let deployment = names::group(&name, &g.name);
        let Some(d) = deployments.get(&format!("{ns}/{deployment}")) else {
            continue;
        };
        let stats = match backend.stream_stats(&keys.queue(&g.name)).await {
            Ok(s) => s,
            Err(e) => {
                out.redis_error = Some(e.to_string());
                out.groups.clear();
                return out;
            }
        };
        let replicas = |v: Option<i32>| u32::try_from(v.unwrap_or(0)).unwrap_or(0);
        out.groups.push(Reading {
            group: g.name.clone(),
            deployment,
            // The API server defaults an absent replicas field to 1.
            current: replicas(d.spec.as_ref().and_then(|s| s.replicas).or(Some(1))),
            ready: replicas(d.status.as_ref().and_then(|s| s.ready_replicas)),
            stats,
            read_at: Instant::now(),
        });
    }
    out
}
