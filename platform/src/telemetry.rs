//! Logs and traces of every sluice process (DESIGN §7).
//!
//! [`init`] installs the `tracing` subscriber (text or JSON on stderr,
//! filtered by `RUST_LOG`) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, an OpenTelemetry tracer
//! provider exporting spans over OTLP/HTTP (`http/protobuf` by default,
//! `http/json` through `OTEL_EXPORTER_OTLP_PROTOCOL`). The standard
//! `OTEL_*` variables apply: headers, timeout, service name, resource
//! attributes, sampler. `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` keeps export off.
//!
//! [`Span`] is the one span type the runtime uses: an OpenTelemetry span
//! that ends when dropped, linked across processes by the W3C
//! `traceparent` carried in the (signed) envelope. With export off every
//! span operation is a no-op costing one atomic load.
//!
//! This module must not put payloads, key material or header values into
//! spans or logs; the exporter's own headers (often an API key) are never
//! logged, and the endpoint is logged without user information.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Whether spans are recorded and exported (set once by [`init`]).
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The tracer of this process, set once by [`init`] when export is on.
static TRACER: std::sync::OnceLock<SdkTracer> = std::sync::OnceLock::new();
/// What [`init`] did, for startup summaries.
static SUMMARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Longest a W3C `traceparent` can be (version 00 is exactly 55 bytes;
/// later versions may append fields).
const MAX_TRACEPARENT: usize = 256;
/// Bound on a collector's answer the exporter reads.
const MAX_RESPONSE: usize = 64 * 1024;

/// What [`init`] set up; keep it until exit and call [`Telemetry::shutdown`]
/// to flush the spans still buffered.
#[must_use = "call shutdown() before exit to flush buffered spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Trace export as the startup summary shows it: `off`, `off (<why>)`, or
/// `otlp <protocol> to <endpoint>`.
pub fn summary() -> &'static str {
    SUMMARY.get().map_or("off", String::as_str)
}

impl Telemetry {
    /// Exports what is buffered (bounded by the exporter timeout) and stops.
    pub async fn shutdown(self) {
        let Some(p) = self.provider else { return };
        ENABLED.store(false, Ordering::SeqCst);
        let done = tokio::task::spawn_blocking(move || p.shutdown());
        match tokio::time::timeout(Duration::from_secs(15), done).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "flushing spans at exit failed"),
            Ok(Err(_)) | Err(_) => tracing::warn!("flushing spans at exit did not finish"),
        }
    }
}

/// Installs logging and, when configured, trace export. Call once, inside
/// the Tokio runtime, before anything logs. `service` names the process
/// (`service.name`) unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`
/// says otherwise.
pub fn init(service: &'static str, version: &'static str, json_logs: bool) -> Telemetry {
    let env: HashMap<String, String> = std::env::vars().collect();
    init_logs(json_logs);
    let built = ExportConfig::from_env(&env).and_then(|export| match export {
        None => Ok(None),
        Some(e) => build_provider(service, version, &e, &env).map(|p| Some((e, p))),
    });
    let (summary, provider) = match built {
        Ok(None) => ("off".to_string(), None),
        Ok(Some((export, provider))) => {
            let _ = TRACER.set(provider.tracer("sluice"));
            opentelemetry::global::set_tracer_provider(provider.clone());
            ENABLED.store(true, Ordering::SeqCst);
            let shown = format!("otlp {} to {}", export.protocol_name, export.shown_endpoint);
            (shown, Some(provider))
        }
        Err(why) => {
            tracing::warn!("trace export stays off: {why}");
            (format!("off ({why})"), None)
        }
    };
    let _ = SUMMARY.set(summary);
    Telemetry { provider }
}

/// Installs only the `tracing` subscriber: text or JSON on stderr, filtered
/// by `RUST_LOG` (default `info`). For processes without spans.
pub fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a file, a pipe or a
    // container log gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    // A second init in one process (tests) keeps the first subscriber.
    let _ = if json {
        registry.with(fmt.json()).try_init()
    } else {
        registry.with(fmt).try_init()
    };
}

/// The export settings read from `OTEL_*`.
#[derive(Debug, Clone, PartialEq)]
struct ExportConfig {
    protocol: Protocol,
    protocol_name: &'static str,
    /// The endpoint without user information, for logs.
    shown_endpoint: String,
}

