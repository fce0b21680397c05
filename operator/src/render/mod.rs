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
//!                                        initial_key_secret / redis_secret)
//!                   ─ obsolete_secrets   owned Secrets to delete by name
//!                   ─ referenced_secrets Secrets nodes and sidecars name: the
//!                                        reconciler applies nothing while one
//!                                        lacks the opt-in label
//! ```
//!
//! For pipeline `P` in namespace `ns`:
//!
//! - ConfigMap `P-pipeline` (`pipeline.yaml`, the normalised manifest every
//!   runtime pod reads with `--pipeline`);
//! - managed Redis (see [`redis`]);
//! - the ingress group: Deployment `P-<group>`, Service `P`, Ingress `P` when
//!   `expose.ingress` is set, PodDisruptionBudget `P-<group>` when replicas > 1;
//! - with redis backends, each worker group: Deployment `P-<group>` (no
//!   `replicas` when it autoscales) and, with `autoscale.engine: hpa`, a
//!   HorizontalPodAutoscaler `P-<group>`. With memory backends the ingress
//!   pods run every group inline and there are no worker Deployments; with
//!   tcp backends each worker group is a container of the ingress pods
//!   ([`tcp_pod`]), and there are no worker Deployments either.
//!
//! The key ring Secret `P-ipc-keys` is never in the apply set: its content is
//! random and rotated, and no pod mounts it; each group's pods mount the keys
//! derived from it for them, `P-ipc-keys-<group>` (a directory, never `subPath`).
//!
//! # Layout
//! One module per object family, assembled here by [`desired`] in apply order:
//! - [`pipeline_file`]: the ConfigMap `P-pipeline`.
//! - [`redis`]: managed Redis (StatefulSet, Services, password Secret,
//!   config file) and how runtime pods reach either Redis.
//! - [`services`]: the ingress Service and Ingress.
//! - [`pods`]: the group Deployments and their runtime containers.
//! - [`tcp_pod`]: the one Deployment of a tcp pipeline, a container per group.
//! - [`policy`]: the ingress PodDisruptionBudget and the NetworkPolicy of
//!   managed Redis.
//! - [`autoscale`]: HorizontalPodAutoscalers, KEDA ScaledObjects and the
//!   TriggerAuthentication.
//! - [`key_ring`]: the key ring Secret of a new pipeline (created, never
//!   applied) and each group's derived keys Secret.
//! - [`redis_acl`]: the ACL users of managed Redis, one per role.
//!
//! What the families share:
//! - [`context`]: the pipeline as owner, and what every builder reads.
//! - [`child`]: one object to apply and the kinds it can be.
//! - [`redis_use`]: which Redis the pods use; managed Redis's address.
//! - [`pod_spec`]: probes, resources, env and directory mounts.
//! - [`restricted`]: Pod Security "restricted": the operator's security
//!   contexts, and what a sidecar may ask for.
//! - [`sidecars`]: the checks and hardening of user sidecars.
//! - [`secret_refs`]: the Secrets nodes and sidecars name, and the
//!   pipeline's own Secrets, which they may not.
//! - [`contract`]: the runtime's variables, flags and ports.
//! - [`error`]: why no objects could be computed.

pub mod autoscale;
pub mod child;
pub mod context;
pub mod contract;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod key_ring;
pub mod pipeline_file;
pub mod pod_spec;
pub mod pods;
pub mod policy;
pub mod redis;
pub mod redis_acl;
pub mod redis_secret;
pub mod redis_use;
pub mod restricted;
pub mod secret_refs;
pub mod services;
pub mod sidecars;
pub mod tcp_pod;

use std::collections::BTreeMap;

use serde::Serialize;
use sluice_crds::{
    compile, BackendKind, FieldError, GroupRole, KeyNeeds, KeysSource, PipelineId, Plan,
    StreamPipeline,
};

pub use autoscale::DEFAULT_TARGET_CPU;
pub use child::{owned_kinds, Child, OwnedKind};
pub use contract::{
    main_container, ADMIN_PORT, ENV_DRAIN_GRACE, ENV_DRAIN_TIMEOUT, ENV_INGRESS_ID, ENV_LOG_FORMAT,
    ENV_OTEL_EXPORTER_OTLP_ENDPOINT, ENV_OTEL_EXPORTER_OTLP_PROTOCOL, ENV_OTEL_RESOURCE_ATTRIBUTES,
    ENV_POD_NAME, ENV_REDIS_CA_FILE, ENV_REDIS_URL, HUB_PORT, INGRESS_PORT, KEY_LEN,
    KEY_RING_CURRENT, SERVICE_PORT,
};
pub use error::{Error, Result};
pub use key_ring::initial_key_secret;
pub use pipeline_file::pipeline_manifest;
pub use redis::redis_secret;
pub use secret_refs::SecretReference;

