//! The status of a StreamPipeline, computed from what the cluster reports
//! about its workloads (DESIGN §3–4). Pure, so every rule is unit-tested.
//!
//! ```text
//! live Deployments / StatefulSet ─▶ Readiness per workload ─┐
//! validity of the spec ─────────────────────────────────────┼─▶ StreamPipelineStatus
//! previous status (lastTransitionTime, lastScale) ──────────┘     (Ready, Progressing, Degraded,
//!                                                                   groups, readyGroups, ingressUrl)
//! ```
//!
//! Readiness of a workload: its controller has seen the current generation
//! (`observedGeneration ≥ generation`) and `updatedReplicas ==
//! availableReplicas == replicas`, plus `currentRevision == updateRevision`
//! for a StatefulSet. `replicas` is the spec's, except for autoscaled
//! Deployments, whose size the autoscaler owns: there it is the number of
//! pods the Deployment has. A Deployment reporting `Progressing=False,
//! reason=ProgressDeadlineExceeded` makes the pipeline `Degraded`.
//!
//! A condition keeps its `lastTransitionTime` while its status does not
//! change, so recomputing an unchanged status gives an equal value and the
//! reconciler writes nothing.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::collections::BTreeMap;

use sluice_crds::{GroupStatus, ScaleDecision, StreamPipelineStatus};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// Condition reasons this operator writes.
pub mod reason {
    /// Every workload runs the current spec with all replicas available.
    pub const READY: &str = "AllReplicasReady";
    /// A workload is rolling out or scaling.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// A Deployment gave up progressing.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// The spec breaks a rule the schema could not express.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// `spec.suspend` is true: the operator changes nothing.
    pub const SUSPENDED: &str = "Suspended";
    /// Nothing is wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// The rollout finished.
    pub const COMPLETE: &str = "RolloutComplete";
    /// An object of the pipeline's exists and is not the pipeline's.
    pub const CONFLICT: &str = "Conflict";
    /// `redis.storage` is smaller than the volumes hold: nothing shrinks.
    pub const STORAGE_SHRINK_REFUSED: &str = "StorageShrinkRefused";
    /// `redis.storageClassName` differs from the class of the existing
    /// volume: a bound claim cannot move.
    pub const STORAGE_CLASS_CHANGE_REFUSED: &str = "StorageClassChangeRefused";
    /// The API server refused to expand a volume claim (its StorageClass
    /// does not allow expansion).
    pub const STORAGE_RESIZE_REFUSED: &str = "StorageResizeRefused";
    /// A Secret the spec names (`redis.urlSecretRef`, `redis.caSecretRef`)
    /// does not exist or lacks the key: the pods cannot start.
    pub const SECRET_MISSING: &str = "SecretMissing";
    /// A Secret a node or a sidecar names is absent or lacks the label
    /// `sluice.dev/allow-reference: "true"`: nothing is applied.
    pub const SECRET_REFERENCE_REFUSED: &str = "SecretReferenceRefused";
}

/// Where one workload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Ready,
    /// Not there yet; the text says what is awaited.
    Rolling(String),
    /// Its controller reported that it stopped progressing.
    Stuck(String),
}

/// One workload of the pipeline as the status sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// `Deployment/P-cpu`.
    pub workload: String,
    /// The group it runs, `None` for managed Redis.
    pub group: Option<String>,
    pub desired: i32,
    pub ready: i32,
    pub progress: Progress,
}

impl Readiness {
    /// A desired workload that does not exist (yet).
    pub fn missing(workload: String, group: Option<String>, desired: i32) -> Self {
        Self {
            progress: Progress::Rolling(format!("{workload} does not exist yet")),
            workload,
            group,
            desired,
            ready: 0,
        }
    }