impl ExportConfig {
    /// `Ok(None)`: export is off. `Err`: asked for, but not possible.
    fn from_env(env: &HashMap<String, String>) -> Result<Option<Self>, String> {
        let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match get("OTEL_TRACES_EXPORTER") {
            None | Some("otlp") => {}
            Some(v) if v.eq_ignore_ascii_case("none") => return Ok(None),
            Some(v) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={v} is not supported (otlp or none)"
                ))
            }
        }
        let Some(endpoint) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(None);
        };
        let shown_endpoint = shown(endpoint)?;
        let protocol = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or("http/protobuf");
        let (protocol, protocol_name) = match protocol.to_ascii_lowercase().as_str() {
            "http/protobuf" => (Protocol::HttpBinary, "http/protobuf"),
            "http/json" => (Protocol::HttpJson, "http/json"),
            "grpc" => {
                return Err(
                    "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported; use http/protobuf (collector port 4318)"
                        .to_string(),
                )
            }
            other => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not one of http/protobuf, http/json"
                ))
            }
        };
        Ok(Some(Self {
            protocol,
            protocol_name,
            shown_endpoint,
        }))
    }
}

/// `endpoint` checked to be an http(s) URL, with any user information
/// (which may be a credential) removed.
fn shown(endpoint: &str) -> Result<String, String> {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return Err("the OTLP endpoint is not a URL (want http://host:4318)".to_string());
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!(
            "the OTLP endpoint's scheme {scheme:?} is not http or https"
        ));
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err("the OTLP endpoint has no host".to_string());
    }
    Ok(format!("{scheme}://{host}{path}"))
}

fn build_provider(
    service: &'static str,
    version: &'static str,
    export: &ExportConfig,
    env: &HashMap<String, String>,
) -> Result<SdkTracerProvider, String> {
    let client = TokioHttpClient::new()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(export.protocol)
        .with_http_client(client)
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let named = |k: &str| env.get(k).is_some_and(|v| !v.trim().is_empty());
    let service_in_attributes = env.get("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| {
        v.split(',')
            .any(|kv| kv.trim().starts_with("service.name="))
    });
    let mut resource =
        Resource::builder().with_attribute(KeyValue::new("service.version", version));
    if !named("OTEL_SERVICE_NAME") && !service_in_attributes {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The OTLP exporter's HTTP client: the process's `reqwest` client, run on
/// the process's Tokio runtime (the SDK exports from its own thread).
#[derive(Debug)]
struct TokioHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl TokioHttpClient {
    fn new() -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "telemetry::init ran outside the Tokio runtime".to_string())?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the OTLP HTTP client: {e}"))?;
        Ok(Self { client, runtime })
    }
}

#[async_trait]
impl opentelemetry_http::HttpClient for TokioHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let mut resp = client.execute(request).await?;
            let mut out = http::Response::builder().status(resp.status());
            if let Some(h) = out.headers_mut() {
                *h = std::mem::take(resp.headers_mut());
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                let room = MAX_RESPONSE.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok::<_, opentelemetry_http::HttpError>(out.body(Bytes::from(body))?)
        });
        task.await?
    }
}

/// Whether this process records and exports spans.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A span of the runtime; ends when dropped. Inert when export is off.
#[derive(Debug, Default)]
pub struct Span {
    cx: Option<Context>,
}

pub use opentelemetry::trace::SpanKind as Kind;

impl Span {
    /// A span that records nothing.
    pub fn none() -> Self {
        Self { cx: None }
    }

    /// Starts a span whose parent is the W3C `traceparent` (a new trace when
    /// it is absent or invalid).
    pub fn start(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        traceparent: Option<&str>,
    ) -> Self {
        Self::start_at(name, kind, traceparent, None)
    }

    /// [`Span::start`] with an explicit start time (milliseconds since the
    /// epoch), for a span that began elsewhere, like a hop on the wire.
    pub fn start_at(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        traceparent: Option<&str>,
        start_ms: Option<u64>,
    ) -> Self {
        let Some(tracer) = TRACER.get().filter(|_| enabled()) else {
            return Self::none();
        };
        let parent = traceparent.map(extract).unwrap_or_default();
        Self::begin(tracer, name.into(), kind, &parent, start_ms)
    }

