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

use crate::limits::*;
use crate::names::PipelineId;
use crate::names::{check_interface_path, is_data_key, is_dns1035_label, is_dns_subdomain};
use crate::types::*;
use crate::units::{parse_duration, parse_size};

pub use crate::limits::{MAX_GROUPS, MAX_GROUP_NAME, MAX_INTERFACES, MAX_NODES, MAX_ROUTES};
pub use crate::names::is_dns_label;

/// Smallest `redis.maxMemory`: Redis itself and its buffers need about that.
pub const MIN_REDIS_MEMORY: u64 = 32 << 20;
/// Largest `redis.maxMemory`.
pub const MAX_REDIS_MEMORY: u64 = 1 << 40;

/// The `builtin/*` node types of the default worker image.
pub const BUILTIN_NODES: &[&str] = &["echo", "json-map", "http", "delay", "cpu", "route", "split"];

/// Paths the ingress serves itself; interfaces may not take them.
pub const RESERVED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

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

    /// Parses an optional duration and checks it lies in `min..=max`;
    /// returns `default` when absent and the value clamped into the range
    /// when refused, so later checks still see a sane value.
    fn duration(
        &mut self,
        path: &str,
        value: Option<&String>,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Duration {
        let d = match value.map(|v| parse_duration(v)) {
            None => return default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(path, e);
                return default;
            }
        };
        if d < min || d > max {
            let rule = if min.is_zero() {
                format!("must be at most {}", show_duration(max))
            } else {
                format!(
                    "must be between {} and {}",
                    show_duration(min),
                    show_duration(max)
                )
            };
            self.push(path, rule);
        }
        d.clamp(min, max)
    }

    /// Checks a count lies in `min..=max`.
    fn count<T: PartialOrd + std::fmt::Display + Copy>(
        &mut self,
        path: &str,
        value: Option<T>,
        (min, max): (T, T),
    ) {
        if let Some(v) = value {
            if v < min || v > max {
                self.push(path, format!("must be between {min} and {max}"));
            }
        }
    }

    /// Checks a list is no longer than `max`.
    fn items<T>(&mut self, path: &str, list: Option<&[T]>, max: usize) {
        if list.is_some_and(|l| l.len() > max) {
            self.push(path, format!("at most {max} items"));
        }
    }
}

/// A duration the way a user writes it (`100ms`, `30s`, `10m`, `1h`).
fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// A user's string echoed in a message: at most 64 characters, so a
/// hostile value cannot make an error (or a status condition) large.
fn shown(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("`{}…`", &s[..i]),
        None => format!("`{s}`"),
    }
}

/// Checks `spec`; an empty result means it is valid.
pub fn validate(spec: &StreamPipelineSpec) -> Vec<FieldError> {
    let mut e = Errors::default();
    check_backends(spec, &mut e);
    check_expose(spec, &mut e);
    let groups = check_groups(spec, &mut e);
    let nodes = check_nodes(spec, &groups, &mut e);
    check_cycles(spec, &nodes, &mut e);
    let min_timeout = check_interfaces(spec, &nodes, &mut e);
    check_limits(spec, min_timeout, &mut e);
    check_security(spec, &mut e);
    e.0
}

/// Checks a pipeline's name and namespace as the API server and the
/// operator need them, so a local run is held to the same names as a
/// cluster: both end up in object names and inside the hash tag of every
/// Redis key (`sluice:{ns/name}:…`), where `/`, `{` or `}` would break it.
///
/// The name is a DNS-1035 label (it names the ingress Service), the
/// namespace a DNS-1123 label, each at most 63 characters.
pub fn validate_id(id: &PipelineId) -> Vec<FieldError> {
    let mut e = Errors::default();
    if !is_dns1035_label(&id.name, MAX_PIPELINE_NAME) {
        e.push(
            "metadata.name",
            format!(
                "{} must be lowercase letters, digits and '-', start with a letter, end with a letter or digit, and be at most {MAX_PIPELINE_NAME} characters",
                shown(&id.name)
            ),
        );
    }
    if !is_dns_label(&id.namespace, MAX_NAMESPACE) {
        e.push(
            "metadata.namespace",
            format!(
                "{} must be lowercase letters, digits and '-', neither first nor last, and at most {MAX_NAMESPACE} characters",
                shown(&id.namespace)
            ),
        );
    }
    e.0
}

