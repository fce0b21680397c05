//! The `StreamPipeline` resource: what a user declares.
//!
//! Field names and shapes are the contract of DESIGN §3. Durations and sizes
//! stay strings (see [`crate::units`]); defaults live in accessor methods so a
//! spec read back from the API server shows only what the user wrote.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Container, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Desired state of a request/reply processing pipeline.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "StreamPipeline",
    plural = "streampipelines",
    shortname = "spl",
    namespaced,
    status = "StreamPipelineStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Paused","type":"string","jsonPath":".status.conditions[?(@.type==\"Paused\")].status"}"#,
    printcolumn = r#"{"name":"Groups","type":"string","jsonPath":".status.readyGroups"}"#,
    printcolumn = r#"{"name":"URL","type":"string","priority":1,"jsonPath":".status.ingressUrl"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamPipelineSpec {
    /// Which adapters connect the groups. v1alpha1: all memory, all redis or
    /// all tcp.
    #[serde(default)]
    pub backends: Backends,
    /// Redis used when the backends are `redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// Envelope signing and verification.
    #[serde(default)]
    pub security: SecuritySpec,
    /// How the ingress group is exposed on a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<ExposeSpec>,
    /// The web interfaces the ingress serves.
    pub interfaces: Vec<InterfaceSpec>,
    /// Process groups: exactly one with role `ingress`, any number of workers.
    pub groups: Vec<GroupSpec>,
    /// Processing steps, each placed on a group.
    pub nodes: Vec<NodeSpec>,
    /// Queue, delivery and lease limits.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// When true, the operator stops changing the pipeline's workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// When true, the pipeline takes no new request and its workers read no
    /// entry until it is false again; queued entries wait (their deadlines
    /// still apply) and no pod is restarted. Needs managed Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Answers of asynchronous requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<ResultsSpec>,
}

/// Adapter kind for one port.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// In-process adapters: every group runs inside the ingress process.
    #[default]
    Memory,
    /// Redis Streams between separate ingress and worker processes.
    Redis,
    /// Each worker group in a process of its own beside the ingress (local
    /// children, or containers of the ingress's pod), reaching the queues
    /// the ingress holds over signed loopback TCP; no broker.
    Tcp,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Memory => "memory",
            BackendKind::Redis => "redis",
            BackendKind::Tcp => "tcp",
        })
    }
}

/// `memory`, `redis` or `tcp`, as the `--backend` flags of the runtime take it.
impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(BackendKind::Memory),
            "redis" => Ok(BackendKind::Redis),
            "tcp" => Ok(BackendKind::Tcp),
            other => Err(format!("`{other}`: expected memory, redis or tcp")),
        }
    }
}

/// The adapters behind the three ports. Three keys exist for future adapters;
/// v1alpha1 accepts only all-equal values.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backends {
    #[serde(default)]
    pub queue: BackendKind,
    #[serde(default)]
    pub kv: BackendKind,
    #[serde(default)]
    pub reply: BackendKind,
}

/// Redis for a pipeline with redis backends.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisSpec {
    /// `managed` (the operator runs a StatefulSet) or `external`.
    #[serde(default)]
    pub mode: RedisMode,
    /// Persistence of managed Redis: `aof` (default) or `none`.
    #[serde(default)]
    pub persistence: Persistence,
    /// PVC size of managed Redis (default `1Gi`). May grow (the volume is
    /// expanded in place when its StorageClass allows it), never shrink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// StorageClass of managed Redis's volume (default: the cluster's
    /// default class). Fixed once the volume exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Memory managed Redis may hold (`maxmemory`, default `256Mi`): past it
    /// Redis refuses writes (`noeviction`) — callers get 503 — instead of
    /// being killed by the kernel. The container's memory limit is 125 % of
    /// it, headroom for client buffers and AOF rewrites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<String>,
    /// Keep managed Redis's volume, and the queued work on it, when the
    /// pipeline is deleted (default `true`); `false` deletes it with the
    /// pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_on_delete: Option<bool>,
    /// Managed Redis speaks only TLS (default `true`), with a certificate
    /// from a CA the operator makes for the pipeline; `false` turns TLS
    /// off, so passwords and payloads cross the pod network in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// Image of managed Redis (default from the operator's configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// External Redis: the Secret key holding the `redis://` or `rediss://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// External Redis with a `rediss://` URL whose certificate a private CA
    /// signed: the Secret key holding that CA's PEM certificate(s), trusted
    /// instead of the system roots. Mounted into the runtime pods (read at
    /// start) and read by the operator's autoscaler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    #[default]
    Managed,
    External,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Persistence {
    #[default]
    Aof,
    None,
}

