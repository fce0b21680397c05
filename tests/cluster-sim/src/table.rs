//! Alternative renderings a client asks for in `Accept`: `meta.k8s.io/v1` `Table` (Name and
//! Age columns; `kubectl get` asks `as=Table`) and `PartialObjectMetadata` (kube's metadata
//! API and metadata watchers ask `as=PartialObjectMetadata[List]`).

use serde_json::{json, Value};

fn age(created: Option<&str>) -> String {
    let Some(t) = created.and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok()) else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A Table of `items`; `list_meta` carries the list's resourceVersion/continue.
pub(crate) fn table(items: &[Value], list_meta: Option<&Value>) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({
                "cells": [
                    o["metadata"]["name"],
                    age(o["metadata"]["creationTimestamp"].as_str()),
                ],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta.cloned().unwrap_or(json!({})),
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0},
            {"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0},
        ],
        "rows": rows,
    })
}

/// How objects are rendered in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Render {
    /// The objects themselves.
    Full,
    /// A `Table`.
    Table,
    /// `PartialObjectMetadata` (lists: `PartialObjectMetadataList`).
    Metadata,
}

impl Render {
    /// From an `Accept` header: the first alternative we can serve wins, as upstream does.
    pub(crate) fn from_accept(accept: &str) -> Self {
        for alt in accept.split(',') {
            if alt.contains("as=Table") {
                return Render::Table;
            }
            if alt.contains("as=PartialObjectMetadata") {
                return Render::Metadata;
            }
            if alt.contains("application/json") || alt.contains("*/*") {
                return Render::Full;
            }
        }
        Render::Full
    }

    /// One object.
    pub(crate) fn one(self, obj: Value) -> Value {
        match self {
            Render::Full => obj,
            Render::Table => table(std::slice::from_ref(&obj), None),
            Render::Metadata => partial(&obj),
        }
    }

    /// A list answer (`list` is the full `<Kind>List`).
    pub(crate) fn list(self, list: Value) -> Value {
        let items = list["items"].as_array().cloned().unwrap_or_default();
        match self {
            Render::Full => list,
            Render::Table => table(&items, Some(&list["metadata"])),
            Render::Metadata => json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": list["metadata"],
                "items": items.iter().map(partial).collect::<Vec<_>>(),
            }),
        }
    }
}

fn partial(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_accept_header_renders_partial_object_metadata() {
        let accept =
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
        let r = Render::from_accept(accept);
        assert_eq!(r, Render::Metadata);
        let out = r.list(json!({"metadata": {"resourceVersion": "3"}, "items": [{"metadata": {"name": "a"}, "data": {"k": "v"}}]}));
        assert_eq!(out["kind"], "PartialObjectMetadataList");
        assert_eq!(
            out["items"][0],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "a"}})
        );
    }

    #[test]
    fn kubectl_accept_header_renders_a_table_and_plain_json_the_object() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(Render::from_accept(kubectl), Render::Table);
        assert_eq!(Render::from_accept("application/json"), Render::Full);
        assert_eq!(Render::from_accept(""), Render::Full);
    }
}
