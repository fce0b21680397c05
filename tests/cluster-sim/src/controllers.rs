//! Workload controllers: Deployments and StatefulSets "roll out" one replica per step
//! (a configurable delay), reporting status the way the real controllers do —
//! `observedGeneration`, replica counts, `Progressing`/`Available` conditions,
//! `ProgressDeadlineExceeded` for a rollout a test holds, StatefulSet revisions — and
//! StatefulSets get PVCs from their `volumeClaimTemplates` following their retention policy.
//! Deployments get one ReplicaSet per pod template (`<name>-<pod-template-hash>`, owned by
//! the Deployment, scaled as the rollout moves); no Pods are created.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::ops::{self, Sub};
use crate::store::{meta, meta_str, ObjKey, State};

/// Field manager the controllers write status under, as upstream's.
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";

/// Progress of one workload's current rollout, kept between passes.
#[derive(Debug)]
struct Rollout {
    hash: String,
    /// Revision before the current rollout (StatefulSet `currentRevision`), if any.
    previous: Option<String>,
    /// Template hash whose ReplicaSet holds the `old` replicas (Deployments).
    old_hash: Option<String>,
    /// `deployment.kubernetes.io/revision` of the current template.
    revision: u64,
    updated: i64,
    old: i64,
    last_step: Instant,
    progress_at: Instant,
}

/// Controller state and tuning.
#[derive(Debug)]
pub(crate) struct Workloads {
    rollouts: HashMap<String, Rollout>,
    /// Delay between two rollout steps.
    pub step: Duration,
    /// Length of one `progressDeadlineSeconds` unit (1 s upstream; tests shorten it).
    pub deadline_unit: Duration,
}

impl Workloads {
    pub(crate) fn new(step: Duration, deadline_unit: Duration) -> Self {
        Self {
            rollouts: HashMap::new(),
            step,
            deadline_unit,
        }
    }
}

pub(crate) fn template_hash(template: &Value) -> String {
    let digest = Sha256::digest(template.to_string().as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

fn condition(
    existing: &Value,
    ctype: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let prev = existing
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == ctype));
    let transition = match prev {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let update = match prev {
        Some(p) if p["status"] == status && p["reason"] == reason && p["message"] == message => {
            p["lastUpdateTime"].clone()
        }
        _ => json!(now),
    };
    json!({
        "type": ctype, "status": status, "reason": reason, "message": message,
        "lastUpdateTime": update, "lastTransitionTime": transition,
    })
}

fn percent_or_int(v: Option<&Value>, total: i64, round_up: bool) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) if s.ends_with('%') => {
            let p: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
            if round_up {
                (total * p + 99) / 100
            } else {
                total * p / 100
            }
        }
        _ => {
            if round_up {
                (total * 25 + 99) / 100
            } else {
                total * 25 / 100
            }
        }
    }
}

/// Advance one rollout by at most one step; returns whether it moved.
fn step(r: &mut Rollout, desired: i64, held: bool, step: Duration, now: Instant) -> bool {
    if held || now.duration_since(r.last_step) < step {
        return false;
    }
    let mut moved = false;
    if r.updated < desired {
        r.updated += 1;
        moved = true;
    } else if r.updated > desired {
        r.updated -= 1;
        moved = true;
    }
    if r.old > 0 && (r.updated >= desired || r.updated + r.old > desired) {
        r.old -= 1;
        moved = true;
    }
    if moved {
        r.last_step = now;
        r.progress_at = now;
    }
    moved
}

