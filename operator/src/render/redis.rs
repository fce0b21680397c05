//! Redis for a pipeline with redis backends: the managed StatefulSet and
//! what surrounds it, or the user's external Redis; and how runtime pods
//! get the URL either way. Which one a spec asks for is
//! [`super::redis_use`]; the NetworkPolicy is in [`super::policy`].
//!
//! ```text
//! managed:  Secret P-redis (super::redis_secret: passwords, redis.conf, TLS material)
//!           StatefulSet P-redis ── redis-server /etc/redis/redis.conf (+ tls.crt, tls.key, ca.crt),
//!                                  PVC `data` (aof) or emptyDir (none)
//!           Service P-redis-headless (governing) + Service P-redis :6379 (clients, TLS)
//!           NetworkPolicy P-redis: only the pipeline's pods, the operator (and KEDA)
//!           runtime pods: SLUICE_REDIS_URL=rediss://<user>@P-redis.<ns>.svc:6379,
//!                         the role's password as /etc/sluice/redis-auth/password,
//!                         the CA as /etc/sluice/redis-ca/ca.crt
//! external: nothing created; SLUICE_REDIS_URL from spec.redis.urlSecretRef;
//!           with spec.redis.caSecretRef that key mounted as /etc/sluice/redis-ca/ca.crt,
//!           SLUICE_REDIS_CA_FILE pointing at it
//! ```
//!
//! Passwords reach Redis through the config file in the Secret, never the
//! command line (DESIGN §4); runtime pods read theirs from a file, the
//! probes from `REDISCLI_AUTH`, so none is in any process's arguments.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, KeyToPath, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, ResourceRequirements, SecretVolumeSource,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use sluice_crds::Persistence;

use super::child::Child;
use super::context::Ctx;
use super::contract::{ENV_REDIS_CA_FILE, ENV_REDIS_PASSWORD_FILE, ENV_REDIS_URL};
use super::error::{Error, Result};
use super::pod_spec;
use super::policy;
use super::redis_acl;
use super::redis_use::{managed_url, ManagedRedis, RedisUse, REDIS_PORT};
use super::restricted;
use crate::hash;
use crate::labels::{self, Component};
use crate::names;
use crate::redis_tls::{CA_CERT_KEY, CERT_KEY, KEY_KEY};

pub use super::redis_secret::{
    password_acceptable, redis_conf, redis_secret, redis_secret_rotating, CONFIG_DIR, CONFIG_KEY,
    DATA_DIR,
};
/// Runtime pods of managed Redis: their role's password, as a file in a
/// directory of its own (the volume, the directory, the file name).
pub const VOLUME_REDIS_AUTH: &str = "redis-auth";
pub const REDIS_AUTH_DIR: &str = "/etc/sluice/redis-auth";
pub const REDIS_PASSWORD_FILE: &str = "password";
/// Runtime pods of external Redis with `caSecretRef`: the volume holding the
/// CA, the directory it is mounted at and the file name of the CA in it.
pub const VOLUME_REDIS_CA: &str = "redis-ca";
pub const REDIS_CA_DIR: &str = "/etc/sluice/redis-ca";
pub const REDIS_CA_FILE: &str = "ca.crt";
/// Requests of the Redis container.
const CPU_REQUEST: &str = "100m";

/// The environment a runtime container of `role` needs to reach its
/// Redis. With managed Redis the container gets its own role's password
/// and nothing else, as a file ([`auth_mount`]).
pub(crate) fn runtime_env(
    ctx: &Ctx<'_>,
    redis: &RedisUse<'_>,
    role: &redis_acl::Role,
) -> Vec<EnvVar> {
    match redis {
        RedisUse::None => vec![],
        RedisUse::External { url, ca } => {
            let mut env = vec![pod_spec::env_from_secret(
                ENV_REDIS_URL,
                &url.name,
                &url.key,
            )];
            if ca.is_some() {
                env.push(pod_spec::env(ENV_REDIS_CA_FILE, ca_path()));
            }
            env
        }
        RedisUse::Managed(m) => {
            // The password is read from a mounted file (`auth_mount`) at
            // every new connection: a rotated password reaches running
            // pods without a restart, and no environment holds it.
            let mut env = vec![
                pod_spec::env(
                    ENV_REDIS_URL,
                    managed_url(&ctx.name, &ctx.namespace, m.tls, &role.user(), None),
                ),
                pod_spec::env(ENV_REDIS_PASSWORD_FILE, password_path()),
            ];
            if m.tls {
                env.push(pod_spec::env(ENV_REDIS_CA_FILE, ca_path()));
            }
            env
        }
    }
}

