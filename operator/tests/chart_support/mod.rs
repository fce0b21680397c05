//! Helpers of `tests/chart.rs`: rendering the Helm chart, splitting and
//! round-tripping the rendered objects through their `k8s-openapi` types,
//! and turning the rendered operator container into a process.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};
use serde_json::Value;

/// The workspace root (the chart, the examples and `scripts/` live there).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator crate inside the workspace")
        .to_path_buf()
}

fn runs(program: &Path) -> bool {
    Command::new(program)
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `helm` from `PATH`, else `.tools/bin/helm`, else installed there by
/// `scripts/lib/k8s-tools.sh`'s `ensure_k8s_tools`.
pub fn helm() -> anyhow::Result<PathBuf> {
    if runs(Path::new("helm")) {
        return Ok(PathBuf::from("helm"));
    }
    let local = workspace_root().join(".tools/bin/helm");
    if !runs(&local) {
        let out = Command::new("bash")
            .args(["-c", ". scripts/lib/k8s-tools.sh && ensure_k8s_tools"])
            .current_dir(workspace_root())
            .output()
            .context("running ensure_k8s_tools")?;
        ensure!(
            out.status.success() && runs(&local),
            "helm is not installed and ensure_k8s_tools could not install it: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(local)
}

/// `helm template sluice helm/sluice --namespace sluice-system [--include-crds] [-f values]`.
pub fn helm_template(values: Option<&str>, include_crds: bool) -> anyhow::Result<String> {
    let mut cmd = Command::new(helm()?);
    cmd.current_dir(workspace_root()).args([
        "template",
        "sluice",
        "helm/sluice",
        "--namespace",
        "sluice-system",
    ]);
    if include_crds {
        cmd.arg("--include-crds");
    }
    if let Some(v) = values {
        cmd.args(["-f", v]);
    }
    let out = cmd.output().context("running helm template")?;
    ensure!(
        out.status.success(),
        "helm template ({values:?}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Every non-empty YAML document of `text`, as JSON.
pub fn split_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).context("YAML stream")?;
    let mut out = Vec::new();
    for v in docs {
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// `v` without `null` map entries (a `null` is "not set" to every API type).
pub fn drop_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), drop_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(drop_nulls).collect()),
        other => other.clone(),
    }
}

/// Paths where `original` has something `round_tripped` lost or changed.
pub fn lost_fields(original: &Value, round_tripped: &Value, path: &str, out: &mut Vec<String>) {
    match (original, round_tripped) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    None => out.push(format!("{p}: unknown field (dropped by the typed struct)")),
                    Some(w) => lost_fields(v, w, &p, out),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                out.push(format!("{path}: {} items became {}", a.len(), b.len()));
            }
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                lost_fields(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        // `minimum: 0` is `0.0` in the typed struct (an f64): the same number.
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

fn round_trip<T>(v: &Value) -> anyhow::Result<Value>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_json::from_value(v.clone())?;
    Ok(drop_nulls(&serde_json::to_value(typed)?))
}

/// `Kind/name` of a rendered object.
pub fn id_of(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Parses `o` into its `k8s-openapi` type and back; errors name every field
/// the typed struct does not know (or changed).
pub fn check_typed(o: &Value) -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    let original = drop_nulls(o);
    let api_version = o["apiVersion"].as_str().unwrap_or("");
    let kind = o["kind"].as_str().unwrap_or("");
    let back = match (api_version, kind) {
        ("apps/v1", "Deployment") => round_trip::<Deployment>(&original),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(&original),
        ("v1", "Service") => round_trip::<Service>(&original),
        // The `helm test` hook.
        ("v1", "Pod") => round_trip::<k8s_openapi::api::core::v1::Pod>(&original),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(&original),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(&original)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(&original),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(&original),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(&original)
        }
        ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            // A prometheus-operator type: no k8s-openapi struct; shape only.
            ensure!(o.is_object(), "ServiceMonitor is not a mapping");
            ensure!(
                o["metadata"]["name"].is_string() && o["spec"].is_object(),
                "ServiceMonitor without metadata.name or spec"
            );
            return Ok(());
        }
        _ => bail!("unexpected kind {api_version} {kind} in the chart"),
    }
    .with_context(|| format!("{} does not parse as {api_version} {kind}", id_of(o)))?;
    let mut lost = Vec::new();
    lost_fields(&original, &back, "", &mut lost);
    ensure!(
        lost.is_empty(),
        "{} ({api_version}) does not round-trip through k8s-openapi:\n  {}",
        id_of(o),
        lost.join("\n  ")
    );
    Ok(())
}

/// Kubernetes' `$(VAR)` expansion of container args (`$$` escapes, unknown
/// variables stay as written).
pub fn expand(arg: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(') {
            match r.find(')') {
                Some(j) => {
                    let name = &r[..j];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => out.push_str(&format!("$({name})")),
                    }
                    rest = &r[j + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = r;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A container environment: `(name, value)` in order.
pub type Env = Vec<(String, String)>;

/// The process the kubelet would start for `container` of a pod `pod_name`
/// in `namespace`: its env (fieldRefs resolved) and args (`$(VAR)`
/// expanded), with only the metrics listen address moved to `metrics_addr`.
pub fn container_process(
    container: &Value,
    namespace: &str,
    pod_name: &str,
    metrics_addr: &str,
) -> anyhow::Result<(Vec<String>, Env)> {
    ensure!(
        container["command"].is_null(),
        "the chart sets a command; the test runs the binary with args only"
    );
    let mut env = Vec::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().context("env entry without name")?;
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if e["value"].is_null() && e["valueFrom"].is_null() {
            String::new()
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.namespace" => namespace.to_string(),
                "metadata.name" => pod_name.to_string(),
                other => bail!("env {name}: fieldRef {other} not resolved by the test"),
            }
        } else {
            bail!("env {name}: unsupported source {e}")
        };
        env.push((name.to_string(), value));
    }
    ensure!(
        container["envFrom"].is_null(),
        "envFrom not resolved by the test"
    );
    let mut args = Vec::new();
    let mut rewritten = 0;
    let raw: Vec<String> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a.as_str().map(str::to_string).context("non-string arg"))
        .collect::<anyhow::Result<_>>()?;
    let mut i = 0;
    while i < raw.len() {
        let a = expand(&raw[i], &env);
        let is_listen = |v: &str| {
            v.strip_prefix("[::]:")
                .or_else(|| v.strip_prefix("0.0.0.0:"))
                .or_else(|| v.strip_prefix(':'))
                .is_some_and(|p| p.parse::<u16>().is_ok())
        };
        if let Some(v) = a.strip_prefix("--metrics-addr=") {
            ensure!(
                is_listen(v),
                "--metrics-addr={v} is not [::]:PORT, 0.0.0.0:PORT or :PORT"
            );
            args.push(format!("--metrics-addr={metrics_addr}"));
            rewritten += 1;
        } else if a == "--metrics-addr" && i + 1 < raw.len() {
            let v = expand(&raw[i + 1], &env);
            ensure!(
                is_listen(&v),
                "--metrics-addr {v} is not [::]:PORT, 0.0.0.0:PORT or :PORT"
            );
            args.push(a);
            args.push(metrics_addr.to_string());
            rewritten += 1;
            i += 1;
        } else {
            args.push(a);
        }
        i += 1;
    }
    ensure!(
        rewritten == 1,
        "expected exactly one --metrics-addr in {raw:?}"
    );
    Ok((args, env))
}
