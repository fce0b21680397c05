//! The Helm chart, checked where no cluster runs: every rendered object
//! parses into its `k8s-openapi` type with no unknown fields, and the real
//! operator started exactly as the rendered Deployment starts it — its args,
//! its env, the chart's ServiceAccount identity — reconciles every example to
//! Ready against cluster-sim enforcing the chart's RBAC, with no denial, both
//! namespaced (the default: Roles in the listed namespaces) and with
//! `clusterScope` (one ClusterRole).

mod chart_support;
mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chart_support::{check_typed, container_process, helm, helm_template, id_of, split_documents};
use cluster_sim::{ClusterSim, ClusterSimOptions};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{pinned_kind, Scope};
use kube::Client;
use parking_lot::Mutex;
use serde_json::{json, Value};
use support::{client_for, condition_of, eventually, example, example_names, sim_options};
use tokio::io::{AsyncBufReadExt, BufReader};

const RELEASE_NS: &str = "sluice-system";
const EXAMPLES_NS: &str = "default";
const POD_NAME: &str = "sluice-operator-7d9f8b6c4d-x2x7q";
const READY_PATIENCE: Duration = Duration::from_secs(60);
const ALL_ON_VALUES: &str = "helm/sluice/ci/all-on-values.yaml";
const CLUSTER_SCOPE_VALUES: &str = "helm/sluice/ci/cluster-scope-values.yaml";

/// Renders with `crds/` included, as `helm install` installs it.
fn render(values: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let docs = split_documents(&helm_template(values, true)?)?;
    ensure!(!docs.is_empty(), "nothing rendered");
    Ok(docs)
}

