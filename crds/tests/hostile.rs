//! Hostile manifests: each one is refused with the exact rule it breaks and
//! the field (or limit) it breaks it at — never a panic, a hang or an
//! unbounded allocation.

use std::io::Write;

use serde_json::{json, Value};
use sluice_crds::{
    compile, load_manifest, parse_manifest, validate, ManifestError, PipelineId, StreamPipelineSpec,
};

const BASE: &str = r#"apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: shop, namespace: ns }
spec:
  interfaces:
    - { name: api, path: /v1/x, entry: a, timeout: 5s }
  groups:
    - { name: web, role: ingress }
    - { name: cpu, role: worker }
  nodes:
    - { name: a, group: web, uses: builtin/route, with: { field: /k }, next: b }
    - { name: b, group: cpu, uses: builtin/echo }
"#;

/// The error text of `yaml`, or "" when it compiles.
fn refusal(yaml: &str) -> String {
    match parse_manifest("hostile.yaml", yaml) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

/// `BASE` with `from` replaced by `to` (which must occur).
fn base_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in the base manifest");
    BASE.replacen(from, to, 1)
}

fn assert_refused(yaml: &str, want: &str) {
    let got = refusal(yaml);
    assert!(got.contains(want), "want {want:?}\n got {got:?}");
}

#[test]
fn the_base_manifest_is_accepted() {
    assert_eq!(refusal(BASE), "");
}

// === durations, sizes and numbers ===

#[test]
fn an_overflowing_lease_is_refused_not_a_panic() {
    assert_refused(
        &base_with("spec:\n", "spec:\n  limits: { lease: 18446744073709551615s }\n"),
        "spec.limits.lease: `18446744073709551615s` is longer than 720h, the longest duration accepted",
    );
    assert_refused(
        &base_with(
            "spec:\n",
            "spec:\n  limits: { lease: 99999999999999999999999h }\n",
        ),
        "spec.limits.lease: `99999999999999999999999h` is longer than 720h",
    );
}

#[test]
fn durations_past_their_field_bounds_are_refused_with_the_bounds() {
    assert_refused(
        &base_with("timeout: 5s", "timeout: 2h"),
        "spec.interfaces[0].timeout: must be between 100ms and 1h",
    );
    assert_refused(
        &base_with("spec:\n", "spec:\n  security: { rotateEvery: 721h }\n"),
        "spec.security.rotateEvery: `721h` is longer than 720h",
    );
    assert_refused(
        &base_with("spec:\n", "spec:\n  security: { rotateEvery: 1m }\n"),
        "spec.security.rotateEvery: must be between 10m and 720h",
    );
    assert_refused(
        &base_with(
            "spec:\n",
            "spec:\n  limits: { lease: 1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s }\n",
        ),
        "spec.limits.lease: a duration is at most 32 characters (found 34)",
    );
}

#[test]
fn huge_sizes_and_counts_are_refused_with_their_field() {
    assert_refused(
        &base_with(
            "spec:\n",
            "spec:\n  limits: { maxQueueBytes: 18446744073709551615Ti }\n",
        ),
        "spec.limits.maxQueueBytes: `18446744073709551615Ti` is larger than 64Ti",
    );
    assert_refused(
        &base_with(
            "spec:\n",
            "spec:\n  limits: { maxQueueDepth: 18446744073709551615 }\n",
        ),
        "spec.limits.maxQueueDepth: must be between 1 and 1000000000",
    );
    assert_refused(
        &base_with("timeout: 5s", "timeout: 5s, maxInFlight: 1000000"),
        "spec.interfaces[0].maxInFlight: must be between 1 and 65536",
    );
    // Past what the Rust type holds: a shape error at the field, not a wrap.
    assert_refused(
        &base_with(
            "{ name: cpu, role: worker }",
            "{ name: cpu, role: worker, concurrency: 5000000000 }",
        ),
        "spec.groups[1].concurrency",
    );
    assert_refused(
        &base_with(
            "{ name: cpu, role: worker }",
            "{ name: cpu, role: worker, replicas: 1000000 }",
        ),
        "spec.groups[1].replicas: must be between 0 and 1000",
    );
    assert_refused(
        &base_with(
            "{ name: cpu, role: worker }",
            "{ name: cpu, role: worker, autoscale: { maxReplicas: 3, targetRatePerReplica: 1e300 } }",
        ),
        "spec.groups[1].autoscale.targetRatePerReplica: must be a positive number of envelopes per second, at most 1e9",
    );
}