    /// Readiness of a live Deployment. `autoscaled` when the operator
    /// applied it without `replicas`.
    pub fn of_deployment(d: &Deployment, group: Option<String>, autoscaled: bool) -> Self {
        let workload = format!("Deployment/{}", d.metadata.name.as_deref().unwrap_or(""));
        let generation = d.metadata.generation.unwrap_or(0);
        let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let st = d.status.clone().unwrap_or_default();
        let current = st.replicas.unwrap_or(0);
        let desired = if autoscaled && current > 0 {
            current
        } else {
            spec_replicas
        };
        let updated = st.updated_replicas.unwrap_or(0);
        let available = st.available_replicas.unwrap_or(0);
        let ready = st.ready_replicas.unwrap_or(0);
        let stuck = st.conditions.iter().flatten().find(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some(reason::PROGRESS_DEADLINE_EXCEEDED)
        });
        let progress = if let Some(c) = stuck {
            Progress::Stuck(format!(
                "{workload}: {}",
                c.message.as_deref().unwrap_or("progress deadline exceeded")
            ))
        } else if st.observed_generation.unwrap_or(0) < generation {
            Progress::Rolling(format!(
                "{workload}: generation {generation} not yet observed"
            ))
        } else if updated != desired || available != desired {
            Progress::Rolling(format!(
                "{workload}: {updated}/{desired} updated, {available}/{desired} available"
            ))
        } else if current > updated {
            // A surge rollout: the old pods still count as available.
            Progress::Rolling(format!(
                "{workload}: {} old replica(s) pending termination",
                current - updated
            ))
        } else {
            Progress::Ready
        };
        Self {
            workload,
            group,
            desired,
            ready,
            progress,
        }
    }

    /// Readiness of a live StatefulSet.
    pub fn of_stateful_set(s: &StatefulSet, group: Option<String>) -> Self {
        let workload = format!("StatefulSet/{}", s.metadata.name.as_deref().unwrap_or(""));
        let generation = s.metadata.generation.unwrap_or(0);
        let desired = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let st = s.status.clone().unwrap_or_default();
        let updated = st.updated_replicas.unwrap_or(0);
        let available = st.available_replicas.unwrap_or(0);
        let progress = if st.observed_generation.unwrap_or(0) < generation {
            Progress::Rolling(format!(
                "{workload}: generation {generation} not yet observed"
            ))
        } else if updated != desired || available != desired {
            Progress::Rolling(format!(
                "{workload}: {updated}/{desired} updated, {available}/{desired} available"
            ))
        } else if st.current_revision != st.update_revision {
            Progress::Rolling(format!("{workload}: revision update in progress"))
        } else {
            Progress::Ready
        };
        Self {
            workload,
            group,
            desired,
            ready: st.ready_replicas.unwrap_or(0),
            progress,
        }
    }
}

/// Whether the spec could be turned into objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validity {
    Valid,
    /// `desired` refused the spec; the text lists every violated rule.
    /// With `workloads` empty this is a new pipeline and nothing was created;
    /// otherwise the objects of the last valid spec keep running.
    Invalid(String),
    /// The spec names Secrets that are absent or not open to pipelines
    /// (one line each, see [`crate::referenced`]): nothing is applied, as
    /// for an invalid spec, until each carries the opt-in label.
    SecretsRefused(String),
}

impl Validity {
    /// `(reason, why)` when the spec is not applied.
    pub fn refusal(&self) -> Option<(&'static str, &str)> {
        match self {
            Validity::Valid => None,
            Validity::Invalid(errors) => Some((reason::INVALID_SPEC, errors)),
            Validity::SecretsRefused(why) => Some((reason::SECRET_REFERENCE_REFUSED, why)),
        }
    }
}

/// Everything the status is computed from.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// `metadata.generation` of the StreamPipeline.
    pub generation: Option<i64>,
    pub previous: Option<&'a StreamPipelineStatus>,
    pub validity: Validity,
    /// `spec.suspend`.
    pub suspended: bool,
    /// The workloads, in apply order.
    pub workloads: Vec<Readiness>,
    pub ingress_url: Option<String>,
    /// Used for conditions whose status changed.
    pub now: Time,
    /// Decisions of this process's autoscaler by group; they replace the
    /// previous status's `lastScale` (kept otherwise, e.g. after a leader change).
    pub decisions: BTreeMap<String, ScaleDecision>,
    /// A reason the applied objects cannot fully follow a valid spec
    /// (`(reason, message)`, e.g. managed Redis's storage cannot shrink):
    /// `Degraded=True` while the running objects keep serving.
    pub degraded: Option<(String, String)>,
    /// Conditions beyond Ready/Progressing/Degraded (`Autoscaling`,
    /// `ColdStartRisk`), as `(type, status, reason, message)`.
    pub extra: Vec<(String, bool, String, String)>,
}

