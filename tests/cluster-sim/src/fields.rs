//! Field sets in the `FieldsV1` format, list semantics (associative / set / atomic) and the
//! server-side apply algorithm built on them: conflicts, forced ownership transfer,
//! removal of fields a manager stops applying, and `managedFields` for ordinary updates.
//!
//! A path is a list of encoded elements exactly as they appear as keys in `FieldsV1`:
//! `f:<field>`, `k:<json of key fields>`, `v:<json value>`.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::resources::ResourceType;

/// One encoded path into an object.
pub(crate) type Path = Vec<String>;

/// How a list merges.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ListKind {
    /// Associative list keyed by these fields.
    Map(Vec<String>),
    /// Set of scalars.
    Set,
    /// Replaced as a whole.
    Atomic,
}

/// Type knowledge needed to walk an object: CRD schema, or the built-in list table.
pub(crate) struct Shape<'a> {
    schema: Option<&'a Value>,
    /// Built-in Service ports are keyed by `port`, container ports by `containerPort`.
    kind: &'a str,
}

impl<'a> Shape<'a> {
    pub(crate) fn of(rt: &'a ResourceType) -> Self {
        Self {
            schema: rt.schema.as_ref(),
            kind: &rt.kind,
        }
    }

    /// How the list at `path` merges.
    pub(crate) fn list_kind(&self, path: &[String]) -> ListKind {
        let field = path
            .iter()
            .rev()
            .find(|e| e.starts_with("f:"))
            .map(|e| &e[2..])
            .unwrap_or("");
        // metadata lists are the same for every kind
        if path.len() == 2 && path[0] == "f:metadata" {
            return match field {
                "finalizers" => ListKind::Set,
                "ownerReferences" => ListKind::Map(vec!["uid".into()]),
                _ => ListKind::Atomic,
            };
        }
        if let Some(schema) = self.schema {
            return match schema_at(schema, path) {
                Some(node) => match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
                    Some("map") => ListKind::Map(
                        node.get("x-kubernetes-list-map-keys")
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(|k| k.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    Some("set") => ListKind::Set,
                    _ => ListKind::Atomic,
                },
                None => ListKind::Atomic,
            };
        }
        builtin_list_kind(self.kind, path, field)
    }
}

fn builtin_list_kind(kind: &str, path: &[String], field: &str) -> ListKind {
    let keys = |k: &[&str]| ListKind::Map(k.iter().map(|s| s.to_string()).collect());
    let in_container = path
        .iter()
        .any(|e| e == "f:containers" || e == "f:initContainers" || e == "f:ephemeralContainers");
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "secrets" => keys(&["name"]),
        "volumeMounts" => keys(&["mountPath"]),
        "volumeDevices" => keys(&["devicePath"]),
        "ports" if in_container => keys(&["containerPort", "protocol"]),
        "ports" if kind == "Service" => keys(&["port", "protocol"]),
        "conditions" => keys(&["type"]),
        "hostAliases" => keys(&["ip"]),
        "topologySpreadConstraints" => keys(&["topologyKey", "whenUnsatisfiable"]),
        _ => ListKind::Atomic,
    }
}

/// The schema node a path leads to (through `properties`, `additionalProperties`, `items`).
pub(crate) fn schema_at<'s>(schema: &'s Value, path: &[String]) -> Option<&'s Value> {
    let mut node = schema;
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            node = match node.get("properties").and_then(|p| p.get(f)) {
                Some(n) => n,
                None => match node.get("additionalProperties") {
                    Some(n) if n.is_object() => n,
                    _ => return None,
                },
            };
        } else {
            node = node.get("items")?;
        }
    }
    Some(node)
}

/// Default values of key fields the real server would have defaulted before merging.
fn key_default(field: &str) -> Option<Value> {
    (field == "protocol").then(|| json!("TCP"))
}

/// `k:{"name":"c"}` for an item of an associative list (key fields sorted by name).
pub(crate) fn item_key(item: &Value, keys: &[String]) -> Result<String, ApiError> {
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    let mut parts = Vec::new();
    for k in sorted {
        let v = match item.get(k) {
            Some(v) if !v.is_null() => v.clone(),
            _ => match key_default(k) {
                Some(d) => d,
                None => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "associative list with keys has an element that omits key field {k:?}"
                        ),
                    ))
                }
            },
        };
        parts.push(format!("{}:{}", json!(k), v));
    }
    Ok(format!("k:{{{}}}", parts.join(",")))
}

