//! Command line and environment of `sluice-operator`.
//!
//! Every flag has a `SLUICE_*` environment equivalent (the Helm chart sets
//! the variables); a flag wins over its variable, which wins over the
//! default. The environment is passed in as a map, so tests never mutate the
//! process environment. The Kubernetes connection is not configured here:
//! it comes from the standard places (`KUBECONFIG`, `~/.kube/config`, or the
//! in-cluster ServiceAccount), as `kube::Client::try_default` finds it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::settings::{
    DrainBudget, OperatorSettings, OtlpProtocol, RuntimeImages, RuntimeTracing,
    DEFAULT_KEDA_NAMESPACE, DEFAULT_OPERATOR_NAMESPACE, MIN_REDIS_CERT_LIFETIME,
};

pub const ENV_NAMESPACES: &str = "SLUICE_NAMESPACES";
pub const ENV_METRICS_ADDR: &str = "SLUICE_METRICS_ADDR";
pub const ENV_LEADER_ELECTION: &str = "SLUICE_LEADER_ELECTION";
pub const ENV_LEASE_NAMESPACE: &str = "SLUICE_LEASE_NAMESPACE";
pub const ENV_LEASE_NAME: &str = "SLUICE_LEASE_NAME";
pub const ENV_LEASE_DURATION: &str = "SLUICE_LEASE_DURATION";
pub const ENV_LEASE_RENEW_INTERVAL: &str = "SLUICE_LEASE_RENEW_INTERVAL";
pub const ENV_IDENTITY: &str = "SLUICE_IDENTITY";
pub const ENV_OPERATOR_NAMESPACE: &str = "SLUICE_OPERATOR_NAMESPACE";
pub const ENV_KEDA_NAMESPACE: &str = "SLUICE_KEDA_NAMESPACE";
pub const ENV_OPERATOR_POD_LABELS: &str = "SLUICE_OPERATOR_POD_LABELS";
pub const ENV_INGRESS_IMAGE: &str = "SLUICE_INGRESS_IMAGE";
pub const ENV_WORKER_IMAGE: &str = "SLUICE_WORKER_IMAGE";
pub const ENV_REDIS_IMAGE: &str = "SLUICE_REDIS_IMAGE";
pub const ENV_IMAGE_PULL_POLICY: &str = "SLUICE_IMAGE_PULL_POLICY";
pub const ENV_IMAGE_PULL_SECRETS: &str = "SLUICE_IMAGE_PULL_SECRETS";
pub const ENV_INGRESS_DRAIN_GRACE: &str = "SLUICE_INGRESS_DRAIN_GRACE";
pub const ENV_INGRESS_DRAIN_TIMEOUT: &str = "SLUICE_INGRESS_DRAIN_TIMEOUT";
pub const ENV_WORKER_DRAIN_TIMEOUT: &str = "SLUICE_WORKER_DRAIN_TIMEOUT";
pub const ENV_REQUEUE_INTERVAL: &str = "SLUICE_REQUEUE_INTERVAL";
pub const ENV_BACKOFF_MIN: &str = "SLUICE_BACKOFF_MIN";
pub const ENV_BACKOFF_MAX: &str = "SLUICE_BACKOFF_MAX";
pub const ENV_LOG_FORMAT: &str = "SLUICE_LOG_FORMAT";
pub const ENV_KEY_PROPAGATION: &str = "SLUICE_KEY_PROPAGATION";
pub const ENV_REDIS_CERT_LIFETIME: &str = "SLUICE_REDIS_CERT_LIFETIME";
pub const ENV_COLD_START: &str = "SLUICE_COLD_START";
pub const ENV_AUTOSCALE_INTERVAL: &str = "SLUICE_AUTOSCALE_INTERVAL";
pub const ENV_QUEUES_INTERVAL: &str = "SLUICE_QUEUES_INTERVAL";
pub const ENV_OTLP_ENDPOINT: &str = "SLUICE_OTLP_ENDPOINT";
pub const ENV_OTLP_PROTOCOL: &str = "SLUICE_OTLP_PROTOCOL";
/// Set by the kubelet to the pod name; the default identity.
pub const ENV_HOSTNAME: &str = "HOSTNAME";

