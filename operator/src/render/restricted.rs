//! Pod Security "restricted" (which includes "baseline"): the contexts the
//! operator writes for its own pods and containers, the values it gives a
//! user sidecar where the sidecar leaves them unset, and the check that
//! refuses a sidecar asking for anything beyond the profile.
//!
//! ```text
//! sidecar securityContext, ports, probes, hooks
//!   ├─ asks beyond restricted ─▶ FieldError per field (spec.groups[i].sidecars[j].<field>)
//!   └─ within it ─▶ harden(): unset fields get the restricted values
//! ```
//!
//! The pod-level fields the profile also judges (host namespaces, volume
//! types, sysctls, the pod's own security context) are the operator's
//! alone: the spec cannot reach them. A sidecar's context and ports are the
//! only way a pipeline's author can ask for more, so they are checked here
//! rather than left to an admission controller the cluster may not run.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, HTTPGetAction, LifecycleHandler, PodSecurityContext, Probe,
    SeccompProfile, SecurityContext, TCPSocketAction,
};
use sluice_crds::FieldError;

/// The one capability the profile lets a container add back.
const ADDABLE_CAPABILITY: &str = "NET_BIND_SERVICE";
/// Seccomp and AppArmor profile types the profile allows.
const CONFINED_PROFILES: [&str; 2] = ["RuntimeDefault", "Localhost"];
/// SELinux types the profile allows (an unset or empty type is allowed too).
const SELINUX_TYPES: [&str; 4] = [
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

// === what the operator writes ===

/// Pod-level context meeting Pod Security "restricted", running as `uid`.
/// With `fs_group`, mounted volumes are group-owned by it (Redis's `/data`).
pub fn restricted_pod(uid: i64, fs_group: bool) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: fs_group.then_some(uid),
        fs_group_change_policy: fs_group.then(|| "OnRootMismatch".to_string()),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

/// Container-level context of the operator's own containers: restricted
/// plus a read-only root filesystem.
pub fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

/// A sidecar's context with every restricted field it leaves unset filled
/// in. What it sets is kept: [`check`] has refused anything beyond the
/// profile, so what is left is its author's choice within it (another
/// non-root UID, `readOnlyRootFilesystem: false`, `NET_BIND_SERVICE`).
pub fn harden(sc: Option<SecurityContext>) -> SecurityContext {
    let mut sc = sc.unwrap_or_default();
    sc.run_as_non_root.get_or_insert(true);
    sc.allow_privilege_escalation.get_or_insert(false);
    sc.read_only_root_filesystem.get_or_insert(true);
    sc.seccomp_profile
        .get_or_insert_with(runtime_default_seccomp);
    sc.capabilities
        .get_or_insert_with(Capabilities::default)
        .drop
        .get_or_insert_with(|| vec!["ALL".into()]);
    sc
}

// === what a sidecar may ask for ===

/// Refuses, field by field, what container `c` at `path` (a user sidecar,
/// `spec.groups[i].sidecars[j]`) asks for beyond Pod Security "restricted":
/// its security context, ports on the node, and probes or lifecycle hooks
/// aimed at another host (which the kubelet, not the pod, would call).
pub fn check(path: &str, c: &Container, errors: &mut Vec<FieldError>) {
    let mut refuse = |field: String, message: String| {
        errors.push(FieldError {
            path: format!("{path}.{field}"),
            message,
        });
    };
    if let Some(sc) = &c.security_context {
        check_context(sc, &mut refuse);
    }
    for (i, port) in c.ports.iter().flatten().enumerate() {
        if port.host_port.is_some_and(|p| p != 0) {
            refuse(
                format!("ports[{i}].hostPort"),
                "sidecars may not open a port on the node".into(),
            );
        }
    }
    let probes = [
        ("livenessProbe", c.liveness_probe.as_ref()),
        ("readinessProbe", c.readiness_probe.as_ref()),
        ("startupProbe", c.startup_probe.as_ref()),
    ];
    for (field, probe) in probes {
        if let Some(Probe {
            http_get,
            tcp_socket,
            ..
        }) = probe
        {
            check_host(field, http_get.as_ref(), tcp_socket.as_ref(), &mut refuse);
        }
    }
    let hooks = c.lifecycle.as_ref().map(|l| {
        [
            ("lifecycle.postStart", l.post_start.as_ref()),
            ("lifecycle.preStop", l.pre_stop.as_ref()),
        ]
    });
    for (field, hook) in hooks.into_iter().flatten() {
        if let Some(LifecycleHandler {
            http_get,
            tcp_socket,
            ..
        }) = hook
        {
            check_host(field, http_get.as_ref(), tcp_socket.as_ref(), &mut refuse);
        }
    }
}

fn check_context(sc: &SecurityContext, refuse: &mut impl FnMut(String, String)) {
    let mut field = |name: &str, message: &str| {
        refuse(format!("securityContext.{name}"), message.to_string());
    };
    if sc.privileged == Some(true) {
        field("privileged", "sidecars may not run privileged");
    }
    if sc.allow_privilege_escalation == Some(true) {
        field(
            "allowPrivilegeEscalation",
            "sidecars may not allow privilege escalation",
        );
    }
    if sc.run_as_user == Some(0) {
        field("runAsUser", "sidecars may not run as root (UID 0)");
    }
    if sc.run_as_non_root == Some(false) {
        field(
            "runAsNonRoot",
            "sidecars must run as non-root; leave it unset to get true",
        );
    }
    if let Some(t) = sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) {
        if !CONFINED_PROFILES.contains(&t) {
            field(
                "seccompProfile.type",
                &format!("the seccomp profile must be RuntimeDefault or Localhost, not `{t}`"),
            );
        }
    }
    if let Some(t) = sc.app_armor_profile.as_ref().map(|p| p.type_.as_str()) {
        if !CONFINED_PROFILES.contains(&t) {
            field(
                "appArmorProfile.type",
                &format!("the AppArmor profile must be RuntimeDefault or Localhost, not `{t}`"),
            );
        }
    }
    if let Some(m) = sc.proc_mount.as_deref().filter(|m| *m != "Default") {
        field(
            "procMount",
            &format!("procMount must be Default, not `{m}`"),
        );
    }
    if sc
        .windows_options
        .as_ref()
        .is_some_and(|w| w.host_process == Some(true))
    {
        field(
            "windowsOptions.hostProcess",
            "sidecars may not run as a Windows host process",
        );
    }
    if let Some(se) = &sc.se_linux_options {
        if let Some(t) = se
            .type_
            .as_deref()
            .filter(|t| !t.is_empty() && !SELINUX_TYPES.contains(t))
        {
            field(
                "seLinuxOptions.type",
                &format!(
                    "the SELinux type must be one of {}, not `{t}`",
                    SELINUX_TYPES.join(", ")
                ),
            );
        }
        if se.user.as_deref().is_some_and(|u| !u.is_empty()) {
            field(
                "seLinuxOptions.user",
                "sidecars may not set the SELinux user",
            );
        }
        if se.role.as_deref().is_some_and(|r| !r.is_empty()) {
            field(
                "seLinuxOptions.role",
                "sidecars may not set the SELinux role",
            );
        }
    }
    if let Some(caps) = &sc.capabilities {
        for (i, c) in caps.add.iter().flatten().enumerate() {
            if c != ADDABLE_CAPABILITY {
                field(
                    &format!("capabilities.add[{i}]"),
                    &format!("sidecars may add only {ADDABLE_CAPABILITY}, not `{c}`"),
                );
            }
        }
        // Unset, drop becomes [ALL] (harden); a list the author wrote must
        // say so itself.
        if let Some(drop) = &caps.drop {
            if !drop.iter().any(|c| c == "ALL") {
                field(
                    "capabilities.drop",
                    "must contain ALL; leave it unset to get [ALL]",
                );
            }
        }
    }
}

