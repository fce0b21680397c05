//! Pod Security admission over HTTP: a Pod breaking the namespace's `enforce` level is a 403
//! with upstream's message, a compliant one is created; a workload is never refused (a
//! `warn` level earns a `Warning` header), but its pods are: the Deployment shows
//! `ReplicaFailure` and no ready replica, a StatefulSet does not progress and gets a
//! `FailedCreate` event, until the template is fixed or the label removed.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{eventually, start};
use crate::validation::send;

const PATIENCE: Duration = Duration::from_secs(10);

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn restricted_labels(warn: bool) -> Value {
    let mut l = json!({"pod-security.kubernetes.io/enforce": "restricted"});
    if warn {
        l["pod-security.kubernetes.io/warn"] = json!("restricted");
    }
    l
}

fn compliant_container() -> Value {
    json!({"name": "web", "image": "nginx", "securityContext": {
        "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}})
}

fn privileged_container() -> Value {
    json!({"name": "web", "image": "nginx", "securityContext": {"privileged": true}})
}

fn workload(kind: &str, container: Value) -> Value {
    let mut spec = json!({"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}}});
    if kind == "StatefulSet" {
        spec["serviceName"] = json!("web");
    }
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "web"}, "spec": spec})
}

const PRIVILEGED_DETAIL: &str = "privileged (container \"web\" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container \"web\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"web\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"web\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"web\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")";

#[tokio::test]
async fn pods_breaking_the_enforce_level_are_refused_and_compliant_ones_created(
) -> anyhow::Result<()> {
    let (sim, _client) = start().await?;
    sim.put_object(namespace("secure", restricted_labels(false)))?;
    let url = format!("{}/api/v1/namespaces/secure/pods", sim.url());
    let pod = |name: &str, c: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [c]}})
            .to_string()
    };
    let bad = json!({"name": "nginx", "image": "nginx"});
    let a = send(
        Method::POST,
        url.clone(),
        "application/json",
        pod("bad", bad),
    )
    .await?;
    assert_eq!(a.code, 403, "{}", a.body);
    assert_eq!(a.body["reason"], "Forbidden");
    assert_eq!(
        a.body["message"],
        "pods \"bad\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"nginx\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"nginx\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"nginx\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"nginx\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    assert!(sim
        .get_object("v1", "Pod", Some("secure"), "bad")?
        .is_none());
    let a = send(
        Method::POST,
        url,
        "application/json",
        pod("good", compliant_container()),
    )
    .await?;
    assert_eq!((a.code, a.warnings.len()), (201, 0), "{}", a.body);

    // baseline lets the plain container in, not the privileged one
    sim.put_object(namespace(
        "base",
        json!({"pod-security.kubernetes.io/enforce": "baseline"}),
    ))?;
    let url = format!("{}/api/v1/namespaces/base/pods", sim.url());
    let a = send(
        Method::POST,
        url.clone(),
        "application/json",
        pod("plain", json!({"name": "c", "image": "i"})),
    )
    .await?;
    assert_eq!(a.code, 201, "{}", a.body);
    let a = send(
        Method::POST,
        url,
        "application/json",
        pod("priv", privileged_container()),
    )
    .await?;
    assert_eq!(a.code, 403, "{}", a.body);
    assert_eq!(a.body["message"], "pods \"priv\" is forbidden: violates PodSecurity \"baseline:latest\": privileged (container \"web\" must not set securityContext.privileged=true)");
    sim.shutdown().await;
    Ok(())
}

fn condition<'a>(obj: &'a Value, t: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