/// A key of a Secret in the pipeline's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// Envelope signing.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecuritySpec {
    /// `generated` (the operator creates and rotates the key ring) or `secretRef`.
    #[serde(default)]
    pub keys: KeysSource,
    /// With `keys: secretRef`: the Secret holding the ring in the DESIGN §6 layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Rotation period of generated keys (default `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_every: Option<String>,
    /// Accepted clock difference between signer and verifier (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<String>,
    /// Largest request body and envelope payload (default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u64>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum KeysSource {
    #[default]
    Generated,
    SecretRef,
}

/// Exposure of the ingress group.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExposeSpec {
    #[serde(default)]
    pub service_type: ServiceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// The ingress pods terminate TLS themselves (HTTP/2 or HTTP/1.1 by
    /// ALPN), for clusters with no Ingress controller in front: the name
    /// of a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) labelled
    /// `sluice.dev/allow-reference=true`. Not with `ingress`, which
    /// terminates TLS at the Ingress (`ingress.tlsSecret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressSpec {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
}

/// A web interface served by the ingress.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InterfaceSpec {
    pub name: String,
    /// Protocol: `http` (a POST per request), `websocket` (a message per
    /// request on a long-lived connection), `sse` (a POST per request, its
    /// answer streamed as Server-Sent Events or NDJSON) or `graphql`
    /// (declared operations).
    #[serde(default)]
    pub kind: InterfaceKind,
    /// URL path, starting with `/`.
    pub path: String,
    /// The node that receives the request body.
    pub entry: String,
    /// Time a caller waits for the answer (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Requests in flight on this interface per ingress process before `429` (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// WebSocket interfaces: answer each connection's messages in the
    /// order they arrived (default `false`: as they complete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered: Option<bool>,
    /// Limits of a WebSocket interface's connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebSocketSpec>,
    /// The operations of a GraphQL interface and its limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphql: Option<GraphqlSpec>,
    /// `sync` (default): a POST waits for its answer, and answers `202`
    /// with a `Location` to fetch it later only when it asks with
    /// `Prefer: respond-async`. `async`: every POST answers `202`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<InterfaceMode>,
    /// How long an asynchronous request may take, from submit to answer
    /// (default: `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_timeout: Option<String>,
    /// Who may call: without it, anyone who reaches the ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
}

/// A `graphql` interface: its schema's operations, each a root field run
/// through the pipeline, and the limits on a document.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GraphqlSpec {
    /// The root fields of `Query` and `Mutation`.
    pub operations: Vec<GraphqlOperationSpec>,
    /// Deepest selection nesting of a document (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// Most fields a document selects, aliases and introspection included
    /// (default 64); each selected operation is one pipeline request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_complexity: Option<u32>,
}

/// One root field of a GraphQL interface.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GraphqlOperationSpec {
    /// The field's name: letters, digits and `_`, not starting with a digit
    /// or `__`.
    pub name: String,
    /// `query` (default) or `mutation`.
    #[serde(default, rename = "type")]
    pub kind: GraphqlOperationKind,
    /// The node that receives the arguments as a JSON object (default: the
    /// interface's `entry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Argument name → type (`String`, `Int`, `Float`, `Boolean`, `ID`,
    /// `JSON`; `[T]` for a list, `!` for non-null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<BTreeMap<String, String>>,
    /// The answer's type (same grammar; default `JSON`). Not with
    /// `resultFields`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The answer as an object: field name → type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_fields: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GraphqlOperationKind {
    #[default]
    Query,
    Mutation,
}

