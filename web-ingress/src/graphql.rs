//! GraphQL interfaces (`kind: graphql`): a schema built at start from the
//! manifest's operations, each root field one request through the
//! pipeline.
//!
//! ```text
//! POST <path> {"query", "variables"?, "operationName"?}
//!   ─▶ caller (401) ─▶ rate limit (429) ─▶ body ≤ limit, JSON shape (400/413/408)
//!   ─▶ parse + validate: depth ≤ maxDepth, fields ≤ maxComplexity (aliases and
//!      introspection count) ─▶ per selected operation: backlog (503) ─▶ an
//!      interface slot (429) ─▶ the pipeline (call::run) with the arguments as
//!      its input ─▶ the answer checked against the declared type
//!   ─▶ 200 {"data", "errors"?}
//! ```
//!
//! A failed operation is a GraphQL error at its path whose
//! `extensions.code` and `extensions.status` are the code and status the
//! POST route would answer (`node_failed` 422, `timeout` 504,
//! `too_many_requests` 429, …); an answer that does not fit the declared
//! type is `bad_result`. Queries' operations run concurrently, mutations'
//! one after another (GraphQL's rule), all within the interface's timeout
//! from the request's head. A batch (a JSON array) is refused. Uses
//! async-graphql's dynamic schema; nothing here parses GraphQL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_graphql::dynamic::{
    Field, FieldFuture, FieldValue, InputValue, Object, ResolverContext, Scalar as GqlScalar,
    Schema, SchemaError, TypeRef,
};
use async_graphql::{ErrorExtensions, Name, PathSegment, Value as GqlValue};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use sluice_crds::graphql::{GqlType, Scalar};
use sluice_crds::{GraphqlOperationPlan, GraphqlPlan, GraphqlResult, InterfacePlan, Plan};
use sluice_platform::clock::now_ms;
use sluice_platform::telemetry::Span;

use crate::admission::admit_read;
use crate::call::{self, Call};
use crate::error::{error_response, internal, rate_limited, timed_out, ApiError};
use crate::graphql_cost;
use crate::request::{caller_request_id, read_input};
use crate::state::AppState;

/// Directives a document may carry, at most.
const MAX_DIRECTIVES: usize = 8;

/// The schema of every graphql interface of `plan`, by interface name.
///
/// # Errors
/// When a schema does not build (validation refuses what would cause it).
pub fn schemas(plan: &Plan) -> Result<HashMap<String, Schema>, SchemaError> {
    plan.interfaces
        .iter()
        .filter_map(|it| Some((it, it.graphql.as_ref()?)))
        .map(|(it, g)| Ok((it.name.clone(), schema(g)?)))
        .collect()
}

fn schema(g: &GraphqlPlan) -> Result<Schema, SchemaError> {
    let mutation = (!g.mutations.is_empty()).then_some("Mutation");
    let mut builder = Schema::build("Query", mutation, None)
        .register(GqlScalar::new(Scalar::Json.name()).description("Any JSON value"))
        .limit_depth(g.max_depth as usize)
        .limit_complexity(g.max_complexity as usize)
        .limit_directives(MAX_DIRECTIVES);
    for (root, ops) in [("Query", &g.queries), ("Mutation", &g.mutations)] {
        if ops.is_empty() {
            continue;
        }
        let mut object = Object::new(root);
        for op in ops {
            let (field, result) = operation(root, op);
            object = object.field(field);
            if let Some(result) = result {
                builder = builder.register(result);
            }
        }
        builder = builder.register(object);
    }
    builder.finish()
}

/// An operation's root field and, for an object answer, its object type.
fn operation(root: &str, op: &GraphqlOperationPlan) -> (Field, Option<Object>) {
    let op = Arc::new(op.clone());
    let (ty, object) = match &op.result {
        GraphqlResult::Type(t) => (type_ref(t), None),
        GraphqlResult::Fields(fields) => {
            let name = format!("{root}_{}", op.name);
            let mut object = Object::new(name.clone());
            for (field, t) in fields {
                let key = field.clone();
                object = object.field(Field::new(field.clone(), type_ref(t), move |ctx| {
                    let value = match ctx.parent_value.as_value() {
                        Some(GqlValue::Object(m)) => m.get(key.as_str()).cloned(),
                        _ => None,
                    };
                    FieldFuture::Value(value.map(FieldValue::value))
                }));
            }
            (TypeRef::named(name), Some(object))
        }
    };
    let resolve = op.clone();
    // A nullable field that fails is null, with its error at its path (the
    // dynamic schema would leave the field out and the error pathless); a
    // non-null one fails its parent, as GraphQL says.
    let nullable = match &op.result {
        GraphqlResult::Type(t) => !t.non_null(),
        GraphqlResult::Fields(_) => true,
    };
    let mut field = Field::new(op.name.clone(), ty, move |ctx| {
        let op = resolve.clone();
        FieldFuture::new(async move {
            match run(&ctx, &op).await {
                Err(e) if nullable => {
                    let mut error = e.into_server_error(ctx.ctx.item.pos);
                    if let Some(path) = ctx.ctx.path_node {
                        error.path = path
                            .to_string_vec()
                            .into_iter()
                            .map(PathSegment::Field)
                            .collect();
                    }
                    ctx.ctx.add_error(error);
                    Ok(None)
                }
                other => other,
            }
        })
    });
    for (name, t) in &op.arguments {
        field = field.argument(InputValue::new(name.clone(), type_ref(t)));
    }
    (field, object)
}

