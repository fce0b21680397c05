//! Redis for a pipeline with redis backends: the managed StatefulSet and
//! what surrounds it, or the user's external Redis; and how runtime pods
//! get the URL either way.
//!
//! ```text
//! managed:  Secret P-redis {password, redis.conf}   (created if absent: random password)
//!           StatefulSet P-redis ── redis-server /etc/redis/redis.conf, PVC `data` (aof) or emptyDir (none)
//!           Service P-redis-headless (governing) + Service P-redis :6379 (clients)
//!           NetworkPolicy P-redis: only the pipeline's pods and the operator
//!           runtime pods: REDIS_PASSWORD from the Secret,
//!                         SLUICE_REDIS_URL=redis://:$(REDIS_PASSWORD)@P-redis.<ns>.svc:6379/0
//! external: nothing created; SLUICE_REDIS_URL from spec.redis.urlSecretRef;
//!           with spec.redis.caSecretRef that key mounted as /etc/sluice/redis-ca/ca.crt,
//!           SLUICE_REDIS_CA_FILE pointing at it
//! ```
//!
//! The password reaches Redis through the config file in the Secret, never
//! the command line (DESIGN §4); the probes authenticate with
//! `REDISCLI_AUTH`, so it is not in any process's arguments either.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, KeyToPath, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Secret, SecretVolumeSource, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use serde::Serialize;
use sluice_crds::{
    AutoscaleEngine, BackendKind, FieldError, Persistence, RedisMode, SecretKeyRef, StreamPipeline,
    StreamPipelineSpec,
};

use crate::hash;
use crate::labels::{self, Component};
use crate::names;
use crate::pod;
use crate::resources::{owner_of, Child, Ctx, Error, Result, ENV_REDIS_CA_FILE, ENV_REDIS_URL};
use crate::settings::{OperatorSettings, KEDA_OPERATOR_POD_LABELS};

/// Port of managed Redis (container, Services, NetworkPolicy).
pub const REDIS_PORT: i32 = 6379;
/// Key of the password in the `P-redis` Secret.
pub const PASSWORD_KEY: &str = "password";
/// Key of the config file in the `P-redis` Secret.
pub const CONFIG_KEY: &str = "redis.conf";
/// Where the `P-redis` Secret is mounted in the Redis container.
pub const CONFIG_DIR: &str = "/etc/redis";
/// Redis's data directory (the PVC or emptyDir `data`).
pub const DATA_DIR: &str = "/data";
/// Runtime pods: the managed Redis password, expanded into [`ENV_REDIS_URL`].
pub const ENV_REDIS_PASSWORD: &str = "REDIS_PASSWORD";
/// Runtime pods of external Redis with `caSecretRef`: the volume holding the
/// CA, the directory it is mounted at and the file name of the CA in it.
pub const VOLUME_REDIS_CA: &str = "redis-ca";
pub const REDIS_CA_DIR: &str = "/etc/sluice/redis-ca";
pub const REDIS_CA_FILE: &str = "ca.crt";
/// PVC size when `spec.redis.storage` is unset.
pub const DEFAULT_STORAGE: &str = "1Gi";
/// Requests of the Redis container.
const CPU_REQUEST: &str = "100m";
const MEMORY_REQUEST: &str = "256Mi";

/// Shortest and longest password [`initial_redis_secret`] accepts.
const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 16..=256;

/// Which Redis the runtime pods of a pipeline use.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisUse<'a> {
    /// Memory backends: no Redis at all.
    None,
    /// The operator runs it.
    Managed(ManagedRedis),
    /// The user's: the URL is in the Secret key `url`, and the PEM CA its
    /// certificate chains to in `ca` when that is not a public CA.
    External {
        url: &'a SecretKeyRef,
        ca: Option<&'a SecretKeyRef>,
    },
}

/// Managed Redis settings with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedRedis {
    pub persistence: Persistence,
    /// PVC size (used with `persistence: aof`).
    pub storage: String,
    pub image: String,
}

