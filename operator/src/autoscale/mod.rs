//! Autoscaling of worker groups (DESIGN §4 "Autoscaling workers").
//!
//! ```text
//!                       every --autoscale-interval, leader only
//! list StreamPipelines ─┐
//! list their workers ───┼─▶ per builtin group: StreamStats from Redis ─▶ Rates ─▶ recommend ─▶ decide
//! P-redis / urlSecretRef┘                                                              │ change
//!                          PATCH deployments/<P-group>/scale (field manager sluice-autoscaler) ◀┘
//!                          Event "Scaled" · Facts (last decision, Redis errors) ─▶ reconcile ─▶ status
//! ```
//!
//! Engines (`spec.groups[].autoscale.engine`):
//! - `builtin` (default): [`engine::Autoscaler`], this module's loop, backlog
//!   and rate driven ([`algorithm`]).
//! - `hpa`: an autoscaling/v2 HorizontalPodAutoscaler on CPU (rendered by
//!   [`crate::render::autoscale`]); the operator never writes that group's
//!   replicas.
//! - `keda`: a KEDA `ScaledObject` with the `redis-streams` trigger on the
//!   group's stream, and a `TriggerAuthentication` for the Redis password
//!   (rendered by [`crate::render::autoscale`] too). Without the KEDA CRDs
//!   the pipeline says so in its `Autoscaling` condition.
//!
//! Every engine sees a worker Deployment applied without `replicas`, so the
//! operator's own apply never fights it; exactly one engine owns a group.
//!
//! Safety: Redis unreachable → no change (condition and event); a new
//! leader observes a whole stabilisation window before any scale-down;
//! `spec.suspend` stops all scaling of the pipeline. A paused pipeline
//! (`spec.paused`) is never scaled up; once Redis holds the pause its
//! builtin groups go to `minReplicas` (zero where allowed), and its KEDA
//! groups are paused at theirs (`autoscaling.keda.sh/paused-replicas`).
//!
//! This module must not write anything but `/scale` of the worker
//! Deployments of builtin groups, and events.

pub mod algorithm;
pub mod engine;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use parking_lot::Mutex;
use sluice_crds::{
    AutoscaleEngine, AutoscaleSpec, BackendKind, GroupRole, GroupSpec, Plan, ScaleDecision,
    StreamPipelineSpec,
};

pub use engine::Autoscaler;

/// Field manager of the builtin autoscaler's `/scale` writes.
pub const FIELD_MANAGER: &str = "sluice-autoscaler";

/// Defaults of the `autoscale` block.
pub const DEFAULT_MIN_REPLICAS: i32 = 1;
pub const DEFAULT_TARGET_BACKLOG: u32 = 50;
pub const DEFAULT_SCALE_DOWN_WINDOW: Duration = Duration::from_secs(300);

/// Status condition type reporting whether autoscaling works.
pub const CONDITION: &str = "Autoscaling";
/// Status condition type warning about scale-from-zero latency.
pub const COLD_START_CONDITION: &str = "ColdStartRisk";

/// Condition reasons.
pub mod reason {
    /// Every autoscaled group's engine is in place and reading its input.
    pub const ACTIVE: &str = "Active";
    /// The builtin autoscaler cannot read the backlog; replicas are left as they are.
    pub const REDIS_UNREACHABLE: &str = "RedisUnreachable";
    /// A group asks for `engine: keda` and the KEDA CRDs are not installed.
    pub const KEDA_NOT_INSTALLED: &str = "KedaNotInstalled";
    /// An interface's timeout is shorter than a cold start of a group that can be at zero.
    pub const TIMEOUT_BELOW_COLD_START: &str = "TimeoutBelowColdStart";
}

/// The worker groups of `spec` that `engine` scales (none in the memory
/// profile, where worker groups run inside the ingress pods).
pub fn groups_with(
    spec: &StreamPipelineSpec,
    engine: AutoscaleEngine,
) -> Vec<(&GroupSpec, &AutoscaleSpec)> {
    if spec.backends.queue != BackendKind::Redis {
        return vec![];
    }
    spec.groups
        .iter()
        .filter(|g| g.role == GroupRole::Worker)
        .filter_map(|g| g.autoscale.as_ref().map(|a| (g, a)))
        .filter(|(_, a)| a.engine == engine)
        .collect()
}

