//! Server-side apply, as a table: each case is a sequence of applies by named managers and a
//! check of the final object (or the expected refusal of a step).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::common::{api_code, start};

struct Step {
    manager: &'static str,
    force: bool,
    body: Value,
    /// `Some(code)` when this step must be refused.
    refused: Option<u16>,
}

fn step(manager: &'static str, body: Value) -> Step {
    Step {
        manager,
        force: false,
        body,
        refused: None,
    }
}

fn deploy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec})
}

fn pod_spec(containers: Value) -> Value {
    json!({"replicas": 1, "selector": {"matchLabels": {"app": "x"}},
           "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": containers}}})
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
    check: fn(&Value) -> Result<(), String>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "a field the manager applied before and now omits is removed",
            steps: vec![
                step(
                    "op",
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "omit", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}}),
                ),
                step(
                    "op",
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "omit", "labels": {"a": "1"}}, "data": {"x": "1"}}),
                ),
            ],
            check: |o| {
                (o["data"] == json!({"x": "1"}) && o["metadata"]["labels"] == json!({"a": "1"}))
                    .then_some(())
                    .ok_or(format!("expected y and b removed: {o}"))
            },
        },
        Case {
            name: "an omitted field another manager also owns is kept",
            steps: vec![
                step(
                    "op",
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"x": "1"}}),
                ),
                step(
                    "other",
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"x": "1"}}),
                ),
                step(
                    "op",
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {}}),
                ),
            ],
            check: |o| {
                (o["data"]["x"] == "1")
                    .then_some(())
                    .ok_or(format!("x must survive: {o}"))
            },
        },
        Case {
            name: "a field owned by another manager with a different value conflicts unless forced",
            steps: vec![
                step(
                    "op",
                    deploy("conflict", pod_spec(json!([{"name": "c", "image": "one"}]))),
                ),
                Step {
                    refused: Some(409),
                    ..step(
                        "scaler",
                        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "conflict"}, "spec": {"replicas": 5}}),
                    )
                },
                Step {
                    force: true,
                    ..step(
                        "scaler",
                        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "conflict"}, "spec": {"replicas": 5}}),
                    )
                },
                // op no longer owns replicas, so applying without it leaves the scaler's value
                step(
                    "op",
                    deploy("conflict", {
                        let mut s = pod_spec(json!([{"name": "c", "image": "two"}]));
                        s.as_object_mut().map(|m| m.remove("replicas"));
                        s
                    }),
                ),
            ],
            check: |o| {
                let image = &o["spec"]["template"]["spec"]["containers"][0]["image"];
                (o["spec"]["replicas"] == 5 && image == "two")
                    .then_some(())
                    .ok_or(format!("replicas 5 (forced) and image two expected: {o}"))
            },
        },
        Case {
            name: "containers and env merge by name across managers",
            steps: vec![
                step(
                    "op",
                    deploy(
                        "merge",
                        pod_spec(
                            json!([{"name": "a", "image": "a", "env": [{"name": "X", "value": "1"}]}]),
                        ),
                    ),
                ),
                step(
                    "sidecar",
                    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "merge"},
                    "spec": {"template": {"spec": {"containers": [
                        {"name": "a", "env": [{"name": "Y", "value": "2"}]},
                        {"name": "b", "image": "b"}]}}}}),
                ),
            ],
            check: |o| {
                let cs = &o["spec"]["template"]["spec"]["containers"];
                let names: Vec<&str> = cs
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                let env = &cs[0]["env"];
                (names == ["a", "b"]
                    && env == &json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}])
                    && cs[0]["image"] == "a")
                    .then_some(())
                    .ok_or(format!("containers a,b with env X,Y expected: {cs}"))
            },
        },
        Case {
            name: "a keyed item (container, env var) the manager stops applying is removed whole",
            steps: vec![
                step(
                    "op",
                    deploy(
                        "drop-item",
                        pod_spec(json!([
                            {"name": "a", "image": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}, {"name": "Z", "value": "3"}]},
                            {"name": "b", "image": "b", "ports": [{"containerPort": 80}, {"containerPort": 81}]},
                            {"name": "c", "image": "c"}])),
                    ),
                ),
                step(
                    "op",
                    deploy(
                        "drop-item",
                        pod_spec(json!([
                            {"name": "a", "image": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
                            {"name": "b", "image": "b", "ports": [{"containerPort": 80}]}])),
                    ),
                ),
            ],
            check: |o| {
                let cs = &o["spec"]["template"]["spec"]["containers"];
                let want = json!([
                    {"name": "a", "image": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
                    {"name": "b", "image": "b", "ports": [{"containerPort": 80}]}]);
                let stripped: Vec<Value> = cs
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let mut c = c.clone();
                        if let Some(m) = c.as_object_mut() {
                            m.retain(|k, _| {
                                ["name", "image", "env", "ports"].contains(&k.as_str())
                            });
                            // whether `protocol` is defaulted is not what this case checks
                            for p in m
                                .get_mut("ports")
                                .and_then(Value::as_array_mut)
                                .into_iter()
                                .flatten()
                            {
                                p.as_object_mut().map(|p| p.remove("protocol"));
                            }
                        }
                        c
                    })
                    .collect();
                (Value::Array(stripped) == want)
                    .then_some(())
                    .ok_or(format!(
                        "container c, env Z and port 81 must be gone entirely: {cs}"
                    ))
            },
        },
        Case {
            name: "a dropped keyed item another manager owns a field of stays, with its key",
            steps: vec![
                step(
                    "op",
                    deploy(
                        "keep-item",
                        pod_spec(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}])),
                    ),
                ),
                step(
                    "sidecar",
                    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "keep-item"},
                    "spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b", "env": [{"name": "S", "value": "1"}]}]}}}}),
                ),
                step(
                    "op",
                    deploy("keep-item", pod_spec(json!([{"name": "a", "image": "a"}]))),
                ),
            ],
            check: |o| {
                let cs = &o["spec"]["template"]["spec"]["containers"];
                let b = cs
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["name"] == "b");
                match b {
                    Some(b)
                        if b["image"] == "b"
                            && b["env"] == json!([{"name": "S", "value": "1"}])
                            && cs.as_array().map(Vec::len) == Some(2) =>
                    {
                        Ok(())
                    }
                    _ => Err(format!(
                        "container b must stay with the sidecar's image, env and name: {cs}"
                    )),
                }
            },
        },
        Case {
            name: "an apply body without kind or apiVersion, or of another version, is refused",
            steps: vec![
                Step {
                    refused: Some(400),
                    ..step(
                        "op",
                        json!({"apiVersion": "v1", "metadata": {"name": "untyped"}, "data": {"x": "1"}}),
                    )
                },
                Step {
                    refused: Some(400),
                    ..step(
                        "op",
                        json!({"kind": "ConfigMap", "metadata": {"name": "untyped"}, "data": {"x": "1"}}),
                    )
                },
                Step {
                    refused: Some(400),
                    ..step(
                        "op",
                        json!({"apiVersion": "v2", "kind": "ConfigMap", "metadata": {"name": "untyped"}, "data": {"x": "1"}}),
                    )
                },
            ],
            check: |o| match o {
                Value::Null => Ok(()),
                other => Err(format!("nothing is stored: {other}")),
            },
        },
    ]
}