/// The Redis a spec asks for. With redis backends and no `spec.redis`, Redis
/// is managed with the defaults.
///
/// # Errors
/// `mode: external` without `urlSecretRef` (validation refuses that first).
pub fn redis_use<'a>(
    spec: &'a StreamPipelineSpec,
    settings: &OperatorSettings,
) -> Result<RedisUse<'a>, FieldError> {
    if spec.backends.queue != BackendKind::Redis {
        return Ok(RedisUse::None);
    }
    let Some(r) = spec.redis.as_ref() else {
        return Ok(RedisUse::Managed(ManagedRedis {
            persistence: Persistence::default(),
            storage: DEFAULT_STORAGE.to_string(),
            image: settings.images.redis.clone(),
        }));
    };
    match (r.mode, &r.url_secret_ref) {
        (RedisMode::External, Some(url)) => Ok(RedisUse::External {
            url,
            ca: r.ca_secret_ref.as_ref(),
        }),
        (RedisMode::External, None) => Err(FieldError {
            path: "spec.redis.urlSecretRef".into(),
            message: "external Redis needs urlSecretRef".into(),
        }),
        (RedisMode::Managed, _) => Ok(RedisUse::Managed(ManagedRedis {
            persistence: r.persistence,
            storage: r
                .storage
                .clone()
                .unwrap_or_else(|| DEFAULT_STORAGE.to_string()),
            image: r
                .image
                .clone()
                .unwrap_or_else(|| settings.images.redis.clone()),
        })),
    }
}

/// `host:port` of a pipeline's managed Redis client Service.
pub fn managed_address(pipeline: &str, namespace: &str) -> String {
    format!("{}.{namespace}.svc:{REDIS_PORT}", names::redis(pipeline))
}

/// The environment runtime containers need to reach their Redis. Order
/// matters: Kubernetes expands `$(REDIS_PASSWORD)` only from variables
/// defined earlier in the list.
pub(crate) fn runtime_env(ctx: &Ctx<'_>, redis: &RedisUse<'_>) -> Vec<EnvVar> {
    match redis {
        RedisUse::None => vec![],
        RedisUse::External { url, ca } => {
            let mut env = vec![pod::env_from_secret(ENV_REDIS_URL, &url.name, &url.key)];
            if ca.is_some() {
                env.push(pod::env(ENV_REDIS_CA_FILE, ca_path()));
            }
            env
        }
        RedisUse::Managed(_) => vec![
            pod::env_from_secret(ENV_REDIS_PASSWORD, &names::redis(&ctx.name), PASSWORD_KEY),
            pod::env(
                ENV_REDIS_URL,
                format!(
                    "redis://:$({ENV_REDIS_PASSWORD})@{}/0",
                    managed_address(&ctx.name, &ctx.namespace)
                ),
            ),
        ],
    }
}

/// Where a runtime container finds the CA of external Redis.
pub fn ca_path() -> String {
    format!("{REDIS_CA_DIR}/{REDIS_CA_FILE}")
}

/// The volume and the runtime container's mount of the CA of external
/// Redis, when the spec names one: only the referenced key, as
/// [`REDIS_CA_FILE`], in a directory of its own (never `subPath`, see
/// [`crate::pod`]). The runtime reads it once at start; changing the
/// Secret's name or key changes the pod template and so rolls the pods.
pub(crate) fn ca_mount(redis: &RedisUse<'_>) -> Option<(Volume, VolumeMount)> {
    let RedisUse::External { ca: Some(ca), .. } = redis else {
        return None;
    };
    let volume = Volume {
        name: VOLUME_REDIS_CA.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(ca.name.clone()),
            items: Some(vec![KeyToPath {
                key: ca.key.clone(),
                path: REDIS_CA_FILE.into(),
                mode: None,
            }]),
            // As the key ring's: the kubelet's default 0644; a CA is no secret.
            default_mode: None,
            ..Default::default()
        }),
        ..Default::default()
    };
    Some((volume, pod::mount(VOLUME_REDIS_CA, REDIS_CA_DIR, true)))
}

/// The config file of managed Redis.
///
/// `noeviction` because eviction would silently drop nonces and reply
/// streams (DESIGN §4); it only acts once a `maxmemory` is set, and makes
/// writes fail loudly then. `protected-mode no` and `bind * -::*` because
/// clients come over the pod network; access is guarded by the password and
/// the NetworkPolicy.
pub fn redis_conf(persistence: Persistence, password: &str) -> String {
    let persistence = match persistence {
        Persistence::Aof => "appendonly yes\n",
        // No AOF and no RDB snapshots: nothing is written to disk.
        Persistence::None => "appendonly no\nsave \"\"\n",
    };
    format!(
        "# Managed Redis of a sluice pipeline, rendered by sluice-operator.\n\
         bind * -::*\n\
         port {REDIS_PORT}\n\
         protected-mode no\n\
         requirepass {password}\n\
         dir {DATA_DIR}\n\
         maxmemory-policy noeviction\n\
         {persistence}\
         appendfsync everysec\n"
    )
}

