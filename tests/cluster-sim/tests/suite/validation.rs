//! Built-in objects decoded against their types over HTTP: wrong types are a 400 whatever
//! `fieldValidation` says, unknown fields follow it (Strict → 400, Warn (default) → dropped
//! with a `Warning` header, Ignore → dropped), patches report on field `patch`, a server-side
//! apply types its body first; and the real kubectl, which asks for `Strict`.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use crate::common::start;

pub(crate) struct Answer {
    pub code: u16,
    pub warnings: Vec<String>,
    pub body: Value,
}

pub(crate) async fn send(
    method: reqwest::Method,
    url: String,
    content_type: &str,
    body: String,
) -> anyhow::Result<Answer> {
    let resp = reqwest::Client::new()
        .request(method, url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await?;
    let code = resp.status().as_u16();
    let warnings = resp
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
        .collect();
    let body = resp.json().await?;
    Ok(Answer {
        code,
        warnings,
        body,
    })
}

fn deployment(name: &str, container: Value) -> Value {
    let mut c = json!({"name": "web", "image": "nginx"});
    if let (Some(c), Some(x)) = (c.as_object_mut(), container.as_object()) {
        c.extend(x.clone());
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [c]}}}
    })
}

const TYPO: &str = "spec.template.spec.containers[0].imagePullPolicyy";

