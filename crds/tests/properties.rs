//! Properties over arbitrary input: reading, validating and compiling a
//! spec is total — an answer (a plan, or field errors with a path) for
//! anything, never a panic.

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use sluice_crds::{compile, parse_manifest, validate, validate_id, PipelineId, StreamPipelineSpec};

/// Field names a spec uses, so generated objects often hit real fields.
const KEYS: &[&str] = &[
    "backends",
    "queue",
    "kv",
    "reply",
    "redis",
    "mode",
    "storage",
    "urlSecretRef",
    "name",
    "key",
    "security",
    "keys",
    "secretName",
    "rotateEvery",
    "clockSkew",
    "maxPayloadBytes",
    "interfaces",
    "kind",
    "path",
    "entry",
    "timeout",
    "maxInFlight",
    "groups",
    "role",
    "replicas",
    "concurrency",
    "autoscale",
    "minReplicas",
    "maxReplicas",
    "targetRatePerReplica",
    "nodes",
    "group",
    "uses",
    "with",
    "next",
    "when",
    "to",
    "limits",
    "maxQueueDepth",
    "maxQueueBytes",
    "maxDeliveries",
    "lease",
    "expose",
    "ingress",
    "host",
    "suspend",
    "paused",
];

/// Strings that are meaningful somewhere in a spec, and some that are hostile.
const WORDS: &[&str] = &[
    "web",
    "cpu",
    "a",
    "b",
    "ingress",
    "worker",
    "memory",
    "redis",
    "builtin/echo",
    "builtin/route",
    "rust/x",
    "/v1/x",
    "/v1/:id",
    "/",
    "//",
    "5s",
    "100ms",
    "0s",
    "720h",
    "18446744073709551615s",
    "64Mi",
    "99999999999999999999Ti",
    "",
    "Évil",
    "a}b",
    "{ns/p}",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(WORDS).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ]
}

/// JSON values loosely shaped like a spec: objects keyed by spec field names.
fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// The examples' specs, as JSON.
fn examples() -> Vec<Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            let (sp, _) = sluice_crds::load_manifest(&path).unwrap();
            out.push(serde_json::to_value(&sp.spec).unwrap());
        }
    }
    out
}

/// Every JSON pointer in `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => o.iter().for_each(|(k, c)| {
            let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
            out.push(p.clone());
            pointers(c, p, out);
        }),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| {
            let p = format!("{at}/{i}");
            out.push(p.clone());
            pointers(c, p, out);
        }),
        _ => {}
    }
}

/// Checks the contract of `compile` on a spec that read: a plan, or errors
/// that each name a field.
fn check_total(spec: &StreamPipelineSpec) -> Result<(), TestCaseError> {
    let id = PipelineId {
        namespace: "ns".into(),
        name: "p".into(),
    };
    match compile(id, spec) {
        Ok(plan) => prop_assert!(validate(spec).is_empty() && !plan.interfaces.is_empty()),
        Err(errors) => {
            prop_assert!(!errors.is_empty());
            for e in &errors {
                prop_assert!(e.path.starts_with("spec"), "{e}");
                prop_assert!(!e.message.is_empty(), "{e}");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_specs_compile_or_get_field_errors(v in value()) {
        if let Ok(spec) = serde_json::from_value::<StreamPipelineSpec>(v) {
            check_total(&spec)?;
        }
    }

    #[test]
    fn mutated_examples_compile_or_get_field_errors(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), value()), 1..4),
    ) {
        let all = examples();
        let mut spec = which.get(&all).clone();
        for (at, replacement) in edits {
            let mut ps = vec![];
            pointers(&spec, String::new(), &mut ps);
            if ps.is_empty() {
                break;
            }
            if let Some(slot) = spec.pointer_mut(at.get(&ps).as_str()) {
                *slot = replacement;
            }
        }
        if let Ok(spec) = serde_json::from_value::<StreamPipelineSpec>(spec) {
            check_total(&spec)?;
        }
    }

    #[test]
    fn any_name_and_namespace_are_accepted_only_as_dns_labels(
        name in "\\PC{0,70}|[a-z][-a-z0-9]{0,70}",
        namespace in "\\PC{0,70}|[a-z0-9][-a-z0-9]{0,70}",
    ) {
        let errors = validate_id(&PipelineId { namespace: namespace.clone(), name: name.clone() });
        let name_ok = sluice_crds::names::is_dns1035_label(&name, 63);
        let ns_ok = sluice_crds::names::is_dns_label(&namespace, 63);
        prop_assert_eq!(errors.iter().any(|e| e.path == "metadata.name"), !name_ok);
        prop_assert_eq!(errors.iter().any(|e| e.path == "metadata.namespace"), !ns_ok);
    }

    #[test]
    fn any_text_is_read_or_refused(text in "\\PC{0,400}") {
        let _ = parse_manifest("prop.yaml", &text);
    }
}
