//! The HTTP face: one handler parses Kubernetes API paths, authenticates the bearer token,
//! applies injected faults and RBAC, dispatches to [`crate::ops`] or [`crate::watch`], and
//! records the request.
//!
//! ```text
//! request → identify caller → parse path/verb → faults (latency, failure) → RBAC → verb → record
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State as AxState};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use crate::builtin::{Decoding, FieldValidation};
use crate::error::{qualified, ApiError};
use crate::faults::RequestRecord;
use crate::ops::{self, DeleteOpts, Deleted, Page, Sub, WriteOpts};
use crate::patch::PatchType;
use crate::rbac::{self, Attributes, AuthzDecision, Identity};
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::sim::Core;
use crate::table::Render;
use crate::warnings::Warnings;

/// The router serving the whole API.
pub(crate) fn router(core: Arc<Core>) -> Router {
    Router::new().fallback(handle).with_state(core)
}

/// A parsed request path.
#[derive(Debug, Clone)]
enum Route {
    Version,
    Api,
    Apis,
    Group(String),
    Resources(String, String),
    OpenApiV2,
    OpenApiV3Root,
    OpenApiV3(String),
    Healthz,
    Object(ObjRoute),
    Unknown,
}

#[derive(Debug, Clone)]
struct ObjRoute {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_route(path: &str) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Route::Version,
        ["healthz"] | ["livez"] | ["readyz"] => return Route::Healthz,
        ["openapi", "v2"] => return Route::OpenApiV2,
        ["openapi", "v3"] => return Route::OpenApiV3Root,
        ["openapi", "v3", rest @ ..] => return Route::OpenApiV3(rest.join("/")),
        ["api"] => return Route::Api,
        ["apis"] => return Route::Apis,
        ["apis", g] => return Route::Group(g.to_string()),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::Unknown,
    };
    let s = |x: &&str| x.to_string();
    let namespaced = rest.len() >= 3
        && rest[0] == "namespaces"
        && !(group.is_empty() && rest.len() == 3 && matches!(rest[2], "status" | "finalize"));
    let o = |plural: &str, namespace: Option<String>, name: Option<String>, sub: Option<String>| {
        Route::Object(ObjRoute {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            namespace,
            name,
            sub,
        })
    };
    if namespaced {
        let ns = Some(rest[1].to_string());
        return match &rest[2..] {
            [p] => o(p, ns, None, None),
            [p, n] => o(p, ns, Some(n.to_string()), None),
            [p, n, sub] => o(p, ns, Some(n.to_string()), Some(sub.to_string())),
            _ => Route::Unknown,
        };
    }
    match rest {
        [] => Route::Resources(group.into(), version.into()),
        [p] => o(p, None, None, None),
        [p, n] => o(p, None, Some(s(n)), None),
        [p, n, sub] => o(p, None, Some(s(n)), Some(s(sub))),
        _ => Route::Unknown,
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn identify(core: &Core, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(Identity::anonymous());
    };
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    core.tokens
        .lock()
        .get(token.trim())
        .cloned()
        .ok_or_else(ApiError::unauthorized)
}

async fn handle(AxState(core): AxState<Arc<Core>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query: HashMap<String, String> = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let body = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return ApiError::bad_request(format!("reading body: {e}")).into_response(),
    };
    let route = parse_route(&path);
    let identity = identify(&core, &parts.headers);
    let caller = identity
        .as_ref()
        .map(Identity::caller)
        .unwrap_or_else(|_| "unauthenticated".into());
    let watch = matches!(
        query.get("watch").map(String::as_str),
        Some("true") | Some("1")
    );
    let mut record = RequestRecord {
        verb: parts.method.as_str().to_lowercase(),
        group: String::new(),
        resource: String::new(),
        subresource: String::new(),
        namespace: None,
        name: None,
        caller,
        code: 0,
        path: path.clone(),
    };
    if let Route::Object(o) = &route {
        record.verb = verb_of(&parts.method, o.name.is_some(), watch).to_string();
        record.group = o.group.clone();
        record.resource = o.plural.clone();
        record.subresource = o.sub.clone().unwrap_or_default();
        record.namespace = o.namespace.clone();
        record.name = o.name.clone();
    }
    let (delay, fail) = core.faults.lock().on_request(&record);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = match (identity, fail) {
        (Err(e), _) => e.into_response(),
        (_, Some(code)) => injected(code).into_response(),
        (Ok(id), None) => serve(
            &core,
            route,
            &parts.method,
            &parts.headers,
            &query,
            body,
            &id,
            &mut record,
        )
        .await
        .unwrap_or_else(IntoResponse::into_response),
    };
    record.code = response.status().as_u16();
    tracing::debug!(verb = %record.verb, path = %record.path, code = record.code, "request");
    core.faults.lock().log.push(record);
    response
}

