//! Building blocks of every PodSpec the operator renders: the
//! read-only-root-filesystem companions (`/tmp`), probes, resources, env,
//! and the mounts of the pipeline file, key ring and node Secrets. The
//! security contexts are [`super::restricted`]'s; user sidecars are
//! [`super::sidecars`]'.
//!
//! Every mount is a whole directory: the kubelet updates a mounted Secret or
//! ConfigMap by swapping a `..data` symlink, which a `subPath` mount never
//! sees (DESIGN §6), so no mount here uses `subPath`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    KeyToPath, Probe, ResourceRequirements, SecretKeySelector, SecretVolumeSource, TCPSocketAction,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::secret_refs::SecretRefUse;
use crate::names;

/// The UID/GID of the runtime images (distroless `nonroot`).
pub const RUNTIME_UID: i64 = 65532;
/// The UID/GID managed Redis runs as. Not the official images' `redis`
/// user (999): a UID that low may belong to a system account of the node,
/// so a process escaping the container would act as it. Above 10000 no
/// common distribution allocates accounts (checkov CKV_K8S_40), and it is
/// not the runtime's [`RUNTIME_UID`], so Redis and the runtime on one node
/// are different users. The images' files are world-readable and `/data`
/// is the pod's volume, group-owned through `fsGroup`, so nothing in them
/// needs the `redis` user.
pub const REDIS_UID: i64 = 10999;

/// Directory of the pipeline ConfigMap; the file is [`PIPELINE_FILE`].
pub const PIPELINE_DIR: &str = "/etc/sluice/pipeline";
/// Key of the pipeline ConfigMap and file name in [`PIPELINE_DIR`].
pub const PIPELINE_FILE: &str = "pipeline.yaml";
/// Directory of the key ring (`--keys`).
pub const KEYS_DIR: &str = "/etc/sluice/keys";
/// Parent of the node Secrets, mounted as `<dir>/<name>/<key>`: the
/// runtime's default `--secrets-dir`.
pub const SECRETS_DIR: &str = "/etc/sluice/secrets";

pub const VOLUME_PIPELINE: &str = "pipeline";
pub const VOLUME_KEYS: &str = "keys";
pub const VOLUME_TMP: &str = "tmp";

/// The keys volume of group `group`'s container in a pod that holds
/// several groups (a tcp pipeline's), each with only its own keys.
pub fn group_keys_volume(group: &str) -> String {
    format!("{VOLUME_KEYS}-{group}")
}

/// Whether volume `name` holds keys: [`VOLUME_KEYS`] or a
/// [`group_keys_volume`].
pub fn is_keys_volume(name: &str) -> bool {
    name == VOLUME_KEYS
        || name
            .strip_prefix(VOLUME_KEYS)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Requests of runtime containers when the group sets no `resources`.
pub const DEFAULT_CPU_REQUEST: &str = "100m";
pub const DEFAULT_MEMORY_REQUEST: &str = "128Mi";

/// The path of the pipeline file inside a runtime container.
pub fn pipeline_path() -> String {
    format!("{PIPELINE_DIR}/{PIPELINE_FILE}")
}

// === resources and probes ===

/// The group's `resources`, or the default requests.
pub fn resources_or_default(r: Option<&ResourceRequirements>) -> ResourceRequirements {
    r.cloned()
        .unwrap_or_else(|| requests(DEFAULT_CPU_REQUEST, DEFAULT_MEMORY_REQUEST))
}

/// Requests only: no limits, so a busy node never throttles or OOM-kills a
/// process for a cap the user did not choose.
pub fn requests(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        ..Default::default()
    }
}

/// Readiness probe on an HTTP endpoint of a named port.
pub fn readiness_http(path: &str, port: &str) -> Probe {
    Probe {
        http_get: Some(http_get(path, port)),
        period_seconds: Some(5),
        failure_threshold: Some(2),
        ..Default::default()
    }
}

