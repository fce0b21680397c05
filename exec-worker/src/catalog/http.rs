//! `builtin/http`: sends the input to an HTTP service (a sidecar in the same
//! pod, or any service) and returns its JSON answer. This is how nodes written
//! in any language plug into a pipeline.
//!
//! ```text
//! input ─▶ cap timeout by deadline ─▶ read secret headers ─▶ POST url ─▶ classify status ─▶ output
//!                                                             (Idempotency-Key, X-Request-Id)
//! ```
//!
//! # Identity
//! `Idempotency-Key` is `<correlation-id>/<node>` (the ingress-made id, the
//! same on every redelivery); the caller's `X-Request-Id` is only passed on
//! as a label.
//!
//! # Redirects
//! None is followed by default: a 3xx answer is a permanent error naming the
//! redirect's origin. `followRedirects: sameOrigin` follows at most
//! [`MAX_REDIRECTS`] redirects that stay on the configured URL's origin
//! (scheme, host and port); one that leaves it is not followed either. So
//! `headersFrom` secrets only ever go to the origin the manifest names —
//! never to whatever host a `Location` header names, nor from https to http.
//!
//! # Status mapping
//! | answer | result |
//! | --- | --- |
//! | 2xx with a JSON body | the body is the output (empty body → `null`) |
//! | 2xx with another body | `Permanent` |
//! | 429, 5xx, timeout, connection error | `Retryable` |
//! | 3xx (not followed) | `Permanent`, naming the redirect's origin |
//! | other 4xx (and 1xx) | `Permanent`, with status and a short body excerpt |
//!
//! # Secrets
//! `headersFrom` values are read from `<secrets_dir>/<name>/<key>` on every
//! call, so a rotated Secret (the kubelet swaps the mounted file) is picked up
//! without a restart. Secret values never reach a log line or an error
//! message; a service echoing one back in an error body is redacted too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

use super::{duration_field, json_type, typed_with};
use crate::node::{ConfigError, Node, NodeConfig, NodeContext, NodeError, NodeOutput};

/// The catalog name of this node.
pub const USES: &str = "builtin/http";

/// The default per-call timeout, before the deadline caps it.
pub const DEFAULT_TIMEOUT: &str = "10s";

/// The largest 2xx body accepted. Far above any sensible pipeline payload
/// (the envelope limit defaults to 1 MiB); it exists so that a misbehaving
/// service cannot make the worker buffer without bound.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// How much of an error body is read to quote from, and how many characters
/// of it an error message quotes. Reading well past the quoted part keeps a
/// secret that straddles the read limit out of the quote's reach.
const ERROR_BODY_READ_BYTES: usize = 4096;

/// The most redirects `followRedirects: sameOrigin` follows for one call; a
/// longer chain (or a loop) ends at the last 3xx, a permanent error.
pub const MAX_REDIRECTS: usize = 5;
const EXCERPT_CHARS: usize = 200;

/// Headers the node sets itself; a manifest setting them would break the
/// idempotency or request-id contract, or the JSON body.
const RESERVED_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "idempotency-key",
    "x-request-id",
];

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HttpWith {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    /// Values kept as JSON so that `X-Version: 2` in YAML (a number) works
    /// and other types get an error naming the header.
    #[serde(default)]
    headers: BTreeMap<String, Value>,
    /// Entries read one by one so that an error names the header.
    #[serde(default)]
    headers_from: BTreeMap<String, Value>,
    #[serde(default)]
    follow_redirects: Option<String>,
}

