//! User sidecars (`spec.groups[i].sidecars`): what they may ask for, what
//! they may reach, and what the operator adds before they join a pod.
//!
//! ```text
//! sidecar ─check─▶ refused (FieldError with its path), when it:
//!   │              - takes the runtime container's name, or another sidecar's
//!   │              - asks beyond Pod Security restricted (restricted::check)
//!   │              - mounts a key ring or the Redis CA, or mounts with subPath
//!   │              - names one of the pipeline's own Secrets in env/envFrom
//!   │
//!   ├─secret_references─▶ the other Secrets it names (each needs the opt-in label)
//!   └─harden─▶ restricted values where it left fields unset, /tmp
//! ```
//!
//! Sidecars declare no volumes (a group has no `volumes` field): every
//! volume of the pod is the operator's — `pipeline`, `keys`, `tmp`,
//! `redis-ca`, `redis-auth` and one `secret-…` per node Secret (and, in a
//! tcp pipeline's pod, `keys-<group>` per worker group). A sidecar may mount
//! the pipeline file, `/tmp` and the node Secrets of its pod (those carry
//! the opt-in label), never a key ring, the Redis CA or the Redis password.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Container;
use sluice_crds::FieldError;

use super::pod_spec;
use super::redis::{VOLUME_REDIS_AUTH, VOLUME_REDIS_CA};
use super::restricted;
use super::secret_refs::{OwnSecrets, SecretReference};
use crate::names;

/// Checks the sidecars of `spec.groups[group_index]` against the pod they
/// join: unique names different from `main`, the restricted profile, no
/// mount of the pipeline's Secrets or with `subPath`, and no reference to
/// the pipeline's own Secrets.
pub fn check(
    group_index: usize,
    main: &str,
    sidecars: &[Container],
    own: &OwnSecrets,
    errors: &mut Vec<FieldError>,
) {
    let mut seen = BTreeSet::new();
    for (j, c) in sidecars.iter().enumerate() {
        let p = path(group_index, j);
        if c.name == main {
            errors.push(FieldError {
                path: format!("{p}.name"),
                message: format!("`{main}` is the name of the runtime container"),
            });
        } else if !seen.insert(c.name.as_str()) {
            errors.push(FieldError {
                path: format!("{p}.name"),
                message: format!("duplicate sidecar name `{}`", c.name),
            });
        }
        restricted::check(&p, c, errors);
        check_mounts(&p, c, errors);
        let refs = container_references(&p, c);
        for r in &refs {
            if !names::is_dns_subdomain(&r.name) {
                errors.push(FieldError {
                    path: format!("{}.name", r.path),
                    message: format!("`{}` is not a valid Secret name", r.name),
                });
            }
        }
        own.refuse(&refs, errors);
    }
}

fn path(group_index: usize, j: usize) -> String {
    format!("spec.groups[{group_index}].sidecars[{j}]")
}

fn check_mounts(p: &str, c: &Container, errors: &mut Vec<FieldError>) {
    for (k, m) in c.volume_mounts.iter().flatten().enumerate() {
        let refused = match m.name.as_str() {
            n if pod_spec::is_keys_volume(n) => Some("sidecars may not mount the key ring"),
            VOLUME_REDIS_CA => Some("sidecars may not mount the Redis CA Secret"),
            VOLUME_REDIS_AUTH => Some("sidecars may not mount the Redis password"),
            _ => None,
        };
        if let Some(message) = refused {
            errors.push(FieldError {
                path: format!("{p}.volumeMounts[{k}].name"),
                message: message.into(),
            });
        }
        if m.sub_path.is_some() || m.sub_path_expr.is_some() {
            errors.push(FieldError {
                path: format!("{p}.volumeMounts[{k}]"),
                message:
                    "subPath mounts never see Secret or ConfigMap updates; mount the directory"
                        .into(),
            });
        }
    }
}

/// Every Secret the sidecars of `spec.groups[group_index]` name through
/// `env[].valueFrom.secretKeyRef` or `envFrom[].secretRef`, in spec order.
pub fn secret_references(group_index: usize, sidecars: &[Container]) -> Vec<SecretReference> {
    sidecars
        .iter()
        .enumerate()
        .flat_map(|(j, c)| container_references(&path(group_index, j), c))
        .collect()
}