pub const DEFAULT_METRICS_ADDR: &str = "[::]:8080";
pub const DEFAULT_LEASE_NAME: &str = "sluice-operator-leader";
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_REQUEUE_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_secs(5);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);
pub const DEFAULT_AUTOSCALE_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_QUEUES_INTERVAL: Duration = Duration::from_secs(30);

/// What `sluice-operator` does besides reconciling.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Check that the operator is available and the StreamPipeline API is
    /// served (the chart's `helm test`); exits 0 when both hold, 1 otherwise
    Check(crate::check::CheckArgs),
}

/// Reconciles StreamPipeline resources into the workloads that run them.
///
/// Connects to Kubernetes the standard way: KUBECONFIG, ~/.kube/config, or
/// the in-cluster ServiceAccount. Logs go to stderr; the level comes from
/// RUST_LOG (default info).
#[derive(Debug, Default, Parser)]
#[command(name = "sluice-operator", version, about, long_about = None)]
pub struct Cli {
    /// Instead of running the controller: another task.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Namespaces to watch, comma separated; empty watches all namespaces
    /// (needs a ClusterRole) [env: SLUICE_NAMESPACES] [default: all]
    #[arg(long, value_name = "NS,..")]
    pub namespaces: Option<String>,

    /// Address of the /metrics, /healthz and /readyz listener
    /// [env: SLUICE_METRICS_ADDR] [default: 0.0.0.0:8080]
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,

    /// Run the controller only while holding the leader Lease, so several
    /// replicas are safe; losing the lease exits the process with status 3
    /// [env: SLUICE_LEADER_ELECTION=true|false] [default: false]
    #[arg(long)]
    pub leader_election: bool,

    /// Namespace of the leader Lease [env: SLUICE_LEASE_NAMESPACE] [default: the operator namespace]
    #[arg(long, value_name = "NS")]
    pub lease_namespace: Option<String>,

    /// Name of the leader Lease [env: SLUICE_LEASE_NAME] [default: sluice-operator-leader]
    #[arg(long, value_name = "NAME")]
    pub lease_name: Option<String>,

    /// How long a lease is valid without renewal; a standby takes over
    /// after this long [env: SLUICE_LEASE_DURATION] [default: 15s]
    #[arg(long, value_name = "DURATION")]
    pub lease_duration: Option<String>,

    /// How often the leader renews (and a standby retries); at most half the
    /// lease duration [env: SLUICE_LEASE_RENEW_INTERVAL] [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub lease_renew_interval: Option<String>,

    /// Holder identity in the Lease and reporting instance of events
    /// [env: SLUICE_IDENTITY] [default: $HOSTNAME (the pod name) plus the process id]
    #[arg(long, value_name = "ID")]
    pub identity: Option<String>,

    /// Namespace the operator runs in: the leader Lease lives there and the
    /// managed Redis NetworkPolicy admits the operator's pods from there
    /// [env: SLUICE_OPERATOR_NAMESPACE] [default: sluice-system]
    #[arg(long, value_name = "NS")]
    pub operator_namespace: Option<String>,

    /// Namespace KEDA runs in: for pipelines with `keda` groups the managed
    /// Redis NetworkPolicy admits KEDA's operator pods (app=keda-operator)
    /// from there [env: SLUICE_KEDA_NAMESPACE] [default: keda]
    #[arg(long, value_name = "NS")]
    pub keda_namespace: Option<String>,

    /// Labels of the operator's pods, matched by the managed Redis
    /// NetworkPolicy, as k=v,k=v [env: SLUICE_OPERATOR_POD_LABELS]
    /// [default: app.kubernetes.io/name=sluice-operator]
    #[arg(long, value_name = "K=V,..")]
    pub operator_pod_labels: Option<String>,

    /// Image of sluice-web-ingress [env: SLUICE_INGRESS_IMAGE]
    /// [default: ghcr.io/sluice-dev/sluice-web-ingress:VERSION, this operator's version]
    #[arg(long, value_name = "IMAGE")]
    pub ingress_image: Option<String>,

    /// Image of sluice-exec-worker for groups without their own image
    /// [env: SLUICE_WORKER_IMAGE] [default: ghcr.io/sluice-dev/sluice-exec-worker:VERSION, this operator's version]
    #[arg(long, value_name = "IMAGE")]
    pub worker_image: Option<String>,

    /// Image of managed Redis [env: SLUICE_REDIS_IMAGE] [default: redis:7.4-alpine]
    #[arg(long, value_name = "IMAGE")]
    pub redis_image: Option<String>,