/// Which redirects a call follows (`with.followRedirects`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Redirects {
    /// `none` (the default): a 3xx answer is the result.
    None,
    /// `sameOrigin`: follow those that stay on the URL's origin.
    SameOrigin,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HeaderFrom {
    secret_ref: SecretRef,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretRef {
    name: String,
    key: String,
}

/// The node: a validated request template and a pooled client.
#[derive(Debug)]
pub struct Http {
    /// Shared by every call of this node so connections are pooled; built
    /// without a global timeout because each call sets its own.
    client: reqwest::Client,
    url: Url,
    method: Method,
    /// The configured timeout; each call uses `min(timeout, remaining)`.
    timeout: Duration,
    /// Static headers from `with.headers`, validated at build time.
    headers: HeaderMap,
    /// Headers whose values are read from mounted Secrets at call time.
    secret_headers: Vec<SecretHeader>,
    secrets_dir: PathBuf,
    redirects: Redirects,
}

/// A header whose value lives in `<secrets_dir>/<name>/<key>`. Holds the
/// reference only, never the value.
#[derive(Debug)]
struct SecretHeader {
    header: HeaderName,
    name: String,
    key: String,
}

/// A secret value read for one call.
struct SecretValue {
    header: HeaderValue,
    /// The value as text, to redact it from error messages.
    text: String,
}

/// How a call timed out, for the message.
#[derive(Clone, Copy)]
struct Budget {
    timeout: Duration,
    /// Whether the request's deadline, not the configured timeout, set it.
    by_deadline: bool,
}

// === impl Http ===

impl Http {
    /// Builds the node from `with: { url, method?, timeout?, headers?, headersFrom? }`.
    ///
    /// # Errors
    /// A missing or non-http(s) `url`, a URL with credentials in it, an
    /// unsupported `method`, a malformed or zero `timeout`, an invalid or
    /// reserved header, a malformed secret reference, an unknown option, or
    /// an HTTP client that cannot be initialised.
    pub fn from_config(cfg: &NodeConfig) -> Result<Self, ConfigError> {
        let with: HttpWith = typed_with(cfg)?;
        let err = |msg: String| ConfigError::new(cfg, msg);

        let url = parse_url(&with.url).map_err(|e| err(format!("`with.url`: {e}")))?;
        let method = parse_method(with.method.as_deref().unwrap_or("POST"))
            .map_err(|e| err(format!("`with.method`: {e}")))?;
        let timeout = duration_field(
            cfg,
            "timeout",
            with.timeout.as_deref().unwrap_or(DEFAULT_TIMEOUT),
        )?;
        if timeout.is_zero() {
            return Err(err("`with.timeout` must be more than zero".into()));
        }

        let headers = static_headers(&with.headers).map_err(err)?;
        let secret_headers = secret_headers(with.headers_from, &headers).map_err(err)?;

        let redirects = match with.follow_redirects.as_deref() {
            None | Some("none") => Redirects::None,
            Some("sameOrigin") => Redirects::SameOrigin,
            Some(other) => {
                return Err(err(format!(
                    "`with.followRedirects`: `{other}` is not one of none, sameOrigin"
                )))
            }
        };
        let client = reqwest::Client::builder()
            .user_agent(concat!("sluice-exec-worker/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect_policy(redirects, &url))
            .build()
            .map_err(|e| err(format!("cannot initialise the HTTP client: {e}")))?;

        Ok(Self {
            client,
            url,
            method,
            timeout,
            headers,
            secret_headers,
            secrets_dir: cfg.secrets_dir.clone(),
            redirects,
        })
    }

    /// Builds the full header set of one call; also returns the secret
    /// values read, so that error messages can redact them.
    async fn request_headers(
        &self,
        ctx: &NodeContext,
    ) -> Result<(HeaderMap, Vec<String>), NodeError> {
        let mut headers = self.headers.clone();
        let mut secrets = Vec::with_capacity(self.secret_headers.len());
        for s in &self.secret_headers {
            let value = s.read(&self.secrets_dir).await?;
            headers.insert(s.header.clone(), value.header);
            secrets.push(value.text);
        }
        let context_header = |what: &str, v: &str| {
            HeaderValue::from_str(v).map_err(|_| {
                NodeError::Permanent(format!("http: the {what} is not a valid HTTP header value"))
            })
        };
        headers.insert(
            IDEMPOTENCY_KEY,
            context_header("idempotency key", &ctx.idempotency_key())?,
        );
        headers.insert(X_REQUEST_ID, context_header("request id", &ctx.request_id)?);
        Ok((headers, secrets))
    }

    fn transport_error(&self, e: &reqwest::Error, budget: Budget) -> NodeError {
        let url = &self.url;
        if e.is_timeout() {
            let cause = if budget.by_deadline {
                "deadline reached"
            } else {
                "timed out"
            };
            return NodeError::Retryable(format!(
                "http: {cause} after {:?} waiting for {url}",
                budget.timeout
            ));
        }
        let chain = error_chain(e);
        if e.is_builder() {
            // The URL and headers are validated at build time, so this is a bug
            // or an unusable input that a retry cannot fix.
            return NodeError::Permanent(format!(
                "http: cannot build the request to {url}: {chain}"
            ));
        }
        if e.is_connect() {
            return NodeError::Retryable(format!("http: cannot connect to {url}: {chain}"));
        }
        NodeError::Retryable(format!("http: request to {url} failed: {chain}"))
    }

    /// The permanent error of a 3xx answer that was not followed. Names only
    /// the origin of its `Location` (a path or query may carry tokens).
    fn redirect_error(&self, status: StatusCode, location: Option<&HeaderValue>) -> NodeError {
        let target = location
            .and_then(|l| l.to_str().ok())
            .and_then(|l| self.url.join(l).ok())
            .map_or_else(
                || "no usable Location".to_string(),
                |u| format!("a redirect to {}", u.origin().ascii_serialization()),
            );
        let policy = match self.redirects {
            Redirects::None => "builtin/http follows no redirects; point `with.url` at the final \
                                address, or set `followRedirects: sameOrigin`"
                .to_string(),
            Redirects::SameOrigin => format!(
                "`followRedirects: sameOrigin` follows only redirects on the URL's origin, \
                 at most {MAX_REDIRECTS}"
            ),
        };
        NodeError::Permanent(format!(
            "http: {} answered {status} with {target}, not followed: {policy}",
            self.url
        ))
    }

    fn status_error(&self, status: StatusCode, body: &[u8], secrets: &[String]) -> NodeError {
        let msg = format!(
            "http: {} answered {status}: {}",
            self.url,
            excerpt(body, secrets)
        );
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            NodeError::Retryable(msg)
        } else {
            NodeError::Permanent(msg)
        }
    }
}

#[async_trait]
impl Node for Http {
    /// # Errors
    /// See the status mapping in the module docs; `Retryable` without sending
    /// anything when the deadline has already passed, or when a secret
    /// header cannot be read.
    async fn call(&self, input: Value, ctx: &NodeContext) -> Result<NodeOutput, NodeError> {
        let remaining = ctx.remaining();
        if remaining.is_zero() {
            return Err(NodeError::Retryable(format!(
                "http: deadline reached before calling {}",
                self.url
            )));
        }
        let budget = Budget {
            timeout: self.timeout.min(remaining),
            by_deadline: remaining < self.timeout,
        };
        let (headers, secrets) = self.request_headers(ctx).await?;

        // reqwest applies a per-request timeout from connecting until the
        // response body has been read, which is the whole wait we must cap.
        let mut request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .timeout(budget.timeout)
            .headers(headers);
        if self.method != Method::GET {
            let body = serde_json::to_vec(&input)
                .map_err(|e| NodeError::Permanent(format!("http: cannot encode the input: {e}")))?;
            request = request
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body);
        }

        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&e, budget))?;
        let status = response.status();
        tracing::debug!(node = %ctx.node, url = %self.url, %status, "http node answered");

        if status.is_redirection() {
            let location = response.headers().get(reqwest::header::LOCATION);
            return Err(self.redirect_error(status, location));
        }
        if !status.is_success() {
            // The excerpt is best effort: a body that fails to arrive must
            // not hide the status, which is what decides retryability.
            let body = read_body(response, ERROR_BODY_READ_BYTES)
                .await
                .map(|(body, _)| body)
                .unwrap_or_default();
            return Err(self.status_error(status, &body, &secrets));
        }

        let (body, complete) = read_body(response, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| self.transport_error(&e, budget))?;
        if !complete {
            return Err(NodeError::Permanent(format!(
                "http: {} answered {status} with a body over {MAX_RESPONSE_BYTES} bytes",
                self.url
            )));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(NodeOutput::value(Value::Null));
        }
        serde_json::from_slice(&body)
            .map(NodeOutput::value)
            .map_err(|e| {
                NodeError::Permanent(format!(
                    "http: {} answered {status} with a body that is not JSON ({e}): {}",
                    self.url,
                    excerpt(&body, &secrets)
                ))
            })
    }
}