/// The status for `inputs`.
///
/// # Guarantees
/// Deterministic; equal inputs with the previous status set to the output
/// give the same output again (so an unchanged pipeline is never rewritten).
pub fn compute(inputs: &Inputs<'_>) -> StreamPipelineStatus {
    let refused_new = inputs
        .validity
        .refusal()
        .filter(|_| inputs.workloads.is_empty());
    let waiting: Vec<&str> = inputs
        .workloads
        .iter()
        .filter_map(|w| match &w.progress {
            Progress::Rolling(m) => Some(m.as_str()),
            _ => None,
        })
        .collect();
    let stuck: Vec<&str> = inputs
        .workloads
        .iter()
        .filter_map(|w| match &w.progress {
            Progress::Stuck(m) => Some(m.as_str()),
            _ => None,
        })
        .collect();

    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        (type_.to_string(), ok, reason.to_string(), message)
    };
    let mut conditions = Vec::with_capacity(3 + inputs.extra.len());
    match refused_new {
        Some((why_not, errors)) => {
            let message = format!("nothing was created: {errors}");
            conditions.push(cond(READY, false, why_not, message.clone()));
            conditions.push(cond(PROGRESSING, false, why_not, message.clone()));
            conditions.push(cond(DEGRADED, true, why_not, message));
        }
        None => {
            if !stuck.is_empty() {
                let message = stuck.join("; ");
                conditions.push(cond(
                    READY,
                    false,
                    reason::PROGRESS_DEADLINE_EXCEEDED,
                    message.clone(),
                ));
                conditions.push(cond(
                    PROGRESSING,
                    false,
                    reason::PROGRESS_DEADLINE_EXCEEDED,
                    message,
                ));
            } else if !waiting.is_empty() {
                let message = waiting.join("; ");
                let progressing = if inputs.suspended {
                    cond(PROGRESSING, false, reason::SUSPENDED, message.clone())
                } else {
                    cond(PROGRESSING, true, reason::ROLLING_OUT, message.clone())
                };
                conditions.push(cond(READY, false, reason::ROLLING_OUT, message));
                conditions.push(progressing);
            } else {
                let message = format!("{} workload(s) ready", inputs.workloads.len());
                conditions.push(cond(READY, true, reason::READY, message.clone()));
                conditions.push(if inputs.suspended {
                    cond(PROGRESSING, false, reason::SUSPENDED, message)
                } else {
                    cond(PROGRESSING, false, reason::COMPLETE, message)
                });
            }
            conditions.push(match &inputs.validity {
                Validity::Invalid(errors) => cond(
                    DEGRADED,
                    true,
                    reason::INVALID_SPEC,
                    format!(
                        "generation {} is invalid and was not applied; the objects of the last valid spec keep running: {errors}",
                        inputs.generation.unwrap_or(0)
                    ),
                ),
                // The running objects may be of this very generation (a
                // label removed after they were applied): say nothing of
                // which generation they run.
                Validity::SecretsRefused(why) => cond(
                    DEGRADED,
                    true,
                    reason::SECRET_REFERENCE_REFUSED,
                    format!("not applied, the running objects are left as they are: {why}"),
                ),
                Validity::Valid if !stuck.is_empty() => cond(
                    DEGRADED,
                    true,
                    reason::PROGRESS_DEADLINE_EXCEEDED,
                    stuck.join("; "),
                ),
                Validity::Valid => match &inputs.degraded {
                    Some((r, message)) => cond(DEGRADED, true, r, message.clone()),
                    None => cond(DEGRADED, false, reason::AS_EXPECTED, String::new()),
                },
            });
        }
    }

    conditions.extend(inputs.extra.iter().cloned());
    let previous = inputs.previous;
    let conditions = conditions
        .into_iter()
        .map(|(type_, ok, reason, message)| {
            let status = if ok { "True" } else { "False" }.to_string();
            let last_transition_time = previous
                .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
                .filter(|c| c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| inputs.now.clone());
            Condition {
                type_,
                status,
                reason,
                message: truncate(message, MAX_MESSAGE),
                observed_generation: inputs.generation,
                last_transition_time,
            }
        })
        .collect();

    let groups: Vec<GroupStatus> = inputs
        .workloads
        .iter()
        .filter_map(|w| {
            let name = w.group.clone()?;
            let last_scale = inputs.decisions.get(&name).cloned().or_else(|| {
                previous
                    .and_then(|p| p.groups.iter().find(|g| g.name == name))
                    .and_then(|g| g.last_scale.clone())
            });
            Some(GroupStatus {
                name,
                desired_replicas: Some(w.desired),
                ready_replicas: Some(w.ready),
                last_scale,
            })
        })
        .collect();
    let ready_groups = (!groups.is_empty()).then(|| {
        let ready = inputs
            .workloads
            .iter()
            .filter(|w| w.group.is_some() && w.progress == Progress::Ready)
            .count();
        format!("{ready}/{}", groups.len())
    });

    StreamPipelineStatus {
        observed_generation: inputs.generation,
        conditions,
        groups,
        ready_groups,
        ingress_url: if refused_new.is_some() {
            None
        } else {
            inputs.ingress_url.clone()
        },
        // Written by the queue observer, apart (`crate::observe`).
        queues: None,
    }
}

