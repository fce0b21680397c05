//! The verbs, as operations on [`State`]: get, list, create, update, patch (merge, JSON,
//! strategic, apply), delete and the `/status` and `/scale` subresources. HTTP handlers,
//! the garbage collector, the workload controllers and the handle's direct store access all
//! write through here, so every write gets the same versioning, generation, managed-fields,
//! admission and finalizer semantics.

use rand::Rng;
use serde_json::{json, Value};

use crate::builtin::{Decoding, FieldValidation};
use crate::error::{qualified, ApiError, Cause};
use crate::fields::{self, ApplyRequest, Scope};
use crate::patch::{self, PatchType};
use crate::resources::{types_from_crd, ResourceType};
use crate::schema;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{
    finalizers, meta, meta_str, remove_meta, set_finalizers, set_meta, EventType, ObjKey, State,
};
use crate::warnings::Warnings;

/// Finalizer set by foreground deletion until blocking dependents are gone.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Finalizer set by orphan deletion until dependents lost their owner reference.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// Which part of an object a request addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// The object itself.
    Main,
    /// `/status`.
    Status,
    /// `/scale`.
    Scale,
}

impl Sub {
    fn name(self) -> &'static str {
        match self {
            Sub::Main => "",
            Sub::Status => "status",
            Sub::Scale => "scale",
        }
    }
}

/// Options shared by writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    /// `fieldManager` (or the default derived from the user agent).
    pub manager: String,
    /// `dryRun=All`: run everything, commit nothing.
    pub dry_run: bool,
    /// `fieldValidation` (`Warn` when the parameter is absent, as upstream).
    pub validation: FieldValidation,
    /// How the object to store was built (shapes decode errors).
    pub decoding: Decoding,
    /// Warnings for the response.
    pub warnings: Warnings,
}

/// `DeleteOptions` that matter here.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    /// `Background` (default), `Foreground` or `Orphan`.
    pub propagation: Option<String>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// RFC 3339 time with second precision, as `metav1.Time` serializes.
pub(crate) fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Stamp `apiVersion`/`kind` of the version being served.
pub(crate) fn present(rt: &ResourceType, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(rt.api_version());
    obj["kind"] = json!(rt.kind);
    obj
}

fn key_for(rt: &ResourceType, ns: Option<&str>, name: &str) -> ObjKey {
    ObjKey::new(rt, ns, name)
}

/// `get`.
pub(crate) fn get(
    st: &State,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    st.objects
        .get(&key_for(rt, ns, name))
        .map(|o| present(rt, o.clone()))
        .ok_or_else(|| ApiError::not_found(rt, name))
}

/// Paging of a list request.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// `limit`.
    pub limit: Option<usize>,
    /// `continue` token of the previous page.
    pub cont: Option<String>,
}