/// The `P-redis` Secret: `password` and the `redis.conf` that carries it.
///
/// The password is random, so the reconciler creates this Secret only when
/// it is absent, from fresh material it passes in. When the persistence
/// setting changes later, the reconciler re-renders it with the stored
/// password and updates it if different; the StatefulSet's config hash
/// changes with the persistence too, so Redis restarts on the new file.
///
/// # Errors
/// Missing name, namespace or uid; a password shorter than 16 or longer
/// than 256 characters, or with characters other than `A-Z a-z 0-9 - . _ ~`
/// (it is spliced into a URL and into the config file). The error never
/// contains the password.
pub fn initial_redis_secret(sp: &StreamPipeline, password: &str) -> Result<Secret> {
    let owner = owner_of(sp)?;
    let url_safe = password
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'));
    if !url_safe || !PASSWORD_LEN.contains(&password.len()) {
        return Err(Error::InvalidInput {
            what: "Redis password",
            reason: format!(
                "must be {} to {} characters of A-Z a-z 0-9 - . _ ~",
                PASSWORD_LEN.start(),
                PASSWORD_LEN.end()
            ),
        });
    }
    let persistence = sp
        .spec
        .redis
        .as_ref()
        .map(|r| r.persistence)
        .unwrap_or_default();
    Ok(Secret {
        metadata: owner.meta(names::redis(&owner.name), Component::Redis, None),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                PASSWORD_KEY.to_string(),
                ByteString(password.as_bytes().to_vec()),
            ),
            (
                CONFIG_KEY.to_string(),
                ByteString(redis_conf(persistence, password).into_bytes()),
            ),
        ])),
        ..Default::default()
    })
}

/// Hash of what the Redis pod runs, password excluded: the config file's
/// other settings and the image. Independent of the pipeline's config hash,
/// so a pipeline change never restarts Redis.
fn redis_hash(m: &ManagedRedis) -> Result<String> {
    #[derive(Serialize)]
    struct Input<'a> {
        conf: String,
        image: &'a str,
    }
    hash::digest(&Input {
        conf: redis_conf(m.persistence, "<password>"),
        image: &m.image,
    })
    .map_err(|source| Error::Json {
        what: "managed Redis settings",
        source,
    })
}