use crate::hash;
use crate::names;
use crate::settings::OperatorSettings;
use autoscale::{hpa, keda_objects};
use context::{owner_of, Ctx};
use pipeline_file::pipeline_config_map;
use pods::{deployment, ingress_container, worker_container};
use policy::pdb;
use redis_use::RedisUse;
use secret_refs::{OwnSecrets, SecretRefUse};
use services::{ingress_resource, ingress_service};

// === the desired objects ===

/// A Secret the pods mount whose content is random: the reconciler creates
/// it when absent (never applies it) from fresh material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeneratedSecret {
    /// Build with [`initial_key_secret`]; afterwards only rotation changes it.
    KeyRing(String),
    /// Build with [`redis_secret`].
    RedisPassword(String),
    /// The keys of one group's pods, derived from the key ring
    /// (`sluice_platform::keyring::derived_files`) whenever it changes;
    /// listed after [`GeneratedSecret::KeyRing`].
    RoleKeys { name: String, needs: KeyNeeds },
}

impl GeneratedSecret {
    pub fn name(&self) -> &str {
        match self {
            GeneratedSecret::KeyRing(n)
            | GeneratedSecret::RedisPassword(n)
            | GeneratedSecret::RoleKeys { name: n, .. } => n,
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
    /// Every Secret a node or a sidecar names, in spec order (one entry per
    /// place it is named). The reconciler reads each by name and applies
    /// nothing while one is absent or lacks the label
    /// [`crate::labels::ALLOW_REFERENCE`]; see [`crate::referenced`].
    pub referenced_secrets: Vec<SecretReference>,
}

impl Desired {
    /// Sets annotation `key` to `value` on the pod template of every
    /// runtime Deployment (web and worker groups): a new value rolls them.
    pub fn annotate_runtime_pods(&mut self, key: &str, value: &str) {
        for o in &mut self.objects {
            let Child::Deployment(d) = o else { continue };
            let Some(spec) = d.spec.as_mut() else {
                continue;
            };
            annotate(&mut spec.template, key, value);
        }
    }

    /// Sets annotation `key` to `value` on the pod template of every
    /// runtime Deployment and of managed Redis's StatefulSet.
    pub fn annotate_redis_and_runtime_pods(&mut self, key: &str, value: &str) {
        self.annotate_runtime_pods(key, value);
        for o in &mut self.objects {
            let Child::StatefulSet(s) = o else { continue };
            if let Some(spec) = s.spec.as_mut() {
                annotate(&mut spec.template, key, value);
            }
        }
    }
}

fn annotate(template: &mut k8s_openapi::api::core::v1::PodTemplateSpec, key: &str, value: &str) {
    template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.to_string(), value.to_string());
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
/// object names from, sidecar conflicts, sidecars asking beyond Pod Security
/// "restricted", malformed `secretRef`s, nodes or sidecars naming the
/// pipeline's own Secrets).
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
    let redis = match redis_use::redis_use(spec, settings) {
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
    // `caSecretRef`'s name and key are checked by compile() (a Secret volume
    // the API server would refuse is refused with the field the user wrote).
    let named = errors.iter().any(|e| e.path == "metadata.name");
    if let (false, Err(message)) = (named, names::check_pipeline_name(&owner.name, managed)) {
        errors.push(FieldError {
            path: "metadata.name".into(),
            message,
        });
    }
    // What nodes and sidecars name: never the pipeline's own Secrets, and
    // every other one only with its owner's opt-in (checked at reconcile).
    let own = OwnSecrets::of(&owner.name, spec);
    let mut referenced_secrets = Vec::new();
    // compile() refuses mixed backends; the queue's decides the pods.
    let tcp = spec.backends.queue == BackendKind::Tcp;
    for (i, g) in spec.groups.iter().enumerate() {
        let sidecars = g.sidecars.as_deref().unwrap_or_default();
        let main = if tcp {
            tcp_pod::container_name(g)
        } else {
            main_container(g.role).to_string()
        };
        sidecars::check(i, &main, sidecars, &own, &mut errors);
        referenced_secrets.extend(sidecars::secret_references(i, sidecars));
    }
    if tcp {
        // Every group's sidecars share the one pod.
        tcp_pod::check(spec, &mut errors);
    }
    // Node Secrets by the group whose processes run the node.
    let mut node_secrets: BTreeMap<&str, Vec<SecretRefUse>> = BTreeMap::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        if let Some(with) = &n.with {
            let found = node_secrets.entry(n.group.as_str()).or_default();
            let before = found.len();
            let path = format!("spec.nodes[{i}].with");
            secret_refs::find_secret_refs(with, &path, found, &mut errors);
            let node_refs: Vec<_> = found[before..].iter().map(SecretReference::from).collect();
            own.refuse(&node_refs, &mut errors);
            referenced_secrets.extend(node_refs);
        }
    }
    // Interfaces' bearer tokens are read by the ingress processes, under
    // the same rules as node Secrets.
    let mut auth_secrets = Vec::new();
    for (i, it) in spec.interfaces.iter().enumerate() {
        if let Some(b) = it.auth.as_ref().and_then(|a| a.bearer.as_ref()) {
            auth_secrets.push(SecretRefUse {
                path: format!("spec.interfaces[{i}].auth.bearer.secretRef"),
                name: b.secret_ref.name.clone(),
                key: b.secret_ref.key.clone(),
            });
        }
    }
    // The ingress pods' own TLS pair, likewise.
    if let Some(secret) = spec.expose.as_ref().and_then(|e| e.tls_secret.as_ref()) {
        for key in [pods::TLS_CERT_KEY, pods::TLS_KEY_KEY] {
            auth_secrets.push(SecretRefUse {
                path: "spec.expose.tlsSecret".into(),
                name: secret.clone(),
                key: key.into(),
            });
        }
    }
    let auth_refs: Vec<_> = auth_secrets.iter().map(SecretReference::from).collect();
    own.refuse(&auth_refs, &mut errors);
    referenced_secrets.extend(auth_refs);
    let plan = match compiled {
        Ok(plan) if errors.is_empty() => plan,
        _ => return Err(Error::InvalidSpec(errors)),
    };

    let config_hash = hash::config_hash(spec, &settings.images).map_err(|source| Error::Json {
        what: "pipeline spec",
        source,
    })?;
    let key_secret = key_ring_secret(spec, &owner.name);
    let ctx = Ctx {
        owner,
        spec,
        settings,
        config_hash: config_hash.clone(),
        redis,
        key_secret,
        role_keys: spec.security.keys == KeysSource::Generated,
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
    let mut ingress_refs: Vec<SecretRefUse> = if inline {
        // Every group runs in the ingress process.
        node_secrets.values().flatten().cloned().collect()
    } else {
        node_secrets
            .get(ingress.name.as_str())
            .cloned()
            .unwrap_or_default()
    };
    ingress_refs.extend(auth_secrets);
    objects.push(Child::Service(ingress_service(&ctx, ingress)));
    let replicas = ingress.replicas.unwrap_or(1);
    objects.push(Child::Deployment(match plan.backend {
        BackendKind::Tcp => {
            tcp_pod::deployment(&ctx, ingress, replicas, &ingress_refs, &node_secrets)
        }
        BackendKind::Memory | BackendKind::Redis => deployment(
            &ctx,
            ingress,
            Some(replicas),
            ingress_container(&ctx, ingress),
            settings.drain.ingress_termination_grace_seconds(),
            &ingress_refs,
        ),
    }));
    if replicas > 1 {
        objects.push(Child::PodDisruptionBudget(pdb(&ctx, ingress)));
    }
    if let Some(i) = ingress_resource(&ctx) {
        objects.push(Child::Ingress(i));
    }

    // Worker groups have pods of their own only with redis backends.
    if plan.backend == BackendKind::Redis {
        for g in spec.groups.iter().filter(|g| g.role == GroupRole::Worker) {
            // An autoscaled Deployment has no replicas field: the autoscaler
            // owns it through /scale under its own field manager.
            let replicas = match g.autoscale {
                Some(_) => None,
                None => Some(g.replicas.unwrap_or(1)),
            };
            let refs = node_secrets
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
        // One per group that runs a process of its own: with memory
        // backends only the ingress, which runs every group and so holds
        // every group's keys. With tcp backends the ingress holds them all
        // too: its hub checks each worker's handshake with that group's keys.
        for g in spec
            .groups
            .iter()
            .filter(|g| !inline || g.role == GroupRole::Ingress)
        {
            let all = g.role == GroupRole::Ingress && plan.backend != BackendKind::Redis;
            let needs = if all {
                plan.key_needs_of_all()
            } else {
                plan.key_needs(&g.name)
            };
            generated_secrets.push(GeneratedSecret::RoleKeys {
                name: names::role_keys(&ctx.name, &g.name),
                needs,
            });
        }
    } else {
        obsolete_secrets.extend(
            spec.groups
                .iter()
                .map(|g| names::role_keys(&ctx.name, &g.name)),
        );
        if ctx.key_secret != own_keys {
            obsolete_secrets.push(own_keys);
        }
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
        referenced_secrets,
    })
}

/// The Secret holding pipeline `name`'s key ring: the user's with `keys:
/// secretRef`, else the one the operator generates.
pub fn key_ring_secret(spec: &sluice_crds::StreamPipelineSpec, name: &str) -> String {
    match (spec.security.keys, &spec.security.secret_name) {
        (KeysSource::SecretRef, Some(user)) => user.clone(),
        _ => names::key_secret(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels;
    use crate::render::fixtures::{
        deployment, examples, external_with_ca, group_mut, kinds, orders_redis, parse, pod_of,
        render, templates, with_everything, UID,
    };

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
    fn memory_backends_run_every_group_in_the_ingress_pods() {
        let d = render(&parse(include_str!("../../../examples/orders.yaml")));
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
        // One pod runs every group: it holds every group's keys.
        assert_eq!(
            d.generated_secrets,
            [
                GeneratedSecret::KeyRing("orders-ipc-keys".into()),
                GeneratedSecret::RoleKeys {
                    name: "orders-ipc-keys-web".into(),
                    needs: d.plan.key_needs_of_all(),
                }
            ]
        );
        assert_eq!(d.obsolete_secrets, ["orders-redis"]);
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
    fn nodes_and_sidecars_may_not_name_the_pipelines_own_secrets() {
        let mut sp = with_everything();
        sp.spec.nodes[1].with = Some(serde_json::json!({
            "url": "http://127.0.0.1:9000",
            "headersFrom": {"X-Keys": {"secretRef": {"name": "enrich-ipc-keys", "key": "current"}}}
        }));
        group_mut(&mut sp, "io").sidecars.as_mut().unwrap()[0] = sluice_crds::yaml::from_str(
            "{name: py, image: x, envFrom: [{secretRef: {name: enrich-redis}}]}",
        )
        .unwrap();
        let e = desired(&sp, &OperatorSettings::default()).unwrap_err();
        let paths: Vec<_> = e.field_errors().iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.groups[2].sidecars[0].envFrom[0].secretRef.name",
                "spec.nodes[1].with.headersFrom.X-Keys.secretRef.name"
            ]
        );
    }

    #[test]
    fn the_secrets_nodes_and_sidecars_name_are_listed_for_the_reconciler() {
        let mut sp = with_everything();
        group_mut(&mut sp, "io").sidecars.as_mut().unwrap()[0] = sluice_crds::yaml::from_str(
            "{name: py, image: x, env: [{name: T, valueFrom: {secretKeyRef: {name: py-config, key: t}}}]}",
        )
        .unwrap();
        let got: Vec<_> = render(&sp)
            .referenced_secrets
            .into_iter()
            .map(|r| (r.name, r.path))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "py-config".to_string(),
                    "spec.groups[2].sidecars[0].env[0].valueFrom.secretKeyRef".to_string()
                ),
                (
                    "enrich-api".to_string(),
                    "spec.nodes[1].with.headersFrom.Authorization.secretRef".to_string()
                ),
            ]
        );
        assert!(render(&orders_redis()).referenced_secrets.is_empty());
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
    fn user_key_secrets_are_mounted_and_the_generated_one_is_obsolete() {
        let mut sp = orders_redis();
        sp.spec.security =
            sluice_crds::yaml::from_str("{keys: secretRef, secretName: my-keys}").unwrap();
        let d = render(&sp);
        assert_eq!(
            d.generated_secrets,
            [GeneratedSecret::RedisPassword("orders-redis-redis".into())]
        );
        assert_eq!(
            d.obsolete_secrets,
            [
                "orders-redis-ipc-keys-web",
                "orders-redis-ipc-keys-cpu",
                "orders-redis-ipc-keys-io",
                "orders-redis-ipc-keys"
            ]
        );
        let pod = pod_of(&d, "orders-redis-io");
        let keys = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "keys")
            .unwrap();
        assert_eq!(keys.secret.unwrap().secret_name.as_deref(), Some("my-keys"));
    }
}
