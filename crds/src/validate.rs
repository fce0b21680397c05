//! Every rule a StreamPipeline spec must satisfy beyond its schema.
//!
//! The CRD's schema and CEL rules refuse what they can express at admission;
//! this module checks everything (including what CEL cannot: cycles, the
//! shape of `next`, durations relative to each other), so a spec read from a
//! local file gets the same answers as one applied to a cluster. Each error
//! carries the field path, in the form `spec.nodes[2].next`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::types::*;
use crate::units::{parse_duration, parse_size};

/// The `builtin/*` node types of the default worker image.
pub const BUILTIN_NODES: &[&str] = &["echo", "json-map", "http", "delay", "cpu", "route"];

/// Paths the ingress serves itself; interfaces may not take them.
pub const RESERVED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Largest list lengths, mirrored as `maxItems` in the CRD.
pub const MAX_INTERFACES: usize = 32;
pub const MAX_GROUPS: usize = 32;
pub const MAX_NODES: usize = 128;
pub const MAX_ROUTES: usize = 32;

/// Group names become parts of Kubernetes object names (`<pipeline>-<group>`).
pub const MAX_GROUP_NAME: usize = 30;

/// A lease must leave room for a reclaim and a second attempt inside the
/// shortest interface timeout, so a worker crash costs a delay, not a 504:
/// the lease may be at most half the shortest timeout (2s lease, 5s timeout).
pub const LEASE_TIMEOUT_RATIO: u32 = 2;

/// One violated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, e.g. `spec.nodes[1].group`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, value: Option<&String>, default: Duration) -> Duration {
        match value.map(|v| parse_duration(v)) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(path, e);
                default
            }
        }
    }
}

/// Checks `spec`; an empty result means it is valid.
pub fn validate(spec: &StreamPipelineSpec) -> Vec<FieldError> {
    let mut e = Errors::default();
    check_backends(spec, &mut e);
    let groups = check_groups(spec, &mut e);
    let nodes = check_nodes(spec, &groups, &mut e);
    check_cycles(spec, &nodes, &mut e);
    let min_timeout = check_interfaces(spec, &nodes, &mut e);
    check_limits(spec, min_timeout, &mut e);
    check_security(spec, &mut e);
    e.0
}

fn check_backends(spec: &StreamPipelineSpec, e: &mut Errors) {
    let b = &spec.backends;
    if b.queue != b.kv || b.kv != b.reply {
        e.push(
            "spec.backends",
            format!(
                "mixed backends (queue: {}, kv: {}, reply: {}) are not supported; use all memory or all redis",
                b.queue, b.kv, b.reply
            ),
        );
    }
    if let Some(r) = &spec.redis {
        if r.mode == RedisMode::External && r.url_secret_ref.is_none() {
            e.push(
                "spec.redis.urlSecretRef",
                "external Redis needs urlSecretRef (a Secret key holding the URL)",
            );
        }
        if r.mode == RedisMode::Managed && r.url_secret_ref.is_some() {
            e.push("spec.redis.urlSecretRef", "only used with mode: external");
        }
        if r.mode == RedisMode::Managed && r.ca_secret_ref.is_some() {
            // Managed Redis listens without TLS on the pod network.
            e.push("spec.redis.caSecretRef", "only used with mode: external");
        }
        if let Some(s) = &r.storage {
            if let Err(msg) = parse_size(s) {
                e.push("spec.redis.storage", msg);
            }
        }
    }
}

