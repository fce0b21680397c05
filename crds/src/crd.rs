//! The generated CustomResourceDefinitions: StreamPipeline ([`crd`]) and
//! DeadLetterAction ([`dead_letter_action_crd`]).
//!
//! kube's derive gives the schema of the types; this module adds what the
//! derive cannot express, so the API server refuses at admission whatever
//! the Rust types could not read back or [`crate::validate`] would refuse
//! by a bound: `maxItems` on every list (which also keeps CEL rules within
//! the API server's cost budget), `maxLength` and a `pattern` on every name
//! and reference, ranges on every number (an integer past what its Rust
//! type holds would make the object unreadable), list-map uniqueness on
//! names, and the CEL rules that refuse an invalid spec. The checked-in
//! `crds/streampipeline.yaml` and `crds/deadletteraction.yaml` are their
//! output (tests compare).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{json, Value};

use crate::limits::*;
use crate::names::{
    interface_path_pattern, DATA_KEY_PATTERN, DNS1035_LABEL_PATTERN, DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN, HOST_PATTERN,
};
use crate::types::StreamPipeline;
use crate::units::{DURATION_PATTERN, MAX_UNIT_TEXT, SIZE_PATTERN};

/// The CRD as applied to a cluster.
pub fn crd() -> CustomResourceDefinition {
    let mut v = serde_json::to_value(StreamPipeline::crd()).unwrap_or(Value::Null);
    if let Some(root) = v.pointer_mut("/spec/versions/0/schema/openAPIV3Schema") {
        harden_root_schema(root);
    }
    if let Some(spec) = v.pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec") {
        harden_spec_schema(spec);
    }
    // Conditions are a map keyed by type, as Kubernetes' own: a server-side
    // apply of one condition merges with the others instead of replacing
    // the list.
    if let Some(Value::Object(c)) = v.pointer_mut(
        "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/conditions",
    ) {
        c.insert("x-kubernetes-list-type".into(), json!("map"));
        c.insert("x-kubernetes-list-map-keys".into(), json!(["type"]));
    }
    // The value came from a CRD and was only extended with valid schema keys.
    serde_json::from_value(v).expect("hardened CRD deserialises")
}

/// The CRD as YAML, as written by `crdgen`.
pub fn crd_yaml() -> String {
    crate::yaml::to_string(&crd()).unwrap_or_default()
}

/// The `DeadLetterAction` CRD as applied to a cluster: bounds on every
/// field, and a spec that cannot change once created (it is acted on once).
/// The checked-in `crds/deadletteraction.yaml` is its output.
pub fn dead_letter_action_crd() -> CustomResourceDefinition {
    use crate::dead_letter_action::{
        DeadLetterAction, ENTRY_ID_PATTERN, MAX_CALLER, MAX_IDS, MAX_LIST, MAX_OUTPUT,
    };
    let mut v = serde_json::to_value(DeadLetterAction::crd()).unwrap_or(Value::Null);
    let root = "/spec/versions/0/schema/openAPIV3Schema/properties";
    if let Some(spec) = v.pointer_mut(&format!("{root}/spec")) {
        strip_closed_objects(spec);
        bound_lists_and_integers(spec);
        for (field, key, value) in [
            ("pipeline", "maxLength", json!(MAX_PIPELINE_NAME)),
            ("pipeline", "pattern", json!(DNS1035_LABEL_PATTERN)),
            ("ids", "maxItems", json!(MAX_IDS)),
            ("ids/items", "maxLength", json!(41)),
            ("ids/items", "pattern", json!(ENTRY_ID_PATTERN)),
            ("limit", "minimum", json!(1)),
            ("limit", "maximum", json!(MAX_LIST)),
            ("interface", "maxLength", json!(MAX_NAME)),
            ("interface", "pattern", json!(DNS_LABEL_PATTERN)),
            ("caller", "maxLength", json!(MAX_CALLER)),
            ("caller", "minLength", json!(1)),
        ] {
            set(spec, &format!("/properties/{field}"), key, value);
        }
        set(
            spec,
            "",
            "x-kubernetes-validations",
            json!([{"rule": "self == oldSelf", "message": "spec is immutable: create another action"}]),
        );
    }
    if let Some(status) = v.pointer_mut(&format!("{root}/status")) {
        set(status, "/properties/output", "maxLength", json!(MAX_OUTPUT));
        set(status, "/properties/message", "maxLength", json!(4096));
    }
    serde_json::from_value(v).expect("hardened CRD deserialises")
}