/// `list`, newest `resourceVersion` in `metadata`.
pub(crate) fn list(
    st: &State,
    rt: &ResourceType,
    ns: Option<&str>,
    labels: &LabelSelector,
    fields_sel: &FieldSelector,
    page: &Page,
) -> Result<Value, ApiError> {
    use base64::Engine;
    let after: Option<(String, String)> = match &page.cont {
        Some(c) if !c.is_empty() => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
            let (ns, name) = raw
                .split_once('/')
                .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
            Some((ns.to_string(), name.to_string()))
        }
        _ => None,
    };
    let matching: Vec<(&ObjKey, &Value)> = st
        .objects_of(&rt.group, &rt.plural, ns.filter(|_| rt.namespaced))
        .filter(|(k, _)| {
            after
                .as_ref()
                .is_none_or(|(ans, an)| (&k.namespace, &k.name) > (ans, an))
        })
        .filter(|(_, o)| labels.matches(meta(o, "labels")) && fields_sel.matches(o))
        .collect();
    let limit = page.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let mut metadata = json!({"resourceVersion": st.rv.to_string()});
    if matching.len() > limit {
        let last = matching[limit - 1].0;
        metadata["continue"] = json!(base64::engine::general_purpose::STANDARD
            .encode(format!("{}/{}", last.namespace, last.name)));
        metadata["remainingItemCount"] = json!(matching.len() - limit);
    }
    let items: Vec<Value> = matching
        .into_iter()
        .take(limit)
        .map(|(_, o)| present(rt, o.clone()))
        .collect();
    Ok(json!({
        "kind": format!("{}List", rt.kind),
        "apiVersion": rt.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

fn random_suffix() -> String {
    // the alphabet upstream uses for generateName suffixes (no vowels, no look-alikes)
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..5)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn valid_name(rt: &ResourceType, name: &str) -> Option<Cause> {
    if rt.group == "rbac.authorization.k8s.io" {
        // RBAC names are path segments (system:controller:...), not DNS names
        return (name.is_empty() || name.contains('/') || name.contains('%')).then(|| Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {name:?}: may not contain '/' or '%'"),
            field: "metadata.name".into(),
        });
    }
    let ok = name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    (!ok).then(|| Cause {
        reason: "FieldValueInvalid".into(),
        message: format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        ),
        field: "metadata.name".into(),
    })
}

fn check_namespace(
    st: &State,
    rt: &ResourceType,
    ns: Option<&str>,
    creating: bool,
) -> Result<(), ApiError> {
    if !rt.namespaced {
        return Ok(());
    }
    let ns = ns.ok_or_else(|| {
        ApiError::bad_request(
            "the server could not find the requested resource: namespace required",
        )
    })?;
    let key = ObjKey {
        group: String::new(),
        resource: "namespaces".into(),
        namespace: String::new(),
        name: ns.into(),
    };
    match st.objects.get(&key) {
        None => Err(ApiError::namespace_not_found(ns)),
        Some(n) if creating && meta(n, "deletionTimestamp").is_some() => Err(ApiError::forbidden(format!(
            "{} is forbidden: unable to create new content in namespace {} because it is being terminated",
            qualified(rt),
            ns
        ))),
        Some(_) => Ok(()),
    }
}

/// `create`.
pub(crate) fn create(
    st: &mut State,
    rt: &ResourceType,
    ns: Option<&str>,
    mut obj: Value,
    opts: &WriteOpts,
) -> Result<Value, ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("body must be a JSON object"));
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str) {
        if k != rt.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
    }
    if rt.namespaced {
        if let (Some(body_ns), Some(ns)) = (meta_str(&obj, "namespace"), ns) {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        check_namespace(st, rt, ns, true)?;
        set_meta(&mut obj, "namespace", json!(ns.unwrap_or_default()));
    } else {
        remove_meta(&mut obj, "namespace");
    }
    let name = match meta_str(&obj, "name").filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None => match meta_str(&obj, "generateName").filter(|n| !n.is_empty()) {
            Some(prefix) => {
                let prefix = prefix.to_string();
                let mut name = format!("{prefix}{}", random_suffix());
                while st.objects.contains_key(&key_for(rt, ns, &name)) {
                    name = format!("{prefix}{}", random_suffix());
                }
                name
            }
            None => {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    vec![Cause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value: name or generateName is required".into(),
                        field: "metadata.name".into(),
                    }],
                ))
            }
        },
    };
    if let Some(c) = valid_name(rt, &name) {
        return Err(ApiError::invalid(rt, &name, vec![c]));
    }
    set_meta(&mut obj, "name", json!(name));
    let key = key_for(rt, ns, &name);
    if st.objects.contains_key(&key) {
        return Err(ApiError::already_exists(rt, &name));
    }
    for f in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "managedFields",
        "selfLink",
    ] {
        remove_meta(&mut obj, f);
    }
    if rt.status {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    commit(st, rt, key, None, obj, Sub::Main, true, opts)
}