/// One pass over every Deployment and StatefulSet.
pub(crate) fn pass(
    st: &mut State,
    wl: &mut Workloads,
    holds: &HashSet<(String, String)>,
    now: Instant,
) {
    let ts = ops::now();
    let workloads: Vec<(ObjKey, Value)> = st
        .objects
        .iter()
        .filter(|(k, _)| {
            k.group == "apps" && (k.resource == "deployments" || k.resource == "statefulsets")
        })
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    let live: HashSet<String> = workloads
        .iter()
        .filter_map(|(_, o)| meta_str(o, "uid").map(str::to_string))
        .collect();
    wl.rollouts.retain(|uid, _| live.contains(uid));
    for (key, obj) in workloads {
        if meta(&obj, "deletionTimestamp").is_some() {
            continue;
        }
        let uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
        let desired = obj
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let hash = template_hash(&obj["spec"]["template"]);
        let r = wl.rollouts.entry(uid).or_insert_with(|| Rollout {
            hash: hash.clone(),
            previous: None,
            old_hash: None,
            revision: 1,
            updated: 0,
            old: 0,
            last_step: now,
            progress_at: now,
        });
        if r.hash != hash {
            r.previous = Some(r.hash.clone());
            if r.updated > 0 || r.old == 0 {
                r.old_hash = Some(r.hash.clone());
            }
            r.revision += 1;
            r.old += r.updated;
            r.updated = 0;
            r.hash = hash.clone();
            r.progress_at = now;
        }
        let held = holds.contains(&(key.namespace.clone(), key.name.clone()));
        let paused = obj.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
        // pods the namespace's Pod Security level refuses are never created
        let refused = (r.updated < desired)
            .then(|| pod_security_refusal(st, &key, &obj))
            .flatten();
        step(
            r,
            desired,
            held || paused || refused.is_some(),
            wl.step,
            now,
        );
        let complete = r.updated == desired && r.old == 0;
        let generation = meta(&obj, "generation").cloned().unwrap_or(json!(1));
        let total = r.updated + r.old;
        let mut new = obj.clone();
        if key.resource == "deployments" {
            let max_unavailable = percent_or_int(
                obj.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
                desired,
                false,
            );
            let rs_name = format!("{}-{}", key.name, hash);
            let conds = &obj["status"]["conditions"];
            let available = if total >= desired - max_unavailable {
                condition(
                    conds,
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                    &ts,
                )
            } else {
                condition(
                    conds,
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                    &ts,
                )
            };
            let deadline = obj
                .pointer("/spec/progressDeadlineSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(600);
            let deadline = wl
                .deadline_unit
                .saturating_mul(u32::try_from(deadline).unwrap_or(u32::MAX));
            let progressing = if paused {
                condition(
                    conds,
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused",
                    &ts,
                )
            } else if complete {
                condition(
                    conds,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                    &ts,
                )
            } else if now.duration_since(r.progress_at) > deadline {
                condition(
                    conds,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                    &ts,
                )
            } else {
                condition(
                    conds,
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    &format!("ReplicaSet \"{rs_name}\" is progressing."),
                    &ts,
                )
            };
            let pod_name = format!("{rs_name}-{}", pod_suffix(&rs_name));
            let failure = refused
                .as_ref()
                .map(|v| format!("pods \"{pod_name}\" is forbidden: {v}"));
            let mut conditions = vec![available, progressing];
            if let Some(message) = &failure {
                conditions.push(condition(
                    conds,
                    "ReplicaFailure",
                    "True",
                    "FailedCreate",
                    message,
                    &ts,
                ));
            }
            let mut status = json!({
                "observedGeneration": generation,
                "replicas": total,
                "updatedReplicas": r.updated,
                "readyReplicas": total,
                "availableReplicas": total,
                "conditions": conditions,
            });
            if desired > total {
                status["unavailableReplicas"] = json!(desired - total);
            }
            for k in [
                "replicas",
                "updatedReplicas",
                "readyReplicas",
                "availableReplicas",
            ] {
                if status[k] == json!(0) {
                    if let Some(m) = status.as_object_mut() {
                        m.remove(k);
                    }
                }
            }
            new["status"] = status;
            let plan = RsPlan {
                hash: hash.clone(),
                updated: r.updated,
                old_hash: r.old_hash.clone(),
                old: r.old,
                revision: r.revision,
                failure: failure.clone(),
            };
            reconcile_replicasets(st, &key, &obj, &plan);
            if let Some(message) = failure {
                record_event(
                    st,
                    &key.namespace,
                    ("ReplicaSet", &rs_name),
                    &format!("Error creating: {message}"),
                );
            }
        } else {
            let update_rev = format!("{}-{}", key.name, hash);
            let current_rev = match (&r.previous, complete) {
                (Some(prev), false) => format!("{}-{}", key.name, prev),
                _ => update_rev.clone(),
            };
            if complete {
                r.previous = None;
            }
            let current_replicas = if r.previous.is_some() {
                r.old
            } else {
                r.updated
            };
            new["status"] = json!({
                "observedGeneration": generation,
                "replicas": total,
                "readyReplicas": total,
                "availableReplicas": total,
                "currentReplicas": current_replicas,
                "updatedReplicas": r.updated,
                "currentRevision": current_rev,
                "updateRevision": update_rev,
                "collisionCount": 0,
            });
            reconcile_pvcs(st, &key, &obj, total, desired);
            if let Some(v) = &refused {
                let pod = format!("{}-{}", key.name, r.updated);
                record_event(
                    st,
                    &key.namespace,
                    ("StatefulSet", &key.name),
                    &format!(
                        "create Pod {pod} in StatefulSet {} failed error: pods \"{pod}\" is forbidden: {v}",
                        key.name
                    ),
                );
            }
        }
        if new["status"] != obj["status"] {
            // status writes go through the normal path: new resourceVersion, watch event
            log_err(ops::system_write(
                st,
                &key,
                new,
                Sub::Status,
                CONTROLLER_MANAGER,
            ));
        }
    }
}

/// What the ReplicaSets of one Deployment should look like now.
struct RsPlan {
    hash: String,
    updated: i64,
    old_hash: Option<String>,
    old: i64,
    revision: u64,
    /// Why the current template's pods cannot be created (`ReplicaFailure`), if they cannot.
    failure: Option<String>,
}

/// Keep `<deploy>-<hash>` ReplicaSets in line with the rollout: the current template's holds
/// the updated replicas, the previous one the old replicas, any other is scaled to zero.
fn reconcile_replicasets(st: &mut State, key: &ObjKey, deploy: &Value, plan: &RsPlan) {
    let uid = meta_str(deploy, "uid").unwrap_or_default().to_string();
    let owned: Vec<(ObjKey, Value)> = st
        .objects_of("apps", "replicasets", Some(&key.namespace))
        .filter(|(_, o)| {
            meta(o, "ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid.as_str()))
        })
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    let name_for = |h: &str| format!("{}-{h}", key.name);
    let mut wanted: Vec<(String, i64)> = vec![(plan.hash.clone(), plan.updated)];
    if let Some(oh) = &plan.old_hash {
        if *oh != plan.hash {
            wanted.push((oh.clone(), plan.old));
        }
    }
    for (_, o) in &owned {
        let h = o
            .pointer("/metadata/labels/pod-template-hash")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !wanted.iter().any(|(w, _)| w == h) {
            wanted.push((h.to_string(), 0));
        }
    }
    let generation = meta(deploy, "generation").cloned().unwrap_or(json!(1));
    for (h, replicas) in wanted {
        let rs_key = ObjKey {
            group: "apps".into(),
            resource: "replicasets".into(),
            namespace: key.namespace.clone(),
            name: name_for(&h),
        };
        let existing = st.objects.get(&rs_key).cloned();
        let mut rs = match existing.clone() {
            Some(o) => o,
            None if h != plan.hash => continue,
            None => {
                let mut template = deploy["spec"]["template"].clone();
                template["metadata"]["labels"]["pod-template-hash"] = json!(h);
                let mut selector = deploy["spec"]["selector"].clone();
                selector["matchLabels"]["pod-template-hash"] = json!(h);
                json!({
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {
                        "name": rs_key.name, "namespace": key.namespace,
                        "labels": template["metadata"]["labels"].clone(),
                        "annotations": {"deployment.kubernetes.io/revision": plan.revision.to_string()},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": key.name, "uid": uid, "controller": true, "blockOwnerDeletion": true}],
                    },
                    "spec": {"selector": selector, "template": template},
                })
            }
        };
        rs["spec"]["replicas"] = json!(replicas);
        if existing.as_ref() != Some(&rs) {
            log_err(ops::system_write(
                st,
                &rs_key,
                rs.clone(),
                Sub::Main,
                CONTROLLER_MANAGER,
            ));
        }
        let Some(mut current) = st.objects.get(&rs_key).cloned() else {
            continue;
        };
        let mut status = json!({
            "replicas": replicas, "fullyLabeledReplicas": replicas, "readyReplicas": replicas,
            "availableReplicas": replicas, "observedGeneration": meta(&current, "generation").cloned().unwrap_or(generation.clone()),
        });
        if let (Some(message), true) = (&plan.failure, h == plan.hash) {
            // the ReplicaSet controller's condition (replica_set_utils.go calculateStatus)
            let since = current
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|c| c["type"] == "ReplicaFailure"))
                .map(|c| c["lastTransitionTime"].clone())
                .unwrap_or_else(|| json!(ops::now()));
            status["conditions"] = json!([{"type": "ReplicaFailure", "status": "True",
                "reason": "FailedCreate", "message": message, "lastTransitionTime": since}]);
        }
        if current["status"] != status {
            current["status"] = status;
            log_err(ops::system_write(
                st,
                &rs_key,
                current,
                Sub::Status,
                CONTROLLER_MANAGER,
            ));
        }
    }
}

