//! Deciding whether a desired object must be applied, so that a pipeline
//! whose objects already match issues no write at all (DESIGN §4: "no
//! writes when nothing changed").
//!
//! ```text
//! desired Child ─serialise─▶ JSON ─digest─▶ sluice.dev/applied-hash ─▶ stamped JSON (applied)
//!                                                      │
//! live object ─────────────────────────────────────────┴─ same hash? and stamped ⊆ live? ─▶ skip
//! ```
//!
//! Two checks, because each alone misses something:
//!
//! - the **hash** of what the operator last applied catches a field the
//!   operator stopped setting (a group that became autoscaled loses
//!   `replicas`): the desired object is still a subset of the live one,
//!   but server-side apply must run to drop the field;
//! - the **subset** check (every field the operator sets has that value in
//!   the live object) catches drift: someone edited a field the operator
//!   manages, or deleted it, and the next reconcile applies again.
//!
//! Fields other managers own (an autoscaler's `replicas`, defaults the API
//! server filled in, `status`) are not in the desired object and never
//! compared, so they never cause an apply.

use serde_json::Value;

use crate::hash;
use crate::labels;
use crate::render::{Child, Error, Result};

/// The one field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = labels::MANAGER;

/// Annotation on every applied object: [`hash::digest`] of the desired
/// object without this annotation.
pub const APPLIED_HASH: &str = "sluice.dev/applied-hash";

/// A desired object ready for server-side apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    /// The apply body: the object with [`APPLIED_HASH`] set.
    pub body: Value,
    /// The value of [`APPLIED_HASH`].
    pub hash: String,
}

/// Serialises `child` and stamps it with the hash of its content.
///
/// # Errors
/// If the object cannot be serialised (its types rule that out).
pub fn stamp(child: &Child) -> Result<Stamped> {
    let body = serde_json::to_value(child).map_err(|source| Error::Json {
        what: "child object",
        source,
    })?;
    stamp_value(body)
}

/// Stamps an object already in JSON form with the hash of its content.
///
/// # Errors
/// If the object cannot be hashed (never for JSON values).
pub fn stamp_value(mut body: Value) -> Result<Stamped> {
    let hash = hash::digest(&body).map_err(|source| Error::Json {
        what: "child object",
        source,
    })?;
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(APPLIED_HASH.to_string(), Value::String(hash.clone()));
        }
    }
    Ok(Stamped { body, hash })
}

/// Whether `live` already holds everything `desired` would apply.
pub fn up_to_date(desired: &Stamped, live: &Value) -> bool {
    let live_hash = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(APPLIED_HASH))
        .and_then(Value::as_str);
    live_hash == Some(desired.hash.as_str()) && is_subset(&desired.body, live)
}

/// Go's `omitempty` drops zero values, so the API server may answer without
/// a field the operator sent as `false`, `0`, `""`, `[]` or `{}`.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Every field of `desired` has the same value in `live`.
///
/// Lists match when each desired item is a subset of some live item (and
/// the live list is not shorter): associative lists may hold items of other
/// managers, and the API server may add defaults inside items. A reordered
/// or shortened list is caught by the hash instead.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    subset(desired, live, false)
}

/// Keys whose string values (or, for the maps, whose entries' values) are
/// resource quantities, which the API server stores in canonical form.
fn holds_quantities(key: &str) -> bool {
    matches!(
        key,
        "requests" | "limits" | "overhead" | "sizeLimit" | "capacity" | "divisor"
    )
}

