//! The object store: every object under one lock, one global increasing `resourceVersion`,
//! and a bounded history of change events that watches read from (older versions are
//! compacted away, which is what makes a watch from them `410 Gone`).

use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Value};

use crate::resources::{Registry, ResourceType};

/// Storage key: group + plural (not version: all versions of a type share objects).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    /// API group, `""` for core.
    pub group: String,
    /// Plural resource name.
    pub resource: String,
    /// Namespace, `""` for cluster-scoped objects.
    pub namespace: String,
    /// Object name.
    pub name: String,
}

impl ObjKey {
    pub(crate) fn new(rt: &ResourceType, namespace: Option<&str>, name: &str) -> Self {
        Self {
            group: rt.group.clone(),
            resource: rt.plural.clone(),
            namespace: if rt.namespaced {
                namespace.unwrap_or_default().to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }
}

/// Kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed.
    Modified,
    /// Object removed.
    Deleted,
}

/// One committed change, kept in the history for watches.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub etype: EventType,
    pub key: ObjKey,
    /// The object after the change (for `Deleted`: as it was, with the deletion's version).
    pub object: Value,
    /// The object before the change, for selector transitions.
    pub old: Option<Value>,
}

/// Everything the API serves, guarded by one mutex in [`crate::sim::Core`].
#[derive(Debug)]
pub(crate) struct State {
    pub registry: Registry,
    pub objects: BTreeMap<ObjKey, Value>,
    /// Last `resourceVersion` handed out.
    pub rv: u64,
    pub history: VecDeque<Event>,
    pub history_cap: usize,
    /// Versions below this can no longer be watched from (`410 Gone`).
    pub compacted: u64,
}

impl State {
    pub(crate) fn new(history_cap: usize) -> Self {
        Self {
            registry: Registry::default(),
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            compacted: 0,
        }
    }

    /// Record a change under a fresh version and return that version.
    pub(crate) fn record(
        &mut self,
        etype: EventType,
        key: ObjKey,
        mut object: Value,
        old: Option<Value>,
    ) -> u64 {
        self.rv += 1;
        let rv = self.rv;
        set_meta(&mut object, "resourceVersion", json!(rv.to_string()));
        match etype {
            EventType::Deleted => {
                self.objects.remove(&key);
            }
            _ => {
                self.objects.insert(key.clone(), object.clone());
            }
        }
        self.history.push_back(Event {
            rv,
            etype,
            key,
            object,
            old,
        });
        while self.history.len() > self.history_cap {
            if let Some(e) = self.history.pop_front() {
                self.compacted = e.rv;
            }
        }
        rv
    }

    /// Drop all history: every version before now becomes too old to watch from.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Objects of one type (any version), optionally in one namespace, in key order.
    pub(crate) fn objects_of<'a>(
        &'a self,
        group: &'a str,
        resource: &'a str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Value)> + 'a {
        // Keys order by group, resource, namespace, name: the objects of one type (of one
        // namespace) are one contiguous range, so a list or a controller's lookup costs what
        // it returns, not the size of the whole store (thousands of unrelated objects).
        let start = ObjKey {
            group: group.to_string(),
            resource: resource.to_string(),
            namespace: namespace.unwrap_or_default().to_string(),
            name: String::new(),
        };
        self.objects.range(start..).take_while(move |(k, _)| {
            k.group == group
                && k.resource == resource
                && namespace.is_none_or(|ns| k.namespace == ns)
        })
    }
}

// === metadata helpers ===

pub(crate) fn meta<'a>(obj: &'a Value, field: &str) -> Option<&'a Value> {
    obj.get("metadata").and_then(|m| m.get(field))
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj, field).and_then(Value::as_str)
}

pub(crate) fn set_meta(obj: &mut Value, field: &str, v: Value) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"][field] = v;
}

pub(crate) fn remove_meta(obj: &mut Value, field: &str) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove(field);
    }
}

pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj, "finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn set_finalizers(obj: &mut Value, f: &[String]) {
    if f.is_empty() {
        remove_meta(obj, "finalizers");
    } else {
        set_meta(obj, "finalizers", json!(f));
    }
}

/// Set a value at a `.a.b.c` path, creating objects on the way.
pub(crate) fn set_path(obj: &mut Value, path: &str, v: Value) {
    let mut cur = obj;
    let segs: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    for (i, s) in segs.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i == segs.len() - 1 {
            cur[*s] = v;
            return;
        }
        cur = &mut cur[*s];
    }
}

/// Read a value at a `.a.b.c` path.
pub(crate) fn get_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for s in path.trim_start_matches('.').split('.') {
        cur = cur.get(s)?;
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(group: &str, resource: &str, namespace: &str, name: &str) -> ObjKey {
        ObjKey {
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn objects_of_yields_exactly_one_type_and_namespace_in_key_order() {
        let mut st = State::new(10);
        for k in [
            key("", "configmaps", "a", "x"),
            key("", "configmaps", "b", "y"),
            key("", "configmaps", "b", "x"),
            key("", "configmapsx", "b", "z"),
            key("", "secrets", "b", "s"),
            key("apps", "configmaps", "b", "w"),
            key("", "namespaces", "", "b"),
        ] {
            st.objects.insert(k, json!({}));
        }
        let names = |ns: Option<&str>, resource: &str| -> Vec<String> {
            st.objects_of("", resource, ns)
                .map(|(k, _)| format!("{}/{}", k.namespace, k.name))
                .collect()
        };
        assert_eq!(names(Some("b"), "configmaps"), ["b/x", "b/y"]);
        assert_eq!(names(None, "configmaps"), ["a/x", "b/x", "b/y"]);
        assert!(names(Some("c"), "configmaps").is_empty());
        assert_eq!(names(None, "namespaces"), ["/b"]);
        assert!(
            names(Some("b"), "namespaces").is_empty(),
            "a namespace filter on a cluster-scoped type matches nothing"
        );
        assert_eq!(st.objects_of("apps", "configmaps", None).count(), 1);
    }
}