/// Whether `s` is a DNS-1123 label of at most `max` characters (lower case
/// letters, digits and `-`, neither first nor last): the name of a
/// namespace, group, node or interface.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Returns group name → role for the groups that are well-formed.
fn check_groups(spec: &StreamPipelineSpec, e: &mut Errors) -> BTreeMap<String, GroupRole> {
    let mut groups = BTreeMap::new();
    if spec.groups.len() > MAX_GROUPS {
        e.push("spec.groups", format!("at most {MAX_GROUPS} groups"));
    }
    for (i, g) in spec.groups.iter().enumerate() {
        let p = format!("spec.groups[{i}]");
        if !is_dns_label(&g.name, MAX_GROUP_NAME) {
            e.push(
                format!("{p}.name"),
                format!("`{}` must be lowercase letters, digits and '-', at most {MAX_GROUP_NAME} characters", g.name),
            );
        }
        if groups.insert(g.name.clone(), g.role).is_some() {
            e.push(
                format!("{p}.name"),
                format!("duplicate group name `{}`", g.name),
            );
        }
        if let Some(r) = g.replicas {
            if r < 0 {
                e.push(format!("{p}.replicas"), "must not be negative");
            }
        }
        if let Some(c) = g.concurrency {
            if c == 0 || c > 4096 {
                e.push(format!("{p}.concurrency"), "must be between 1 and 4096");
            }
        }
        if let Some(a) = &g.autoscale {
            if g.role == GroupRole::Ingress {
                e.push(
                    format!("{p}.autoscale"),
                    "the ingress group does not autoscale; set replicas",
                );
            }
            let min = a.min_replicas.unwrap_or(1);
            if min < 0 {
                e.push(format!("{p}.autoscale.minReplicas"), "must not be negative");
            }
            if a.max_replicas < 1 || a.max_replicas < min {
                e.push(
                    format!("{p}.autoscale.maxReplicas"),
                    format!("must be at least 1 and at least minReplicas ({min})"),
                );
            }
            if a.target_backlog_per_replica == Some(0) {
                e.push(
                    format!("{p}.autoscale.targetBacklogPerReplica"),
                    "must be at least 1",
                );
            }
            if let Some(r) = a.target_rate_per_replica {
                if !(r.is_finite() && r > 0.0) {
                    e.push(
                        format!("{p}.autoscale.targetRatePerReplica"),
                        "must be a positive number of envelopes per second",
                    );
                }
            }
            if a.target_processing_time.is_some() {
                let t = e.duration(
                    &format!("{p}.autoscale.targetProcessingTime"),
                    a.target_processing_time.as_ref(),
                    Duration::from_secs(1),
                );
                if t.is_zero() {
                    e.push(
                        format!("{p}.autoscale.targetProcessingTime"),
                        "must be more than zero",
                    );
                }
            }
            if a.scale_down_stabilization.is_some() {
                let w = e.duration(
                    &format!("{p}.autoscale.scaleDownStabilization"),
                    a.scale_down_stabilization.as_ref(),
                    Duration::ZERO,
                );
                if w > Duration::from_secs(3600) {
                    e.push(
                        format!("{p}.autoscale.scaleDownStabilization"),
                        "must be at most 1h",
                    );
                }
            }
            if let Some(c) = a.target_cpu_utilization {
                if !(1..=100).contains(&c) {
                    e.push(
                        format!("{p}.autoscale.targetCpuUtilization"),
                        "must be between 1 and 100",
                    );
                }
            }
        }
    }
    let ingress: Vec<_> = spec
        .groups
        .iter()
        .filter(|g| g.role == GroupRole::Ingress)
        .collect();
    if ingress.len() != 1 {
        e.push(
            "spec.groups",
            format!(
                "exactly one group must have role ingress, found {}",
                ingress.len()
            ),
        );
    }
    groups
}

/// Returns node name → (group, next targets) for the nodes that are well-formed.
fn check_nodes(
    spec: &StreamPipelineSpec,
    groups: &BTreeMap<String, GroupRole>,
    e: &mut Errors,
) -> BTreeMap<String, (String, Vec<String>)> {
    if spec.nodes.len() > MAX_NODES {
        e.push("spec.nodes", format!("at most {MAX_NODES} nodes"));
    }
    if spec.nodes.is_empty() {
        e.push("spec.nodes", "a pipeline needs at least one node");
    }
    let names: BTreeMap<&str, &NodeSpec> =
        spec.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut seen = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        let p = format!("spec.nodes[{i}]");
        if !is_dns_label(&n.name, 63) {
            e.push(
                format!("{p}.name"),
                format!("`{}` must be lowercase letters, digits and '-'", n.name),
            );
        }
        if !seen.insert(n.name.as_str()) {
            e.push(
                format!("{p}.name"),
                format!("duplicate node name `{}`", n.name),
            );
        }
        if !groups.contains_key(&n.group) {
            e.push(format!("{p}.group"), format!("unknown group `{}`", n.group));
        }
        check_uses(&p, &n.uses, e);
        check_inline_credentials(&p, n, e);
        if let Some(w) = &n.with {
            if !w.is_object() {
                e.push(format!("{p}.with"), "must be an object");
            }
        }
        let targets = next_targets(&p, n.next.as_ref(), e);
        for t in &targets {
            match names.get(t.as_str()) {
                None => e.push(format!("{p}.next"), format!("unknown node `{t}`")),
                Some(target) => {
                    let from_worker = groups.get(&n.group) == Some(&GroupRole::Worker);
                    let to_ingress = groups.get(&target.group) == Some(&GroupRole::Ingress);
                    if from_worker && to_ingress {
                        e.push(
                            format!("{p}.next"),
                            format!(
                                "`{t}` runs on the ingress group; nodes of worker groups may only forward to worker groups"
                            ),
                        );
                    }
                }
            }
        }
        out.insert(n.name.clone(), (n.group.clone(), targets));
    }
    out
}

