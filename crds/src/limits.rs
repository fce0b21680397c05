//! Every bound a StreamPipeline spec is held to, in one place.
//!
//! A spec is hostile until checked: each number, duration, size, length,
//! count and nesting depth a user writes has an upper bound here. The same
//! constants feed [`crate::validate`] (local manifests and the operator), the
//! CRD schema ([`crate::crd`], so the API server refuses at admission what it
//! can express) and the table in `docs/pipeline.md`. Because every value is
//! bounded, the arithmetic done on them cannot overflow; it is still written
//! checked, so a later change of a bound cannot make it panic.

use std::time::Duration;

// === list lengths (CRD `maxItems`) ===

/// Most interfaces of one pipeline.
pub const MAX_INTERFACES: usize = 32;
/// Most groups of one pipeline.
pub const MAX_GROUPS: usize = 32;
/// Most nodes of one pipeline.
pub const MAX_NODES: usize = 128;
/// Most routes in one node's `next` list.
pub const MAX_ROUTES: usize = 32;
/// Most sidecar containers of one group.
pub const MAX_SIDECARS: usize = 16;
/// Most entries of any other list in the spec (tolerations and the lists
/// inside Kubernetes types such as a sidecar's `env`): a bound the API
/// server needs to keep CEL costs and object sizes finite.
pub const MAX_OTHER_ITEMS: usize = 256;

// === names and strings (CRD `maxLength`) ===

/// Interface and node names, and the references to them (`entry`, `next`,
/// `next[].to`): DNS-1123 labels.
pub const MAX_NAME: usize = 63;
/// Group names, and `nodes[].group`: they become parts of Kubernetes object
/// names (`<pipeline>-<group>`).
pub const MAX_GROUP_NAME: usize = 30;
/// A pipeline's `metadata.name`: a DNS-1035 label (it names a Service).
pub const MAX_PIPELINE_NAME: usize = 63;
/// A pipeline's `metadata.namespace`: a DNS-1123 label.
pub const MAX_NAMESPACE: usize = 63;
/// `nodes[].uses`: `builtin/<name>` or `rust/<label>`.
pub const MAX_USES: usize = "builtin/".len() + MAX_NAME;
/// A route's `when` tag.
pub const MAX_TAG: usize = 256;
/// An interface `path`.
pub const MAX_PATH: usize = 256;
/// Names of Secrets and of the Ingress class (DNS-1123 subdomains), keys of
/// Secrets, and the Ingress host.
pub const MAX_SUBDOMAIN: usize = 253;
/// Container image references.
pub const MAX_IMAGE: usize = 1024;

// === node configuration (`nodes[].with`) ===

/// Deepest nesting of a `with` block: `{}` is one level, `{a: [1]}` two.
/// Catalog nodes walk their configuration recursively; this bound is what
/// keeps that safe, far below any parser's own limit.
pub const MAX_WITH_DEPTH: usize = 32;
/// Largest `with` block, measured as compact JSON.
pub const MAX_WITH_BYTES: usize = 64 * 1024;
/// Most top-level keys of a `with` block (CRD `maxProperties`; nodes take a
/// handful of options).
pub const MAX_WITH_KEYS: usize = 64;

// === durations ===

/// Shortest interface timeout and lease.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest interface timeout: a caller waits at most this long.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest `asyncTimeout`: an asynchronous request's envelopes, and the
/// keys that verify them, live this long.
pub const MAX_ASYNC_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Largest `auth.rateLimit.requestsPerSecond` and `burst`.
pub const MAX_RATE: u32 = 1_000_000;
/// Longest `auth.trustedHeader` name.
pub const MAX_HEADER_NAME: usize = 64;
/// Longest `results.ttl`.
pub const MAX_RESULTS_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest key rotation period (keys overlap for the propagation delay).
pub const MIN_ROTATE_EVERY: Duration = Duration::from_secs(600);
/// Longest key rotation period.
pub const MAX_ROTATE_EVERY: Duration = crate::units::MAX_DURATION;
/// Largest accepted clock difference between signer and verifier.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(600);
/// Longest autoscaling `targetProcessingTime` and `scaleDownStabilization`.
pub const MAX_AUTOSCALE_WINDOW: Duration = Duration::from_secs(3600);

// === counts ===

/// Most requests in flight per interface and ingress process.
pub const MAX_IN_FLIGHT: u32 = 65_536;

/// `interfaces[].websocket.maxInFlightPerConnection`: each held answer of an
/// ordered connection waits in the ingress's memory.
pub const MAX_WS_IN_FLIGHT: u32 = 1024;
/// `interfaces[].websocket.maxConnections`: each open socket holds a
/// message's worth of the ingress's body budget.
pub const MAX_WS_CONNECTIONS: u32 = 65_536;
/// Root fields of a graphql interface.
pub const MAX_GRAPHQL_OPERATIONS: usize = 64;
/// Arguments of an operation, and fields of its result object.
pub const MAX_GRAPHQL_FIELDS: usize = 32;
/// `graphql.maxDepth`.
pub const MAX_GRAPHQL_DEPTH: u32 = 64;
/// `graphql.maxComplexity`: each selected root field is a pipeline request.
pub const MAX_GRAPHQL_COMPLEXITY: u32 = 4096;
/// Most envelopes a worker process works on at once.
pub const MAX_CONCURRENCY: u32 = 4096;
/// Most replicas of a group, fixed or autoscaled.
pub const MAX_REPLICAS: i32 = 1000;
/// Largest `limits.maxQueueDepth`.
pub const MAX_QUEUE_DEPTH: u64 = 1_000_000_000;
/// Most deliveries of one envelope.
pub const MAX_DELIVERIES: u32 = 100;
/// Largest autoscaling `targetBacklogPerReplica`.
pub const MAX_BACKLOG_PER_REPLICA: u32 = 1_000_000;
/// Largest autoscaling `targetRatePerReplica`, in envelopes per second.
pub const MAX_RATE_PER_REPLICA: f64 = 1e9;

// === sizes ===

/// Smallest `security.maxPayloadBytes`.
pub const MIN_PAYLOAD_BYTES: u64 = 1024;
/// Largest `security.maxPayloadBytes`.
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 20;
