//! Command line and environment of `sluice-web-ingress`.
//!
//! Every flag has a `SLUICE_*` environment equivalent; a flag wins over its
//! variable. The environment is passed in as a map, so tests never mutate
//! the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice_crds::BackendKind;

use crate::threads::{ThreadCounts, MAX_THREADS};

pub const ENV_PIPELINE: &str = "SLUICE_PIPELINE";
pub const ENV_LISTEN: &str = "SLUICE_LISTEN";
pub const ENV_BACKEND: &str = "SLUICE_BACKEND";
pub const ENV_REDIS_URL: &str = "SLUICE_REDIS_URL";
pub const ENV_KEYS_DIR: &str = "SLUICE_KEYS_DIR";
pub const ENV_REDIS_TIMEOUT: &str = "SLUICE_REDIS_TIMEOUT";
pub const ENV_REDIS_CA_FILE: &str = "SLUICE_REDIS_CA_FILE";
pub const ENV_REDIS_PASSWORD_FILE: &str = "SLUICE_REDIS_PASSWORD_FILE";
pub const ENV_REDIS_POOL_SIZE: &str = "SLUICE_REDIS_POOL_SIZE";
pub const ENV_SECRETS_DIR: &str = "SLUICE_SECRETS_DIR";
pub const ENV_INGRESS_ID: &str = "SLUICE_INGRESS_ID";
pub const ENV_DRAIN_GRACE: &str = "SLUICE_DRAIN_GRACE";
pub const ENV_DRAIN_TIMEOUT: &str = "SLUICE_DRAIN_TIMEOUT";
pub const ENV_INLINE_THREADS: &str = "SLUICE_INLINE_THREADS";
pub const ENV_THREADS: &str = "SLUICE_THREADS";
pub const ENV_LOG_FORMAT: &str = "SLUICE_LOG_FORMAT";
pub const ENV_HEADER_TIMEOUT: &str = "SLUICE_HEADER_TIMEOUT";
pub const ENV_BODY_TIMEOUT: &str = "SLUICE_BODY_TIMEOUT";
pub const ENV_MAX_CONNECTIONS: &str = "SLUICE_MAX_CONNECTIONS";
pub const ENV_MAX_JSON_DEPTH: &str = "SLUICE_MAX_JSON_DEPTH";
pub const ENV_MAX_JSON_ELEMENTS: &str = "SLUICE_MAX_JSON_ELEMENTS";
pub const ENV_TLS_CERT: &str = "SLUICE_TLS_CERT";
pub const ENV_TLS_KEY: &str = "SLUICE_TLS_KEY";
pub const ENV_ADMIN: &str = "SLUICE_ADMIN";
pub const ENV_ADMIN_TOKEN_FILE: &str = "SLUICE_ADMIN_TOKEN_FILE";
pub const ENV_HUB: &str = "SLUICE_HUB";
pub const ENV_WORKERS: &str = "SLUICE_WORKERS";
pub const ENV_WORKER_BIN: &str = "SLUICE_WORKER_BIN";
pub const ENV_RESTART_LIMIT: &str = "SLUICE_RESTART_LIMIT";
pub const ENV_RESTART_WINDOW: &str = "SLUICE_RESTART_WINDOW";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_SECRETS_DIR: &str = "/etc/sluice/secrets";