fn type_ref(t: &GqlType) -> TypeRef {
    let (inner, non_null) = match t {
        GqlType::Named { scalar, non_null } => (TypeRef::named(scalar.name()), *non_null),
        GqlType::List { of, non_null } => (TypeRef::List(Box::new(type_ref(of))), *non_null),
    };
    if non_null {
        TypeRef::NonNull(Box::new(inner))
    } else {
        inner
    }
}

/// What a request's resolvers share.
struct RequestData {
    s: Arc<AppState>,
    name: String,
    caller: String,
    rid: String,
    /// Unix ms by which every operation is answered.
    deadline: u64,
    /// The rate-limit token the POST took, for its first operation.
    token: std::sync::atomic::AtomicBool,
    /// Bytes of input the operations sent so far: at most
    /// `security.maxPayloadBytes` per request, however often a variable is
    /// referenced.
    sent: std::sync::atomic::AtomicU64,
}

/// An operation with less time than this left is answered `timeout`
/// without being sent (a late mutation would run after its caller was
/// told it timed out).
const LEAST_TIME: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs one operation through the pipeline.
async fn run<'a>(
    ctx: &ResolverContext<'a>,
    op: &GraphqlOperationPlan,
) -> async_graphql::Result<Option<FieldValue<'a>>> {
    let data = ctx.data::<RequestData>()?;
    let s = &data.s;
    let it = s.interface(&data.name);
    let fail = |e: ApiError| Err(graphql_error(&e));
    let left = data.deadline.saturating_sub(now_ms());
    if left < LEAST_TIME.as_millis() as u64 {
        return fail(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("no time left within {:?}", it.timeout),
            &data.rid,
        ));
    }
    // Each operation is a request: the POST's token pays for the first.
    let paid = data.token.swap(false, std::sync::atomic::Ordering::SeqCst);
    if !paid {
        if let Err(wait) = s.rate_limits.take(&it.name, &data.caller) {
            return fail(rate_limited(wait, &data.rid));
        }
    }
    let slot = match admit_read(s, it, &data.rid) {
        Ok(slot) => slot,
        Err(e) => return fail(e),
    };
    let input = match arguments(ctx, op, data) {
        Ok(input) => input,
        Err(e) => return fail(e),
    };
    let cid = uuid::Uuid::new_v4().to_string();
    let timeout = std::time::Duration::from_millis(left);
    let answer = call::run_waited(
        s,
        it,
        &Span::none(),
        Call {
            entry: &op.entry,
            cid: &cid,
            rid: &data.rid,
            input,
            deadline: data.deadline,
            timeout,
            later: false,
            job: None,
            address: None,
            claimed: None,
            streamed: None,
        },
    )
    .await;
    drop(slot);
    let value = match answer {
        Ok(v) => v,
        Err(e) => return Err(graphql_error(&e)),
    };
    let bad = |why: String| {
        graphql_error(&ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_result",
            format!("the pipeline's answer to {}: {why}", op.name),
            &data.rid,
        ))
    };
    let value = match &op.result {
        GraphqlResult::Type(t) => conform(t, value).map_err(bad)?,
        GraphqlResult::Fields(fields) => {
            let Value::Object(mut m) = value else {
                return Err(bad("not an object".into()));
            };
            let mut out = async_graphql::indexmap::IndexMap::new();
            for (name, t) in fields {
                let v = m.remove(name).unwrap_or(Value::Null);
                let v = conform(t, v).map_err(|why| bad(format!("{name}: {why}")))?;
                out.insert(Name::new(name), v);
            }
            GqlValue::Object(out)
        }
    };
    Ok(Some(FieldValue::value(value)))
}