/// The builtin autoscaler's parameters for one group, defaults applied.
/// Validation has refused out-of-range values; this clamps rather than fails.
pub fn params(g: &GroupSpec, a: &AutoscaleSpec) -> algorithm::Params {
    let dur = |s: &Option<String>| {
        s.as_deref()
            .and_then(|s| sluice_crds::units::parse_duration(s).ok())
    };
    let min = u32::try_from(a.min_replicas.unwrap_or(DEFAULT_MIN_REPLICAS)).unwrap_or(0);
    algorithm::Params {
        min,
        max: u32::try_from(a.max_replicas).unwrap_or(0).max(min),
        target_backlog: a
            .target_backlog_per_replica
            .unwrap_or(DEFAULT_TARGET_BACKLOG)
            .max(1),
        rate_per_replica: a.target_rate_per_replica,
        processing_time: dur(&a.target_processing_time),
        concurrency: g
            .concurrency
            .unwrap_or(sluice_crds::plan::DEFAULT_CONCURRENCY),
        down_window: dur(&a.scale_down_stabilization).unwrap_or(DEFAULT_SCALE_DOWN_WINDOW),
    }
}

/// What the builtin autoscaler knows about one pipeline, for its status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineScaling {
    /// The last decision that changed replicas, per group, made by this process.
    pub decisions: BTreeMap<String, ScaleDecision>,
    /// Why the backlog could not be read at the last evaluation.
    pub redis_error: Option<String>,
}

/// The autoscaler's findings, shared with the reconciler (which writes
/// them into status), by `namespace/name`.
#[derive(Debug, Default)]
pub struct Facts {
    inner: Mutex<HashMap<String, PipelineScaling>>,
}

impl Facts {
    pub fn get(&self, key: &str) -> Option<PipelineScaling> {
        self.inner.lock().get(key).cloned()
    }

    /// Applies `f` to the entry of `key`; true when that changed it.
    pub fn update(&self, key: &str, f: impl FnOnce(&mut PipelineScaling)) -> bool {
        let mut inner = self.inner.lock();
        let entry = inner.entry(key.to_string()).or_default();
        let before = entry.clone();
        f(entry);
        *entry != before
    }

    /// Forgets pipelines other than `keep`.
    pub fn retain(&self, keep: &HashSet<String>) {
        self.inner.lock().retain(|k, _| keep.contains(k));
    }
}

/// A condition as `(type, status, reason, message)`.
pub type ConditionParts = (String, bool, String, String);

