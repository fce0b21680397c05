//! Each validation rule refuses what it should, with the field path.

use sluice_crds::{parse_manifest, ManifestError, Next};

const BASE: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: t, namespace: ns }
spec:
  interfaces:
    - { name: api, path: /v1/x, entry: a, timeout: 5s }
  groups:
    - { name: web, role: ingress }
    - { name: cpu, role: worker }
  nodes:
    - { name: a, group: web, uses: builtin/route, with: { field: /k }, next: [ { when: x, to: b }, { to: c } ] }
    - { name: b, group: cpu, uses: builtin/echo, next: c }
    - { name: c, group: cpu, uses: builtin/echo }
"#;

fn errors_of(yaml: &str) -> String {
    match parse_manifest("test.yaml", yaml) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_base_manifest_compiles_with_defaults_applied() {
    let (sp, plan) = parse_manifest("t", BASE).unwrap();
    assert_eq!(sp.metadata.namespace.as_deref(), Some("ns"));
    assert_eq!(plan.id.to_string(), "ns/t");
    assert_eq!(plan.ingress_group, "web");
    assert_eq!(plan.interfaces[0].path_groups, vec!["cpu".to_string()]);
    // a (on the ingress, no hop) → b → c is the longest path: two queue hops.
    assert_eq!(plan.interfaces[0].hops, 2);
    assert_eq!(plan.limits.max_deliveries, 5);
    assert_eq!(plan.groups["cpu"].concurrency, 8);
    assert_eq!(
        plan.groups["cpu"].nodes,
        vec!["b".to_string(), "c".to_string()]
    );
    match &plan.nodes["a"].next {
        Next::Routes { routes, default } => {
            assert_eq!(routes, &vec![("x".to_string(), "b".to_string())]);
            assert_eq!(default.as_deref(), Some("c"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(plan.nodes["a"].next.resolve(Some("x")).unwrap(), Some("b"));
    assert_eq!(plan.nodes["a"].next.resolve(Some("y")).unwrap(), Some("c"));
    assert_eq!(plan.nodes["c"].next.resolve(None).unwrap(), None);
}

#[test]
fn each_rule_is_reported_with_its_field_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "cycle",
            "next: c }\n    - { name: c, group: cpu, uses: builtin/echo }",
            "next: c }\n    - { name: c, group: cpu, uses: builtin/echo, next: b }",
        ),
        (
            "unknown group",
            "name: c, group: cpu",
            "name: c, group: gpu",
        ),
        ("unknown node", "next: c }", "next: zz }"),
        (
            "exactly one group must have role ingress",
            "role: worker",
            "role: ingress",
        ),
        (
            "unknown builtin",
            "name: c, group: cpu, uses: builtin/echo",
            "name: c, group: cpu, uses: builtin/nope",
        ),
        ("duplicate node name", "name: c, group", "name: b, group"),
        (
            "mixed backends",
            "spec:\n",
            "spec:\n  backends: { queue: redis, kv: memory, reply: redis }\n",
        ),
        ("not a duration", "timeout: 5s", "timeout: five"),
        ("missing unit", "timeout: 5s", "timeout: \"5\""),
        (
            "well below every interface timeout",
            "spec:\n",
            "spec:\n  limits: { lease: 3s }\n",
        ),
        (
            "default route",
            "[ { when: x, to: b }, { to: c } ]",
            "[ { to: c }, { when: x, to: b } ]",
        ),
        (
            "nodes of worker groups may only forward",
            "next: c }",
            "next: a }",
        ),
        (
            "not a size",
            "spec:\n",
            "spec:\n  limits: { maxQueueBytes: lots }\n",
        ),
        (
            "served by the ingress itself",
            "path: /v1/x",
            "path: /healthz",
        ),
        (
            "targetRatePerReplica: must be a positive number",
            "{ name: cpu, role: worker }",
            "{ name: cpu, role: worker, autoscale: { maxReplicas: 3, targetRatePerReplica: 0 } }",
        ),
        (
            "targetProcessingTime: must be more than zero",
            "{ name: cpu, role: worker }",
            "{ name: cpu, role: worker, autoscale: { maxReplicas: 3, targetProcessingTime: 0s } }",
        ),
        (
            "scaleDownStabilization: must be at most 1h",
            "{ name: cpu, role: worker }",
            "{ name: cpu, role: worker, autoscale: { maxReplicas: 3, scaleDownStabilization: 2h } }",
        ),
        (
            "tlsSecret: not with expose.ingress",
            "spec:\n",
            "spec:\n  expose: { tlsSecret: p-tls, ingress: { host: p.example.com } }\n",
        ),
        (
            "tlsSecret: `Bad_Name` is not a Secret name",
            "spec:\n",
            "spec:\n  expose: { tlsSecret: Bad_Name }\n",
        ),
        (
            "graphql: a graphql interface declares its operations",
            "path: /v1/x,",
            "path: /v1/x, kind: graphql,",
        ),
        (
            "graphql: applies to graphql interfaces",
            "path: /v1/x,",
            "path: /v1/x, graphql: { operations: [] },",
        ),
        (
            "operations: at least one query",
            "path: /v1/x,",
            "path: /v1/x, kind: graphql, graphql: { operations: [{ name: m, type: mutation }] },",
        ),
        (
            "operations[0].name: `__m` is not a GraphQL name",
            "path: /v1/x,",
            "path: /v1/x, kind: graphql, graphql: { operations: [{ name: __m }] },",
        ),
        (
            "operations[1].name: duplicate operation `q`",
            "path: /v1/x,",
            "path: /v1/x, kind: graphql, graphql: { operations: [{ name: q }, { name: q }] },",
        ),
        (
            "operations[0].arguments.n: `Str` is not a type",
            "path: /v1/x,",
            "path: /v1/x, kind: graphql, graphql: { operations: [{ name: q, arguments: { n: Str } }] },",
        ),
        (
            "operations[0].result: set result or resultFields, not both",
            "path: /v1/x,",
            "path: /v1/x, kind: graphql, graphql: { operations: [{ name: q, result: Int, resultFields: { a: Int } }] },",
        ),
        (
            "operations[0].entry: unknown node `nope`",
            "path: /v1/x,",
            "path: /v1/x, kind: graphql, graphql: { operations: [{ name: q, entry: nope }] },",
        ),
        (
            "graphql.maxComplexity: must be between 1 and 4096",
            "path: /v1/x,",
            "path: /v1/x, kind: graphql, graphql: { maxComplexity: 0, operations: [{ name: q }] },",
        ),
        (
            "mode: sse answers are streamed",
            "path: /v1/x,",
            "path: /v1/x, kind: sse, mode: async,",
        ),
        (
            "ordered: applies to websocket interfaces",
            "path: /v1/x,",
            "path: /v1/x, kind: sse, ordered: true,",
        ),
        (
            "ordered: applies to websocket interfaces",
            "path: /v1/x,",
            "path: /v1/x, ordered: true,",
        ),
        (
            "websocket: applies to websocket interfaces",
            "path: /v1/x,",
            "path: /v1/x, websocket: { idleTimeout: 1m },",
        ),
        (
            "mode: websocket messages are answered on their connection",
            "path: /v1/x,",
            "path: /v1/x, kind: websocket, mode: async,",
        ),
        (
            "asyncTimeout: websocket messages are answered on their connection",
            "path: /v1/x,",
            "path: /v1/x, kind: websocket, asyncTimeout: 1m,",
        ),
        (
            "maxInFlightPerConnection: must not exceed the interface's maxInFlight (8)",
            "path: /v1/x,",
            "path: /v1/x, kind: websocket, maxInFlight: 8, websocket: { maxInFlightPerConnection: 9 },",
        ),
        (
            "maxInFlightPerConnection: must be between 1 and 1024",
            "path: /v1/x,",
            "path: /v1/x, kind: websocket, websocket: { maxInFlightPerConnection: 0 },",
        ),
        (
            "websocket.pingInterval: must be between 1s and 5m",
            "path: /v1/x,",
            "path: /v1/x, kind: websocket, websocket: { pingInterval: 10m },",
        ),
        (
            "websocket.maxLifetime: must be between 1m and 24h",
            "path: /v1/x,",
            "path: /v1/x, kind: websocket, websocket: { maxLifetime: 10s },",
        ),
        (
            "websocket.idleTimeout: `soon` is not a duration",
            "path: /v1/x,",
            "path: /v1/x, kind: websocket, websocket: { idleTimeout: soon },",
        ),
    ];
    for (want, from, to) in cases {
        assert!(
            BASE.contains(from),
            "case `{want}`: pattern {from:?} not in base"
        );
        let yaml = BASE.replacen(from, to, 1);
        let errs = errors_of(&yaml);
        assert!(errs.contains(want), "case `{want}`: got {errs:?}");
        assert!(
            errs.contains("spec."),
            "case `{want}`: no field path in {errs:?}"
        );
    }
}

const REDIS: &str = "spec:\n  backends: { queue: redis, kv: redis, reply: redis }\n";

fn with_redis(redis: &str) -> String {
    BASE.replacen("spec:\n", &format!("{REDIS}  redis: {redis}\n"), 1)
}

#[test]
fn a_redis_ca_is_refused_with_managed_redis() {
    let e = errors_of(&with_redis(
        "{ mode: managed, caSecretRef: { name: redis-tls, key: ca.crt } }",
    ));
    assert!(
        e.contains("spec.redis.caSecretRef: only used with mode: external"),
        "{e}"
    );
    // Managed is the default mode.
    let e = errors_of(&with_redis(
        "{ caSecretRef: { name: redis-tls, key: ca.crt } }",
    ));
    assert!(e.contains("spec.redis.caSecretRef"), "{e}");
}

#[test]
fn a_redis_ca_is_accepted_with_external_redis() {
    let yaml = with_redis(
        "{ mode: external, urlSecretRef: { name: redis, key: url }, caSecretRef: { name: redis-tls, key: ca.crt } }",
    );
    let (sp, _) = parse_manifest("t", &yaml).unwrap_or_else(|e| panic!("{e}"));
    let ca = sp.spec.redis.unwrap().ca_secret_ref.unwrap();
    assert_eq!((ca.name.as_str(), ca.key.as_str()), ("redis-tls", "ca.crt"));
}

#[test]
fn a_cycle_names_its_nodes() {
    let yaml = BASE.replacen(
        "name: c, group: cpu, uses: builtin/echo }",
        "name: c, group: cpu, uses: builtin/echo, next: b }",
        1,
    );
    let errs = errors_of(&yaml);
    assert!(
        errs.contains("b → c → b") || errs.contains("c → b → c"),
        "{errs}"
    );
}

#[test]
fn shape_errors_name_the_field_and_never_panic() {
    let e = errors_of(&BASE.replacen("timeout: 5s", "timeout: 5s, colour: red", 1));
    assert!(
        e.contains("spec.interfaces[0]") && e.contains("colour"),
        "{e}"
    );
    let e = errors_of(&BASE.replacen("role: worker", "role: boss", 1));
    assert!(e.contains("spec.groups[1].role"), "{e}");
    let e = errors_of("kind: Deployment\napiVersion: apps/v1\n");
    assert!(e.contains("expected apiVersion sluice.dev/v1alpha1"), "{e}");
    let e = errors_of(": : :");
    assert!(!e.is_empty());
    assert!(matches!(
        parse_manifest(
            "x",
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamPipeline\nspec: {}\n"
        ),
        Err(ManifestError::Parse { .. })
    ));
}

#[test]
fn credentials_inline_in_http_headers_are_refused_by_field() {
    let yaml = BASE.replace(
        "    - { name: c, group: cpu, uses: builtin/echo }",
        "    - { name: c, group: cpu, uses: builtin/http, with: { url: \"http://x/\", headers: { Authorization: \"Bearer inline\", X-Tenant: blue } } }",
    );
    let e = errors_of(&yaml);
    assert!(
        e.contains("spec.nodes[2].with.headers.Authorization"),
        "{e}"
    );
    assert!(e.contains("headersFrom"), "{e}");
    assert!(
        !e.contains("X-Tenant") && !e.contains("Bearer inline"),
        "{e}"
    );
    // The same header from a Secret is fine.
    let yaml = BASE.replace(
        "    - { name: c, group: cpu, uses: builtin/echo }",
        "    - { name: c, group: cpu, uses: builtin/http, with: { url: \"http://x/\", headersFrom: { Authorization: { secretRef: { name: api, key: token } } } } }",
    );
    assert_eq!(errors_of(&yaml), "");
}

#[test]
fn interface_auth_names_exactly_one_way_and_valid_names() {
    let with_auth =
        |auth: &str| BASE.replace("timeout: 5s }", &format!("timeout: 5s, auth: {auth} }}"));
    let (_, plan) = parse_manifest(
        "t",
        &with_auth("{ bearer: { secretRef: { name: api-tokens, key: tokens } } }"),
    )
    .unwrap();
    assert_eq!(
        plan.interfaces[0].auth,
        Some(sluice_crds::AuthPlan::Bearer {
            secret: "api-tokens".into(),
            key: "tokens".into()
        })
    );
    let (_, plan) = parse_manifest(
        "t",
        &with_auth("{ trustedHeader: X-Auth-Request-User, rateLimit: { requestsPerSecond: 5 } }"),
    )
    .unwrap();
    assert_eq!(plan.interfaces[0].rate_limit, Some((5, 5)));
    assert_eq!(
        plan.interfaces[0].auth,
        Some(sluice_crds::AuthPlan::TrustedHeader(
            "x-auth-request-user".into()
        ))
    );
    for (auth, want) in [
        ("{}", "exactly one of bearer and trustedHeader"),
        (
            "{ trustedHeader: X-User, bearer: { secretRef: { name: a, key: b } } }",
            "exactly one of bearer and trustedHeader",
        ),
        (
            "{ trustedHeader: Authorization }",
            "has a meaning of its own",
        ),
        ("{ trustedHeader: \"X User\" }", "letters, digits and '-'"),
        (
            "{ bearer: { secretRef: { name: Bad_Name, key: b } } }",
            "is not a Secret name",
        ),
        (
            "{ bearer: { secretRef: { name: a, key: \"../x\" } } }",
            "is not a Secret key",
        ),
        (
            "{ trustedHeader: X-User, rateLimit: { requestsPerSecond: 0 } }",
            "rateLimit.requestsPerSecond: must be between 1 and 1000000",
        ),
        (
            "{ trustedHeader: X-User, rateLimit: { requestsPerSecond: 5, burst: 2000000 } }",
            "rateLimit.burst: must be between 1 and 1000000",
        ),
    ] {
        let errors = errors_of(&with_auth(auth));
        assert!(errors.contains(want), "{auth}: {errors}");
        assert!(
            errors.contains("spec.interfaces[0].auth"),
            "{auth}: {errors}"
        );
    }
}

#[test]
fn tcp_worker_groups_take_neither_replicas_nor_autoscale_and_hold_their_reply_key() {
    let tcp = BASE.replace(
        "spec:\n",
        "spec:\n  backends: { queue: tcp, kv: tcp, reply: tcp }\n",
    );
    let (_, plan) = parse_manifest("t", &tcp).unwrap();
    assert_eq!(plan.backend, sluice_crds::BackendKind::Tcp);
    assert!(!plan.key_needs("web").request.is_empty());
    // The handshake key: a group's own reply key, held by it alone, also
    // when the group answers no interface (`spare` runs no node).
    let spare = |yaml: &str| {
        yaml.replace(
            "{ name: cpu, role: worker }",
            "{ name: cpu, role: worker }\n    - { name: spare, role: worker }",
        )
    };
    let (_, on_tcp) = parse_manifest("t", &spare(&tcp)).unwrap();
    assert!(on_tcp.key_needs("spare").reply.contains("spare"));
    let (_, in_memory) = parse_manifest("t", &spare(BASE)).unwrap();
    assert!(!in_memory.key_needs("spare").reply.contains("spare"));

    let replicas = tcp.replace(
        "{ name: cpu, role: worker }",
        "{ name: cpu, role: worker, replicas: 2 }",
    );
    let e = errors_of(&replicas);
    assert!(
        e.contains("spec.groups[1].replicas") && e.contains("tcp"),
        "{e}"
    );
    let autoscale = tcp.replace(
        "{ name: cpu, role: worker }",
        "{ name: cpu, role: worker, autoscale: { maxReplicas: 3 } }",
    );
    let e = errors_of(&autoscale);
    assert!(
        e.contains("spec.groups[1].autoscale") && e.contains("tcp"),
        "{e}"
    );
    // The ingress group scales the pods.
    let ingress = tcp.replace(
        "{ name: web, role: ingress }",
        "{ name: web, role: ingress, replicas: 3 }",
    );
    assert_eq!(errors_of(&ingress), "");
    // Mixed is still refused, naming tcp among the choices.
    let mixed = BASE.replace(
        "spec:\n",
        "spec:\n  backends: { queue: tcp, kv: memory, reply: tcp }\n",
    );
    assert!(
        errors_of(&mixed).contains("all tcp"),
        "{}",
        errors_of(&mixed)
    );
}

#[test]
fn a_pause_needs_managed_redis() {
    let with = |extra: &str| errors_of(&BASE.replace("spec:\n", &format!("spec:\n{extra}")));
    let redis = "  backends: { queue: redis, kv: redis, reply: redis }\n";
    assert_eq!(with(&format!("  paused: true\n{redis}")), "");
    assert_eq!(
        with(&format!(
            "  paused: true\n{redis}  redis: {{ mode: managed }}\n"
        )),
        ""
    );
    assert_eq!(with("  paused: false\n"), "");
    for refused in [
        "  paused: true\n".to_string(),
        "  paused: true\n  backends: { queue: tcp, kv: tcp, reply: tcp }\n".to_string(),
        format!(
            "  paused: true\n{redis}  redis: {{ mode: external, urlSecretRef: {{ name: r, key: url }} }}\n"
        ),
    ] {
        let e = with(&refused);
        assert!(e.contains("spec.paused") && e.contains("managed Redis"), "{refused}: {e}");
    }
}
