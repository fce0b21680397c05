//! The checked-in CRD matches the types, is a structural schema, and the
//! examples compile.

use serde_json::Value;

/// The checked-in `crds/<file>` is `generated`; else how to write it.
fn checked_in_is(file: &str, generated: &str, crdgen_args: &str) {
    let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
    let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        on_disk == generated,
        "crds/{file} is stale: run `cargo run -p sluice-crds --bin crdgen -- {crdgen_args}crds/{file}`"
    );
}

#[test]
fn checked_in_crd_matches_the_generated_one() {
    checked_in_is("streampipeline.yaml", &sluice_crds::crd::crd_yaml(), "");
}

/// The structural-schema rules of apiextensions.k8s.io/v1 that kube's derive
/// can break, checked on every node.
fn structural_violations(v: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(o) = v.as_object() else { return };
    let preserve = o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = o.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if in_junctor {
        for k in [
            "type",
            "nullable",
            "default",
            "description",
            "additionalProperties",
        ] {
            if o.contains_key(k) {
                out.push(format!("{path}: `{k}` inside a junctor"));
            }
        }
    } else if !o.contains_key("type") && !preserve && !int_or_string {
        out.push(format!("{path}: no type"));
    }
    if o.contains_key("$ref") {
        out.push(format!("{path}: $ref"));
    }
    if o.contains_key("properties") && o.contains_key("additionalProperties") {
        out.push(format!("{path}: both properties and additionalProperties"));
    }
    if o.get("type") == Some(&Value::String("object".into()))
        && !o.contains_key("properties")
        && !o.contains_key("additionalProperties")
        && !preserve
    {
        out.push(format!(
            "{path}: free-form object without x-kubernetes-preserve-unknown-fields"
        ));
    }
    if let Some(Value::Object(props)) = o.get("properties") {
        for (k, p) in props {
            structural_violations(p, &format!("{path}.{k}"), false, out);
        }
    }
    if let Some(items) = o.get("items") {
        structural_violations(items, &format!("{path}[]"), false, out);
    }
    if let Some(ap @ Value::Object(_)) = o.get("additionalProperties") {
        structural_violations(ap, &format!("{path}{{}}"), false, out);
    }
    for j in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(alts)) = o.get(j) {
            for (i, a) in alts.iter().enumerate() {
                structural_violations(a, &format!("{path}.{j}[{i}]"), true, out);
            }
        }
    }
    if let Some(n) = o.get("not") {
        structural_violations(n, &format!("{path}.not"), true, out);
    }
}

/// `crd`'s schema, checked to be structural.
fn structural_schema(crd: &Value) -> &Value {
    let schema = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema")
        .unwrap();
    let mut out = vec![];
    structural_violations(schema, "", false, &mut out);
    assert!(out.is_empty(), "non-structural nodes:\n{}", out.join("\n"));
    schema
}

#[test]
fn generated_crd_is_a_structural_schema() {
    structural_schema(&serde_json::to_value(sluice_crds::crd::crd()).unwrap());
}

#[test]
fn the_structural_check_catches_a_free_form_field() {
    // Guards the checker itself: a bare `{}` and an anyOf with types are refused.
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "with": {},
            "next": {"anyOf": [{"type": "string"}, {"type": "array"}]}
        }
    });
    let mut out = vec![];
    structural_violations(&bad, "", false, &mut out);
    assert!(out.iter().any(|e| e.contains(".with: no type")), "{out:?}");
    assert!(
        out.iter().any(|e| e.contains("inside a junctor")),
        "{out:?}"
    );
}

#[test]
fn lists_carry_max_items_and_cel_rules_exist() {
    let crd = serde_json::to_value(sluice_crds::crd::crd()).unwrap();
    let spec = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
        .unwrap();
    for list in ["interfaces", "groups", "nodes"] {
        assert!(
            spec.pointer(&format!("/properties/{list}/maxItems"))
                .is_some(),
            "{list} maxItems"
        );
    }
    let rules = spec["x-kubernetes-validations"].as_array().unwrap();
    assert!(rules
        .iter()
        .any(|r| r["message"].as_str().unwrap().contains("exactly one group")));
    let sub = crd.pointer("/spec/versions/0/subresources/status");
    assert!(sub.is_some(), "status subresource");
}

#[test]
fn every_example_compiles() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        sluice_crds::load_manifest(&path).unwrap_or_else(|e| panic!("{e}"));
        seen += 1;
    }
    assert!(
        seen >= 2,
        "expected at least hello and a multi-group example"
    );
}

