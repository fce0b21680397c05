//! The real `kubectl` through the written kubeconfig: server-side apply of a CRD and a custom
//! resource, `get -o yaml`, `get --watch` seeing a later change, `delete` collecting dependents.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::ResourceExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::common::start;

/// kubectl from PATH (the machines have it at /usr/bin/kubectl).
const KUBECTL: &str = "kubectl";

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wd]}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string}
"#;

const CR: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1, namespace: default}
spec: {size: 3, color: red}
"#;

/// A kubectl command for `kubeconfig`, with its discovery cache next to the kubeconfig so a
/// later simulator on a reused port never sees another test's cached API groups.
pub(crate) fn command(kubeconfig: &Path) -> Command {
    let mut c = Command::new(KUBECTL);
    let cache = kubeconfig.with_extension("kube-cache");
    c.env("KUBECONFIG", kubeconfig)
        .env("KUBECACHEDIR", cache)
        .kill_on_drop(true);
    c
}

async fn kubectl(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        command(kubeconfig).args(args).output(),
    )
    .await
    .with_context(|| format!("kubectl {args:?} timed out"))?
    .with_context(|| format!("running kubectl {args:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(
        out.status.success(),
        "kubectl {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[tokio::test]
async fn kubectl_applies_gets_watches_and_deletes_with_dependents_collected() -> anyhow::Result<()>
{
    let (sim, client) = start().await?;
    let kc = sim.kubeconfig_path().to_path_buf();
    let dir = tempfile::tempdir()?;
    let crd = dir.path().join("crd.yaml");
    let cr = dir.path().join("cr.yaml");
    std::fs::write(&crd, CRD)?;
    std::fs::write(&cr, CR)?;

    let out = kubectl(
        &kc,
        &[
            "apply",
            "--server-side",
            "-f",
            crd.to_str().context("utf-8 path")?,
        ],
    )
    .await?;
    assert!(out.contains("serverside-applied"), "{out}");
    let out = kubectl(
        &kc,
        &[
            "apply",
            "--server-side",
            "-f",
            cr.to_str().context("utf-8 path")?,
        ],
    )
    .await?;
    assert!(
        out.contains("widget.example.com/w1 serverside-applied"),
        "{out}"
    );

    let yaml = kubectl(&kc, &["get", "widget", "w1", "-o", "yaml"]).await?;
    let obj: serde_json::Value = serde_saphyr::from_str(&yaml)?;
    assert_eq!(obj["spec"], json!({"size": 3, "color": "red"}), "{yaml}");
    assert_eq!(obj["kind"], "Widget");

    // a watching kubectl sees a change made afterwards
    let mut watch = command(&kc)
        .args([
            "get",
            "widgets",
            "--watch",
            "-o",
            "jsonpath={.spec.size}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(watch.stdout.take().context("piped stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("kubectl --watch printed the initial state")??;
    assert_eq!(first.as_deref(), Some("3"));
    kubectl(
        &kc,
        &[
            "patch",
            "widget",
            "w1",
            "--type=merge",
            "-p",
            r#"{"spec":{"size":5}}"#,
        ],
    )
    .await?;
    let next = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("kubectl --watch printed the change")??;
    assert_eq!(next.as_deref(), Some("5"));
    watch.kill().await?;

    // a dependent of the widget is collected with it
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widget = Api::<DynamicObject>::namespaced_with(client.clone(), "default", &ar)
        .get("w1")
        .await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let dep: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "w1-dep", "ownerReferences": [{
            "apiVersion": "example.com/v1", "kind": "Widget", "name": "w1", "uid": widget.uid(), "blockOwnerDeletion": true, "controller": true
        }]}}),
    )?;
    cms.create(&PostParams::default(), &dep).await?;
    let out = kubectl(&kc, &["delete", "widget", "w1", "--cascade=foreground"]).await?;
    assert!(out.contains("deleted"), "{out}");
    assert!(
        cms.get_opt("w1-dep").await?.is_none(),
        "foreground delete returned only after the dependent was gone"
    );
    let none = kubectl(&kc, &["get", "widgets", "-o", "name"]).await?;
    assert_eq!(none.trim(), "", "no widgets left");
    // keep SSA ownership visible to kubectl as well
    let owned = Api::<ConfigMap>::namespaced(client, "default")
        .patch("plain", &PatchParams::apply("test"), &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "plain"}, "data": {"a": "1"}})))
        .await?;
    let yaml = kubectl(
        &kc,
        &[
            "get",
            "configmap",
            "plain",
            "-o",
            "yaml",
            "--show-managed-fields",
        ],
    )
    .await?;
    assert!(
        yaml.contains("manager: test") && owned.managed_fields().len() == 1,
        "{yaml}"
    );
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn kubectl_typed_generators_for_namespaces_configmaps_and_secrets_work() -> anyhow::Result<()>
{
    let (sim, client) = start().await?;
    let kc = sim.kubeconfig_path().to_path_buf();
    kubectl(&kc, &["create", "namespace", "demo"]).await?;
    kubectl(
        &kc,
        &[
            "-n",
            "demo",
            "create",
            "configmap",
            "c",
            "--from-literal=a=b",
        ],
    )
    .await?;
    kubectl(
        &kc,
        &[
            "-n",
            "demo",
            "create",
            "secret",
            "generic",
            "s",
            "--from-literal=pw=x",
        ],
    )
    .await?;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "demo")
        .get("c")
        .await?;
    assert_eq!(
        cm.data.and_then(|d| d.get("a").cloned()).as_deref(),
        Some("b")
    );
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client, "demo")
        .get("s")
        .await?;
    let pw = secret.data.and_then(|d| d.get("pw").cloned()).map(|b| b.0);
    assert_eq!(pw.as_deref(), Some(&b"x"[..]));
    sim.shutdown().await;
    Ok(())
}