/// Header names that carry credentials: a pipeline resource never holds
/// secrets inline (DESIGN §3), so `builtin/http` takes them from
/// `headersFrom` (a Secret) only. Lower case.
pub const CREDENTIAL_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];

/// `builtin/http` static headers that would put a credential in the
/// resource.
fn check_inline_credentials(p: &str, n: &NodeSpec, e: &mut Errors) {
    if n.uses != "builtin/http" {
        return;
    }
    let headers = n
        .with
        .as_ref()
        .and_then(|w| w.get("headers"))
        .and_then(Value::as_object);
    for name in headers.into_iter().flat_map(|h| h.keys()) {
        if CREDENTIAL_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            e.push(
                format!("{p}.with.headers.{name}"),
                format!(
                    "carries credentials, which never go inline in the resource; \
                     use `headersFrom: {{{name}: {{secretRef: {{name, key}}}}}}`"
                ),
            );
        }
    }
}

fn check_uses(p: &str, uses: &str, e: &mut Errors) {
    match uses.split_once('/') {
        Some(("builtin", name)) if BUILTIN_NODES.contains(&name) => {}
        Some(("builtin", name)) => e.push(
            format!("{p}.uses"),
            format!(
                "unknown builtin `{name}`; known: {}",
                BUILTIN_NODES.join(", ")
            ),
        ),
        Some(("rust", name)) if is_dns_label(name, 63) => {}
        _ => e.push(
            format!("{p}.uses"),
            format!("`{uses}` must be builtin/<name> or rust/<name>"),
        ),
    }
}

fn next_targets(p: &str, next: Option<&NextSpec>, e: &mut Errors) -> Vec<String> {
    match next {
        None => vec![],
        Some(NextSpec::One(t)) => vec![t.clone()],
        Some(NextSpec::Routes(routes)) => {
            if routes.is_empty() {
                e.push(
                    format!("{p}.next"),
                    "an empty route list; omit next for a terminal node",
                );
            }
            if routes.len() > MAX_ROUTES {
                e.push(format!("{p}.next"), format!("at most {MAX_ROUTES} routes"));
            }
            for (j, r) in routes.iter().enumerate() {
                if r.when.is_none() && j + 1 != routes.len() {
                    e.push(
                        format!("{p}.next[{j}]"),
                        "the default route (no `when`) must be the last one",
                    );
                }
            }
            routes.iter().map(|r| r.to.clone()).collect()
        }
    }
}

fn check_cycles(
    spec: &StreamPipelineSpec,
    nodes: &BTreeMap<String, (String, Vec<String>)>,
    e: &mut Errors,
) {
    // Iterative DFS with colours; reports the first cycle found from each root.
    #[derive(Clone, Copy, PartialEq)]
    enum C {
        White,
        Grey,
        Black,
    }
    let mut colour: BTreeMap<&str, C> = nodes.keys().map(|k| (k.as_str(), C::White)).collect();
    for root in spec.nodes.iter().map(|n| n.name.as_str()) {
        if colour.get(root) != Some(&C::White) {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(root, 0)];
        colour.insert(root, C::Grey);
        while let Some((node, idx)) = stack.pop() {
            let next = nodes.get(node).map(|(_, t)| t.as_slice()).unwrap_or(&[]);
            if let Some(t) = next.get(idx) {
                stack.push((node, idx + 1));
                match colour.get(t.as_str()) {
                    Some(C::White) => {
                        colour.insert(t, C::Grey);
                        stack.push((t, 0));
                    }
                    Some(C::Grey) => {
                        let mut path: Vec<&str> = stack.iter().map(|(n, _)| *n).collect();
                        let start = path.iter().position(|n| *n == t).unwrap_or(0);
                        path.drain(..start);
                        path.push(t);
                        let i = spec.nodes.iter().position(|n| n.name == node).unwrap_or(0);
                        e.push(
                            format!("spec.nodes[{i}].next"),
                            format!("cycle: {}", path.join(" → ")),
                        );
                        return;
                    }
                    _ => {}
                }
            } else {
                colour.insert(node, C::Black);
            }
        }
    }
}

