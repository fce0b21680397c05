//! Garbage collection and namespace termination, run as passes over the whole store:
//! dependents whose owners are all gone are deleted (background), dependents of an owner in
//! foreground deletion are deleted and the owner keeps its `foregroundDeletion` finalizer
//! until no blocking dependent remains, `orphan` deletion strips owner references, and a
//! terminating namespace is emptied before it disappears.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::ops::{self, DeleteOpts, FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
use crate::store::{finalizers, meta, meta_str, EventType, ObjKey, State};

fn owner_refs(obj: &Value) -> Vec<Value> {
    meta(obj, "ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn delete_key(st: &mut State, key: &ObjKey) {
    let Some(rt) = st.registry.find_any_version(&key.group, &key.resource) else {
        return;
    };
    let ns = (!key.namespace.is_empty()).then_some(key.namespace.as_str());
    // deleting what is already being deleted is a no-op; NotFound means someone was faster
    match ops::delete(st, &rt, ns, &key.name, &DeleteOpts::default()) {
        Ok(_) => {}
        Err(e) if e.code == 404 => {}
        Err(e) => tracing::warn!(error = %e, key = ?key, "garbage collector could not delete"),
    }
}

/// One round of collection; returns whether anything changed.
pub(crate) fn pass(st: &mut State) -> bool {
    let before = st.rv;
    let by_uid: HashMap<String, ObjKey> = st
        .objects
        .iter()
        .filter_map(|(k, o)| meta_str(o, "uid").map(|u| (u.to_string(), k.clone())))
        .collect();
    let deleting_with = |st: &State, uid: &str, fin: &str| -> bool {
        by_uid
            .get(uid)
            .and_then(|k| st.objects.get(k))
            .is_some_and(|o| {
                meta(o, "deletionTimestamp").is_some() && finalizers(o).iter().any(|f| f == fin)
            })
    };

    // dependents
    let dependents: Vec<(ObjKey, Value)> = st
        .objects
        .iter()
        .filter(|(_, o)| !owner_refs(o).is_empty())
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    for (key, obj) in dependents {
        let refs = owner_refs(&obj);
        let orphaned_by: Vec<String> = refs
            .iter()
            .filter_map(|r| r["uid"].as_str())
            .filter(|u| deleting_with(st, u, ORPHAN_FINALIZER))
            .map(str::to_string)
            .collect();
        if !orphaned_by.is_empty() {
            let mut new = obj.clone();
            let kept: Vec<Value> = refs
                .into_iter()
                .filter(|r| {
                    !r["uid"]
                        .as_str()
                        .is_some_and(|u| orphaned_by.iter().any(|o| o == u))
                })
                .collect();
            if kept.is_empty() {
                crate::store::remove_meta(&mut new, "ownerReferences");
            } else {
                crate::store::set_meta(&mut new, "ownerReferences", Value::Array(kept));
            }
            log_err(ops::system_write(
                st,
                &key,
                new,
                ops::Sub::Main,
                "kube-controller-manager",
            ));
            continue;
        }
        if meta(&obj, "deletionTimestamp").is_some() {
            continue;
        }
        let all_gone = refs
            .iter()
            .all(|r| r["uid"].as_str().is_none_or(|u| !by_uid.contains_key(u)));
        let owner_foreground = refs
            .iter()
            .filter_map(|r| r["uid"].as_str())
            .any(|u| deleting_with(st, u, FOREGROUND_FINALIZER));
        if all_gone || owner_foreground {
            delete_key(st, &key);
        }
    }

    // owners waiting in foreground / orphan deletion
    let blocking: HashSet<String> = st
        .objects
        .values()
        .flat_map(|o| {
            owner_refs(o)
                .into_iter()
                .filter(|r| r["blockOwnerDeletion"].as_bool() == Some(true))
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
        })
        .collect();
    let referenced: HashSet<String> = st
        .objects
        .values()
        .flat_map(|o| {
            owner_refs(o)
                .into_iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
        })
        .collect();
    let waiting: Vec<(ObjKey, Value)> = st
        .objects
        .iter()
        .filter(|(_, o)| meta(o, "deletionTimestamp").is_some())
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    for (key, obj) in waiting {
        let uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
        let mut fins = finalizers(&obj);
        let len = fins.len();
        if !blocking.contains(&uid) {
            fins.retain(|f| f != FOREGROUND_FINALIZER);
        }
        if !referenced.contains(&uid) {
            fins.retain(|f| f != ORPHAN_FINALIZER);
        }
        if fins.len() != len {
            ops::set_object_finalizers(st, &key, &fins);
        }
    }

    // namespace termination
    let terminating: Vec<(ObjKey, Value)> = st
        .objects
        .iter()
        .filter(|(k, o)| {
            k.group.is_empty()
                && k.resource == "namespaces"
                && meta(o, "deletionTimestamp").is_some()
        })
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    for (nskey, nsobj) in terminating {
        let contents: Vec<ObjKey> = st
            .objects
            .keys()
            .filter(|k| k.namespace == nskey.name)
            .cloned()
            .collect();
        if contents.is_empty() {
            if finalizers(&nsobj).is_empty() {
                st.record(EventType::Deleted, nskey, nsobj.clone(), Some(nsobj));
            }
        } else {
            for k in contents {
                if st
                    .objects
                    .get(&k)
                    .is_some_and(|o| meta(o, "deletionTimestamp").is_none())
                {
                    delete_key(st, &k);
                }
            }
        }
    }
    st.rv != before
}

/// Passes until nothing changes (bounded, so a bug cannot spin forever).
pub(crate) fn collect(st: &mut State) {
    for _ in 0..16 {
        if !pass(st) {
            break;
        }
    }
}

/// Background writers have no caller to answer: a refused write is logged, never dropped silently.
fn log_err<T>(r: Result<T, crate::error::ApiError>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "background write refused");
    }
}