/// Limits of each connection of a `websocket` interface.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebSocketSpec {
    /// Messages of one connection in flight (read and not yet answered on
    /// the socket) before the ingress stops reading it (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_connection: Option<u32>,
    /// Open connections per ingress process (default 1024); past it the
    /// upgrade is refused with `503`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// A connection with nothing in flight that neither sends a message
    /// nor is answered for this long is closed (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// A connection is closed, after answering what it has in flight, this
    /// long after it opened (default `1h`): callers reconnect, and a
    /// revoked token stops working within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<String>,
    /// How often the ingress pings; a peer that answers no ping within
    /// another interval is gone (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_interval: Option<String>,
}

/// How callers of an interface are identified: exactly one of `bearer` and
/// `trustedHeader`. The caller's name scopes its asynchronous answers and
/// idempotency keys.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthSpec {
    /// `Authorization: Bearer <token>`, checked against a Secret key that
    /// holds one `<caller>:<token>` per line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerAuthSpec>,
    /// A header an authenticating proxy in front sets to the caller's name
    /// (and strips from what callers send): only behind such a proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_header: Option<String>,
    /// Requests one caller may make, per ingress process; past it `429`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

/// A token bucket per caller.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Sustained requests per second.
    pub requests_per_second: u32,
    /// Requests allowed at once after a quiet spell (default:
    /// `requestsPerSecond`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// Bearer tokens of an interface.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BearerAuthSpec {
    /// The Secret key with the tokens.
    pub secret_ref: SecretKeyRef,
}

/// Whether an interface's POST waits for the answer.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceMode {
    #[default]
    Sync,
    Async,
}

/// Where answers of asynchronous requests wait to be fetched.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResultsSpec {
    /// How long an answer can be fetched after the request's
    /// `asyncTimeout` (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceKind {
    #[default]
    Http,
    Websocket,
    Sse,
    Graphql,
}

/// A process group.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    pub role: GroupRole,
    /// Fixed replica count (ignored when `autoscale` is set; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Envelopes a worker process works on at once (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Image override (a custom worker image built with the exec-worker SDK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Extra containers in this group's pods (e.g. a service `builtin/http` calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars: Option<Vec<Container>>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupRole {
    Ingress,
    Worker,
}

/// Autoscaling of a worker group.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoscaleSpec {
    /// `builtin` (default; backlog-driven by the operator), `hpa` (CPU) or `keda`.
    #[serde(default)]
    pub engine: AutoscaleEngine,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    pub max_replicas: i32,
    /// Backlog entries one replica should carry (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_backlog_per_replica: Option<u32>,
    /// `hpa` engine: target average CPU utilisation in percent (default 70).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cpu_utilization: Option<i32>,
    /// `builtin`: envelopes per second one replica handles. When set, the
    /// group keeps at least arrival rate / this many replicas; when unset,
    /// it is measured while the group is saturated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_rate_per_replica: Option<f64>,
    /// `builtin`: work off the backlog within this time (e.g. `30s`), on top
    /// of keeping up with arrivals; needs a known or measured rate per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_processing_time: Option<String>,
    /// `builtin`: scale down only to the highest recommendation of this
    /// trailing window (default `5m`; `0s` scales down at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_stabilization: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoscaleEngine {
    #[default]
    Builtin,
    Hpa,
    Keda,
}

/// A processing step.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    /// The group whose processes run this node.
    pub group: String,
    /// Catalog name: `builtin/<name>` or `rust/<name>` (custom worker image).
    pub uses: String,
    /// Node configuration, interpreted by the node type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub with: Option<Value>,
    /// Where the output goes: one node, or routes by tag. Absent: terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "next_schema")]
    pub next: Option<NextSpec>,
}