/// Create from an already merged apply result (managed fields computed by the apply).
fn create_applied(
    st: &mut State,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    mut obj: Value,
    opts: &WriteOpts,
) -> Result<Value, ApiError> {
    check_namespace(st, rt, ns, true)?;
    if let Some(c) = valid_name(rt, name) {
        return Err(ApiError::invalid(rt, name, vec![c]));
    }
    set_meta(&mut obj, "name", json!(name));
    if rt.namespaced {
        set_meta(&mut obj, "namespace", json!(ns.unwrap_or_default()));
    }
    if rt.status {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    let key = key_for(rt, ns, name);
    commit(st, rt, key, None, obj, Sub::Main, false, opts)
}

/// Everything but `metadata`, `apiVersion`, `kind` (and `status` for types with a `/status`
/// subresource): what bumps `generation`.
fn spec_part(obj: &Value, status_sub: bool) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "apiVersion", "kind"] {
            m.remove(k);
        }
        if status_sub {
            m.remove("status");
        }
    }
    v
}

/// The object without what changes on every write (for no-op detection).
fn comparable(obj: &Value) -> Value {
    let mut v = obj.clone();
    remove_meta(&mut v, "resourceVersion");
    if let Some(mf) = v
        .pointer_mut("/metadata/managedFields")
        .and_then(Value::as_array_mut)
    {
        for e in mf {
            if let Some(m) = e.as_object_mut() {
                m.remove("time");
            }
        }
    }
    if let Some(m) = v.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

/// The common end of every create and update: system metadata, subresource separation,
/// admission, generation, managed fields, no-op detection, commit and deletion completion.
#[allow(clippy::too_many_arguments)]
fn commit(
    st: &mut State,
    rt: &ResourceType,
    key: ObjKey,
    old: Option<&Value>,
    mut new: Value,
    sub: Sub,
    track_update: bool,
    opts: &WriteOpts,
) -> Result<Value, ApiError> {
    let ts = now();
    let name = key.name.clone();
    match old {
        Some(old) => {
            if let Some(n) = meta_str(&new, "name") {
                if n != name {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )));
                }
            }
            match sub {
                Sub::Status => {
                    let mf = meta(&new, "managedFields").cloned();
                    let status = new.get("status").cloned();
                    new = old.clone();
                    match status {
                        Some(s) => new["status"] = s,
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                    if !track_update {
                        match mf {
                            Some(mf) => set_meta(&mut new, "managedFields", mf),
                            None => remove_meta(&mut new, "managedFields"),
                        }
                    }
                }
                Sub::Main | Sub::Scale if rt.status => match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                },
                _ => {}
            }
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
            ] {
                match meta(old, f) {
                    Some(v) => set_meta(&mut new, f, v.clone()),
                    None => remove_meta(&mut new, f),
                }
            }
            set_meta(&mut new, "name", json!(name));
            if track_update {
                // managedFields in an update body are ignored; ownership is recomputed
                match meta(old, "managedFields") {
                    Some(v) => set_meta(&mut new, "managedFields", v.clone()),
                    None => remove_meta(&mut new, "managedFields"),
                }
            }
            if meta(old, "deletionTimestamp").is_some() {
                let before = finalizers(old);
                if finalizers(&new).iter().any(|f| !before.contains(f)) {
                    return Err(ApiError::invalid(
                        rt,
                        &name,
                        vec![Cause {
                            reason: "FieldValueForbidden".into(),
                            message: "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                            field: "metadata.finalizers".into(),
                        }],
                    ));
                }
            }
        }
        None => {
            set_meta(&mut new, "uid", json!(uuid::Uuid::new_v4().to_string()));
            set_meta(&mut new, "creationTimestamp", json!(ts));
            set_meta(&mut new, "generation", json!(1));
        }
    }
    new["apiVersion"] = json!(rt.api_version());
    new["kind"] = json!(rt.kind);
    admit(st, rt, &name, old, &mut new, opts)?;
    if let Some(old) = old {
        let generation = meta(old, "generation").and_then(Value::as_i64).unwrap_or(1);
        if spec_part(old, rt.status) != spec_part(&new, rt.status) {
            set_meta(&mut new, "generation", json!(generation + 1));
        }
    }
    if track_update {
        fields::track_update(
            old,
            &mut new,
            &opts.manager,
            sub.name(),
            &rt.api_version(),
            &ts,
            rt,
        )?;
    }
    if let Some(old) = old {
        if comparable(old) == comparable(&new) {
            return Ok(present(rt, old.clone()));
        }
    }
    if opts.dry_run {
        if let Some(old) = old {
            if let Some(rv) = meta(old, "resourceVersion") {
                set_meta(&mut new, "resourceVersion", rv.clone());
            }
        }
        return Ok(present(rt, new));
    }
    let deleting = meta(&new, "deletionTimestamp").is_some() && finalizers(&new).is_empty();
    let etype = match (old, deleting) {
        (_, true) => EventType::Deleted,
        (Some(_), false) => EventType::Modified,
        (None, false) => EventType::Added,
    };
    let rv = st.record(etype, key.clone(), new.clone(), old.cloned());
    set_meta(&mut new, "resourceVersion", json!(rv.to_string()));
    after_commit(st, rt, etype, &new);
    Ok(present(rt, new))
}