fn injected(code: u16) -> ApiError {
    let reason = match code {
        409 => "Conflict",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "NotFound",
        _ => "InternalError",
    };
    ApiError::new(
        code,
        reason,
        format!("cluster-sim: injected fault ({code})"),
    )
}

fn verb_of(method: &Method, named: bool, watch: bool) -> &'static str {
    match (method.as_str(), named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

fn default_manager(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.split('/').next().unwrap_or(ua).to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    core: &Arc<Core>,
    route: Route,
    method: &Method,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Bytes,
    id: &Identity,
    record: &mut RequestRecord,
) -> Result<Response, ApiError> {
    let get_only = |doc: Option<Value>| -> Result<Response, ApiError> {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed("only GET is served here"));
        }
        doc.map(|d| json_response(StatusCode::OK, &d))
            .ok_or_else(not_found_path)
    };
    match route {
        Route::Healthz => Ok((StatusCode::OK, "ok").into_response()),
        Route::Version => get_only(Some(json!({
            "major": "1", "minor": "30", "gitVersion": "v1.30.0-cluster-sim",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23", "compiler": "gc",
            "platform": "linux/amd64",
        }))),
        Route::Api => get_only(Some(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        }))),
        Route::Apis => get_only(Some(core.state.lock().registry.api_group_list())),
        Route::Group(g) => get_only(core.state.lock().registry.api_group(&g)),
        Route::Resources(g, v) => get_only(core.state.lock().registry.api_resource_list(&g, &v)),
        Route::OpenApiV2 | Route::OpenApiV3Root | Route::OpenApiV3(_) => {
            let st = core.state.lock();
            get_only(crate::openapi::document(
                &st.registry,
                &route_openapi(&route),
            ))
        }
        Route::Unknown => Err(not_found_path()),
        Route::Object(o) => serve_object(core, o, headers, query, body, id, record).await,
    }
}

fn route_openapi(r: &Route) -> String {
    match r {
        Route::OpenApiV2 => "v2".into(),
        Route::OpenApiV3Root => "v3".into(),
        Route::OpenApiV3(p) => format!("v3/{p}"),
        _ => String::new(),
    }
}

fn render_for(headers: &HeaderMap) -> Render {
    Render::from_accept(
        headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    )
}

/// Serve one object request; warnings it earned go back as `Warning` headers, on success
/// and failure alike (as upstream).
#[allow(clippy::too_many_arguments)]
async fn serve_object(
    core: &Arc<Core>,
    o: ObjRoute,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Bytes,
    id: &Identity,
    record: &mut RequestRecord,
) -> Result<Response, ApiError> {
    let warnings = Warnings::default();
    let mut resp = serve_object_with(core, o, headers, query, body, id, record, &warnings)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    warnings.attach(&mut resp);
    Ok(resp)
}