/// Serves a StreamPipeline's web interfaces.
///
/// In the memory profile (the default) every worker group runs inside this
/// process on its own threads; with redis backends the workers are separate
/// `sluice-exec-worker` processes reached through Redis; with tcp backends
/// they are `sluice-exec-worker` processes this ingress starts (or, on a
/// cluster, containers of its pod) reached over loopback TCP.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-web-ingress",
    version,
    about = "Serves a StreamPipeline's web interfaces (memory profile: every group in this process)",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// StreamPipeline manifest to serve [env: SLUICE_PIPELINE]
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,

    /// Address of the public HTTP listener [env: SLUICE_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Override the manifest's backends: memory, redis or tcp [env: SLUICE_BACKEND]
    #[arg(long, value_name = "memory|redis|tcp")]
    pub backend: Option<String>,

    /// tcp backends: where the hub the workers connect to listens; loopback
    /// only [env: SLUICE_HUB] [default: 127.0.0.1:0, a free port, with
    /// --workers spawn]
    #[arg(long, value_name = "ADDR")]
    pub hub: Option<String>,

    /// tcp backends: `spawn` starts one worker process per group and
    /// supervises it; `external` waits for workers started by someone else
    /// (the containers of a pod) [env: SLUICE_WORKERS] [default: spawn]
    #[arg(long, value_name = "spawn|external")]
    pub workers: Option<String>,

    /// tcp backends with --workers spawn: the worker program, for every
    /// group (`PATH`) or one (`GROUP=PATH`); repeatable [env:
    /// SLUICE_WORKER_BIN, for every group] [default: sluice-exec-worker
    /// beside this binary]
    #[arg(long, value_name = "[GROUP=]PATH")]
    pub worker_bin: Vec<String>,

    /// tcp backends with --workers spawn: a worker group that exits this
    /// many times within --restart-window is not restarted again, and
    /// readiness fails with the reason [env: SLUICE_RESTART_LIMIT] [default: 5]
    #[arg(long, value_name = "N")]
    pub restart_limit: Option<u32>,

    /// See --restart-limit [env: SLUICE_RESTART_WINDOW] [default: 60s]
    #[arg(long, value_name = "DURATION")]
    pub restart_window: Option<String>,

    /// Redis URL for redis backends, e.g. redis://:password@127.0.0.1:6379/0 [env: SLUICE_REDIS_URL]
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,

    /// Timeout of every Redis command and connection attempt [env: SLUICE_REDIS_TIMEOUT] [default: 2s]
    #[arg(long, value_name = "DURATION")]
    pub redis_timeout: Option<String>,

    /// Pooled Redis connections for ordinary commands; blocking reads use their own [env: SLUICE_REDIS_POOL_SIZE] [default: 2]
    #[arg(long, value_name = "N")]
    pub redis_pool_size: Option<usize>,

    /// PEM CA certificate(s) a rediss:// server's certificate must chain to, instead of the system roots [env: SLUICE_REDIS_CA_FILE]
    #[arg(long, value_name = "FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// File holding the Redis password, read again for every new connection (so a password rotated on disk is picked up without a restart); the --redis URL then carries none [env: SLUICE_REDIS_PASSWORD_FILE]
    #[arg(long, value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// Key directory: a ring (one base64 key file per kid) or this ingress's
    /// derived keys (`<kid>.<request|reply>.<group>`), plus a `current` file;
    /// required with redis backends and with tcp backends' --workers
    /// external or --admin, optional otherwise, where a fresh in-memory ring
    /// is used [env: SLUICE_KEYS_DIR]
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,

    /// Where Secrets referenced by nodes are mounted, as <DIR>/<name>/<key>
    /// [env: SLUICE_SECRETS_DIR] [default: /etc/sluice/secrets]
    #[arg(long, value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,

    /// Identity of this ingress instance (names its reply stream) [env: SLUICE_INGRESS_ID] [default: host name and a random suffix]
    #[arg(long, value_name = "ID")]
    pub ingress_id: Option<String>,

    /// On SIGTERM, keep serving this long with readiness failed so load
    /// balancers stop sending [env: SLUICE_DRAIN_GRACE] [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub drain_grace: Option<String>,

    /// After the grace, wait at most this long for requests in flight [env: SLUICE_DRAIN_TIMEOUT] [default: 20s]
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,

    /// Threads serving HTTP [env: SLUICE_THREADS] [default: when worker groups run in this process (memory backends) the CPUs --inline-threads leaves, at least 1; otherwise the number of CPUs]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Threads running the in-process worker groups (memory profile) [env: SLUICE_INLINE_THREADS] [default: the CPUs --threads leaves, else half the CPUs; at least 1]
    #[arg(long, value_name = "N")]
    pub inline_threads: Option<usize>,

    /// Log format: text or json [env: SLUICE_LOG_FORMAT] [default: text]; the level comes from RUST_LOG (default info)
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<String>,

    /// A request's head (request line and headers) must arrive within this
    /// long of the connection opening or of the previous response, else the
    /// connection is closed; this is also how long an idle keep-alive
    /// connection (HTTP/2: one with no open stream) stays open
    /// [env: SLUICE_HEADER_TIMEOUT] [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub header_timeout: Option<String>,

    /// A request's body must arrive within this long of its head (and within
    /// the interface's timeout, whichever is shorter), else 408
    /// [env: SLUICE_BODY_TIMEOUT] [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub body_timeout: Option<String>,

    /// Open client connections at most; more are answered 503 and closed
    /// [env: SLUICE_MAX_CONNECTIONS] [default: 4096]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Deepest nesting of arrays and objects in a request body, else 400
    /// [env: SLUICE_MAX_JSON_DEPTH] [default: 64]
    #[arg(long, value_name = "N")]
    pub max_json_depth: Option<usize>,

    /// Most array items plus object members in a request body, else 413
    /// [env: SLUICE_MAX_JSON_ELEMENTS] [default: 100000]
    #[arg(long, value_name = "N")]
    pub max_json_elements: Option<usize>,

    /// Terminate TLS on the listener with this PEM certificate chain (with
    /// --tls-key; HTTP/2 or HTTP/1.1 by ALPN; reloaded when the files
    /// change) [env: SLUICE_TLS_CERT]
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert [env: SLUICE_TLS_KEY]
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Memory backends, or tcp with --workers spawn and --keys: serve the
    /// dead letters (list, redrive, purge) on this loopback address, to
    /// holders of the token in --admin-token-file; off by default
    /// [env: SLUICE_ADMIN]
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,

    /// With --admin: where the ingress writes, at each start, the token
    /// the admin listener asks for (mode 0600, replaced)
    /// [env: SLUICE_ADMIN_TOKEN_FILE]
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a fresh key ring (one random key, made current) into DIR
    Keygen {
        /// Directory to create; refused if it already holds a ring
        dir: PathBuf,
    },
    /// List, send again or delete a pipeline's dead letters: on its Redis,
    /// with its key ring, or through a running ingress's --admin listener
    /// (memory and tcp backends; see `dlq <action> --help`)
    #[command(subcommand)]
    Dlq(Box<crate::dlq_command::DlqAction>),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How much the HTTP server lets one client hold: time, connections, and