/// Type-specific defaulting and validation, run on every create and update.
fn admit(
    st: &State,
    rt: &ResourceType,
    name: &str,
    old: Option<&Value>,
    obj: &mut Value,
    opts: &WriteOpts,
) -> Result<(), ApiError> {
    if let Some(schema_doc) = &rt.schema {
        let out = schema::validate(schema_doc, obj, old);
        if opts.validation == FieldValidation::Warn {
            for p in &out.pruned {
                opts.warnings.push(format!("unknown field \"{p}\""));
            }
        }
        if opts.validation == FieldValidation::Strict && !out.pruned.is_empty() {
            let list: Vec<String> = out
                .pruned
                .iter()
                .map(|p| format!("unknown field \"{p}\""))
                .collect();
            return Err(ApiError::bad_request(format!(
                "{} in body: strict decoding error: {}",
                rt.kind,
                list.join(", ")
            )));
        }
        if !out.causes.is_empty() {
            return Err(ApiError::invalid(rt, name, out.causes));
        }
        return Ok(());
    }
    crate::builtin::admit(rt, obj, old, opts.validation, opts.decoding, &opts.warnings)?;
    crate::defaults::apply(st, rt, obj, old);
    let mut causes = crate::quantity::canonicalize(rt, obj);
    causes.extend(crate::downward::check(rt, obj));
    if let Some(old) = old {
        causes.extend(crate::immutable::check(rt, old, obj));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(rt, name, causes));
    }
    if let Some(old) = old {
        crate::immutable::check_resize(st, rt, old, obj)?;
    }
    crate::pod_security::admit(st, rt, name, old, obj, &opts.warnings)?;
    if rt.group == "apiextensions.k8s.io" {
        crd_admission(st, rt, name, old, obj)?;
    }
    Ok(())
}

