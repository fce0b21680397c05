//! The pure function from a StreamPipeline to the objects the operator
//! applies for it (DESIGN §4), golden-tested without an API server.
//!
//! ```text
//! StreamPipeline ─owner_of─▶ MissingObjectKey (no name/namespace/uid)
//!       │
//!       └─compile + operator checks─▶ InvalidSpec(FieldErrors): nothing produced
//!              │
//!              ▼
//!           Desired ─ objects            server-side applied, in order
//!                   ─ generated_secrets  created only if absent (random material:
//!                                        initial_key_secret / initial_redis_secret)
//!                   ─ obsolete_secrets   owned Secrets to delete by name
//! ```
//!
//! For pipeline `P` in namespace `ns`:
//!
//! - ConfigMap `P-pipeline` (`pipeline.yaml`, the normalised manifest every
//!   runtime pod reads with `--pipeline`);
//! - managed Redis (see [`crate::redis`]);
//! - the ingress group: Deployment `P-<group>`, Service `P`, Ingress `P` when
//!   `expose.ingress` is set, PodDisruptionBudget `P-<group>` when replicas > 1;
//! - with redis backends, each worker group: Deployment `P-<group>` (no
//!   `replicas` when it autoscales) and, with `autoscale.engine: hpa`, a
//!   HorizontalPodAutoscaler `P-<group>`. With memory backends the ingress
//!   pods run every group inline and there are no worker Deployments.
//!
//! The key ring Secret `P-ipc-keys` is never in the apply set: its content is
//! random and rotated; the pods only mount it (a directory, never `subPath`).

use std::collections::BTreeMap;
use std::ops::Deref;
use std::time::Duration;

use base64::Engine;
use chrono::SecondsFormat;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, EnvVar, LocalObjectReference, PodSpec, PodTemplateSpec,
    Secret, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::Resource;
use serde::Serialize;
use sluice_crds::{
    compile, AutoscaleEngine, BackendKind, FieldError, GroupRole, GroupSpec, KeysSource,
    PipelineId, Plan, ServiceType, StreamPipeline, StreamPipelineSpec,
};

use crate::autoscale::keda::{self, ScaledObject, TriggerAuthentication};
use crate::hash;
use crate::labels::{self, Component};
use crate::names;
use crate::pod::{self, SecretRefUse};
use crate::redis::{self, RedisUse};
use crate::settings::{OperatorSettings, RuntimeTracing};

// === runtime contract (flags and variables of sluice-web-ingress / sluice-exec-worker) ===

pub const ENV_REDIS_URL: &str = "SLUICE_REDIS_URL";
/// PEM CA certificate(s) a `rediss://` server must chain to (external Redis
/// with `caSecretRef`), instead of the system roots.
pub const ENV_REDIS_CA_FILE: &str = "SLUICE_REDIS_CA_FILE";
pub const ENV_INGRESS_ID: &str = "SLUICE_INGRESS_ID";
pub const ENV_DRAIN_GRACE: &str = "SLUICE_DRAIN_GRACE";
pub const ENV_DRAIN_TIMEOUT: &str = "SLUICE_DRAIN_TIMEOUT";
pub const ENV_LOG_FORMAT: &str = "SLUICE_LOG_FORMAT";
/// The pod's name from the downward API, declared before the variables
/// that refer to it as `$(SLUICE_POD_NAME)` (only with trace export on).
pub const ENV_POD_NAME: &str = "SLUICE_POD_NAME";
/// The standard OpenTelemetry variables the runtime reads (DESIGN §7).
pub const ENV_OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const ENV_OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";

/// Public port of the ingress container (`--listen 0.0.0.0:8080`), named `http`.
pub const INGRESS_PORT: i32 = 8080;
/// Port of the Service `P` in front of it.
pub const SERVICE_PORT: i32 = 80;
/// Health/metrics port of a worker container (`--admin 0.0.0.0:9090`), named `admin`.
pub const ADMIN_PORT: i32 = 9090;
/// The key ring file naming the signing kid (`sluice_platform::keyring::CURRENT_FILE`).
pub const KEY_RING_CURRENT: &str = "current";
/// Length of a raw key of the ring (`sluice_platform::keyring::KEY_LEN`).
pub const KEY_LEN: usize = 32;

/// Name of the runtime container of a group's pods.
pub fn main_container(role: GroupRole) -> &'static str {
    match role {
        GroupRole::Ingress => "ingress",
        GroupRole::Worker => "worker",
    }
}

// === errors ===

/// Why no objects could be computed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The StreamPipeline lacks metadata an owned object needs (a resource
    /// read from the API server always has them).
    #[error("StreamPipeline has no {0}")]
    MissingObjectKey(&'static str),
    /// The spec breaks a rule; each error names its field. The reconciler
    /// reports `Ready=False, reason=InvalidSpec` and leaves running objects alone.
    #[error("invalid StreamPipeline: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidSpec(Vec<FieldError>),
    /// Material passed to [`initial_key_secret`] or
    /// [`crate::redis::initial_redis_secret`] is unusable. Never contains it.
    #[error("invalid {what}: {reason}")]
    InvalidInput { what: &'static str, reason: String },
    #[error("cannot serialise {what}")]
    Yaml {
        what: &'static str,
        #[source]
        source: serde_saphyr::SerializeError,
    },
    #[error("cannot serialise {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The violated rules when the spec is invalid, else empty.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Error::InvalidSpec(e) => e,
            _ => &[],
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// === owner and context ===

/// The StreamPipeline as owner of the objects: its name, namespace and the
/// controller owner reference every object carries.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub(crate) name: String,
    pub(crate) namespace: String,
    reference: OwnerReference,
}

/// # Errors
/// [`Error::MissingObjectKey`] without name, namespace or uid.
pub(crate) fn owner_of(sp: &StreamPipeline) -> Result<Owner> {
    let name = sp
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let namespace = sp
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    // controller_owner_ref is None exactly when name or uid is missing.
    let reference = sp
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    Ok(Owner {
        name,
        namespace,
        reference,
    })
}

impl Owner {
    /// Metadata of an owned object: name, namespace, labels, owner reference.
    pub(crate) fn meta(
        &self,
        name: String,
        component: Component,
        group: Option<&str>,
    ) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels::labels(&self.name, component, group)),
            owner_references: Some(vec![self.reference.clone()]),
            ..Default::default()
        }
    }
}

/// Everything the object builders share for one pipeline.
pub(crate) struct Ctx<'a> {
    owner: Owner,
    pub(crate) spec: &'a StreamPipelineSpec,
    pub(crate) settings: &'a OperatorSettings,
    config_hash: String,
    redis: RedisUse<'a>,
    /// The Secret mounted at `/etc/sluice/keys`.
    key_secret: String,
}

impl Deref for Ctx<'_> {
    type Target = Owner;
    fn deref(&self) -> &Owner {
        &self.owner
    }
}

impl Ctx<'_> {
    pub(crate) fn pull_secrets(&self) -> Option<Vec<LocalObjectReference>> {
        let s = &self.settings.images.pull_secrets;
        (!s.is_empty()).then(|| {
            s.iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect()
        })
    }
}

// === the desired objects ===

/// An object kind the operator may create, with what a dynamic client and
/// an RBAC rule need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedKind {
    /// API group, `""` for core.
    pub group: &'static str,
    pub version: &'static str,
    pub api_version: &'static str,
    pub kind: &'static str,
    /// Resource name in URLs and RBAC rules.
    pub plural: &'static str,
}

impl OwnedKind {
    /// A kind whose API may be absent from a cluster (KEDA's): listing it
    /// finds nothing there, and applying it is reported in status instead
    /// of failing the reconcile.
    pub fn optional(&self) -> bool {
        self.group == <ScaledObject as k8s_openapi::Resource>::GROUP
    }

    pub const fn of<K: k8s_openapi::Resource>() -> Self {
        Self {
            group: K::GROUP,
            version: K::VERSION,
            api_version: K::API_VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
        }
    }
}

const OWNED_KINDS: [OwnedKind; 10] = [
    OwnedKind::of::<ConfigMap>(),
    OwnedKind::of::<Service>(),
    OwnedKind::of::<StatefulSet>(),
    OwnedKind::of::<Deployment>(),
    OwnedKind::of::<PodDisruptionBudget>(),
    OwnedKind::of::<HorizontalPodAutoscaler>(),
    OwnedKind::of::<Ingress>(),
    OwnedKind::of::<NetworkPolicy>(),
    OwnedKind::of::<ScaledObject>(),
    OwnedKind::of::<TriggerAuthentication>(),
];

/// The kinds [`desired`] can produce: the reconciler lists each in the
/// pipeline's namespace with [`labels::owned_selector`] and deletes what is
/// controlled by this pipeline but no longer desired (a removed group's
/// Deployment, managed Redis after switching to external, ...).
///
/// Secrets are not here on purpose: the operator never lists Secrets
/// (DESIGN §4); see [`Desired::obsolete_secrets`].
pub fn owned_kinds() -> &'static [OwnedKind] {
    &OWNED_KINDS
}

/// One object to apply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Child {
    ConfigMap(ConfigMap),
    Service(Service),
    StatefulSet(StatefulSet),
    Deployment(Deployment),
    PodDisruptionBudget(PodDisruptionBudget),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    Ingress(Ingress),
    NetworkPolicy(NetworkPolicy),
    ScaledObject(ScaledObject),
    TriggerAuthentication(TriggerAuthentication),
}

