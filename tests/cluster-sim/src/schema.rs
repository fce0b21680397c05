//! CRD schemas: the structural-schema check done when a CRD is written, and the validation of
//! custom objects against it — pruning of unknown fields, `default`s, types, `required`,
//! `enum`, bounds, lengths, item counts, `pattern`, the `allOf`/`anyOf`/`oneOf`/`not`
//! junctors, and `x-kubernetes-validations` CEL rules.

use std::collections::HashMap;
use std::sync::Arc;

use cel_interpreter::{Context, Program, Value as Cel};
use serde_json::Value;

use crate::error::Cause;

fn forbidden(field: String, msg: &str) -> Cause {
    Cause {
        reason: "FieldValueForbidden".into(),
        message: format!("Forbidden: {msg}"),
        field,
    }
}

fn required(field: String, msg: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired".into(),
        message: if msg.is_empty() {
            "Required value".into()
        } else {
            format!("Required value: {msg}")
        },
        field,
    }
}

fn invalid(field: String, shown: &Value, msg: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: {}: {msg}", show(shown)),
        field,
    }
}

/// How the real server prints a value in `Invalid value: ...`.
fn show(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        Value::Null => "\"null\"".into(),
        other => other.to_string(),
    }
}

fn flag(node: &Value, key: &str) -> bool {
    node.get(key).and_then(Value::as_bool) == Some(true)
}

// === structural check ===

/// Check one version's `openAPIV3Schema`; `path` is the field path of the schema itself.
pub(crate) fn check_structural(schema: &Value, path: &str) -> Vec<Cause> {
    let mut errs = Vec::new();
    if schema.get("type").is_none() {
        errs.push(required(
            format!("{path}.type"),
            "must not be empty at the root",
        ));
    }
    walk_structural(schema, path, Junctor::No, &mut errs);
    errs
}

#[derive(Clone, Copy, PartialEq)]
enum Junctor {
    /// Not inside anyOf/oneOf/allOf/not.
    No,
    /// Inside one; `int_or_string` when the node owning the junctor is int-or-string.
    Yes { int_or_string: bool },
}

fn walk_structural(node: &Value, path: &str, junctor: Junctor, errs: &mut Vec<Cause>) {
    let Some(m) = node.as_object() else { return };
    if m.contains_key("$ref") {
        errs.push(forbidden(format!("{path}.$ref"), "$ref is not supported"));
    }
    let int_or_string = flag(node, "x-kubernetes-int-or-string");
    let preserve = flag(node, "x-kubernetes-preserve-unknown-fields");
    match junctor {
        Junctor::Yes { int_or_string: ios } => {
            for f in [
                "type",
                "nullable",
                "default",
                "description",
                "additionalProperties",
            ] {
                if let Some(v) = m.get(f) {
                    let allowed = f == "type"
                        && ios
                        && matches!(v.as_str(), Some("integer") | Some("string"));
                    if !allowed {
                        errs.push(forbidden(
                            format!("{path}.{f}"),
                            "must be empty to be structural",
                        ));
                    }
                }
            }
        }
        Junctor::No => {
            if !m.contains_key("type")
                && !int_or_string
                && !preserve
                && !path.ends_with("openAPIV3Schema")
            {
                errs.push(required(
                    format!("{path}.type"),
                    "must not be empty for specified object fields",
                ));
            }
            if m.contains_key("properties") && m.contains_key("additionalProperties") {
                errs.push(forbidden(
                    format!("{path}.additionalProperties"),
                    "additionalProperties and properties are mutual exclusive",
                ));
            }
        }
    }
    if let Some(rules) = m.get("x-kubernetes-validations").and_then(Value::as_array) {
        if junctor == Junctor::No && !has_cel_type(node) {
            // As the API server: CEL needs a declared type for `self`; a
            // typeless field with preserved unknown fields has none.
            let ty = m.get("type").and_then(Value::as_str).unwrap_or_default();
            errs.push(Cause {
                reason: "InternalError".into(),
                message: format!(
                    "Internal error: rule declared on schema that does not support validation rules type: '{ty}' x-kubernetes-preserve-unknown-fields: '{preserve}'"
                ),
                field: format!("{path}.x-kubernetes-validations"),
            });
        }
        for (i, r) in rules.iter().enumerate() {
            let rule = r["rule"].as_str().unwrap_or_default();
            if let Err(e) = Program::compile(rule) {
                errs.push(Cause {
                    reason: "FieldValueInvalid".into(),
                    message: format!(
                        "Invalid value: {}: compilation failed: {e}",
                        Value::from(rule)
                    ),
                    field: format!("{path}.x-kubernetes-validations[{i}].rule"),
                });
            }
        }
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk_structural(v, &format!("{path}.properties[{k}]"), junctor, errs);
        }
    }
    if let Some(ap) = m.get("additionalProperties").filter(|v| v.is_object()) {
        walk_structural(ap, &format!("{path}.additionalProperties"), junctor, errs);
    }
    if let Some(items) = m.get("items") {
        walk_structural(items, &format!("{path}.items"), junctor, errs);
    }
    let j = Junctor::Yes { int_or_string };
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = m.get(key).and_then(Value::as_array) {
            for (i, s) in list.iter().enumerate() {
                walk_structural(s, &format!("{path}.{key}[{i}]"), j, errs);
            }
        }
    }
    if let Some(not) = m.get("not") {
        walk_structural(not, &format!("{path}.not"), j, errs);
    }
}