fn check_secret_ref(path: &str, r: Option<&SecretKeyRef>, e: &mut Errors) {
    let Some(r) = r else { return };
    if !is_dns_subdomain(&r.name, MAX_SUBDOMAIN) {
        e.push(
            format!("{path}.name"),
            format!(
                "{} is not a Secret name (a DNS-1123 subdomain of at most {MAX_SUBDOMAIN} characters)",
                shown(&r.name)
            ),
        );
    }
    if !is_data_key(&r.key, MAX_SUBDOMAIN) {
        e.push(
            format!("{path}.key"),
            format!(
                "{} is not a Secret key (letters, digits, '-', '_' and '.', not starting with '..', at most {MAX_SUBDOMAIN} characters)",
                shown(&r.key)
            ),
        );
    }
}

fn check_image(path: &str, image: Option<&String>, e: &mut Errors) {
    if let Some(i) = image {
        if i.is_empty() || i.len() > MAX_IMAGE || i.chars().any(|c| c.is_whitespace()) {
            e.push(
                path,
                format!(
                    "must be an image reference without spaces, at most {MAX_IMAGE} characters"
                ),
            );
        }
    }
}

fn check_backends(spec: &StreamPipelineSpec, e: &mut Errors) {
    let b = &spec.backends;
    if b.queue != b.kv || b.kv != b.reply {
        e.push(
            "spec.backends",
            format!(
                "mixed backends (queue: {}, kv: {}, reply: {}) are not supported; use all memory, all redis or all tcp",
                b.queue, b.kv, b.reply
            ),
        );
    }
    if spec.paused == Some(true) {
        let managed = spec
            .redis
            .as_ref()
            .is_none_or(|r| r.mode == RedisMode::Managed);
        if b.queue != BackendKind::Redis || !managed {
            e.push(
                "spec.paused",
                "pausing needs managed Redis (backends redis, redis.mode managed): the operator pauses \
                 the pipeline through a key there; memory and tcp queues live in the ingress pods",
            );
        }
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
            // Managed Redis's CA is the operator's own.
            e.push("spec.redis.caSecretRef", "only used with mode: external");
        }
        check_secret_ref("spec.redis.urlSecretRef", r.url_secret_ref.as_ref(), e);
        check_secret_ref("spec.redis.caSecretRef", r.ca_secret_ref.as_ref(), e);
        check_image("spec.redis.image", r.image.as_ref(), e);
        if let Some(c) = &r.storage_class_name {
            if !crate::names::is_dns_subdomain(c, 253) {
                e.push(
                    "spec.redis.storageClassName",
                    "must be a DNS subdomain (lower case letters, digits, '-' and '.'; at most 253 characters)",
                );
            }
        }
        if r.mode == RedisMode::External
            && (r.storage_class_name.is_some()
                || r.retain_on_delete.is_some()
                || r.max_memory.is_some()
                || r.tls.is_some())
        {
            e.push(
                "spec.redis",
                "storageClassName, retainOnDelete, maxMemory and tls are only used with mode: managed \
                 (an external Redis speaks TLS when its URL is rediss://)",
            );
        }
        if let Some(m) = &r.max_memory {
            match parse_size(m) {
                Ok(b) if b < MIN_REDIS_MEMORY => e.push(
                    "spec.redis.maxMemory",
                    format!("must be at least 32Mi, found `{m}`"),
                ),
                Ok(b) if b > MAX_REDIS_MEMORY => e.push(
                    "spec.redis.maxMemory",
                    format!("must be at most 1Ti, found `{m}`"),
                ),
                Ok(_) => {}
                Err(msg) => e.push("spec.redis.maxMemory", msg),
            }
        }
        if let Some(s) = &r.storage {
            match parse_size(s) {
                Ok(0) => e.push("spec.redis.storage", "must be more than zero"),
                Ok(_) => {}
                Err(msg) => e.push("spec.redis.storage", msg),
            }
        }
    }
}

