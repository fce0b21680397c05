//! The runtime contract: the variables, flags' values and ports of
//! `sluice-web-ingress` and `sluice-exec-worker` that the rendered pods rely
//! on, declared once here and checked end to end (`tests/runtime_roundtrip.rs`).

use sluice_crds::GroupRole;

pub const ENV_REDIS_URL: &str = "SLUICE_REDIS_URL";
/// PEM CA certificate(s) a `rediss://` server must chain to (external Redis
/// with `caSecretRef`), instead of the system roots.
pub const ENV_REDIS_CA_FILE: &str = "SLUICE_REDIS_CA_FILE";
pub const ENV_REDIS_PASSWORD_FILE: &str = "SLUICE_REDIS_PASSWORD_FILE";
pub const ENV_INGRESS_ID: &str = "SLUICE_INGRESS_ID";
pub const ENV_DRAIN_GRACE: &str = "SLUICE_DRAIN_GRACE";
pub const ENV_DRAIN_TIMEOUT: &str = "SLUICE_DRAIN_TIMEOUT";
pub const ENV_LOG_FORMAT: &str = "SLUICE_LOG_FORMAT";
/// The pod's name from the downward API, declared before the variables
/// that refer to it as `$(SLUICE_POD_NAME)` (only with trace export on).
pub const ENV_POD_NAME: &str = "SLUICE_POD_NAME";
/// The standard OpenTelemetry variables the runtime reads (DESIGN §7).
pub const ENV_OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const ENV_OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";

/// Public port of the ingress container (`--listen 0.0.0.0:8080`), named `http`.
pub const INGRESS_PORT: i32 = 8080;
/// Port of the Service `P` in front of it.
pub const SERVICE_PORT: i32 = 80;
/// Health/metrics port of a worker container (`--admin 0.0.0.0:9090`), named `admin`.
/// In the pod of a tcp pipeline the worker containers share one network
/// namespace, so the k-th worker group's container takes `ADMIN_PORT + k`.
pub const ADMIN_PORT: i32 = 9090;
/// Loopback port of the hub in the pod of a tcp pipeline: the ingress
/// container serves it (`--hub 127.0.0.1:7311`) and every worker container
/// connects to it. Fixed, since the workers are started by the kubelet
/// rather than by the ingress; loopback only, so it is no container port and
/// nothing outside the pod can reach it.
pub const HUB_PORT: u16 = 7311;
/// The key ring file naming the signing kid (`sluice_platform::keyring::CURRENT_FILE`).
pub const KEY_RING_CURRENT: &str = "current";
/// Length of a raw key of the ring (`sluice_platform::keyring::KEY_LEN`).
pub const KEY_LEN: usize = 32;

/// Name of the runtime container of a group's pods.
pub fn main_container(role: GroupRole) -> &'static str {
    match role {
        GroupRole::Ingress => "ingress",
        GroupRole::Worker => "worker",
    }
}