/// The objects of managed Redis, in apply order.
pub(crate) fn managed_objects(ctx: &Ctx<'_>, m: &ManagedRedis) -> Result<Vec<Child>> {
    let p = &ctx.name;
    let name = names::redis(p);
    let selector = labels::redis_selector(p);
    let port = || ServicePort {
        name: Some("redis".into()),
        port: REDIS_PORT,
        target_port: Some(IntOrString::String("redis".into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let headless = Service {
        metadata: ctx.meta(names::redis_headless(p), Component::Redis, None),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector.clone()),
            ports: Some(vec![port()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let client = Service {
        metadata: ctx.meta(name.clone(), Component::Redis, None),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector.clone()),
            ports: Some(vec![port()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(vec![
        Child::Service(headless),
        Child::Service(client),
        Child::NetworkPolicy(network_policy(ctx)),
        Child::StatefulSet(stateful_set(ctx, m)?),
    ])
}

fn stateful_set(ctx: &Ctx<'_>, m: &ManagedRedis) -> Result<StatefulSet> {
    let p = &ctx.name;
    let name = names::redis(p);
    // Includes the selector's labels (pipeline and component).
    let pod_labels = labels::labels(p, Component::Redis, None);
    let mut volumes = vec![
        // 0440 with fsGroup: readable by Redis only, not world-readable.
        pod::secret_volume("config", &name, Some(0o440)),
        pod::tmp_volume(),
    ];
    let claims = match m.persistence {
        Persistence::Aof => Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                labels: Some(labels::labels(p, Component::Redis, None)),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(m.storage.clone()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        Persistence::None => {
            volumes.push(Volume {
                name: "data".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            });
            None
        }
    };
    let container = Container {
        name: "redis".into(),
        image: Some(m.image.clone()),
        image_pull_policy: ctx.settings.images.pull_policy.clone(),
        command: Some(vec![
            "redis-server".into(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("redis".into()),
            container_port: REDIS_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // redis-cli reads the password from REDISCLI_AUTH: not in argv.
        env: Some(vec![pod::env_from_secret(
            "REDISCLI_AUTH",
            &name,
            PASSWORD_KEY,
        )]),
        // Ready only when Redis answers PONG (not while it loads the AOF);
        // alive as long as it accepts connections, so a long AOF load is
        // never killed half-way.
        readiness_probe: Some(pod::readiness_exec(vec![
            "sh".into(),
            "-c".into(),
            format!("test \"$(redis-cli -p {REDIS_PORT} ping)\" = PONG"),
        ])),
        liveness_probe: Some(pod::liveness_tcp("redis")),
        resources: Some(pod::requests(CPU_REQUEST, MEMORY_REQUEST)),
        security_context: Some(pod::restricted_container()),
        volume_mounts: Some(vec![
            pod::mount("config", CONFIG_DIR, true),
            pod::mount("data", DATA_DIR, false),
            pod::tmp_mount(),
        ]),
        ..Default::default()
    };
    Ok(StatefulSet {
        metadata: ctx.meta(name, Component::Redis, None),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(names::redis_headless(p)),
            selector: LabelSelector {
                match_labels: Some(labels::redis_selector(p)),
                ..Default::default()
            },
            // Queued work lives on this volume: it outlives the StatefulSet
            // (replaced when storage grows) and the pipeline itself, as
            // CloudNativePG and Strimzi keep theirs. Deleting it is the
            // user's call (docs/operator.md, "Redis storage").
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            volume_claim_templates: claims,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([
                        (labels::CONFIG_HASH.to_string(), redis_hash(m)?),
                        (labels::DEFAULT_CONTAINER.to_string(), "redis".to_string()),
                    ])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod::restricted_pod(pod::REDIS_UID, true)),
                    image_pull_secrets: ctx.pull_secrets(),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Pods labelled `labels` in namespace `namespace`.
fn pods_in(namespace: &str, labels: BTreeMap<String, String>) -> NetworkPolicyPeer {
    let select = |labels| LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    };
    NetworkPolicyPeer {
        namespace_selector: Some(select(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            namespace.to_string(),
        )]))),
        pod_selector: Some(select(labels)),
        ..Default::default()
    }
}

/// Only the pipeline's own pods and the operator's may reach its Redis, and
/// KEDA's operator when a group scales with KEDA.
fn network_policy(ctx: &Ctx<'_>) -> NetworkPolicy {
    let s = ctx.settings;
    let pipeline_pods = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                labels::PIPELINE.to_string(),
                ctx.name.clone(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut from = vec![
        pipeline_pods,
        pods_in(&s.operator_namespace, s.operator_pod_labels.clone()),
    ];
    if !crate::autoscale::groups_with(ctx.spec, AutoscaleEngine::Keda).is_empty() {
        let keda = KEDA_OPERATOR_POD_LABELS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from.push(pods_in(&s.keda_namespace, keda));
    }
    NetworkPolicy {
        metadata: ctx.meta(names::redis(&ctx.name), Component::Redis, None),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels::redis_selector(&ctx.name)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(vec![NetworkPolicyPort {
                    protocol: Some("TCP".into()),
                    port: Some(IntOrString::Int(REDIS_PORT)),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_carries_password_persistence_and_noeviction() {
        let aof = redis_conf(Persistence::Aof, "s3cret-password-x");
        for line in [
            "requirepass s3cret-password-x",
            "appendonly yes",
            "appendfsync everysec",
            "maxmemory-policy noeviction",
            "dir /data",
            "protected-mode no",
            "bind * -::*",
        ] {
            assert!(aof.lines().any(|l| l == line), "missing `{line}` in\n{aof}");
        }
        let none = redis_conf(Persistence::None, "s3cret-password-x");
        assert!(none.lines().any(|l| l == "appendonly no"));
        assert!(none.lines().any(|l| l == "save \"\""));
    }

    #[test]
    fn passwords_that_could_break_the_url_or_the_file_are_refused() {
        let mut sp = StreamPipeline::new(
            "p",
            sluice_crds::yaml::from_str(
                "{interfaces: [], groups: [], nodes: [], backends: {queue: redis, kv: redis, reply: redis}}",
            )
            .unwrap(),
        );
        sp.metadata.namespace = Some("ns".into());
        sp.metadata.uid = Some("u".into());
        for bad in [
            "short",
            "has space in it xxxxxxxx",
            "new\nline-requirepass-x",
            "at@sign-xxxxxxxxxxxx",
        ] {
            let e = initial_redis_secret(&sp, bad).unwrap_err().to_string();
            assert!(!e.contains(bad), "error must not echo the password: {e}");
        }
        let s = initial_redis_secret(&sp, "0123456789abcdef0123").unwrap();
        let data = s.data.unwrap();
        assert_eq!(data[PASSWORD_KEY].0, b"0123456789abcdef0123");
        let conf = String::from_utf8(data[CONFIG_KEY].0.clone()).unwrap();
        assert!(conf.contains("requirepass 0123456789abcdef0123\n"));
        assert!(conf.contains("appendonly yes\n"), "aof is the default");
    }
}