fn crd_admission(
    st: &State,
    rt: &ResourceType,
    name: &str,
    old: Option<&Value>,
    crd: &mut Value,
) -> Result<(), ApiError> {
    let spec = &crd["spec"];
    let mut causes = Vec::new();
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    let kind = spec["names"]["kind"].as_str().unwrap_or_default();
    let req = |f: &str| Cause {
        reason: "FieldValueRequired".into(),
        message: "Required value".into(),
        field: f.into(),
    };
    if group.is_empty() {
        causes.push(req("spec.group"));
    }
    if plural.is_empty() {
        causes.push(req("spec.names.plural"));
    }
    if kind.is_empty() {
        causes.push(req("spec.names.kind"));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
            field: "metadata.name".into(),
        });
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(req("spec.versions"));
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: []apiextensions.CustomResourceDefinitionVersion{{...}}: must have exactly one version marked as storage version (found {storage})"),
            field: "spec.versions".into(),
        });
    }
    for (i, v) in versions.iter().enumerate() {
        match v.pointer("/schema/openAPIV3Schema") {
            Some(s) => causes.extend(schema::check_structural(
                s,
                &format!("spec.versions[{i}].schema.openAPIV3Schema"),
            )),
            None => causes.push(req(&format!("spec.versions[{i}].schema.openAPIV3Schema"))),
        }
    }
    if old.is_none() {
        if let Some(existing) = st.registry.find_any_version(group, plural) {
            if !existing.custom {
                causes.push(Cause {
                    reason: "FieldValueInvalid".into(),
                    message: format!(
                        "Invalid value: {plural:?}: conflicts with a built-in resource"
                    ),
                    field: "spec.names.plural".into(),
                });
            }
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(rt, name, causes));
    }
    // what the CRD controllers would report once names are accepted and the type is served
    let ts = old
        .and_then(|o| {
            o.pointer("/status/conditions/0/lastTransitionTime")
                .cloned()
        })
        .unwrap_or_else(|| json!(now()));
    let mut names = spec["names"].clone();
    if names.get("singular").is_none() {
        names["singular"] = json!(kind.to_lowercase());
    }
    if names.get("listKind").is_none() {
        names["listKind"] = json!(format!("{kind}List"));
    }
    let storage_version = versions
        .iter()
        .find(|v| v["storage"].as_bool() == Some(true))
        .and_then(|v| v["name"].as_str())
        .unwrap_or_default()
        .to_string();
    crd["status"] = json!({
        "acceptedNames": names,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": ts},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": ts}
        ],
        "storedVersions": [storage_version],
    });
    Ok(())
}

/// Registry changes that follow a committed CRD write.
fn after_commit(st: &mut State, rt: &ResourceType, etype: EventType, obj: &Value) {
    if rt.group != "apiextensions.k8s.io" || rt.plural != "customresourcedefinitions" {
        return;
    }
    let group = obj["spec"]["group"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let plural = obj["spec"]["names"]["plural"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match etype {
        EventType::Deleted => {
            let keys: Vec<ObjKey> = st
                .objects_of(&group, &plural, None)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                if let Some(o) = st.objects.get(&k).cloned() {
                    st.record(EventType::Deleted, k, o.clone(), Some(o));
                }
            }
            st.registry.set_custom(&group, &plural, vec![]);
        }
        _ => st.registry.set_custom(&group, &plural, types_from_crd(obj)),
    }
}

fn precondition_rv(
    rt: &ResourceType,
    name: &str,
    body: &Value,
    old: &Value,
) -> Result<(), ApiError> {
    if let Some(rv) = meta_str(body, "resourceVersion").filter(|r| !r.is_empty()) {
        if Some(rv) != meta_str(old, "resourceVersion") {
            return Err(ApiError::conflict(rt, name));
        }
    }
    Ok(())
}

/// `update` (PUT) of the object, its `/status` or its `/scale`.
pub(crate) fn update(
    st: &mut State,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    sub: Sub,
    body: Value,
    opts: &WriteOpts,
) -> Result<Value, ApiError> {
    let key = key_for(rt, ns, name);
    let old = st
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    if !body.is_object() {
        return Err(ApiError::bad_request("body must be a JSON object"));
    }
    precondition_rv(rt, name, &body, &old)?;
    if sub == Sub::Scale {
        return write_scale(st, rt, key, &old, &body, opts);
    }
    commit(st, rt, key, Some(&old), body, sub, true, opts)
}

/// The `autoscaling/v1` `Scale` view of an object.
pub(crate) fn scale_of(rt: &ResourceType, obj: &Value) -> Result<Value, ApiError> {
    let spec = rt
        .scale
        .as_ref()
        .ok_or_else(|| ApiError::not_found(rt, meta_str(obj, "name").unwrap_or_default()))?;
    let replicas = crate::store::get_path(obj, &spec.spec_replicas_path)
        .and_then(Value::as_i64)
        .unwrap_or(if rt.custom { 0 } else { 1 });
    let status_replicas = crate::store::get_path(obj, &spec.status_replicas_path)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = if rt.custom {
        spec.label_selector_path
            .as_ref()
            .and_then(|p| crate::store::get_path(obj, p))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    } else {
        obj.pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let mut metadata = json!({});
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta(obj, f) {
            metadata[f] = v.clone();
        }
    }
    let mut status = json!({"replicas": status_replicas});
    if !selector.is_empty() {
        status["selector"] = json!(selector);
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": replicas},
        "status": status,
    }))
}