/// the shape of a JSON body. Per request and per connection, never per
/// connection lifetime, so long-lived streams are not cut by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Deadline of a request head, from the connection opening or the end of
    /// the previous response (so also the idle keep-alive limit).
    pub header_timeout: Duration,
    /// Deadline of a request body, from its head; capped by the interface's
    /// timeout.
    pub body_timeout: Duration,
    /// Open client connections at most.
    pub max_connections: usize,
    /// Deepest nesting of arrays and objects in a JSON body.
    pub max_json_depth: usize,
    /// Most array items plus object members in a JSON body.
    pub max_json_elements: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_json_depth: 64,
            max_json_elements: 100_000,
        }
    }
}

/// Upper bounds on the limits themselves: past them a value is a typo, and
/// the connection cap sizes a semaphore.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
const MAX_CONNECTIONS: usize = 1 << 20;

/// Who starts the worker processes of a tcp pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerMode {
    /// This ingress starts and supervises them.
    Spawn,
    /// Someone else does (the kubelet, for containers of the pod).
    External,
}

/// The tcp profile's settings.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    pub hub: SocketAddr,
    pub workers: WorkerMode,
    /// The worker program for every group without one of its own.
    pub worker_bin: Option<PathBuf>,
    /// Per-group worker programs.
    pub group_bins: std::collections::BTreeMap<String, PathBuf>,
    pub restart_limit: u32,
    pub restart_window: Duration,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            hub: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: WorkerMode::Spawn,
            worker_bin: None,
            group_bins: Default::default(),
            restart_limit: 5,
            restart_window: Duration::from_secs(60),
        }
    }
}