/// Every schema node of the spec, with its path.
fn nodes<'a>(v: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    let Some(o) = v.as_object() else { return };
    out.push((path.clone(), v));
    if let Some(Value::Object(props)) = o.get("properties") {
        for (k, p) in props {
            nodes(p, format!("{path}.{k}"), out);
        }
    }
    if let Some(items) = o.get("items") {
        nodes(items, format!("{path}[]"), out);
    }
    if let Some(ap @ Value::Object(_)) = o.get("additionalProperties") {
        nodes(ap, format!("{path}{{}}"), out);
    }
}

fn spec_nodes(crd: &Value) -> Vec<(String, &Value)> {
    let spec = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
        .unwrap();
    let mut out = vec![];
    nodes(spec, "spec".into(), &mut out);
    out
}

#[test]
fn every_list_and_integer_of_the_spec_is_bounded() {
    let crd = serde_json::to_value(sluice_crds::crd::crd()).unwrap();
    for (path, n) in spec_nodes(&crd) {
        match n["type"].as_str() {
            Some("array") => assert!(n["maxItems"].is_number(), "{path}: no maxItems"),
            Some("integer") if n["format"] != "int64" => {
                assert!(n["maximum"].is_number(), "{path}: no maximum");
                assert!(n["minimum"].is_number(), "{path}: no minimum");
            }
            _ => {}
        }
    }
}

#[test]
fn every_free_form_field_refuses_the_json_types_its_rust_type_cannot_read() {
    let crd = serde_json::to_value(sluice_crds::crd::crd()).unwrap();
    let mut seen = vec![];
    for (path, n) in spec_nodes(&crd) {
        if n["x-kubernetes-preserve-unknown-fields"] != true {
            continue;
        }
        seen.push(path.clone());
        if n["type"].is_string() {
            continue;
        }
        // A typeless field: each JSON type it must refuse fails a value
        // validation that applies to that type only.
        let number_refused = n["minimum"].as_f64() > n["maximum"].as_f64();
        let object_refused = n["minProperties"].as_u64() > n["maxProperties"].as_u64();
        let booleans_refused = n["not"]["enum"] == serde_json::json!([true, false]);
        assert!(
            number_refused && object_refused && booleans_refused,
            "{path} accepts a JSON type it cannot hold"
        );
        assert!(
            n["x-kubernetes-validations"].is_null(),
            "{path}: the API server refuses CEL rules on a typeless field"
        );
    }
    assert_eq!(seen, ["spec.nodes[].next", "spec.nodes[].with"]);
}

#[test]
fn every_name_reference_has_a_max_length() {
    let crd = serde_json::to_value(sluice_crds::crd::crd()).unwrap();
    let all = spec_nodes(&crd);
    for want in [
        "spec.interfaces[].name",
        "spec.interfaces[].entry",
        "spec.interfaces[].path",
        "spec.groups[].name",
        "spec.nodes[].name",
        "spec.nodes[].group",
        "spec.nodes[].uses",
        "spec.nodes[].next",
        "spec.nodes[].next[].to",
        "spec.nodes[].next[].when",
        "spec.redis.urlSecretRef.name",
        "spec.redis.urlSecretRef.key",
        "spec.redis.caSecretRef.name",
        "spec.redis.caSecretRef.key",
        "spec.security.secretName",
        "spec.expose.ingress.host",
        "spec.expose.ingress.className",
        "spec.expose.ingress.tlsSecret",
    ] {
        let (_, n) = all
            .iter()
            .find(|(p, _)| p == want)
            .unwrap_or_else(|| panic!("{want} not in the schema"));
        assert!(n["maxLength"].is_number(), "{want}: no maxLength");
    }
}

#[test]
fn checked_in_dead_letter_action_crd_matches_the_generated_one() {
    checked_in_is(
        "deadletteraction.yaml",
        &sluice_crds::crd::dead_letter_action_crd_yaml(),
        "--dead-letter-action ",
    );
}

#[test]
fn the_dead_letter_action_crd_is_structural_bounded_and_immutable() {
    let crd = serde_json::to_value(sluice_crds::crd::dead_letter_action_crd()).unwrap();
    let schema = structural_schema(&crd);
    for (path, n) in spec_nodes(&crd) {
        match n["type"].as_str() {
            Some("array") => assert!(n["maxItems"].is_number(), "{path}: no maxItems"),
            Some("integer") => {
                assert!(n["maximum"].is_number(), "{path}: no maximum");
                assert!(n["minimum"].is_number(), "{path}: no minimum");
            }
            Some("string") if n["enum"].is_null() => {
                assert!(n["maxLength"].is_number(), "{path}: no maxLength");
            }
            _ => {}
        }
    }
    let rules = &schema["properties"]["spec"]["x-kubernetes-validations"];
    assert_eq!(rules[0]["rule"], "self == oldSelf", "{rules}");
    assert!(schema["properties"]["status"]["properties"]["output"]["maxLength"].is_number());
}