// === impl SecretHeader ===

impl SecretHeader {
    /// Reads the current value of the mounted Secret key.
    ///
    /// # Errors
    /// `Retryable` (a Secret may be mounted late or be mid-rotation) naming
    /// the Secret and key, never quoting the file.
    async fn read(&self, secrets_dir: &Path) -> Result<SecretValue, NodeError> {
        let path = secrets_dir.join(&self.name).join(&self.key);
        let failure = |why: String| {
            NodeError::Retryable(format!(
                "http: secret `{}` key `{}` for header `{}` {why}",
                self.name, self.key, self.header
            ))
        };
        let mut bytes = tokio::fs::read(&path).await.map_err(|e| {
            failure(format!(
                "cannot be read from {}: {}",
                path.display(),
                e.kind()
            ))
        })?;
        // Secrets written with `echo` or a text editor end with a newline
        // that is not part of the credential.
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let mut header = HeaderValue::from_bytes(&bytes)
            .map_err(|_| failure("is not a valid HTTP header value".into()))?;
        // Keeps the value out of any `Debug` output of the request.
        header.set_sensitive(true);
        Ok(SecretValue { header, text })
    }
}

// === helpers ===

/// The client's redirect policy. `sameOrigin` compares every hop with the
/// configured URL's origin, so a chain cannot wander off through a
/// same-origin first step; reqwest then resends the request's headers,
/// secrets included, only to that origin.
fn redirect_policy(redirects: Redirects, url: &Url) -> reqwest::redirect::Policy {
    match redirects {
        Redirects::None => reqwest::redirect::Policy::none(),
        Redirects::SameOrigin => {
            let origin = url.origin();
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > MAX_REDIRECTS || attempt.url().origin() != origin {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            })
        }
    }
}