fn subset(desired: &Value, live: &Value, quantities: bool) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            // Under `requests` (a map of quantities) every value is one.
            Some(lv) => subset(dv, lv, quantities || holds_quantities(k)),
            None => is_zero(dv),
        }),
        (Value::Array(d), Value::Array(l)) => {
            l.len() >= d.len() && d.iter().all(|dv| l.iter().any(|lv| subset(dv, lv, false)))
        }
        (Value::Number(d), Value::Number(l)) => d == l || d.as_f64() == l.as_f64(),
        (Value::String(d), Value::String(l)) if quantities => crate::quantity::same(d, l),
        (Value::Number(d), Value::String(l)) if quantities => {
            crate::quantity::same(&d.to_string(), l)
        }
        (d, Value::Null) => is_zero(d),
        (d, l) => d == l,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn config_map(data: &str) -> Child {
        Child::ConfigMap(ConfigMap {
            metadata: ObjectMeta {
                name: Some("p-pipeline".into()),
                namespace: Some("demo".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("k".to_string(), data.to_string())])),
            ..Default::default()
        })
    }

    #[test]
    fn the_hash_annotation_is_added_and_follows_the_content() {
        let a = stamp(&config_map("one")).unwrap();
        let b = stamp(&config_map("two")).unwrap();
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.body["metadata"]["annotations"][APPLIED_HASH], a.hash);
        assert_eq!(a.body["kind"], "ConfigMap");
        assert_eq!(a.body["apiVersion"], "v1");
        assert_eq!(stamp(&config_map("one")).unwrap(), a, "deterministic");
    }

    #[test]
    fn quantities_the_api_server_rewrote_are_up_to_date() {
        let desired = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}}}],
            "volumes": [{"emptyDir": {"sizeLimit": "1024Ki"}}]}});
        let live = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}],
            "volumes": [{"emptyDir": {"sizeLimit": "1Mi"}}]}});
        assert!(is_subset(&desired, &live));
        let grown = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
            "volumes": [{"emptyDir": {"sizeLimit": "1Mi"}}]}});
        assert!(!is_subset(&desired, &grown));
        // Elsewhere text stays text: an env value "1k" is not "1000".
        let env = json!({"env": [{"name": "N", "value": "1k"}]});
        assert!(!is_subset(
            &env,
            &json!({"env": [{"name": "N", "value": "1000"}]})
        ));
        // A downward-API divisor (a sidecar's env may hold one) is a quantity.
        let divisor = |d: &str| json!({"env": [{"name": "T", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": d}}}]});
        assert!(is_subset(&divisor("1000m"), &divisor("1")));
        assert!(!is_subset(&divisor("1m"), &divisor("1")));
    }

    #[test]
    fn a_live_object_with_server_defaults_is_up_to_date() {
        let d = stamp(&config_map("one")).unwrap();
        let mut live = d.body.clone();
        live["metadata"]["resourceVersion"] = json!("12");
        live["metadata"]["managedFields"] = json!([{"manager": "sluice-operator"}]);
        live["immutable"] = json!(null);
        assert!(up_to_date(&d, &live));
    }

    #[test]
    fn drift_or_an_old_hash_needs_an_apply() {
        let d = stamp(&config_map("one")).unwrap();
        let mut edited = d.body.clone();
        edited["data"]["k"] = json!("edited by hand");
        assert!(!up_to_date(&d, &edited));
        let mut old = d.body.clone();
        old["metadata"]["annotations"][APPLIED_HASH] = json!("0000");
        assert!(!up_to_date(&d, &old));
        let mut bare = d.body.clone();
        bare["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        assert!(!up_to_date(&d, &bare));
    }

    #[test]
    fn lists_match_items_anywhere_and_zero_values_match_absent_fields() {
        let d = json!({"c": [{"name": "a", "ro": false}, {"name": "b", "args": []}]});
        let l = json!({"c": [{"name": "b", "x": 1}, {"name": "side"}, {"name": "a"}]});
        assert!(is_subset(&d, &l));
        assert!(!is_subset(&d, &json!({"c": [{"name": "a"}]})));
        assert!(!is_subset(&json!({"replicas": 2}), &json!({"replicas": 3})));
        assert!(is_subset(
            &json!({"replicas": 2}),
            &json!({"replicas": 2.0})
        ));
        assert!(!is_subset(&json!({"ro": true}), &json!({})));
    }
}