#[tokio::test]
async fn a_workload_whose_pods_are_refused_reports_replica_failure_until_fixed(
) -> anyhow::Result<()> {
    let (sim, _client) = start().await?;
    sim.put_object(namespace("secure", restricted_labels(true)))?;
    let base = format!("{}/apis/apps/v1/namespaces/secure/deployments", sim.url());
    let a = send(
        Method::POST,
        base.clone(),
        "application/json",
        workload("Deployment", privileged_container()).to_string(),
    )
    .await?;
    assert_eq!(a.code, 201, "workloads are never refused: {}", a.body);
    assert_eq!(
        a.warnings,
        vec![format!(
            "299 - \"would violate PodSecurity \\\"restricted:latest\\\": {}\"",
            PRIVILEGED_DETAIL.replace('"', "\\\"")
        )]
    );
    let get = || sim.get_object("apps/v1", "Deployment", Some("secure"), "web");
    let failed = eventually("ReplicaFailure on the Deployment", PATIENCE, || async {
        let d = get().ok()??;
        condition(&d, "ReplicaFailure").is_some().then_some(d)
    })
    .await?;
    let cond = condition(&failed, "ReplicaFailure").unwrap();
    assert_eq!(
        (&cond["status"], &cond["reason"]),
        (&json!("True"), &json!("FailedCreate"))
    );
    let message = cond["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("pods \"web-"), "{message}");
    assert!(
        message.ends_with(&format!(
            "\" is forbidden: violates PodSecurity \"restricted:latest\": {PRIVILEGED_DETAIL}"
        )),
        "{message}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = get()?.unwrap();
    assert_eq!(d["status"].get("readyReplicas"), None, "{}", d["status"]);
    assert_eq!(condition(&d, "Available").unwrap()["status"], "False");
    let rss = sim.list_objects("apps/v1", "ReplicaSet", Some("secure"))?;
    assert_eq!(rss.len(), 1);
    assert_eq!(
        condition(&rss[0], "ReplicaFailure").unwrap()["message"],
        json!(message)
    );
    let events = sim.list_objects("v1", "Event", Some("secure"))?;
    assert!(
        events.iter().any(|e| e["reason"] == "FailedCreate"
            && e["involvedObject"]["kind"] == "ReplicaSet"
            && e["message"] == format!("Error creating: {message}")),
        "{events:?}"
    );

    // a compliant template rolls out and the failure goes away
    let a = send(
        Method::PUT,
        format!("{base}/web"),
        "application/json",
        workload("Deployment", compliant_container()).to_string(),
    )
    .await?;
    assert_eq!((a.code, a.warnings.len()), (200, 0), "{}", a.body);
    eventually("the fixed Deployment ready", PATIENCE, || async {
        let d = get().ok()??;
        (d["status"]["readyReplicas"] == 2 && condition(&d, "ReplicaFailure").is_none())
            .then_some(())
    })
    .await?;

    // enforce alone: the workload gets no warning (only warn and audit apply to workloads)
    sim.put_object(namespace("quiet", restricted_labels(false)))?;
    let a = send(
        Method::POST,
        format!("{}/apis/apps/v1/namespaces/quiet/statefulsets", sim.url()),
        "application/json",
        workload("StatefulSet", privileged_container()).to_string(),
    )
    .await?;
    assert_eq!((a.code, a.warnings.len()), (201, 0), "{}", a.body);
    let event = eventually(
        "a FailedCreate event on the StatefulSet",
        PATIENCE,
        || async {
            sim.list_objects("v1", "Event", Some("quiet"))
                .ok()?
                .into_iter()
                .find(|e| e["involvedObject"]["kind"] == "StatefulSet")
        },
    )
    .await?;
    assert_eq!(event["reason"], "FailedCreate");
    assert_eq!(event["type"], "Warning");
    assert!(event["message"]
        .as_str()
        .unwrap_or_default()
        .starts_with("create Pod web-0 in StatefulSet web failed error: pods \"web-0\" is forbidden: violates PodSecurity \"restricted:latest\": privileged"));
    let sts = sim
        .get_object("apps/v1", "StatefulSet", Some("quiet"), "web")?
        .unwrap();
    assert_eq!(
        sts["status"].get("readyReplicas"),
        Some(&json!(0)),
        "{}",
        sts["status"]
    );
    // the label goes: the pods are admitted
    sim.put_object(namespace("quiet", json!({})))?;
    eventually("the StatefulSet ready", PATIENCE, || async {
        let s = sim
            .get_object("apps/v1", "StatefulSet", Some("quiet"), "web")
            .ok()??;
        (s["status"]["readyReplicas"] == 2).then_some(())
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}