fn check_expose(spec: &StreamPipelineSpec, e: &mut Errors) {
    if let Some(x) = &spec.expose {
        if let Some(secret) = &x.tls_secret {
            if !is_dns_subdomain(secret, MAX_SUBDOMAIN) {
                e.push(
                    "spec.expose.tlsSecret",
                    format!("{} is not a Secret name", shown(secret)),
                );
            }
            if x.ingress.is_some() {
                e.push(
                    "spec.expose.tlsSecret",
                    "not with expose.ingress: the Ingress terminates TLS (ingress.tlsSecret)",
                );
            }
        }
    }
    let Some(i) = spec.expose.as_ref().and_then(|x| x.ingress.as_ref()) else {
        return;
    };
    // An Ingress rule's host: a DNS-1123 subdomain, optionally `*.` first.
    let host = i.host.strip_prefix("*.").unwrap_or(&i.host);
    if !is_dns_subdomain(host, MAX_SUBDOMAIN) {
        e.push(
            "spec.expose.ingress.host",
            format!(
                "{} is not a host name (a DNS-1123 subdomain, optionally after `*.`)",
                shown(&i.host)
            ),
        );
    }
    for (field, value) in [("className", &i.class_name), ("tlsSecret", &i.tls_secret)] {
        if let Some(v) = value {
            if !is_dns_subdomain(v, MAX_SUBDOMAIN) {
                e.push(
                    format!("spec.expose.ingress.{field}"),
                    format!(
                        "{} is not a DNS-1123 subdomain of at most {MAX_SUBDOMAIN} characters",
                        shown(v)
                    ),
                );
            }
        }
    }
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
                format!(
                    "{} must be lowercase letters, digits and '-', at most {MAX_GROUP_NAME} characters",
                    shown(&g.name)
                ),
            );
        }
        if groups.insert(g.name.clone(), g.role).is_some() {
            e.push(
                format!("{p}.name"),
                format!("duplicate group name {}", shown(&g.name)),
            );
        }
        e.count(&format!("{p}.replicas"), g.replicas, (0, MAX_REPLICAS));
        e.count(
            &format!("{p}.concurrency"),
            g.concurrency,
            (1, MAX_CONCURRENCY),
        );
        check_image(&format!("{p}.image"), g.image.as_ref(), e);
        e.items(
            &format!("{p}.sidecars"),
            g.sidecars.as_deref(),
            MAX_SIDECARS,
        );
        e.items(
            &format!("{p}.tolerations"),
            g.tolerations.as_deref(),
            MAX_OTHER_ITEMS,
        );
        if let Some(a) = &g.autoscale {
            check_autoscale(&p, g.role, a, e);
        }
        if spec.backends.queue == BackendKind::Tcp && g.role == GroupRole::Worker {
            // A tcp worker group is a process (a container) beside its
            // ingress: it scales with the ingress's pods.
            if g.replicas.is_some() {
                e.push(
                    format!("{p}.replicas"),
                    "tcp pipelines run one process of each worker group beside each ingress; \
                     scale the ingress group's replicas instead",
                );
            }
            if g.autoscale.is_some() {
                e.push(
                    format!("{p}.autoscale"),
                    "tcp pipelines do not autoscale worker groups (they run beside each ingress); \
                     use redis backends to scale groups on their own",
                );
            }
        }
    }
    let ingress = spec
        .groups
        .iter()
        .filter(|g| g.role == GroupRole::Ingress)
        .count();
    if ingress != 1 {
        e.push(
            "spec.groups",
            format!("exactly one group must have role ingress, found {ingress}"),
        );
    }
    groups
}