    /// Whether this span is exported (trace export on, a parent span that
    /// is), sampled or not: its attributes are worth computing, and its
    /// context is what the next hop carries. Not OpenTelemetry's
    /// `is_recording`, which is false for a span the sampler dropped; such
    /// a span's context must still be passed on.
    pub fn is_exported(&self) -> bool {
        self.cx.is_some()
    }

    /// A child of this span.
    pub fn child(&self, name: impl Into<Cow<'static, str>>, kind: SpanKind) -> Self {
        match (&self.cx, TRACER.get()) {
            (Some(cx), Some(tracer)) => Self::begin(tracer, name.into(), kind, cx, None),
            _ => Self::none(),
        }
    }

    fn begin(
        tracer: &SdkTracer,
        name: Cow<'static, str>,
        kind: SpanKind,
        parent: &Context,
        start_ms: Option<u64>,
    ) -> Self {
        let mut b = tracer.span_builder(name).with_kind(kind);
        if let Some(ms) = start_ms {
            b = b.with_start_time(UNIX_EPOCH + Duration::from_millis(ms));
        }
        let span = b.start_with_context(tracer, parent);
        Self {
            cx: Some(parent.with_span(span)),
        }
    }

    /// This span as a W3C `traceparent`, to carry to the next hop; `None`
    /// when export is off.
    pub fn traceparent(&self) -> Option<String> {
        let cx = self.cx.as_ref()?;
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        Some(format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        ))
    }

    /// Sets an attribute.
    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some(cx) = &self.cx {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed with a short, payload-free description.
    pub fn fail(&self, description: impl Into<Cow<'static, str>>) {
        if let Some(cx) = &self.cx {
            cx.span().set_status(Status::error(description));
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(cx) = &self.cx {
            cx.span().end_with_timestamp(SystemTime::now());
        }
    }
}

/// The parent context named by a `traceparent` (empty when invalid).
fn extract(traceparent: &str) -> Context {
    if traceparent.len() > MAX_TRACEPARENT {
        return Context::new();
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    TraceContextPropagator::new().extract(&carrier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn export_is_off_without_an_endpoint_or_when_disabled() {
        assert_eq!(ExportConfig::from_env(&env(&[])), Ok(None));
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
        assert!(ExportConfig::from_env(&env(&on)).unwrap().is_some());
        for off in [
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            let e = env(&[on[0], off]);
            assert_eq!(ExportConfig::from_env(&e), Ok(None), "{off:?}");
        }
    }

    #[test]
    fn protocol_defaults_to_protobuf_and_refuses_grpc_by_name() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let c = ExportConfig::from_env(&env(&[base])).unwrap().unwrap();
        assert_eq!(c.protocol_name, "http/protobuf");
        let c = ExportConfig::from_env(&env(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "HTTP/JSON")]))
            .unwrap()
            .unwrap();
        assert_eq!(c.protocol_name, "http/json");
        let e = ExportConfig::from_env(&env(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]))
            .unwrap_err();
        assert!(e.contains("grpc is not supported"), "{e}");
        let e =
            ExportConfig::from_env(&env(&[base, ("OTEL_TRACES_EXPORTER", "zipkin")])).unwrap_err();
        assert!(e.contains("zipkin"), "{e}");
    }

    #[test]
    fn the_signal_endpoint_wins_and_user_information_is_never_shown() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://user:s3cret@traces.example/v1/traces",
            ),
        ]);
        let c = ExportConfig::from_env(&e).unwrap().unwrap();
        assert_eq!(c.shown_endpoint, "https://traces.example/v1/traces");
        assert!(!format!("{c:?}").contains("s3cret"));
        for bad in ["collector:4318", "ftp://c", "http://"] {
            let e = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", bad)]);
            assert!(ExportConfig::from_env(&e).is_err(), "{bad}");
        }
    }

    fn valid_traceparent(traceparent: &str) -> Option<&str> {
        let cx = extract(traceparent);
        cx.span().span_context().is_valid().then_some(traceparent)
    }

    #[test]
    fn traceparents_are_validated() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(valid_traceparent(good), Some(good));
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(valid_traceparent(bad), None, "{bad}");
        }
        assert_eq!(valid_traceparent(&"0".repeat(MAX_TRACEPARENT + 1)), None);
    }

    #[test]
    fn spans_are_inert_when_export_is_off() {
        let s = Span::start(
            "x",
            SpanKind::Server,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(s.traceparent(), None);
        assert_eq!(s.child("y", SpanKind::Producer).traceparent(), None);
    }
}
