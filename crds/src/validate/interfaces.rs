//! Interfaces: paths, kinds, timeouts, GraphQL operations and who may call.

use super::*;

/// Returns the shortest interface timeout.
pub(super) fn check_interfaces(
    spec: &StreamPipelineSpec,
    nodes: &BTreeMap<String, (String, Vec<String>)>,
    e: &mut Errors,
) -> Option<Duration> {
    if spec.interfaces.is_empty() {
        e.push("spec.interfaces", "a pipeline needs at least one interface");
    }
    if spec.interfaces.len() > MAX_INTERFACES {
        e.push(
            "spec.interfaces",
            format!("at most {MAX_INTERFACES} interfaces"),
        );
    }
    let mut names = BTreeSet::new();
    let mut paths = BTreeSet::new();
    let mut min_timeout: Option<Duration> = None;
    for (i, it) in spec.interfaces.iter().enumerate() {
        let p = format!("spec.interfaces[{i}]");
        if !is_dns_label(&it.name, MAX_NAME) {
            e.push(
                format!("{p}.name"),
                format!(
                    "{} must be lowercase letters, digits and '-', at most {MAX_NAME} characters",
                    shown(&it.name)
                ),
            );
        }
        if !names.insert(&it.name) {
            e.push(
                format!("{p}.name"),
                format!("duplicate interface name {}", shown(&it.name)),
            );
        }
        if let Err(why) = check_interface_path(&it.path) {
            e.push(format!("{p}.path"), format!("{} {why}", shown(&it.path)));
        } else if RESERVED_PATHS.contains(&it.path.as_str()) {
            e.push(
                format!("{p}.path"),
                format!("{} is served by the ingress itself", shown(&it.path)),
            );
        }
        if let Some(other) = spec.interfaces.iter().find(|o| {
            it.path
                .starts_with(&format!("{}/requests/", o.path.trim_end_matches('/')))
        }) {
            e.push(
                format!("{p}.path"),
                format!(
                    "{} is under {}/requests/, where the answers of interface {} are fetched",
                    shown(&it.path),
                    other.path.trim_end_matches('/'),
                    shown(&other.name)
                ),
            );
        }
        if !paths.insert(&it.path) {
            e.push(
                format!("{p}.path"),
                format!("duplicate path {}", shown(&it.path)),
            );
        }
        check_kind(&p, it, nodes, e);
        if !nodes.contains_key(&it.entry) {
            e.push(
                format!("{p}.entry"),
                format!("unknown node {}", shown(&it.entry)),
            );
        }
        let t = e.duration(
            &format!("{p}.timeout"),
            it.timeout.as_ref(),
            crate::defaults::DEFAULT_TIMEOUT,
            (MIN_TIMEOUT, MAX_TIMEOUT),
        );
        min_timeout = Some(min_timeout.map_or(t, |m| m.min(t)));
        let a = e.duration(
            &format!("{p}.asyncTimeout"),
            it.async_timeout.as_ref(),
            t,
            (MIN_TIMEOUT, MAX_ASYNC_TIMEOUT),
        );
        min_timeout = Some(min_timeout.map_or(a, |m| m.min(a)));
        if let Some(a) = &it.auth {
            check_auth(&format!("{p}.auth"), a, e);
        }
        e.count(
            &format!("{p}.maxInFlight"),
            it.max_in_flight,
            (1, MAX_IN_FLIGHT),
        );
    }
    min_timeout
}

