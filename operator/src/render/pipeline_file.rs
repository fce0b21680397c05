//! The pipeline file: the ConfigMap `P-pipeline` holding `pipeline.yaml`,
//! the normalised manifest every runtime pod reads with `--pipeline`
//! (without `paused`, which the pods learn from Redis).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Resource;
use serde::Serialize;
use sluice_crds::{StreamPipeline, StreamPipelineSpec};

use super::context::Ctx;
use super::error::{Error, Result};
use super::pod_spec;
use crate::labels::Component;
use crate::names;

/// The normalised manifest in `P-pipeline`: apiVersion, kind, metadata with
/// only name and namespace, and the spec as the types serialise it. It is the
/// same format a local run reads (`sluice_crds::parse_manifest`), so the pods
/// compile exactly what the operator validated.
///
/// # Errors
/// If the spec cannot be serialised (its types rule it out).
pub fn pipeline_manifest(name: &str, namespace: &str, spec: &StreamPipelineSpec) -> Result<String> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest<'a> {
        api_version: &'a str,
        kind: &'a str,
        metadata: Meta<'a>,
        spec: &'a StreamPipelineSpec,
    }
    #[derive(Serialize)]
    struct Meta<'a> {
        name: &'a str,
        namespace: &'a str,
    }
    let body = sluice_crds::yaml::to_string(&Manifest {
        api_version: &StreamPipeline::api_version(&()),
        kind: &StreamPipeline::kind(&()),
        metadata: Meta { name, namespace },
        spec,
    })
    .map_err(|source| Error::Yaml {
        what: "pipeline manifest",
        source,
    })?;
    Ok(format!(
        "# StreamPipeline {namespace}/{name}, normalised by sluice-operator; edits are overwritten.\n{body}"
    ))
}

pub(crate) fn pipeline_config_map(ctx: &Ctx<'_>) -> Result<ConfigMap> {
    // A pause reaches the pods through Redis within a second; in the file it
    // would only change the ConfigMap.
    let mut spec = ctx.spec.clone();
    spec.paused = None;
    Ok(ConfigMap {
        metadata: ctx.meta(names::pipeline_config(&ctx.name), Component::Config, None),
        data: Some(BTreeMap::from([(
            pod_spec::PIPELINE_FILE.to_string(),
            pipeline_manifest(&ctx.name, &ctx.namespace, &spec)?,
        )])),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use crate::render::fixtures::{orders_redis, render, UID};
    use crate::render::Child;

    #[test]
    fn the_pipeline_file_is_what_a_local_run_reads() {
        let sp = orders_redis();
        let d = render(&sp);
        let Child::ConfigMap(cm) = &d.objects[0] else {
            panic!("ConfigMap first")
        };
        let text = &cm.data.as_ref().unwrap()["pipeline.yaml"];
        let (parsed, plan) = sluice_crds::parse_manifest("pipeline.yaml", text).unwrap();
        assert_eq!(parsed.spec, sp.spec);
        assert_eq!(parsed.metadata.namespace.as_deref(), Some("demo"));
        assert_eq!(plan, d.plan);
        assert!(!text.contains(UID), "metadata is name and namespace only");
    }
}