#[test]
fn every_rendered_object_parses_into_its_k8s_openapi_type_with_no_unknown_fields() {
    let mut failures = Vec::new();
    for values in [None, Some(ALL_ON_VALUES), Some(CLUSTER_SCOPE_VALUES)] {
        let docs = render(values).unwrap_or_else(|e| panic!("{values:?}: {e:#}"));
        let kinds: Vec<String> = docs.iter().map(id_of).collect();
        for kind in ["Deployment", "ServiceAccount", "CustomResourceDefinition"] {
            assert!(
                docs.iter().any(|d| d["kind"] == kind),
                "{values:?}: no {kind} in {kinds:?}"
            );
        }
        if values == Some(ALL_ON_VALUES) {
            assert!(
                docs.iter().any(|d| d["kind"] == "ServiceMonitor"
                    && d["apiVersion"] == "monitoring.coreos.com/v1"),
                "all-on values render no monitoring.coreos.com/v1 ServiceMonitor: {kinds:?}"
            );
        }
        for d in &docs {
            if let Err(e) = check_typed(d) {
                failures.push(format!("values {values:?}: {e:#}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn gvk_of(o: &Value) -> anyhow::Result<GroupVersionKind> {
    let api_version = o["apiVersion"].as_str().context("no apiVersion")?;
    let kind = o["kind"].as_str().context("no kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Ok(GroupVersionKind::gvk(group, version, kind))
}

/// `kubectl apply --server-side --force-conflicts` of one object.
async fn apply(client: &Client, o: &Value, default_ns: &str) -> anyhow::Result<()> {
    let (ar, caps) = pinned_kind(client, &gvk_of(o)?)
        .await
        .with_context(|| format!("discovering {}", id_of(o)))?;
    let name = o["metadata"]["name"].as_str().context("no name")?;
    let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
        let ns = o["metadata"]["namespace"].as_str().unwrap_or(default_ns);
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    api.patch(
        name,
        &PatchParams::apply("chart-test").force(),
        &Patch::Apply(o),
    )
    .await
    .with_context(|| format!("applying {}", id_of(o)))?;
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

struct Process {
    child: tokio::process::Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- sluice-operator log ----");
            for l in self.logs.lock().iter() {
                eprintln!("{l}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_as_the_chart_runs_it_by_default_reconciles_every_example_in_a_listed_namespace_with_its_roles(
) -> anyhow::Result<()> {
    // The default watches only the release namespace: the examples' namespace
    // is listed, as a user running pipelines outside it would.
    let values = tempfile::NamedTempFile::new()?;
    std::fs::write(values.path(), format!("watchNamespaces: [{EXAMPLES_NS}]\n"))?;
    let docs = render(Some(values.path().to_str().context("temp path")?))?;
    ensure!(
        !docs.iter().any(|d| d["kind"] == "ClusterRoleBinding"),
        "the default values bind a ClusterRole"
    );
    reconciles_every_example_with_the_charts_rbac(docs).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_as_the_chart_runs_it_with_cluster_scope_reconciles_every_example_with_its_cluster_role(
) -> anyhow::Result<()> {
    let docs = render(Some(CLUSTER_SCOPE_VALUES))?;
    ensure!(
        docs.iter().any(|d| d["kind"] == "ClusterRoleBinding"),
        "clusterScope binds no ClusterRole"
    );
    reconciles_every_example_with_the_charts_rbac(docs).await
}

/// Installs `docs` (a render with `crds/`) in a fresh cluster-sim enforcing
/// RBAC, starts the operator as the rendered Deployment would, and waits for
/// every example in [`EXAMPLES_NS`] to be Ready with no request of the
/// operator denied.
async fn reconciles_every_example_with_the_charts_rbac(docs: Vec<Value>) -> anyhow::Result<()> {
    let started = Instant::now();
    let sim = ClusterSim::start_with(ClusterSimOptions {
        rbac: true,
        ..sim_options()
    })
    .await
    .context("starting cluster-sim")?;
    let admin = client_for(sim.kubeconfig_path()).await?;

    // CRD first, then the release namespace, then the rest in chart order.
    let (crds, rest): (Vec<&Value>, Vec<&Value>) = docs
        .iter()
        .partition(|d| d["kind"] == "CustomResourceDefinition");
    let names: Vec<&str> = crds
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    ensure!(
        names == ["deadletteractions.sluice.dev", "streampipelines.sluice.dev"],
        "expected the two CRDs, got {names:?}"
    );
    for o in &crds {
        apply(&admin, o, RELEASE_NS).await?;
    }
    for name in names {
        eventually("the CRDs Established", Duration::from_secs(10), || async {
            let crd = sim
                .get_object(
                    "apiextensions.k8s.io/v1",
                    "CustomResourceDefinition",
                    None,
                    name,
                )
                .ok()??;
            crd["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
                .then_some(())
        })
        .await?;
    }
    apply(
        &admin,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE_NS}}),
        RELEASE_NS,
    )
    .await?;
    for o in &rest {
        apply(&admin, o, RELEASE_NS).await?;
    }

    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .context("no Deployment rendered")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let sa = pod["serviceAccountName"]
        .as_str()
        .context("the operator pod names no ServiceAccount")?;
    ensure!(
        docs.iter()
            .any(|d| d["kind"] == "ServiceAccount" && d["metadata"]["name"] == sa),
        "the pod's ServiceAccount {sa} is not rendered by the chart"
    );
    let container = pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "operator"))
        .context("no container `operator`")?;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let (args, env) = container_process(container, RELEASE_NS, POD_NAME, &metrics_addr)?;
    eprintln!("operator args: {args:?}\noperator env: {env:?}");

    let kubeconfig = sim.service_account_kubeconfig(RELEASE_NS, sa)?;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice-operator"));
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("KUBECONFIG", &kubeconfig)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting sluice-operator")?;
    let logs = Arc::new(Mutex::new(Vec::new()));
    for stream in [
        Box::new(child.stdout.take().context("no stdout")?)
            as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().context("no stderr")?),
    ] {
        let logs = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                logs.lock().push(line);
            }
        });
    }
    let mut op = Process { child, logs };

    // The readiness probe's endpoint, on the (moved) metrics port.
    let readyz = format!("http://{metrics_addr}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = op.child.try_wait() {
            bail!("sluice-operator exited before /readyz answered: {status}");
        }
        if let Ok(r) = reqwest::get(&readyz).await {
            if r.status().is_success() {
                break;
            }
        }
        ensure!(
            Instant::now() < deadline,
            "the operator's /readyz did not answer 200 within 20s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for name in example_names() {
        apply(&admin, &example(&name), EXAMPLES_NS).await?;
    }
    for name in example_names() {
        let t = Instant::now();
        eventually(
            &format!("StreamPipeline {EXAMPLES_NS}/{name} Ready=True at its generation"),
            READY_PATIENCE,
            || async {
                let p = sim
                    .get_object(
                        "sluice.dev/v1alpha1",
                        "StreamPipeline",
                        Some(EXAMPLES_NS),
                        &name,
                    )
                    .ok()??;
                let current = p["metadata"]["generation"] == p["status"]["observedGeneration"];
                let ready = condition_of(&p, "Ready")?.0 == "True";
                (current && ready).then_some(())
            },
        )
        .await
        .map_err(|e| {
            let p = sim
                .get_object(
                    "sluice.dev/v1alpha1",
                    "StreamPipeline",
                    Some(EXAMPLES_NS),
                    &name,
                )
                .ok()
                .flatten();
            e.context(format!(
                "last status: {:#}",
                p.map(|p| p["status"].clone()).unwrap_or_default()
            ))
        })?;
        eprintln!("{name}: Ready after {:?}", t.elapsed());
    }

    let user = format!("system:serviceaccount:{RELEASE_NS}:{sa}");
    let decisions: Vec<_> = sim
        .authz_decisions()
        .into_iter()
        .filter(|d| d.user == user)
        .collect();
    ensure!(
        !decisions.is_empty(),
        "no authorization decisions recorded for {user}"
    );
    let denied: Vec<String> = decisions
        .iter()
        .filter(|d| !d.allowed)
        .map(|d| format!("{:?}: {}", d.attributes, d.reason))
        .collect();
    ensure!(
        denied.is_empty(),
        "the chart's RBAC denied the operator:\n{}",
        denied.join("\n")
    );
    if let Ok(Some(status)) = op.child.try_wait() {
        bail!("sluice-operator exited: {status}");
    }
    helm_test_passes(&sim, &docs).await?;
    let _ = op.child.kill().await;
    eprintln!(
        "{} decisions for {user}, none denied; total {:?}",
        decisions.len(),
        started.elapsed()
    );
    Ok(())
}

/// The chart's `helm test` pod, run as its container would run: the
/// operator binary with the pod's arguments and its ServiceAccount's
/// token, under the stand-in's RBAC. It must pass, and fail (bounded) for a
/// Deployment that is not there.
async fn helm_test_passes(
    sim: &cluster_sim::ClusterSimHandle,
    docs: &[Value],
) -> anyhow::Result<()> {
    let pod = docs
        .iter()
        .find(|d| d["kind"] == "Pod" && d["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .context("no helm test pod rendered")?;
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .context("the test pod names no ServiceAccount")?;
    let args: Vec<String> = pod["spec"]["containers"][0]["args"]
        .as_array()
        .context("the test pod has no args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let kubeconfig = sim.service_account_kubeconfig(RELEASE_NS, sa)?;
    let run = |args: Vec<String>| {
        let kubeconfig = kubeconfig.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(150),
                tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice-operator"))
                    .env_clear()
                    .env("KUBECONFIG", &kubeconfig)
                    .args(&args)
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .context("sluice-operator check did not end")?
            .context("running sluice-operator check")
        }
    };
    let out = run(args.clone()).await?;
    ensure!(
        out.status.success(),
        "helm test failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    ensure!(
        report.starts_with("ok: deployment sluice-system/sluice-operator available"),
        "{report}"
    );
    let mut wrong: Vec<String> = args
        .into_iter()
        .filter(|a| !a.starts_with("--deployment=") && !a.starts_with("--timeout="))
        .collect();
    wrong.extend(["--deployment=nothing-here".into(), "--timeout=3s".into()]);
    let out = run(wrong).await?;
    ensure!(
        out.status.code() == Some(1),
        "a check of a missing Deployment passed: {out:?}"
    );
    let why = String::from_utf8_lossy(&out.stderr);
    ensure!(
        why.contains("not ready after 3s") && why.contains("nothing-here"),
        "{why}"
    );
    Ok(())
}

fn helm_against(
    kubeconfig: &Path,
    home: &Path,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    std::process::Command::new(helm()?)
        .current_dir(chart_support::workspace_root())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .context("running helm")
}

/// Helm (client-go) sends no bearer token to a plain-HTTP server (clientcmd
/// reads a kubeconfig's credentials only for TLS), so against the stand-in it
/// is `system:anonymous`: refused in RBAC mode, allowed otherwise. These
/// tests therefore run the stand-in without RBAC.
async fn helm_installed() -> anyhow::Result<(cluster_sim::ClusterSimHandle, tempfile::TempDir)> {
    let sim = ClusterSim::start_with(sim_options())
        .await
        .context("starting cluster-sim")?;
    let home = tempfile::tempdir()?;
    let out = helm_against(
        sim.kubeconfig_path(),
        home.path(),
        &[
            "install",
            "sluice",
            "helm/sluice",
            "-n",
            RELEASE_NS,
            "--create-namespace",
        ],
    )?;
    ensure!(
        out.status.success(),
        "helm install failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (api_version, kind, ns, name) in [
        (
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
            "streampipelines.sluice.dev",
        ),
        ("apps/v1", "Deployment", Some(RELEASE_NS), "sluice-operator"),
        ("v1", "ServiceAccount", Some(RELEASE_NS), "sluice-operator"),
        (
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            Some(RELEASE_NS),
            "sluice-operator",
        ),
        (
            "v1",
            "Secret",
            Some(RELEASE_NS),
            "sh.helm.release.v1.sluice.v1",
        ),
    ] {
        ensure!(
            sim.get_object(api_version, kind, ns, name)?.is_some(),
            "{kind} {name} not installed"
        );
    }
    // Namespaced by default: nothing grants the operator anything cluster-wide.
    ensure!(
        sim.get_object(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            None,
            "sluice-operator"
        )?
        .is_none(),
        "the default install bound a ClusterRole to the operator"
    );
    Ok((sim, home))
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_install_against_the_stand_in() -> anyhow::Result<()> {
    helm_installed().await.map(drop)
}

#[tokio::test(flavor = "multi_thread")]

async fn helm_install_and_uninstall_against_the_stand_in() -> anyhow::Result<()> {
    let (sim, home) = helm_installed().await?;
    let out = helm_against(
        sim.kubeconfig_path(),
        home.path(),
        &["uninstall", "sluice", "-n", RELEASE_NS],
    )?;
    ensure!(
        out.status.success(),
        "helm uninstall failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (api_version, kind, ns, name) in [
        ("apps/v1", "Deployment", Some(RELEASE_NS), "sluice-operator"),
        ("v1", "ServiceAccount", Some(RELEASE_NS), "sluice-operator"),
        (
            "v1",
            "Secret",
            Some(RELEASE_NS),
            "sh.helm.release.v1.sluice.v1",
        ),
    ] {
        ensure!(
            sim.get_object(api_version, kind, ns, name)?.is_none(),
            "{kind} {name} survived helm uninstall"
        );
    }
    ensure!(
        sim.get_object(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
            "streampipelines.sluice.dev"
        )?
        .is_some(),
        "helm uninstall deleted the CRD (it is kept: helm.sh/resource-policy: keep)"
    );
    Ok(())
}

/// `helm upgrade` to a chart whose CRD changed upgrades the CRD: the chart
/// renders it as a template, not from `crds/` (which Helm never upgrades).
#[tokio::test(flavor = "multi_thread")]
async fn helm_upgrade_upgrades_the_crd_against_the_stand_in() -> anyhow::Result<()> {
    let (sim, home) = helm_installed().await?;
    let crd = |sim: &cluster_sim::ClusterSimHandle| {
        sim.get_object(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
            "streampipelines.sluice.dev",
        )
    };
    let columns = |crd: &Value| -> Vec<String> {
        crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = crd(&sim)?.context("the CRD is installed")?;
    ensure!(
        before["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep",
        "the CRD is not kept on uninstall: {}",
        before["metadata"]
    );
    ensure!(!columns(&before).contains(&"Generation".to_string()));
    // The next chart: this one with one more printer column in its CRD.
    let next = tempfile::tempdir()?;
    let chart = next.path().join("sluice");
    let root = chart_support::workspace_root();
    copy_dir(&root.join("helm/sluice"), &chart)?;
    let file = chart.join("files/streampipeline.yaml");
    let text = std::fs::read_to_string(&file)?;
    let changed = text.replacen(
        "  - additionalPrinterColumns:\n",
        "  - additionalPrinterColumns:\n    - jsonPath: .metadata.generation\n      name: Generation\n      type: integer\n",
        1,
    );
    ensure!(
        changed != text,
        "no printer columns to add to in {}",
        file.display()
    );
    std::fs::write(&file, changed)?;
    let chart_arg = chart.to_string_lossy().to_string();
    let out = helm_against(
        sim.kubeconfig_path(),
        home.path(),
        &[
            "upgrade",
            "sluice",
            &chart_arg,
            "-n",
            RELEASE_NS,
            "--reuse-values",
        ],
    )?;
    ensure!(
        out.status.success(),
        "helm upgrade failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let after = crd(&sim)?.context("the CRD is still there")?;
    ensure!(
        columns(&after).contains(&"Generation".to_string()),
        "helm upgrade did not upgrade the CRD: columns {:?}",
        columns(&after)
    );
    Ok(())
}

/// Copies a directory tree (the chart) file by file.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