#[tokio::test]
async fn server_side_apply_table() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for case in cases() {
        let mut last = Value::Null;
        for (i, s) in case.steps.iter().enumerate() {
            let name = s.body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mut pp = PatchParams::apply(s.manager);
            pp.force = s.force;
            let res = if s.body["kind"] == "Deployment" {
                deployments
                    .patch(&name, &pp, &Patch::Apply(&s.body))
                    .await
                    .map(|d| serde_json::to_value(d).unwrap_or_default())
            } else {
                cms.patch(&name, &pp, &Patch::Apply(&s.body))
                    .await
                    .map(|c| serde_json::to_value(c).unwrap_or_default())
            };
            match (res, s.refused) {
                (Ok(v), None) => last = v,
                (Err(e), Some(code)) => {
                    assert_eq!(
                        api_code(&e),
                        Some(code),
                        "{}: step {i} refused with the wrong code: {e}",
                        case.name
                    );
                    if code == 409 {
                        assert!(
                            e.to_string().contains(".spec.replicas"),
                            "{}: conflict names the field: {e}",
                            case.name
                        );
                    }
                }
                (Ok(v), Some(code)) => panic!(
                    "{}: step {i} should be refused with {code}, got {v}",
                    case.name
                ),
                (Err(e), None) => panic!("{}: step {i} failed: {e}", case.name),
            }
        }
        if let Err(msg) = (case.check)(&last) {
            panic!("{}: {msg}", case.name);
        }
    }
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_apply_that_changes_nothing_keeps_resource_version_and_emits_no_event(
) -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "same"}, "data": {"a": "1"}});
    let first = cms
        .patch("same", &PatchParams::apply("op"), &Patch::Apply(&body))
        .await?;
    let rv_global = sim.resource_version();
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new managedFields time would differ
    let second = cms
        .patch("same", &PatchParams::apply("op"), &Patch::Apply(&body))
        .await?;
    assert_eq!(first.resource_version(), second.resource_version());
    assert_eq!(sim.resource_version(), rv_global, "nothing was committed");
    let mf = second.metadata.managed_fields.unwrap_or_default();
    assert_eq!(mf.len(), 1, "one manager entry");
    assert_eq!(mf[0].manager.as_deref(), Some("op"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn status_apply_changes_only_status_and_spec_changes_bump_generation() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let d = deployments
        .patch(
            "gen",
            &PatchParams::apply("op"),
            &Patch::Apply(deploy(
                "gen",
                pod_spec(json!([{"name": "c", "image": "one"}])),
            )),
        )
        .await?;
    assert_eq!(d.metadata.generation, Some(1));
    let labelled = deployments
        .patch(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"l": "v"}}})),
        )
        .await?;
    assert_eq!(
        labelled.metadata.generation,
        Some(1),
        "metadata changes do not bump generation"
    );
    // a status write that also tries to change spec: only status lands
    let st = deployments
        .patch_status(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 9}, "status": {"observedGeneration": 42}})),
        )
        .await?;
    assert_eq!(
        st.spec.as_ref().and_then(|s| s.replicas),
        Some(1),
        "status writes never change spec"
    );
    assert_eq!(
        st.metadata.generation,
        Some(1),
        "status writes never bump generation"
    );
    assert_eq!(
        st.status.as_ref().and_then(|s| s.observed_generation),
        Some(42)
    );
    let spec = deployments
        .patch(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}, "status": {"replicas": 77}})),
        )
        .await?;
    assert_eq!(
        spec.metadata.generation,
        Some(2),
        "spec changes bump generation"
    );
    assert_ne!(
        spec.status.as_ref().and_then(|s| s.replicas),
        Some(77),
        "main-resource writes never change status"
    );

    // the autoscaler owns replicas through /scale under its own manager
    let scale = json!({"spec": {"replicas": 4}});
    deployments
        .patch_scale(
            "gen",
            &PatchParams {
                field_manager: Some("autoscaler".into()),
                ..Default::default()
            },
            &Patch::Merge(&scale),
        )
        .await?;
    let after = deployments.get("gen").await?;
    let owners: Vec<(String, String)> = after
        .managed_fields()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.subresource.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        owners.contains(&("autoscaler".into(), "scale".into())),
        "{owners:?}"
    );
    assert_eq!(after.spec.and_then(|s| s.replicas), Some(4));
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn custom_resource_status_apply_and_scale_subresource() -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{DynamicObject, PostParams};
    use kube::core::{ApiResource, GroupVersionKind};

    let (sim, client) = start().await?;
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "pools.sim.example.com"},
        "spec": {"group": "sim.example.com", "scope": "Namespaced",
            "names": {"kind": "Pool", "plural": "pools"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"replicas": {"type": "integer"}, "size": {"type": "string"}}},
                    "status": {"type": "object", "properties": {"replicas": {"type": "integer"}, "selector": {"type": "string"}, "phase": {"type": "string"}}}}}}}]}
    }))?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await?;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("sim.example.com", "v1", "Pool"),
        "pools",
    );
    let pools: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let pool = |spec: Value, status: Option<Value>| {
        let mut v = json!({"apiVersion": "sim.example.com/v1", "kind": "Pool", "metadata": {"name": "p"}, "spec": spec});
        if let Some(s) = status {
            v["status"] = s;
        }
        v
    };
    // status in a main-resource apply is ignored for types with a status subresource
    let created = pools
        .patch(
            "p",
            &PatchParams::apply("op"),
            &Patch::Apply(pool(
                json!({"replicas": 2, "size": "s"}),
                Some(json!({"phase": "Nope"})),
            )),
        )
        .await?;
    assert!(created.data.get("status").is_none(), "{}", created.data);
    let st = pools
        .patch_status(
            "p",
            &PatchParams::apply("ctl"),
            &Patch::Apply(pool(
                json!({"size": "ignored"}),
                Some(json!({"phase": "Ready", "replicas": 2, "selector": "app=p"})),
            )),
        )
        .await?;
    assert_eq!(st.data["status"]["phase"], "Ready");
    assert_eq!(
        st.data["spec"]["size"], "s",
        "status apply never changes spec"
    );
    assert_eq!(st.metadata.generation, Some(1));
    let status_owner = st
        .managed_fields()
        .iter()
        .any(|m| m.manager.as_deref() == Some("ctl") && m.subresource.as_deref() == Some("status"));
    assert!(
        status_owner,
        "status apply is recorded under the status subresource"
    );

    let scale = pools.get_scale("p").await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    assert_eq!(
        scale.status.map(|s| s.selector),
        Some(Some("app=p".to_string()))
    );
    pools
        .patch_scale(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await?;
    let after = pools.get("p").await?;
    assert_eq!(after.data["spec"]["replicas"], 7);
    assert_eq!(
        after.metadata.generation,
        Some(2),
        "a /scale write is a spec change"
    );
    sim.shutdown().await;
    Ok(())
}