/// A set of paths, as one `managedFields` entry holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSet(pub BTreeSet<Path>);

impl FieldSet {
    /// True if `p` or anything below it is in the set.
    pub(crate) fn has_prefix(&self, p: &Path) -> bool {
        self.0.iter().any(|q| q.starts_with(p))
    }

    /// Render as `FieldsV1` JSON.
    pub(crate) fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for e in path {
                let entry = node.entry(e.clone()).or_insert_with(|| json!({}));
                node = match entry {
                    Value::Object(m) => m,
                    // every node we insert is an object
                    _ => unreachable!("FieldsV1 nodes are objects"),
                };
            }
            node.insert(".".into(), json!({}));
        }
        // A member without children is written as `{}`; `.` only when it has children.
        fn finish(m: &mut Map<String, Value>) {
            let has_children = m.keys().any(|k| k != ".");
            if !has_children {
                m.remove(".");
            }
            for (k, v) in m.iter_mut() {
                if k != "." {
                    if let Value::Object(c) = v {
                        finish(c);
                    }
                }
            }
        }
        for v in root.values_mut() {
            if let Value::Object(c) = v {
                finish(c);
            }
        }
        Value::Object(root)
    }

    /// Parse `FieldsV1` JSON.
    pub(crate) fn from_fields_v1(v: &Value) -> Self {
        fn walk(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
            let Some(m) = v.as_object() else { return };
            for (k, c) in m {
                if k == "." {
                    out.insert(path.clone());
                    continue;
                }
                path.push(k.clone());
                match c.as_object() {
                    Some(cm) if cm.is_empty() => {
                        out.insert(path.clone());
                    }
                    _ => walk(c, path, out),
                }
                path.pop();
            }
        }
        let mut out = BTreeSet::new();
        walk(v, &mut Vec::new(), &mut out);
        FieldSet(out)
    }
}

/// Which top-level parts of an object a write covers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scope {
    /// Everything except `status` (and all of it for types without `/status`).
    Main { has_status_sub: bool },
    /// Only `status`.
    Status,
}

/// The field set an object (or applied configuration) specifies.
pub(crate) fn collect(obj: &Value, shape: &Shape, scope: Scope) -> Result<FieldSet, ApiError> {
    let mut out = BTreeSet::new();
    let Some(m) = obj.as_object() else {
        return Ok(FieldSet(out));
    };
    for (k, v) in m {
        if v.is_null() {
            continue;
        }
        let take = match (k.as_str(), scope) {
            ("apiVersion" | "kind", _) => false,
            ("status", Scope::Status) => true,
            (_, Scope::Status) => false,
            ("status", Scope::Main { has_status_sub }) => !has_status_sub,
            _ => true,
        };
        if !take {
            continue;
        }
        if k == "metadata" {
            for mk in ["labels", "annotations", "finalizers", "ownerReferences"] {
                if let Some(mv) = v.get(mk).filter(|x| !x.is_null()) {
                    let mut path = vec!["f:metadata".to_string(), format!("f:{mk}")];
                    walk_collect(mv, &mut path, shape, &mut out)?;
                }
            }
            continue;
        }
        let mut path = vec![format!("f:{k}")];
        walk_collect(v, &mut path, shape, &mut out)?;
    }
    Ok(FieldSet(out))
}