/// Whether CEL rules can see values of this schema: the API server's
/// `SchemaDeclType` is nil for a schema without a type (unless it is
/// int-or-string), and for lists and maps of such schemas.
fn has_cel_type(node: &Value) -> bool {
    if flag(node, "x-kubernetes-int-or-string") {
        return true;
    }
    match node.get("type").and_then(Value::as_str) {
        None | Some("") => false,
        Some("array") => node.get("items").is_some_and(has_cel_type),
        Some("object") => match node.get("additionalProperties") {
            Some(ap @ Value::Object(_)) => has_cel_type(ap),
            _ => true,
        },
        Some(_) => true,
    }
}

// === validation of custom objects ===

/// What validating one object found.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Violations, each a `details.causes[]` entry of the 422.
    pub causes: Vec<Cause>,
    /// Paths of unknown fields that were pruned (for `fieldValidation=Strict`).
    pub pruned: Vec<String>,
}

/// Prune, default and validate `obj` in place against `schema`; `old` is the stored object on
/// updates (for CEL transition rules using `oldSelf`).
pub(crate) fn validate(schema: &Value, obj: &mut Value, old: Option<&Value>) -> Outcome {
    let mut out = Outcome::default();
    let Some(m) = obj.as_object_mut() else {
        return out;
    };
    let props = schema.get("properties").and_then(Value::as_object);
    let keys: Vec<String> = m.keys().cloned().collect();
    for k in keys {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.and_then(|p| p.get(&k)) {
            Some(ps) => {
                if let Some(v) = m.get_mut(&k) {
                    walk(ps, v, old.and_then(|o| o.get(&k)), &k, &mut out);
                }
            }
            None if flag(schema, "x-kubernetes-preserve-unknown-fields") => {}
            None => {
                m.remove(&k);
                out.pruned.push(k);
            }
        }
    }
    if let Some(p) = props {
        for (k, ps) in p {
            if !m.contains_key(k) && !matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                if let Some(d) = ps.get("default") {
                    m.insert(k.clone(), d.clone());
                }
            }
        }
    }
    for r in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = r.as_str() {
            if !m.contains_key(r) {
                out.causes.push(required(r.to_string(), ""));
            }
        }
    }
    let snapshot = Value::Object(m.clone());
    cel_rules(schema, &snapshot, old, "", &mut out);
    out
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

