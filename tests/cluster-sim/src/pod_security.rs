//! Pod Security admission (`k8s.io/pod-security-admission`): namespaces labelled
//! `pod-security.kubernetes.io/{enforce,warn,audit}: privileged|baseline|restricted` (with an
//! optional `-version`, checked as `latest` whatever it names).
//!
//! As upstream (`admission/admission.go`): a Pod create (or an update that changes an image)
//! violating the `enforce` level is a `403` `pods "x" is forbidden: violates PodSecurity
//! "restricted:latest": <reason> (<detail>), …`; a Pod or a workload whose template violates
//! the `warn` level gets a `Warning` header `would violate PodSecurity "…": …`. Workloads are
//! never refused (`ValidatePodController` evaluates only `warn` and `audit`): their controller's
//! pod creates are, which the workload controllers model (no progress, `ReplicaFailure`).
//!
//! The checks (`policy/check_*.go`) are reported in upstream's order: the baseline checks,
//! then the restricted ones, each level in check-ID order; a restricted check replaces the
//! baseline check it overrides (capabilities, hostPath volumes, seccomp).

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::resources::ResourceType;
use crate::store::{meta, ObjKey, State};
use crate::warnings::Warnings;

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// A level and the version it names (`restricted:latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LevelVersion {
    pub level: Level,
    version: String,
}

impl std::fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.level.name(), self.version)
    }
}

/// The levels of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    pub enforce: LevelVersion,
    pub warn: LevelVersion,
}

const PREFIX: &str = "pod-security.kubernetes.io/";

/// The policy of namespace `ns` from its labels (`api/helpers.go` `PolicyToEvaluate`): an
/// unparsable enforce level is `restricted`, an unparsable warn level `privileged`.
pub(crate) fn policy(st: &State, ns: &str) -> Policy {
    let key = ObjKey {
        group: String::new(),
        resource: "namespaces".into(),
        namespace: String::new(),
        name: ns.into(),
    };
    let labels = st
        .objects
        .get(&key)
        .and_then(|n| meta(n, "labels"))
        .cloned()
        .unwrap_or(Value::Null);
    let level_version = |mode: &str, on_error: Level| {
        let level = match labels.get(format!("{PREFIX}{mode}")).map(|l| l.as_str()) {
            None => Level::Privileged,
            Some(Some("privileged")) => Level::Privileged,
            Some(Some("baseline")) => Level::Baseline,
            Some(Some("restricted")) => Level::Restricted,
            Some(_) => on_error,
        };
        let version = labels
            .get(format!("{PREFIX}{mode}-version"))
            .and_then(Value::as_str)
            .filter(|v| {
                v.strip_prefix("v1.")
                    .is_some_and(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()))
            })
            .unwrap_or("latest")
            .to_string();
        LevelVersion { level, version }
    };
    Policy {
        enforce: level_version("enforce", Level::Restricted),
        warn: level_version("warn", Level::Privileged),
    }
}

/// The pod metadata and spec a Pod or a pod controller carries.
pub(crate) fn pod_of<'v>(rt: &ResourceType, obj: &'v Value) -> Option<(&'v Value, &'v Value)> {
    let template = match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => obj,
        ("apps", "Deployment" | "StatefulSet" | "ReplicaSet" | "DaemonSet")
        | ("batch", "Job")
        | ("", "ReplicationController" | "PodTemplate") => obj.pointer("/spec/template")?,
        ("batch", "CronJob") => obj.pointer("/spec/jobTemplate/spec/template")?,
        _ => return None,
    };
    static NO_METADATA: Value = Value::Null;
    Some((
        template.get("metadata").unwrap_or(&NO_METADATA),
        template.get("spec")?,
    ))
}

/// `violates PodSecurity "restricted:latest": …` when the pod breaks `lv`.
pub(crate) fn violation(lv: &LevelVersion, pod_meta: &Value, spec: &Value) -> Option<String> {
    let detail = evaluate(lv.level, pod_meta, spec)?;
    Some(format!("violates PodSecurity \"{lv}\": {detail}"))
}