#[allow(clippy::too_many_arguments)]
async fn serve_object_with(
    core: &Arc<Core>,
    o: ObjRoute,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Bytes,
    id: &Identity,
    record: &mut RequestRecord,
    warnings: &Warnings,
) -> Result<Response, ApiError> {
    let rt: Arc<ResourceType> = core
        .state
        .lock()
        .registry
        .find(&o.group, &o.version, &o.plural)
        .ok_or_else(not_found_path)?;
    if (!rt.namespaced && o.namespace.is_some())
        || (rt.namespaced && o.namespace.is_none() && o.name.is_some())
    {
        return Err(not_found_path());
    }
    let sub = match o.sub.as_deref() {
        None => Sub::Main,
        Some("status") if rt.status => Sub::Status,
        Some("scale") if rt.scale.is_some() => Sub::Scale,
        Some(_) => return Err(not_found_path()),
    };
    let verb = record.verb.clone();
    if core.opts.rbac && !id.admin {
        let attrs = Attributes {
            verb: verb.clone(),
            group: rt.group.clone(),
            resource: rt.plural.clone(),
            subresource: o.sub.clone().unwrap_or_default(),
            namespace: o.namespace.clone(),
            name: o.name.clone(),
        };
        let (allowed, reason) = if id.service_account.is_some() {
            rbac::authorize(&core.state.lock(), id, &attrs)
        } else {
            (false, "anonymous requests are not authorized".to_string())
        };
        let message = rbac::forbidden_message(id, &attrs, &qualified(&rt));
        core.decisions.lock().push(AuthzDecision {
            user: id.user.clone(),
            attributes: attrs,
            allowed,
            reason,
        });
        if !allowed {
            let mut e = ApiError::forbidden(message);
            e.details = Some(
                json!({"name": o.name.clone().unwrap_or_default(), "group": rt.group, "kind": rt.plural}),
            );
            return Err(e);
        }
    }
    let ns = o.namespace.as_deref();
    let dry_run = query.get("dryRun").is_some_and(|d| d == "All");
    let options = match verb.as_str() {
        "create" => "CreateOptions",
        "update" => "UpdateOptions",
        _ => "PatchOptions",
    };
    let validation = if matches!(verb.as_str(), "create" | "update" | "patch") {
        FieldValidation::parse(query.get("fieldValidation").map(String::as_str), options)?
    } else {
        FieldValidation::default()
    };
    let opts = WriteOpts {
        manager: query
            .get("fieldManager")
            .cloned()
            .unwrap_or_else(|| default_manager(headers)),
        dry_run,
        validation,
        decoding: Decoding::Body,
        warnings: warnings.clone(),
    };
    let render = render_for(headers);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    // create/update bodies: JSON, or protobuf for the few kinds `protobuf` decodes (CBOR: 415)
    let decode_body = |body: &Bytes| -> Result<Value, ApiError> {
        if content_type.starts_with("application/vnd.kubernetes.protobuf") {
            crate::protobuf::decode(body, &content_type)
        } else if content_type.starts_with("application/json") || content_type.is_empty() {
            ops::parse_body(None, body)
        } else {
            Err(ApiError::unsupported_media_type(&content_type))
        }
    };
    match verb.as_str() {
        "watch" => {
            let labels =
                LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?;
            let mut fields = FieldSelector::parse(
                query.get("fieldSelector").map(String::as_str).unwrap_or(""),
                &rt.kind,
            )?;
            if let Some(name) = &o.name {
                fields = FieldSelector::parse(&format!("metadata.name={name}"), &rt.kind)?;
            }
            let cut = core.faults.lock().watch_cut(record);
            crate::watch::start(
                core.clone(),
                rt,
                crate::watch::WatchParams {
                    namespace: o.namespace.clone(),
                    labels,
                    fields,
                    resource_version: query
                        .get("resourceVersion")
                        .cloned()
                        .filter(|s| !s.is_empty()),
                    bookmarks: query
                        .get("allowWatchBookmarks")
                        .is_some_and(|v| v == "true"),
                    send_initial_events: query
                        .get("sendInitialEvents")
                        .is_some_and(|v| v == "true"),
                    timeout: query
                        .get("timeoutSeconds")
                        .and_then(|t| t.parse::<u64>().ok())
                        .map(std::time::Duration::from_secs),
                    cut_after: cut,
                    render,
                },
            )
        }
        "get" => {
            let name = o.name.as_deref().unwrap_or_default();
            let st = core.state.lock();
            let obj = ops::get(&st, &rt, ns, name)?;
            let out = match sub {
                Sub::Scale => ops::scale_of(&rt, &obj)?,
                _ => render.one(obj),
            };
            Ok(json_response(StatusCode::OK, &out))
        }
        "list" => {
            let labels =
                LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?;
            let fields = FieldSelector::parse(
                query.get("fieldSelector").map(String::as_str).unwrap_or(""),
                &rt.kind,
            )?;
            let page = Page {
                limit: query.get("limit").and_then(|l| l.parse().ok()),
                cont: query.get("continue").cloned(),
            };
            let st = core.state.lock();
            let list = ops::list(&st, &rt, ns, &labels, &fields, &page)?;
            let out = render.list(list);
            Ok(json_response(StatusCode::OK, &out))
        }
        "create" => {
            if sub != Sub::Main {
                return Err(ApiError::method_not_allowed(
                    "create is not allowed on subresources",
                ));
            }
            let obj = decode_body(&body)?;
            let created = core.write(|st| ops::create(st, &rt, ns, obj, &opts))?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        "update" => {
            let name = o.name.clone().unwrap_or_default();
            let obj = decode_body(&body)?;
            let updated = core.write(|st| ops::update(st, &rt, ns, &name, sub, obj, &opts))?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        "patch" => {
            let name = o.name.clone().unwrap_or_default();
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let ptype = PatchType::from_content_type(&ct)
                .ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
            let patch_body = ops::parse_body(Some(ptype), &body)?;
            let force = query.get("force").is_some_and(|f| f == "true");
            if ptype == PatchType::Apply && !query.contains_key("fieldManager") {
                return Err(ApiError::invalid(
                    &rt,
                    &name,
                    vec![crate::error::Cause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value: is required for apply patch".into(),
                        field: "fieldManager".into(),
                    }],
                ));
            }
            let existed = core
                .state
                .lock()
                .objects
                .contains_key(&crate::store::ObjKey::new(&rt, ns, &name));
            let patched = core
                .write(|st| ops::patch(st, &rt, ns, &name, sub, ptype, patch_body, force, &opts))?;
            let code = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok(json_response(code, &patched))
        }
        "delete" => {
            let name = o.name.clone().unwrap_or_default();
            let dopts = delete_options(query, &body, &content_type, dry_run)?;
            let res = core.write(|st| ops::delete(st, &rt, ns, &name, &dopts))?;
            Ok(match res {
                Deleted::Gone(obj) => json_response(
                    StatusCode::OK,
                    &json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": obj["metadata"]["uid"]},
                    }),
                ),
                Deleted::Pending(obj) => json_response(StatusCode::OK, &obj),
            })
        }
        "deletecollection" => {
            let labels =
                LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?;
            let fields = FieldSelector::parse(
                query.get("fieldSelector").map(String::as_str).unwrap_or(""),
                &rt.kind,
            )?;
            let dopts = delete_options(query, &body, &content_type, dry_run)?;
            let list = core.write(|st| {
                let list = ops::list(st, &rt, ns, &labels, &fields, &Page::default())?;
                let mut items = Vec::new();
                for it in list["items"].as_array().into_iter().flatten() {
                    let name = it["metadata"]["name"].as_str().unwrap_or_default();
                    let ins = it["metadata"]["namespace"].as_str();
                    match ops::delete(st, &rt, ins, name, &dopts)? {
                        Deleted::Gone(v) | Deleted::Pending(v) => items.push(v),
                    }
                }
                Ok::<_, ApiError>(json!({
                    "kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
                    "metadata": {"resourceVersion": st.rv.to_string()}, "items": items,
                }))
            })?;
            Ok(json_response(StatusCode::OK, &list))
        }
        other => Err(ApiError::method_not_allowed(format!(
            "verb {other} not supported"
        ))),
    }
}