#[tokio::test]
async fn wrong_types_and_unknown_fields_of_built_in_objects_are_handled_as_upstream(
) -> anyhow::Result<()> {
    let (sim, _client) = start().await?;
    let base = format!("{}/apis/apps/v1/namespaces/default/deployments", sim.url());
    let post = |query: &str, obj: Value| {
        send(
            reqwest::Method::POST,
            format!("{base}{query}"),
            "application/json",
            obj.to_string(),
        )
    };

    // a wrong type is a 400 even when unknown fields would be ignored
    let mut bad = deployment("bad", json!({}));
    bad["spec"]["replicas"] = json!("three");
    let a = post("?fieldValidation=Ignore", bad).await?;
    assert_eq!(a.code, 400, "{}", a.body);
    assert_eq!(a.body["reason"], "BadRequest");
    assert_eq!(
        a.body["message"],
        "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"
    );

    let typo = json!({"imagePullPolicyy": "Always"});
    let a = post(
        "?fieldValidation=Strict",
        deployment("strict", typo.clone()),
    )
    .await?;
    assert_eq!(a.code, 400, "{}", a.body);
    assert_eq!(
        a.body["message"],
        format!("Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"{TYPO}\"")
    );
    assert!(sim
        .get_object("apps/v1", "Deployment", Some("default"), "strict")?
        .is_none());

    // no parameter: Warn
    let a = post("", deployment("warned", typo.clone())).await?;
    assert_eq!(a.code, 201, "{}", a.body);
    assert_eq!(
        a.warnings,
        vec![format!(r#"299 - "unknown field \"{TYPO}\"""#)]
    );
    assert!(a.body["spec"]["template"]["spec"]["containers"][0]
        .get("imagePullPolicyy")
        .is_none());
    let stored = sim
        .get_object("apps/v1", "Deployment", Some("default"), "warned")?
        .context("stored")?;
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0],
        json!({"name": "web", "image": "nginx"})
    );

    let a = post(
        "?fieldValidation=Ignore",
        deployment("ignored", typo.clone()),
    )
    .await?;
    assert_eq!((a.code, a.warnings.len()), (201, 0), "{}", a.body);

    // a merge patch: the patched object is decoded, failures are reported on field `patch`
    let url = format!("{base}/warned");
    let patch = json!({"spec": {"paused": "yes"}}).to_string();
    let a = send(
        reqwest::Method::PATCH,
        url.clone(),
        "application/merge-patch+json",
        patch,
    )
    .await?;
    assert_eq!(a.code, 422, "{}", a.body);
    assert_eq!(a.body["details"]["causes"][0]["field"], "patch");
    assert!(a.body["message"].as_str().unwrap_or_default().ends_with(
        "json: cannot unmarshal string into Go struct field DeploymentSpec.spec.paused of type bool"
    ));
    let patch = json!({"spec": {"bogus": 1}}).to_string();
    let a = send(
        reqwest::Method::PATCH,
        format!("{url}?fieldValidation=Strict"),
        "application/merge-patch+json",
        patch.clone(),
    )
    .await?;
    assert_eq!(a.code, 422, "{}", a.body);
    assert!(a.body["message"]
        .as_str()
        .unwrap_or_default()
        .ends_with("strict decoding error: unknown field \"spec.bogus\""));
    let a = send(
        reqwest::Method::PATCH,
        url.clone(),
        "application/merge-patch+json",
        patch,
    )
    .await?;
    assert_eq!(a.code, 200, "{}", a.body);
    assert_eq!(a.warnings, vec![r#"299 - "unknown field \"spec.bogus\"""#]);

    // server-side apply types its body first: an unknown field is a 500, whatever
    // fieldValidation says
    let a = send(
        reqwest::Method::PATCH,
        format!("{url}?fieldManager=t&fieldValidation=Ignore"),
        "application/apply-patch+yaml",
        deployment("warned", typo).to_string(),
    )
    .await?;
    assert_eq!(a.code, 500, "{}", a.body);
    assert_eq!(
        a.body["message"],
        "failed to create typed patch object (default/warned; apps/v1, Kind=Deployment): .spec.template.spec.containers[name=\"web\"].imagePullPolicyy: field not declared in schema"
    );
    let a = send(
        reqwest::Method::PATCH,
        format!("{url}?fieldManager=t"),
        "application/apply-patch+yaml",
        deployment("warned", json!({"imagePullPolicy": "Always"})).to_string(),
    )
    .await?;
    assert_eq!((a.code, a.warnings.len()), (200, 0), "{}", a.body);

    let a = post("?fieldValidation=strict", deployment("x", json!({}))).await?;
    assert_eq!(a.code, 422, "{}", a.body);
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unknown_fields_of_custom_resources_are_pruned_with_a_warning_by_default(
) -> anyhow::Result<()> {
    let (sim, _client) = start().await?;
    sim.put_object(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.sim.example.com"},
        "spec": {"group": "sim.example.com", "scope": "Namespaced",
            "names": {"kind": "Thing", "plural": "things"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}
    }))?;
    let a = send(
        reqwest::Method::POST,
        format!("{}/apis/sim.example.com/v1/namespaces/default/things", sim.url()),
        "application/json",
        json!({"apiVersion": "sim.example.com/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": {"size": 1, "colour": "red"}}).to_string(),
    )
    .await?;
    assert_eq!(a.code, 201, "{}", a.body);
    assert_eq!(a.warnings, vec![r#"299 - "unknown field \"spec.colour\"""#]);
    assert_eq!(a.body["spec"], json!({"size": 1}));
    sim.shutdown().await;
    Ok(())
}

/// kubectl validates on the server (`fieldValidation=Strict`): a typo in a manifest is refused
/// with the server's message, for a client-side and a server-side apply alike; a correct
/// manifest applies.
#[tokio::test]
async fn kubectl_apply_of_a_manifest_with_a_typo_is_refused() -> anyhow::Result<()> {
    let (sim, _client) = start().await?;
    let kc = sim.kubeconfig_path().to_path_buf();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("deploy.json");
    let path = file.to_str().context("utf-8 path")?.to_string();
    let run = |args: Vec<String>| {
        let kc = kc.clone();
        async move {
            let out = tokio::time::timeout(
                Duration::from_secs(20),
                crate::kubectl::command(&kc)
                    .args(&args)
                    .stdin(Stdio::null())
                    .output(),
            )
            .await
            .context("kubectl timed out")??;
            Ok::<_, anyhow::Error>((
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ))
        }
    };
    std::fs::write(
        &file,
        deployment("typo", json!({"imagePullPolicyy": "Always"})).to_string(),
    )?;
    let (ok, out) = run(vec!["apply".into(), "-f".into(), path.clone()]).await?;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("strict decoding error: unknown field \"{TYPO}\"")),
        "{out}"
    );
    let (ok, out) = run(vec![
        "apply".into(),
        "--server-side".into(),
        "-f".into(),
        path.clone(),
    ])
    .await?;
    assert!(!ok, "{out}");
    assert!(out.contains("field not declared in schema"), "{out}");
    std::fs::write(&file, deployment("typo", json!({})).to_string())?;
    let (ok, out) = run(vec!["apply".into(), "-f".into(), path]).await?;
    assert!(ok, "{out}");
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn downward_resource_fields_are_checked_and_their_divisors_stored_canonically(
) -> anyhow::Result<()> {
    let (sim, _client) = start().await?;
    let base = format!("{}/apis/apps/v1/namespaces/default/deployments", sim.url());
    let post = |name: &str, resource: &str, divisor: &str| {
        let env = json!({"env": [{"name": "N", "valueFrom": {"resourceFieldRef": {"resource": resource, "divisor": divisor}}}]});
        send(
            reqwest::Method::POST,
            base.clone(),
            "application/json",
            deployment(name, env).to_string(),
        )
    };
    const AT: &str = "spec.template.spec.containers[0].env[0].valueFrom.resourceFieldRef";

    let a = post("cpu", "requests.cpu", "1000m").await?;
    assert_eq!(a.code, 201, "{}", a.body);
    let stored = sim
        .get_object("apps/v1", "Deployment", Some("default"), "cpu")?
        .context("stored")?;
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]
            ["resourceFieldRef"]["divisor"],
        "1",
        "a divisor is a quantity, stored in canonical form"
    );
    let a = post("memory", "limits.memory", "1Mi").await?;
    assert_eq!(a.code, 201, "{}", a.body);
    let a = post("pages", "limits.hugepages-2Mi", "1").await?;
    assert_eq!(a.code, 201, "{}", a.body);

    // Refused with 422, the cause naming the field, upstream's message.
    let refused = |a: &Answer, field: &str, message: &str| {
        assert_eq!(a.code, 422, "{}", a.body);
        assert_eq!(
            a.body["details"]["causes"][0]["field"],
            format!("{AT}.{field}"),
            "{}",
            a.body
        );
        assert!(
            a.body["message"]
                .as_str()
                .unwrap_or_default()
                .ends_with(&format!("{AT}.{field}: {message}")),
            "{}",
            a.body
        );
    };
    const BYTES: &str = "only divisor's values 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei are supported with the";
    refused(
        &post("gpu", "requests.gpu", "1").await?,
        "resource",
        "Unsupported value: \"requests.gpu\": supported values: \"limits.cpu\", \"limits.ephemeral-storage\", \"limits.memory\", \"requests.cpu\", \"requests.ephemeral-storage\", \"requests.memory\"",
    );
    refused(
        &post("mebi", "requests.cpu", "1Mi").await?,
        "divisor",
        "Invalid value: \"requests.cpu\": only divisor's values 1m and 1 are supported with the cpu resource",
    );
    refused(
        &post("milli", "limits.memory", "1m").await?,
        "divisor",
        &format!("Invalid value: \"limits.memory\": {BYTES} memory resource"),
    );
    refused(
        &post("pages-milli", "limits.hugepages-2Mi", "1m").await?,
        "divisor",
        &format!("Invalid value: \"limits.hugepages-2Mi\": {BYTES} hugepages resource"),
    );
    for name in ["gpu", "mebi", "milli", "pages-milli"] {
        assert!(sim
            .get_object("apps/v1", "Deployment", Some("default"), name)?
            .is_none());
    }
    sim.shutdown().await;
    Ok(())
}