/// Liveness probe on an HTTP endpoint of a named port.
pub fn liveness_http(path: &str, port: &str) -> Probe {
    Probe {
        http_get: Some(http_get(path, port)),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn http_get(path: &str, port: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::String(port.into()),
        ..Default::default()
    }
}

/// Readiness probe running a command in the container.
pub fn readiness_exec(command: Vec<String>) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command),
        }),
        period_seconds: Some(5),
        timeout_seconds: Some(3),
        failure_threshold: Some(2),
        ..Default::default()
    }
}

/// Liveness probe connecting to a named TCP port.
pub fn liveness_tcp(port: &str) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(port.into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

// === env ===

/// A literal environment variable.
pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// A literal environment variable that Kubernetes must pass on as written:
/// it expands `$(NAME)` of earlier variables in `value` and turns `$$` into
/// `$`, so every `$` is doubled.
pub fn env_verbatim(name: &str, value: &str) -> EnvVar {
    env(name, value.replace('$', "$$"))
}

/// An environment variable read from a Secret key.
pub fn env_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An environment variable read from a field of the pod.
pub fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

// === volumes ===

/// The writable `/tmp` a read-only root filesystem needs.
pub fn tmp_volume() -> Volume {
    Volume {
        name: VOLUME_TMP.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

pub fn tmp_mount() -> VolumeMount {
    mount(VOLUME_TMP, "/tmp", false)
}

/// The pipeline ConfigMap as a directory.
pub fn pipeline_volume(config_map: &str) -> Volume {
    Volume {
        name: VOLUME_PIPELINE.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A whole Secret as a directory (every key a file).
pub fn secret_volume(volume: &str, secret: &str, default_mode: Option<i32>) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Secret volume projecting only `keys`, each under its own name.
pub fn secret_items_volume(
    volume: &str,
    secret: &str,
    keys: &[&str],
    default_mode: Option<i32>,
) -> Volume {
    let mut v = secret_volume(volume, secret, default_mode);
    if let Some(s) = v.secret.as_mut() {
        s.items = Some(
            keys.iter()
                .map(|k| KeyToPath {
                    key: (*k).into(),
                    path: (*k).into(),
                    mode: None,
                })
                .collect(),
        );
    }
    v
}

/// A directory mount of a whole volume; never `subPath`.
pub fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

// === node Secrets ===

/// Volumes and mounts for the node Secrets a pod needs: one directory per
/// Secret at `<SECRETS_DIR>/<name>`, projecting only the referenced keys (a
/// pod sees no key its nodes do not name).
pub fn node_secret_mounts(uses: &[SecretRefUse]) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut by_secret: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for u in uses {
        by_secret.entry(&u.name).or_default().insert(&u.key);
    }
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (secret, keys) in by_secret {
        let volume = names::secret_volume(secret);
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                items: Some(
                    keys.into_iter()
                        .map(|k| KeyToPath {
                            key: k.into(),
                            path: k.into(),
                            mode: None,
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(&volume, &format!("{SECRETS_DIR}/{secret}"), true));
    }
    (volumes, mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{examples, render, templates};

    #[test]
    fn node_secrets_are_mounted_one_directory_per_secret_with_only_the_named_keys() {
        let used = |name: &str, key: &str| SecretRefUse {
            path: format!("spec.nodes[0].with.{key}.secretRef"),
            name: name.into(),
            key: key.into(),
        };
        let found = [
            used("api", "token"),
            used("api", "other"),
            used("db", "password"),
        ];
        let (volumes, mounts) = node_secret_mounts(&found);
        assert_eq!(volumes.len(), 2, "one volume per Secret");
        assert_eq!(mounts[0].mount_path, "/etc/sluice/secrets/api");
        let items = volumes[0].secret.as_ref().unwrap().items.as_ref().unwrap();
        assert_eq!(
            items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
            ["other", "token"]
        );
        assert!(mounts
            .iter()
            .all(|m| m.sub_path.is_none() && m.read_only == Some(true)));
    }

    #[test]
    fn verbatim_values_survive_kubernetes_variable_expansion() {
        let e = env_verbatim("X", "http://h/$(HOME)/$$");
        assert_eq!(e.value.as_deref(), Some("http://h/$$(HOME)/$$$$"));
        assert_eq!(env_verbatim("X", "plain").value.as_deref(), Some("plain"));
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
}