// === wrong JSON types under the free-form fields ===

#[test]
fn next_of_a_type_the_types_cannot_read_is_refused_at_its_path() {
    for bad in ["3", "{ to: b }", "true", "[ 3 ]", "[ { when: x } ]"] {
        let yaml = base_with("next: b }", &format!("next: {bad} }}"));
        assert_refused(&yaml, "spec.nodes[0].next");
    }
    assert_refused(
        &base_with("next: b }", "next: [] }"),
        "spec.nodes[0].next: an empty route list",
    );
    let routes: Vec<String> = (0..33)
        .map(|i| format!("{{ when: t{i}, to: b }}"))
        .collect();
    assert_refused(
        &base_with("next: b }", &format!("next: [ {} ] }}", routes.join(", "))),
        "spec.nodes[0].next: at most 32 routes",
    );
    let tag = "t".repeat(257);
    assert_refused(
        &base_with(
            "next: b }",
            &format!("next: [ {{ when: {tag}, to: b }} ] }}"),
        ),
        "spec.nodes[0].next[0].when: at most 256 characters",
    );
}

#[test]
fn with_that_is_not_an_object_is_refused() {
    for bad in ["[ 1 ]", "x", "3", "true"] {
        assert_refused(
            &base_with("with: { field: /k }", &format!("with: {bad}")),
            "spec.nodes[0].with: must be an object",
        );
    }
}

#[test]
fn deep_with_blocks_are_refused_at_the_depth_limit() {
    // 33 levels of `with` still fit the YAML depth limit.
    let deep = format!("{}1{}", "{ k: ".repeat(33), " }".repeat(33));
    assert_refused(
        &base_with("with: { field: /k }", &format!("with: {deep}")),
        "spec.nodes[0].with: nested deeper than 32 levels",
    );
    // 32 levels are accepted (the node reads its own keys at start-up).
    let ok = format!("{}1{}", "{ k: ".repeat(32), " }".repeat(32));
    assert_eq!(
        refusal(&base_with("with: { field: /k }", &format!("with: {ok}"))),
        ""
    );
}

#[test]
fn deeper_than_the_yaml_limit_is_refused_by_the_reader() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let e = refusal(&base_with(
        "with: { field: /k }",
        &format!("with: {{ a: {deep} }}"),
    ));
    assert!(e.starts_with("hostile.yaml: "), "{e}");
    assert!(e.contains("recursion limit exceeded"), "{e}");
}

#[test]
fn a_spec_built_in_memory_with_any_depth_is_refused_without_recursion() {
    let mut with = json!(1);
    for _ in 0..1000 {
        with = json!({ "k": with });
    }
    let mut spec: StreamPipelineSpec = parse_manifest("t", BASE).unwrap().0.spec;
    spec.nodes[0].with = Some(with);
    let errors = validate(&spec);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        "spec.nodes[0].with: nested deeper than 32 levels"
    );
    // Dropping a value nested this deep is recursive in serde_json; keep the
    // test's own stack safe by unnesting it first.
    let mut v = spec.nodes[0].with.take();
    while let Some(Value::Object(mut o)) = v {
        v = o.remove("k");
    }
}

#[test]
fn large_with_blocks_are_refused_by_size_and_key_count() {
    let big = "x".repeat(70 * 1024);
    assert_refused(
        &base_with(
            "with: { field: /k }",
            &format!("with: {{ field: /k, pad: {big} }}"),
        ),
        "spec.nodes[0].with: larger than 65536 bytes as JSON",
    );
    let keys: Vec<String> = (0..65).map(|i| format!("k{i}: 1")).collect();
    assert_refused(
        &base_with(
            "with: { field: /k }",
            &format!("with: {{ {} }}", keys.join(", ")),
        ),
        "spec.nodes[0].with: at most 64 keys",
    );
}

// === paths and names ===

#[test]
fn interface_paths_the_router_would_not_take_literally_are_refused() {
    for (path, why) in [
        ("/v1/:id", "must not contain ':'"),
        ("/v1/*rest", "must not contain '*'"),
        ("\"/v1/{id}\"", "must not contain '{'"),
        ("/v1//x", "has an empty segment"),
        ("/v1/", "has an empty segment (`//` or a trailing '/')"),
        ("/v1/../admin", "has a `.` or `..` segment"),
        (
            "/v1/%2e",
            "must not contain '%': percent-encoding is not canonical",
        ),
        ("/v1/ü", "must not contain 'ü': only ASCII is allowed"),
    ] {
        let want = format!(
            "spec.interfaces[0].path: `{}` {why}",
            path.trim_matches('"')
        );
        assert_refused(&base_with("path: /v1/x", &format!("path: {path}")), &want);
    }
}

