//! RBAC mode: a ServiceAccount token bound to a Role lacking a verb gets 403 for that verb and
//! success for the rest; decisions are recorded.

use cluster_sim::ClusterSimOptions;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::common::{api_code, client_for, start_with};

#[tokio::test]
async fn a_role_without_a_verb_gets_403_for_it_and_success_for_the_rest() -> anyhow::Result<()> {
    let (sim, admin) = start_with(ClusterSimOptions {
        rbac: true,
        ..Default::default()
    })
    .await?;
    let roles: Api<kube::api::DynamicObject> = Api::namespaced_with(
        admin.clone(),
        "default",
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", "Role"),
            "roles",
        ),
    );
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "op"},
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
            {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"], "resourceNames": ["web"]}
        ]
    });
    roles
        .patch("op", &PatchParams::apply("test"), &Patch::Apply(role))
        .await?;
    let bindings: Api<kube::api::DynamicObject> = Api::namespaced_with(
        admin.clone(),
        "default",
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", "RoleBinding"),
            "rolebindings",
        ),
    );
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "op"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "op"},
        "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": "default"}]
    });
    bindings
        .patch("op", &PatchParams::apply("test"), &Patch::Apply(binding))
        .await?;
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    Api::<Deployment>::namespaced(admin.clone(), "default")
        .patch("web", &PatchParams::apply("test"), &Patch::Apply(deploy))
        .await?;

    let sa = client_for(&sim.service_account_kubeconfig("default", "operator")?).await?;
    let cms: Api<ConfigMap> = Api::namespaced(sa.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"a": "1"}}))?;
    cms.create(&PostParams::default(), &cm).await?;
    cms.get("c").await?;
    cms.list(&ListParams::default()).await?;
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await?;
    let denied = cms
        .delete("c", &DeleteParams::default())
        .await
        .expect_err("delete is not granted");
    assert_eq!(api_code(&denied), Some(403), "{denied}");
    assert!(
        denied
            .to_string()
            .contains("cannot delete resource \"configmaps\""),
        "{denied}"
    );

    let deployments: Api<Deployment> = Api::namespaced(sa, "default");
    deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await?;
    let get = deployments
        .get("web")
        .await
        .expect_err("get on deployments is not granted");
    assert_eq!(api_code(&get), Some(403));

    let decisions = sim.authz_decisions();
    let denied: Vec<_> = decisions
        .iter()
        .filter(|d| !d.allowed)
        .map(|d| d.attributes.verb.clone())
        .collect();
    assert_eq!(
        denied,
        ["delete", "get"],
        "exactly the two ungranted requests were refused"
    );
    assert!(decisions
        .iter()
        .all(|d| d.user == "system:serviceaccount:default:operator"));
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn aggregated_cluster_roles_bound_cluster_wide_grant_their_parts() -> anyhow::Result<()> {
    use kube::core::{ApiResource, GroupVersionKind};
    let (sim, admin) = start_with(ClusterSimOptions {
        rbac: true,
        ..Default::default()
    })
    .await?;
    let ar = |kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind),
            plural,
        )
    };
    let roles: Api<kube::api::DynamicObject> =
        Api::all_with(admin.clone(), &ar("ClusterRole", "clusterroles"));
    let bindings: Api<kube::api::DynamicObject> = Api::all_with(
        admin.clone(),
        &ar("ClusterRoleBinding", "clusterrolebindings"),
    );
    roles
        .patch("agg", &PatchParams::apply("t"), &Patch::Apply(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "agg"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"sim/aggregate": "true"}}]}, "rules": []
        })))
        .await?;
    roles
        .patch(
            "part",
            &PatchParams::apply("t"),
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "part", "labels": {"sim/aggregate": "true"}},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
            })),
        )
        .await?;
    bindings
        .patch("agg", &PatchParams::apply("t"), &Patch::Apply(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "agg"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "agg"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "kube-system"}]
        })))
        .await?;
    Api::<ConfigMap>::namespaced(admin, "kube-public")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}}))?,
        )
        .await?;
    let sa = client_for(&sim.service_account_kubeconfig("kube-system", "reader")?).await?;
    let cms: Api<ConfigMap> = Api::namespaced(sa, "kube-public");
    cms.get("x").await?;
    let err = cms
        .list(&ListParams::default())
        .await
        .expect_err("list not granted");
    assert_eq!(api_code(&err), Some(403));
    let allowed = sim
        .authz_decisions()
        .into_iter()
        .find(|d| d.allowed)
        .map(|d| d.reason)
        .unwrap_or_default();
    assert!(allowed.contains("ClusterRoleBinding \"agg\""), "{allowed}");
    sim.shutdown().await;
    Ok(())
}