fn container_references(p: &str, c: &Container) -> Vec<SecretReference> {
    let env = c.env.iter().flatten().enumerate().filter_map(|(k, e)| {
        let s = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
        Some(SecretReference {
            name: s.name.clone(),
            path: format!("{p}.env[{k}].valueFrom.secretKeyRef"),
            key: (s.optional != Some(true)).then(|| s.key.clone()),
        })
    });
    let env_from = c
        .env_from
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(k, e)| {
            let s = e.secret_ref.as_ref()?;
            Some(SecretReference {
                name: s.name.clone(),
                path: format!("{p}.envFrom[{k}].secretRef"),
                key: None,
            })
        });
    env.chain(env_from).collect()
}

/// A sidecar [`check`] accepted, ready to join the pod: the restricted
/// values where it leaves fields unset ([`restricted::harden`]), and the
/// pod's `/tmp` mounted unless it mounts something there itself, since its
/// root filesystem becomes read-only.
pub fn harden(mut c: Container) -> Container {
    c.security_context = Some(restricted::harden(c.security_context.take()));
    let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
    if !mounts
        .iter()
        .any(|m| m.mount_path.trim_end_matches('/') == "/tmp")
    {
        mounts.push(pod_spec::tmp_mount());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{external_with_ca, pod_of, render};
    use k8s_openapi::api::core::v1::{
        EnvFromSource, EnvVar, EnvVarSource, SecretEnvSource, SecretKeySelector, SecurityContext,
        VolumeMount,
    };
    use sluice_crds::StreamPipeline;

    fn own() -> OwnSecrets {
        let spec = sluice_crds::yaml::from_str(
            "interfaces: [{name: api, path: /a, entry: a}]
groups: [{name: web, role: ingress}]
nodes: [{name: a, group: web, uses: builtin/echo}]",
        )
        .unwrap();
        OwnSecrets::of("p", &spec)
    }

    fn refusals(sidecars: &[Container]) -> Vec<String> {
        let mut errors = vec![];
        check(2, "worker", sidecars, &own(), &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    fn env_secret(secret: &str) -> EnvVar {
        EnvVar {
            name: "TOKEN".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.into(),
                    key: "token".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn env_from_secret(secret: &str) -> EnvFromSource {
        EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.into(),
                optional: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn sidecars_may_not_take_the_main_name_or_the_key_ring() {
        let bad = Container {
            name: "worker".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: pod_spec::VOLUME_KEYS.into(),
                mount_path: "/keys".into(),
                sub_path: Some("current".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            refusals(&[bad]),
            [
                "spec.groups[2].sidecars[0].name: `worker` is the name of the runtime container",
                "spec.groups[2].sidecars[0].volumeMounts[0].name: sidecars may not mount the key ring",
                "spec.groups[2].sidecars[0].volumeMounts[0]: subPath mounts never see Secret or ConfigMap updates; mount the directory",
            ]
        );
    }

    #[test]
    fn sidecars_may_not_mount_the_redis_ca() {
        let c = Container {
            name: "py".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: VOLUME_REDIS_CA.into(),
                mount_path: "/ca".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            refusals(&[c]),
            ["spec.groups[2].sidecars[0].volumeMounts[0].name: sidecars may not mount the Redis CA Secret"]
        );
    }

    #[test]
    fn every_pipeline_secret_volume_is_refused_to_sidecars() {
        // Whatever Secret volume the operator adds to a pod for its own
        // Secrets must be one a sidecar cannot mount.
        let refused_own_volumes = |sp: StreamPipeline, deployment: &str| {
            let own = OwnSecrets::of(sp.metadata.name.as_deref().unwrap(), &sp.spec);
            let pod = pod_of(&render(&sp), deployment);
            let mut own_volumes = vec![];
            for v in pod.volumes.unwrap() {
                let secret = v.secret.as_ref().and_then(|s| s.secret_name.as_deref());
                if secret.is_some_and(|s| own.what(s).is_some()) {
                    let c = Container {
                        name: "py".into(),
                        volume_mounts: Some(vec![VolumeMount {
                            name: v.name.clone(),
                            mount_path: "/x".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    };
                    assert_eq!(refusals(&[c]).len(), 1, "{} is open to sidecars", v.name);
                    own_volumes.push(v.name);
                }
            }
            own_volumes
        };
        let external = external_with_ca(Some("{name: redis-ca, key: ca.crt}"));
        assert_eq!(
            refused_own_volumes(external, "enrich-io"),
            ["keys", "redis-ca"]
        );
        // Managed Redis: the password file and its CA.
        let managed = crate::render::fixtures::orders_redis();
        assert_eq!(
            refused_own_volumes(managed, "orders-redis-cpu"),
            ["keys", "redis-ca", "redis-auth"]
        );
        // A tcp pipeline's pod: each worker's keys volume too.
        let tcp = crate::render::fixtures::orders_tcp();
        assert_eq!(
            refused_own_volumes(tcp, "orders-tcp-web"),
            ["keys", "keys-cpu", "keys-io"]
        );
    }

    #[test]
    fn sidecars_may_not_read_the_pipelines_own_secrets_from_env() {
        let c = Container {
            name: "py".into(),
            env: Some(vec![env_secret("enrich-api"), env_secret("p-ipc-keys")]),
            env_from: Some(vec![env_from_secret("p-redis")]),
            ..Default::default()
        };
        assert_eq!(
            refusals(&[c]),
            [
                "spec.groups[2].sidecars[0].env[1].valueFrom.secretKeyRef.name: `p-ipc-keys` is the pipeline's own Secret (the key ring); nodes and sidecars may not reference it",
                "spec.groups[2].sidecars[0].envFrom[0].secretRef.name: `p-redis` is the pipeline's own Secret (the managed Redis password); nodes and sidecars may not reference it",
            ]
        );
    }

    #[test]
    fn a_malformed_secret_name_in_env_is_refused() {
        let c = Container {
            name: "py".into(),
            env_from: Some(vec![env_from_secret("../secrets")]),
            ..Default::default()
        };
        assert_eq!(
            refusals(&[c]),
            ["spec.groups[2].sidecars[0].envFrom[0].secretRef.name: `../secrets` is not a valid Secret name"]
        );
    }

    #[test]
    fn the_secrets_sidecars_name_are_listed_with_their_paths() {
        let a = Container {
            name: "a".into(),
            env: Some(vec![
                EnvVar {
                    name: "PLAIN".into(),
                    value: Some("x".into()),
                    ..Default::default()
                },
                env_secret("api"),
            ]),
            ..Default::default()
        };
        let b = Container {
            name: "b".into(),
            env_from: Some(vec![env_from_secret("db")]),
            ..Default::default()
        };
        let got: Vec<_> = secret_references(1, &[a, b])
            .into_iter()
            .map(|r| (r.name, r.path))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "api".to_string(),
                    "spec.groups[1].sidecars[0].env[1].valueFrom.secretKeyRef".to_string()
                ),
                (
                    "db".to_string(),
                    "spec.groups[1].sidecars[1].envFrom[0].secretRef".to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_privileged_sidecar_is_refused_with_its_path() {
        let c = Container {
            name: "py".into(),
            security_context: Some(SecurityContext {
                privileged: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            refusals(&[c]),
            ["spec.groups[2].sidecars[0].securityContext.privileged: sidecars may not run privileged"]
        );
    }

    #[test]
    fn sidecars_keep_what_they_set_and_get_the_rest() {
        let c = Container {
            name: "py".into(),
            security_context: Some(SecurityContext {
                run_as_user: Some(1000),
                read_only_root_filesystem: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(refusals(std::slice::from_ref(&c)).is_empty());
        let h = harden(c);
        let sc = h.security_context.unwrap();
        assert_eq!(sc.run_as_user, Some(1000));
        assert_eq!(sc.read_only_root_filesystem, Some(false), "kept");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert!(h
            .volume_mounts
            .unwrap()
            .iter()
            .any(|m| m.mount_path == "/tmp"));
    }
}