macro_rules! each_child {
    ($self:expr, $o:ident => $e:expr) => {
        match $self {
            Child::ConfigMap($o) => $e,
            Child::Service($o) => $e,
            Child::StatefulSet($o) => $e,
            Child::Deployment($o) => $e,
            Child::PodDisruptionBudget($o) => $e,
            Child::HorizontalPodAutoscaler($o) => $e,
            Child::Ingress($o) => $e,
            Child::NetworkPolicy($o) => $e,
            Child::ScaledObject($o) => $e,
            Child::TriggerAuthentication($o) => $e,
        }
    };
}

fn kind_of<K: k8s_openapi::Resource>(_: &K) -> OwnedKind {
    OwnedKind::of::<K>()
}

impl Child {
    pub fn kind(&self) -> OwnedKind {
        each_child!(self, o => kind_of(o))
    }

    pub fn meta(&self) -> &ObjectMeta {
        each_child!(self, o => &o.metadata)
    }

    /// The object's name (always set by [`desired`]).
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// The pod template of a workload.
    pub fn pod_template(&self) -> Option<&PodTemplateSpec> {
        match self {
            Child::Deployment(d) => d.spec.as_ref().map(|s| &s.template),
            Child::StatefulSet(s) => s.spec.as_ref().map(|s| &s.template),
            _ => None,
        }
    }
}

/// A Secret the pods mount whose content is random: the reconciler creates
/// it when absent (never applies it) from fresh material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeneratedSecret {
    /// Build with [`initial_key_secret`]; afterwards only rotation changes it.
    KeyRing(String),
    /// Build with [`crate::redis::initial_redis_secret`].
    RedisPassword(String),
}

impl GeneratedSecret {
    pub fn name(&self) -> &str {
        match self {
            GeneratedSecret::KeyRing(n) | GeneratedSecret::RedisPassword(n) => n,
        }
    }
}

/// What a pipeline should look like in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Applied with server-side apply in this order (ConfigMap first, so a
    /// new pod never starts before its pipeline file exists).
    pub objects: Vec<Child>,
    /// `sluice.dev/config-hash` of the runtime pod templates.
    pub config_hash: String,
    /// The compiled plan (groups and interfaces, for status).
    pub plan: Plan,
    /// Secrets to create when absent; see [`GeneratedSecret`].
    pub generated_secrets: Vec<GeneratedSecret>,
    /// Secrets this operator may have generated earlier that the pipeline no
    /// longer uses (`P-redis` after switching away from managed Redis,
    /// `P-ipc-keys` after switching to `keys: secretRef`): delete each by
    /// name if its controller owner is this pipeline.
    pub obsolete_secrets: Vec<String>,
}

impl Desired {
    /// Whether an object of `kind` named `name` is desired.
    pub fn contains(&self, kind: &str, name: &str) -> bool {
        self.objects
            .iter()
            .any(|o| o.kind().kind == kind && o.name() == name)
    }

    /// The objects as a multi-document YAML stream.
    ///
    /// # Errors
    /// If an object cannot be serialised (their types rule it out).
    pub fn to_yaml(&self) -> Result<String> {
        to_yaml(&self.objects)
    }
}

/// Objects as a multi-document YAML stream, each starting with `---`.
///
/// # Errors
/// If an object cannot be serialised.
pub fn to_yaml<T: Serialize>(objects: &[T]) -> Result<String> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(
            &sluice_crds::yaml::to_string(o).map_err(|source| Error::Yaml {
                what: "object",
                source,
            })?,
        );
    }
    Ok(out)
}

/// The objects the operator applies for `sp`.
///
/// # Guarantees
/// Pure: the same input gives the same output, with no I/O and no clock or
/// randomness. Every object carries the pipeline's controller owner
/// reference and labels. An invalid spec produces no objects at all.
///
/// # Errors
/// [`Error::MissingObjectKey`] without name, namespace or uid;
/// [`Error::InvalidSpec`] with every violated rule: those of
/// [`sluice_crds::compile`] and the operator's own (names too long to derive
/// object names from, sidecar conflicts, malformed `secretRef`s).
pub fn desired(sp: &StreamPipeline, settings: &OperatorSettings) -> Result<Desired> {
    let owner = owner_of(sp)?;
    let spec = &sp.spec;
    let compiled = compile(
        PipelineId {
            namespace: owner.namespace.clone(),
            name: owner.name.clone(),
        },
        spec,
    );
    // The operator's own checks run even when compile fails, so the user
    // sees every problem at once.
    let mut errors = compiled.as_ref().err().cloned().unwrap_or_default();
    let redis = match redis::redis_use(spec, settings) {
        Ok(r) => r,
        Err(e) => {
            // compile() reports the same field; do not list it twice.
            if errors.is_empty() {
                errors.push(e);
            }
            RedisUse::None
        }
    };
    let managed = matches!(redis, RedisUse::Managed(_));
    if let RedisUse::External { ca: Some(ca), .. } = &redis {
        // It becomes a Secret volume: refuse here what the API server would
        // refuse in the Deployment, with the field the user wrote.
        if !names::is_dns_subdomain(&ca.name) {
            errors.push(FieldError {
                path: "spec.redis.caSecretRef.name".into(),
                message: format!("`{}` is not a valid Secret name", ca.name),
            });
        }
        if !names::is_data_key(&ca.key) {
            errors.push(FieldError {
                path: "spec.redis.caSecretRef.key".into(),
                message: format!("`{}` is not a valid Secret key", ca.key),
            });
        }
    }
    if let Err(message) = names::check_pipeline_name(&owner.name, managed) {
        errors.push(FieldError {
            path: "metadata.name".into(),
            message,
        });
    }
    for (i, g) in spec.groups.iter().enumerate() {
        let sidecars = g.sidecars.as_deref().unwrap_or_default();
        pod::check_sidecars(i, main_container(g.role), sidecars, &mut errors);
    }
    // Node Secrets by the group whose processes run the node.
    let mut secret_refs: BTreeMap<&str, Vec<SecretRefUse>> = BTreeMap::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        if let Some(with) = &n.with {
            let found = secret_refs.entry(n.group.as_str()).or_default();
            pod::find_secret_refs(with, &format!("spec.nodes[{i}].with"), found, &mut errors);
        }
    }
    let plan = match compiled {
        Ok(plan) if errors.is_empty() => plan,
        _ => return Err(Error::InvalidSpec(errors)),
    };

    let config_hash = hash::config_hash(spec, &settings.images).map_err(|source| Error::Json {
        what: "pipeline spec",
        source,
    })?;
    let key_secret = match (spec.security.keys, &spec.security.secret_name) {
        (KeysSource::SecretRef, Some(user)) => user.clone(),
        _ => names::key_secret(&owner.name),
    };
    let ctx = Ctx {
        owner,
        spec,
        settings,
        config_hash: config_hash.clone(),
        redis,
        key_secret,
    };

    let mut objects = vec![Child::ConfigMap(pipeline_config_map(&ctx)?)];
    if let RedisUse::Managed(m) = &ctx.redis {
        objects.extend(redis::managed_objects(&ctx, m)?);
    }

    let ingress = spec
        .groups
        .iter()
        .find(|g| g.role == GroupRole::Ingress)
        .ok_or_else(|| {
            // compile() refuses a spec without exactly one ingress group.
            Error::InvalidSpec(vec![FieldError {
                path: "spec.groups".into(),
                message: "exactly one group must have role ingress".into(),
            }])
        })?;
    let inline = plan.backend == BackendKind::Memory;
    let ingress_refs: Vec<SecretRefUse> = if inline {
        // Every group runs in the ingress process.
        secret_refs.values().flatten().cloned().collect()
    } else {
        secret_refs
            .get(ingress.name.as_str())
            .cloned()
            .unwrap_or_default()
    };
    objects.push(Child::Service(ingress_service(&ctx, ingress)));
    let replicas = ingress.replicas.unwrap_or(1);
    objects.push(Child::Deployment(deployment(
        &ctx,
        ingress,
        Some(replicas),
        ingress_container(&ctx, ingress),
        settings.drain.ingress_termination_grace_seconds(),
        &ingress_refs,
    )));
    if replicas > 1 {
        objects.push(Child::PodDisruptionBudget(pdb(&ctx, ingress)));
    }
    if let Some(i) = ingress_resource(&ctx) {
        objects.push(Child::Ingress(i));
    }

    if !inline {
        for g in spec.groups.iter().filter(|g| g.role == GroupRole::Worker) {
            // An autoscaled Deployment has no replicas field: the autoscaler
            // owns it through /scale under its own field manager.
            let replicas = match g.autoscale {
                Some(_) => None,
                None => Some(g.replicas.unwrap_or(1)),
            };
            let refs = secret_refs
                .get(g.name.as_str())
                .cloned()
                .unwrap_or_default();
            objects.push(Child::Deployment(deployment(
                &ctx,
                g,
                replicas,
                worker_container(&ctx, g),
                settings.drain.worker_termination_grace_seconds(),
                &refs,
            )));
            if let Some(hpa) = hpa(&ctx, g) {
                objects.push(Child::HorizontalPodAutoscaler(hpa));
            }
        }
        objects.extend(keda_objects(&ctx));
    }

    let mut generated_secrets = Vec::new();
    let mut obsolete_secrets = Vec::new();
    let own_keys = names::key_secret(&ctx.name);
    if spec.security.keys == KeysSource::Generated {
        generated_secrets.push(GeneratedSecret::KeyRing(own_keys));
    } else if ctx.key_secret != own_keys {
        obsolete_secrets.push(own_keys);
    }
    if managed {
        generated_secrets.push(GeneratedSecret::RedisPassword(names::redis(&ctx.name)));
    } else {
        obsolete_secrets.push(names::redis(&ctx.name));
    }

    Ok(Desired {
        objects,
        config_hash,
        plan,
        generated_secrets,
        obsolete_secrets,
    })
}

