//! Built-in objects checked against their Go types, as the API server decodes every create,
//! update and patch of a built-in kind into the kind's Go struct
//! (`staging/src/k8s.io/apiserver/pkg/endpoints/handlers/{create,update,patch}.go`):
//!
//! - a value of the wrong JSON type is a decode error whatever `fieldValidation` says:
//!   `400` `Deployment in version "v1" cannot be handled as a Deployment: json: cannot
//!   unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32`
//!   (`transformDecodeError` in `handlers/rest.go`; Go's `UnmarshalTypeError` names the
//!   innermost struct and the path of JSON field names from the root, without list indices);
//!   after a JSON, merge or strategic merge patch the same error is a `422` on field `patch`;
//! - unknown fields follow `fieldValidation`: `Strict` refuses them (`strict decoding error:
//!   unknown field "spec.foo"`), `Warn` — the default when the parameter is absent — drops them
//!   and answers with a `Warning` header each, `Ignore` drops them silently;
//! - a server-side apply body is typed against the schema before merging (structured-merge-diff):
//!   an unknown field or a wrong type there is a `500` `failed to create typed patch object (…):
//!   .spec.foo: field not declared in schema`, whatever `fieldValidation` says.
//!
//! The types come from the `k8s-openapi` bindings' schemas, corrected to the served version by
//! [`crate::feature_gates`]. Custom resources are `schema`'s business.

use std::collections::HashMap;
use std::sync::OnceLock;

use k8s_openapi::schemars::generate::SchemaSettings;
use k8s_openapi::schemars::SchemaGenerator;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::feature_gates::{self, Served};
use crate::fields::{ListKind, Shape};
use crate::resources::ResourceType;
use crate::warnings::Warnings;

/// The `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Unknown fields refuse the request.
    Strict,
    /// Unknown fields are dropped with a warning (the default since Kubernetes 1.27).
    #[default]
    Warn,
    /// Unknown fields are dropped silently.
    Ignore,
}

impl FieldValidation {
    /// The directive of a request (`None`: parameter absent). `options` names the options
    /// type of the verb (`CreateOptions`, `UpdateOptions`, `PatchOptions`).
    pub(crate) fn parse(raw: Option<&str>, options: &str) -> Result<Self, ApiError> {
        match raw.unwrap_or("") {
            "" | "Warn" => Ok(Self::Warn),
            "Strict" => Ok(Self::Strict),
            "Ignore" => Ok(Self::Ignore),
            other => {
                let message = format!(
                    "Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
                );
                let mut e = ApiError::new(
                    422,
                    "Invalid",
                    format!("{options}.meta.k8s.io \"\" is invalid: fieldValidation: {message}"),
                );
                e.details = Some(json!({"group": "meta.k8s.io", "kind": options, "causes": [
                    {"reason": "FieldValueNotSupported", "message": message, "field": "fieldValidation"}]}));
                Err(e)
            }
        }
    }
}

/// How the object being admitted reached the server (it shapes the decode errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decoding {
    /// A create or update body (or a write of the stand-in itself).
    #[default]
    Body,
    /// The result of a JSON, merge or strategic merge patch.
    Patch,
    /// The result of a server-side apply.
    Apply,
}

/// One step of a path into an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A value of the wrong type, in both renderings.
#[derive(Debug, Clone)]
struct TypeError {
    path: Vec<Seg>,
    /// encoding/json's wording.
    go: String,
    /// structured-merge-diff's wording (without the path).
    smd: String,
}

/// What checking one object found.
#[derive(Debug, Default)]
struct Report {
    unknown: Vec<Vec<Seg>>,
    disabled: Vec<Vec<Seg>>,
    type_error: Option<TypeError>,
}

/// The schemas of the served built-in kinds.
struct Types {
    /// `(group, kind)` → definition name.
    roots: HashMap<(String, String), String>,
    defs: Map<String, Value>,
}