/// The resolved configuration of one ingress process.
#[derive(Debug, Clone)]
pub struct Config {
    pub pipeline: PathBuf,
    pub listen: SocketAddr,
    pub backend: Option<BackendKind>,
    pub redis: Option<String>,
    pub redis_timeout: Option<Duration>,
    pub redis_pool_size: Option<usize>,
    pub redis_ca_file: Option<PathBuf>,
    pub redis_password_file: Option<PathBuf>,
    pub keys: Option<PathBuf>,
    pub secrets_dir: PathBuf,
    pub ingress_id: String,
    pub drain_grace: Duration,
    pub drain_timeout: Duration,
    /// Threads of the HTTP runtime and of the inline workers' runtime, as
    /// given; [`ThreadCounts::split`] decides the rest.
    pub threads: ThreadCounts,
    pub log_format: LogFormat,
    pub http: HttpLimits,
    /// The listener's certificate and key; `None`: cleartext.
    pub tls: Option<crate::tls::TlsFiles>,
    /// How often the certificate files are checked for a change.
    pub tls_reload_every: Duration,
    /// Used with tcp backends only.
    pub tcp: TcpOptions,
    /// The admin listener (dead letters), loopback, and the file its token
    /// is written to; `None`: off.
    pub admin: Option<(SocketAddr, PathBuf)>,
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

impl Config {
    /// Resolves flags over environment variables over defaults.
    ///
    /// # Errors
    /// A missing pipeline or a value that does not parse, naming the flag.
    pub fn resolve(cli: &Cli, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let pick =
            |flag: &Option<String>, var: &str| flag.clone().or_else(|| env.get(var).cloned());
        let pipeline = cli
            .pipeline
            .clone()
            .or_else(|| env.get(ENV_PIPELINE).map(PathBuf::from))
            .ok_or_else(|| {
                bad(
                    "--pipeline",
                    "required (a StreamPipeline manifest file), or set SLUICE_PIPELINE",
                )
            })?;
        let listen_s = pick(&cli.listen, ENV_LISTEN).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen_s.parse().map_err(|_| {
            bad(
                "--listen",
                format!("`{listen_s}` is not an address like 127.0.0.1:8080"),
            )
        })?;
        let backend = pick(&cli.backend, ENV_BACKEND)
            .map(|s| s.parse::<BackendKind>())
            .transpose()
            .map_err(|e| bad("--backend", e))?;
        let duration =
            |flag: &Option<String>, var: &str, name: &str, default: Duration| match pick(flag, var)
            {
                None => Ok(default),
                Some(s) => sluice_crds::units::parse_duration(&s).map_err(|e| bad(name, e)),
            };
        let threads = ThreadCounts {
            http: count(cli.threads, env, ENV_THREADS, "--threads", MAX_THREADS)?,
            inline: count(
                cli.inline_threads,
                env,
                ENV_INLINE_THREADS,
                "--inline-threads",
                MAX_THREADS,
            )?,
        };
        let redis_timeout = match pick(&cli.redis_timeout, ENV_REDIS_TIMEOUT) {
            None => None,
            Some(s) => Some(
                sluice_crds::units::parse_duration(&s).map_err(|e| bad("--redis-timeout", e))?,
            ),
        };
        let redis_pool_size = match cli.redis_pool_size {
            Some(n) => Some(n),
            None => match env.get(ENV_REDIS_POOL_SIZE) {
                Some(s) => Some(
                    s.parse()
                        .map_err(|_| bad("--redis-pool-size", format!("`{s}` is not a number")))?,
                ),
                None => None,
            },
        };
        if redis_pool_size == Some(0) || redis_timeout == Some(Duration::ZERO) {
            return Err(bad(
                "--redis-pool-size/--redis-timeout",
                "must be above zero",
            ));
        }
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
        let ingress_id = pick(&cli.ingress_id, ENV_INGRESS_ID).unwrap_or_else(default_ingress_id);
        if ingress_id.is_empty()
            || !ingress_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
        {
            return Err(bad("--ingress-id", "use letters, digits, '-', '_' and '.'"));
        }
        let http = resolve_http_limits(cli, env)?;
        let tcp = resolve_tcp(cli, env)?;
        let path = |flag: &Option<PathBuf>, var: &str| {
            flag.clone().or_else(|| env.get(var).map(PathBuf::from))
        };
        let tls = match (
            path(&cli.tls_cert, ENV_TLS_CERT),
            path(&cli.tls_key, ENV_TLS_KEY),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert, key }),
            _ => {
                return Err(bad(
                    "--tls-cert/--tls-key",
                    "set both (a certificate chain and its key) or neither",
                ))
            }
        };
        let admin = match pick(&cli.admin, ENV_ADMIN) {
            None => None,
            Some(s) => {
                let addr: SocketAddr = s.parse().map_err(|_| {
                    bad(
                        "--admin",
                        format!("`{s}` is not an address like 127.0.0.1:9090"),
                    )
                })?;
                if !addr.ip().is_loopback() {
                    return Err(bad(
                        "--admin",
                        format!("{addr}: loopback addresses only (127.0.0.1 or ::1)"),
                    ));
                }
                let file = cli
                    .admin_token_file
                    .clone()
                    .or_else(|| env.get(ENV_ADMIN_TOKEN_FILE).map(PathBuf::from))
                    .ok_or_else(|| {
                        bad(
                            "--admin-token-file",
                            "required with --admin: where the ingress writes the admin token",
                        )
                    })?;
                Some((addr, file))
            }
        };
        Ok(Self {
            admin,
            http,
            tls,
            tcp,
            tls_reload_every: crate::tls::RELOAD_EVERY,
            pipeline,
            listen,
            backend,
            redis: pick(&cli.redis, ENV_REDIS_URL),
            redis_timeout,
            redis_pool_size,
            redis_ca_file: cli
                .redis_ca_file
                .clone()
                .or_else(|| env.get(ENV_REDIS_CA_FILE).map(PathBuf::from)),
            redis_password_file: cli
                .redis_password_file
                .clone()
                .or_else(|| env.get(ENV_REDIS_PASSWORD_FILE).map(PathBuf::from)),
            keys: cli
                .keys
                .clone()
                .or_else(|| env.get(ENV_KEYS_DIR).map(PathBuf::from)),
            secrets_dir: cli
                .secrets_dir
                .clone()
                .or_else(|| env.get(ENV_SECRETS_DIR).map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SECRETS_DIR)),
            ingress_id,
            drain_grace: duration(
                &cli.drain_grace,
                ENV_DRAIN_GRACE,
                "--drain-grace",
                Duration::from_secs(5),
            )?,
            drain_timeout: duration(
                &cli.drain_timeout,
                ENV_DRAIN_TIMEOUT,
                "--drain-timeout",
                Duration::from_secs(20),
            )?,
            threads,
            log_format,
        })
    }

    /// A configuration for tests and embedding: `pipeline` on an ephemeral
    /// loopback port, short drain.
    pub fn for_pipeline(pipeline: impl Into<PathBuf>) -> Self {
        Self {
            pipeline: pipeline.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            backend: None,
            redis: None,
            redis_timeout: None,
            redis_pool_size: None,
            redis_ca_file: None,
            redis_password_file: None,
            keys: None,
            secrets_dir: PathBuf::from(DEFAULT_SECRETS_DIR),
            ingress_id: default_ingress_id(),
            drain_grace: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(10),
            threads: ThreadCounts {
                http: None,
                inline: Some(2),
            },
            log_format: LogFormat::Text,
            http: HttpLimits::default(),
            tls: None,
            tls_reload_every: crate::tls::RELOAD_EVERY,
            tcp: TcpOptions::default(),
            admin: None,
        }
    }
}