    /// imagePullPolicy of the runtime and Redis containers: Always,
    /// IfNotPresent or Never [env: SLUICE_IMAGE_PULL_POLICY] [default: unset, the Kubernetes default]
    #[arg(long, value_name = "POLICY")]
    pub image_pull_policy: Option<String>,

    /// imagePullSecrets of every pod (in the pipeline's namespace), comma
    /// separated [env: SLUICE_IMAGE_PULL_SECRETS] [default: none]
    #[arg(long, value_name = "NAME,..")]
    pub image_pull_secrets: Option<String>,

    /// Ingress pods keep serving with readiness failed this long after
    /// SIGTERM [env: SLUICE_INGRESS_DRAIN_GRACE] [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub ingress_drain_grace: Option<String>,

    /// Ingress pods then wait at most this long for requests in flight
    /// [env: SLUICE_INGRESS_DRAIN_TIMEOUT] [default: 20s]
    #[arg(long, value_name = "DURATION")]
    pub ingress_drain_timeout: Option<String>,

    /// Worker pods wait at most this long to finish and hand off their work
    /// [env: SLUICE_WORKER_DRAIN_TIMEOUT] [default: 20s]
    #[arg(long, value_name = "DURATION")]
    pub worker_drain_timeout: Option<String>,

    /// Reconcile every pipeline at least this often, repairing drift of
    /// objects the operator does not watch (Secrets, Services, ...)
    /// [env: SLUICE_REQUEUE_INTERVAL] [default: 5m]
    #[arg(long, value_name = "DURATION")]
    pub requeue_interval: Option<String>,

    /// First retry delay after a failed reconcile; doubles per consecutive
    /// failure of the same pipeline [env: SLUICE_BACKOFF_MIN] [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub backoff_min: Option<String>,

    /// Longest retry delay after failed reconciles [env: SLUICE_BACKOFF_MAX] [default: 5m]
    #[arg(long, value_name = "DURATION")]
    pub backoff_max: Option<String>,

    /// Longest time the kubelet takes to show a changed Secret in running
    /// pods; key rotation waits this long before signing with a new key
    /// and keeps the old one this much longer [env: SLUICE_KEY_PROPAGATION]
    /// [default: 150s]
    #[arg(long, value_name = "DURATION")]
    pub key_propagation: Option<String>,

    /// Validity of the server certificate of managed Redis (TLS); it is
    /// replaced after two thirds of it, from the same CA; at least 1h
    /// [env: SLUICE_REDIS_CERT_LIFETIME] [default: 720h]
    #[arg(long, value_name = "DURATION")]
    pub redis_cert_lifetime: Option<String>,

    /// Time a worker group takes from zero replicas to its first pod
    /// reading work; pipelines whose interface timeout is shorter for a
    /// group that can scale to zero get a warning [env: SLUICE_COLD_START]
    /// [default: 20s]
    #[arg(long, value_name = "DURATION")]
    pub cold_start: Option<String>,

    /// How often the built-in autoscaler reads each autoscaled group's
    /// backlog and decides its replicas [env: SLUICE_AUTOSCALE_INTERVAL]
    /// [default: 15s]
    #[arg(long, value_name = "DURATION")]
    pub autoscale_interval: Option<String>,

    /// How often each Redis pipeline's queues and dead letters are read
    /// into its status (`status.queues`) [env: SLUICE_QUEUES_INTERVAL]
    /// [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub queues_interval: Option<String>,

    /// OTLP/HTTP base URL the runtime pods export traces to (their
    /// OTEL_EXPORTER_OTLP_ENDPOINT), http:// or https://, usually a
    /// collector's port 4318 [env: SLUICE_OTLP_ENDPOINT] [default: unset, no
    /// trace export]
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Encoding of the runtime pods' trace export (their
    /// OTEL_EXPORTER_OTLP_PROTOCOL): http/protobuf or http/json
    /// [env: SLUICE_OTLP_PROTOCOL] [default: http/protobuf]
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Log format: text or json [env: SLUICE_LOG_FORMAT] [default: text]
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Leader election on a `coordination.k8s.io/v1` Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    pub namespace: String,
    pub name: String,
    pub duration: Duration,
    pub renew_interval: Duration,
}