fn walk(schema: &Value, v: &mut Value, old: Option<&Value>, path: &str, out: &mut Outcome) {
    if v.is_null() {
        if !flag(schema, "nullable") {
            let ty = schema
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("object");
            out.causes.push(Cause {
                reason: "FieldValueTypeInvalid".into(),
                message: format!(
                    "Invalid value: \"null\": {path} in body must be of type {ty}: \"null\""
                ),
                field: path.to_string(),
            });
        }
        return;
    }
    let ios = flag(schema, "x-kubernetes-int-or-string");
    if ios {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            out.causes.push(invalid(
                path.into(),
                v,
                &format!("{path} in body must be of type int-or-string"),
            ));
            return;
        }
    } else if let Some(ty) = schema.get("type").and_then(Value::as_str) {
        if !type_ok(ty, v) {
            let actual = match v {
                Value::Object(_) => "object",
                Value::Array(_) => "array",
                Value::String(_) => "string",
                Value::Bool(_) => "boolean",
                Value::Number(n) if n.is_f64() => "number",
                Value::Number(_) => "integer",
                Value::Null => "null",
            };
            out.causes.push(Cause {
                reason: "FieldValueTypeInvalid".into(),
                message: format!("Invalid value: \"{actual}\": {path} in body must be of type {ty}: \"{actual}\""),
                field: path.into(),
            });
            return;
        }
    }
    junctors(schema, v, path, out);
    if let Some(en) = schema.get("enum").and_then(Value::as_array) {
        if !en.contains(v) {
            let supported: Vec<String> = en.iter().map(|e| e.to_string()).collect();
            out.causes.push(Cause {
                reason: "FieldValueNotSupported".into(),
                message: format!(
                    "Unsupported value: {}: supported values: {}",
                    v,
                    supported.join(", ")
                ),
                field: path.into(),
            });
        }
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let ap = schema.get("additionalProperties");
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
            if let Some(p) = props {
                for (k, ps) in p {
                    if !m.contains_key(k) {
                        if let Some(d) = ps.get("default") {
                            m.insert(k.clone(), d.clone());
                        }
                    }
                }
            }
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child_path = format!("{path}.{k}");
                let sub = props
                    .and_then(|p| p.get(&k))
                    .or(ap.filter(|a| a.is_object()));
                match sub {
                    Some(s) => {
                        if let Some(c) = m.get_mut(&k) {
                            walk(s, c, old.and_then(|o| o.get(&k)), &child_path, out);
                        }
                    }
                    None if preserve || ap == Some(&Value::Bool(true)) => {}
                    None => {
                        m.remove(&k);
                        out.pruned.push(child_path);
                    }
                }
            }
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(r) = r.as_str() {
                    if !m.contains_key(r) {
                        out.causes.push(required(format!("{path}.{r}"), ""));
                    }
                }
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64) {
                if m.len() as u64 > max {
                    out.causes.push(Cause {
                        reason: "FieldValueTooMany".into(),
                        message: format!("Too many: {}: must have at most {max} items", m.len()),
                        field: path.into(),
                    });
                }
            }
            if let Some(min) = schema.get("minProperties").and_then(Value::as_u64) {
                if (m.len() as u64) < min {
                    out.causes.push(invalid(
                        path.into(),
                        &Value::from(m.len()),
                        &format!("{path} in body should have at least {min} properties"),
                    ));
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if items.len() as u64 > max {
                    out.causes.push(Cause {
                        reason: "FieldValueTooMany".into(),
                        message: format!(
                            "Too many: {}: must have at most {max} items",
                            items.len()
                        ),
                        field: path.into(),
                    });
                }
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if (items.len() as u64) < min {
                    out.causes.push(invalid(
                        path.into(),
                        &Value::from(items.len()),
                        &format!("{path} in body should have at least {min} items"),
                    ));
                }
            }
            if let Some(is) = schema.get("items") {
                for (i, it) in items.iter_mut().enumerate() {
                    walk(is, it, None, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::String(s) => {
            let n = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if n > max {
                    out.causes.push(Cause {
                        reason: "FieldValueTooLong".into(),
                        message: format!("Too long: may not be longer than {max}"),
                        field: path.into(),
                    });
                }
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if n < min {
                    let shown = Value::String(s.clone());
                    out.causes.push(invalid(
                        path.into(),
                        &shown,
                        &format!("{path} in body should be at least {min} chars long"),
                    ));
                }
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(s) => {
                        let shown = Value::String(s.clone());
                        out.causes.push(invalid(
                            path.into(),
                            &shown,
                            &format!("{path} in body should match '{p}'"),
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let shown = Value::String(p.to_string());
                        out.causes.push(invalid(
                            path.into(),
                            &shown,
                            &format!("invalid pattern: {e}"),
                        ));
                    }
                }
            }
        }
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                let excl_max = flag(schema, "exclusiveMaximum");
                let excl_min = flag(schema, "exclusiveMinimum");
                if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                    if x > max || (excl_max && x == max) {
                        let rel = if excl_max {
                            "less than"
                        } else {
                            "less than or equal to"
                        };
                        out.causes.push(invalid(
                            path.into(),
                            &Value::Number(n.clone()),
                            &format!("{path} in body should be {rel} {}", schema["maximum"]),
                        ));
                    }
                }
                if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                    if x < min || (excl_min && x == min) {
                        let rel = if excl_min {
                            "greater than"
                        } else {
                            "greater than or equal to"
                        };
                        out.causes.push(invalid(
                            path.into(),
                            &Value::Number(n.clone()),
                            &format!("{path} in body should be {rel} {}", schema["minimum"]),
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    let snapshot = v.clone();
    cel_rules(schema, &snapshot, old, path, out);
}

/// Whether `v` satisfies `schema` alone (a junctor's branch): validated on a
/// copy, so the branch neither prunes nor defaults the stored object.
fn satisfies(schema: &Value, v: &Value, path: &str) -> bool {
    let mut copy = v.clone();
    let mut out = Outcome::default();
    walk(schema, &mut copy, None, path, &mut out);
    out.causes.is_empty()
}

/// `allOf`, `anyOf`, `oneOf` and `not`, with the API server's messages.
fn junctors(schema: &Value, v: &Value, path: &str, out: &mut Outcome) {
    let list = |k: &str| {
        schema
            .get(k)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    // The branches of allOf report their own violations.
    for branch in list("allOf") {
        let mut copy = v.clone();
        walk(branch, &mut copy, None, path, out);
    }
    let any = list("anyOf");
    if !any.is_empty() && !any.iter().any(|b| satisfies(b, v, path)) {
        out.causes.push(invalid(
            path.into(),
            v,
            &format!("{path} in body must validate at least one schema (anyOf)"),
        ));
    }
    let one = list("oneOf");
    if !one.is_empty() && one.iter().filter(|b| satisfies(b, v, path)).count() != 1 {
        out.causes.push(invalid(
            path.into(),
            v,
            &format!("{path} in body must validate one and only one schema (oneOf)"),
        ));
    }
    if let Some(not) = schema.get("not") {
        if satisfies(not, v, path) {
            out.causes.push(invalid(
                path.into(),
                v,
                &format!("{path} in body must not validate the schema (not)"),
            ));
        }
    }
}

// === CEL ===

/// JSON → CEL value: integers as `int` (as the real server types `integer` fields).
fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(a) => Cel::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<String, Cel> = m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            Cel::from(map)
        }
    }
}

fn cel_rules(schema: &Value, v: &Value, old: Option<&Value>, path: &str, out: &mut Outcome) {
    let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    else {
        return;
    };
    for r in rules {
        let rule = r["rule"].as_str().unwrap_or_default();
        let uses_old = rule.contains("oldSelf");
        if uses_old && old.is_none() {
            // transition rules only run on updates, as upstream
            continue;
        }
        let field = match r["fieldPath"].as_str() {
            Some(fp) if path.is_empty() => fp.trim_start_matches('.').to_string(),
            Some(fp) => format!("{path}{fp}"),
            None => path.to_string(),
        };
        let reason = r["reason"]
            .as_str()
            .unwrap_or("FieldValueInvalid")
            .to_string();
        let mut ctx = Context::default();
        ctx.add_variable_from_value("self", to_cel(v));
        if let Some(o) = old {
            ctx.add_variable_from_value("oldSelf", to_cel(o));
        }
        let verdict = Program::compile(rule)
            .map_err(|e| format!("compilation failed: {e}"))
            .and_then(|p| p.execute(&ctx).map_err(|e| format!("{e}")));
        let message = match verdict {
            Ok(Cel::Bool(true)) => continue,
            Ok(Cel::Bool(false)) => {
                let from_expr = r["messageExpression"].as_str().and_then(|me| {
                    Program::compile(me)
                        .ok()
                        .and_then(|p| match p.execute(&ctx) {
                            Ok(Cel::String(s)) => Some(s.to_string()),
                            _ => None,
                        })
                });
                from_expr
                    .or_else(|| r["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("failed rule: {rule}"))
            }
            Ok(other) => format!("rule did not evaluate to a bool: {other:?}"),
            Err(e) => format!("rule evaluation error: {e}"),
        };
        let msg = match reason.as_str() {
            "FieldValueForbidden" => format!("Forbidden: {message}"),
            "FieldValueRequired" => format!("Required value: {message}"),
            "FieldValueDuplicate" => format!("Duplicate value: {}: {message}", show(v)),
            _ => format!("Invalid value: {}: {message}", show(v)),
        };
        out.causes.push(Cause {
            reason,
            message: msg,
            field: if field.is_empty() {
                "<nil>".into()
            } else {
                field
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn root(spec: Value) -> Value {
        json!({"type": "object", "properties": {"spec": spec}})
    }

    #[test]
    fn node_without_type_is_not_structural() {
        let errs = check_structural(&root(json!({"properties": {"a": {"type": "string"}}})), "s");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "s.properties[spec].type");
    }

    #[test]
    fn int_or_string_may_use_typed_any_of() {
        let s = root(json!({"type": "object", "properties": {"port": {
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}]
        }}}));
        assert!(check_structural(&s, "s").is_empty());
        let bad = root(json!({"type": "object", "properties": {"port": {
            "type": "string", "anyOf": [{"type": "integer"}]
        }}}));
        assert_eq!(check_structural(&bad, "s").len(), 1);
    }

    #[test]
    fn unknown_fields_are_pruned_and_defaults_filled() {
        let s =
            root(json!({"type": "object", "properties": {"a": {"type": "integer", "default": 3}}}));
        let mut obj = json!({"spec": {"zzz": 1}, "other": 2});
        let out = validate(&s, &mut obj, None);
        assert!(out.causes.is_empty(), "{:?}", out.causes);
        assert_eq!(obj, json!({"spec": {"a": 3}}));
        assert_eq!(
            out.pruned,
            vec!["other".to_string(), "spec.zzz".to_string()]
        );
    }

    #[test]
    fn cel_rules_on_a_typeless_field_are_refused_as_the_api_server_does() {
        let s = root(json!({"type": "object", "properties": {"next": {
            "x-kubernetes-preserve-unknown-fields": true,
            "x-kubernetes-validations": [{"rule": "type(self) == string"}]
        }}}));
        let errs = check_structural(&s, "s");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            errs[0].field,
            "s.properties[spec].properties[next].x-kubernetes-validations"
        );
        assert!(errs[0]
            .message
            .contains("does not support validation rules"));
        // A typed field, a list of typed items and int-or-string may carry rules.
        let ok = root(json!({"type": "object", "properties": {
            "a": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                  "x-kubernetes-validations": [{"rule": "size(self) < 3"}]},
            "b": {"type": "array", "items": {"type": "string"},
                  "x-kubernetes-validations": [{"rule": "size(self) < 3"}]},
            "c": {"x-kubernetes-int-or-string": true,
                  "x-kubernetes-validations": [{"rule": "self != 0"}]}
        }}));
        assert!(check_structural(&ok, "s").is_empty());
    }

    #[test]
    fn junctors_are_enforced_with_the_api_servers_messages() {
        let s = root(json!({"type": "object", "properties": {
            "not": {"x-kubernetes-preserve-unknown-fields": true, "not": {"enum": [true, false]}},
            "any": {"type": "string", "anyOf": [{"pattern": "^a"}, {"maxLength": 1}]},
            "one": {"type": "string", "oneOf": [{"maxLength": 3}, {"minLength": 2}]},
            "all": {"x-kubernetes-preserve-unknown-fields": true,
                    "allOf": [{"minimum": 1}, {"maximum": 0}]}
        }}));
        let check = |field: &str, x: Value| {
            let mut obj = json!({"spec": {field: x}});
            validate(&s, &mut obj, None)
                .causes
                .into_iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect::<Vec<_>>()
        };
        let none = Vec::<String>::new();
        assert_eq!(check("not", json!("x")), none);
        assert_eq!(
            check("not", json!(false)),
            vec!["spec.not: Invalid value: false: spec.not in body must not validate the schema (not)"]
        );
        assert_eq!(check("any", json!("abc")), none);
        assert_eq!(check("any", json!("z")), none);
        assert_eq!(
            check("any", json!("zz")),
            vec!["spec.any: Invalid value: \"zz\": spec.any in body must validate at least one schema (anyOf)"]
        );
        assert_eq!(check("one", json!("a")), none);
        assert_eq!(check("one", json!("abcd")), none);
        assert_eq!(
            check("one", json!("ab")),
            vec!["spec.one: Invalid value: \"ab\": spec.one in body must validate one and only one schema (oneOf)"]
        );
        // Bounds apply to numbers only, so this allOf refuses every number and nothing else.
        assert_eq!(check("all", json!("x")), none);
        assert_eq!(check("all", json!([1])), none);
        assert_eq!(
            check("all", json!(5)),
            vec!["spec.all: Invalid value: 5: spec.all in body should be less than or equal to 0"]
        );
    }

    /// The sluice CRD's schema, as checked in.
    fn sluice_schema() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../crds/streampipeline.yaml"
        );
        let text = std::fs::read_to_string(path).expect("crds/streampipeline.yaml");
        let crd: Value = serde_saphyr::from_str(&text).expect("CRD YAML");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    fn pipeline() -> Value {
        json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "StreamPipeline",
            "metadata": {"name": "shop", "namespace": "ns"},
            "spec": {
                "interfaces": [{"name": "api", "path": "/v1/x", "entry": "a", "timeout": "5s"}],
                "groups": [{"name": "web", "role": "ingress"}, {"name": "cpu", "role": "worker"}],
                "nodes": [
                    {"name": "a", "group": "web", "uses": "builtin/route", "with": {"field": "/k"},
                     "next": [{"when": "x", "to": "b"}, {"to": "c"}]},
                    {"name": "b", "group": "cpu", "uses": "builtin/echo", "next": "c"},
                    {"name": "c", "group": "cpu", "uses": "builtin/echo"}
                ]
            }
        })
    }

    #[test]
    fn the_sluice_crd_refuses_what_its_types_cannot_read() {
        let schema = sluice_schema();
        assert!(check_structural(&schema, "openAPIV3Schema").is_empty());
        let causes = |pointer: &str, value: Value| {
            let mut obj = pipeline();
            if let Some(field) = obj.pointer_mut(pointer) {
                *field = value;
            } else {
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                obj.pointer_mut(parent).unwrap()[key] = value;
            }
            validate(&schema, &mut obj, None)
                .causes
                .into_iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            causes("/spec", pipeline()["spec"].clone()),
            Vec::<String>::new()
        );
        let cases = [
            ("/spec/nodes/0/next", json!(3), "spec.nodes[0].next: Invalid value: 3: spec.nodes[0].next in body should be less than or equal to 0"),
            ("/spec/nodes/0/next", json!(-3), "spec.nodes[0].next in body should be greater than or equal to 1"),
            ("/spec/nodes/0/next", json!(1.5), "spec.nodes[0].next in body should be less than or equal to 0"),
            ("/spec/nodes/0/next", json!({"to": "b"}), "spec.nodes[0].next: Too many: 1: must have at most 0 items"),
            ("/spec/nodes/0/next", json!({}), "spec.nodes[0].next in body should have at least 1 properties"),
            ("/spec/nodes/0/next", json!(true), "spec.nodes[0].next in body must not validate the schema (not)"),
            ("/spec/nodes/0/next", json!("Bad_Name"), "spec.nodes[0].next in body should match"),
            ("/spec/nodes/0/next", json!([]), "spec.nodes[0].next in body should have at least 1 items"),
            ("/spec/nodes/0/next", json!([{"when": "x"}]), "spec.nodes[0].next[0].to: Required value"),
            ("/spec/nodes/0/next", json!(["b"]), "spec.nodes[0].next[0] in body must be of type object"),
            ("/spec/nodes/0/next", json!([{"to": 7}]), "spec.nodes[0].next[0].to in body must be of type string"),
            ("/spec/nodes/0/next", json!(vec![json!({"when": "x", "to": "b"}); 33]), "spec.nodes[0].next: Too many: 33: must have at most 32 items"),
            ("/spec/nodes/0/with", json!([1]), "spec.nodes[0].with in body must be of type object"),
            ("/spec/nodes/0/with", json!("x"), "spec.nodes[0].with in body must be of type object"),
            ("/spec/interfaces/0/path", json!("/v1/:id"), "spec.interfaces[0].path in body should match"),
            ("/spec/interfaces/0/path", json!("/v1//x"), "spec.interfaces[0].path in body should match"),
            ("/spec/interfaces/0/timeout", json!("1s".repeat(17)), "spec.interfaces[0].timeout: Too long: may not be longer than 32"),
            ("/spec/groups/1/concurrency", json!(5_000_000_000u64), "spec.groups[1].concurrency in body should be less than or equal to 4096"),
            ("/spec/nodes/0/group", json!("g".repeat(31)), "spec.nodes[0].group: Too long: may not be longer than 30"),
            ("/spec/interfaces/0/entry", json!("e".repeat(64)), "spec.interfaces[0].entry: Too long: may not be longer than 63"),
            ("/metadata/name", json!("Evil_Name"), "metadata.name must be a DNS-1035 label"),
        ];
        for (pointer, value, want) in cases {
            let got = causes(pointer, value);
            assert!(
                got.iter().any(|c| c.contains(want)),
                "{pointer}: want {want:?} in {got:#?}"
            );
        }
    }

    #[test]
    fn cel_rule_failure_reports_its_message_at_the_field() {
        let s = root(json!({
            "type": "object",
            "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
            "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "min must not exceed max"}]
        }));
        let mut obj = json!({"spec": {"min": 5, "max": 2}});
        let out = validate(&s, &mut obj, None);
        assert_eq!(out.causes.len(), 1, "{:?}", out.causes);
        assert_eq!(out.causes[0].field, "spec");
        assert!(out.causes[0].message.contains("min must not exceed max"));
    }
}