/// Where a runtime container of managed Redis finds its password.
pub fn password_path() -> String {
    format!("{REDIS_AUTH_DIR}/{REDIS_PASSWORD_FILE}")
}

/// The volume and the runtime container's mount of its own role's managed
/// Redis password: only that key of `P-redis`, as [`REDIS_PASSWORD_FILE`],
/// mode 0440 (readable through the pod's `fsGroup`), in a directory of its
/// own so the kubelet's swap of a rotated password shows. None for other
/// Redis uses.
pub(crate) fn auth_mount(
    ctx: &Ctx<'_>,
    redis: &RedisUse<'_>,
    role: &redis_acl::Role,
) -> Option<(Volume, VolumeMount)> {
    let RedisUse::Managed(_) = redis else {
        return None;
    };
    let volume = Volume {
        name: VOLUME_REDIS_AUTH.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names::redis(&ctx.name)),
            items: Some(vec![KeyToPath {
                key: role.password_key(),
                path: REDIS_PASSWORD_FILE.into(),
                mode: None,
            }]),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    };
    Some((
        volume,
        pod_spec::mount(VOLUME_REDIS_AUTH, REDIS_AUTH_DIR, true),
    ))
}

/// Where a runtime container finds the CA of its Redis (external with
/// `caSecretRef`, or managed with TLS).
pub fn ca_path() -> String {
    format!("{REDIS_CA_DIR}/{REDIS_CA_FILE}")
}

/// The volume and the runtime container's mount of the CA of its Redis:
/// external Redis's when the spec names one, managed Redis's (`ca.crt` of
/// `P-redis`, and nothing else of that Secret) when it speaks TLS. Only
/// that key, as [`REDIS_CA_FILE`], in a directory of its own (never
/// `subPath`, see [`super::pod_spec`]). The runtime reads it once at
/// start; changing the Secret's name or key changes the pod template and
/// so rolls the pods.
pub(crate) fn ca_mount(ctx: &Ctx<'_>, redis: &RedisUse<'_>) -> Option<(Volume, VolumeMount)> {
    let (secret, key) = match redis {
        RedisUse::External { ca: Some(ca), .. } => (ca.name.clone(), ca.key.clone()),
        RedisUse::Managed(m) if m.tls => (names::redis(&ctx.name), CA_CERT_KEY.to_string()),
        _ => return None,
    };
    let volume = Volume {
        name: VOLUME_REDIS_CA.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            items: Some(vec![KeyToPath {
                key,
                path: REDIS_CA_FILE.into(),
                mode: None,
            }]),
            // As the key ring's: the kubelet's default 0644; a CA is no secret.
            default_mode: None,
            ..Default::default()
        }),
        ..Default::default()
    };
    Some((volume, pod_spec::mount(VOLUME_REDIS_CA, REDIS_CA_DIR, true)))
}

/// Requests and limits of the Redis container: memory is `maxmemory` plus a
/// quarter for client buffers, replication and AOF-rewrite copies, as both
/// request and limit, so Redis refuses writes (`noeviction`) well before the
/// kernel would kill it.
fn redis_resources(max_memory: u64) -> ResourceRequirements {
    let memory = Quantity(binary_size(max_memory.saturating_add(max_memory / 4)));
    let mut r = pod_spec::requests(CPU_REQUEST, "0");
    if let Some(req) = r.requests.as_mut() {
        req.insert("memory".into(), memory.clone());
    }
    r.limits = Some(BTreeMap::from([("memory".to_string(), memory)]));
    r
}