/// The `Autoscaling` condition, when some group autoscales.
///
/// False with `KedaNotInstalled` when a `keda` group cannot get its
/// ScaledObject, or `RedisUnreachable` when the builtin autoscaler could
/// not read the backlog at its last evaluation (replicas are left alone).
pub fn condition(
    spec: &StreamPipelineSpec,
    scaling: Option<&PipelineScaling>,
    keda_missing: bool,
) -> Option<ConditionParts> {
    let builtin = groups_with(spec, AutoscaleEngine::Builtin);
    let hpa = groups_with(spec, AutoscaleEngine::Hpa);
    let keda = groups_with(spec, AutoscaleEngine::Keda);
    if builtin.is_empty() && hpa.is_empty() && keda.is_empty() {
        return None;
    }
    let names = |v: &[(&GroupSpec, &AutoscaleSpec)]| {
        v.iter()
            .map(|(g, _)| g.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let c = |ok: bool, reason: &str, message: String| {
        Some((CONDITION.to_string(), ok, reason.to_string(), message))
    };
    if keda_missing && !keda.is_empty() {
        return c(
            false,
            reason::KEDA_NOT_INSTALLED,
            format!(
                "groups {} use engine keda, but the keda.sh ScaledObject API is not installed; their replicas stay as they are",
                names(&keda)
            ),
        );
    }
    if let Some(e) = scaling
        .and_then(|s| s.redis_error.as_ref())
        .filter(|_| !builtin.is_empty())
    {
        return c(
            false,
            reason::REDIS_UNREACHABLE,
            format!("cannot read the backlog, replicas are left as they are: {e}"),
        );
    }
    let mut parts = vec![];
    for (engine, v) in [("builtin", &builtin), ("hpa", &hpa), ("keda", &keda)] {
        if !v.is_empty() {
            parts.push(format!("{engine}: {}", names(v)));
        }
    }
    c(true, reason::ACTIVE, parts.join("; "))
}

/// The `ColdStartRisk` condition: True when a group that can be scaled to
/// zero lies on the path of an interface whose timeout is shorter than
/// `cold_start`, so a request arriving at zero replicas may time out.
pub fn cold_start_risk(
    spec: &StreamPipelineSpec,
    plan: &Plan,
    cold_start: Duration,
) -> Option<ConditionParts> {
    let at_zero: Vec<&str> = [AutoscaleEngine::Builtin, AutoscaleEngine::Keda]
        .into_iter()
        .flat_map(|e| groups_with(spec, e))
        .filter(|(_, a)| a.min_replicas == Some(0))
        .map(|(g, _)| g.name.as_str())
        .collect();
    let risks: Vec<String> = plan
        .interfaces
        .iter()
        .filter(|i| i.timeout < cold_start)
        .flat_map(|i| {
            i.path_groups
                .iter()
                .filter(|g| at_zero.contains(&g.as_str()))
                .map(move |g| {
                    format!(
                        "interface {} (timeout {}s) crosses group {g}, which can be at zero replicas",
                        i.name,
                        i.timeout.as_secs_f64()
                    )
                })
        })
        .collect();
    (!risks.is_empty()).then(|| {
        (
            COLD_START_CONDITION.to_string(),
            true,
            reason::TIMEOUT_BELOW_COLD_START.to_string(),
            format!(
                "{}; a cold start takes about {}s (--cold-start): requests arriving at zero may time out",
                risks.join("; "),
                cold_start.as_secs()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::{compile, PipelineId};

    fn spec(extra: &str) -> StreamPipelineSpec {
        sluice_crds::yaml::from_str(&format!(
            "backends: {{queue: redis, kv: redis, reply: redis}}
interfaces: [{{name: api, path: /a, entry: a, timeout: 5s}}, {{name: slow, path: /b, entry: a, timeout: 60s}}]
groups:
  - {{name: web, role: ingress}}
  - {{name: cpu, role: worker, concurrency: 4, autoscale: {{minReplicas: 0, maxReplicas: 9{extra}}}}}
  - {{name: io, role: worker, autoscale: {{engine: keda, maxReplicas: 3}}}}
nodes: [{{name: a, group: web, uses: builtin/echo, next: b}}, {{name: b, group: cpu, uses: builtin/echo}}]
"
        ))
        .unwrap()
    }

    #[test]
    fn params_apply_the_documented_defaults() {
        let s = spec("");
        let (g, a) = groups_with(&s, AutoscaleEngine::Builtin)[0];
        let p = params(g, a);
        assert_eq!(
            (p.min, p.max, p.target_backlog, p.concurrency),
            (0, 9, 50, 4)
        );
        assert_eq!(p.down_window, DEFAULT_SCALE_DOWN_WINDOW);
        let s = spec(
            ", targetRatePerReplica: 2.5, targetProcessingTime: 30s, scaleDownStabilization: 0s",
        );
        let (g, a) = groups_with(&s, AutoscaleEngine::Builtin)[0];
        let p = params(g, a);
        assert_eq!(p.rate_per_replica, Some(2.5));
        assert_eq!(p.processing_time, Some(Duration::from_secs(30)));
        assert_eq!(p.down_window, Duration::ZERO);
    }

    #[test]
    fn memory_pipelines_have_no_autoscaled_groups() {
        let mut s = spec("");
        s.backends.queue = BackendKind::Memory;
        assert!(groups_with(&s, AutoscaleEngine::Builtin).is_empty());
        assert_eq!(condition(&s, None, true), None);
    }

    #[test]
    fn the_condition_names_what_is_wrong_first() {
        let s = spec("");
        let (_, ok, r, m) = condition(&s, None, false).unwrap();
        assert!(ok);
        assert_eq!(r, reason::ACTIVE);
        assert_eq!(m, "builtin: cpu; keda: io");
        let down = PipelineScaling {
            redis_error: Some("redis: connection refused".into()),
            ..Default::default()
        };
        let (_, ok, r, m) = condition(&s, Some(&down), false).unwrap();
        assert!(!ok);
        assert_eq!(r, reason::REDIS_UNREACHABLE);
        assert!(m.contains("connection refused"), "{m}");
        let (_, ok, r, _) = condition(&s, Some(&down), true).unwrap();
        assert_eq!((ok, r.as_str()), (false, reason::KEDA_NOT_INSTALLED));
    }

    #[test]
    fn a_timeout_shorter_than_a_cold_start_is_flagged_for_groups_at_zero() {
        let s = spec("");
        let plan = compile(
            PipelineId {
                namespace: "ns".into(),
                name: "p".into(),
            },
            &s,
        )
        .unwrap();
        let (_, risky, _, m) = cold_start_risk(&s, &plan, Duration::from_secs(20)).unwrap();
        assert!(risky);
        assert!(
            m.contains("interface api (timeout 5s) crosses group cpu"),
            "{m}"
        );
        assert!(!m.contains("slow"), "{m}");
        assert_eq!(cold_start_risk(&s, &plan, Duration::from_secs(3)), None);
        let s = spec("").clone();
        let mut s1 = s.clone();
        s1.groups[1].autoscale.as_mut().unwrap().min_replicas = Some(1);
        assert_eq!(cold_start_risk(&s1, &plan, Duration::from_secs(20)), None);
    }
}