// === pipeline file ===

/// The normalised manifest in `P-pipeline`: apiVersion, kind, metadata with
/// only name and namespace, and the spec as the types serialise it. It is the
/// same format a local run reads (`sluice_crds::parse_manifest`), so the pods
/// compile exactly what the operator validated.
///
/// # Errors
/// If the spec cannot be serialised (its types rule it out).
pub fn pipeline_manifest(name: &str, namespace: &str, spec: &StreamPipelineSpec) -> Result<String> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest<'a> {
        api_version: &'a str,
        kind: &'a str,
        metadata: Meta<'a>,
        spec: &'a StreamPipelineSpec,
    }
    #[derive(Serialize)]
    struct Meta<'a> {
        name: &'a str,
        namespace: &'a str,
    }
    let body = sluice_crds::yaml::to_string(&Manifest {
        api_version: &StreamPipeline::api_version(&()),
        kind: &StreamPipeline::kind(&()),
        metadata: Meta { name, namespace },
        spec,
    })
    .map_err(|source| Error::Yaml {
        what: "pipeline manifest",
        source,
    })?;
    Ok(format!(
        "# StreamPipeline {namespace}/{name}, normalised by sluice-operator; edits are overwritten.\n{body}"
    ))
}

fn pipeline_config_map(ctx: &Ctx<'_>) -> Result<ConfigMap> {
    Ok(ConfigMap {
        metadata: ctx.meta(names::pipeline_config(&ctx.name), Component::Config, None),
        data: Some(BTreeMap::from([(
            pod::PIPELINE_FILE.to_string(),
            pipeline_manifest(&ctx.name, &ctx.namespace, ctx.spec)?,
        )])),
        ..Default::default()
    })
}

// === workloads ===