/// Returns the shortest interface timeout.
fn check_interfaces(
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
        if !is_dns_label(&it.name, 63) {
            e.push(
                format!("{p}.name"),
                format!("`{}` must be lowercase letters, digits and '-'", it.name),
            );
        }
        if !names.insert(&it.name) {
            e.push(
                format!("{p}.name"),
                format!("duplicate interface name `{}`", it.name),
            );
        }
        if !it.path.starts_with('/') || it.path.contains(['?', '#', ' ', '{', '}', '*']) {
            e.push(
                format!("{p}.path"),
                format!("`{}` must start with '/' and be a plain path", it.path),
            );
        } else if RESERVED_PATHS.contains(&it.path.as_str()) {
            e.push(
                format!("{p}.path"),
                format!("`{}` is served by the ingress itself", it.path),
            );
        }
        if !paths.insert(&it.path) {
            e.push(format!("{p}.path"), format!("duplicate path `{}`", it.path));
        }
        if it.kind != InterfaceKind::Http {
            e.push(
                format!("{p}.kind"),
                format!(
                    "{:?} interfaces are not served by this release; use http",
                    it.kind
                )
                .to_lowercase(),
            );
        }
        if !nodes.contains_key(&it.entry) {
            e.push(format!("{p}.entry"), format!("unknown node `{}`", it.entry));
        }
        let t = e.duration(
            &format!("{p}.timeout"),
            it.timeout.as_ref(),
            crate::plan::DEFAULT_TIMEOUT,
        );
        if t < Duration::from_millis(100) {
            e.push(format!("{p}.timeout"), "must be at least 100ms");
        }
        min_timeout = Some(min_timeout.map_or(t, |m| m.min(t)));
        if it.max_in_flight == Some(0) {
            e.push(format!("{p}.maxInFlight"), "must be at least 1");
        }
    }
    min_timeout
}

fn check_limits(spec: &StreamPipelineSpec, min_timeout: Option<Duration>, e: &mut Errors) {
    let l = &spec.limits;
    if l.max_queue_depth == Some(0) {
        e.push("spec.limits.maxQueueDepth", "must be at least 1");
    }
    if let Some(b) = &l.max_queue_bytes {
        match parse_size(b) {
            Ok(0) => e.push("spec.limits.maxQueueBytes", "must be at least 1"),
            Ok(_) => {}
            Err(msg) => e.push("spec.limits.maxQueueBytes", msg),
        }
    }
    if let Some(d) = l.max_deliveries {
        if d == 0 || d > 100 {
            e.push("spec.limits.maxDeliveries", "must be between 1 and 100");
        }
    }
    let lease = e.duration(
        "spec.limits.lease",
        l.lease.as_ref(),
        crate::plan::DEFAULT_LEASE,
    );
    if lease < Duration::from_millis(100) {
        e.push("spec.limits.lease", "must be at least 100ms");
    }
    if let Some(t) = min_timeout {
        if lease * LEASE_TIMEOUT_RATIO > t {
            e.push(
                "spec.limits.lease",
                format!(
                    "lease {:?} must be well below every interface timeout (at most 1/{LEASE_TIMEOUT_RATIO} of the shortest, {:?})",
                    lease, t
                ),
            );
        }
    }
}

fn check_security(spec: &StreamPipelineSpec, e: &mut Errors) {
    let s = &spec.security;
    let rotate = e.duration(
        "spec.security.rotateEvery",
        s.rotate_every.as_ref(),
        crate::plan::DEFAULT_ROTATE_EVERY,
    );
    if rotate < Duration::from_secs(600) {
        e.push(
            "spec.security.rotateEvery",
            "must be at least 10m (keys overlap for the propagation delay)",
        );
    }
    let skew = e.duration(
        "spec.security.clockSkew",
        s.clock_skew.as_ref(),
        crate::plan::DEFAULT_CLOCK_SKEW,
    );
    if skew > Duration::from_secs(600) {
        e.push("spec.security.clockSkew", "must be at most 10m");
    }
    if let Some(m) = s.max_payload_bytes {
        if !(1024..=64 << 20).contains(&m) {
            e.push(
                "spec.security.maxPayloadBytes",
                "must be between 1024 and 67108864",
            );
        }
    }
    match (s.keys, &s.secret_name) {
        (KeysSource::SecretRef, None) => e.push(
            "spec.security.secretName",
            "keys: secretRef needs secretName",
        ),
        (KeysSource::Generated, Some(_)) => {
            e.push("spec.security.secretName", "only used with keys: secretRef")
        }
        _ => {}
    }
}