/// What an interface may set depends on its kind: `ordered` and
/// `websocket` only on WebSocket interfaces, asynchronous answers only on
/// HTTP ones.
fn check_kind(
    p: &str,
    it: &InterfaceSpec,
    nodes: &BTreeMap<String, (String, Vec<String>)>,
    e: &mut Errors,
) {
    if it.kind != InterfaceKind::Websocket {
        if it.ordered.is_some() {
            e.push(
                format!("{p}.ordered"),
                "applies to websocket interfaces (an HTTP request has one answer)",
            );
        }
        if it.websocket.is_some() {
            e.push(format!("{p}.websocket"), "applies to websocket interfaces");
        }
    }
    if it.kind != InterfaceKind::Graphql && it.graphql.is_some() {
        e.push(format!("{p}.graphql"), "applies to graphql interfaces");
    }
    if it.kind != InterfaceKind::Http {
        let why = match it.kind {
            InterfaceKind::Websocket => "websocket messages are answered on their connection",
            InterfaceKind::Sse => {
                "sse answers are streamed, and resumed with GET <path>/requests/<id>/events"
            }
            _ => "graphql operations are answered in their response",
        };
        if it.mode == Some(InterfaceMode::Async) {
            e.push(format!("{p}.mode"), format!("{why}; use sync"));
        }
        if it.async_timeout.is_some() {
            e.push(format!("{p}.asyncTimeout"), format!("{why}; use timeout"));
        }
    }
    match it.kind {
        InterfaceKind::Http => {}
        InterfaceKind::Graphql => check_graphql(p, it, nodes, e),
        InterfaceKind::Websocket => {
            let w = it.websocket.clone().unwrap_or_default();
            let w_p = format!("{p}.websocket");
            e.count(
                &format!("{w_p}.maxInFlightPerConnection"),
                w.max_in_flight_per_connection,
                (1, MAX_WS_IN_FLIGHT),
            );
            e.count(
                &format!("{w_p}.maxConnections"),
                w.max_connections,
                (1, MAX_WS_CONNECTIONS),
            );
            let per_connection = w
                .max_in_flight_per_connection
                .unwrap_or(crate::defaults::DEFAULT_WS_IN_FLIGHT);
            let total = it
                .max_in_flight
                .unwrap_or(crate::defaults::DEFAULT_MAX_IN_FLIGHT);
            if per_connection > total {
                e.push(
                    format!("{w_p}.maxInFlightPerConnection"),
                    format!("must not exceed the interface's maxInFlight ({total})"),
                );
            }
            e.duration(
                &format!("{w_p}.idleTimeout"),
                w.idle_timeout.as_ref(),
                crate::defaults::DEFAULT_WS_IDLE,
                (Duration::from_secs(1), Duration::from_secs(24 * 3600)),
            );
            e.duration(
                &format!("{w_p}.maxLifetime"),
                w.max_lifetime.as_ref(),
                crate::defaults::DEFAULT_WS_LIFETIME,
                (Duration::from_secs(60), Duration::from_secs(24 * 3600)),
            );
            e.duration(
                &format!("{w_p}.pingInterval"),
                w.ping_interval.as_ref(),
                crate::defaults::DEFAULT_WS_PING,
                (Duration::from_secs(1), Duration::from_secs(300)),
            );
        }
        InterfaceKind::Sse => {}
    }
}