fn delete_options(
    query: &HashMap<String, String>,
    body: &Bytes,
    content_type: &str,
    dry_run: bool,
) -> Result<DeleteOpts, ApiError> {
    let b: Value = if body.is_empty() {
        json!({})
    } else if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        crate::protobuf::decode(body, content_type)?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let orphan = b["orphanDependents"]
        .as_bool()
        .or_else(|| query.get("orphanDependents").map(|v| v == "true"));
    let propagation = b["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .or_else(|| query.get("propagationPolicy").cloned())
        .or_else(|| orphan.and_then(|o| o.then(|| "Orphan".to_string())));
    Ok(DeleteOpts {
        propagation,
        uid: b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        resource_version: b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run: dry_run
            || b["dryRun"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "All")),
    })
}

/// A streaming body from a channel of chunks.
pub(crate) fn stream_body(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    let s = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Body::from_stream(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_object_paths_are_not_namespaced_collections() {
        match parse_route("/api/v1/namespaces/foo/status") {
            Route::Object(o) => {
                assert_eq!(o.plural, "namespaces");
                assert_eq!(o.name.as_deref(), Some("foo"));
                assert_eq!(o.sub.as_deref(), Some("status"));
            }
            other => panic!("unexpected route {other:?}"),
        }
        match parse_route("/apis/apps/v1/namespaces/ns/deployments/d/scale") {
            Route::Object(o) => {
                assert_eq!(
                    (o.group.as_str(), o.plural.as_str()),
                    ("apps", "deployments")
                );
                assert_eq!(o.namespace.as_deref(), Some("ns"));
                assert_eq!(o.sub.as_deref(), Some("scale"));
            }
            other => panic!("unexpected route {other:?}"),
        }
    }
}