/// The tcp profile's settings from flags over variables over defaults.
fn resolve_tcp(cli: &Cli, env: &HashMap<String, String>) -> Result<TcpOptions, ConfigError> {
    let pick = |flag: &Option<String>, var: &str| flag.clone().or_else(|| env.get(var).cloned());
    let mut o = TcpOptions::default();
    if let Some(s) = pick(&cli.hub, ENV_HUB) {
        let addr: SocketAddr = s.parse().map_err(|_| {
            bad(
                "--hub",
                format!("`{s}` is not an address like 127.0.0.1:7311"),
            )
        })?;
        sluice_platform::tcp::require_loopback("--hub", addr).map_err(|e| bad("--hub", e))?;
        o.hub = addr;
    }
    o.workers = match pick(&cli.workers, ENV_WORKERS).as_deref() {
        None | Some("spawn") => WorkerMode::Spawn,
        Some("external") => WorkerMode::External,
        Some(other) => {
            return Err(bad(
                "--workers",
                format!("`{other}`: expected spawn or external"),
            ))
        }
    };
    if o.workers == WorkerMode::External && o.hub.port() == 0 {
        return Err(bad(
            "--hub",
            "--workers external needs a fixed port (workers started elsewhere must find the hub), e.g. --hub 127.0.0.1:7311",
        ));
    }
    let bins = if cli.worker_bin.is_empty() {
        env.get(ENV_WORKER_BIN).cloned().into_iter().collect()
    } else {
        cli.worker_bin.clone()
    };
    for b in bins {
        match b.split_once('=') {
            Some((group, path)) if !group.is_empty() && !path.is_empty() => {
                o.group_bins.insert(group.to_string(), PathBuf::from(path));
            }
            Some(_) => {
                return Err(bad(
                    "--worker-bin",
                    format!("`{b}`: expected PATH or GROUP=PATH"),
                ))
            }
            None => o.worker_bin = Some(PathBuf::from(b)),
        }
    }
    if let Some(n) = cli.restart_limit.or(match env.get(ENV_RESTART_LIMIT) {
        Some(s) => Some(
            s.parse()
                .map_err(|_| bad("--restart-limit", format!("`{s}` is not a number")))?,
        ),
        None => None,
    }) {
        if n == 0 {
            return Err(bad("--restart-limit", "must be at least 1"));
        }
        o.restart_limit = n;
    }
    if let Some(s) = pick(&cli.restart_window, ENV_RESTART_WINDOW) {
        o.restart_window =
            sluice_crds::units::parse_duration(&s).map_err(|e| bad("--restart-window", e))?;
        if o.restart_window.is_zero() || o.restart_window > MAX_TIMEOUT {
            return Err(bad("--restart-window", "between 1ms and 1h"));
        }
    }
    Ok(o)
}

