//! What the operator is told by its deployment (flags and env set by the Helm
//! chart) rather than by a StreamPipeline: runtime images, where the operator
//! itself runs, the drain budget of the runtime processes and where they
//! export traces.
//!
//! Settings are plain data, so [`crate::render::desired`] stays a pure
//! function of `(StreamPipeline, OperatorSettings)` and golden tests pin them.

use std::collections::BTreeMap;
use std::time::Duration;

/// Registry prefix of the images the project publishes.
pub const IMAGE_REGISTRY: &str = "ghcr.io/sluice-dev";

/// Managed Redis image when neither the settings nor `spec.redis.image` say otherwise.
pub const DEFAULT_REDIS_IMAGE: &str = "redis:7.4-alpine";

/// Namespace the Helm chart installs the operator into by default.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "sluice-system";

/// After the ingress's HTTP drain (grace + timeout) it still stops its reply
/// listener and, in the memory profile, the inline worker groups, which hand
/// off their in-flight work; this slack covers that and process exit.
const INGRESS_EXIT_SLACK: Duration = Duration::from_secs(15);

/// After a worker's drain timeout: the last hand-offs and process exit.
const WORKER_EXIT_SLACK: Duration = Duration::from_secs(10);

/// Images of the processes the operator starts.
///
/// A group's `image` in the spec overrides `ingress`/`worker` for that group,
/// and `spec.redis.image` overrides `redis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeImages {
    /// `sluice-web-ingress`: the ingress group (and, in the memory profile, every group).
    pub ingress: String,
    /// `sluice-exec-worker`: worker groups without their own image.
    pub worker: String,
    /// Managed Redis.
    pub redis: String,
    /// `imagePullPolicy` of the operator's containers (sidecars keep their own);
    /// `None` leaves the Kubernetes default.
    pub pull_policy: Option<String>,
    /// Names of `imagePullSecrets` (in the pipeline's namespace) for every pod.
    pub pull_secrets: Vec<String>,
}

impl RuntimeImages {
    /// The images of this release: `<registry>/sluice-<component>:<version>`.
    pub fn release(version: &str) -> Self {
        Self {
            ingress: format!("{IMAGE_REGISTRY}/sluice-web-ingress:{version}"),
            worker: format!("{IMAGE_REGISTRY}/sluice-exec-worker:{version}"),
            redis: DEFAULT_REDIS_IMAGE.to_string(),
            pull_policy: None,
            pull_secrets: Vec::new(),
        }
    }
}

impl Default for RuntimeImages {
    /// The images built from the same commit as this operator.
    fn default() -> Self {
        Self::release(env!("CARGO_PKG_VERSION"))
    }
}

/// How long the runtime processes take to stop; the pods' termination grace
/// period is derived from it so the kubelet never kills a draining process.
///
/// The ingress and worker get these values as `SLUICE_DRAIN_*` variables, so
/// what the process does and what its pod allows come from one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainBudget {
    /// After SIGTERM the ingress keeps serving with readiness failed this long,
    /// so endpoints update before it stops accepting (runtime default 5s).
    pub ingress_grace: Duration,
    /// Then it waits at most this long for requests in flight (runtime default 20s).
    pub ingress_timeout: Duration,
    /// A worker stops reading and waits at most this long to finish and hand
    /// off what it holds.
    pub worker_timeout: Duration,
}

impl Default for DrainBudget {
    fn default() -> Self {
        Self {
            ingress_grace: Duration::from_secs(5),
            ingress_timeout: Duration::from_secs(20),
            worker_timeout: Duration::from_secs(20),
        }
    }
}

impl DrainBudget {
    /// `terminationGracePeriodSeconds` of ingress pods (40 with the defaults).
    pub fn ingress_termination_grace_seconds(&self) -> i64 {
        ceil_secs(self.ingress_grace + self.ingress_timeout + INGRESS_EXIT_SLACK)
    }

    /// `terminationGracePeriodSeconds` of worker pods (30 with the defaults).
    pub fn worker_termination_grace_seconds(&self) -> i64 {
        ceil_secs(self.worker_timeout + WORKER_EXIT_SLACK)
    }

    /// How long the worker containers of a tcp pipeline's pod wait after
    /// the pod is asked to stop before they are sent SIGTERM (a `preStop`
    /// sleep; 25 with the defaults): the ingress beside them drains first,
    /// and what it still accepts and answers must find them working.
    pub fn tcp_worker_stop_delay_seconds(&self) -> i64 {
        ceil_secs(self.ingress_grace + self.ingress_timeout)
    }

    /// `terminationGracePeriodSeconds` of a tcp pipeline's pods (55 with
    /// the defaults): the ingress's drain, then the workers' own.
    pub fn tcp_termination_grace_seconds(&self) -> i64 {
        ceil_secs(
            self.ingress_grace + self.ingress_timeout + self.worker_timeout + WORKER_EXIT_SLACK,
        )
        .max(self.ingress_termination_grace_seconds())
    }
}

fn ceil_secs(d: Duration) -> i64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// The OTLP/HTTP encodings the runtime exports traces with
/// (`OTEL_EXPORTER_OTLP_PROTOCOL`); it has no gRPC exporter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`, the OpenTelemetry default.
    #[default]
    HttpProtobuf,
    /// `http/json`.
    HttpJson,
}