/// The `DeadLetterAction` CRD as YAML, as written by `crdgen`.
pub fn dead_letter_action_crd_yaml() -> String {
    crate::yaml::to_string(&dead_letter_action_crd()).unwrap_or_default()
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

/// The pipeline's name names its Service and prefixes its other objects:
/// refuse at admission what the operator could not use (the API server
/// itself only asks for a DNS-1123 subdomain of up to 253 characters).
fn harden_root_schema(root: &mut Value) {
    set(
        root,
        "",
        "x-kubernetes-validations",
        json!([{
            "rule": format!(
                "size(self.metadata.name) <= {MAX_PIPELINE_NAME} && self.metadata.name.matches('{DNS1035_LABEL_PATTERN}')"
            ),
            "message": format!(
                "metadata.name must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter, at most {MAX_PIPELINE_NAME} characters"
            )
        }]),
    );
}

/// Every list gets a `maxItems` and every 32-bit integer the range of its
/// Rust type, unless a tighter bound is set below.
fn bound_lists_and_integers(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.get("type") == Some(&json!("array")) && !o.contains_key("maxItems") {
                o.insert("maxItems".into(), json!(MAX_OTHER_ITEMS));
            }
            let range = match o.get("format").and_then(Value::as_str) {
                Some("int32") => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
                Some("uint32") => Some((0, i64::from(u32::MAX))),
                _ => None,
            };
            if let (Some((min, max)), Some("integer")) =
                (range, o.get("type").and_then(Value::as_str))
            {
                o.entry("minimum").or_insert(json!(min));
                o.entry("maximum").or_insert(json!(max));
            }
            o.values_mut().for_each(bound_lists_and_integers);
        }
        Value::Array(a) => a.iter_mut().for_each(bound_lists_and_integers),
        _ => {}
    }
}