/// A count from its flag, else its variable `var`; `None` when neither is
/// set. Refused unless 1 … `max`, naming the flag.
fn count(
    flag: Option<usize>,
    env: &HashMap<String, String>,
    var: &str,
    name: &str,
    max: usize,
) -> Result<Option<usize>, ConfigError> {
    let n = match flag {
        Some(n) => n,
        None => match env.get(var) {
            None => return Ok(None),
            Some(s) => s
                .parse()
                .map_err(|_| bad(name, format!("`{s}` is not a number")))?,
        },
    };
    if n == 0 || n > max {
        return Err(bad(name, format!("must be 1 … {max}")));
    }
    Ok(Some(n))
}

/// The HTTP limits from flags over variables over [`HttpLimits::default`].
fn resolve_http_limits(
    cli: &Cli,
    env: &HashMap<String, String>,
) -> Result<HttpLimits, ConfigError> {
    let defaults = HttpLimits::default();
    let duration = |flag: &Option<String>, var: &str, name: &str, default: Duration| {
        let d = match flag.clone().or_else(|| env.get(var).cloned()) {
            None => return Ok(default),
            Some(s) => sluice_crds::units::parse_duration(&s).map_err(|e| bad(name, e))?,
        };
        if d.is_zero() || d > MAX_TIMEOUT {
            return Err(bad(
                name,
                format!("must be above zero and at most {MAX_TIMEOUT:?}"),
            ));
        }
        Ok(d)
    };
    let count_or = |flag: Option<usize>, var: &str, name: &str, default: usize, max: usize| {
        count(flag, env, var, name, max).map(|n| n.unwrap_or(default))
    };
    Ok(HttpLimits {
        header_timeout: duration(
            &cli.header_timeout,
            ENV_HEADER_TIMEOUT,
            "--header-timeout",
            defaults.header_timeout,
        )?,
        body_timeout: duration(
            &cli.body_timeout,
            ENV_BODY_TIMEOUT,
            "--body-timeout",
            defaults.body_timeout,
        )?,
        max_connections: count_or(
            cli.max_connections,
            ENV_MAX_CONNECTIONS,
            "--max-connections",
            defaults.max_connections,
            MAX_CONNECTIONS,
        )?,
        max_json_depth: count_or(
            cli.max_json_depth,
            ENV_MAX_JSON_DEPTH,
            "--max-json-depth",
            defaults.max_json_depth,
            // serde_json refuses deeper input itself (its recursion limit).
            127,
        )?,
        max_json_elements: count_or(
            cli.max_json_elements,
            ENV_MAX_JSON_ELEMENTS,
            "--max-json-elements",
            defaults.max_json_elements,
            usize::MAX,
        )?,
    })
}