fn write_scale(
    st: &mut State,
    rt: &ResourceType,
    key: ObjKey,
    old: &Value,
    scale: &Value,
    opts: &WriteOpts,
) -> Result<Value, ApiError> {
    let spec = rt
        .scale
        .clone()
        .ok_or_else(|| ApiError::not_found(rt, &key.name))?;
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .ok_or_else(|| {
            ApiError::invalid(
                rt,
                &key.name,
                vec![Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value".into(),
                    field: "spec.replicas".into(),
                }],
            )
        })?;
    if replicas < 0 {
        return Err(ApiError::invalid(
            rt,
            &key.name,
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                field: "spec.replicas".into(),
            }],
        ));
    }
    let mut new = old.clone();
    crate::store::set_path(&mut new, &spec.spec_replicas_path, json!(replicas));
    let obj = commit(st, rt, key, Some(old), new, Sub::Scale, true, opts)?;
    scale_of(rt, &obj)
}

/// Parse a request body: YAML for apply, JSON otherwise.
pub(crate) fn parse_body(ptype: Option<PatchType>, body: &[u8]) -> Result<Value, ApiError> {
    if ptype == Some(PatchType::Apply) {
        // The YAML parser recurses once per level: as deep an object as the
        // API server takes needs more than a test thread's stack.
        stacker::grow(YAML_STACK, || {
            serde_saphyr::from_slice_with_options(body, apply_yaml_options())
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        })
    } else {
        json_body(body).map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
    }
}

/// Stack for parsing one YAML apply body.
const YAML_STACK: usize = 256 << 20;

/// Deepest nesting a JSON body may have: Go's JSON decoder, which the API
/// server uses, stops at 10,000 levels.
pub(crate) const MAX_JSON_DEPTH: usize = 10_000;