/// Admission of a write: a Pod breaking `enforce` is refused; a Pod or a workload breaking
/// `warn` earns a warning.
pub(crate) fn admit(
    st: &State,
    rt: &ResourceType,
    name: &str,
    old: Option<&Value>,
    obj: &Value,
    warnings: &Warnings,
) -> Result<(), ApiError> {
    let Some((pod_meta, spec)) = pod_of(rt, obj) else {
        return Ok(());
    };
    let ns = meta(obj, "namespace").and_then(Value::as_str).unwrap_or("");
    let p = policy(st, ns);
    let is_pod = rt.group.is_empty() && rt.kind == "Pod";
    if is_pod && (old.is_none() || old.is_some_and(|o| images(o) != images(obj))) {
        if let Some(v) = violation(&p.enforce, pod_meta, spec) {
            let mut e = ApiError::forbidden(format!("pods \"{name}\" is forbidden: {v}"));
            e.details = Some(json!({"name": name, "kind": "pods"}));
            return Err(e);
        }
    }
    if let Some(detail) = evaluate(p.warn.level, pod_meta, spec) {
        warnings.push(format!(
            "would violate PodSecurity \"{}\": {detail}",
            p.warn
        ));
    }
    Ok(())
}

fn images(pod: &Value) -> Vec<Value> {
    containers(&pod["spec"])
        .map(|(_, c)| c.get("image").cloned().unwrap_or(Value::Null))
        .collect()
}

/// Every container of a pod spec (init, regular, ephemeral) with its name.
fn containers(spec: &Value) -> impl Iterator<Item = (&str, &Value)> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .filter_map(move |k| spec.get(k).and_then(Value::as_array))
        .flatten()
        .map(|c| (c.get("name").and_then(Value::as_str).unwrap_or(""), c))
}

fn pluralize(one: &str, many: &str, n: usize) -> String {
    if n == 1 { one } else { many }.to_string()
}

fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| format!("{:?}", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn sc<'v>(v: &'v Value, field: &str) -> Option<&'v Value> {
    v.get("securityContext").and_then(|s| s.get(field))
}

type Check = fn(&Value, &Value) -> Option<(String, String)>;

/// Baseline checks in check-ID order, with the restricted check that overrides each, if any.
const BASELINE: &[(&str, Check)] = &[
    ("appArmorProfile", app_armor),
    ("capabilities_baseline", capabilities_baseline),
    ("hostNamespaces", host_namespaces),
    ("hostPathVolumes", host_path_volumes),
    ("hostPorts", host_ports),
    ("privileged", privileged),
    ("procMount", proc_mount),
    ("seLinuxOptions", se_linux_options),
    ("seccompProfile_baseline", seccomp_baseline),
    ("sysctls", sysctls),
    ("windowsHostProcess", windows_host_process),
];

/// Restricted checks in check-ID order.
const RESTRICTED: &[(&str, Check)] = &[
    ("allowPrivilegeEscalation", allow_privilege_escalation),
    ("capabilities_restricted", capabilities_restricted),
    ("restrictedVolumes", restricted_volumes),
    ("runAsNonRoot", run_as_non_root),
    ("runAsUser", run_as_user),
    ("seccompProfile_restricted", seccomp_restricted),
];

/// Baseline checks a restricted check replaces.
const OVERRIDDEN: &[&str] = &[
    "capabilities_baseline",
    "hostPathVolumes",
    "seccompProfile_baseline",
];