/// An operation's arguments as its input: each coerced to its declared
/// type (a single value for a list is a list of one, `Int` is 32-bit, `ID`
/// a string), within the body's JSON limits, and within what is left of
/// the request's `security.maxPayloadBytes`.
fn arguments(
    ctx: &ResolverContext<'_>,
    op: &GraphqlOperationPlan,
    data: &RequestData,
) -> Result<Value, ApiError> {
    let s = &data.s;
    let bad = |message: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_argument", message, &data.rid)
    };
    let mut input = serde_json::Map::new();
    for (name, t) in &op.arguments {
        let Some(v) = ctx.args.get(name) else {
            continue;
        };
        let v = v
            .as_value()
            .clone()
            .into_json()
            .map_err(|e| bad(format!("{name}: {e}")))?;
        let v = conform(t, coerce(t, v))
            .and_then(|v| v.into_json().map_err(|e| e.to_string()))
            .map_err(|why| bad(format!("{name}: {why}")))?;
        input.insert(name.clone(), v);
    }
    let input = Value::Object(input);
    let bytes = serde_json::to_vec(&input).map_err(|e| bad(e.to_string()))?;
    crate::json_scan::check(&bytes, s.http.max_json_depth, s.http.max_json_elements).map_err(
        |_| bad("arguments nest deeper or hold more elements than a request body may".into()),
    )?;
    let limit = s.plan.security.max_payload_bytes;
    let size = bytes.len() as u64;
    let before = data
        .sent
        .fetch_add(size, std::sync::atomic::Ordering::SeqCst);
    if before.saturating_add(size) > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request's operations send more than {limit} bytes of arguments \
                 (security.maxPayloadBytes)"
            ),
            &data.rid,
        ));
    }
    Ok(input)
}

/// GraphQL's input coercion for lists: a single value stands for a list
/// of one.
fn coerce(t: &GqlType, v: Value) -> Value {
    match (t, v) {
        (GqlType::List { .. }, v @ (Value::Array(_) | Value::Null)) => v,
        (GqlType::List { of, .. }, v) => Value::Array(vec![coerce(of, v)]),
        (_, v) => v,
    }
}

/// The pipeline's answer as a value of type `t`, or why it is not one.
fn conform(t: &GqlType, v: Value) -> Result<GqlValue, String> {
    if v.is_null() {
        return if t.non_null() {
            Err(format!("null for {t}"))
        } else {
            Ok(GqlValue::Null)
        };
    }
    match t {
        GqlType::List { of, .. } => match v {
            Value::Array(items) => items
                .into_iter()
                .map(|i| conform(of, i))
                .collect::<Result<Vec<_>, _>>()
                .map(GqlValue::List),
            _ => Err(format!("not a list for {t}")),
        },
        GqlType::Named { scalar, .. } => match (scalar, v) {
            (Scalar::String, Value::String(s)) => Ok(GqlValue::String(s)),
            (Scalar::Id, Value::String(s)) => Ok(GqlValue::String(s)),
            (Scalar::Id, Value::Number(n)) if n.is_i64() || n.is_u64() => {
                Ok(GqlValue::String(n.to_string()))
            }
            // GraphQL's Int is 32-bit.
            (Scalar::Int, Value::Number(n))
                if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) =>
            {
                Ok(GqlValue::Number(n))
            }
            (Scalar::Float, Value::Number(n)) => Ok(GqlValue::Number(n)),
            (Scalar::Boolean, Value::Bool(b)) => Ok(GqlValue::Boolean(b)),
            (Scalar::Json, v) => GqlValue::from_json(v).map_err(|e| e.to_string()),
            (_, v) => Err(format!("{} for {t}", json_kind(&v))),
        },
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number out of range or not an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A failure as a GraphQL error: the POST route's code and status in its
/// extensions.
fn graphql_error(e: &ApiError) -> async_graphql::Error {
    let (code, status, rid) = (e.code, e.status.as_u16(), e.request_id.clone());
    let retry_after = e.retry_after;
    async_graphql::Error::new(e.message.clone()).extend_with(move |_, x| {
        x.set("code", code);
        x.set("status", status);
        x.set("request_id", rid);
        if let Some(secs) = retry_after {
            x.set("retry_after", secs);
        }
    })
}

/// A document refused before it ran: GraphQL's shape (`200`, no data, one
/// error), with the code `too_complex`.
fn request_error(message: &str, rid: &str) -> Value {
    serde_json::json!({
        "data": null,
        "errors": [{
            "message": message,
            "extensions": {"code": "too_complex", "status": 400, "request_id": rid},
        }],
    })
}

/// A GraphQL-over-HTTP request body; anything else in it is refused.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Posted {
    query: String,
    #[serde(default)]
    variables: Option<Value>,
    #[serde(default)]
    operation_name: Option<String>,
    /// Accepted and ignored (persisted queries and the like are not served).
    #[serde(default)]
    #[allow(dead_code)]
    extensions: Option<Value>,
}

