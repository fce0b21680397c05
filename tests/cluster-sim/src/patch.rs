//! The non-apply patch formats: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! strategic merge patch for built-in types (merge keys from [`crate::fields::Shape`]).

use serde_json::Value;

use crate::error::ApiError;
use crate::fields::{item_key, ListKind, Path, Shape};

/// Patch formats accepted by `PATCH` (besides apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`
    Merge,
    /// `application/json-patch+json`
    Json,
    /// `application/strategic-merge-patch+json` (built-in types only)
    Strategic,
    /// `application/apply-patch+yaml`
    Apply,
}

impl PatchType {
    /// From a `Content-Type` header value.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Apply a JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Apply a JSON patch document; a failing `test` or a bad path is `422`, as upstream.
///
/// As upstream's implementation does, a `test` for `null` succeeds on a missing path (kube's
/// finalizer helper relies on this when an object has no finalizers yet).
pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops: Vec<Value> = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array of operations"))?
        .iter()
        .filter(|op| {
            let null_test = op["op"] == "test" && op.get("value").is_some_and(Value::is_null);
            let missing = op["path"]
                .as_str()
                .is_some_and(|p| target.pointer(p).is_none_or(Value::is_null));
            !(null_test && missing)
        })
        .cloned()
        .collect();
    let p: json_patch::Patch = serde_json::from_value(Value::Array(ops))
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &p).map_err(|e| {
        ApiError::new(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {e}"),
        )
    })
}

/// Apply a strategic merge patch (lists with merge keys merge by key, `$patch: delete`
/// items are removed, `$patch: replace` replaces, `$deleteFromPrimitiveList/<f>` removes values).
pub(crate) fn strategic_merge(target: &mut Value, patch: &Value, shape: &Shape) {
    smp(target, patch, &mut Vec::new(), shape);
}

fn smp(target: &mut Value, patch: &Value, path: &mut Path, shape: &Shape) {
    let Value::Object(pm) = patch else {
        *target = patch.clone();
        return;
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = pm.clone();
        clean.remove("$patch");
        *target = Value::Object(clean);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Some(tm) = target.as_object_mut() else {
        return;
    };
    for (k, pv) in pm {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (tm.get_mut(field), pv.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            // $setElementOrder, $retainKeys: ordering/retention hints we do not model
            continue;
        }
        if pv.is_null() {
            tm.remove(k);
            continue;
        }
        path.push(format!("f:{k}"));
        match (tm.get_mut(k), pv) {
            (Some(tv @ Value::Object(_)), Value::Object(_)) => smp(tv, pv, path, shape),
            (Some(Value::Array(ta)), Value::Array(pa)) => merge_list(ta, pa, path, shape),
            (_, pv) => {
                let mut fresh = Value::Null;
                smp_fresh(&mut fresh, pv);
                tm.insert(k.clone(), fresh);
            }
        }
        path.pop();
    }
}

/// A value inserted where nothing was: strip directives.
fn smp_fresh(out: &mut Value, v: &Value) {
    match v {
        Value::Object(m) => {
            let mut clean = serde_json::Map::new();
            for (k, c) in m {
                if k.starts_with('$') {
                    continue;
                }
                let mut inner = Value::Null;
                smp_fresh(&mut inner, c);
                clean.insert(k.clone(), inner);
            }
            *out = Value::Object(clean);
        }
        Value::Array(a) => {
            *out = Value::Array(
                a.iter()
                    .filter(|x| x.get("$patch").and_then(Value::as_str) != Some("delete"))
                    .map(|x| {
                        let mut inner = Value::Null;
                        smp_fresh(&mut inner, x);
                        inner
                    })
                    .collect(),
            )
        }
        other => *out = other.clone(),
    }
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], path: &mut Path, shape: &Shape) {
    match shape.list_kind(path) {
        ListKind::Map(keys) => {
            for item in patch {
                let Ok(key) = item_key(item, &keys) else {
                    continue;
                };
                let pos = target
                    .iter()
                    .position(|t| item_key(t, &keys).ok().as_deref() == Some(key.as_str()));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        target.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        path.push(key);
                        smp(&mut target[i], item, path, shape);
                        path.pop();
                    }
                    (None, false) => {
                        let mut fresh = Value::Null;
                        smp_fresh(&mut fresh, item);
                        target.push(fresh);
                    }
                }
            }
        }
        ListKind::Set => {
            for item in patch {
                if !target.contains(item) {
                    target.push(item.clone());
                }
            }
        }
        ListKind::Atomic => *target = patch.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;
    use serde_json::json;

    #[test]
    fn strategic_patch_merges_env_by_name_and_deletes_marked_items() {
        let reg = Registry::default();
        let rt = reg.find("apps", "v1", "deployments").expect("built in");
        let mut obj = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "env": [{"name": "A", "value": "9"}, {"name": "B", "$patch": "delete"}, {"name": "C", "value": "3"}]}
        ]}}}});
        strategic_merge(&mut obj, &patch, &Shape::of(&rt));
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "A", "value": "9"}, {"name": "C", "value": "3"}])
        );
    }

    #[test]
    fn json_patch_test_for_null_passes_on_a_missing_path() {
        let mut obj = json!({"metadata": {}});
        json_patch(
            &mut obj,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]),
        )
        .expect("null test on a missing path passes");
        assert_eq!(obj, json!({"metadata": {"finalizers": ["f"]}}));
    }

    #[test]
    fn failing_json_patch_test_is_invalid() {
        let mut obj = json!({"a": 1});
        let err = json_patch(&mut obj, &json!([{"op": "test", "path": "/a", "value": 2}]))
            .expect_err("test op must fail");
        assert_eq!(err.code, 422);
    }
}