fn types() -> &'static Types {
    static TYPES: OnceLock<Types> = OnceLock::new();
    TYPES.get_or_init(|| {
        use k8s_openapi::api::{apps, autoscaling, coordination, core, events};
        use k8s_openapi::api::{networking, policy, rbac, storage};
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
        let mut gen = SchemaGenerator::new(SchemaSettings::draft2020_12());
        let mut roots = HashMap::new();
        macro_rules! kind {
            ($group:expr, $kind:expr, $t:ty) => {
                let s = gen.subschema_for::<$t>();
                if let Some(r) = s.as_value().get("$ref").and_then(Value::as_str) {
                    roots.insert(
                        ($group.to_string(), $kind.to_string()),
                        r.trim_start_matches("#/$defs/").to_string(),
                    );
                }
            };
        }
        kind!("", "Namespace", core::v1::Namespace);
        kind!("", "Secret", core::v1::Secret);
        kind!("", "ConfigMap", core::v1::ConfigMap);
        kind!("", "Service", core::v1::Service);
        kind!("", "ServiceAccount", core::v1::ServiceAccount);
        kind!("", "Event", core::v1::Event);
        kind!("", "Pod", core::v1::Pod);
        kind!("", "PersistentVolumeClaim", core::v1::PersistentVolumeClaim);
        kind!("apps", "Deployment", apps::v1::Deployment);
        kind!("apps", "StatefulSet", apps::v1::StatefulSet);
        kind!("apps", "ReplicaSet", apps::v1::ReplicaSet);
        kind!(
            "policy",
            "PodDisruptionBudget",
            policy::v1::PodDisruptionBudget
        );
        kind!(
            "networking.k8s.io",
            "NetworkPolicy",
            networking::v1::NetworkPolicy
        );
        kind!("networking.k8s.io", "Ingress", networking::v1::Ingress);
        kind!(
            "autoscaling",
            "HorizontalPodAutoscaler",
            autoscaling::v2::HorizontalPodAutoscaler
        );
        kind!("coordination.k8s.io", "Lease", coordination::v1::Lease);
        kind!("storage.k8s.io", "StorageClass", storage::v1::StorageClass);
        kind!("events.k8s.io", "Event", events::v1::Event);
        kind!("rbac.authorization.k8s.io", "Role", rbac::v1::Role);
        kind!(
            "rbac.authorization.k8s.io",
            "RoleBinding",
            rbac::v1::RoleBinding
        );
        kind!(
            "rbac.authorization.k8s.io",
            "ClusterRole",
            rbac::v1::ClusterRole
        );
        kind!(
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            rbac::v1::ClusterRoleBinding
        );
        kind!(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            apiextensions::v1::CustomResourceDefinition
        );
        Types {
            roots,
            defs: gen.take_definitions(false),
        }
    })
}

/// `PodSpec` of `io.k8s.api.core.v1.PodSpec`.
fn short_name(def: &str) -> &str {
    def.rsplit('.').next().unwrap_or(def)
}

/// `v1.PodSpec`: the Go type as encoding/json prints it.
fn go_name(def: &str) -> String {
    let mut parts = def.rsplit('.');
    let name = parts.next().unwrap_or(def);
    match parts.next() {
        Some(pkg) => format!("{pkg}.{name}"),
        None => name.to_string(),
    }
}

/// Stack kept free below each level of a walk, and the size of a new segment when it runs out.
const RED_ZONE: usize = 64 * 1024;
const STACK_SEGMENT: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// encoding/json into the Go type (create, update, patch).
    Go,
    /// structured-merge-diff typing of an apply body.
    Smd,
}

struct Walker<'a> {
    defs: &'a Map<String, Value>,
    style: Style,
    path: Vec<Seg>,
    /// Struct field names from the root: what encoding/json reports.
    go_path: Vec<String>,
    out: Report,
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::Bool(_) => "bool",
        Value::Null => "null",
    }
}

impl<'a> Walker<'a> {
    fn resolve(&self, mut schema: &'a Value) -> (&'a Value, Option<&'a str>) {
        let mut name = None;
        // references point at definitions, never at other references; bounded anyway
        for _ in 0..8 {
            let target = schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .and_then(|n| self.defs.get_key_value(n));
            match target {
                Some((n, d)) => {
                    name = Some(n.as_str());
                    schema = d;
                }
                None => break,
            }
        }
        (schema, name)
    }

    fn go_type(&self, schema: &'a Value) -> String {
        let (s, name) = self.resolve(schema);
        if let Some(n) = name {
            return match short_name(n) {
                "Time" | "MicroTime" => "string".into(),
                _ => go_name(n),
            };
        }
        match s.get("type").and_then(Value::as_str) {
            Some("array") => match s.get("items") {
                Some(items) => format!("[]{}", self.go_type(items)),
                None => "[]interface {}".into(),
            },
            Some("object") => match s.get("additionalProperties").filter(|a| a.is_object()) {
                Some(ap) => format!("map[string]{}", self.go_type(ap)),
                None => "map[string]interface {}".into(),
            },
            Some("string") if s.get("format").and_then(Value::as_str) == Some("byte") => {
                "[]uint8".into()
            }
            Some("string") => "string".into(),
            Some("integer") => match s.get("format").and_then(Value::as_str) {
                Some(f @ ("int32" | "int64")) => f.into(),
                _ => "int".into(),
            },
            Some("number") => "float64".into(),
            Some("boolean") => "bool".into(),
            _ => "interface {}".into(),
        }
    }