/// A node's `next`: a node name, or routes evaluated in order where the first
/// matching `when` wins and a route without `when` is the default.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(untagged)]
pub enum NextSpec {
    One(String),
    Routes(Vec<RouteSpec>),
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// Tag to match; absent means "any" (the default route, which must be last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    pub to: String,
}

/// Queue and delivery limits.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsSpec {
    /// Backlog of any queue on a request's path above which the ingress answers 503 (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_depth: Option<u64>,
    /// Bytes queued on any queue of a request's path above which the ingress answers 503 (default `64Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_bytes: Option<String>,
    /// Deliveries of one envelope before it is dead-lettered (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    /// Lease a worker holds on an entry and renews while busy (default `2s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// Observed state, written by the operator only when it changes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamPipelineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupStatus>,
    /// `ready/total` groups, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_groups: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_url: Option<String>,
    /// Redis backends: each worker group's queue and the dead letters, as
    /// last read (written apart from the rest, every 30 s while it changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<QueuesStatus>,
}

/// A Redis pipeline's queues as last read.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueuesStatus {
    /// When they were read (RFC 3339).
    pub read_at: String,
    /// Why they could not be read (the numbers below are from the last
    /// reading that worked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Entries in the dead-letter stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<QueueStatus>,
}

/// One worker group's queue.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    pub name: String,
    /// Entries waiting for a worker.
    pub waiting: u64,
    /// Entries a worker holds.
    pub in_progress: u64,
    /// Entries appended per second since the reading before, one decimal
    /// (absent on the first reading, and after the stream was lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_second: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale: Option<ScaleDecision>,
}

/// The autoscaler's last decision that changed replicas.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDecision {
    pub time: Time,
    pub from: i32,
    pub to: i32,
    pub reason: String,
}

// === explicit schemas for fields kube's derive would make non-structural ===

fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    // The schema cannot bound nesting depth; `validate` refuses `with`
    // blocks deeper than MAX_WITH_DEPTH or larger than MAX_WITH_BYTES.
    schema_from_json(serde_json::json!({
        "description": "Node configuration, interpreted by the node type (see docs/nodes.md).",
        "type": "object",
        "maxProperties": crate::limits::MAX_WITH_KEYS,
        "x-kubernetes-preserve-unknown-fields": true
    }))
}

fn next_schema(_: &mut SchemaGenerator) -> Schema {
    // A string or a list of routes. A structural schema has one type per
    // field, and the API server refuses CEL rules on a field without one,
    // so `next` is typeless with preserved unknown fields and its shape is
    // held by value validations, each of which applies to one JSON type
    // only: a string must be a node name, a list must hold at most
    // MAX_ROUTES routes with a `to`; a number fails `minimum` > `maximum`,
    // an object `minProperties` > `maxProperties`, a boolean the `not`.
    let name = crate::names::DNS_LABEL_PATTERN;
    schema_from_json(serde_json::json!({
        "description": "Next node: a node name, or a list of {when, to} routes where the first match wins and a route without `when` is the default. Numbers, booleans and objects are refused.",
        "x-kubernetes-preserve-unknown-fields": true,
        "maxLength": crate::limits::MAX_NAME,
        "pattern": name,
        "minItems": 1,
        "maxItems": crate::limits::MAX_ROUTES,
        "items": {
            "type": "object",
            "required": ["to"],
            "properties": {
                "when": {
                    "description": "Tag to match; absent means any (the default route, which must be last).",
                    "type": "string",
                    "maxLength": crate::limits::MAX_TAG
                },
                "to": {
                    "type": "string",
                    "maxLength": crate::limits::MAX_NAME,
                    "pattern": name
                }
            }
        },
        "minimum": 1,
        "maximum": 0,
        "minProperties": 1,
        "maxProperties": 0,
        "not": { "enum": [true, false] }
    }))
}

fn schema_from_json(v: Value) -> Schema {
    // The literals above are valid JSON Schema objects; a failure here is a
    // programming error caught by the CRD snapshot test.
    serde_json::from_value(v).expect("static schema literal is valid")
}
