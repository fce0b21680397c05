//! A StreamPipeline as the API server returns it, read so that one bad
//! object can never stop the operator.
//!
//! The CRD keeps `spec.nodes[].with` and `next` free-form, so the API server
//! stores what the Rust types cannot read (`next: 3`, `with` nested hundreds
//! of levels deep). Decoded as `StreamPipeline`, one such object fails the
//! whole list or watch event, and with it every pipeline of the cluster.
//! [`PipelineObject`] instead:
//!
//! - captures `spec` and `status` as raw JSON text (serde_json skips a raw
//!   value without recursion, so any depth the API server stores is read),
//!   then decodes each on its own: a spec that does not decode becomes
//!   [`PipelineObject::spec`]`= Err(`the error with its field path`)`, which
//!   the reconciler reports as `InvalidSpec` on that pipeline's status;
//! - relies on the API server writing a watch event's `type` before its
//!   `object` (Go's field order), so the object reaches this decoder as
//!   text rather than buffered by serde;
//! - reads `metadata` without `managedFields` (unused by the operator, as
//!   deep as the object, and most of its size), so the controller's store
//!   keeps less.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use sluice_crds::{StreamPipeline, StreamPipelineSpec, StreamPipelineStatus};

/// A StreamPipeline whose spec may not have decoded.
#[derive(Clone, Debug)]
pub struct PipelineObject {
    pub metadata: ObjectMeta,
    /// The spec, or why it cannot be read (`spec.nodes[1].next: invalid
    /// type: integer ...`).
    pub spec: Result<StreamPipelineSpec, String>,
    /// The status last written; `None` when absent or unreadable (the
    /// operator writes it anew).
    pub status: Option<StreamPipelineStatus>,
}

impl PipelineObject {
    /// The typed pipeline, when its spec decoded.
    pub fn pipeline(&self) -> Option<StreamPipeline> {
        let spec = self.spec.as_ref().ok()?.clone();
        Some(StreamPipeline {
            metadata: self.metadata.clone(),
            spec,
            status: self.status.clone(),
        })
    }
}

impl Resource for PipelineObject {
    type DynamicType = ();
    type Scope = <StreamPipeline as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        StreamPipeline::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        StreamPipeline::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        StreamPipeline::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        StreamPipeline::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The object's fields as text; anything else (`apiVersion`, `kind`) is
/// skipped.
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    spec: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
}

/// `ObjectMeta` without `managedFields`: an unknown field is skipped
/// without being built.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct LeanMeta {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    finalizers: Option<Vec<String>>,
}

impl From<LeanMeta> for ObjectMeta {
    fn from(m: LeanMeta) -> Self {
        ObjectMeta {
            name: m.name,
            generate_name: m.generate_name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            generation: m.generation,
            creation_timestamp: m.creation_timestamp,
            deletion_timestamp: m.deletion_timestamp,
            deletion_grace_period_seconds: m.deletion_grace_period_seconds,
            labels: m.labels,
            annotations: m.annotations,
            owner_references: m.owner_references,
            finalizers: m.finalizers,
            managed_fields: None,
            self_link: None,
        }
    }
}

/// Decodes `raw` as `T`, naming the field where it fails.
fn decode<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json's position is within the spec's own text; the field
        // path says where, the rest would only confuse.
        let what = inner.to_string();
        let what = what
            .rsplit_once(" at line ")
            .map_or(what.as_str(), |(w, _)| w)
            .to_string();
        if path == "." {
            what
        } else {
            format!("{path}: {what}")
        }
    })
}