fn walk_collect(
    v: &Value,
    path: &mut Path,
    shape: &Shape,
    out: &mut BTreeSet<Path>,
) -> Result<(), ApiError> {
    match v {
        Value::Object(m) if m.is_empty() => {
            out.insert(path.clone());
        }
        Value::Object(m) => {
            for (k, c) in m {
                if c.is_null() {
                    continue;
                }
                path.push(format!("f:{k}"));
                walk_collect(c, path, shape, out)?;
                path.pop();
            }
        }
        Value::Array(items) => match shape.list_kind(path) {
            ListKind::Map(keys) => {
                for item in items {
                    path.push(item_key(item, &keys)?);
                    out.insert(path.clone());
                    if let Some(m) = item.as_object() {
                        for (k, c) in m {
                            if c.is_null() {
                                continue;
                            }
                            path.push(format!("f:{k}"));
                            walk_collect(c, path, shape, out)?;
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
            ListKind::Set => {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            ListKind::Atomic => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
    Ok(())
}

/// The value a path designates, if present.
pub(crate) fn value_at<'v>(obj: &'v Value, path: &[String], shape: &Shape) -> Option<&'v Value> {
    let mut cur = obj;
    for (i, e) in path.iter().enumerate() {
        if let Some(f) = e.strip_prefix("f:") {
            cur = cur.get(f)?;
        } else if e.starts_with("k:") {
            let keys = match shape.list_kind(&path[..i]) {
                ListKind::Map(k) => k,
                _ => return None,
            };
            cur = cur
                .as_array()?
                .iter()
                .find(|it| item_key(it, &keys).ok().as_deref() == Some(e.as_str()))?;
        } else if let Some(raw) = e.strip_prefix("v:") {
            let want: Value = serde_json::from_str(raw).ok()?;
            cur = cur.as_array()?.iter().find(|it| **it == want)?;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Remove what a path designates (a field, a keyed item, a set member).
pub(crate) fn remove_path(obj: &mut Value, path: &[String], shape: &Shape) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let Some(parent) = value_at_mut(obj, parent_path, shape) else {
        return;
    };
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = parent.as_object_mut() {
            m.remove(f);
        }
    } else if last.starts_with("k:") {
        if let ListKind::Map(keys) = shape.list_kind(parent_path) {
            if let Some(a) = parent.as_array_mut() {
                a.retain(|it| item_key(it, &keys).ok().as_deref() != Some(last.as_str()));
            }
        }
    } else if let Some(raw) = last.strip_prefix("v:") {
        if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(raw), parent.as_array_mut()) {
            a.retain(|it| *it != want);
        }
    }
}

fn value_at_mut<'v>(obj: &'v mut Value, path: &[String], shape: &Shape) -> Option<&'v mut Value> {
    let mut cur = obj;
    for (i, e) in path.iter().enumerate() {
        if let Some(f) = e.strip_prefix("f:") {
            cur = cur.get_mut(f)?;
        } else if e.starts_with("k:") {
            let keys = match shape.list_kind(&path[..i]) {
                ListKind::Map(k) => k,
                _ => return None,
            };
            cur = cur
                .as_array_mut()?
                .iter_mut()
                .find(|it| item_key(it, &keys).ok().as_deref() == Some(e.as_str()))?;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Merge an applied configuration into a live object: maps recursively, associative lists
/// by key, sets by value, everything else replaced.
pub(crate) fn merge_applied(live: &mut Value, applied: &Value, path: &mut Path, shape: &Shape) {
    match (live, applied) {
        (Value::Object(lm), Value::Object(am)) => {
            for (k, av) in am {
                if av.is_null() {
                    lm.remove(k);
                    continue;
                }
                path.push(format!("f:{k}"));
                match lm.get_mut(k) {
                    Some(lv)
                        if (lv.is_object() && av.is_object())
                            || (lv.is_array() && av.is_array()) =>
                    {
                        merge_applied(lv, av, path, shape)
                    }
                    _ => {
                        lm.insert(k.clone(), av.clone());
                    }
                }
                path.pop();
            }
        }
        (Value::Array(la), Value::Array(aa)) => match shape.list_kind(path) {
            ListKind::Map(keys) => {
                for item in aa {
                    let Ok(key) = item_key(item, &keys) else {
                        continue;
                    };
                    match la
                        .iter_mut()
                        .find(|it| item_key(it, &keys).ok().as_deref() == Some(key.as_str()))
                    {
                        Some(existing) => {
                            path.push(key);
                            merge_applied(existing, item, path, shape);
                            path.pop();
                        }
                        None => la.push(item.clone()),
                    }
                }
            }
            ListKind::Set => {
                for item in aa {
                    if !la.contains(item) {
                        la.push(item.clone());
                    }
                }
            }
            ListKind::Atomic => *la = aa.clone(),
        },
        (live, applied) => *live = applied.clone(),
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ManagedEntry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    /// `""`, `status` or `scale`.
    pub subresource: String,
    pub fields: FieldSet,
}

impl ManagedEntry {
    fn same_owner(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if !self.subresource.is_empty() {
            v["subresource"] = json!(self.subresource);
        }
        v
    }
}

/// Parse `metadata.managedFields` of an object.
pub(crate) fn read_managed(obj: &Value) -> Vec<ManagedEntry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| ManagedEntry {
                    manager: e["manager"].as_str().unwrap_or_default().into(),
                    operation: e["operation"].as_str().unwrap_or("Update").into(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
                    time: e["time"].as_str().unwrap_or_default().into(),
                    subresource: e["subresource"].as_str().unwrap_or_default().into(),
                    fields: FieldSet::from_fields_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Write entries back into `metadata.managedFields` (dropping empty ones).
pub(crate) fn write_managed(obj: &mut Value, entries: &[ManagedEntry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.0.is_empty())
        .map(ManagedEntry::to_json)
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// `.spec.template.spec.containers[name="c"].image`: the path notation of conflict messages.
pub(crate) fn display_path(path: &[String]) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", inner.join(",")));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

/// What a server-side apply decided.
pub(crate) struct Applied {
    /// The merged object, with `managedFields` updated.
    pub object: Value,
}

/// Input of [`apply`].
pub(crate) struct ApplyRequest<'a> {
    pub live: Option<&'a Value>,
    pub applied: &'a Value,
    pub manager: &'a str,
    pub force: bool,
    pub scope: Scope,
    pub api_version: &'a str,
    pub now: &'a str,
    pub rt: &'a ResourceType,
    pub name: &'a str,
}

/// Server-side apply of `req.applied` onto `req.live`.
///
/// # Guarantees
/// - Fields owned by another entry with a different value make this a `409 Conflict`
///   listing every such field, unless `force`, in which case ownership moves to this manager.
/// - Fields this manager applied before and omits now are removed from the object unless
///   another entry still owns them (or something below them).
/// - Associative lists merge by key, sets by value, other lists are replaced.
pub(crate) fn apply(req: ApplyRequest) -> Result<Applied, ApiError> {
    let shape = Shape::of(req.rt);
    let subresource = if req.scope == Scope::Status {
        "status"
    } else {
        ""
    };
    let new_set = collect(req.applied, &shape, req.scope)?;
    let empty = json!({});
    let live = req.live.unwrap_or(&empty);
    let mut entries = read_managed(live);

    // conflicts
    let mut conflicts: Vec<(usize, Path)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.same_owner(req.manager, "Apply", subresource) {
            continue;
        }
        for p in e.fields.0.intersection(&new_set.0) {
            let is_item = p
                .last()
                .is_some_and(|l| l.starts_with("k:") || l.starts_with("v:"));
            if is_item {
                continue;
            }
            if value_at(live, p, &shape) != value_at(req.applied, p, &shape) {
                conflicts.push((i, p.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !req.force {
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|(i, p)| {
                    json!({
                        "reason": "FieldManagerConflict",
                        "message": format!("conflict with \"{}\" using {}", entries[*i].manager, entries[*i].api_version),
                        "field": display_path(p),
                    })
                })
                .collect();
            let lines: Vec<String> = conflicts
                .iter()
                .map(|(i, p)| format!("- {}: {}", entries[*i].manager, display_path(p)))
                .collect();
            let mut err = ApiError::new(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflict{}: {}",
                    conflicts.len(),
                    if conflicts.len() == 1 { "" } else { "s" },
                    lines.join("\n")
                ),
            );
            err.details = Some(json!({
                "name": req.name,
                "group": req.rt.group,
                "kind": req.rt.plural,
                "causes": causes,
            }));
            return Err(err);
        }
        for (i, p) in &conflicts {
            entries[*i].fields.0.remove(p);
        }
    }

    let old_set = entries
        .iter()
        .find(|e| e.same_owner(req.manager, "Apply", subresource))
        .map(|e| e.fields.clone())
        .unwrap_or_default();

    let mut merged = live.clone();
    let filtered = filter_scope(req.applied, req.scope);
    merge_applied(&mut merged, &filtered, &mut Vec::new(), &shape);

    // removal of what this manager no longer applies
    let others: Vec<&ManagedEntry> = entries
        .iter()
        .filter(|e| !e.same_owner(req.manager, "Apply", subresource))
        .collect();
    let removable: BTreeSet<&Path> = old_set
        .0
        .difference(&new_set.0)
        .filter(|p| !new_set.has_prefix(p) && !others.iter().any(|e| e.fields.has_prefix(p)))
        .collect();
    for p in prune_plan(&removable) {
        remove_path(&mut merged, p, &shape);
    }

    match entries
        .iter_mut()
        .find(|e| e.same_owner(req.manager, "Apply", subresource))
    {
        Some(e) => {
            if e.fields != new_set {
                e.time = req.now.to_string();
            }
            e.fields = new_set;
            e.api_version = req.api_version.to_string();
        }
        None => entries.push(ManagedEntry {
            manager: req.manager.to_string(),
            operation: "Apply".into(),
            api_version: req.api_version.to_string(),
            time: req.now.to_string(),
            subresource: subresource.to_string(),
            fields: new_set,
        }),
    }
    entries.retain(|e| !e.fields.0.is_empty());
    write_managed(&mut merged, &entries);
    Ok(Applied { object: merged })
}

/// Which of the `removable` paths to actually remove, longest first.
///
/// - A path below another removable path goes with its ancestor: a keyed item nobody else
///   owns is removed as a whole element (removing its key fields first would leave an item
///   that can no longer be found by key, nor validate).
/// - The key fields of a keyed item that stays (another manager still owns something in it)
///   are kept: an item without its key is not a valid list element.
fn prune_plan<'p>(removable: &BTreeSet<&'p Path>) -> Vec<&'p Path> {
    let mut plan: Vec<&Path> = removable
        .iter()
        .copied()
        .filter(|p| {
            let under_removed = (1..p.len()).any(|n| removable.contains(&p[..n].to_vec()));
            !under_removed && !is_item_key_field(p)
        })
        .collect();
    plan.sort_by_key(|p| std::cmp::Reverse(p.len()));
    plan
}

/// True for `…/k:{"name":"x"}/f:name`: a key field of an associative-list item.
fn is_item_key_field(p: &[String]) -> bool {
    let [.., item, field] = p else { return false };
    let (Some(key), Some(field)) = (item.strip_prefix("k:"), field.strip_prefix("f:")) else {
        return false;
    };
    serde_json::from_str::<Map<String, Value>>(key).is_ok_and(|m| m.contains_key(field))
}

/// The part of an applied configuration a scope lets through.
fn filter_scope(applied: &Value, scope: Scope) -> Value {
    let mut out = Map::new();
    if let Some(m) = applied.as_object() {
        for (k, v) in m {
            let keep = match (k.as_str(), scope) {
                ("apiVersion" | "kind", _) => false,
                ("metadata", Scope::Main { .. }) => {
                    let mut meta = Map::new();
                    for mk in ["labels", "annotations", "finalizers", "ownerReferences"] {
                        if let Some(mv) = v.get(mk) {
                            meta.insert(mk.into(), mv.clone());
                        }
                    }
                    out.insert("metadata".into(), Value::Object(meta));
                    false
                }
                ("status", Scope::Status) => true,
                (_, Scope::Status) => false,
                ("status", Scope::Main { has_status_sub }) => !has_status_sub,
                _ => true,
            };
            if keep {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// Managed fields after an ordinary write (create, update, patch) by `manager`:
/// fields it added or changed become its own (and leave every other entry), fields it
/// removed leave every entry.
pub(crate) fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
    now: &str,
    rt: &ResourceType,
) -> Result<(), ApiError> {
    let shape = Shape::of(rt);
    let scope = if subresource == "status" {
        Scope::Status
    } else {
        Scope::Main {
            has_status_sub: rt.status,
        }
    };
    let empty = json!({});
    let old_obj = old.unwrap_or(&empty);
    let mut entries = read_managed(old_obj);
    let new_set = collect(new, &shape, scope)?;
    let old_set = collect(old_obj, &shape, scope)?;
    let mut changed = BTreeSet::new();
    for p in &new_set.0 {
        let is_item = p
            .last()
            .is_some_and(|l| l.starts_with("k:") || l.starts_with("v:"));
        let differs = if is_item {
            value_at(old_obj, p, &shape).is_none()
        } else {
            value_at(old_obj, p, &shape) != value_at(new, p, &shape)
        };
        if differs {
            changed.insert(p.clone());
        }
    }
    let removed: BTreeSet<Path> = old_set.0.difference(&new_set.0).cloned().collect();
    for e in entries.iter_mut() {
        let mine = e.same_owner(manager, "Update", subresource);
        e.fields.0.retain(|p| {
            !removed.iter().any(|r| p.starts_with(r)) && (mine || !changed.contains(p))
        });
    }
    if !changed.is_empty() {
        match entries
            .iter_mut()
            .find(|e| e.same_owner(manager, "Update", subresource))
        {
            Some(e) => {
                e.fields.0.extend(changed);
                e.time = now.to_string();
                e.api_version = api_version.to_string();
            }
            None => entries.push(ManagedEntry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version: api_version.to_string(),
                time: now.to_string(),
                subresource: subresource.to_string(),
                fields: FieldSet(changed),
            }),
        }
    }
    write_managed(new, &entries);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    fn deployment_type() -> ResourceType {
        let reg = Registry::default();
        let rt = reg
            .find("apps", "v1", "deployments")
            .expect("deployments are built in");
        (*rt).clone()
    }

    #[test]
    fn fields_v1_round_trips_through_json() {
        let rt = deployment_type();
        let obj = json!({
            "metadata": {"labels": {"a": "b"}, "finalizers": ["x"]},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}}}
        });
        let set = collect(
            &obj,
            &Shape::of(&rt),
            Scope::Main {
                has_status_sub: true,
            },
        )
        .expect("collects");
        let v1 = set.to_fields_v1();
        assert_eq!(
            v1.pointer("/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"c\"}/f:image"),
            Some(&json!({}))
        );
        assert!(v1
            .pointer("/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"c\"}/f:ports/k:{\"containerPort\":80,\"protocol\":\"TCP\"}/.")
            .is_some());
        assert_eq!(FieldSet::from_fields_v1(&v1), set);
    }

    #[test]
    fn containers_merge_by_name_and_args_are_replaced() {
        let rt = deployment_type();
        let mut live = json!({"spec": {"containers": [{"name": "a", "image": "1", "args": ["x"]}, {"name": "b", "image": "2"}]}});
        let applied = json!({"spec": {"containers": [{"name": "b", "image": "3"}, {"name": "a", "args": ["y"]}]}});
        merge_applied(&mut live, &applied, &mut Vec::new(), &Shape::of(&rt));
        assert_eq!(
            live,
            json!({"spec": {"containers": [{"name": "a", "image": "1", "args": ["y"]}, {"name": "b", "image": "3"}]}})
        );
    }

    #[test]
    fn an_item_dropped_by_its_only_applier_is_removed_whole() {
        let rt = deployment_type();
        let apply_as = |live: Option<&Value>, applied: &Value| {
            apply(ApplyRequest {
                live,
                applied,
                manager: "op",
                force: false,
                scope: Scope::Main {
                    has_status_sub: true,
                },
                api_version: "apps/v1",
                now: "t",
                rt: &rt,
                name: "d",
            })
            .expect("applies")
            .object
        };
        let spec = |cs: Value| json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": cs}}}});
        let first = apply_as(
            None,
            &spec(
                json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b", "env": [{"name": "X", "value": "1"}]}]),
            ),
        );
        let second = apply_as(Some(&first), &spec(json!([{"name": "a", "image": "a"}])));
        assert_eq!(
            second["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "a"}])
        );
    }

    #[test]
    fn key_fields_of_items_are_recognised() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_item_key_field(&p(&[
            "f:spec",
            "k:{\"name\":\"a\"}",
            "f:name"
        ])));
        assert!(!is_item_key_field(&p(&[
            "f:spec",
            "k:{\"name\":\"a\"}",
            "f:image"
        ])));
        assert!(!is_item_key_field(&p(&["f:spec", "f:name"])));
    }

    #[test]
    fn display_path_names_list_items_by_key() {
        let p = vec![
            "f:spec".to_string(),
            "f:containers".to_string(),
            "k:{\"name\":\"c\"}".to_string(),
            "f:image".to_string(),
        ];
        assert_eq!(display_path(&p), ".spec.containers[name=\"c\"].image");
    }
}