#[test]
fn pipeline_names_and_namespaces_follow_the_api_servers_rules() {
    assert_refused(
        &base_with("name: shop,", "name: Evil_Name,"),
        "metadata.name: `Evil_Name` must be lowercase letters, digits and '-', start with a letter",
    );
    assert_refused(
        &base_with("namespace: ns", "namespace: \"a/b}c\""),
        "metadata.namespace: `a/b}c` must be lowercase letters, digits and '-'",
    );
    assert_refused(
        &base_with("name: shop,", "name: 1shop,"),
        "metadata.name: `1shop`",
    );
    let long = "a".repeat(64);
    assert_refused(
        &base_with("name: shop,", &format!("name: {long},")),
        "at most 63 characters",
    );
    assert_refused(
        &base_with("name: shop,", "name: 5,"),
        "metadata.name: must be a string",
    );
    assert_refused(
        &base_with("namespace: ns", "namespace: [ns]"),
        "metadata.namespace: must be a string",
    );
    // compile() holds every caller to the same rule, not only manifests.
    let spec = parse_manifest("t", BASE).unwrap().0.spec;
    let id = PipelineId {
        namespace: "ns".into(),
        name: "a}b".into(),
    };
    let errors = compile(id, &spec).unwrap_err();
    assert_eq!(errors[0].path, "metadata.name");
}

#[test]
fn references_and_secret_names_are_bounded() {
    let long = "g".repeat(200);
    let e = refusal(&base_with(
        "group: cpu, uses",
        &format!("group: {long}, uses"),
    ));
    assert!(
        e.contains(&format!(
            "spec.nodes[1].group: unknown group `{}…`",
            "g".repeat(64)
        )),
        "{e}"
    );
    assert!(e.len() < 1000, "an echoed value is cut: {e}");
    assert_refused(
        &base_with(
            "spec:\n",
            "spec:\n  backends: { queue: redis, kv: redis, reply: redis }\n  redis: { mode: external, urlSecretRef: { name: Bad_Secret, key: ../url } }\n",
        ),
        "spec.redis.urlSecretRef.name: `Bad_Secret` is not a Secret name",
    );
    assert_refused(
        &base_with(
            "spec:\n",
            "spec:\n  backends: { queue: redis, kv: redis, reply: redis }\n  redis: { mode: external, urlSecretRef: { name: s, key: ../url } }\n",
        ),
        "spec.redis.urlSecretRef.key: `../url` is not a Secret key",
    );
    assert_refused(
        &base_with(
            "spec:\n",
            "spec:\n  security: { keys: secretRef, secretName: \"x/y\" }\n",
        ),
        "spec.security.secretName: `x/y` is not a Secret name",
    );
}

// === the reader: bytes, aliases, duplicates ===

#[test]
fn invalid_utf8_is_refused_with_its_offset() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"apiVersion: sluice.dev/v1alpha1\nkind: \xff\xfe\n")
        .unwrap();
    let e = load_manifest(file.path()).unwrap_err();
    assert!(
        matches!(e, ManifestError::NotUtf8 { offset: 38, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .ends_with("not UTF-8 text (invalid byte at offset 38)"),
        "{e}"
    );
}

#[test]
fn an_endless_file_is_refused_after_the_size_limit() {
    let e = load_manifest(std::path::Path::new("/dev/zero")).unwrap_err();
    assert!(
        matches!(e, ManifestError::TooLarge { max: 1_048_576, .. }),
        "{e:?}"
    );
}

#[test]
fn a_yaml_alias_bomb_is_refused_without_expanding() {
    let mut bomb = String::from("apiVersion: sluice.dev/v1alpha1\nkind: StreamPipeline\nx0: &a0 [a, a, a, a, a, a, a, a, a, a]\n");
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("x{i}: &a{i} [{refs}]\n"));
    }
    let e = refusal(&bomb);
    assert!(e.starts_with("hostile.yaml: "), "{e}");
    assert!(
        e.to_lowercase().contains("alias") || e.to_lowercase().contains("budget"),
        "{e}"
    );
}

#[test]
fn duplicate_keys_are_refused() {
    let e = refusal(&base_with(
        "spec:\n",
        "spec:\n  suspend: true\n  suspend: false\n",
    ));
    assert!(e.to_lowercase().contains("duplicate"), "{e}");
}
