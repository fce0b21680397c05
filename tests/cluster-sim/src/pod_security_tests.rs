//! Tests of `pod_security`: each check's wording, upstream's order and overrides, the levels.

use serde_json::{json, Value};

use super::*;

fn restricted_container(name: &str) -> Value {
    json!({"name": name, "image": "i", "securityContext": {
        "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}})
}

fn eval(level: Level, spec: Value) -> Option<String> {
    evaluate(level, &json!({}), &spec)
}

#[test]
fn a_bare_container_breaks_restricted_with_upstreams_message() {
    let spec = json!({"containers": [{"name": "nginx", "image": "nginx"}]});
    assert_eq!(
        violation(
            &LevelVersion {
                level: Level::Restricted,
                version: "latest".into()
            },
            &json!({}),
            &spec
        )
        .unwrap(),
        "violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"nginx\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"nginx\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"nginx\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"nginx\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    assert_eq!(eval(Level::Baseline, spec.clone()), None);
    assert_eq!(eval(Level::Privileged, spec), None);
}

#[test]
fn baseline_checks_come_first_and_restricted_ones_override_theirs() {
    let spec = json!({
        "containers": [{"name": "app", "image": "i", "securityContext": {"privileged": true}}],
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}]
    });
    assert_eq!(
        eval(Level::Restricted, spec.clone()).unwrap(),
        "privileged (container \"app\" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container \"app\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"app\" must set securityContext.capabilities.drop=[\"ALL\"]), restricted volume types (volume \"host\" uses restricted volume type \"hostPath\"), runAsNonRoot != true (pod or container \"app\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"app\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    assert_eq!(
        eval(Level::Baseline, spec).unwrap(),
        "hostPath volumes (volume \"host\"), privileged (container \"app\" must not set securityContext.privileged=true)"
    );
}

#[test]
fn a_compliant_pod_passes_restricted_in_every_container_kind() {
    let spec = json!({
        "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"},
            "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}]},
        "initContainers": [restricted_container("init")],
        "containers": [restricted_container("a"), {"name": "b", "image": "i", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
        "volumes": [{"name": "d", "emptyDir": {}}, {"name": "c", "configMap": {"name": "x"}}, {"name": "s", "secret": {"secretName": "x"}},
            {"name": "p", "persistentVolumeClaim": {"claimName": "x"}}, {"name": "pr", "projected": {"sources": []}}]
    });
    assert_eq!(eval(Level::Restricted, spec), None);
}

#[test]
fn each_baseline_check_reports_as_upstream() {
    let cases = [
        (json!({"hostNetwork": true, "hostPID": true, "containers": []}), "host namespaces (hostNetwork=true, hostPID=true)"),
        (json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}]}, {"name": "b", "ports": [{"containerPort": 81, "hostPort": 443}]}]}),
            "hostPort (containers \"a\", \"b\" use hostPorts 443, 8080)"),
        (json!({"containers": [{"name": "a", "securityContext": {"capabilities": {"add": ["NET_ADMIN", "CHOWN"]}}}]}),
            "non-default capabilities (container \"a\" must not include \"NET_ADMIN\" in securityContext.capabilities.add)"),
        (json!({"containers": [{"name": "a", "securityContext": {"procMount": "Unmasked"}}]}),
            "procMount (container \"a\" must not set securityContext.procMount to \"Unmasked\")"),
        (json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}, "containers": []}),
            "seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")"),
        (json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}, "containers": []}),
            "forbidden sysctls (kernel.msgmax)"),
        (json!({"securityContext": {"seLinuxOptions": {"type": "spc_t"}}, "containers": []}),
            "seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: type \"spc_t\")"),
        (json!({"containers": [{"name": "a", "securityContext": {"appArmorProfile": {"type": "Unconfined"}}}]}),
            "forbidden AppArmor profile (container \"a\" \"Unconfined\")"),
        (json!({"ephemeralContainers": [{"name": "debug", "securityContext": {"privileged": true}}], "containers": []}),
            "privileged (container \"debug\" must not set securityContext.privileged=true)"),
    ];
    for (spec, want) in cases {
        assert_eq!(
            eval(Level::Baseline, spec.clone()).as_deref(),
            Some(want),
            "{spec}"
        );
    }
}

#[test]
fn each_restricted_check_reports_as_upstream() {
    let ok = |extra: Value| {
        let mut c = restricted_container("a");
        if let (Some(sc), Some(x)) = (c["securityContext"].as_object_mut(), extra.as_object()) {
            sc.extend(x.clone());
        }
        json!({"containers": [c]})
    };
    let cases = [
        (ok(json!({"runAsUser": 0})), "runAsUser=0 (container \"a\" must not set runAsUser=0)"),
        (ok(json!({"runAsNonRoot": false})), "runAsNonRoot != true (container \"a\" must not set securityContext.runAsNonRoot=false)"),
        (ok(json!({"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}})),
            "unrestricted capabilities (container \"a\" must not include \"SYS_ADMIN\" in securityContext.capabilities.add)"),
        (ok(json!({"seccompProfile": {"type": "Unconfined"}})),
            "seccompProfile (container \"a\" must not set securityContext.seccompProfile.type to \"Unconfined\")"),
    ];
    for (spec, want) in cases {
        assert_eq!(
            eval(Level::Restricted, spec.clone()).as_deref(),
            Some(want),
            "{spec}"
        );
    }
    let mut nfs = ok(json!({}));
    nfs["volumes"] = json!([{"name": "n", "nfs": {"server": "s", "path": "/"}}, {"name": "g", "gitRepo": {"repository": "r"}}]);
    assert_eq!(
        eval(Level::Restricted, nfs).as_deref(),
        Some("restricted volume types (volumes \"n\", \"g\" use restricted volume types \"gitRepo\", \"nfs\")")
    );
    // the pod level covers containers that set nothing
    let pod_level = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "Localhost", "localhostProfile": "p"}},
        "containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]});
    assert_eq!(eval(Level::Restricted, pod_level), None);
}

#[test]
fn namespace_labels_give_the_policy() {
    let mut st = State::new(16);
    let ns = |labels: Value| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n", "labels": labels}});
    let key = ObjKey {
        group: String::new(),
        resource: "namespaces".into(),
        namespace: String::new(),
        name: "n".into(),
    };
    st.objects.insert(
        key.clone(),
        ns(json!({"pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/enforce-version": "v1.30",
            "pod-security.kubernetes.io/warn": "restricted"})),
    );
    let p = policy(&st, "n");
    assert_eq!(p.enforce.to_string(), "baseline:v1.30");
    assert_eq!(p.warn.to_string(), "restricted:latest");
    st.objects.insert(
        key,
        ns(json!({"pod-security.kubernetes.io/enforce": "bogus", "pod-security.kubernetes.io/warn": "bogus"})),
    );
    let p = policy(&st, "n");
    assert_eq!(
        (p.enforce.level, p.warn.level),
        (Level::Restricted, Level::Privileged)
    );
    assert_eq!(policy(&st, "absent").enforce.level, Level::Privileged);
}