fn default_ingress_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        })
        .unwrap_or_else(|| "ingress".to_string());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{host}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("sluice-web-ingress").chain(args.iter().copied()))
    }

    #[test]
    fn flags_win_over_environment_over_defaults() {
        let env: HashMap<String, String> = [
            (ENV_PIPELINE.to_string(), "env.yaml".to_string()),
            (ENV_LISTEN.to_string(), "127.0.0.1:9999".to_string()),
        ]
        .into();
        let c = Config::resolve(&cli(&["--listen", "127.0.0.1:7000"]), &env).unwrap();
        assert_eq!(c.pipeline, PathBuf::from("env.yaml"));
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.drain_grace, Duration::from_secs(5));
        let c = Config::resolve(&cli(&["--pipeline", "p.yaml"]), &HashMap::new()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn tcp_settings_resolve_and_bad_ones_name_their_flag() {
        let none = HashMap::new();
        let c = Config::resolve(&cli(&["--pipeline", "p"]), &none).unwrap();
        assert_eq!(c.tcp.workers, WorkerMode::Spawn);
        assert_eq!(c.tcp.hub.to_string(), "127.0.0.1:0");
        assert_eq!(
            (c.tcp.restart_limit, c.tcp.restart_window),
            (5, Duration::from_secs(60))
        );
        let c = Config::resolve(
            &cli(&[
                "--pipeline",
                "p",
                "--workers",
                "external",
                "--hub",
                "127.0.0.1:7311",
                "--worker-bin",
                "/opt/w",
                "--worker-bin",
                "io=/opt/io",
                "--restart-limit",
                "2",
                "--restart-window",
                "10s",
            ]),
            &none,
        )
        .unwrap();
        assert_eq!(c.tcp.workers, WorkerMode::External);
        assert_eq!(c.tcp.worker_bin, Some(PathBuf::from("/opt/w")));
        assert_eq!(c.tcp.group_bins.get("io"), Some(&PathBuf::from("/opt/io")));
        assert_eq!(
            (c.tcp.restart_limit, c.tcp.restart_window),
            (2, Duration::from_secs(10))
        );
        let env: HashMap<String, String> = [(ENV_HUB.to_string(), "[::1]:7311".to_string())].into();
        let c = Config::resolve(&cli(&["--pipeline", "p"]), &env).unwrap();
        assert_eq!(c.tcp.hub.to_string(), "[::1]:7311");
        assert_eq!(c.admin, None, "off by default");
        let env: HashMap<String, String> = [
            (ENV_ADMIN.to_string(), "127.0.0.1:9090".to_string()),
            (ENV_ADMIN_TOKEN_FILE.to_string(), "/run/t".to_string()),
        ]
        .into();
        let c = Config::resolve(&cli(&["--pipeline", "p"]), &env).unwrap();
        assert_eq!(
            c.admin.map(|(a, f)| (a.to_string(), f)),
            Some(("127.0.0.1:9090".into(), PathBuf::from("/run/t")))
        );

        for (args, flag, says) in [
            (&["--hub", "0.0.0.0:7311"][..], "--hub", "loopback"),
            (&["--hub", "here"][..], "--hub", "not an address"),
            (&["--admin", "0.0.0.0:9090"][..], "--admin", "loopback"),
            (&["--admin", "here"][..], "--admin", "not an address"),
            (
                &["--admin", "127.0.0.1:9090"][..],
                "--admin-token-file",
                "required",
            ),
            (
                &["--workers", "some"][..],
                "--workers",
                "expected spawn or external",
            ),
            (&["--workers", "external"][..], "--hub", "fixed port"),
            (&["--worker-bin", "io="][..], "--worker-bin", "GROUP=PATH"),
            (
                &["--restart-limit", "0"][..],
                "--restart-limit",
                "at least 1",
            ),
            (
                &["--restart-window", "0s"][..],
                "--restart-window",
                "between",
            ),
        ] {
            let mut all = vec!["--pipeline", "p"];
            all.extend_from_slice(args);
            let e = Config::resolve(&cli(&all), &none).unwrap_err();
            assert_eq!(e.name, flag, "{args:?}: {e}");
            assert!(e.message.contains(says), "{args:?}: {e}");
        }
    }

    #[test]
    fn bad_values_name_their_flag() {
        let e = Config::resolve(&cli(&[]), &HashMap::new()).unwrap_err();
        assert_eq!(e.name, "--pipeline");
        let e = Config::resolve(
            &cli(&["--pipeline", "p", "--listen", "nowhere"]),
            &HashMap::new(),
        )
        .unwrap_err();
        assert_eq!(e.name, "--listen");
        let e = Config::resolve(
            &cli(&["--pipeline", "p", "--backend", "kafka"]),
            &HashMap::new(),
        )
        .unwrap_err();
        assert_eq!(e.name, "--backend");
        let e = Config::resolve(
            &cli(&["--pipeline", "p", "--drain-grace", "soon"]),
            &HashMap::new(),
        )
        .unwrap_err();
        assert_eq!(e.name, "--drain-grace");
    }

    #[test]
    fn thread_counts_come_from_flags_over_variables_and_are_bounded() {
        let c = Config::resolve(&cli(&["--pipeline", "p"]), &HashMap::new()).unwrap();
        assert_eq!(c.threads, ThreadCounts::default());
        let env: HashMap<String, String> = [
            (ENV_THREADS.to_string(), "3".to_string()),
            (ENV_INLINE_THREADS.to_string(), "5".to_string()),
        ]
        .into();
        let c = Config::resolve(&cli(&["--pipeline", "p", "--threads", "2"]), &env).unwrap();
        assert_eq!(
            c.threads,
            ThreadCounts {
                http: Some(2),
                inline: Some(5)
            }
        );
        for flag in ["--threads", "--inline-threads"] {
            for value in ["0", "257"] {
                let e = Config::resolve(&cli(&["--pipeline", "p", flag, value]), &HashMap::new())
                    .unwrap_err();
                assert_eq!(e.name, flag, "{value}");
            }
        }
        let env: HashMap<String, String> =
            [(ENV_INLINE_THREADS.to_string(), "many".to_string())].into();
        let e = Config::resolve(&cli(&["--pipeline", "p"]), &env).unwrap_err();
        assert_eq!(e.name, "--inline-threads");
    }

    #[test]
    fn http_limits_have_defaults_and_refuse_zero_or_huge_values() {
        let c = Config::resolve(&cli(&["--pipeline", "p"]), &HashMap::new()).unwrap();
        assert_eq!(c.http, HttpLimits::default());
        let env: HashMap<String, String> = [
            (ENV_BODY_TIMEOUT.to_string(), "2s".to_string()),
            (ENV_MAX_CONNECTIONS.to_string(), "10".to_string()),
        ]
        .into();
        let c = Config::resolve(&cli(&["--pipeline", "p", "--max-json-depth", "8"]), &env).unwrap();
        assert_eq!(c.http.body_timeout, Duration::from_secs(2));
        assert_eq!(c.http.max_connections, 10);
        assert_eq!(c.http.max_json_depth, 8);
        for (flag, value) in [
            ("--header-timeout", "0s"),
            ("--body-timeout", "48h"),
            ("--max-connections", "0"),
            ("--max-json-depth", "500"),
            ("--max-json-elements", "0"),
        ] {
            let e = Config::resolve(&cli(&["--pipeline", "p", flag, value]), &HashMap::new())
                .unwrap_err();
            assert_eq!(e.name, flag);
        }
    }
}