/// Serves one POST of a graphql interface.
pub async fn handle(s: Arc<AppState>, name: &str, req: Request) -> Response {
    let started = Instant::now();
    let rid = caller_request_id(req.headers()).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let it = s.interface(name);
    let mut resp = match serve(&s, it, &rid, req).await {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(e) => error_response(e),
    };
    if let Ok(v) = axum::http::HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    s.metrics
        .answered(&it.name, resp.status().as_u16(), started.elapsed());
    resp
}

async fn serve(
    s: &Arc<AppState>,
    it: &InterfacePlan,
    rid: &str,
    req: Request,
) -> Result<Value, ApiError> {
    let caller = s.callers.identify(&it.name, req.headers(), rid)?;
    if let Err(wait) = s.rate_limits.take(&it.name, &caller) {
        return Err(rate_limited(wait, rid));
    }
    let Some(schema) = s.graphql.get(&it.name) else {
        return Err(internal("interface has no schema", rid));
    };
    let started = tokio::time::Instant::now();
    let deadline =
        now_ms().saturating_add(u64::try_from(it.timeout.as_millis()).unwrap_or(u64::MAX));
    let body = read_input(s, it, rid, req.into_body()).await?;
    let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", why, rid);
    if body.is_array() {
        return Err(bad(
            "batches are not accepted: send one request per POST".into()
        ));
    }
    let posted: Posted = serde_json::from_value(body).map_err(|e| {
        bad(format!(
            "not a GraphQL request ({{\"query\", \"variables\"?, \"operationName\"?}}): {e}"
        ))
    })?;
    if graphql_cost::nesting(&posted.query) > graphql_cost::MAX_NESTING {
        return Ok(request_error(
            &format!(
                "the document nests {{, [ and ( deeper than {}",
                graphql_cost::MAX_NESTING
            ),
            rid,
        ));
    }
    let mut request = async_graphql::Request::new(posted.query);
    match posted.variables {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(_)) => {
            request = request.variables(async_graphql::Variables::from_json(v));
        }
        Some(_) => return Err(bad("variables must be an object".into())),
    }
    if let Some(name) = posted.operation_name {
        request = request.operation_name(name);
    }
    // Parsed once here (and kept for execution); a document that does not
    // parse is answered by the library with its error.
    if let Ok(doc) = request.parsed_query() {
        if doc.fragments.len() > graphql_cost::MAX_FRAGMENTS {
            return Ok(request_error(
                &format!(
                    "the document defines more than {} fragments",
                    graphql_cost::MAX_FRAGMENTS
                ),
                rid,
            ));
        }
        let fields = graphql_cost::expanded_fields(doc);
        let most = it
            .graphql
            .as_ref()
            .map_or(0, |g| u64::from(g.max_complexity));
        if fields > most {
            return Ok(request_error(
                &format!(
                    "the document selects more than {most} fields with its fragments \
                     expanded (graphql.maxComplexity)"
                ),
                rid,
            ));
        }
    }
    let request = request.data(RequestData {
        s: s.clone(),
        name: it.name.clone(),
        caller,
        rid: rid.to_string(),
        deadline,
        token: true.into(),
        sent: 0.into(),
    });
    // Each operation answers its own deadline with a GraphQL error; this
    // bounds the document as a whole (an operation stuck without one).
    let response = tokio::time::timeout_at(
        started + it.timeout + call::DEADLINE_GRACE,
        schema.execute(request),
    )
    .await
    .map_err(|_| timed_out(it.timeout, rid))?;
    serde_json::to_value(&response)
        .map_err(|e| internal(format!("cannot encode the response: {e}"), rid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> GqlType {
        GqlType::parse(s).unwrap()
    }

    #[test]
    fn answers_are_checked_against_their_declared_type() {
        assert_eq!(conform(&t("Int"), json!(7)), Ok(GqlValue::from(7)));
        assert!(conform(&t("Int"), json!(1u64 << 40)).is_err());
        assert!(conform(&t("Int"), json!(1.5)).is_err());
        assert!(conform(&t("String!"), json!(null)).is_err());
        assert_eq!(conform(&t("String"), json!(null)), Ok(GqlValue::Null));
        assert_eq!(conform(&t("ID"), json!(12)), Ok(GqlValue::from("12")));
        assert!(conform(&t("[Boolean!]"), json!([true, null])).is_err());
        assert_eq!(
            conform(&t("[Float]"), json!([1.5, null])),
            Ok(GqlValue::List(vec![GqlValue::from(1.5), GqlValue::Null]))
        );
        assert!(conform(&t("JSON"), json!({"any": [1, "x"]})).is_ok());
        assert!(conform(&t("String"), json!({"a": 1})).is_err());
    }
}