/// Validates `with.headers`.
fn static_headers(spec: &BTreeMap<String, Value>) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in spec {
        let at = format!("`with.headers.{name}`");
        let header = header_name(name).map_err(|e| format!("{at}: {e}"))?;
        if sluice_crds::validate::CREDENTIAL_HEADERS.contains(&header.as_str()) {
            return Err(format!(
                "{at}: carries credentials, which never go inline in the resource; \
                 use `headersFrom: {{{name}: {{secretRef: {{name, key}}}}}}`"
            ));
        }
        let text = match value {
            Value::String(s) => s.clone(),
            v @ (Value::Number(_) | Value::Bool(_)) => v.to_string(),
            other => {
                return Err(format!(
                    "{at}: must be a string, number or boolean, got {}",
                    json_type(other)
                ))
            }
        };
        let value =
            HeaderValue::from_str(&text).map_err(|_| format!("{at}: not a valid header value"))?;
        if headers.insert(header, value).is_some() {
            return Err(format!(
                "{at}: header given twice (names are case-insensitive)"
            ));
        }
    }
    Ok(headers)
}

/// Validates `with.headersFrom`; `headers` are the static ones, which a
/// secret header may not repeat.
fn secret_headers(
    spec: BTreeMap<String, Value>,
    headers: &HeaderMap,
) -> Result<Vec<SecretHeader>, String> {
    let mut out: Vec<SecretHeader> = Vec::new();
    for (name, entry) in spec {
        let at = format!("`with.headersFrom.{name}`");
        let header = header_name(&name).map_err(|e| format!("{at}: {e}"))?;
        if headers.contains_key(&header) || out.iter().any(|s| s.header == header) {
            return Err(format!(
                "{at}: header given twice (names are case-insensitive)"
            ));
        }
        let HeaderFrom {
            secret_ref: SecretRef { name, key },
        } = serde_json::from_value(entry)
            .map_err(|e| format!("{at}: {e} (expected `{{secretRef: {{name, key}}}}`)"))?;
        for (field, v) in [("name", &name), ("key", &key)] {
            if !is_path_component(v) {
                return Err(format!(
                    "{at}.secretRef.{field}: `{v}` must be a non-empty Secret {field} \
                     made of letters, digits, `-`, `_` and `.`"
                ));
            }
        }
        out.push(SecretHeader { header, name, key });
    }
    Ok(out)
}

fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}` must be an http:// or https:// URL"));
    }
    if url.host().is_none() {
        return Err(format!("`{text}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Manifests are not secret; credentials come through headersFrom.
        return Err("credentials in the URL are refused; send them with `headersFrom`".into());
    }
    Ok(url)
}