/// A JSON request body at any depth the API server takes. serde_json's
/// default limit (128 levels) would refuse objects a real server stores
/// (a deep `x-kubernetes-preserve-unknown-fields` field), and a test of a
/// client's handling of them would prove nothing.
pub(crate) fn json_body(body: &[u8]) -> Result<Value, String> {
    if let Some(d) = depth_over(body, MAX_JSON_DEPTH) {
        return Err(format!("exceeded max depth {d}"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    de.disable_recursion_limit();
    // Parsing recurses once per level: grow the stack instead of
    // overflowing it.
    let v = serde::Deserialize::deserialize(serde_stacker::Deserializer::new(&mut de))
        .map_err(|e: serde_json::Error| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}

/// The nesting depth of JSON text past `max`, counted without parsing
/// (brackets outside strings).
fn depth_over(body: &[u8], max: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// YAML limits for apply bodies: far above what any object the API server
/// stores needs (it caps request bodies at 3 MiB), so the stand-in never
/// refuses what a real server would take.
fn apply_yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 10_000;
    budget.flow_nesting_limit = 10_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// `patch` of the object, its `/status` or its `/scale`, in any of the four formats.
#[allow(clippy::too_many_arguments)]
pub(crate) fn patch(
    st: &mut State,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    sub: Sub,
    ptype: PatchType,
    body: Value,
    force: bool,
    opts: &WriteOpts,
) -> Result<Value, ApiError> {
    let key = key_for(rt, ns, name);
    let old = st.objects.get(&key).cloned();
    if ptype == PatchType::Apply {
        if opts.manager.is_empty() {
            return Err(ApiError::invalid(
                rt,
                name,
                vec![Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value: is required for apply patch".into(),
                    field: "fieldManager".into(),
                }],
            ));
        }
        if !body.is_object() {
            return Err(ApiError::bad_request("apply body must be an object"));
        }
        if let Some(n) = meta_str(&body, "name") {
            if n != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        if sub == Sub::Scale {
            let old = old.ok_or_else(|| ApiError::not_found(rt, name))?;
            return write_scale(st, rt, key, &old, &body, opts);
        }
        // An apply body says what it is (upstream: `yaml.Unmarshal` into
        // an Unstructured, then the field manager's version check); a
        // client that leaves them out is refused, never guessed for.
        if body
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty()
        {
            return Err(ApiError::bad_request(format!(
                "Object 'Kind' is missing in '{body}'"
            )));
        }
        let version = body
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if version != rt.api_version() {
            return Err(ApiError::bad_request(format!(
                "Incorrect version specified in apply patch. Specified patch version: {}, expected: {}",
                if version.is_empty() { "/" } else { version },
                rt.api_version()
            )));
        }
        if sub == Sub::Status && old.is_none() {
            return Err(ApiError::not_found(rt, name));
        }
        if let Some(o) = &old {
            precondition_rv(rt, name, &body, o)?;
        }
        crate::builtin::check_apply(rt, ns, name, &body)?;
        let opts = &WriteOpts {
            decoding: Decoding::Apply,
            ..opts.clone()
        };
        let scope = match sub {
            Sub::Status => Scope::Status,
            _ => Scope::Main {
                has_status_sub: rt.status,
            },
        };
        let ts = now();
        let api_version = rt.api_version();
        let applied = fields::apply(ApplyRequest {
            live: old.as_ref(),
            applied: &body,
            manager: &opts.manager,
            force,
            scope,
            api_version: &api_version,
            now: &ts,
            rt,
            name,
        })?;
        return match old {
            None => create_applied(st, rt, ns, name, applied.object, opts),
            Some(o) => commit(st, rt, key, Some(&o), applied.object, sub, false, opts),
        };
    }
    let old = old.ok_or_else(|| ApiError::not_found(rt, name))?;
    let opts = &WriteOpts {
        decoding: Decoding::Patch,
        ..opts.clone()
    };
    if ptype == PatchType::Strategic && rt.custom {
        return Err(ApiError::unsupported_media_type(
            "application/strategic-merge-patch+json",
        ));
    }
    let mut target = if sub == Sub::Scale {
        scale_of(rt, &old)?
    } else {
        present(rt, old.clone())
    };
    match ptype {
        PatchType::Merge => patch::merge_patch(&mut target, &body),
        PatchType::Json => patch::json_patch(&mut target, &body)?,
        PatchType::Strategic => patch::strategic_merge(&mut target, &body, &fields::Shape::of(rt)),
        // apply returned from the branch at the top of this function
        PatchType::Apply => unreachable!("apply handled above"),
    }
    precondition_rv(rt, name, &target, &old)?;
    if sub == Sub::Scale {
        return write_scale(st, rt, key, &old, &target, opts);
    }
    commit(st, rt, key, Some(&old), target, sub, true, opts)
}

/// What a delete did.
#[derive(Debug)]
pub(crate) enum Deleted {
    /// Removed now; the object as it was.
    Gone(Value),
    /// Finalizers pending; the object now carries `deletionTimestamp`.
    Pending(Value),
}

/// `delete` of one object.
pub(crate) fn delete(
    st: &mut State,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    o: &DeleteOpts,
) -> Result<Deleted, ApiError> {
    let key = key_for(rt, ns, name);
    let old = st
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    if let Some(uid) = &o.uid {
        if Some(uid.as_str()) != meta_str(&old, "uid") {
            return Err(ApiError::conflict_msg(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or_default()
                ),
            ));
        }
    }
    if let Some(rv) = &o.resource_version {
        if Some(rv.as_str()) != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict_msg(
                rt,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old, "resourceVersion").unwrap_or_default()
                ),
            ));
        }
    }
    let mut fins = finalizers(&old);
    match o.propagation.as_deref() {
        Some("Foreground") if !fins.iter().any(|f| f == FOREGROUND_FINALIZER) => {
            fins.push(FOREGROUND_FINALIZER.into())
        }
        Some("Orphan") if !fins.iter().any(|f| f == ORPHAN_FINALIZER) => {
            fins.push(ORPHAN_FINALIZER.into())
        }
        Some("Foreground") | Some("Orphan") | Some("Background") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported propagationPolicy {other:?}"
            )))
        }
    }
    let is_namespace = rt.group.is_empty() && rt.plural == "namespaces";
    if is_namespace && matches!(name, "default" | "kube-system" | "kube-public") {
        return Err(ApiError::forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    if fins.is_empty() && !is_namespace {
        if o.dry_run {
            return Ok(Deleted::Gone(present(rt, old)));
        }
        let rv = st.record(
            EventType::Deleted,
            key.clone(),
            old.clone(),
            Some(old.clone()),
        );
        let mut gone = old;
        set_meta(&mut gone, "resourceVersion", json!(rv.to_string()));
        after_commit(st, rt, EventType::Deleted, &gone);
        return Ok(Deleted::Gone(present(rt, gone)));
    }
    let mut new = old.clone();
    if meta(&new, "deletionTimestamp").is_none() {
        set_meta(&mut new, "deletionTimestamp", json!(now()));
        set_meta(&mut new, "deletionGracePeriodSeconds", json!(0));
    }
    set_finalizers(&mut new, &fins);
    if is_namespace {
        new["status"]["phase"] = json!("Terminating");
    }
    if new == old || o.dry_run {
        return Ok(Deleted::Pending(present(rt, new)));
    }
    let rv = st.record(EventType::Modified, key, new.clone(), Some(old));
    set_meta(&mut new, "resourceVersion", json!(rv.to_string()));
    Ok(Deleted::Pending(present(rt, new)))
}

/// Rewrite an object's finalizers as a controller would (used by GC); completes the deletion
/// when the last one goes.
pub(crate) fn set_object_finalizers(st: &mut State, key: &ObjKey, fins: &[String]) {
    let Some(old) = st.objects.get(key).cloned() else {
        return;
    };
    let mut new = old.clone();
    set_finalizers(&mut new, fins);
    if new == old {
        return;
    }
    let etype = if fins.is_empty() && meta(&new, "deletionTimestamp").is_some() {
        EventType::Deleted
    } else {
        EventType::Modified
    };
    st.record(etype, key.clone(), new.clone(), Some(old));
    if etype == EventType::Deleted {
        if let Some(rt) = st.registry.find_any_version(&key.group, &key.resource) {
            after_commit(st, &rt, etype, &new);
        }
    }
}

/// Write an object's new content as the named system component (`Update` managed fields).
pub(crate) fn system_write(
    st: &mut State,
    key: &ObjKey,
    new: Value,
    sub: Sub,
    manager: &str,
) -> Result<Value, ApiError> {
    let rt = st
        .registry
        .find_any_version(&key.group, &key.resource)
        .ok_or_else(|| ApiError::internal(format!("no type for {}/{}", key.group, key.resource)))?;
    let old = st.objects.get(key).cloned();
    let opts = WriteOpts {
        manager: manager.into(),
        ..Default::default()
    };
    match old {
        Some(o) => commit(st, &rt, key.clone(), Some(&o), new, sub, true, &opts),
        None => create(
            st,
            &rt,
            Some(&key.namespace)
                .filter(|n| !n.is_empty())
                .map(|s| s.as_str()),
            new,
            &opts,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels))
    }

    #[test]
    fn a_body_deeper_than_serde_jsons_default_limit_is_read() {
        let v = json_body(nested(300).as_bytes()).unwrap();
        assert_eq!(v.pointer(&"/a".repeat(300)), Some(&json!(1)));
    }

    #[test]
    fn a_body_past_the_api_servers_depth_is_refused() {
        let err = json_body(nested(MAX_JSON_DEPTH + 1).as_bytes()).unwrap_err();
        assert!(err.contains("exceeded max depth"), "{err}");
        // Brackets inside strings do not count.
        let quoted = format!(r#"{{"s":"{}"}}"#, "[".repeat(MAX_JSON_DEPTH + 5));
        assert!(json_body(quoted.as_bytes()).is_ok());
    }
}