impl OtlpProtocol {
    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpProtobuf => "http/protobuf",
            Self::HttpJson => "http/json",
        }
    }

    /// The protocol an `OTEL_EXPORTER_OTLP_PROTOCOL` value names, if the
    /// runtime speaks it.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "http/protobuf" => Some(Self::HttpProtobuf),
            "http/json" => Some(Self::HttpJson),
            _ => None,
        }
    }
}

/// Where the runtime pods export their spans (DESIGN §7). The operator
/// only passes it on as `OTEL_*` variables of the runtime containers; it
/// does not export anything itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeTracing {
    /// OTLP/HTTP base URL (`http://otel-collector.observability:4318`);
    /// checked to be http(s) with a host and no user information.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
}

/// Everything besides the StreamPipeline that decides the desired objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSettings {
    pub images: RuntimeImages,
    /// Namespace the operator runs in: the managed Redis NetworkPolicy admits
    /// the operator's pods from there (it reads backlog for autoscaling).
    pub operator_namespace: String,
    /// Labels of the operator's pods, matched by that NetworkPolicy.
    pub operator_pod_labels: BTreeMap<String, String>,
    /// Namespace KEDA runs in: for a pipeline with `keda` groups the managed
    /// Redis NetworkPolicy admits KEDA's operator pods (`app=keda-operator`)
    /// from there, since they read the streams' lag.
    pub keda_namespace: String,
    pub drain: DrainBudget,
    /// How long the kubelet may take to show a changed Secret in a pod's
    /// mounted volume. Key rotation waits this long before signing with a
    /// new key, and keeps a retired key this much longer (DESIGN §6).
    pub key_propagation: Duration,
    /// A plausible time from scaling a worker group up from zero to its
    /// first pod reading work; a warning is raised when an interface's
    /// timeout is shorter for a group that may be at zero.
    pub cold_start: Duration,
    /// Validity of managed Redis's server certificate
    /// ([`crate::redis_tls`]); renewed after two thirds of it.
    pub redis_cert_lifetime: Duration,
    /// Trace export of the runtime pods; `None` (the default) leaves their
    /// containers without any `OTEL_*` variable, so export stays off.
    pub tracing: Option<RuntimeTracing>,
}

/// Default of [`OperatorSettings::key_propagation`]: the kubelet's sync
/// period (1 min) plus its Secret cache TTL, with margin.
pub const DEFAULT_KEY_PROPAGATION: Duration = Duration::from_secs(150);

/// Default of [`OperatorSettings::redis_cert_lifetime`].
pub const DEFAULT_REDIS_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Shortest [`OperatorSettings::redis_cert_lifetime`]; the longest is the
/// longest duration a flag takes (720h).
pub const MIN_REDIS_CERT_LIFETIME: Duration = Duration::from_secs(3600);

/// Default of [`OperatorSettings::cold_start`]: scheduling, a cached image
/// and process start.
pub const DEFAULT_COLD_START: Duration = Duration::from_secs(20);

/// Default of [`OperatorSettings::keda_namespace`]: where KEDA's Helm chart
/// and manifests install it.
pub const DEFAULT_KEDA_NAMESPACE: &str = "keda";

/// Labels of KEDA's operator pods (its Deployment's selector), which run the
/// scalers that connect to Redis.
pub const KEDA_OPERATOR_POD_LABELS: [(&str, &str); 1] = [("app", "keda-operator")];

impl Default for OperatorSettings {
    fn default() -> Self {
        Self {
            images: RuntimeImages::default(),
            operator_namespace: DEFAULT_OPERATOR_NAMESPACE.to_string(),
            operator_pod_labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "sluice-operator".to_string(),
            )]),
            keda_namespace: DEFAULT_KEDA_NAMESPACE.to_string(),
            drain: DrainBudget::default(),
            key_propagation: DEFAULT_KEY_PROPAGATION,
            cold_start: DEFAULT_COLD_START,
            redis_cert_lifetime: DEFAULT_REDIS_CERT_LIFETIME,
            tracing: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_images_carry_the_crate_version() {
        let i = RuntimeImages::default();
        let v = env!("CARGO_PKG_VERSION");
        assert_eq!(
            i.ingress,
            format!("ghcr.io/sluice-dev/sluice-web-ingress:{v}")
        );
        assert_eq!(
            i.worker,
            format!("ghcr.io/sluice-dev/sluice-exec-worker:{v}")
        );
        assert_eq!(i.redis, "redis:7.4-alpine");
    }

    #[test]
    fn default_grace_periods_outlast_the_drain_budget() {
        let d = DrainBudget::default();
        assert_eq!(d.ingress_termination_grace_seconds(), 40);
        assert_eq!(d.worker_termination_grace_seconds(), 30);
        assert_eq!(d.tcp_worker_stop_delay_seconds(), 25);
        assert_eq!(d.tcp_termination_grace_seconds(), 55);
        let odd = DrainBudget {
            ingress_grace: Duration::from_millis(1500),
            ingress_timeout: Duration::from_secs(1),
            worker_timeout: Duration::from_millis(1),
        };
        assert_eq!(odd.ingress_termination_grace_seconds(), 18);
        assert_eq!(odd.worker_termination_grace_seconds(), 11);
    }

    #[test]
    fn otlp_protocols_round_trip_through_their_variable_values() {
        for p in [OtlpProtocol::HttpProtobuf, OtlpProtocol::HttpJson] {
            assert_eq!(OtlpProtocol::parse(p.as_str()), Some(p));
        }
        assert_eq!(OtlpProtocol::default().as_str(), "http/protobuf");
        assert_eq!(OtlpProtocol::parse("grpc"), None);
    }
}