    /// Record a value of the wrong type (the first one only: decoding stops there).
    fn mismatch(&mut self, holder: &str, v: &Value, schema: &'a Value, smd_expected: &str) {
        let go_type = self.go_type(schema);
        self.mismatch_as(holder, json_kind(v).to_string(), v, &go_type, smd_expected);
    }

    fn mismatch_as(&mut self, holder: &str, what: String, v: &Value, go_type: &str, smd: &str) {
        if self.out.type_error.is_some() {
            return;
        }
        let go = format!(
            "json: cannot unmarshal {what} into Go struct field {holder}.{} of type {go_type}",
            self.go_path.join(".")
        );
        let got = match v {
            Value::String(_) => "string".to_string(),
            Value::Bool(_) => "bool".to_string(),
            Value::Object(_) => "map[string]interface {}".to_string(),
            Value::Array(_) => "[]interface {}".to_string(),
            Value::Number(n) => n.to_string(),
            Value::Null => "nil".to_string(),
        };
        self.out.type_error = Some(TypeError {
            path: self.path.clone(),
            go,
            smd: format!("expected {smd}, got {got}"),
        });
    }

    fn value(&mut self, schema: &'a Value, holder: &'a str, v: &Value) {
        if v.is_null() || self.out.type_error.is_some() {
            return;
        }
        stacker::maybe_grow(RED_ZONE, STACK_SEGMENT, || self.visit(schema, holder, v));
    }

