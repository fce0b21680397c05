//! Every rule a StreamPipeline spec must satisfy beyond its schema.
//!
//! The CRD's schema and CEL rules refuse what they can express at admission;
//! this module checks everything (including what CEL cannot: cycles, the
//! shape of `next`, durations relative to each other), so a spec read from a
//! local file gets the same answers as one applied to a cluster. Each error
//! carries the field path, in the form `spec.nodes[2].next`.
//!
//! Here: backends, exposure, limits, security and a pipeline's name;
//! `groups`, `nodes` (and the graph) and `interfaces` in their own
//! files. Every check adds to one list of errors and goes on, so a spec is
//! answered with all that is wrong with it at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::limits::*;
use crate::names::PipelineId;
use crate::names::{check_interface_path, is_data_key, is_dns1035_label, is_dns_subdomain};
use crate::types::*;
use crate::units::{parse_duration, parse_size};

mod groups;
mod interfaces;
mod nodes;

use groups::check_groups;
use interfaces::check_interfaces;
use nodes::{check_cycles, check_nodes};
pub use nodes::{nested_deeper_than, CREDENTIAL_HEADERS};

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