impl<'de> Deserialize<'de> for PipelineObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // RawValue borrows from the input; the watcher decodes from owned
        // buffers, so the text is copied once, then parsed field by field.
        let text = Box::<RawValue>::deserialize(deserializer)?;
        let raw: Raw<'_> = serde_json::from_str(text.get()).map_err(serde::de::Error::custom)?;
        let metadata = match raw.metadata {
            Some(m) => decode::<LeanMeta>(m)
                .map_err(|e| serde::de::Error::custom(format!("metadata: {e}")))?
                .into(),
            None => ObjectMeta::default(),
        };
        let spec = match raw.spec {
            Some(s) => decode::<StreamPipelineSpec>(s).map_err(|e| format!("spec.{e}")),
            None => Err("spec: missing".to_string()),
        };
        let status = raw.status.and_then(|s| decode(s).ok());
        Ok(PipelineObject {
            metadata,
            spec,
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(spec: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "StreamPipeline",
            "metadata": {"name": "p", "namespace": "demo", "uid": "u1", "generation": 3,
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
            "spec": spec,
        })
    }

    /// As the watcher reads: from the response text.
    fn read<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> T {
        serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
    }

    fn hello() -> serde_json::Value {
        json!({
            "interfaces": [{"name": "hello", "path": "/v1/hello", "entry": "greet"}],
            "groups": [{"name": "web", "role": "ingress"}],
            "nodes": [{"name": "greet", "group": "web", "uses": "builtin/echo"}],
        })
    }

    #[test]
    fn a_readable_object_decodes_without_its_managed_fields() {
        let o: PipelineObject = read(&object(hello()));
        assert_eq!(o.metadata.name.as_deref(), Some("p"));
        assert_eq!(o.metadata.generation, Some(3));
        assert!(o.metadata.managed_fields.is_none());
        assert_eq!(o.pipeline().unwrap().spec.nodes[0].name, "greet");
    }

    #[test]
    fn a_wrongly_typed_field_is_reported_with_its_path() {
        let mut spec = hello();
        spec["nodes"][0]["next"] = json!(3);
        let o: PipelineObject = read(&object(spec));
        let err = o.spec.clone().unwrap_err();
        assert!(err.starts_with("spec.nodes[0].next: "), "{err}");
        assert!(o.pipeline().is_none());
        assert_eq!(o.metadata.uid.as_deref(), Some("u1"));
    }

    #[test]
    fn one_bad_object_in_a_list_leaves_the_others_readable() {
        let mut bad = hello();
        bad["nodes"][0]["next"] = json!({"to": "x"});
        let list = json!([object(hello()), object(bad), object(hello())]);
        let items: Vec<PipelineObject> = read(&list);
        let ok: Vec<bool> = items.iter().map(|o| o.spec.is_ok()).collect();
        assert_eq!(ok, [true, false, true]);
    }

    #[test]
    fn nesting_deeper_than_the_decoder_takes_is_an_error_of_that_object_only() {
        // 200 levels in `with`, and as deep in managedFields, as the API
        // server stores them: the raw text is read at any depth.
        let mut deep = json!(1);
        let mut fields = json!({});
        for _ in 0..200 {
            deep = json!({"a": deep});
            fields = json!({"f:a": fields});
        }
        let mut spec = hello();
        spec["nodes"][0]["with"] = deep.clone();
        let text = format!(
            r#"[{{"metadata":{{"name":"deep","managedFields":[{{"fieldsV1":{f}}}]}},"spec":{s}}},{{"metadata":{{"name":"fine"}},"spec":{h}}}]"#,
            f = serde_json::to_string(&fields).unwrap(),
            s = serde_json::to_string(&spec).unwrap(),
            h = serde_json::to_string(&hello()).unwrap(),
        );
        // serde_json's own default limit refuses the text as a whole...
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
        // ...while the objects are read one by one.
        let items: Vec<PipelineObject> = serde_json::from_str(&text).unwrap();
        let err = items[0].spec.as_ref().unwrap_err();
        assert!(err.starts_with("spec.nodes[0].with"), "{err}");
        assert!(err.contains("recursion limit"), "{err}");
        assert!(items[1].spec.is_ok());
    }

    #[test]
    fn watch_events_carry_pipeline_objects_at_any_depth() {
        let mut spec = hello();
        spec["nodes"][0]["with"] = (0..150).fold(json!(1), |v, _| json!({ "a": v }));
        let line = format!(
            r#"{{"type":"MODIFIED","object":{}}}"#,
            serde_json::to_string(&object(spec)).unwrap()
        );
        let event: kube::core::WatchEvent<PipelineObject> = serde_json::from_str(&line).unwrap();
        let kube::core::WatchEvent::Modified(o) = event else {
            panic!("a MODIFIED event");
        };
        assert!(o.spec.unwrap_err().contains("recursion limit"));
    }

    #[test]
    fn an_unreadable_status_is_dropped_not_fatal() {
        let mut o = object(hello());
        o["status"] = json!({"conditions": "nope"});
        let o: PipelineObject = read(&o);
        assert!(o.spec.is_ok());
        assert!(o.status.is_none());
    }
}