    fn visit(&mut self, schema: &'a Value, holder: &'a str, v: &Value) {
        let (schema, name) = self.resolve(schema);
        if let Some(n) = name {
            match short_name(n) {
                // free-form by design
                "FieldsV1" | "RawExtension" | "JSON" => return,
                "Quantity" => return self.quantity(holder, v),
                "IntOrString" => return self.int_or_string(holder, v),
                "Time" | "MicroTime" => {
                    if !v.is_string() {
                        self.mismatch_as(holder, json_kind(v).into(), v, "string", "string");
                    }
                    return;
                }
                _ => {}
            }
        }
        if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
            match branches.iter().find(|b| self.fits(b, v)) {
                Some(b) => self.visit(b, holder, v),
                None => self.mismatch(holder, v, schema, "map"),
            }
            return;
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("object") => self.object(schema, name, holder, v),
            Some("array") => match v.as_array() {
                Some(items) => {
                    let Some(item_schema) = schema.get("items") else {
                        return;
                    };
                    for (i, item) in items.iter().enumerate() {
                        self.path.push(Seg::Index(i));
                        self.value(item_schema, holder, item);
                        self.path.pop();
                    }
                }
                None => self.mismatch(holder, v, schema, "list"),
            },
            Some("string") => match v.as_str() {
                Some(s) if schema.get("format").and_then(Value::as_str) == Some("byte") => {
                    self.base64(s)
                }
                Some(_) => {}
                None => self.mismatch(holder, v, schema, "string"),
            },
            Some("integer") => self.integer(schema, holder, v),
            Some("number") if !v.is_number() => {
                self.mismatch(holder, v, schema, "numeric (int or float)")
            }
            Some("boolean") if !v.is_boolean() => self.mismatch(holder, v, schema, "boolean"),
            _ => {}
        }
    }

    /// Whether `v` has the JSON type of a `oneOf` branch.
    fn fits(&self, branch: &'a Value, v: &Value) -> bool {
        let (b, _) = self.resolve(branch);
        match b.get("type").and_then(Value::as_str) {
            Some("object") => v.is_object(),
            Some("array") => v.is_array(),
            Some("boolean") => v.is_boolean(),
            Some("string") => v.is_string(),
            Some("integer" | "number") => v.is_number(),
            _ => true,
        }
    }

    fn object(&mut self, schema: &'a Value, name: Option<&'a str>, holder: &'a str, v: &Value) {
        let Some(map) = v.as_object() else {
            return self.mismatch(holder, v, schema, "map");
        };
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            let struct_name = name.map(short_name).unwrap_or(holder);
            for (k, child) in map {
                self.path.push(Seg::Key(k.clone()));
                let served = name.and_then(|n| feature_gates::served(n, k));
                match (props.get(k), served) {
                    (None, _) | (Some(_), Some(Served::Unknown)) => {
                        self.out.unknown.push(self.path.clone())
                    }
                    (Some(field_schema), served) => {
                        if served == Some(Served::Dropped) {
                            self.out.disabled.push(self.path.clone());
                        }
                        self.go_path.push(k.clone());
                        self.value(field_schema, struct_name, child);
                        self.go_path.pop();
                    }
                }
                self.path.pop();
            }
        } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            for (k, child) in map {
                self.path.push(Seg::Key(k.clone()));
                self.value(ap, holder, child);
                self.path.pop();
            }
        }
    }

    fn integer(&mut self, schema: &'a Value, holder: &str, v: &Value) {
        let Value::Number(n) = v else {
            return self.mismatch(holder, v, schema, "numeric (int or float)");
        };
        if self.style == Style::Smd {
            return; // structured-merge-diff knows only "numeric"
        }
        let ok = match schema.get("format").and_then(Value::as_str) {
            Some("int32") => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
            _ => n.as_i64().is_some(),
        };
        if !ok {
            let go_type = self.go_type(schema);
            self.mismatch_as(holder, format!("number {n}"), v, &go_type, "numeric");
        }
    }

    fn quantity(&mut self, holder: &str, v: &Value) {
        if v.is_string() || v.is_number() {
            return; // the format is `quantity`'s business
        }
        if self.style == Style::Smd {
            return self.mismatch_as(holder, String::new(), v, "", "any scalar");
        }
        if self.out.type_error.is_none() {
            // resource.Quantity's UnmarshalJSON parses the raw text and fails with this
            self.out.type_error = Some(TypeError {
                path: self.path.clone(),
                go: "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'".into(),
                smd: String::new(),
            });
        }
    }

    fn int_or_string(&mut self, holder: &str, v: &Value) {
        match v {
            Value::String(_) => {}
            Value::Number(_) if self.style == Style::Smd => {}
            Value::Number(n) if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) => {}
            Value::Number(n) => {
                self.mismatch_as(holder, format!("number {n}"), v, "int32", "any scalar")
            }
            Value::Bool(_) if self.style == Style::Smd => {}
            _ => self.mismatch_as(holder, json_kind(v).into(), v, "int32", "any scalar"),
        }
    }

    fn base64(&mut self, s: &str) {
        use base64::Engine;
        if self.style == Style::Smd || self.out.type_error.is_some() {
            return;
        }
        if let Err(e) = base64::engine::general_purpose::STANDARD.decode(s) {
            let at = match e {
                base64::DecodeError::InvalidByte(at, _)
                | base64::DecodeError::InvalidLastSymbol(at, _) => at,
                _ => s.len(),
            };
            self.out.type_error = Some(TypeError {
                path: self.path.clone(),
                go: format!("illegal base64 data at input byte {at}"),
                smd: String::new(),
            });
        }
    }
}

/// Walk `obj` as its built-in kind; `None` for kinds without a Go type here (custom resources).
fn check(rt: &ResourceType, obj: &Value, style: Style) -> Option<Report> {
    if rt.custom || rt.schema.is_some() {
        return None;
    }
    let t = types();
    let (name, schema) = t
        .defs
        .get_key_value(t.roots.get(&(rt.group.clone(), rt.kind.clone()))?)?;
    let mut w = Walker {
        defs: &t.defs,
        style,
        path: Vec::new(),
        go_path: Vec::new(),
        out: Report::default(),
    };
    w.object(schema, Some(name), short_name(name), obj);
    Some(w.out)
}

/// `spec.template.spec.containers[0].image`: the path of strict decoding errors.
fn go_field_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// `.spec.template.spec.containers[name="c"].image`: structured-merge-diff's path, list items
/// by their keys where the list is associative.
fn smd_path(rt: &ResourceType, obj: &Value, path: &[Seg]) -> String {
    let shape = Shape::of(rt);
    let mut fpath: Vec<String> = Vec::new();
    let mut cur = Some(obj);
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
                fpath.push(format!("f:{k}"));
                cur = cur.and_then(|c| c.get(k));
            }
            Seg::Index(i) => {
                let item = cur.and_then(|c| c.get(*i));
                let keyed = match (shape.list_kind(&fpath), item) {
                    (ListKind::Map(keys), Some(it)) if keys.iter().all(|k| it.get(k).is_some()) => {
                        let parts: Vec<String> =
                            keys.iter().map(|k| format!("{k}={}", it[k])).collect();
                        Some(format!("[{}]", parts.join(",")))
                    }
                    _ => None,
                };
                s.push_str(&keyed.unwrap_or_else(|| format!("[{i}]")));
                fpath.push(format!("i:{i}"));
                cur = item;
            }
        }
    }
    s
}

