//! Minimal OpenAPI documents: enough for kubectl to learn that every served type accepts
//! server-side field validation (`fieldValidation` on PATCH, which `kubectl apply
//! --validate=strict` checks before sending). Schemas themselves are not published: the
//! server validates, kubectl does not.

use serde_json::{json, Map, Value};

use crate::resources::Registry;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The document for `which`: `v2`, `v3` (the root index) or `v3/<api|apis/g>/<v>`.
pub(crate) fn document(reg: &Registry, which: &str) -> Option<Value> {
    if which == "v2" {
        return Some(json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes (cluster-sim)", "version": "v1.30.0"},
            "paths": {},
            "definitions": {},
        }));
    }
    if which == "v3" {
        let mut paths = Map::new();
        for t in reg.all() {
            let p = gv_path(&t.group, &t.version);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=cluster-sim")}),
            );
        }
        return Some(json!({"paths": paths}));
    }
    let gv = which.strip_prefix("v3/")?;
    let mut paths = Map::new();
    let mut found = false;
    for t in reg.all() {
        if gv_path(&t.group, &t.version) != gv {
            continue;
        }
        found = true;
        let base = if t.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("/{gv}/{}/{{name}}", t.plural)
        };
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
            {"name": "force", "in": "query", "schema": {"type": "boolean"}},
        ]);
        paths.insert(
            base,
            json!({
                "patch": {
                    "operationId": format!("patch{}", t.kind),
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": params,
                    "responses": {"200": {"description": "OK"}},
                }
            }),
        );
    }
    found.then(|| {
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes (cluster-sim)", "version": "v1.30.0"},
            "paths": paths,
            "components": {"schemas": {}},
        })
    })
}