/// A duration in the runtime's flag syntax (`5s`, `1500ms`).
fn duration_arg(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn component_of(role: GroupRole) -> Component {
    match role {
        GroupRole::Ingress => Component::Ingress,
        GroupRole::Worker => Component::Worker,
    }
}

fn ingress_container(ctx: &Ctx<'_>, g: &GroupSpec) -> Container {
    let drain = &ctx.settings.drain;
    let env = vec![
        // Names this pod's reply stream; a pod name is unique and dies with it.
        pod::env_from_field(ENV_INGRESS_ID, "metadata.name"),
        pod::env(ENV_DRAIN_GRACE, duration_arg(drain.ingress_grace)),
        pod::env(ENV_DRAIN_TIMEOUT, duration_arg(drain.ingress_timeout)),
        pod::env(ENV_LOG_FORMAT, "json"),
    ];
    let args = vec![
        "--pipeline".into(),
        pod::pipeline_path(),
        "--listen".into(),
        format!("0.0.0.0:{INGRESS_PORT}"),
        "--keys".into(),
        pod::KEYS_DIR.into(),
    ];
    let image = &ctx.settings.images.ingress;
    runtime_container(
        ctx,
        g,
        GroupRole::Ingress,
        image,
        args,
        env,
        ("http", INGRESS_PORT),
    )
}

fn worker_container(ctx: &Ctx<'_>, g: &GroupSpec) -> Container {
    let env = vec![
        pod::env(
            ENV_DRAIN_TIMEOUT,
            duration_arg(ctx.settings.drain.worker_timeout),
        ),
        pod::env(ENV_LOG_FORMAT, "json"),
    ];
    let args = vec![
        "--pipeline".into(),
        pod::pipeline_path(),
        "--group".into(),
        g.name.clone(),
        "--keys".into(),
        pod::KEYS_DIR.into(),
        "--admin".into(),
        format!("0.0.0.0:{ADMIN_PORT}"),
    ];
    let image = &ctx.settings.images.worker;
    runtime_container(
        ctx,
        g,
        GroupRole::Worker,
        image,
        args,
        env,
        ("admin", ADMIN_PORT),
    )
}

/// The variables that turn on the runtime's trace export, and the resource
/// attributes that tell its spans apart by namespace, pod, pipeline and
/// group. `service.name` is left to the runtime (its binary name).
///
/// Namespace, pipeline and group names are DNS labels or subdomains, so
/// they need no escaping in the `k=v,k=v` list, and no `$` in them can be
/// mistaken for a variable reference.
fn tracing_env(ctx: &Ctx<'_>, g: &GroupSpec, tracing: &RuntimeTracing) -> Vec<EnvVar> {
    let attributes = format!(
        "k8s.namespace.name={},k8s.pod.name=$({ENV_POD_NAME}),sluice.pipeline={},sluice.group={}",
        ctx.namespace, ctx.name, g.name
    );
    vec![
        // Before OTEL_RESOURCE_ATTRIBUTES: Kubernetes only expands references
        // to variables declared earlier in the list.
        pod::env_from_field(ENV_POD_NAME, "metadata.name"),
        pod::env_verbatim(ENV_OTEL_EXPORTER_OTLP_ENDPOINT, &tracing.endpoint),
        pod::env(ENV_OTEL_EXPORTER_OTLP_PROTOCOL, tracing.protocol.as_str()),
        pod::env(ENV_OTEL_RESOURCE_ATTRIBUTES, attributes),
    ]
}

/// The runtime container of a group's pods: the group's image (or the
/// role's default), the role's args and env plus the Redis env and, with
/// trace export on, the `OTEL_*` env; one named port carrying both probes,
/// the group's resources and the restricted security context.
fn runtime_container(
    ctx: &Ctx<'_>,
    g: &GroupSpec,
    role: GroupRole,
    default_image: &str,
    args: Vec<String>,
    mut env: Vec<EnvVar>,
    (port_name, port): (&str, i32),
) -> Container {
    env.extend(redis::runtime_env(ctx, &ctx.redis));
    // Last, and only when on: without an endpoint the container carries no
    // tracing variable at all.
    if let Some(t) = &ctx.settings.tracing {
        env.extend(tracing_env(ctx, g, t));
    }
    Container {
        name: main_container(role).into(),
        image: Some(g.image.clone().unwrap_or_else(|| default_image.to_string())),
        image_pull_policy: ctx.settings.images.pull_policy.clone(),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(port_name.into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(pod::readiness_http("/readyz", port_name)),
        liveness_probe: Some(pod::liveness_http("/healthz", port_name)),
        resources: Some(pod::resources_or_default(g.resources.as_ref())),
        security_context: Some(pod::restricted_container()),
        ..Default::default()
    }
}

/// The Deployment of a group: `main` plus the group's sidecars, the
/// pipeline file, key ring, Redis CA (external Redis with `caSecretRef`)
/// and node Secrets mounted as directories in `main` only.
fn deployment(
    ctx: &Ctx<'_>,
    g: &GroupSpec,
    replicas: Option<i32>,
    mut main: Container,
    termination_grace: i64,
    secret_refs: &[SecretRefUse],
) -> Deployment {
    let component = component_of(g.role);
    let (secret_volumes, secret_mounts) = pod::node_secret_mounts(secret_refs);
    let (ca_volume, ca_mount) = redis::ca_mount(&ctx.redis).unzip();
    let mut mounts = vec![
        pod::mount(pod::VOLUME_PIPELINE, pod::PIPELINE_DIR, true),
        pod::mount(pod::VOLUME_KEYS, pod::KEYS_DIR, true),
        pod::tmp_mount(),
    ];
    mounts.extend(ca_mount);
    mounts.extend(secret_mounts);
    main.volume_mounts = Some(mounts);
    let main_name = main.name.clone();
    let mut containers = vec![main];
    containers.extend(
        g.sidecars
            .iter()
            .flatten()
            .cloned()
            .map(pod::harden_sidecar),
    );
    let mut volumes = vec![
        pod::pipeline_volume(&names::pipeline_config(&ctx.name)),
        pod::secret_volume(pod::VOLUME_KEYS, &ctx.key_secret, None),
        pod::tmp_volume(),
    ];
    volumes.extend(ca_volume);
    volumes.extend(secret_volumes);

    Deployment {
        metadata: ctx.meta(names::group(&ctx.name, &g.name), component, Some(&g.name)),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(labels::group_selector(&ctx.name, &g.name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels::labels(&ctx.name, component, Some(&g.name))),
                    annotations: Some(BTreeMap::from([
                        (labels::CONFIG_HASH.to_string(), ctx.config_hash.clone()),
                        (labels::DEFAULT_CONTAINER.to_string(), main_name),
                    ])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    // Runtime pods never talk to the API server.
                    automount_service_account_token: Some(false),
                    // Service links would inject variables such as
                    // SLUICE_*_PORT for a Service named sluice-*.
                    enable_service_links: Some(false),
                    security_context: Some(pod::restricted_pod(pod::RUNTIME_UID, false)),
                    termination_grace_period_seconds: Some(termination_grace),
                    image_pull_secrets: ctx.pull_secrets(),
                    node_selector: g.node_selector.clone(),
                    tolerations: g.tolerations.clone(),
                    affinity: g.affinity.clone(),
                    containers,
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

// === ingress exposure ===

fn ingress_service(ctx: &Ctx<'_>, g: &GroupSpec) -> Service {
    let type_ = match ctx
        .spec
        .expose
        .as_ref()
        .map(|e| e.service_type)
        .unwrap_or_default()
    {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata: ctx.meta(
            names::ingress_service(&ctx.name),
            Component::Ingress,
            Some(&g.name),
        ),
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(labels::group_selector(&ctx.name, &g.name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Keeps one ingress pod up through voluntary disruptions (node drains).
fn pdb(ctx: &Ctx<'_>, g: &GroupSpec) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ctx.meta(
            names::group(&ctx.name, &g.name),
            Component::Ingress,
            Some(&g.name),
        ),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::group_selector(&ctx.name, &g.name)),
                ..Default::default()
            }),
            // A pod that is not ready serves nobody; evicting it must not
            // block a node drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One `Exact` path per interface rather than `/`: the ingress port also
/// serves `/metrics`, `/healthz` and `/readyz`, which stay in-cluster.
fn ingress_resource(ctx: &Ctx<'_>) -> Option<Ingress> {
    let spec = ctx.spec.expose.as_ref()?.ingress.as_ref()?;
    let service = names::ingress_service(&ctx.name);
    let paths = ctx
        .spec
        .interfaces
        .iter()
        .map(|i| HTTPIngressPath {
            path: Some(i.path.clone()),
            path_type: "Exact".into(),
            backend: IngressBackend {
                service: Some(IngressServiceBackend {
                    name: service.clone(),
                    port: Some(ServiceBackendPort {
                        name: Some("http".into()),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            },
        })
        .collect();
    let ingress_group = ctx
        .spec
        .groups
        .iter()
        .find(|g| g.role == GroupRole::Ingress)
        .map(|g| g.name.as_str());
    Some(Ingress {
        metadata: ctx.meta(service, Component::Ingress, ingress_group),
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue { paths }),
            }]),
            tls: spec.tls_secret.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

// === autoscaling ===

/// Target CPU utilisation of `engine: hpa` when unset.
pub const DEFAULT_TARGET_CPU: i32 = 70;

/// The HPA of a group with `autoscale.engine: hpa`. `builtin` is the
/// operator's own loop and `keda` a ScaledObject, neither an object here.
fn hpa(ctx: &Ctx<'_>, g: &GroupSpec) -> Option<HorizontalPodAutoscaler> {
    let a = g
        .autoscale
        .as_ref()
        .filter(|a| a.engine == AutoscaleEngine::Hpa)?;
    let name = names::group(&ctx.name, &g.name);
    Some(HorizontalPodAutoscaler {
        metadata: ctx.meta(name.clone(), Component::Worker, Some(&g.name)),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(<Deployment as k8s_openapi::Resource>::API_VERSION.into()),
                kind: <Deployment as k8s_openapi::Resource>::KIND.into(),
                name,
            },
            // An HPA cannot scale to zero without an alpha feature gate.
            min_replicas: Some(a.min_replicas.unwrap_or(1).max(1)),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(
                            a.target_cpu_utilization.unwrap_or(DEFAULT_TARGET_CPU),
                        ),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// ScaledObjects of the `engine: keda` groups and, when there is one, the
/// pipeline's TriggerAuthentication.
fn keda_objects(ctx: &Ctx<'_>) -> Vec<Child> {
    let groups = crate::autoscale::groups_with(ctx.spec, AutoscaleEngine::Keda);
    let redis_name = names::redis(&ctx.name);
    let address = crate::redis::managed_address(&ctx.name, &ctx.namespace);
    let target = match &ctx.redis {
        RedisUse::External { url, ca } => keda::RedisTarget::External { url, ca: *ca },
        RedisUse::Managed(_) | RedisUse::None => keda::RedisTarget::Managed {
            address: &address,
            secret: &redis_name,
        },
    };
    if groups.is_empty() {
        return vec![];
    }
    let auth = names::keda_auth(&ctx.name);
    let mut out: Vec<Child> = groups
        .into_iter()
        .map(|(g, a)| {
            let meta = ctx.meta(
                names::group(&ctx.name, &g.name),
                Component::Worker,
                Some(&g.name),
            );
            Child::ScaledObject(keda::scaled_object(
                meta,
                &ctx.namespace,
                &ctx.name,
                g,
                a,
                target,
                &auth,
            ))
        })
        .collect();
    out.push(Child::TriggerAuthentication(keda::trigger_authentication(
        ctx.meta(auth, Component::Worker, None),
        target,
    )));
    out
}

// === key ring ===

/// The key ring Secret of a new pipeline (DESIGN §6 layout): one file per
/// key named by its kid holding base64 of 32 random bytes, and `current`
/// naming the signing kid; rotation annotations in phase `stable`.
///
/// The reconciler calls it only when the Secret is absent, with fresh random
/// material and the current time; after that only the rotation procedure
/// changes the Secret.
///
/// # Errors
/// Missing name, namespace or uid; a kid that is not 1–64 characters of
/// `A-Z a-z 0-9 _ -` (or is `current`); a key that is not standard base64
/// of exactly 32 bytes. Errors never contain the key.
pub fn initial_key_secret(
    sp: &StreamPipeline,
    kid: &str,
    key_b64: &str,
    updated: &Time,
) -> Result<Secret> {
    let owner = owner_of(sp)?;
    let kid_ok = !kid.is_empty()
        && kid.len() <= 64
        && kid != KEY_RING_CURRENT
        && kid
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if !kid_ok {
        return Err(Error::InvalidInput {
            what: "kid",
            reason: format!("`{kid}` must be 1-64 characters of [A-Za-z0-9_-] and not `current`"),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(key_b64.trim());
    if decoded.map(|k| k.len()) != Ok(KEY_LEN) {
        return Err(Error::InvalidInput {
            what: "key",
            reason: format!("must be standard base64 of exactly {KEY_LEN} bytes"),
        });
    }
    let mut metadata = owner.meta(names::key_secret(&owner.name), Component::Keys, None);
    metadata.annotations = Some(BTreeMap::from([
        (
            labels::ROTATION_PHASE.to_string(),
            labels::ROTATION_STABLE.to_string(),
        ),
        (
            labels::ROTATION_UPDATED.to_string(),
            crate::clock::datetime_of(updated).to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
    ]));
    Ok(Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                kid.to_string(),
                ByteString(key_b64.trim().as_bytes().to_vec()),
            ),
            (
                KEY_RING_CURRENT.to_string(),
                ByteString(kid.as_bytes().to_vec()),
            ),
        ])),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use k8s_openapi::api::core::v1::PodTemplateSpec;

    const UID: &str = "7f3c1a52-0000-4000-8000-000000000001";

    fn parse(yaml: &str) -> StreamPipeline {
        let mut sp: StreamPipeline = sluice_crds::yaml::from_str(yaml).unwrap();
        sp.metadata.namespace = Some("demo".into());
        sp.metadata.uid = Some(UID.into());
        sp
    }

    fn orders_redis() -> StreamPipeline {
        parse(include_str!("../../examples/orders-redis.yaml"))
    }

    fn examples() -> Vec<StreamPipeline> {
        vec![
            parse(include_str!("../../examples/hello.yaml")),
            parse(include_str!("../../examples/orders.yaml")),
            orders_redis(),
            with_everything(),
        ]
    }

    /// A redis pipeline using sidecars, node Secrets, autoscaling, exposure.
    fn with_everything() -> StreamPipeline {
        parse(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: enrich }
spec:
  backends: { queue: redis, kv: redis, reply: redis }
  redis: { persistence: none }
  expose:
    serviceType: LoadBalancer
    ingress: { host: enrich.example.com, className: nginx, tlsSecret: enrich-tls }
  interfaces:
    - { name: enrich, path: /v1/enrich, entry: parse, timeout: 5s }
  groups:
    - { name: web, role: ingress, replicas: 2 }
    - name: cpu
      role: worker
      autoscale: { minReplicas: 1, maxReplicas: 20 }
    - name: io
      role: worker
      replicas: 2
      image: example.com/custom-worker:1
      nodeSelector: { pool: io }
      autoscale: { engine: hpa, minReplicas: 0, maxReplicas: 4, targetCpuUtilization: 60 }
      sidecars:
        - name: py
          image: example.com/py:1
          securityContext: { runAsUser: 1000 }
  nodes:
    - { name: parse, group: cpu, uses: builtin/json-map, with: { template: { q: "${/q}" } }, next: enrich }
    - name: enrich
      group: io
      uses: builtin/http
      with:
        url: http://127.0.0.1:9000/enrich
        headersFrom:
          Authorization: { secretRef: { name: enrich-api, key: token } }
"#,
        )
    }

    fn render(sp: &StreamPipeline) -> Desired {
        desired(sp, &OperatorSettings::default()).unwrap()
    }

    fn deployment<'a>(d: &'a Desired, name: &str) -> &'a Deployment {
        d.objects
            .iter()
            .find_map(|o| match o {
                Child::Deployment(x) if o.name() == name => Some(x),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Deployment {name}"))
    }

    fn templates(d: &Desired) -> Vec<&PodTemplateSpec> {
        d.objects.iter().filter_map(Child::pod_template).collect()
    }

    fn kinds(d: &Desired) -> Vec<(&'static str, &str)> {
        d.objects
            .iter()
            .map(|o| (o.kind().kind, o.name()))
            .collect()
    }

    fn group_mut<'a>(sp: &'a mut StreamPipeline, name: &str) -> &'a mut GroupSpec {
        sp.spec.groups.iter_mut().find(|g| g.name == name).unwrap()
    }

    #[test]
    fn a_replica_change_keeps_the_config_hash_and_the_pod_templates() {
        let before = render(&orders_redis());
        let mut sp = orders_redis();
        group_mut(&mut sp, "cpu").replicas = Some(7);
        group_mut(&mut sp, "io").autoscale =
            sluice_crds::yaml::from_str("{maxReplicas: 9}").unwrap();
        group_mut(&mut sp, "web").replicas = Some(3);
        let after = render(&sp);
        assert_eq!(before.config_hash, after.config_hash);
        assert_eq!(templates(&before), templates(&after));
        assert_eq!(
            deployment(&after, "orders-redis-cpu")
                .spec
                .as_ref()
                .unwrap()
                .replicas,
            Some(7)
        );
    }

    #[test]
    fn a_node_config_change_changes_the_config_hash() {
        let before = render(&orders_redis());
        let mut sp = orders_redis();
        sp.spec.nodes[0].with = Some(serde_json::json!({"field": "/kind"}));
        let after = render(&sp);
        assert_ne!(before.config_hash, after.config_hash);
        for t in templates(&after).into_iter().filter(|t| {
            t.metadata.as_ref().unwrap().labels.as_ref().unwrap()[labels::COMPONENT] != "redis"
        }) {
            let ann = t.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
            assert_eq!(ann[labels::CONFIG_HASH], after.config_hash);
        }
        // Redis is not restarted by a pipeline change.
        let redis_hash = |d: &Desired| {
            d.objects
                .iter()
                .find(|o| o.kind().kind == "StatefulSet")
                .unwrap()
                .pod_template()
                .unwrap()
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[labels::CONFIG_HASH]
                .clone()
        };
        assert_eq!(redis_hash(&before), redis_hash(&after));
    }

    #[test]
    fn an_image_change_changes_the_config_hash() {
        let mut settings = OperatorSettings::default();
        let a = desired(&orders_redis(), &settings).unwrap().config_hash;
        settings.images.worker = "example.com/other:2".into();
        assert_ne!(a, desired(&orders_redis(), &settings).unwrap().config_hash);
    }

    #[test]
    fn autoscaled_groups_have_no_replicas_and_hpa_groups_get_an_hpa() {
        let d = render(&with_everything());
        assert_eq!(
            deployment(&d, "enrich-cpu").spec.as_ref().unwrap().replicas,
            None
        );
        assert_eq!(
            deployment(&d, "enrich-io").spec.as_ref().unwrap().replicas,
            None,
            "autoscale wins over replicas"
        );
        assert!(
            !d.contains("HorizontalPodAutoscaler", "enrich-cpu"),
            "builtin engine: no HPA"
        );
        let hpa = d
            .objects
            .iter()
            .find_map(|o| match o {
                Child::HorizontalPodAutoscaler(h) => Some(h),
                _ => None,
            })
            .unwrap();
        let s = hpa.spec.as_ref().unwrap();
        assert_eq!(s.scale_target_ref.name, "enrich-io");
        assert_eq!(s.scale_target_ref.kind, "Deployment");
        assert_eq!((s.min_replicas, s.max_replicas), (Some(1), 4));
        let target = &s.metrics.as_ref().unwrap()[0]
            .resource
            .as_ref()
            .unwrap()
            .target;
        assert_eq!(target.average_utilization, Some(60));
    }

    fn trigger_auth(d: &Desired) -> &TriggerAuthentication {
        d.objects
            .iter()
            .find_map(|o| match o {
                Child::TriggerAuthentication(a) => Some(a),
                _ => None,
            })
            .expect("a TriggerAuthentication")
    }

    fn scaled_object(d: &Desired) -> &ScaledObject {
        d.objects
            .iter()
            .find_map(|o| match o {
                Child::ScaledObject(s) => Some(s),
                _ => None,
            })
            .expect("a ScaledObject")
    }

    #[test]
    fn keda_groups_get_a_scaled_object_and_the_pipeline_one_trigger_authentication() {
        let mut sp = orders_redis();
        group_mut(&mut sp, "io").autoscale = sluice_crds::yaml::from_str(
            "{engine: keda, minReplicas: 0, maxReplicas: 5, scaleDownStabilization: 90s}",
        )
        .unwrap();
        let d = render(&sp);
        assert_eq!(
            deployment(&d, "orders-redis-io")
                .spec
                .as_ref()
                .unwrap()
                .replicas,
            None
        );
        let so = d
            .objects
            .iter()
            .find_map(|o| match o {
                Child::ScaledObject(s) => Some(s),
                _ => None,
            })
            .expect("a ScaledObject");
        assert_eq!(so.metadata.name.as_deref(), Some("orders-redis-io"));
        assert_eq!(so.spec["minReplicaCount"], 0);
        assert_eq!(so.spec["cooldownPeriod"], 90);
        let t = &so.spec["triggers"][0];
        assert_eq!(t["metadata"]["stream"], "sluice:{demo/orders-redis}:q:io");
        assert_eq!(t["metadata"]["streamLength"], "50");
        assert_eq!(t["authenticationRef"]["name"], "orders-redis-keda-redis");
        assert!(d.contains("TriggerAuthentication", "orders-redis-keda-redis"));
        assert!(!d.contains("HorizontalPodAutoscaler", "orders-redis-io"));
        // KEDA's operator reads the lag: the managed Redis admits it too.
        let peers = |d: &Desired| {
            let np = d
                .objects
                .iter()
                .find_map(|o| match o {
                    Child::NetworkPolicy(n) => Some(n.clone()),
                    _ => None,
                })
                .expect("a NetworkPolicy");
            serde_json::to_value(&np.spec.unwrap().ingress.unwrap()[0].from).unwrap()
        };
        let keda_peer = serde_json::json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
            "podSelector": {"matchLabels": {"app": "keda-operator"}},
        });
        let with_keda = peers(&d);
        assert_eq!(with_keda.as_array().unwrap().len(), 3, "{with_keda}");
        assert_eq!(with_keda[2], keda_peer);
        let without = peers(&render(&orders_redis()));
        assert_eq!(without.as_array().unwrap().len(), 2, "{without}");
        assert!(!without.as_array().unwrap().contains(&keda_peer));

        // External Redis: address and password come from the user's Secret.
        sp.spec.redis =
            sluice_crds::yaml::from_str("{mode: external, urlSecretRef: {name: ext, key: url}}")
                .unwrap();
        let d = render(&sp);
        let auth = trigger_auth(&d);
        assert_eq!(
            auth.spec["secretTargetRef"],
            serde_json::json!([
                {"parameter": "address", "name": "ext", "key": "address"},
                {"parameter": "password", "name": "ext", "key": "password"},
            ])
        );
        let so = scaled_object(&d);
        assert!(so.spec["triggers"][0]["metadata"].get("address").is_none());
        assert!(so.spec["triggers"][0]["metadata"]
            .get("enableTLS")
            .is_none());

        // A private CA: TLS on in the trigger, the CA by Secret reference.
        sp.spec.redis = sluice_crds::yaml::from_str(
            "{mode: external, urlSecretRef: {name: ext, key: url}, caSecretRef: {name: ext-ca, key: ca.crt}}",
        )
        .unwrap();
        let d = render(&sp);
        let auth = trigger_auth(&d);
        assert_eq!(
            auth.spec["secretTargetRef"],
            serde_json::json!([
                {"parameter": "address", "name": "ext", "key": "address"},
                {"parameter": "password", "name": "ext", "key": "password"},
                {"parameter": "ca", "name": "ext-ca", "key": "ca.crt"},
            ])
        );
        let so = scaled_object(&d);
        assert_eq!(so.spec["triggers"][0]["metadata"]["enableTLS"], "true");
    }

    #[test]
    fn memory_backends_run_every_group_in_the_ingress_pods() {
        let d = render(&parse(include_str!("../../examples/orders.yaml")));
        assert_eq!(
            kinds(&d),
            [
                ("ConfigMap", "orders-pipeline"),
                ("Service", "orders"),
                ("Deployment", "orders-web")
            ]
        );
        let t = templates(&d)[0].spec.as_ref().unwrap();
        let env = t.containers[0].env.as_ref().unwrap();
        assert!(env.iter().all(|e| e.name != ENV_REDIS_URL));
        assert_eq!(
            d.generated_secrets,
            [GeneratedSecret::KeyRing("orders-ipc-keys".into())]
        );
        assert_eq!(d.obsolete_secrets, ["orders-redis"]);
    }

    #[test]
    fn memory_backends_mount_every_nodes_secrets_in_the_ingress_pods() {
        let mut sp = with_everything();
        sp.spec.backends = Default::default();
        let d = render(&sp);
        let t = templates(&d)[0].spec.as_ref().unwrap();
        let mounts = t.containers[0].volume_mounts.as_ref().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m.mount_path == "/etc/sluice/secrets/enrich-api"));
    }

    #[test]
    fn node_secrets_are_mounted_only_in_their_groups_pods() {
        let d = render(&with_everything());
        let has = |name: &str| {
            deployment(&d, name)
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| {
                    m.mount_path == "/etc/sluice/secrets/enrich-api" && m.read_only == Some(true)
                })
        };
        assert!(has("enrich-io"));
        assert!(!has("enrich-cpu"));
        assert!(!has("enrich-web"));
    }

    #[test]
    fn external_redis_creates_no_redis_objects_and_reads_the_url_from_the_users_secret() {
        let mut sp = orders_redis();
        sp.spec.redis = sluice_crds::yaml::from_str(
            "{mode: external, urlSecretRef: {name: my-redis, key: url}}",
        )
        .unwrap();
        let d = render(&sp);
        assert!(d
            .objects
            .iter()
            .all(|o| o.kind().kind != "StatefulSet" && o.kind().kind != "NetworkPolicy"));
        assert!(!d.contains("Service", "orders-redis-redis"));
        assert!(!d.contains("Service", "orders-redis-redis-headless"));
        assert!(d
            .generated_secrets
            .iter()
            .all(|s| matches!(s, GeneratedSecret::KeyRing(_))));
        assert_eq!(d.obsolete_secrets, ["orders-redis-redis"]);
        for t in templates(&d) {
            let env = t.spec.as_ref().unwrap().containers[0].env.as_ref().unwrap();
            let url = env
                .iter()
                .find(|e| e.name == ENV_REDIS_URL)
                .expect("SLUICE_REDIS_URL");
            let r = url
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            assert_eq!((r.name.as_str(), r.key.as_str()), ("my-redis", "url"));
            assert!(env.iter().all(|e| e.name != redis::ENV_REDIS_PASSWORD));
        }
    }

    /// `with_everything` on external Redis, with `ca` (YAML) as `caSecretRef`.
    fn external_with_ca(ca: Option<&str>) -> StreamPipeline {
        let mut sp = with_everything();
        let ca = ca
            .map(|c| format!(", caSecretRef: {c}"))
            .unwrap_or_default();
        sp.spec.redis = sluice_crds::yaml::from_str(&format!(
            "{{mode: external, urlSecretRef: {{name: my-redis, key: url}}{ca}}}"
        ))
        .unwrap();
        sp
    }

    #[test]
    fn an_external_redis_ca_is_mounted_and_named_in_every_runtime_container_only() {
        let d = render(&external_with_ca(Some(
            "{name: redis-tls, key: tls-ca.pem}",
        )));
        let ts = templates(&d);
        assert_eq!(ts.len(), 3, "ingress and two worker groups");
        for t in ts {
            let pod = t.spec.as_ref().unwrap();
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == redis::VOLUME_REDIS_CA)
                .expect("the CA volume");
            let secret = volume.secret.as_ref().unwrap();
            assert_eq!(secret.secret_name.as_deref(), Some("redis-tls"));
            assert_eq!(
                secret.items,
                Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                    key: "tls-ca.pem".into(),
                    path: "ca.crt".into(),
                    mode: None,
                }]),
                "only the referenced key, as ca.crt"
            );
            let main = &pod.containers[0];
            let mount = main
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == redis::VOLUME_REDIS_CA)
                .expect("the runtime container mounts the CA");
            assert_eq!(mount.mount_path, "/etc/sluice/redis-ca");
            assert_eq!(mount.read_only, Some(true));
            assert!(mount.sub_path.is_none());
            let env = main.env.as_ref().unwrap();
            let ca = env
                .iter()
                .find(|e| e.name == ENV_REDIS_CA_FILE)
                .expect("SLUICE_REDIS_CA_FILE");
            assert_eq!(ca.value.as_deref(), Some("/etc/sluice/redis-ca/ca.crt"));
            // After the URL, which it qualifies.
            let url = env.iter().position(|e| e.name == ENV_REDIS_URL).unwrap();
            let at = env
                .iter()
                .position(|e| e.name == ENV_REDIS_CA_FILE)
                .unwrap();
            assert!(url < at);
            for sidecar in &pod.containers[1..] {
                assert!(
                    sidecar
                        .volume_mounts
                        .iter()
                        .flatten()
                        .all(|m| m.name != redis::VOLUME_REDIS_CA),
                    "sidecar {} mounts the CA",
                    sidecar.name
                );
                assert!(sidecar
                    .env
                    .iter()
                    .flatten()
                    .all(|e| e.name != ENV_REDIS_CA_FILE));
            }
        }
        let io = deployment(&d, "enrich-io");
        let pod = io.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.containers.len(), 2, "the io group keeps its sidecar");
    }

    #[test]
    fn without_a_redis_ca_no_pod_carries_its_volume_mount_or_variable() {
        for sp in [external_with_ca(None), with_everything(), orders_redis()] {
            for t in templates(&render(&sp)) {
                let pod = t.spec.as_ref().unwrap();
                assert!(pod
                    .volumes
                    .iter()
                    .flatten()
                    .all(|v| v.name != redis::VOLUME_REDIS_CA));
                for c in &pod.containers {
                    assert!(c
                        .volume_mounts
                        .iter()
                        .flatten()
                        .all(|m| m.name != redis::VOLUME_REDIS_CA));
                    assert!(c.env.iter().flatten().all(|e| e.name != ENV_REDIS_CA_FILE));
                }
            }
        }
    }

    #[test]
    fn adding_or_changing_the_redis_ca_reference_changes_every_runtime_pod_template() {
        let without = render(&external_with_ca(None));
        let with = render(&external_with_ca(Some("{name: redis-tls, key: ca.crt}")));
        let other_key = render(&external_with_ca(Some("{name: redis-tls, key: ca2.crt}")));
        let other_secret = render(&external_with_ca(Some("{name: redis-tls2, key: ca.crt}")));
        for name in ["enrich-web", "enrich-cpu", "enrich-io"] {
            let template = |d: &Desired| deployment(d, name).spec.clone().unwrap().template;
            let all = [&without, &with, &other_key, &other_secret].map(template);
            for (i, a) in all.iter().enumerate() {
                for b in &all[i + 1..] {
                    assert_ne!(a, b, "{name}");
                }
            }
        }
    }

    #[test]
    fn a_malformed_redis_ca_reference_is_a_field_error() {
        let sp = external_with_ca(Some("{name: Bad_Name, key: \"../ca\"}"));
        let e = desired(&sp, &OperatorSettings::default()).unwrap_err();
        let paths: Vec<_> = e.field_errors().iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["spec.redis.caSecretRef.name", "spec.redis.caSecretRef.key"]
        );
    }

    #[test]
    fn a_redis_ca_with_managed_redis_is_refused() {
        let mut sp = with_everything();
        sp.spec.redis = sluice_crds::yaml::from_str(
            "{mode: managed, caSecretRef: {name: redis-tls, key: ca.crt}}",
        )
        .unwrap();
        let e = desired(&sp, &OperatorSettings::default()).unwrap_err();
        assert!(
            e.field_errors()
                .iter()
                .any(|f| f.path == "spec.redis.caSecretRef"),
            "{e}"
        );
    }

    #[test]
    fn managed_redis_is_complete_and_reached_through_the_password_secret() {
        let d = render(&orders_redis());
        assert_eq!(
            kinds(&d),
            [
                ("ConfigMap", "orders-redis-pipeline"),
                ("Service", "orders-redis-redis-headless"),
                ("Service", "orders-redis-redis"),
                ("NetworkPolicy", "orders-redis-redis"),
                ("StatefulSet", "orders-redis-redis"),
                ("Service", "orders-redis"),
                ("Deployment", "orders-redis-web"),
                ("Deployment", "orders-redis-cpu"),
                ("Deployment", "orders-redis-io"),
            ]
        );
        assert_eq!(
            d.generated_secrets,
            [
                GeneratedSecret::KeyRing("orders-redis-ipc-keys".into()),
                GeneratedSecret::RedisPassword("orders-redis-redis".into()),
            ]
        );
        let Some(Child::StatefulSet(ss)) =
            d.objects.iter().find(|o| o.kind().kind == "StatefulSet")
        else {
            panic!("no StatefulSet")
        };
        let s = ss.spec.as_ref().unwrap();
        assert_eq!(s.replicas, Some(1));
        assert_eq!(
            s.service_name.as_deref(),
            Some("orders-redis-redis-headless")
        );
        let claims = s.volume_claim_templates.as_ref().unwrap();
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
        let retention = s.persistent_volume_claim_retention_policy.as_ref().unwrap();
        assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
        let pod = s.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.command.as_deref().unwrap(),
            ["redis-server", "/etc/redis/redis.conf"]
        );
        assert!(c.args.is_none(), "no password on the command line");
        assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(999));

        let env = deployment(&d, "orders-redis-cpu")
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .env
            .clone()
            .unwrap();
        let pw = env
            .iter()
            .position(|e| e.name == redis::ENV_REDIS_PASSWORD)
            .unwrap();
        let url = env.iter().position(|e| e.name == ENV_REDIS_URL).unwrap();
        assert!(
            pw < url,
            "dependent variables must come after what they expand"
        );
        assert_eq!(
            env[url].value.as_deref(),
            Some("redis://:$(REDIS_PASSWORD)@orders-redis-redis.demo.svc:6379/0")
        );
    }

    #[test]
    fn redis_without_persistence_uses_an_empty_dir_and_no_claims() {
        let d = render(&with_everything());
        let Some(Child::StatefulSet(ss)) =
            d.objects.iter().find(|o| o.kind().kind == "StatefulSet")
        else {
            panic!("no StatefulSet")
        };
        let s = ss.spec.as_ref().unwrap();
        assert!(s.volume_claim_templates.is_none());
        let volumes = s.template.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        assert!(volumes
            .iter()
            .any(|v| v.name == "data" && v.empty_dir.is_some()));
    }

    #[test]
    fn the_redis_network_policy_admits_the_pipeline_and_the_operator_only() {
        let d = render(&orders_redis());
        let Some(Child::NetworkPolicy(np)) =
            d.objects.iter().find(|o| o.kind().kind == "NetworkPolicy")
        else {
            panic!("no NetworkPolicy")
        };
        let s = np.spec.as_ref().unwrap();
        assert_eq!(
            s.pod_selector.as_ref().and_then(|p| p.match_labels.clone()),
            Some(labels::redis_selector("orders-redis"))
        );
        let rule = &s.ingress.as_ref().unwrap()[0];
        let from = rule.from.as_ref().unwrap();
        assert_eq!(from.len(), 2);
        assert_eq!(
            from[0]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[labels::PIPELINE],
            "orders-redis"
        );
        assert!(from[0].namespace_selector.is_none(), "same namespace only");
        assert_eq!(
            from[1]
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["kubernetes.io/metadata.name"],
            "sluice-system"
        );
        assert_eq!(
            rule.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(6379))
        );
    }

    #[test]
    fn every_container_is_restricted_with_a_read_only_root() {
        for sp in examples() {
            for t in templates(&render(&sp)) {
                let pod = t.spec.as_ref().unwrap();
                assert_eq!(pod.automount_service_account_token, Some(false));
                let psc = pod.security_context.as_ref().unwrap();
                assert_eq!(psc.run_as_non_root, Some(true));
                assert_eq!(
                    psc.seccomp_profile.as_ref().unwrap().type_,
                    "RuntimeDefault"
                );
                for c in &pod.containers {
                    let sc = c
                        .security_context
                        .as_ref()
                        .unwrap_or_else(|| panic!("{} has no securityContext", c.name));
                    assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
                    assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
                    assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
                    assert_eq!(
                        sc.capabilities.as_ref().unwrap().drop,
                        Some(vec!["ALL".to_string()]),
                        "{}",
                        c.name
                    );
                    assert!(
                        c.volume_mounts
                            .iter()
                            .flatten()
                            .any(|m| m.mount_path == "/tmp"),
                        "{} has no writable /tmp",
                        c.name
                    );
                }
                // Sidecars keep the resources their authors chose.
                let main = &pod.containers[0];
                assert!(
                    main.resources
                        .as_ref()
                        .and_then(|r| r.requests.as_ref())
                        .is_some(),
                    "{}",
                    main.name
                );
            }
        }
    }

    #[test]
    fn no_mount_anywhere_uses_sub_path() {
        for sp in examples() {
            for t in templates(&render(&sp)) {
                for c in &t.spec.as_ref().unwrap().containers {
                    for m in c.volume_mounts.iter().flatten() {
                        assert!(
                            m.sub_path.is_none() && m.sub_path_expr.is_none(),
                            "{} mounts {} with subPath",
                            c.name,
                            m.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_object_is_owned_by_the_pipeline_and_labelled() {
        for sp in examples() {
            let d = render(&sp);
            let name = sp.metadata.name.as_deref().unwrap();
            for o in &d.objects {
                let m = o.meta();
                let refs = m.owner_references.as_ref().unwrap();
                assert_eq!(refs.len(), 1);
                assert_eq!(refs[0].uid, UID);
                assert_eq!(refs[0].kind, "StreamPipeline");
                assert_eq!(refs[0].controller, Some(true));
                assert_eq!(m.namespace.as_deref(), Some("demo"));
                let l = m.labels.as_ref().unwrap();
                assert_eq!(l[labels::INSTANCE], name);
                assert_eq!(l[labels::PIPELINE], name);
                assert_eq!(l[labels::MANAGED_BY], "sluice-operator");
            }
        }
    }

    #[test]
    fn runtime_pods_mount_pipeline_and_keys_as_directories_and_point_flags_at_them() {
        let d = render(&orders_redis());
        let pod = deployment(&d, "orders-redis-cpu")
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.args.as_deref().unwrap(),
            [
                "--pipeline",
                "/etc/sluice/pipeline/pipeline.yaml",
                "--group",
                "cpu",
                "--keys",
                "/etc/sluice/keys",
                "--admin",
                "0.0.0.0:9090"
            ]
        );
        let volumes = pod.volumes.unwrap();
        let keys = volumes.iter().find(|v| v.name == "keys").unwrap();
        assert_eq!(
            keys.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("orders-redis-ipc-keys")
        );
        let cm = volumes.iter().find(|v| v.name == "pipeline").unwrap();
        assert_eq!(
            cm.config_map.as_ref().unwrap().name,
            "orders-redis-pipeline"
        );
        assert_eq!(pod.termination_grace_period_seconds, Some(30));
        let web = deployment(&d, "orders-redis-web")
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        assert_eq!(web.termination_grace_period_seconds, Some(40));
        let id = web.containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == ENV_INGRESS_ID)
            .unwrap();
        assert_eq!(
            id.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
    }

    #[test]
    fn the_pipeline_file_is_what_a_local_run_reads() {
        let sp = orders_redis();
        let d = render(&sp);
        let Child::ConfigMap(cm) = &d.objects[0] else {
            panic!("ConfigMap first")
        };
        let text = &cm.data.as_ref().unwrap()["pipeline.yaml"];
        let (parsed, plan) = sluice_crds::parse_manifest("pipeline.yaml", text).unwrap();
        assert_eq!(parsed.spec, sp.spec);
        assert_eq!(parsed.metadata.namespace.as_deref(), Some("demo"));
        assert_eq!(plan, d.plan);
        assert!(!text.contains(UID), "metadata is name and namespace only");
    }

    #[test]
    fn a_cycle_is_refused_with_its_field_path_and_nothing_is_produced() {
        let mut sp = orders_redis();
        let summarize = sp
            .spec
            .nodes
            .iter_mut()
            .find(|n| n.name == "summarize")
            .unwrap();
        summarize.next = Some(sluice_crds::NextSpec::One("rush".into()));
        let e = desired(&sp, &OperatorSettings::default()).unwrap_err();
        assert!(matches!(e, Error::InvalidSpec(_)));
        assert!(
            e.field_errors()
                .iter()
                .any(|f| f.path.starts_with("spec.nodes[")
                    && f.path.ends_with(".next")
                    && f.message.contains("cycle")),
            "{e}"
        );
    }

    #[test]
    fn operator_checks_are_reported_as_field_errors() {
        let mut sp = with_everything();
        sp.metadata.name = Some("a".repeat(50));
        group_mut(&mut sp, "io").sidecars.as_mut().unwrap()[0].name = "worker".into();
        sp.spec.nodes[1].with =
            Some(serde_json::json!({"headersFrom": {"A": {"secretRef": {"name": "x"}}}}));
        let e = desired(&sp, &OperatorSettings::default()).unwrap_err();
        let paths: Vec<_> = e.field_errors().iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "metadata.name",
                "spec.groups[2].sidecars[0].name",
                "spec.nodes[1].with.headersFrom.A.secretRef"
            ]
        );
    }

    #[test]
    fn compile_and_operator_errors_are_reported_together() {
        let mut sp = with_everything();
        sp.spec.nodes[0].group = "nowhere".into();
        group_mut(&mut sp, "io").sidecars.as_mut().unwrap()[0].name = "worker".into();
        let e = desired(&sp, &OperatorSettings::default()).unwrap_err();
        let paths: Vec<_> = e.field_errors().iter().map(|f| f.path.as_str()).collect();
        assert!(paths.contains(&"spec.nodes[0].group"), "{paths:?}");
        assert!(
            paths.contains(&"spec.groups[2].sidecars[0].name"),
            "{paths:?}"
        );
    }

    #[test]
    fn missing_metadata_is_an_error_value() {
        let mut sp = orders_redis();
        sp.metadata.uid = None;
        assert!(matches!(
            desired(&sp, &OperatorSettings::default()),
            Err(Error::MissingObjectKey("metadata.uid"))
        ));
        let mut sp = orders_redis();
        sp.metadata.namespace = None;
        assert!(matches!(
            desired(&sp, &OperatorSettings::default()),
            Err(Error::MissingObjectKey("metadata.namespace"))
        ));
    }

    #[test]
    fn exposure_adds_an_ingress_with_exact_paths_and_a_pdb_for_replicas() {
        let d = render(&with_everything());
        let Some(Child::Ingress(ing)) = d.objects.iter().find(|o| o.kind().kind == "Ingress")
        else {
            panic!("no Ingress")
        };
        let s = ing.spec.as_ref().unwrap();
        assert_eq!(s.ingress_class_name.as_deref(), Some("nginx"));
        assert_eq!(
            s.tls.as_ref().unwrap()[0].secret_name.as_deref(),
            Some("enrich-tls")
        );
        let rule = &s.rules.as_ref().unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("enrich.example.com"));
        let paths = &rule.http.as_ref().unwrap().paths;
        assert_eq!(paths.len(), 1);
        assert_eq!(
            (paths[0].path.as_deref(), paths[0].path_type.as_str()),
            (Some("/v1/enrich"), "Exact")
        );
        assert!(d.contains("PodDisruptionBudget", "enrich-web"));
        let Some(Child::Service(svc)) = d.objects.iter().find(|o| o.name() == "enrich") else {
            panic!()
        };
        assert_eq!(
            svc.spec.as_ref().unwrap().type_.as_deref(),
            Some("LoadBalancer")
        );
        // A single ingress replica gets no PDB (it would block every drain).
        assert!(!render(&orders_redis()).contains("PodDisruptionBudget", "orders-redis-web"));
    }

    #[test]
    fn custom_images_and_placement_come_from_the_group() {
        let d = render(&with_everything());
        let pod = deployment(&d, "enrich-io")
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("example.com/custom-worker:1")
        );
        assert_eq!(pod.node_selector.unwrap()["pool"], "io");
        assert_eq!(pod.containers[1].name, "py");
        assert_eq!(
            pod.containers[1]
                .security_context
                .as_ref()
                .unwrap()
                .run_as_user,
            Some(1000)
        );
        let cpu = deployment(&d, "enrich-cpu")
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        assert_eq!(
            cpu.containers[0].image,
            Some(OperatorSettings::default().images.worker)
        );
    }

    #[test]
    fn user_key_secrets_are_mounted_and_the_generated_one_is_obsolete() {
        let mut sp = orders_redis();
        sp.spec.security =
            sluice_crds::yaml::from_str("{keys: secretRef, secretName: my-keys}").unwrap();
        let d = render(&sp);
        assert_eq!(
            d.generated_secrets,
            [GeneratedSecret::RedisPassword("orders-redis-redis".into())]
        );
        assert_eq!(d.obsolete_secrets, ["orders-redis-ipc-keys"]);
        let pod = deployment(&d, "orders-redis-io")
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        let keys = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "keys")
            .unwrap();
        assert_eq!(keys.secret.unwrap().secret_name.as_deref(), Some("my-keys"));
    }

    #[test]
    fn owned_kinds_cover_every_object_and_no_secret() {
        let covered: Vec<_> = owned_kinds().iter().map(|k| k.kind).collect();
        for sp in examples() {
            for o in &render(&sp).objects {
                assert!(covered.contains(&o.kind().kind), "{}", o.kind().kind);
            }
        }
        assert!(!covered.contains(&"Secret"));
        let deploy = owned_kinds()
            .iter()
            .find(|k| k.kind == "Deployment")
            .unwrap();
        assert_eq!(
            (deploy.group, deploy.plural, deploy.api_version),
            ("apps", "deployments", "apps/v1")
        );
    }

    #[test]
    fn the_initial_key_secret_is_a_ring_the_runtime_loads() {
        let sp = orders_redis();
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; KEY_LEN]);
        let t = crate::clock::time_of(Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap());
        let s = initial_key_secret(&sp, "k1", &key, &t).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("orders-redis-ipc-keys"));
        let ann = s.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[labels::ROTATION_PHASE], "stable");
        assert_eq!(ann[labels::ROTATION_UPDATED], "2025-01-02T03:04:05Z");
        assert_eq!(s.metadata.owner_references.as_ref().unwrap()[0].uid, UID);
        // Materialise it as the kubelet would and load it with the runtime's loader.
        let dir = tempfile::tempdir().unwrap();
        for (k, v) in s.data.unwrap() {
            std::fs::write(dir.path().join(k), v.0).unwrap();
        }
        let ring = sluice_platform::KeyRing::load(dir.path()).unwrap();
        assert_eq!(ring.current(), "k1");
    }

    #[test]
    fn bad_key_material_is_refused_without_echoing_it() {
        let sp = orders_redis();
        let t = crate::clock::time_of(Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap());
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let e = initial_key_secret(&sp, "k1", &short, &t)
            .unwrap_err()
            .to_string();
        assert!(!e.contains(&short));
        let good = base64::engine::general_purpose::STANDARD.encode([7u8; KEY_LEN]);
        assert!(initial_key_secret(&sp, "current", &good, &t).is_err());
        assert!(initial_key_secret(&sp, "a/b", &good, &t).is_err());
        assert!(initial_key_secret(&sp, "k1", "not base64!", &t).is_err());
    }

    // === trace export ===

    const TRACING_VARS: [&str; 4] = [
        ENV_POD_NAME,
        ENV_OTEL_EXPORTER_OTLP_ENDPOINT,
        ENV_OTEL_EXPORTER_OTLP_PROTOCOL,
        ENV_OTEL_RESOURCE_ATTRIBUTES,
    ];

    fn tracing_on() -> OperatorSettings {
        OperatorSettings {
            tracing: Some(RuntimeTracing {
                endpoint: "http://otel-collector.observability:4318".into(),
                protocol: crate::settings::OtlpProtocol::HttpJson,
            }),
            ..OperatorSettings::default()
        }
    }

    fn tracing_vars(c: &Container) -> Vec<&EnvVar> {
        c.env
            .iter()
            .flatten()
            .filter(|e| TRACING_VARS.contains(&e.name.as_str()) || e.name.starts_with("OTEL_"))
            .collect()
    }

    #[test]
    fn with_an_otlp_endpoint_every_runtime_container_exports_traces_named_by_its_pod() {
        let d = desired(&with_everything(), &tracing_on()).unwrap();
        for (name, group, main) in [
            ("enrich-web", "web", "ingress"),
            ("enrich-cpu", "cpu", "worker"),
            ("enrich-io", "io", "worker"),
        ] {
            let pod = deployment(&d, name)
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap();
            let c = &pod.containers[0];
            assert_eq!(c.name, main);
            let vars = tracing_vars(c);
            let names: Vec<&str> = vars.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(names, TRACING_VARS, "{name}: declared in this order");
            let pod_name = vars[0].value_from.as_ref().unwrap().field_ref.as_ref();
            assert_eq!(pod_name.unwrap().field_path, "metadata.name", "{name}");
            let values: Vec<Option<&str>> = vars[1..].iter().map(|e| e.value.as_deref()).collect();
            let attributes = format!(
                "k8s.namespace.name=demo,k8s.pod.name=$(SLUICE_POD_NAME),\
                 sluice.pipeline=enrich,sluice.group={group}"
            );
            assert_eq!(
                values,
                [
                    Some("http://otel-collector.observability:4318"),
                    Some("http/json"),
                    Some(attributes.as_str()),
                ],
                "{name}"
            );
            for sidecar in &pod.containers[1..] {
                assert!(tracing_vars(sidecar).is_empty(), "sidecar {}", sidecar.name);
            }
        }
        // Managed Redis (the other pod template here) is not traced.
        let runtime_containers = templates(&d)
            .iter()
            .flat_map(|t| &t.spec.as_ref().unwrap().containers)
            .filter(|c| !tracing_vars(c).is_empty())
            .count();
        assert_eq!(runtime_containers, 3);
    }

    #[test]
    fn with_memory_backends_the_ingress_pods_are_traced_as_the_ingress_group() {
        let d = desired(
            &parse(include_str!("../../examples/hello.yaml")),
            &tracing_on(),
        )
        .unwrap();
        let traced: Vec<&str> = templates(&d)
            .iter()
            .flat_map(|t| &t.spec.as_ref().unwrap().containers)
            .flat_map(tracing_vars)
            .filter(|e| e.name == ENV_OTEL_RESOURCE_ATTRIBUTES)
            .filter_map(|e| e.value.as_deref())
            .collect();
        assert_eq!(traced.len(), 1, "{traced:?}");
        assert!(
            traced[0].starts_with("k8s.namespace.name=demo,"),
            "{}",
            traced[0]
        );
        assert!(
            traced[0].ends_with(",sluice.pipeline=hello,sluice.group=web"),
            "{}",
            traced[0]
        );
    }

    #[test]
    fn without_an_otlp_endpoint_no_container_carries_a_tracing_variable() {
        for sp in examples() {
            for t in templates(&render(&sp)) {
                for c in &t.spec.as_ref().unwrap().containers {
                    assert!(tracing_vars(c).is_empty(), "{}", c.name);
                }
            }
        }
    }

    #[test]
    fn turning_tracing_on_changes_nothing_but_the_runtime_containers_tracing_variables() {
        for sp in examples() {
            let off = render(&sp);
            let mut on = desired(&sp, &tracing_on()).unwrap();
            for o in &mut on.objects {
                if let Child::Deployment(dep) = o {
                    let pod = dep.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
                    let env = pod.containers[0].env.as_mut().unwrap();
                    env.retain(|e| !TRACING_VARS.contains(&e.name.as_str()));
                }
            }
            assert_eq!(on.config_hash, off.config_hash);
            assert_eq!(on.to_yaml().unwrap(), off.to_yaml().unwrap());
        }
    }
}