fn parse_method(text: &str) -> Result<Method, String> {
    match text.to_ascii_uppercase().as_str() {
        "GET" => Ok(Method::GET),
        "POST" => Ok(Method::POST),
        "PUT" => Ok(Method::PUT),
        "PATCH" => Ok(Method::PATCH),
        "DELETE" => Ok(Method::DELETE),
        _ => Err(format!(
            "`{text}` is not one of GET, POST, PUT, PATCH, DELETE"
        )),
    }
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| "not a valid header name".to_owned())?;
    if RESERVED_HEADERS.contains(&header.as_str()) {
        return Err("set by the node itself; it cannot be configured".into());
    }
    Ok(header)
}

/// Whether `s` can name a mounted Secret or key without escaping the secrets
/// directory (no `/`, no `..`).
fn is_path_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Reads at most `limit` bytes of the body; the flag says whether that was
/// all of it.
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// A one-line quote of a response body: secrets redacted, control
/// characters blanked, cut to [`EXCERPT_CHARS`].
fn excerpt(body: &[u8], secrets: &[String]) -> String {
    let read = &body[..body.len().min(ERROR_BODY_READ_BYTES)];
    let mut text = String::from_utf8_lossy(read).into_owned();
    // Redact before cutting, so that a cut cannot split a secret out of
    // recognition.
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret.as_str(), "[redacted]");
    }
    let mut out: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let out_len = out.trim_end().len();
    out.truncate(out_len);
    if out.is_empty() {
        return "(empty body)".into();
    }
    if text.chars().nth(EXCERPT_CHARS).is_some() || body.len() >= ERROR_BODY_READ_BYTES {
        out.push('…');
    }
    out
}