fn remove_path(obj: &mut Value, path: &[Seg]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parents {
        let next = match seg {
            Seg::Key(k) => cur.get_mut(k.as_str()),
            Seg::Index(i) => cur.get_mut(*i),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let (Seg::Key(k), Some(m)) = (last, cur.as_object_mut()) {
        m.remove(k);
    }
}

fn value_at<'v>(obj: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    path.iter().try_fold(obj, |cur, seg| match seg {
        Seg::Key(k) => cur.get(k.as_str()),
        Seg::Index(i) => cur.get(*i),
    })
}

/// A decode failure as the handler that decoded the object reports it.
fn decode_error(rt: &ResourceType, obj: &Value, decoding: Decoding, msg: &str) -> ApiError {
    match decoding {
        Decoding::Patch => {
            // errors.NewInvalid(schema.GroupKind{}, "", field.Invalid("patch", <patched>, msg))
            let value = serde_json::to_string(&obj.to_string()).unwrap_or_default();
            let cause = format!("Invalid value: {value}: {msg}");
            let mut e = ApiError::new(422, "Invalid", format!(" \"\" is invalid: patch: {cause}"));
            e.details = Some(json!({"causes": [
                {"reason": "FieldValueInvalid", "message": cause, "field": "patch"}]}));
            e
        }
        Decoding::Body | Decoding::Apply => ApiError::bad_request(format!(
            "{k} in version {v:?} cannot be handled as a {k}: {msg}",
            k = rt.kind,
            v = rt.version
        )),
    }
}

/// Check a built-in object about to be stored (after merging, before defaulting): a wrongly
/// typed value refuses it, unknown fields are refused, warned about or dropped as `validation`
/// says, and fields whose feature is off at the served version are dropped unless `old`
/// already had them (as upstream keeps a field in use).
pub(crate) fn admit(
    rt: &ResourceType,
    obj: &mut Value,
    old: Option<&Value>,
    validation: FieldValidation,
    decoding: Decoding,
    warnings: &Warnings,
) -> Result<(), ApiError> {
    let Some(report) = check(rt, obj, Style::Go) else {
        return Ok(());
    };
    if let Some(te) = report.type_error {
        return Err(decode_error(rt, obj, decoding, &te.go));
    }
    if !report.unknown.is_empty() {
        let fields: Vec<String> = report
            .unknown
            .iter()
            .map(|p| format!("unknown field \"{}\"", go_field_path(p)))
            .collect();
        match validation {
            FieldValidation::Strict => {
                let msg = format!("strict decoding error: {}", fields.join(", "));
                return Err(decode_error(rt, obj, decoding, &msg));
            }
            FieldValidation::Warn => fields.into_iter().for_each(|f| warnings.push(f)),
            FieldValidation::Ignore => {}
        }
        for p in &report.unknown {
            remove_path(obj, p);
        }
    }
    for p in &report.disabled {
        let in_use = old
            .and_then(|o| value_at(o, p))
            .is_some_and(|v| !v.is_null());
        if !in_use {
            remove_path(obj, p);
        }
    }
    Ok(())
}

/// Type a server-side apply body against the kind's schema, as the field manager does before
/// merging: unknown fields and wrongly typed values are a `500` whatever `fieldValidation`
/// says (`failed to create typed patch object`).
pub(crate) fn check_apply(
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    body: &Value,
) -> Result<(), ApiError> {
    let Some(report) = check(rt, body, Style::Smd) else {
        return Ok(());
    };
    let mut errs = Vec::new();
    if let Some(te) = &report.type_error {
        errs.push(format!("{}: {}", smd_path(rt, body, &te.path), te.smd));
    }
    for p in &report.unknown {
        errs.push(format!(
            "{}: field not declared in schema",
            smd_path(rt, body, p)
        ));
    }
    if errs.is_empty() {
        return Ok(());
    }
    let list = if errs.len() == 1 {
        errs.remove(0)
    } else {
        format!("errors:\n  {}", errs.join("\n  "))
    };
    Err(ApiError::new(
        500,
        "",
        format!(
            "failed to create typed patch object ({}/{name}; {}/{}, Kind={}): {list}",
            ns.unwrap_or_default(),
            rt.group,
            rt.version,
            rt.kind
        ),
    ))
}

#[cfg(test)]
#[path = "builtin_tests.rs"]
mod tests;