/// A keyed list on a custom resource (`x-kubernetes-list-type: map`, keyed by `name`, as
/// StreamPipeline `spec.groups`): an item the applying manager stops applying is removed as a
/// whole element when nobody else owns part of it, and stays (with its key) when someone does.
#[tokio::test]
async fn custom_resource_keyed_list_item_dropped_by_apply() -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{DynamicObject, PostParams};
    use kube::core::{ApiResource, GroupVersionKind};

    let (sim, client) = start().await?;
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "flows.sim.example.com"},
        "spec": {"group": "sim.example.com", "scope": "Namespaced",
            "names": {"kind": "Flow", "plural": "flows"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["groups"], "properties": {
                        "groups": {"type": "array", "minItems": 1,
                            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                            "items": {"type": "object", "required": ["name"], "properties": {
                                "name": {"type": "string"},
                                "role": {"type": "string"},
                                "replicas": {"type": "integer"}}}}}}}}}}]}
    }))?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await?;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("sim.example.com", "v1", "Flow"),
        "flows",
    );
    let flows: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let flow = |name: &str, groups: &[&str]| {
        let groups: Vec<Value> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| json!({"name": g, "role": if i == 0 { "ingress" } else { "worker" }}))
            .collect();
        json!({"apiVersion": "sim.example.com/v1", "kind": "Flow", "metadata": {"name": name},
               "spec": {"groups": groups}})
    };
    let groups_of = |o: &DynamicObject| o.data["spec"]["groups"].clone();
    let owns_item = |o: &DynamicObject, manager: &str, item: &str| {
        o.managed_fields().iter().any(|m| {
            m.manager.as_deref() == Some(manager)
                && m.fields_v1.as_ref().is_some_and(|f| {
                    f.0.pointer(&format!("/f:spec/f:groups/k:{{\"name\":\"{item}\"}}"))
                        .is_some()
                })
        })
    };
    let a = PatchParams::apply("manager-a");

    // 1. only manager A owns the dropped item: it is gone entirely, and the object validates
    flows
        .patch("solo", &a, &Patch::Apply(flow("solo", &["in", "w1", "w2"])))
        .await?;
    let solo = flows
        .patch("solo", &a, &Patch::Apply(flow("solo", &["in", "w1"])))
        .await?;
    assert_eq!(
        groups_of(&solo),
        json!([{"name": "in", "role": "ingress"}, {"name": "w1", "role": "worker"}]),
        "w2 is removed as a whole element"
    );
    assert!(
        !owns_item(&solo, "manager-a", "w2"),
        "{:?}",
        solo.managed_fields()
    );
    assert_eq!(groups_of(&flows.get("solo").await?), groups_of(&solo));

    // 2. manager B applied a field of the item: it stays with B's field and its key
    flows
        .patch(
            "shared",
            &a,
            &Patch::Apply(flow("shared", &["in", "w1", "w2"])),
        )
        .await?;
    flows
        .patch(
            "shared",
            &PatchParams::apply("manager-b"),
            &Patch::Apply(json!({"apiVersion": "sim.example.com/v1", "kind": "Flow",
                "metadata": {"name": "shared"},
                "spec": {"groups": [{"name": "w2", "replicas": 4}]}})),
        )
        .await?;
    let shared = flows
        .patch("shared", &a, &Patch::Apply(flow("shared", &["in", "w1"])))
        .await?;
    assert_eq!(
        groups_of(&shared),
        json!([{"name": "in", "role": "ingress"}, {"name": "w1", "role": "worker"},
               {"name": "w2", "replicas": 4}]),
        "w2 keeps B's replicas and its name, loses A's role"
    );
    assert!(owns_item(&shared, "manager-b", "w2"));
    assert!(!owns_item(&shared, "manager-a", "w2"));

    // 3. manager B owns only a non-key field of the item (through an ordinary update): the
    //    item still keeps its key field, although only A ever set it
    flows
        .patch(
            "updated",
            &a,
            &Patch::Apply(flow("updated", &["in", "w1", "w2"])),
        )
        .await?;
    flows
        .patch(
            "updated",
            &PatchParams {
                field_manager: Some("manager-b".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"groups": [
                {"name": "in", "role": "ingress"}, {"name": "w1", "role": "worker"},
                {"name": "w2", "role": "worker", "replicas": 2}]}})),
        )
        .await?;
    let updated = flows
        .patch("updated", &a, &Patch::Apply(flow("updated", &["in", "w1"])))
        .await?;
    assert_eq!(
        groups_of(&updated),
        json!([{"name": "in", "role": "ingress"}, {"name": "w1", "role": "worker"},
               {"name": "w2", "replicas": 2}]),
        "w2 keeps its name and B's replicas"
    );
    sim.shutdown().await;
    Ok(())
}
