//! User sidecars (`spec.groups[i].sidecars`): what they may ask for, what
//! they may reach, and what the operator adds before they join a pod.
//!
//! ```text
//! sidecar ─check─▶ refused (FieldError with its path), when it:
//!   │              - takes the runtime container's name, or another sidecar's
//!   │              - asks beyond Pod Security restricted (restricted::check)
//!   │              - mounts the key ring, or mounts with subPath
//!   │
//!   └─harden─▶ restricted values where it left fields unset, /tmp
//! ```
//!
//! Sidecars declare no volumes (a group has no `volumes` field): every
//! volume of the pod is the operator's.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Container;
use sluice_crds::FieldError;

use super::pod_spec::{self, VOLUME_KEYS};
use super::restricted;

/// Checks the sidecars of `spec.groups[group_index]` against the pod they
/// join: unique names different from `main`, the restricted profile, and no
/// mount of the key ring or with `subPath`.
pub fn check(group_index: usize, main: &str, sidecars: &[Container], errors: &mut Vec<FieldError>) {
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
    }
}

fn path(group_index: usize, j: usize) -> String {
    format!("spec.groups[{group_index}].sidecars[{j}]")
}

fn check_mounts(p: &str, c: &Container, errors: &mut Vec<FieldError>) {
    for (k, m) in c.volume_mounts.iter().flatten().enumerate() {
        if m.name == VOLUME_KEYS {
            errors.push(FieldError {
                path: format!("{p}.volumeMounts[{k}].name"),
                message: "sidecars may not mount the key ring".into(),
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
    use k8s_openapi::api::core::v1::{SecurityContext, VolumeMount};

    fn refusals(sidecars: &[Container]) -> Vec<String> {
        let mut errors = vec![];
        check(2, "worker", sidecars, &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn sidecars_may_not_take_the_main_name_or_the_key_ring() {
        let bad = Container {
            name: "worker".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: VOLUME_KEYS.into(),
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