/// `bytes` with the largest binary suffix that divides it (`320Mi`).
fn binary_size(bytes: u64) -> String {
    for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
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
        // Without users: they change live (a new group gets its user from
        // the operator), never by restarting Redis.
        conf: redis_conf(m.persistence, m.max_memory, m.tls, &[]),
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
        Child::NetworkPolicy(policy::network_policy(ctx)),
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
        // Only the config file (which holds hashes, not passwords) and,
        // with TLS, the server's certificate and key and the CA the probe
        // checks them against — not the CA's key.
        pod_spec::secret_items_volume(
            "config",
            &name,
            if m.tls {
                &[CONFIG_KEY, CERT_KEY, KEY_KEY, CA_CERT_KEY]
            } else {
                &[CONFIG_KEY]
            },
            Some(0o440),
        ),
        pod_spec::tmp_volume(),
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
                storage_class_name: m.storage_class.clone(),
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
        // redis-cli reads the probe user's password from REDISCLI_AUTH:
        // not in argv. The probe user may only PING.
        env: Some(vec![pod_spec::env_from_secret(
            "REDISCLI_AUTH",
            &name,
            &redis_acl::Role::Probe.password_key(),
        )]),
        // Ready only when Redis answers PONG (not while it loads the AOF);
        // alive as long as it accepts connections, so a long AOF load is
        // never killed half-way.
        readiness_probe: Some(pod_spec::readiness_exec(vec![
            "sh".into(),
            "-c".into(),
            format!(
                "test \"$(redis-cli {}--user {} -p {REDIS_PORT} ping)\" = PONG",
                if m.tls {
                    format!("--tls --cacert {CONFIG_DIR}/{CA_CERT_KEY} ")
                } else {
                    String::new()
                },
                redis_acl::Role::Probe.user()
            ),
        ])),
        liveness_probe: Some(pod_spec::liveness_tcp("redis")),
        resources: Some(redis_resources(m.max_memory)),
        security_context: Some(restricted::restricted_container()),
        volume_mounts: Some(vec![
            pod_spec::mount("config", CONFIG_DIR, true),
            pod_spec::mount("data", DATA_DIR, false),
            pod_spec::tmp_mount(),
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
            // (replaced when storage grows) and, unless the user opts out
            // with `retainOnDelete: false`, the pipeline itself, as
            // CloudNativePG and Strimzi keep theirs (docs/operator.md,
            // "Redis storage").
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(
                        if m.retain_on_delete {
                            "Retain"
                        } else {
                            "Delete"
                        }
                        .into(),
                    ),
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
                    security_context: Some(restricted::restricted_pod(pod_spec::REDIS_UID, true)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{
        deployment, external_with_ca, kinds, orders_redis, render, templates, with_everything,
    };
    use crate::render::{redis, Desired, GeneratedSecret};
    use sluice_crds::StreamPipeline;

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
        let generated: Vec<&str> = d
            .generated_secrets
            .iter()
            .map(GeneratedSecret::name)
            .collect();
        assert_eq!(
            generated,
            [
                "orders-redis-ipc-keys",
                "orders-redis-ipc-keys-web",
                "orders-redis-ipc-keys-cpu",
                "orders-redis-ipc-keys-io",
                "orders-redis-redis",
            ]
        );
        assert!(matches!(
            d.generated_secrets[0],
            GeneratedSecret::KeyRing(_)
        ));
        assert!(matches!(
            d.generated_secrets[4],
            GeneratedSecret::RedisPassword(_)
        ));
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
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
        let pod = s.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.command.as_deref().unwrap(),
            ["redis-server", "/etc/redis/redis.conf"]
        );
        assert!(c.args.is_none(), "no password on the command line");
        assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(10999));

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
        let url = env.iter().find(|e| e.name == ENV_REDIS_URL).unwrap();
        assert_eq!(
            url.value.as_deref(),
            Some("rediss://group-cpu@orders-redis-redis.demo.svc:6379"),
            "TLS by default, and no password in the URL"
        );
        let ca = env.iter().find(|e| e.name == ENV_REDIS_CA_FILE).unwrap();
        assert_eq!(ca.value.as_deref(), Some("/etc/sluice/redis-ca/ca.crt"));
        let file = env
            .iter()
            .find(|e| e.name == ENV_REDIS_PASSWORD_FILE)
            .unwrap();
        assert_eq!(
            file.value.as_deref(),
            Some("/etc/sluice/redis-auth/password")
        );
        assert!(
            env.iter().all(|e| e.value_from.is_none()
                || e.value_from.as_ref().unwrap().secret_key_ref.is_none()),
            "no Secret in the environment"
        );
        let pod = crate::render::fixtures::pod_of(&d, "orders-redis-cpu");
        let auth = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == VOLUME_REDIS_AUTH)
            .unwrap()
            .secret
            .clone()
            .unwrap();
        let items: Vec<(String, String)> = auth
            .items
            .unwrap()
            .into_iter()
            .map(|i| (i.key, i.path))
            .collect();
        assert_eq!(
            (auth.secret_name.as_deref(), items),
            (
                Some("orders-redis-redis"),
                vec![("group-cpu.password".to_string(), "password".to_string())]
            ),
            "each pod gets its own role's password only"
        );
        assert_eq!(auth.default_mode, Some(0o440));
    }

    /// The Redis StatefulSet's pod and the cpu worker's pod of `sp`.
    fn pods(
        sp: &StreamPipeline,
    ) -> (
        k8s_openapi::api::core::v1::PodSpec,
        k8s_openapi::api::core::v1::PodSpec,
    ) {
        let d = render(sp);
        let Some(Child::StatefulSet(ss)) =
            d.objects.iter().find(|o| o.kind().kind == "StatefulSet")
        else {
            panic!("no StatefulSet")
        };
        let redis = ss.spec.clone().unwrap().template.spec.unwrap();
        (
            redis,
            crate::render::fixtures::pod_of(&d, "orders-redis-cpu"),
        )
    }

    fn items(pod: &k8s_openapi::api::core::v1::PodSpec, volume: &str) -> Vec<String> {
        pod.volumes
            .iter()
            .flatten()
            .filter(|v| v.name == volume)
            .flat_map(|v| v.secret.as_ref().unwrap().items.clone().unwrap())
            .map(|i| i.key)
            .collect()
    }

    #[test]
    fn with_tls_redis_mounts_its_certificate_and_workers_only_the_ca() {
        let (redis, worker) = pods(&orders_redis());
        assert_eq!(
            items(&redis, "config"),
            [CONFIG_KEY, "tls.crt", "tls.key", "ca.crt"]
        );
        assert_eq!(
            items(&worker, VOLUME_REDIS_CA),
            ["ca.crt"],
            "the CA only, never its key"
        );
        let probe = redis.containers[0].readiness_probe.clone().unwrap();
        let cmd = probe.exec.unwrap().command.unwrap().join(" ");
        assert!(cmd.contains("--tls --cacert /etc/redis/ca.crt"), "{cmd}");

        let mut plain = orders_redis();
        plain.spec.redis.get_or_insert_with(Default::default).tls = Some(false);
        let (redis, worker) = pods(&plain);
        assert_eq!(items(&redis, "config"), [CONFIG_KEY]);
        assert!(items(&worker, VOLUME_REDIS_CA).is_empty());
        let env = worker.containers[0].env.clone().unwrap();
        let url = env.iter().find(|e| e.name == ENV_REDIS_URL).unwrap();
        assert!(url
            .value
            .as_deref()
            .unwrap()
            .starts_with("redis://group-cpu@"));
        assert!(!env.iter().any(|e| e.name == ENV_REDIS_CA_FILE));
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
            .all(|s| !matches!(s, GeneratedSecret::RedisPassword(_))));
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
            assert!(env.iter().all(|e| e.name != ENV_REDIS_PASSWORD_FILE));
        }
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
        let mut plain = orders_redis();
        plain.spec.redis.get_or_insert_with(Default::default).tls = Some(false);
        for sp in [external_with_ca(None), plain] {
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
}