/// Create PVCs `<template>-<sts>-<ordinal>` for running ordinals, keep their owner reference
/// in line with `whenDeleted`, and delete scaled-away ones when `whenScaled: Delete`.
fn reconcile_pvcs(st: &mut State, key: &ObjKey, sts: &Value, running: i64, desired: i64) {
    let Some(templates) = sts
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
    else {
        return;
    };
    let policy = &sts["spec"]["persistentVolumeClaimRetentionPolicy"];
    let delete_with_set = policy["whenDeleted"].as_str() == Some("Delete");
    let delete_on_scale = policy["whenScaled"].as_str() == Some("Delete");
    let owner = json!([{
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "name": key.name, "uid": meta_str(sts, "uid").unwrap_or_default(),
        "controller": true, "blockOwnerDeletion": true,
    }]);
    let selector_labels = sts
        .pointer("/spec/selector/matchLabels")
        .cloned()
        .unwrap_or(json!({}));
    for t in templates {
        let tname = meta_str(t, "name").unwrap_or("data");
        for ordinal in 0..running {
            let name = format!("{tname}-{}-{ordinal}", key.name);
            let pkey = ObjKey {
                group: String::new(),
                resource: "persistentvolumeclaims".into(),
                namespace: key.namespace.clone(),
                name: name.clone(),
            };
            match st.objects.get(&pkey).cloned() {
                None => {
                    let mut labels = meta(t, "labels").cloned().unwrap_or(json!({}));
                    if let (Some(l), Some(s)) =
                        (labels.as_object_mut(), selector_labels.as_object())
                    {
                        for (k, v) in s {
                            l.insert(k.clone(), v.clone());
                        }
                    }
                    let mut pvc = json!({
                        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": name, "namespace": key.namespace, "labels": labels},
                        "spec": t["spec"].clone(),
                    });
                    if delete_with_set {
                        pvc["metadata"]["ownerReferences"] = owner.clone();
                    }
                    log_err(ops::system_write(
                        st,
                        &pkey,
                        pvc,
                        Sub::Main,
                        CONTROLLER_MANAGER,
                    ));
                }
                Some(existing) => {
                    let has_ref = meta(&existing, "ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|a| a.iter().any(|r| r["uid"] == owner[0]["uid"]));
                    if has_ref != delete_with_set {
                        let mut new = existing.clone();
                        if delete_with_set {
                            new["metadata"]["ownerReferences"] = owner.clone();
                        } else if let Some(m) = new["metadata"].as_object_mut() {
                            m.remove("ownerReferences");
                        }
                        log_err(ops::system_write(
                            st,
                            &pkey,
                            new,
                            Sub::Main,
                            CONTROLLER_MANAGER,
                        ));
                    }
                }
            }
        }
        if delete_on_scale {
            let stale: Vec<ObjKey> = st
                .objects_of("", "persistentvolumeclaims", Some(&key.namespace))
                .filter_map(|(k, _)| {
                    let ord = k.name.strip_prefix(&format!("{tname}-{}-", key.name))?;
                    let ord: i64 = ord.parse().ok()?;
                    (ord >= running && ord >= desired).then(|| k.clone())
                })
                .collect();
            for k in stale {
                if let Some(rt) = st.registry.find_any_version("", "persistentvolumeclaims") {
                    log_err(ops::delete(
                        st,
                        &rt,
                        Some(&k.namespace),
                        &k.name,
                        &ops::DeleteOpts::default(),
                    ));
                }
            }
        }
    }
}

/// The `violates PodSecurity …` refusal the workload's pods would get from the namespace's
/// `enforce` level, if any.
fn pod_security_refusal(st: &State, key: &ObjKey, obj: &Value) -> Option<String> {
    let rt = st.registry.find_any_version(&key.group, &key.resource)?;
    let (pod_meta, spec) = crate::pod_security::pod_of(&rt, obj)?;
    let policy = crate::pod_security::policy(st, &key.namespace);
    crate::pod_security::violation(&policy.enforce, pod_meta, spec)
}

/// A stable generated-name suffix for the pod a ReplicaSet keeps failing to create (upstream
/// draws a new one per attempt; a stable one keeps the condition from churning).
fn pod_suffix(seed: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    Sha256::digest(seed.as_bytes())
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// A `Warning` `FailedCreate` core/v1 Event about `(kind, name)`, once per distinct message.
fn record_event(st: &mut State, ns: &str, (kind, name): (&str, &str), message: &str) {
    let digest: String = Sha256::digest(message.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let key = ObjKey {
        group: String::new(),
        resource: "events".into(),
        namespace: ns.into(),
        name: format!("{name}.{digest}"),
    };
    if st.objects.contains_key(&key) {
        return;
    }
    let uid = st
        .objects
        .iter()
        .find(|(k, _)| {
            k.namespace == ns && k.name == name && k.resource == format!("{}s", kind.to_lowercase())
        })
        .and_then(|(_, o)| crate::store::meta_str(o, "uid").map(str::to_string))
        .unwrap_or_default();
    let ts = ops::now();
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": key.name, "namespace": ns},
        "involvedObject": {"apiVersion": "apps/v1", "kind": kind, "name": name, "namespace": ns, "uid": uid},
        "reason": "FailedCreate", "message": message, "type": "Warning", "count": 1,
        "firstTimestamp": ts, "lastTimestamp": ts,
        "source": {"component": if kind == "StatefulSet" { "statefulset-controller" } else { "replicaset-controller" }},
        "reportingComponent": "", "reportingInstance": "",
    });
    log_err(ops::system_write(
        st,
        &key,
        event,
        Sub::Main,
        CONTROLLER_MANAGER,
    ));
}

/// Background writers have no caller to answer: a refused write is logged, never dropped silently.
fn log_err<T>(r: Result<T, crate::error::ApiError>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "background write refused");
    }
}