/// The forbidden detail of a pod at `level` (`reason (detail), …`), `None` when allowed.
pub(crate) fn evaluate(level: Level, pod_meta: &Value, spec: &Value) -> Option<String> {
    let mut checks: Vec<Check> = Vec::new();
    if level >= Level::Baseline {
        for (id, check) in BASELINE {
            if level == Level::Restricted && OVERRIDDEN.contains(id) {
                continue;
            }
            checks.push(*check);
        }
    }
    if level == Level::Restricted {
        checks.extend(RESTRICTED.iter().map(|(_, c)| *c));
    }
    let failures: Vec<String> = checks
        .iter()
        .filter_map(|c| c(pod_meta, spec))
        .map(|(reason, detail)| {
            if detail.is_empty() {
                reason
            } else {
                format!("{reason} ({detail})")
            }
        })
        .collect();
    (!failures.is_empty()).then(|| failures.join(", "))
}

fn app_armor(pod_meta: &Value, spec: &Value) -> Option<(String, String)> {
    let mut bad: Vec<String> = Vec::new();
    let unconfined = |v: &Value| {
        v.pointer("/securityContext/appArmorProfile/type")
            .and_then(Value::as_str)
            == Some("Unconfined")
    };
    if unconfined(spec) {
        bad.push("pod \"Unconfined\"".into());
    }
    for (name, c) in containers(spec) {
        if unconfined(c) {
            bad.push(format!("container {name:?} \"Unconfined\""));
        }
    }
    if let Some(ann) = pod_meta.get("annotations").and_then(Value::as_object) {
        for (k, v) in ann {
            if !k.starts_with("container.apparmor.security.beta.kubernetes.io/") {
                continue;
            }
            let v = v.as_str().unwrap_or("");
            if !(v.is_empty() || v == "runtime/default" || v.starts_with("localhost/")) {
                bad.push(format!("{k}={v:?}"));
            }
        }
    }
    (!bad.is_empty()).then(|| {
        (
            pluralize(
                "forbidden AppArmor profile",
                "forbidden AppArmor profiles",
                bad.len(),
            ),
            bad.join(", "),
        )
    })
}

const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Containers adding capabilities outside `allowed`, and those capabilities.
fn added_outside(spec: &Value, allowed: &[&str]) -> (Vec<String>, BTreeSet<String>) {
    let mut bad = Vec::new();
    let mut caps = BTreeSet::new();
    for (name, c) in containers(spec) {
        let added: Vec<String> = c
            .pointer("/securityContext/capabilities/add")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|cap| !allowed.contains(cap))
            .map(str::to_string)
            .collect();
        if !added.is_empty() {
            bad.push(name.to_string());
            caps.extend(added);
        }
    }
    (bad, caps)
}

fn must_not_include(bad: &[String], caps: &BTreeSet<String>) -> String {
    let caps: Vec<&String> = caps.iter().collect();
    format!(
        "{} {} must not include {} in securityContext.capabilities.add",
        pluralize("container", "containers", bad.len()),
        join_quote(bad),
        join_quote(&caps)
    )
}

fn capabilities_baseline(_: &Value, spec: &Value) -> Option<(String, String)> {
    let (bad, caps) = added_outside(spec, BASELINE_CAPABILITIES);
    (!bad.is_empty()).then(|| {
        (
            "non-default capabilities".into(),
            must_not_include(&bad, &caps),
        )
    })
}

fn host_namespaces(_: &Value, spec: &Value) -> Option<(String, String)> {
    let set: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|k| spec.get(*k).and_then(Value::as_bool) == Some(true))
        .map(|k| format!("{k}=true"))
        .collect();
    (!set.is_empty()).then(|| ("host namespaces".into(), set.join(", ")))
}

fn volumes_where(spec: &Value, bad: impl Fn(&Value) -> Option<String>) -> Vec<(String, String)> {
    spec.get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let kind = bad(v)?;
            Some((
                v.get("name").and_then(Value::as_str).unwrap_or("").into(),
                kind,
            ))
        })
        .collect()
}