/// An error and its sources, `: `-separated; reqwest's own message is
/// generic ("error sending request") and the cause is in the chain.
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = String::new();
    let mut current: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = current {
        if !out.is_empty() {
            out.push_str(": ");
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{err}");
        current = err.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_support::{config, ctx, ctx_with};
    use serde_json::json;

    fn build(with: Value) -> Result<Http, ConfigError> {
        Http::from_config(&config(USES, with))
    }

    fn build_err(with: Value) -> String {
        build(with).unwrap_err().message
    }

    #[test]
    fn minimal_config_takes_post_and_ten_seconds() {
        let node = build(json!({"url": "http://127.0.0.1:9000/x"})).unwrap();
        assert_eq!(node.method, Method::POST);
        assert_eq!(node.timeout, Duration::from_secs(10));
    }

    #[test]
    fn options_are_read() {
        let node = build(json!({
            "url": "https://svc.ns.svc:8443/score",
            "method": "get",
            "timeout": "1m30s",
            "headers": {"X-Version": 2, "Accept": "application/json"},
            "headersFrom": {"Authorization": {"secretRef": {"name": "api", "key": "token"}}}
        }))
        .unwrap();
        assert_eq!(node.method, Method::GET);
        assert_eq!(node.timeout, Duration::from_secs(90));
        assert_eq!(node.headers["x-version"], "2");
        assert_eq!(node.secret_headers[0].header, "authorization");
    }

    #[test]
    fn url_is_required_and_must_be_http() {
        assert!(build_err(Value::Null).contains("url"));
        assert!(build_err(json!({"url": "ftp://x/y"})).contains("with.url"));
        assert!(build_err(json!({"url": "not a url"})).contains("with.url"));
        assert!(build_err(json!({"url": "http://u:p@x/"})).contains("headersFrom"));
    }

    #[test]
    fn bad_method_or_timeout_is_refused() {
        assert!(build_err(json!({"url": "http://x/", "method": "FETCH"})).contains("with.method"));
        assert!(build_err(json!({"url": "http://x/", "timeout": "10"})).contains("with.timeout"));
        assert!(build_err(json!({"url": "http://x/", "timeout": "0s"})).contains("with.timeout"));
    }

    #[test]
    fn invalid_duplicate_or_reserved_headers_are_refused() {
        let with = |headers: Value| json!({"url": "http://x/", "headers": headers});
        assert!(build_err(with(json!({"Bad Name": "v"}))).contains("with.headers.Bad Name"));
        assert!(build_err(with(json!({"X-A": "line\nbreak"}))).contains("with.headers.X-A"));
        assert!(build_err(with(json!({"X-A": ["v"]}))).contains("an array"));
        assert!(build_err(with(json!({"X-Request-Id": "mine"}))).contains("set by the node"));
        assert!(build_err(with(json!({"x-a": "1", "X-A": "2"}))).contains("twice"));
        let err = build_err(json!({
            "url": "http://x/",
            "headers": {"X-Tenant": "blue"},
            "headersFrom": {"x-tenant": {"secretRef": {"name": "a", "key": "b"}}}
        }));
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn credentials_are_refused_inline_and_pointed_to_headers_from() {
        for name in [
            "Authorization",
            "proxy-authorization",
            "Cookie",
            "X-Api-Key",
        ] {
            let err = build_err(json!({"url": "http://x/", "headers": {name: "Bearer inline"}}));
            assert!(err.contains(&format!("with.headers.{name}")), "{err}");
            assert!(err.contains("headersFrom"), "{err}");
            assert!(
                !err.contains("Bearer inline"),
                "the value is not repeated: {err}"
            );
        }
    }

    #[test]
    fn malformed_secret_refs_are_refused_by_field() {
        let with = |spec: Value| json!({"url": "http://x/", "headersFrom": {"X-Token": spec}});
        let err = build_err(with(json!({"secretRef": {"name": "a"}})));
        assert!(
            err.contains("with.headersFrom.X-Token") && err.contains("key"),
            "{err}"
        );
        let err = build_err(with(json!({"secretRef": {"name": "..", "key": "k"}})));
        assert!(err.contains("secretRef.name"), "{err}");
        let err = build_err(with(
            json!({"secretRef": {"name": "a", "key": "../../etc/passwd"}}),
        ));
        assert!(err.contains("secretRef.key"), "{err}");
        let err = build_err(with(json!({"secret": {"name": "a", "key": "k"}})));
        assert!(err.contains("secret"), "{err}");
    }

    #[test]
    fn follow_redirects_is_none_by_default_and_takes_only_known_values() {
        let node = build(json!({"url": "http://x/"})).unwrap();
        assert_eq!(node.redirects, Redirects::None);
        let node = build(json!({"url": "http://x/", "followRedirects": "sameOrigin"})).unwrap();
        assert_eq!(node.redirects, Redirects::SameOrigin);
        let err = build_err(json!({"url": "http://x/", "followRedirects": "always"}));
        assert!(err.contains("with.followRedirects"), "{err}");
    }

    #[test]
    fn unknown_option_is_refused() {
        assert!(build_err(json!({"url": "http://x/", "retries": 3})).contains("retries"));
    }

    #[tokio::test]
    async fn past_deadline_fails_retryably_without_sending() {
        // Port 9 (discard) on a reserved address: if a request were sent the
        // error would be a connection error, not the deadline one.
        let node = build(json!({"url": "http://127.0.0.1:9/"})).unwrap();
        let err = node
            .call(json!({}), &ctx_with(Duration::ZERO))
            .await
            .unwrap_err();
        assert!(err.is_retryable());
        assert!(
            err.message().contains("deadline reached before calling"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn missing_secret_is_retryable_and_names_the_reference() {
        let node = build(json!({
            "url": "http://127.0.0.1:9/",
            "headersFrom": {"X-Token": {"secretRef": {"name": "api", "key": "token"}}}
        }))
        .unwrap();
        let err = node.call(json!({}), &ctx()).await.unwrap_err();
        assert!(err.is_retryable());
        let msg = err.message();
        assert!(
            msg.contains("`api`") && msg.contains("`token`") && msg.contains("x-token"),
            "{msg}"
        );
    }

    #[test]
    fn excerpt_is_one_redacted_truncated_line() {
        let body = format!("error:\n token {} rejected {}", "s3cr3t", "x".repeat(500));
        let e = excerpt(body.as_bytes(), &["s3cr3t".into()]);
        assert!(!e.contains("s3cr3t") && e.contains("[redacted]"), "{e}");
        assert!(!e.contains('\n'));
        assert!(
            e.ends_with('…') && e.chars().count() <= EXCERPT_CHARS + 1,
            "{e}"
        );
        assert_eq!(excerpt(b"", &[]), "(empty body)");
        assert_eq!(excerpt(b"short", &[]), "short");
    }

    #[test]
    fn path_components_cannot_escape_the_secrets_dir() {
        assert!(is_path_component("api-token.v1_x"));
        for bad in ["", ".", "..", "a/b", "a\\b", "a b"] {
            assert!(!is_path_component(bad), "{bad:?}");
        }
    }
}