fn check_autoscale(p: &str, role: GroupRole, a: &AutoscaleSpec, e: &mut Errors) {
    if role == GroupRole::Ingress {
        e.push(
            format!("{p}.autoscale"),
            "the ingress group does not autoscale; set replicas",
        );
    }
    let min = a.min_replicas.unwrap_or(1);
    e.count(
        &format!("{p}.autoscale.minReplicas"),
        a.min_replicas,
        (0, MAX_REPLICAS),
    );
    if a.max_replicas < 1 || a.max_replicas < min || a.max_replicas > MAX_REPLICAS {
        e.push(
            format!("{p}.autoscale.maxReplicas"),
            format!(
                "must be at least 1 and at least minReplicas ({min}), and at most {MAX_REPLICAS}"
            ),
        );
    }
    e.count(
        &format!("{p}.autoscale.targetBacklogPerReplica"),
        a.target_backlog_per_replica,
        (1, MAX_BACKLOG_PER_REPLICA),
    );
    if let Some(r) = a.target_rate_per_replica {
        if !(r.is_finite() && r > 0.0 && r <= MAX_RATE_PER_REPLICA) {
            e.push(
                format!("{p}.autoscale.targetRatePerReplica"),
                format!("must be a positive number of envelopes per second, at most {MAX_RATE_PER_REPLICA:e}"),
            );
        }
    }
    if a.target_processing_time.is_some() {
        let t = e.duration(
            &format!("{p}.autoscale.targetProcessingTime"),
            a.target_processing_time.as_ref(),
            Duration::from_secs(1),
            (Duration::ZERO, MAX_AUTOSCALE_WINDOW),
        );
        if t.is_zero() {
            e.push(
                format!("{p}.autoscale.targetProcessingTime"),
                "must be more than zero",
            );
        }
    }
    e.duration(
        &format!("{p}.autoscale.scaleDownStabilization"),
        a.scale_down_stabilization.as_ref(),
        Duration::ZERO,
        (Duration::ZERO, MAX_AUTOSCALE_WINDOW),
    );
    e.count(
        &format!("{p}.autoscale.targetCpuUtilization"),
        a.target_cpu_utilization,
        (1, 100),
    );
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
        if !is_dns_label(&n.name, MAX_NAME) {
            e.push(
                format!("{p}.name"),
                format!(
                    "{} must be lowercase letters, digits and '-', at most {MAX_NAME} characters",
                    shown(&n.name)
                ),
            );
        }
        if !seen.insert(n.name.as_str()) {
            e.push(
                format!("{p}.name"),
                format!("duplicate node name {}", shown(&n.name)),
            );
        }
        if !groups.contains_key(&n.group) {
            e.push(
                format!("{p}.group"),
                format!("unknown group {}", shown(&n.group)),
            );
        }
        check_uses(&p, &n.uses, e);
        let with_ok = check_with(&p, n.with.as_ref(), e);
        if with_ok {
            check_inline_credentials(&p, n, e);
        }
        let targets = next_targets(&p, n.next.as_ref(), e);
        for t in &targets {
            match names.get(t.as_str()) {
                None => e.push(format!("{p}.next"), format!("unknown node {}", shown(t))),
                Some(target) => {
                    let from_worker = groups.get(&n.group) == Some(&GroupRole::Worker);
                    let to_ingress = groups.get(&target.group) == Some(&GroupRole::Ingress);
                    if from_worker && to_ingress {
                        e.push(
                            format!("{p}.next"),
                            format!(
                                "{} runs on the ingress group; nodes of worker groups may only forward to worker groups",
                                shown(t)
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

/// Checks a node's `with` block: an object, at most [`MAX_WITH_DEPTH`]
/// levels deep, at most [`MAX_WITH_KEYS`] keys and [`MAX_WITH_BYTES`] as
/// JSON. Returns whether it passed.
fn check_with(p: &str, with: Option<&Value>, e: &mut Errors) -> bool {
    let Some(w) = with else { return true };
    let path = format!("{p}.with");
    let Some(o) = w.as_object() else {
        e.push(path, "must be an object");
        return false;
    };
    if o.len() > MAX_WITH_KEYS {
        e.push(path, format!("at most {MAX_WITH_KEYS} keys"));
        return false;
    }
    if nested_deeper_than(w, MAX_WITH_DEPTH) {
        e.push(path, format!("nested deeper than {MAX_WITH_DEPTH} levels"));
        return false;
    }
    // Measured only once the depth is known to be small: the encoder recurses.
    let mut budget = Budget(MAX_WITH_BYTES);
    if serde_json::to_writer(&mut budget, w).is_err() {
        e.push(path, format!("larger than {MAX_WITH_BYTES} bytes as JSON"));
        return false;
    }
    true
}

/// Whether `v` nests arrays and objects more than `limit` levels deep
/// (a scalar is level 0, `{}` level 1). Iterative, so any depth is safe to
/// inspect; stops at the first container past the limit.
pub fn nested_deeper_than(v: &Value, limit: usize) -> bool {
    let mut stack = vec![(v, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if depth > limit {
            return true;
        }
        stack.extend(
            children
                .filter(|c| c.is_array() || c.is_object())
                .map(|c| (c, depth + 1)),
        );
    }
    false
}

/// A writer that accepts at most its budget of bytes, then fails.
struct Budget(usize);

impl std::io::Write for Budget {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.checked_sub(buf.len()) {
            Some(left) => {
                self.0 = left;
                Ok(buf.len())
            }
            None => Err(std::io::Error::other("over budget")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
                "unknown builtin {}; known: {}",
                shown(name),
                BUILTIN_NODES.join(", ")
            ),
        ),
        Some(("rust", name)) if is_dns_label(name, MAX_NAME) => {}
        _ => e.push(
            format!("{p}.uses"),
            format!(
                "{} must be builtin/<name> or rust/<name> (a name of at most {MAX_NAME} lowercase letters, digits and '-')",
                shown(uses)
            ),
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
                return vec![];
            }
            for (j, r) in routes.iter().enumerate() {
                if r.when.is_none() && j + 1 != routes.len() {
                    e.push(
                        format!("{p}.next[{j}]"),
                        "the default route (no `when`) must be the last one",
                    );
                }
                if r.when.as_ref().is_some_and(|w| w.len() > MAX_TAG) {
                    e.push(
                        format!("{p}.next[{j}].when"),
                        format!("at most {MAX_TAG} characters"),
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

fn check_limits(spec: &StreamPipelineSpec, min_timeout: Option<Duration>, e: &mut Errors) {
    let l = &spec.limits;
    e.count(
        "spec.limits.maxQueueDepth",
        l.max_queue_depth,
        (1, MAX_QUEUE_DEPTH),
    );
    if let Some(b) = &l.max_queue_bytes {
        match parse_size(b) {
            Ok(0) => e.push("spec.limits.maxQueueBytes", "must be at least 1"),
            Ok(_) => {}
            Err(msg) => e.push("spec.limits.maxQueueBytes", msg),
        }
    }
    e.count(
        "spec.limits.maxDeliveries",
        l.max_deliveries,
        (1, MAX_DELIVERIES),
    );
    let lease = e.duration(
        "spec.limits.lease",
        l.lease.as_ref(),
        crate::defaults::DEFAULT_LEASE,
        (MIN_TIMEOUT, MAX_TIMEOUT),
    );
    if let Some(t) = min_timeout {
        // Checked although both are bounded: a bound may change, a panic may not.
        if lease.checked_mul(LEASE_TIMEOUT_RATIO).is_none_or(|l| l > t) {
            e.push(
                "spec.limits.lease",
                format!(
                    "lease {} must be well below every interface timeout (at most 1/{LEASE_TIMEOUT_RATIO} of the shortest, {})",
                    show_duration(lease),
                    show_duration(t)
                ),
            );
        }
    }
}

fn check_security(spec: &StreamPipelineSpec, e: &mut Errors) {
    let s = &spec.security;
    e.duration(
        "spec.security.rotateEvery",
        s.rotate_every.as_ref(),
        crate::defaults::DEFAULT_ROTATE_EVERY,
        (MIN_ROTATE_EVERY, MAX_ROTATE_EVERY),
    );
    if let Some(r) = &spec.results {
        e.duration(
            "spec.results.ttl",
            r.ttl.as_ref(),
            crate::defaults::DEFAULT_RESULTS_TTL,
            (Duration::from_secs(1), MAX_RESULTS_TTL),
        );
    }
    e.duration(
        "spec.security.clockSkew",
        s.clock_skew.as_ref(),
        crate::defaults::DEFAULT_CLOCK_SKEW,
        (Duration::ZERO, MAX_CLOCK_SKEW),
    );
    e.count(
        "spec.security.maxPayloadBytes",
        s.max_payload_bytes,
        (MIN_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES),
    );
    match (s.keys, &s.secret_name) {
        (KeysSource::SecretRef, None) => e.push(
            "spec.security.secretName",
            "keys: secretRef needs secretName",
        ),
        (KeysSource::Generated, Some(_)) => {
            e.push("spec.security.secretName", "only used with keys: secretRef")
        }
        (KeysSource::SecretRef, Some(name)) if !is_dns_subdomain(name, MAX_SUBDOMAIN) => e.push(
            "spec.security.secretName",
            format!(
                "{} is not a Secret name (a DNS-1123 subdomain of at most {MAX_SUBDOMAIN} characters)",
                shown(name)
            ),
        ),
        _ => {}
    }
}