/// A graphql interface's operations: GraphQL names, unique per root type,
/// known entry nodes, types that parse, and bounded counts.
fn check_graphql(
    p: &str,
    it: &InterfaceSpec,
    nodes: &BTreeMap<String, (String, Vec<String>)>,
    e: &mut Errors,
) {
    let g_p = format!("{p}.graphql");
    let Some(g) = &it.graphql else {
        e.push(g_p, "a graphql interface declares its operations");
        return;
    };
    e.count(
        &format!("{g_p}.maxDepth"),
        g.max_depth,
        (1, MAX_GRAPHQL_DEPTH),
    );
    e.count(
        &format!("{g_p}.maxComplexity"),
        g.max_complexity,
        (1, MAX_GRAPHQL_COMPLEXITY),
    );
    if g.operations.is_empty() || g.operations.len() > MAX_GRAPHQL_OPERATIONS {
        e.push(
            format!("{g_p}.operations"),
            format!("1 to {MAX_GRAPHQL_OPERATIONS} operations"),
        );
    }
    if !g
        .operations
        .iter()
        .any(|o| o.kind == GraphqlOperationKind::Query)
    {
        e.push(
            format!("{g_p}.operations"),
            "at least one query: a GraphQL schema needs a Query root",
        );
    }
    let mut seen = BTreeSet::new();
    for (k, o) in g.operations.iter().enumerate() {
        let o_p = format!("{g_p}.operations[{k}]");
        if !crate::graphql::is_name(&o.name) {
            e.push(
                format!("{o_p}.name"),
                format!(
                    "{} is not a GraphQL name (letters, digits, '_'; not starting with a digit or '__'; ≤ 64)",
                    shown(&o.name)
                ),
            );
        } else if !seen.insert((o.kind == GraphqlOperationKind::Mutation, o.name.as_str())) {
            e.push(
                format!("{o_p}.name"),
                format!("duplicate operation {}", shown(&o.name)),
            );
        }
        if let Some(entry) = &o.entry {
            if !nodes.contains_key(entry) {
                e.push(
                    format!("{o_p}.entry"),
                    format!("unknown node {}", shown(entry)),
                );
            }
        }
        let mut typed = |field: &str, m: &BTreeMap<String, String>, at_least_one: bool| {
            if m.len() > MAX_GRAPHQL_FIELDS || (at_least_one && m.is_empty()) {
                e.push(
                    format!("{o_p}.{field}"),
                    format!("{} to {MAX_GRAPHQL_FIELDS} entries", u8::from(at_least_one)),
                );
            }
            for (name, t) in m {
                if !crate::graphql::is_name(name) {
                    e.push(
                        format!("{o_p}.{field}"),
                        format!("{} is not a GraphQL name", shown(name)),
                    );
                }
                if let Err(why) = crate::graphql::GqlType::parse(t) {
                    e.push(format!("{o_p}.{field}.{name}"), why);
                }
            }
        };
        if let Some(a) = &o.arguments {
            typed("arguments", a, false);
        }
        if let Some(f) = &o.result_fields {
            typed("resultFields", f, true);
        }
        if let Some(t) = &o.result {
            if o.result_fields.is_some() {
                e.push(
                    format!("{o_p}.result"),
                    "set result or resultFields, not both",
                );
            } else if let Err(why) = crate::graphql::GqlType::parse(t) {
                e.push(format!("{o_p}.result"), why);
            }
        }
    }
}

/// Headers a proxy cannot be trusted to own, or that carry other meaning.
const UNTRUSTABLE_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "host",
    "idempotency-key",
    "prefer",
    "te",
    "traceparent",
    "transfer-encoding",
    "upgrade",
    "x-request-id",
];

fn check_auth(p: &str, a: &AuthSpec, e: &mut Errors) {
    if let Some(r) = &a.rate_limit {
        e.count(
            &format!("{p}.rateLimit.requestsPerSecond"),
            Some(r.requests_per_second),
            (1, MAX_RATE),
        );
        e.count(&format!("{p}.rateLimit.burst"), r.burst, (1, MAX_RATE));
    }
    match (&a.bearer, &a.trusted_header) {
        (Some(_), Some(_)) | (None, None) => {
            e.push(p, "set exactly one of bearer and trustedHeader");
        }
        (Some(b), None) => {
            if !is_dns_subdomain(&b.secret_ref.name, 253) {
                e.push(
                    format!("{p}.bearer.secretRef.name"),
                    format!("{} is not a Secret name", shown(&b.secret_ref.name)),
                );
            }
            if !is_data_key(&b.secret_ref.key, 253) {
                e.push(
                    format!("{p}.bearer.secretRef.key"),
                    format!("{} is not a Secret key", shown(&b.secret_ref.key)),
                );
            }
        }
        (None, Some(h)) => {
            let token = !h.is_empty()
                && h.len() <= MAX_HEADER_NAME
                && h.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
            if !token {
                e.push(
                    format!("{p}.trustedHeader"),
                    format!(
                        "{} must be letters, digits and '-', at most {MAX_HEADER_NAME} characters",
                        shown(h)
                    ),
                );
            } else if UNTRUSTABLE_HEADERS.contains(&h.to_ascii_lowercase().as_str()) {
                e.push(
                    format!("{p}.trustedHeader"),
                    format!(
                        "{} has a meaning of its own; name the proxy's header",
                        shown(h)
                    ),
                );
            }
        }
    }
}