/// Sets `key` on each schema of `paths` (JSON pointers below `spec`).
fn set_all(spec: &mut Value, paths: &[&str], key: &str, val: &Value) {
    for p in paths {
        set(spec, p, key, val.clone());
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
        let name = format!("{p}/items/properties/name");
        set(spec, &name, "maxLength", json!(MAX_NAME));
        set(spec, &name, "pattern", json!(DNS_LABEL_PATTERN));
    }
    set(
        spec,
        "/properties/groups/items/properties/sidecars",
        "maxItems",
        json!(MAX_SIDECARS),
    );
    bound_lists_and_integers(spec);
    harden_strings(spec);
    harden_numbers(spec);
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

/// `maxLength` and `pattern` on every string the spec's own types hold.
fn harden_strings(spec: &mut Value) {
    let g = "/properties/groups/items/properties";
    let n = "/properties/nodes/items/properties";
    let i = "/properties/interfaces/items/properties";
    set(
        spec,
        &format!("{g}/name"),
        "maxLength",
        json!(MAX_GROUP_NAME),
    );
    set(
        spec,
        &format!("{n}/group"),
        "maxLength",
        json!(MAX_GROUP_NAME),
    );
    set(
        spec,
        &format!("{n}/group"),
        "pattern",
        json!(DNS_LABEL_PATTERN),
    );
    set(spec, &format!("{n}/uses"), "maxLength", json!(MAX_USES));
    set(
        spec,
        &format!("{n}/uses"),
        "pattern",
        json!("^(builtin|rust)/[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
    );
    set(spec, &format!("{i}/entry"), "maxLength", json!(MAX_NAME));
    set(
        spec,
        &format!("{i}/entry"),
        "pattern",
        json!(DNS_LABEL_PATTERN),
    );
    set(spec, &format!("{i}/path"), "maxLength", json!(MAX_PATH));
    set(
        spec,
        &format!("{i}/path"),
        "pattern",
        json!(interface_path_pattern()),
    );

    let durations = [
        &format!("{i}/timeout"),
        &format!("{i}/asyncTimeout"),
        "/properties/results/properties/ttl",
        "/properties/limits/properties/lease",
        "/properties/security/properties/rotateEvery",
        "/properties/security/properties/clockSkew",
        &format!("{g}/autoscale/properties/targetProcessingTime"),
        &format!("{g}/autoscale/properties/scaleDownStabilization"),
    ]
    .map(|s| s.to_string());
    let durations: Vec<&str> = durations.iter().map(String::as_str).collect();
    set_all(spec, &durations, "pattern", &json!(DURATION_PATTERN));
    set_all(spec, &durations, "maxLength", &json!(MAX_UNIT_TEXT));
    let sizes = [
        "/properties/limits/properties/maxQueueBytes",
        "/properties/redis/properties/storage",
        "/properties/redis/properties/maxMemory",
    ];
    set_all(spec, &sizes, "pattern", &json!(SIZE_PATTERN));
    set_all(spec, &sizes, "maxLength", &json!(MAX_UNIT_TEXT));

    let bearer = format!("{i}/auth/properties/bearer/properties/secretRef/properties");
    set(
        spec,
        &format!("{i}/auth/properties/trustedHeader"),
        "maxLength",
        json!(MAX_HEADER_NAME),
    );
    set(
        spec,
        &format!("{i}/auth/properties/trustedHeader"),
        "pattern",
        json!("^[A-Za-z0-9-]+$"),
    );
    let bearer_name = format!("{bearer}/name");
    let bearer_key = format!("{bearer}/key");
    let secret_names = [
        bearer_name.as_str(),
        "/properties/redis/properties/urlSecretRef/properties/name",
        "/properties/redis/properties/caSecretRef/properties/name",
        "/properties/security/properties/secretName",
        "/properties/expose/properties/ingress/properties/tlsSecret",
        "/properties/expose/properties/ingress/properties/className",
        "/properties/redis/properties/storageClassName",
    ];
    set_all(
        spec,
        &secret_names,
        "pattern",
        &json!(DNS_SUBDOMAIN_PATTERN),
    );
    set_all(spec, &secret_names, "maxLength", &json!(MAX_SUBDOMAIN));
    let secret_keys = [
        bearer_key.as_str(),
        "/properties/redis/properties/urlSecretRef/properties/key",
        "/properties/redis/properties/caSecretRef/properties/key",
    ];
    set_all(spec, &secret_keys, "pattern", &json!(DATA_KEY_PATTERN));
    set_all(spec, &secret_keys, "maxLength", &json!(MAX_SUBDOMAIN));
    let host = "/properties/expose/properties/ingress/properties/host";
    set(spec, host, "pattern", json!(HOST_PATTERN));
    set(spec, host, "maxLength", json!(MAX_SUBDOMAIN));
    let images = ["/properties/redis/properties/image", &format!("{g}/image")];
    set_all(spec, &images, "pattern", &json!("^[^\\s]+$"));
    set_all(spec, &images, "maxLength", &json!(MAX_IMAGE));
}

/// `minimum` and `maximum` on every number the spec's own types hold.
fn harden_numbers(spec: &mut Value) {
    let g = "/properties/groups/items/properties";
    let a = "/properties/groups/items/properties/autoscale/properties";
    let ranges: [(String, Value, Value); 13] = [
        (format!("{g}/replicas"), json!(0), json!(MAX_REPLICAS)),
        (format!("{g}/concurrency"), json!(1), json!(MAX_CONCURRENCY)),
        (format!("{a}/minReplicas"), json!(0), json!(MAX_REPLICAS)),
        (format!("{a}/maxReplicas"), json!(1), json!(MAX_REPLICAS)),
        (
            format!("{a}/targetBacklogPerReplica"),
            json!(1),
            json!(MAX_BACKLOG_PER_REPLICA),
        ),
        (format!("{a}/targetCpuUtilization"), json!(1), json!(100)),
        (
            "/properties/interfaces/items/properties/maxInFlight".into(),
            json!(1),
            json!(MAX_IN_FLIGHT),
        ),
        (
            "/properties/interfaces/items/properties/auth/properties/rateLimit/properties/requestsPerSecond".into(),
            json!(1),
            json!(MAX_RATE),
        ),
        (
            "/properties/interfaces/items/properties/auth/properties/rateLimit/properties/burst".into(),
            json!(1),
            json!(MAX_RATE),
        ),
        (
            "/properties/limits/properties/maxQueueDepth".into(),
            json!(1),
            json!(MAX_QUEUE_DEPTH),
        ),
        (
            "/properties/limits/properties/maxDeliveries".into(),
            json!(1),
            json!(MAX_DELIVERIES),
        ),
        (
            "/properties/security/properties/maxPayloadBytes".into(),
            json!(MIN_PAYLOAD_BYTES),
            json!(MAX_PAYLOAD_BYTES),
        ),
        (
            format!("{a}/targetRatePerReplica"),
            json!(0),
            json!(MAX_RATE_PER_REPLICA),
        ),
    ];
    for (p, min, max) in ranges {
        set(spec, &p, "minimum", min);
        set(spec, &p, "maximum", max);
    }
    set(
        spec,
        &format!("{a}/targetRatePerReplica"),
        "exclusiveMinimum",
        json!(true),
    );
}
