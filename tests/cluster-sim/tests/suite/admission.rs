//! CRD admission (structural schemas) and custom-resource validation (schema and CEL).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};

use crate::common::{api_code, start};

fn crd(spec_schema: Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.sim.example.com"},
        "spec": {
            "group": "sim.example.com", "scope": "Namespaced",
            "names": {"kind": "Thing", "plural": "things", "singular": "thing"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec_schema}}}}]
        }
    })
}

#[tokio::test]
async fn non_structural_schemas_are_refused_with_422() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let bad = [
        (
            "missing type",
            json!({"properties": {"a": {"type": "string"}}}),
            "properties[spec].type",
        ),
        (
            "type inside anyOf",
            json!({"type": "object", "properties": {"a": {"type": "string", "anyOf": [{"type": "string"}]}}}),
            "anyOf[0].type",
        ),
        (
            "properties and additionalProperties",
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}}),
            "additionalProperties",
        ),
        (
            "$ref",
            json!({"type": "object", "properties": {"a": {"$ref": "#/definitions/x"}}}),
            "$ref",
        ),
        (
            "free-form value without preserve-unknown-fields",
            json!({"type": "object", "properties": {"blob": {}}}),
            "properties[blob].type",
        ),
    ];
    for (what, schema, field) in bad {
        let c: CustomResourceDefinition = serde_json::from_value(crd(schema))?;
        let err = crds
            .create(&PostParams::default(), &c)
            .await
            .expect_err(what);
        assert_eq!(api_code(&err), Some(422), "{what}: {err}");
        assert!(
            err.to_string().contains(field),
            "{what}: message names {field}: {err}"
        );
    }
    let ok: CustomResourceDefinition = serde_json::from_value(crd(json!({
        "type": "object",
        "properties": {"port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                       "blob": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
    })))?;
    crds.create(&PostParams::default(), &ok).await?;
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn custom_resources_violating_schema_or_cel_get_422_with_the_message() -> anyhow::Result<()> {
    let (sim, client) = start().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let schema = json!({
        "type": "object",
        "required": ["size"],
        "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 10},
            "mode": {"type": "string", "enum": ["fast", "safe"]},
            "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
            "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
            "min": {"type": "integer"}, "max": {"type": "integer"}
        },
        "x-kubernetes-validations": [{"rule": "!has(self.min) || !has(self.max) || self.min <= self.max", "message": "min must not exceed max"}]
    });
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(crd(schema))?,
    )
    .await?;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("sim.example.com", "v1", "Thing"),
        "things",
    );
    let things: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let thing = |spec: Value| json!({"apiVersion": "sim.example.com/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": spec});
    let cases = [
        (
            json!({"size": 0}),
            "spec.size",
            "greater than or equal to 1",
        ),
        (
            json!({"size": "big"}),
            "spec.size",
            "must be of type integer",
        ),
        (json!({}), "spec.size", "Required value"),
        (
            json!({"size": 1, "mode": "slow"}),
            "spec.mode",
            "Unsupported value",
        ),
        (
            json!({"size": 1, "name": "UPPER"}),
            "spec.name",
            "should match",
        ),
        (
            json!({"size": 1, "tags": ["a", "b", "c"]}),
            "spec.tags",
            "must have at most 2 items",
        ),
        (
            json!({"size": 1, "min": 5, "max": 2}),
            "spec",
            "min must not exceed max",
        ),
    ];
    for (spec, field, msg) in cases {
        let err = things
            .patch(
                "t",
                &PatchParams::apply("op"),
                &Patch::Apply(thing(spec.clone())),
            )
            .await
            .expect_err("invalid object");
        assert_eq!(api_code(&err), Some(422), "{spec}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("{field}: ")) && text.contains(msg),
            "{spec}: expected {field} / {msg} in {text}"
        );
    }
    let ok = things
        .patch(
            "t",
            &PatchParams::apply("op"),
            &Patch::Apply(thing(json!({"size": 2, "unknown": true}))),
        )
        .await?;
    assert!(
        ok.data["spec"].get("unknown").is_none(),
        "unknown fields are pruned: {}",
        ok.data
    );
    sim.shutdown().await;
    Ok(())
}