/// A probe or hook with `host` makes the kubelet connect wherever it names,
/// from the node: only the pod's own address is allowed.
fn check_host(
    field: &str,
    http_get: Option<&HTTPGetAction>,
    tcp_socket: Option<&TCPSocketAction>,
    refuse: &mut impl FnMut(String, String),
) {
    let hosts = [
        ("httpGet", http_get.and_then(|h| h.host.as_deref())),
        ("tcpSocket", tcp_socket.and_then(|t| t.host.as_deref())),
    ];
    for (action, host) in hosts {
        if host.is_some_and(|h| !h.is_empty()) {
            refuse(
                format!("{field}.{action}.host"),
                "probes and hooks of sidecars may reach only their own pod; remove host".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        AppArmorProfile, ContainerPort, Lifecycle, SELinuxOptions, WindowsSecurityContextOptions,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    const P: &str = "spec.groups[1].sidecars[0]";

    /// `(path, message)` of every refusal of a sidecar with `sc`.
    fn refusals_of(c: &Container) -> Vec<(String, String)> {
        let mut errors = vec![];
        check(P, c, &mut errors);
        errors.into_iter().map(|e| (e.path, e.message)).collect()
    }

    fn with_context(sc: SecurityContext) -> Vec<(String, String)> {
        refusals_of(&Container {
            name: "py".into(),
            security_context: Some(sc),
            ..Default::default()
        })
    }

    fn one(path: &str, message: &str) -> Vec<(String, String)> {
        vec![(format!("{P}.{path}"), message.to_string())]
    }

    #[test]
    fn a_privileged_sidecar_is_refused() {
        assert_eq!(
            with_context(SecurityContext {
                privileged: Some(true),
                ..Default::default()
            }),
            one(
                "securityContext.privileged",
                "sidecars may not run privileged"
            )
        );
    }

    #[test]
    fn privilege_escalation_is_refused() {
        assert_eq!(
            with_context(SecurityContext {
                allow_privilege_escalation: Some(true),
                ..Default::default()
            }),
            one(
                "securityContext.allowPrivilegeEscalation",
                "sidecars may not allow privilege escalation"
            )
        );
    }

    #[test]
    fn running_as_root_is_refused_either_way() {
        assert_eq!(
            with_context(SecurityContext {
                run_as_user: Some(0),
                ..Default::default()
            }),
            one(
                "securityContext.runAsUser",
                "sidecars may not run as root (UID 0)"
            )
        );
        assert_eq!(
            with_context(SecurityContext {
                run_as_non_root: Some(false),
                ..Default::default()
            }),
            one(
                "securityContext.runAsNonRoot",
                "sidecars must run as non-root; leave it unset to get true"
            )
        );
    }

    #[test]
    fn added_capabilities_other_than_net_bind_service_are_refused() {
        let got = with_context(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_BIND_SERVICE".into(), "SYS_ADMIN".into()]),
                drop: None,
            }),
            ..Default::default()
        });
        assert_eq!(
            got,
            one(
                "securityContext.capabilities.add[1]",
                "sidecars may add only NET_BIND_SERVICE, not `SYS_ADMIN`"
            )
        );
    }

    #[test]
    fn a_drop_list_without_all_is_refused_and_an_unset_one_becomes_all() {
        let caps = |drop: Option<Vec<String>>| SecurityContext {
            capabilities: Some(Capabilities { add: None, drop }),
            ..Default::default()
        };
        assert_eq!(
            with_context(caps(Some(vec!["NET_RAW".into()]))),
            one(
                "securityContext.capabilities.drop",
                "must contain ALL; leave it unset to get [ALL]"
            )
        );
        assert!(with_context(caps(Some(vec!["NET_RAW".into(), "ALL".into()]))).is_empty());
        assert!(with_context(caps(None)).is_empty());
        let hardened = harden(Some(caps(None)));
        assert_eq!(
            hardened.capabilities.unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
    }

    #[test]
    fn unconfined_seccomp_and_apparmor_profiles_are_refused() {
        let got = with_context(SecurityContext {
            seccomp_profile: Some(SeccompProfile {
                type_: "Unconfined".into(),
                ..Default::default()
            }),
            app_armor_profile: Some(AppArmorProfile {
                type_: "Unconfined".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            got,
            [
                (
                    format!("{P}.securityContext.seccompProfile.type"),
                    "the seccomp profile must be RuntimeDefault or Localhost, not `Unconfined`"
                        .to_string()
                ),
                (
                    format!("{P}.securityContext.appArmorProfile.type"),
                    "the AppArmor profile must be RuntimeDefault or Localhost, not `Unconfined`"
                        .to_string()
                ),
            ]
        );
        let localhost = SecurityContext {
            seccomp_profile: Some(SeccompProfile {
                type_: "Localhost".into(),
                localhost_profile: Some("profiles/py.json".into()),
            }),
            ..Default::default()
        };
        assert!(with_context(localhost).is_empty());
    }

    #[test]
    fn an_unmasked_proc_mount_is_refused() {
        assert_eq!(
            with_context(SecurityContext {
                proc_mount: Some("Unmasked".into()),
                ..Default::default()
            }),
            one(
                "securityContext.procMount",
                "procMount must be Default, not `Unmasked`"
            )
        );
        assert!(with_context(SecurityContext {
            proc_mount: Some("Default".into()),
            ..Default::default()
        })
        .is_empty());
    }

    #[test]
    fn a_windows_host_process_is_refused() {
        assert_eq!(
            with_context(SecurityContext {
                windows_options: Some(WindowsSecurityContextOptions {
                    host_process: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            one(
                "securityContext.windowsOptions.hostProcess",
                "sidecars may not run as a Windows host process"
            )
        );
    }

    #[test]
    fn selinux_allows_only_container_types_and_no_user_or_role() {
        let got = with_context(SecurityContext {
            se_linux_options: Some(SELinuxOptions {
                type_: Some("spc_t".into()),
                user: Some("system_u".into()),
                role: Some("system_r".into()),
                level: Some("s0:c1,c2".into()),
            }),
            ..Default::default()
        });
        let paths: Vec<_> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.groups[1].sidecars[0].securityContext.seLinuxOptions.type",
                "spec.groups[1].sidecars[0].securityContext.seLinuxOptions.user",
                "spec.groups[1].sidecars[0].securityContext.seLinuxOptions.role",
            ]
        );
        assert_eq!(
            got[0].1,
            "the SELinux type must be one of container_t, container_init_t, container_kvm_t, container_engine_t, not `spc_t`"
        );
        for t in SELINUX_TYPES {
            let ok = with_context(SecurityContext {
                se_linux_options: Some(SELinuxOptions {
                    type_: Some(t.into()),
                    level: Some("s0:c1,c2".into()),
                    ..Default::default()
                }),
                ..Default::default()
            });
            assert!(ok.is_empty(), "{t}: {ok:?}");
        }
    }

    #[test]
    fn a_host_port_is_refused() {
        let c = Container {
            name: "py".into(),
            ports: Some(vec![
                ContainerPort {
                    container_port: 9000,
                    host_port: Some(0),
                    ..Default::default()
                },
                ContainerPort {
                    container_port: 9001,
                    host_port: Some(9001),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        assert_eq!(
            refusals_of(&c),
            one(
                "ports[1].hostPort",
                "sidecars may not open a port on the node"
            )
        );
    }

    #[test]
    fn probes_and_hooks_aimed_at_another_host_are_refused() {
        let http = |host: Option<&str>| HTTPGetAction {
            host: host.map(str::to_string),
            port: IntOrString::Int(9000),
            ..Default::default()
        };
        let c = Container {
            name: "py".into(),
            liveness_probe: Some(Probe {
                http_get: Some(http(Some("169.254.169.254"))),
                ..Default::default()
            }),
            readiness_probe: Some(Probe {
                http_get: Some(http(Some(""))),
                ..Default::default()
            }),
            lifecycle: Some(Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    tcp_socket: Some(TCPSocketAction {
                        host: Some("10.0.0.1".into()),
                        port: IntOrString::Int(22),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = refusals_of(&c);
        let paths: Vec<_> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.groups[1].sidecars[0].livenessProbe.httpGet.host",
                "spec.groups[1].sidecars[0].lifecycle.preStop.tcpSocket.host",
            ]
        );
    }

    #[test]
    fn what_the_profile_allows_is_accepted_and_kept() {
        let sc = SecurityContext {
            run_as_user: Some(1000),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_BIND_SERVICE".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        };
        assert!(with_context(sc.clone()).is_empty());
        let h = harden(Some(sc));
        assert_eq!(h.run_as_user, Some(1000));
        assert_eq!(h.read_only_root_filesystem, Some(false), "kept");
        assert_eq!(h.seccomp_profile.unwrap().type_, "RuntimeDefault");
    }

    #[test]
    fn an_empty_context_gets_every_restricted_value() {
        let h = harden(None);
        assert_eq!(h.run_as_non_root, Some(true));
        assert_eq!(h.allow_privilege_escalation, Some(false));
        assert_eq!(h.read_only_root_filesystem, Some(true));
        assert_eq!(h.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert_eq!(h.seccomp_profile.unwrap().type_, "RuntimeDefault");
    }
}