fn host_path_volumes(_: &Value, spec: &Value) -> Option<(String, String)> {
    let bad = volumes_where(spec, |v| v.get("hostPath").map(|_| "hostPath".into()));
    let names: Vec<&String> = bad.iter().map(|(n, _)| n).collect();
    (!bad.is_empty()).then(|| {
        (
            "hostPath volumes".into(),
            format!(
                "{} {}",
                pluralize("volume", "volumes", names.len()),
                join_quote(&names)
            ),
        )
    })
}

fn host_ports(_: &Value, spec: &Value) -> Option<(String, String)> {
    let mut bad = Vec::new();
    let mut ports = BTreeSet::new();
    for (name, c) in containers(spec) {
        let used: Vec<i64> = c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("hostPort").and_then(Value::as_i64))
            .filter(|p| *p != 0)
            .collect();
        if !used.is_empty() {
            bad.push(name.to_string());
            ports.extend(used.into_iter().map(|p| p.to_string()));
        }
    }
    (!bad.is_empty()).then(|| {
        let ports: Vec<String> = ports.into_iter().collect();
        (
            "hostPort".into(),
            format!(
                "{} {} {} {} {}",
                pluralize("container", "containers", bad.len()),
                join_quote(&bad),
                pluralize("uses", "use", bad.len()),
                pluralize("hostPort", "hostPorts", ports.len()),
                ports.join(", ")
            ),
        )
    })
}

/// Containers whose `securityContext.<field>` satisfies `bad`.
fn containers_where(spec: &Value, field: &str, bad: impl Fn(&Value) -> bool) -> Vec<String> {
    containers(spec)
        .filter(|(_, c)| sc(c, field).is_some_and(&bad))
        .map(|(n, _)| n.to_string())
        .collect()
}

fn privileged(_: &Value, spec: &Value) -> Option<(String, String)> {
    let bad = containers_where(spec, "privileged", |v| v.as_bool() == Some(true));
    (!bad.is_empty()).then(|| {
        (
            "privileged".into(),
            format!(
                "{} {} must not set securityContext.privileged=true",
                pluralize("container", "containers", bad.len()),
                join_quote(&bad)
            ),
        )
    })
}

fn proc_mount(_: &Value, spec: &Value) -> Option<(String, String)> {
    let mut bad = Vec::new();
    let mut values = BTreeSet::new();
    for (name, c) in containers(spec) {
        if let Some(v) = sc(c, "procMount").and_then(Value::as_str) {
            if v != "Default" {
                bad.push(name.to_string());
                values.insert(v.to_string());
            }
        }
    }
    (!bad.is_empty()).then(|| {
        let values: Vec<String> = values.into_iter().collect();
        (
            "procMount".into(),
            format!(
                "{} {} must not set securityContext.procMount to {}",
                pluralize("container", "containers", bad.len()),
                join_quote(&bad),
                join_quote(&values)
            ),
        )
    })
}

const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

fn se_linux_options(_: &Value, spec: &Value) -> Option<(String, String)> {
    let mut setters = Vec::new();
    let mut problems = BTreeSet::new();
    let mut check = |who: String, opts: Option<&Value>| {
        let Some(o) = opts else { return };
        let mut bad = false;
        if let Some(t) = o.get("type").and_then(Value::as_str) {
            if !SELINUX_TYPES.contains(&t) {
                problems.insert(format!("type {t:?}"));
                bad = true;
            }
        }
        for f in ["user", "role"] {
            if let Some(v) = o.get(f).and_then(Value::as_str).filter(|v| !v.is_empty()) {
                problems.insert(format!("{f} {v:?}"));
                bad = true;
            }
        }
        if bad {
            setters.push(who);
        }
    };
    check("pod".into(), sc(spec, "seLinuxOptions"));
    for (name, c) in containers(spec) {
        check(format!("container {name:?}"), sc(c, "seLinuxOptions"));
    }
    (!setters.is_empty()).then(|| {
        let problems: Vec<String> = problems.into_iter().collect();
        (
            "seLinuxOptions".into(),
            format!(
                "{} set forbidden securityContext.seLinuxOptions: {}",
                setters.join(", "),
                problems.join("; ")
            ),
        )
    })
}