/// How often pipelines are reconciled when nothing triggers them, and how
/// failures back off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    pub requeue_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Period of the built-in autoscaler.
    pub autoscale_interval: Duration,
    /// Period of the queue observer.
    pub queues_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            requeue_interval: DEFAULT_REQUEUE_INTERVAL,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            autoscale_interval: DEFAULT_AUTOSCALE_INTERVAL,
            queues_interval: DEFAULT_QUEUES_INTERVAL,
        }
    }
}

/// The resolved configuration of one operator process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    pub metrics_addr: SocketAddr,
    /// `None` without leader election.
    pub leader_election: Option<LeaderElection>,
    pub identity: String,
    pub settings: OperatorSettings,
    pub timing: Timing,
    pub log_format: LogFormat,
}

/// A flag or variable with an unusable value.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {message}")]
pub struct ConfigError {
    pub name: String,
    pub message: String,
}

fn bad(name: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        name: name.to_string(),
        message: message.into(),
    }
}

/// `url` if the runtime can export to it: an http or https URL with a
/// host and, if any, a numeric port. User information is refused, and not
/// echoed: the URL is written in plain text into every runtime pod's spec.
fn otlp_endpoint(url: &str) -> Result<String, String> {
    const LIKE: &str = "expected a URL like http://otel-collector.observability:4318";
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "a URL with user information is refused: it would be readable in \
                    every runtime pod's spec"
                .to_string(),
        );
    }
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!("`{url}` is not an http:// or https:// URL; {LIKE}"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{url}` contains whitespace; {LIKE}"));
    }
    // An IPv6 host is bracketed and has colons of its own.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, after)) => (h, Some(after.strip_prefix(':').unwrap_or(after))),
            None => ("", None),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(format!("`{url}` has no host; {LIKE}"));
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) {
            return Err(format!("`{url}`: `{p}` is not a port; {LIKE}"));
        }
    }
    Ok(url.to_string())
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

impl Config {
    /// Resolves flags over environment variables over defaults.
    ///
    /// # Errors
    /// A value that does not parse, naming the flag.
    pub fn resolve(cli: &Cli, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let pick = |flag: &Option<String>, var: &str| {
            flag.clone()
                .or_else(|| env.get(var).cloned())
                .filter(|s| !s.trim().is_empty())
        };
        let duration =
            |flag: &Option<String>, var: &str, name: &str, default: Duration| match pick(flag, var)
            {
                None => Ok(default),
                Some(s) => sluice_crds::units::parse_duration(&s)
                    .map_err(|e| bad(name, e))
                    .and_then(|d| {
                        if d.is_zero() {
                            Err(bad(name, "must be more than zero"))
                        } else {
                            Ok(d)
                        }
                    }),
            };

        let namespaces = pick(&cli.namespaces, ENV_NAMESPACES)
            .map(|s| list(&s))
            .unwrap_or_default();
        let metrics_s = pick(&cli.metrics_addr, ENV_METRICS_ADDR)
            .unwrap_or_else(|| DEFAULT_METRICS_ADDR.to_string());
        let metrics_addr = metrics_s.parse().map_err(|_| {
            bad(
                "--metrics-addr",
                format!("`{metrics_s}` is not an address like 0.0.0.0:8080"),
            )
        })?;

        let operator_namespace = pick(&cli.operator_namespace, ENV_OPERATOR_NAMESPACE)
            .unwrap_or_else(|| DEFAULT_OPERATOR_NAMESPACE.to_string());
        let keda_namespace = pick(&cli.keda_namespace, ENV_KEDA_NAMESPACE)
            .unwrap_or_else(|| DEFAULT_KEDA_NAMESPACE.to_string());
        if !sluice_crds::validate::is_dns_label(&keda_namespace, 63) {
            return Err(bad(
                "--keda-namespace",
                format!("`{keda_namespace}` is not a namespace name"),
            ));
        }
        let leader_on = cli.leader_election
            || match env.get(ENV_LEADER_ELECTION).map(|s| s.trim()) {
                None | Some("") | Some("false") | Some("0") => false,
                Some("true") | Some("1") => true,
                Some(other) => {
                    return Err(bad(
                        "--leader-election",
                        format!("{ENV_LEADER_ELECTION}=`{other}`: expected true or false"),
                    ))
                }
            };
        let lease_duration = duration(
            &cli.lease_duration,
            ENV_LEASE_DURATION,
            "--lease-duration",
            DEFAULT_LEASE_DURATION,
        )?;
        let renew_interval = duration(
            &cli.lease_renew_interval,
            ENV_LEASE_RENEW_INTERVAL,
            "--lease-renew-interval",
            DEFAULT_LEASE_RENEW_INTERVAL,
        )?;
        // The leader gives up after failing to renew for 2/3 of the duration;
        // at most half leaves room for at least one retry before that.
        if renew_interval * 2 > lease_duration {
            return Err(bad(
                "--lease-renew-interval",
                "must be at most half of --lease-duration (a third is usual)",
            ));
        }
        let leader_election = leader_on.then(|| LeaderElection {
            namespace: pick(&cli.lease_namespace, ENV_LEASE_NAMESPACE)
                .unwrap_or_else(|| operator_namespace.clone()),
            name: pick(&cli.lease_name, ENV_LEASE_NAME)
                .unwrap_or_else(|| DEFAULT_LEASE_NAME.to_string()),
            duration: lease_duration,
            renew_interval,
        });
        let identity = pick(&cli.identity, ENV_IDENTITY).unwrap_or_else(|| {
            let host = env
                .get(ENV_HOSTNAME)
                .cloned()
                .unwrap_or_else(|| "sluice-operator".into());
            format!("{host}-{}", std::process::id())
        });

        let mut images = RuntimeImages::default();
        if let Some(i) = pick(&cli.ingress_image, ENV_INGRESS_IMAGE) {
            images.ingress = i;
        }
        if let Some(i) = pick(&cli.worker_image, ENV_WORKER_IMAGE) {
            images.worker = i;
        }
        if let Some(i) = pick(&cli.redis_image, ENV_REDIS_IMAGE) {
            images.redis = i;
        }
        images.pull_policy = match pick(&cli.image_pull_policy, ENV_IMAGE_PULL_POLICY) {
            None => None,
            Some(p) if ["Always", "IfNotPresent", "Never"].contains(&p.as_str()) => Some(p),
            Some(p) => {
                return Err(bad(
                    "--image-pull-policy",
                    format!("`{p}`: expected Always, IfNotPresent or Never"),
                ))
            }
        };
        images.pull_secrets = pick(&cli.image_pull_secrets, ENV_IMAGE_PULL_SECRETS)
            .map(|s| list(&s))
            .unwrap_or_default();

        let defaults = OperatorSettings::default();
        let operator_pod_labels = match pick(&cli.operator_pod_labels, ENV_OPERATOR_POD_LABELS) {
            None => defaults.operator_pod_labels.clone(),
            Some(s) => {
                let mut labels = BTreeMap::new();
                for pair in list(&s) {
                    let (k, v) = pair.split_once('=').ok_or_else(|| {
                        bad("--operator-pod-labels", format!("`{pair}` is not k=v"))
                    })?;
                    labels.insert(k.trim().to_string(), v.trim().to_string());
                }
                labels
            }
        };
        let drain = DrainBudget {
            ingress_grace: duration(
                &cli.ingress_drain_grace,
                ENV_INGRESS_DRAIN_GRACE,
                "--ingress-drain-grace",
                defaults.drain.ingress_grace,
            )?,
            ingress_timeout: duration(
                &cli.ingress_drain_timeout,
                ENV_INGRESS_DRAIN_TIMEOUT,
                "--ingress-drain-timeout",
                defaults.drain.ingress_timeout,
            )?,
            worker_timeout: duration(
                &cli.worker_drain_timeout,
                ENV_WORKER_DRAIN_TIMEOUT,
                "--worker-drain-timeout",
                defaults.drain.worker_timeout,
            )?,
        };

        let timing = Timing {
            requeue_interval: duration(
                &cli.requeue_interval,
                ENV_REQUEUE_INTERVAL,
                "--requeue-interval",
                DEFAULT_REQUEUE_INTERVAL,
            )?,
            backoff_min: duration(
                &cli.backoff_min,
                ENV_BACKOFF_MIN,
                "--backoff-min",
                DEFAULT_BACKOFF_MIN,
            )?,
            backoff_max: duration(
                &cli.backoff_max,
                ENV_BACKOFF_MAX,
                "--backoff-max",
                DEFAULT_BACKOFF_MAX,
            )?,
            autoscale_interval: duration(
                &cli.autoscale_interval,
                ENV_AUTOSCALE_INTERVAL,
                "--autoscale-interval",
                DEFAULT_AUTOSCALE_INTERVAL,
            )?,
            queues_interval: duration(
                &cli.queues_interval,
                ENV_QUEUES_INTERVAL,
                "--queues-interval",
                DEFAULT_QUEUES_INTERVAL,
            )?,
        };
        if timing.backoff_min > timing.backoff_max {
            return Err(bad("--backoff-min", "must not exceed --backoff-max"));
        }
        // The protocol is checked even without an endpoint, so a typo shows
        // before tracing is turned on.
        let otlp_protocol = match pick(&cli.otlp_protocol, ENV_OTLP_PROTOCOL) {
            None => OtlpProtocol::default(),
            Some(p) => OtlpProtocol::parse(p.trim()).ok_or_else(|| {
                bad(
                    "--otlp-protocol",
                    format!(
                        "`{p}`: expected http/protobuf or http/json (the runtime exports over OTLP/HTTP only)"
                    ),
                )
            })?,
        };
        let tracing = match pick(&cli.otlp_endpoint, ENV_OTLP_ENDPOINT) {
            None => None,
            Some(url) => Some(RuntimeTracing {
                endpoint: otlp_endpoint(url.trim()).map_err(|m| bad("--otlp-endpoint", m))?,
                protocol: otlp_protocol,
            }),
        };
        let log_format = match pick(&cli.log_format, ENV_LOG_FORMAT).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(bad(
                    "--log-format",
                    format!("`{other}`: expected text or json"),
                ))
            }
        };

        Ok(Self {
            namespaces,
            metrics_addr,
            leader_election,
            identity,
            settings: OperatorSettings {
                images,
                operator_namespace,
                operator_pod_labels,
                keda_namespace,
                drain,
                key_propagation: duration(
                    &cli.key_propagation,
                    ENV_KEY_PROPAGATION,
                    "--key-propagation",
                    defaults.key_propagation,
                )?,
                cold_start: duration(
                    &cli.cold_start,
                    ENV_COLD_START,
                    "--cold-start",
                    defaults.cold_start,
                )?,
                redis_cert_lifetime: {
                    let d = duration(
                        &cli.redis_cert_lifetime,
                        ENV_REDIS_CERT_LIFETIME,
                        "--redis-cert-lifetime",
                        defaults.redis_cert_lifetime,
                    )?;
                    if d < MIN_REDIS_CERT_LIFETIME {
                        return Err(bad("--redis-cert-lifetime", "must be at least 1h"));
                    }
                    d
                },
                tracing,
            },
            timing,
            log_format,
        })
    }
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
    fn defaults_watch_every_namespace_without_leader_election() {
        let c = Config::resolve(&Cli::default(), &env(&[("HOSTNAME", "op-1")])).unwrap();
        assert!(c.namespaces.is_empty());
        assert_eq!(c.metrics_addr.to_string(), "[::]:8080");
        assert_eq!(c.leader_election, None);
        assert_eq!(c.identity, format!("op-1-{}", std::process::id()));
        assert_eq!(c.settings, OperatorSettings::default());
        assert_eq!(c.timing, Timing::default());
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn flags_win_over_variables() {
        let cli = Cli {
            namespaces: Some("a, b,".into()),
            worker_image: Some("w:flag".into()),
            ..Default::default()
        };
        let c = Config::resolve(
            &cli,
            &env(&[
                (ENV_NAMESPACES, "x"),
                (ENV_WORKER_IMAGE, "w:env"),
                (ENV_INGRESS_IMAGE, "i:env"),
                (ENV_LEADER_ELECTION, "true"),
                (ENV_LEASE_DURATION, "3s"),
                (ENV_LEASE_RENEW_INTERVAL, "1s"),
                (ENV_OPERATOR_NAMESPACE, "ops"),
                (ENV_IMAGE_PULL_POLICY, "Always"),
                (ENV_OPERATOR_POD_LABELS, "app=op,tier=control"),
            ]),
        )
        .unwrap();
        assert_eq!(c.namespaces, ["a", "b"]);
        assert_eq!(c.settings.images.worker, "w:flag");
        assert_eq!(c.settings.images.ingress, "i:env");
        assert_eq!(c.settings.images.pull_policy.as_deref(), Some("Always"));
        assert_eq!(c.settings.operator_pod_labels["tier"], "control");
        let le = c.leader_election.unwrap();
        assert_eq!(le.namespace, "ops");
        assert_eq!(le.name, DEFAULT_LEASE_NAME);
        assert_eq!(le.duration, Duration::from_secs(3));
    }

    #[test]
    fn unusable_values_name_their_flag() {
        for (var, value, flag) in [
            (ENV_METRICS_ADDR, "nope", "--metrics-addr"),
            (ENV_LEADER_ELECTION, "maybe", "--leader-election"),
            (ENV_IMAGE_PULL_POLICY, "Sometimes", "--image-pull-policy"),
            (ENV_REQUEUE_INTERVAL, "0s", "--requeue-interval"),
            (ENV_LEASE_RENEW_INTERVAL, "8s", "--lease-renew-interval"),
            (ENV_LOG_FORMAT, "xml", "--log-format"),
            (ENV_KEY_PROPAGATION, "soon", "--key-propagation"),
            (ENV_REDIS_CERT_LIFETIME, "30s", "--redis-cert-lifetime"),
            (ENV_REDIS_CERT_LIFETIME, "721h", "--redis-cert-lifetime"),
            (ENV_COLD_START, "0s", "--cold-start"),
            (ENV_AUTOSCALE_INTERVAL, "-1s", "--autoscale-interval"),
            (ENV_OPERATOR_POD_LABELS, "novalue", "--operator-pod-labels"),
            (ENV_OTLP_ENDPOINT, "otel-collector:4318", "--otlp-endpoint"),
            (ENV_OTLP_PROTOCOL, "grpc", "--otlp-protocol"),
            (ENV_KEDA_NAMESPACE, "Not_A_Namespace", "--keda-namespace"),
        ] {
            let e = Config::resolve(&Cli::default(), &env(&[(var, value)])).unwrap_err();
            assert_eq!(e.name, flag, "{var}={value}");
        }
    }

    #[test]
    fn tracing_is_off_without_an_endpoint_even_with_a_protocol() {
        let c =
            Config::resolve(&Cli::default(), &env(&[(ENV_OTLP_PROTOCOL, "http/json")])).unwrap();
        assert_eq!(c.settings.tracing, None);
    }

    #[test]
    fn an_otlp_endpoint_turns_runtime_tracing_on_with_the_default_protocol() {
        let url = "http://otel-collector.observability:4318";
        let c = Config::resolve(&Cli::default(), &env(&[(ENV_OTLP_ENDPOINT, url)])).unwrap();
        let t = c.settings.tracing.unwrap();
        assert_eq!(t.endpoint, url);
        assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);

        let cli = Cli {
            otlp_endpoint: Some("https://otlp.example.com/v1/".into()),
            otlp_protocol: Some("http/json".into()),
            ..Default::default()
        };
        let c = Config::resolve(&cli, &env(&[(ENV_OTLP_ENDPOINT, url)])).unwrap();
        let t = c.settings.tracing.unwrap();
        assert_eq!(t.endpoint, "https://otlp.example.com/v1/", "the flag wins");
        assert_eq!(t.protocol, OtlpProtocol::HttpJson);
    }

    #[test]
    fn otlp_endpoints_must_be_http_urls_with_a_host() {
        for ok in [
            "http://collector:4318",
            "HTTPS://collector",
            "http://10.0.0.7:4318/",
            "http://[fd00::7]:4318",
            "https://otlp.example.com/prefix?x=1",
        ] {
            assert_eq!(otlp_endpoint(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "collector:4318",
            "grpc://collector:4317",
            "http://",
            "http://:4318",
            "http://collector:port",
            "http://collector:70000",
            "http://collector:4318/a b",
            "http://[fd00::7",
        ] {
            let e = otlp_endpoint(bad).unwrap_err();
            assert!(e.contains("expected a URL like http://"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_otlp_endpoint_with_credentials_is_refused_without_echoing_them() {
        let e = Config::resolve(
            &Cli::default(),
            &env(&[(ENV_OTLP_ENDPOINT, "https://user:s3cret@otlp.example.com")]),
        )
        .unwrap_err();
        assert_eq!(e.name, "--otlp-endpoint");
        assert!(e.message.contains("user information"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