/// Condition messages are capped (the API allows 32768 bytes) to keep status small.
const MAX_MESSAGE: usize = 2048;

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The condition of `type_`, if present.
pub fn condition<'a>(status: &'a StreamPipelineStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use k8s_openapi::api::apps::v1::{
        DeploymentCondition, DeploymentSpec, DeploymentStatus, StatefulSetSpec, StatefulSetStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn t(s: i64) -> Time {
        crate::clock::time_of(Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap())
    }

    fn deploy(spec: Option<i32>, generation: i64, st: DeploymentStatus) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("p-cpu".into()),
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: spec,
                ..Default::default()
            }),
            status: Some(st),
        }
    }

    fn rolled(n: i32, observed: i64) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(n),
            updated_replicas: Some(n),
            available_replicas: Some(n),
            ready_replicas: Some(n),
            ..Default::default()
        }
    }

    fn inputs(workloads: Vec<Readiness>, previous: Option<&StreamPipelineStatus>) -> Inputs<'_> {
        Inputs {
            generation: Some(3),
            previous,
            validity: Validity::Valid,
            suspended: false,
            workloads,
            ingress_url: Some("http://p.demo.svc".into()),
            now: t(0),
            decisions: BTreeMap::new(),
            degraded: None,
            extra: vec![],
        }
    }

    fn cond<'a>(s: &'a StreamPipelineStatus, type_: &str) -> (&'a str, &'a str) {
        let c = condition(s, type_).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_rolled_out_deployment_is_ready() {
        let r =
            Readiness::of_deployment(&deploy(Some(2), 4, rolled(2, 4)), Some("cpu".into()), false);
        assert_eq!(r.progress, Progress::Ready);
        assert_eq!((r.desired, r.ready), (2, 2));
        let s = compute(&inputs(vec![r], None));
        assert_eq!(cond(&s, READY), ("True", reason::READY));
        assert_eq!(cond(&s, PROGRESSING), ("False", reason::COMPLETE));
        assert_eq!(cond(&s, DEGRADED), ("False", reason::AS_EXPECTED));
        assert_eq!(s.ready_groups.as_deref(), Some("1/1"));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.groups[0].desired_replicas, Some(2));
    }

    #[test]
    fn an_unobserved_generation_or_a_partial_rollout_is_progressing() {
        let old = Readiness::of_deployment(&deploy(Some(2), 5, rolled(2, 4)), None, false);
        assert!(matches!(old.progress, Progress::Rolling(_)));
        let mut half = rolled(2, 5);
        half.updated_replicas = Some(1);
        let r = Readiness::of_deployment(&deploy(Some(2), 5, half), Some("cpu".into()), false);
        let s = compute(&inputs(vec![r], None));
        assert_eq!(cond(&s, READY), ("False", reason::ROLLING_OUT));
        assert_eq!(cond(&s, PROGRESSING), ("True", reason::ROLLING_OUT));
        assert!(condition(&s, READY)
            .unwrap()
            .message
            .contains("1/2 updated"));
        assert_eq!(s.ready_groups.as_deref(), Some("0/1"));
    }

    #[test]
    fn old_pods_still_running_keep_a_surge_rollout_progressing() {
        // Two new pods created, one old still up and counted as available.
        let mut surge = rolled(2, 5);
        surge.replicas = Some(3);
        let r = Readiness::of_deployment(&deploy(Some(2), 5, surge), None, false);
        match &r.progress {
            Progress::Rolling(m) => assert!(m.contains("1 old replica(s)"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn autoscaler_decisions_replace_last_scale_and_extra_conditions_are_kept() {
        let w = vec![Readiness {
            workload: "Deployment/p-cpu".into(),
            group: Some("cpu".into()),
            desired: 3,
            ready: 3,
            progress: Progress::Ready,
        }];
        let decision = |to: i32| ScaleDecision {
            time: t(5),
            from: 1,
            to,
            reason: "backlog 120 at 50 per replica".into(),
        };
        let mut i = inputs(w.clone(), None);
        i.decisions.insert("cpu".into(), decision(3));
        i.extra.push((
            "Autoscaling".into(),
            false,
            "RedisUnreachable".into(),
            "down".into(),
        ));
        let s1 = compute(&i);
        assert_eq!(s1.groups[0].last_scale, Some(decision(3)));
        assert_eq!(cond(&s1, "Autoscaling"), ("False", "RedisUnreachable"));
        // Another process (a new leader) without decisions keeps the last one.
        let mut i2 = inputs(w, Some(&s1));
        i2.now = t(60);
        i2.extra = i.extra.clone();
        let s2 = compute(&i2);
        assert_eq!(s2, s1, "an unchanged status is not rewritten");
    }

    #[test]
    fn an_autoscaled_deployment_is_measured_by_its_pods_not_the_spec() {
        // The autoscaler set spec.replicas to 5 and the pods exist: ready.
        let r = Readiness::of_deployment(&deploy(Some(5), 1, rolled(5, 1)), None, true);
        assert_eq!(r.progress, Progress::Ready);
        // Before any pod exists the spec says how many are awaited.
        let r = Readiness::of_deployment(&deploy(Some(1), 1, rolled(0, 1)), None, true);
        assert!(matches!(r.progress, Progress::Rolling(_)));
    }

    #[test]
    fn progress_deadline_exceeded_is_degraded() {
        let mut st = rolled(1, 2);
        st.updated_replicas = Some(0);
        st.conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet has timed out progressing.".into()),
            ..Default::default()
        }]);
        let r = Readiness::of_deployment(&deploy(Some(1), 2, st), Some("cpu".into()), false);
        let s = compute(&inputs(vec![r], None));
        assert_eq!(
            cond(&s, DEGRADED),
            ("True", reason::PROGRESS_DEADLINE_EXCEEDED)
        );
        assert_eq!(cond(&s, READY).0, "False");
        assert_eq!(cond(&s, PROGRESSING).0, "False");
    }

    #[test]
    fn a_stateful_set_waits_for_its_revision() {
        let mut s = StatefulSet {
            metadata: ObjectMeta {
                name: Some("p-redis".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(1),
                ..Default::default()
            }),
            status: Some(StatefulSetStatus {
                observed_generation: Some(1),
                replicas: 1,
                ready_replicas: Some(1),
                updated_replicas: Some(1),
                available_replicas: Some(1),
                current_revision: Some("a".into()),
                update_revision: Some("b".into()),
                ..Default::default()
            }),
        };
        assert!(matches!(
            Readiness::of_stateful_set(&s, None).progress,
            Progress::Rolling(_)
        ));
        s.status.as_mut().unwrap().current_revision = Some("b".into());
        assert_eq!(
            Readiness::of_stateful_set(&s, None).progress,
            Progress::Ready
        );
    }

    #[test]
    fn an_invalid_new_pipeline_says_so_and_has_no_url() {
        let mut i = inputs(vec![], None);
        i.validity = Validity::Invalid("spec.nodes[1].next: cycle".into());
        let s = compute(&i);
        assert_eq!(cond(&s, READY), ("False", reason::INVALID_SPEC));
        assert_eq!(cond(&s, DEGRADED), ("True", reason::INVALID_SPEC));
        assert!(condition(&s, READY).unwrap().message.contains("cycle"));
        assert_eq!(s.ingress_url, None);
    }

    #[test]
    fn an_invalid_update_keeps_ready_from_the_running_objects() {
        let r =
            Readiness::of_deployment(&deploy(Some(1), 1, rolled(1, 1)), Some("web".into()), false);
        let mut i = inputs(vec![r], None);
        i.validity = Validity::Invalid("spec.nodes[0].group: unknown group".into());
        let s = compute(&i);
        assert_eq!(cond(&s, READY), ("True", reason::READY));
        assert_eq!(cond(&s, DEGRADED), ("True", reason::INVALID_SPEC));
        assert!(condition(&s, DEGRADED)
            .unwrap()
            .message
            .contains("last valid spec"));
    }

    #[test]
    fn refused_secret_references_hold_a_new_pipeline_and_degrade_a_running_one() {
        let why = "Secret api (spec.nodes[1].with.headersFrom.A.secretRef) is not labelled sluice.dev/allow-reference=true";
        let mut i = inputs(vec![], None);
        i.validity = Validity::SecretsRefused(why.into());
        let s = compute(&i);
        for c in [READY, PROGRESSING] {
            assert_eq!(cond(&s, c), ("False", reason::SECRET_REFERENCE_REFUSED));
        }
        assert_eq!(
            cond(&s, DEGRADED),
            ("True", reason::SECRET_REFERENCE_REFUSED)
        );
        assert_eq!(
            condition(&s, DEGRADED).unwrap().message,
            format!("nothing was created: {why}")
        );

        let r =
            Readiness::of_deployment(&deploy(Some(1), 1, rolled(1, 1)), Some("web".into()), false);
        let mut i = inputs(vec![r], None);
        i.validity = Validity::SecretsRefused(why.into());
        let s = compute(&i);
        assert_eq!(cond(&s, READY), ("True", reason::READY));
        assert_eq!(
            cond(&s, DEGRADED),
            ("True", reason::SECRET_REFERENCE_REFUSED)
        );
        assert_eq!(
            condition(&s, DEGRADED).unwrap().message,
            format!("not applied, the running objects are left as they are: {why}")
        );
    }

    #[test]
    fn recomputing_an_unchanged_status_keeps_transition_times() {
        let r =
            Readiness::of_deployment(&deploy(Some(1), 1, rolled(1, 1)), Some("web".into()), false);
        let first = compute(&inputs(vec![r.clone()], None));
        let mut again = inputs(vec![r], Some(&first));
        again.now = t(100);
        assert_eq!(compute(&again), first);
        // A flip takes the new time; the unchanged conditions keep theirs.
        let mut rolling =
            Readiness::of_deployment(&deploy(Some(2), 2, rolled(1, 2)), Some("web".into()), false);
        rolling.group = Some("web".into());
        let mut flip = inputs(vec![rolling], Some(&first));
        flip.now = t(100);
        let s = compute(&flip);
        assert_eq!(condition(&s, READY).unwrap().last_transition_time, t(100));
        assert_eq!(condition(&s, DEGRADED).unwrap().last_transition_time, t(0));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let s = truncate("é".repeat(2000), MAX_MESSAGE);
        assert!(s.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(s.ends_with('…'));
    }
}