fn seccomp_type(v: &Value) -> Option<&str> {
    v.pointer("/securityContext/seccompProfile/type")
        .and_then(Value::as_str)
}

/// `pod must not set …` / `containers "a", "b" must not set …` for an `Unconfined` seccomp.
fn seccomp_unconfined(spec: &Value) -> Vec<String> {
    let mut details = Vec::new();
    if seccomp_type(spec) == Some("Unconfined") {
        details.push(
            "pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string(),
        );
    }
    let bad: Vec<String> = containers(spec)
        .filter(|(_, c)| seccomp_type(c) == Some("Unconfined"))
        .map(|(n, _)| n.to_string())
        .collect();
    if !bad.is_empty() {
        details.push(format!(
            "{} {} must not set securityContext.seccompProfile.type to \"Unconfined\"",
            pluralize("container", "containers", bad.len()),
            join_quote(&bad)
        ));
    }
    details
}

fn seccomp_baseline(_: &Value, spec: &Value) -> Option<(String, String)> {
    let d = seccomp_unconfined(spec);
    (!d.is_empty()).then(|| ("seccompProfile".into(), d.join("; ")))
}

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

fn sysctls(_: &Value, spec: &Value) -> Option<(String, String)> {
    let bad: Vec<&str> = spec
        .pointer("/securityContext/sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .collect();
    (!bad.is_empty()).then(|| ("forbidden sysctls".into(), bad.join(", ")))
}

fn windows_host_process(_: &Value, spec: &Value) -> Option<(String, String)> {
    let host = |v: &Value| {
        v.pointer("/securityContext/windowsOptions/hostProcess")
            .and_then(Value::as_bool)
            == Some(true)
    };
    let bad: Vec<String> = containers(spec)
        .filter(|(_, c)| host(c))
        .map(|(n, _)| n.to_string())
        .collect();
    let mut who = Vec::new();
    if host(spec) {
        who.push("pod".to_string());
    }
    if !bad.is_empty() {
        who.push(format!(
            "{} {}",
            pluralize("container", "containers", bad.len()),
            join_quote(&bad)
        ));
    }
    (!who.is_empty()).then(|| {
        (
            "hostProcess".into(),
            format!(
                "{} must not set securityContext.windowsOptions.hostProcess=true",
                who.join(" and ")
            ),
        )
    })
}

fn allow_privilege_escalation(_: &Value, spec: &Value) -> Option<(String, String)> {
    let bad: Vec<String> = containers(spec)
        .filter(|(_, c)| sc(c, "allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false))
        .map(|(n, _)| n.to_string())
        .collect();
    (!bad.is_empty()).then(|| {
        (
            "allowPrivilegeEscalation != false".into(),
            format!(
                "{} {} must set securityContext.allowPrivilegeEscalation=false",
                pluralize("container", "containers", bad.len()),
                join_quote(&bad)
            ),
        )
    })
}

fn capabilities_restricted(_: &Value, spec: &Value) -> Option<(String, String)> {
    let no_drop_all: Vec<String> = containers(spec)
        .filter(|(_, c)| {
            !c.pointer("/securityContext/capabilities/drop")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|x| x == "ALL"))
        })
        .map(|(n, _)| n.to_string())
        .collect();
    let (bad, caps) = added_outside(spec, &["NET_BIND_SERVICE"]);
    let mut details = Vec::new();
    if !no_drop_all.is_empty() {
        details.push(format!(
            "{} {} must set securityContext.capabilities.drop=[\"ALL\"]",
            pluralize("container", "containers", no_drop_all.len()),
            join_quote(&no_drop_all)
        ));
    }
    if !bad.is_empty() {
        details.push(must_not_include(&bad, &caps));
    }
    (!details.is_empty()).then(|| ("unrestricted capabilities".into(), details.join("; ")))
}

const RESTRICTED_VOLUME_SOURCES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn restricted_volumes(_: &Value, spec: &Value) -> Option<(String, String)> {
    let bad = volumes_where(spec, |v| {
        let m = v.as_object()?;
        m.iter()
            .find(|(k, val)| {
                k.as_str() != "name"
                    && !val.is_null()
                    && !RESTRICTED_VOLUME_SOURCES.contains(&k.as_str())
            })
            .map(|(k, _)| k.clone())
    });
    (!bad.is_empty()).then(|| {
        let names: Vec<&String> = bad.iter().map(|(n, _)| n).collect();
        let types: BTreeSet<&String> = bad.iter().map(|(_, t)| t).collect();
        let types: Vec<&String> = types.into_iter().collect();
        (
            "restricted volume types".into(),
            format!(
                "{} {} {} {} {}",
                pluralize("volume", "volumes", names.len()),
                join_quote(&names),
                pluralize("uses", "use", names.len()),
                pluralize(
                    "restricted volume type",
                    "restricted volume types",
                    types.len()
                ),
                join_quote(&types)
            ),
        )
    })
}

fn run_as_non_root(_: &Value, spec: &Value) -> Option<(String, String)> {
    let pod = sc(spec, "runAsNonRoot").and_then(Value::as_bool);
    let mut details = Vec::new();
    if pod == Some(false) {
        details.push("pod must not set securityContext.runAsNonRoot=false".to_string());
    }
    let explicit_false = containers_where(spec, "runAsNonRoot", |v| v.as_bool() == Some(false));
    if !explicit_false.is_empty() {
        details.push(format!(
            "{} {} must not set securityContext.runAsNonRoot=false",
            pluralize("container", "containers", explicit_false.len()),
            join_quote(&explicit_false)
        ));
    }
    if pod != Some(true) {
        let unset: Vec<String> = containers(spec)
            .filter(|(_, c)| sc(c, "runAsNonRoot").and_then(Value::as_bool).is_none())
            .map(|(n, _)| n.to_string())
            .collect();
        if !unset.is_empty() {
            details.push(format!(
                "pod or {} {} must set securityContext.runAsNonRoot=true",
                pluralize("container", "containers", unset.len()),
                join_quote(&unset)
            ));
        }
    }
    (!details.is_empty()).then(|| ("runAsNonRoot != true".into(), details.join("; ")))
}

fn run_as_user(_: &Value, spec: &Value) -> Option<(String, String)> {
    let mut details = Vec::new();
    if sc(spec, "runAsUser").and_then(Value::as_i64) == Some(0) {
        details.push("pod must not set runAsUser=0".to_string());
    }
    let bad = containers_where(spec, "runAsUser", |v| v.as_i64() == Some(0));
    if !bad.is_empty() {
        details.push(format!(
            "{} {} must not set runAsUser=0",
            pluralize("container", "containers", bad.len()),
            join_quote(&bad)
        ));
    }
    (!details.is_empty()).then(|| ("runAsUser=0".into(), details.join("; ")))
}

fn seccomp_restricted(_: &Value, spec: &Value) -> Option<(String, String)> {
    let mut details = seccomp_unconfined(spec);
    let valid = |t: Option<&str>| matches!(t, Some("RuntimeDefault" | "Localhost"));
    if !valid(seccomp_type(spec)) {
        let unset: Vec<String> = containers(spec)
            .filter(|(_, c)| seccomp_type(c).is_none())
            .map(|(n, _)| n.to_string())
            .collect();
        if !unset.is_empty() {
            details.push(format!(
                "pod or {} {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                pluralize("container", "containers", unset.len()),
                join_quote(&unset)
            ));
        }
    }
    (!details.is_empty()).then(|| ("seccompProfile".into(), details.join("; ")))
}

#[cfg(test)]
#[path = "pod_security_tests.rs"]
mod tests;
