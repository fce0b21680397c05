//! Fields the API server refuses to change after creation (422 Invalid),
//! checked on every update of a built-in object after defaulting and
//! quantity canonicalization, so equal values in another spelling pass.
//!
//! | kind | immutable |
//! | --- | --- |
//! | Deployment | `spec.selector` |
//! | StatefulSet | all of `spec` but `replicas`, `ordinals`, `template`, `updateStrategy`, `persistentVolumeClaimRetentionPolicy`, `minReadySeconds` |
//! | PersistentVolumeClaim | all of `spec` but `resources.requests` (which may grow, never shrink) |
//! | Service | `spec.clusterIP` once set |

use serde_json::Value;

use crate::error::{ApiError, Cause};
use crate::resources::ResourceType;
use crate::store::State;

/// The API server's `PersistentVolumeClaimResize` admission: a claim's
/// storage may grow only when its StorageClass (named, or the default one)
/// sets `allowVolumeExpansion: true`; otherwise 403.
pub(crate) fn check_resize(
    st: &State,
    rt: &ResourceType,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    if !(rt.group.is_empty() && rt.plural == "persistentvolumeclaims") {
        return Ok(());
    }
    let (Some(was), Some(is)) = (storage(old), storage(new)) else {
        return Ok(());
    };
    if is <= was {
        return Ok(());
    }
    let class_name = new
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str);
    let classes: Vec<&Value> = st
        .objects_of("storage.k8s.io", "storageclasses", None)
        .map(|(_, v)| v)
        .collect();
    let class = classes.into_iter().find(|c| match class_name {
        Some(n) => c.pointer("/metadata/name").and_then(Value::as_str) == Some(n),
        None => {
            c.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                .and_then(Value::as_str)
                == Some("true")
        }
    });
    let expandable = class
        .and_then(|c| c.get("allowVolumeExpansion"))
        .and_then(Value::as_bool)
        == Some(true);
    if expandable {
        Ok(())
    } else {
        Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "persistentvolumeclaims \"{}\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize",
                new.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
            ),
        ))
    }
}

/// StatefulSet spec fields an update may change (Kubernetes 1.30).
const STATEFULSET_MUTABLE: [&str; 6] = [
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

/// A PVC's storage request in nano units.
fn storage(v: &Value) -> Option<i128> {
    v.pointer("/spec/resources/requests/storage")
        .and_then(Value::as_str)
        .and_then(crate::quantity::bytes)
}

fn without(spec: Option<&Value>, keys: &[&str]) -> Value {
    let mut v = spec.cloned().unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        for k in keys {
            m.remove(*k);
        }
    }
    v
}

fn forbidden(field: &str, message: &str) -> Cause {
    Cause {
        reason: "FieldValueForbidden".into(),
        message: format!("Forbidden: {message}"),
        field: field.into(),
    }
}

fn immutable(field: &str, value: Option<&Value>) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message: format!(
            "Invalid value: {}: field is immutable",
            value.map_or_else(|| "null".to_string(), Value::to_string)
        ),
        field: field.into(),
    }
}

/// What the update from `old` to `new` changes that may not change.
pub(crate) fn check(rt: &ResourceType, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("apps", "deployments")
            if old.pointer("/spec/selector") != new.pointer("/spec/selector") =>
        {
            causes.push(immutable("spec.selector", new.pointer("/spec/selector")));
        }
        ("apps", "statefulsets")
            if without(old.get("spec"), &STATEFULSET_MUTABLE)
                != without(new.get("spec"), &STATEFULSET_MUTABLE) =>
        {
            causes.push(forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
        ("", "persistentvolumeclaims") => {
            let strip = |v: &Value| {
                let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(Value::Object(r)) = s.get_mut("resources") {
                    r.remove("requests");
                }
                s
            };
            if strip(old) != strip(new) {
                causes.push(forbidden(
                    "spec",
                    "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
                ));
            }
            if let (Some(was), Some(is)) = (storage(old), storage(new)) {
                if is < was {
                    causes.push(forbidden(
                        "spec.resources.requests.storage",
                        "field can not be less than previous value",
                    ));
                }
            }
        }
        ("", "services") => {
            let ip = |v: &Value| v.pointer("/spec/clusterIP").cloned();
            if let (Some(was), is) = (ip(old), ip(new)) {
                if Some(&was) != is.as_ref() && is.is_some() {
                    causes.push(immutable("spec.clusterIP", is.as_ref()));
                }
            }
        }
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rt(group: &str, plural: &str) -> ResourceType {
        ResourceType {
            group: group.into(),
            version: "v1".into(),
            kind: String::new(),
            plural: plural.into(),
            singular: String::new(),
            namespaced: true,
            short_names: vec![],
            categories: vec![],
            status: true,
            scale: None,
            schema: None,
            custom: false,
        }
    }

    #[test]
    fn a_statefulset_takes_new_replicas_and_template_but_not_new_claims() {
        let sts = rt("apps", "statefulsets");
        let old = json!({"spec": {"replicas": 1, "serviceName": "r", "template": {"a": 1},
            "volumeClaimTemplates": [{"spec": {"resources": {"requests": {"storage": "1Gi"}}}}]}});
        let mut ok = old.clone();
        ok["spec"]["replicas"] = json!(3);
        ok["spec"]["template"] = json!({"a": 2});
        assert!(check(&sts, &old, &ok).is_empty());
        let mut bad = old.clone();
        bad["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] =
            json!("2Gi");
        let causes = check(&sts, &old, &bad);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec");
    }

    #[test]
    fn a_claim_may_grow_but_not_shrink_or_change_class() {
        let pvc = rt("", "persistentvolumeclaims");
        let old = json!({"spec": {"storageClassName": "std", "resources": {"requests": {"storage": "1Gi"}}}});
        let mut grow = old.clone();
        grow["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert!(check(&pvc, &old, &grow).is_empty());
        let mut shrink = old.clone();
        shrink["spec"]["resources"]["requests"]["storage"] = json!("512Mi");
        assert_eq!(
            check(&pvc, &old, &shrink)[0].field,
            "spec.resources.requests.storage"
        );
        let mut class = old.clone();
        class["spec"]["storageClassName"] = json!("fast");
        assert_eq!(check(&pvc, &old, &class)[0].field, "spec");
    }

    #[test]
    fn a_deployment_selector_is_fixed() {
        let d = rt("apps", "deployments");
        let old = json!({"spec": {"selector": {"matchLabels": {"a": "1"}}, "replicas": 1}});
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(2);
        assert!(check(&d, &old, &new).is_empty());
        new["spec"]["selector"]["matchLabels"]["a"] = json!("2");
        assert_eq!(check(&d, &old, &new)[0].field, "spec.selector");
    }
}
