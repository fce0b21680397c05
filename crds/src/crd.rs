//! The generated CustomResourceDefinition.
//!
//! kube's derive gives the schema of the types; this module adds what the
//! derive cannot express: `maxItems` on lists (so CEL rules stay within the
//! API server's cost budget), list-map uniqueness on names, and the CEL rules
//! that refuse an invalid spec at admission. The checked-in
//! `crds/streampipeline.yaml` is this function's output (a test compares).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{json, Value};

use crate::types::StreamPipeline;
use crate::units::{DURATION_PATTERN, SIZE_PATTERN};
use crate::validate::{MAX_GROUPS, MAX_GROUP_NAME, MAX_INTERFACES, MAX_NODES};

/// The CRD as applied to a cluster.
pub fn crd() -> CustomResourceDefinition {
    let mut v = serde_json::to_value(StreamPipeline::crd()).unwrap_or(Value::Null);
    if let Some(spec) = v.pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec") {
        harden_spec_schema(spec);
    }
    // The value came from a CRD and was only extended with valid schema keys.
    serde_json::from_value(v).expect("hardened CRD deserialises")
}

/// The CRD as YAML, as written by `crdgen`.
pub fn crd_yaml() -> String {
    crate::yaml::to_string(&crd()).unwrap_or_default()
}

fn set(v: &mut Value, pointer: &str, key: &str, val: Value) {
    if let Some(Value::Object(o)) = v.pointer_mut(pointer) {
        o.insert(key.to_string(), val);
    }
}

/// `deny_unknown_fields` (kept for precise errors on local manifests) makes
/// schemars emit `additionalProperties: false` beside `properties`, which a
/// structural schema forbids; the API server prunes unknown fields anyway.
fn strip_closed_objects(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.contains_key("properties")
                && o.get("additionalProperties") == Some(&Value::Bool(false))
            {
                o.remove("additionalProperties");
            }
            o.values_mut().for_each(strip_closed_objects);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_closed_objects),
        _ => {}
    }
}

fn harden_spec_schema(spec: &mut Value) {
    strip_closed_objects(spec);
    for (list, max) in [
        ("interfaces", MAX_INTERFACES),
        ("groups", MAX_GROUPS),
        ("nodes", MAX_NODES),
    ] {
        let p = format!("/properties/{list}");
        set(spec, &p, "maxItems", json!(max));
        set(spec, &p, "minItems", json!(1));
        set(spec, &p, "x-kubernetes-list-type", json!("map"));
        set(spec, &p, "x-kubernetes-list-map-keys", json!(["name"]));
        set(
            spec,
            &format!("{p}/items/properties/name"),
            "maxLength",
            json!(63),
        );
        set(
            spec,
            &format!("{p}/items/properties/name"),
            "pattern",
            json!("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        );
    }
    set(
        spec,
        "/properties/groups/items/properties/name",
        "maxLength",
        json!(MAX_GROUP_NAME),
    );
    set(
        spec,
        "/properties/nodes/items/properties/uses",
        "pattern",
        json!("^(builtin|rust)/[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
    );
    set(
        spec,
        "/properties/interfaces/items/properties/path",
        "pattern",
        json!("^/[^?#* {}]*$"),
    );
    set(
        spec,
        "/properties/interfaces/items/properties/path",
        "maxLength",
        json!(256),
    );
    for d in [
        "/properties/interfaces/items/properties/timeout",
        "/properties/limits/properties/lease",
        "/properties/security/properties/rotateEvery",
        "/properties/security/properties/clockSkew",
    ] {
        set(spec, d, "pattern", json!(DURATION_PATTERN));
    }
    for s in [
        "/properties/limits/properties/maxQueueBytes",
        "/properties/redis/properties/storage",
    ] {
        set(spec, s, "pattern", json!(SIZE_PATTERN));
    }
    set(
        spec,
        "",
        "x-kubernetes-validations",
        json!([
            {
                "rule": "self.groups.filter(g, g.role == 'ingress').size() == 1",
                "message": "exactly one group must have role ingress"
            },
            {
                "rule": "!has(self.backends) || ((!has(self.backends.queue) ? 'memory' : self.backends.queue) == (!has(self.backends.kv) ? 'memory' : self.backends.kv) && (!has(self.backends.kv) ? 'memory' : self.backends.kv) == (!has(self.backends.reply) ? 'memory' : self.backends.reply))",
                "message": "mixed backends are not supported; use all memory or all redis"
            },
            {
                "rule": "self.nodes.all(n, self.groups.exists(g, g.name == n.group))",
                "message": "every node's group must be one of spec.groups"
            },
            {
                "rule": "self.interfaces.all(i, self.nodes.exists(n, n.name == i.entry))",
                "message": "every interface's entry must be one of spec.nodes"
            }
        ]),
    );
}
