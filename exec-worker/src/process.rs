//! The `sluice-exec-worker` process: one worker group of one pipeline,
//! consuming its Redis stream (redis backends) or the queue its ingress
//! holds (tcp backends, over loopback), with health and metrics on an admin
//! port.
//!
//! ```text
//! flags/env → manifest → plan → key ring (watched dir, or read once from stdin)
//!           → Redis / the ingress's hub → executor → worker loop
//!                                          admin: /healthz /readyz /metrics
//! SIGTERM → readiness fails → stop reading → finish + hand off in-flight → exit 0
//! ```
//!
//! A custom worker image calls [`run`] (or [`main_with`] from its own
//! runtime) with its own registry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use clap::Parser;
use prometheus_client::registry::Registry as Metrics;
use sluice_crds::{BackendKind, GroupRole};
use sluice_platform::keyring::Zeroizing;
use sluice_platform::redis::{RedisBackend, RedisConfig};
use sluice_platform::tcp::{Limits, TcpBackend, TcpConfig};
use sluice_platform::{Kv, Queue, SharedKeyRing};
use tokio_util::sync::CancellationToken;

use crate::executor::Executor;
use crate::parts::RuntimeParts;
use crate::registry::Registry;
use crate::worker::{Worker, WorkerConfig};

pub const ENV_PIPELINE: &str = "SLUICE_PIPELINE";
pub const ENV_GROUP: &str = "SLUICE_GROUP";
pub const ENV_REDIS_URL: &str = "SLUICE_REDIS_URL";
pub const ENV_KEYS_DIR: &str = "SLUICE_KEYS_DIR";
pub const ENV_REDIS_TIMEOUT: &str = "SLUICE_REDIS_TIMEOUT";
pub const ENV_REDIS_CA_FILE: &str = "SLUICE_REDIS_CA_FILE";
pub const ENV_REDIS_PASSWORD_FILE: &str = "SLUICE_REDIS_PASSWORD_FILE";
pub const ENV_REDIS_POOL_SIZE: &str = "SLUICE_REDIS_POOL_SIZE";
pub const ENV_ADMIN: &str = "SLUICE_ADMIN";
pub const ENV_CONCURRENCY: &str = "SLUICE_CONCURRENCY";
pub const ENV_SECRETS_DIR: &str = "SLUICE_SECRETS_DIR";
pub const ENV_DRAIN_TIMEOUT: &str = "SLUICE_DRAIN_TIMEOUT";
pub const ENV_LOG_FORMAT: &str = "SLUICE_LOG_FORMAT";
pub const ENV_BACKEND: &str = "SLUICE_BACKEND";
pub const ENV_HUB: &str = "SLUICE_HUB";
pub const ENV_THREADS: &str = "SLUICE_THREADS";

/// Most runtime threads `--threads` takes.
const MAX_THREADS: usize = 256;

/// The most bytes of key files read from stdin.
const MAX_STDIN_KEYS: usize = 1 << 20;

/// Runs one worker group of a StreamPipeline, consuming its Redis stream
/// (redis backends) or its ingress's queue over loopback (tcp backends).
#[derive(Debug, Parser)]
#[command(
    name = "sluice-exec-worker",
    version,
    about = "Runs one worker group of a StreamPipeline, consuming its Redis stream (redis backends) or its ingress's queue over loopback (tcp backends)",
    long_about = None
)]
pub struct Cli {
    /// StreamPipeline manifest (the same file the ingress serves) [env: SLUICE_PIPELINE]
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// Override the manifest's backends; a separate worker needs redis or
    /// tcp (memory backends run the whole pipeline inside sluice-web-ingress)
    /// [env: SLUICE_BACKEND]
    #[arg(long, value_name = "redis|tcp")]
    pub backend: Option<String>,
    /// tcp backends: the ingress's hub, a loopback address such as
    /// 127.0.0.1:7311 [env: SLUICE_HUB]
    #[arg(long, value_name = "ADDR")]
    pub hub: Option<String>,
    /// Read the key files once from standard input (a JSON object of file
    /// name to content, as the ingress hands them to the workers it starts)
    /// instead of --keys
    #[arg(long, conflicts_with = "keys")]
    pub keys_stdin: bool,
    /// Drain and exit when the process that started this one is gone (the
    /// ingress supervising its tcp workers sets it)
    #[arg(long)]
    pub exit_with_parent: bool,

    /// Worker group to run [env: SLUICE_GROUP]
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
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
    /// Key directory: a ring (one base64 key file per kid) or this group's derived keys (`<kid>.<request|reply>.<group>`), plus a `current` file [env: SLUICE_KEYS_DIR]
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
    /// Address of /healthz, /readyz and /metrics [env: SLUICE_ADMIN] [default: 127.0.0.1:9090]
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Envelopes worked on at once (overrides the group's `concurrency`) [env: SLUICE_CONCURRENCY]
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Runtime threads running the nodes and the queue client [env:
    /// SLUICE_THREADS] [default: 1 with --hub (tcp backends: the ingress and
    /// every group share the machine, and one thread is spared the
    /// cross-thread wake-ups), else one per CPU]. Raise it for a tcp group
    /// whose nodes compute: a node that computes without awaiting holds its
    /// thread, and with one thread the lease renewals wait for it (heavy
    /// work belongs in `spawn_blocking`). Only the binary's own runtime: a custom worker
    /// that calls `main_with` from its own runtime keeps that one's
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Where Secrets referenced by nodes are mounted, as <DIR>/<name>/<key> [env: SLUICE_SECRETS_DIR] [default: /etc/sluice/secrets]
    #[arg(long, value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// On SIGTERM, wait at most this long for in-flight work [env: SLUICE_DRAIN_TIMEOUT] [default: 20s]
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// Log format: text or json [env: SLUICE_LOG_FORMAT] [default: text]; level from RUST_LOG (default info)
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<String>,
}

/// The resolved configuration of one worker process.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub pipeline: PathBuf,
    /// `--backend`: overrides the manifest's.
    pub backend: Option<BackendKind>,
    pub group: String,
    /// Redis backends: the URL.
    pub redis: Option<String>,
    /// Tcp backends: the hub's address.
    pub hub: Option<SocketAddr>,
    pub redis_timeout: Option<Duration>,
    pub redis_pool_size: Option<usize>,
    pub redis_ca_file: Option<PathBuf>,
    pub redis_password_file: Option<PathBuf>,
    pub keys: KeySource,
    pub admin: SocketAddr,
    pub concurrency: Option<usize>,
    /// Runtime threads of the process (see `--threads`).
    pub threads: usize,
    pub secrets_dir: PathBuf,
    pub drain_timeout: Duration,
    pub json_logs: bool,
    /// Drain when the parent process is gone.
    pub exit_with_parent: bool,
}

/// Where the key ring comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A directory, watched for rotation.
    Dir(PathBuf),
    /// Read once from standard input (a worker the ingress started).
    Stdin,
}

/// Why the worker could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{flag}: {message}")]
    Config { flag: &'static str, message: String },
    #[error(transparent)]
    Manifest(#[from] sluice_crds::ManifestError),
    #[error("key ring: {0}")]
    Keys(#[from] sluice_platform::KeyRingError),
    #[error("{0}")]
    Nodes(#[from] crate::node::ConfigError),
    #[error("redis: {0}")]
    Redis(#[from] sluice_platform::BackendError),
    #[error("--redis: {0}")]
    RedisUrl(#[from] sluice_platform::redis::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn cfg_err(flag: &'static str, message: impl Into<String>) -> ProcessError {
    ProcessError::Config {
        flag,
        message: message.into(),
    }
}

impl ProcessConfig {
    /// Flags over environment over defaults.
    ///
    /// # Errors
    /// A missing required setting or a value that does not parse, naming the flag.
    pub fn resolve(cli: &Cli, env: &HashMap<String, String>) -> Result<Self, ProcessError> {
        let pick =
            |flag: &Option<String>, var: &str| flag.clone().or_else(|| env.get(var).cloned());
        let path = |flag: &Option<PathBuf>, var: &str| {
            flag.clone().or_else(|| env.get(var).map(PathBuf::from))
        };
        let pipeline = path(&cli.pipeline, ENV_PIPELINE)
            .ok_or_else(|| cfg_err("--pipeline", "required, or set SLUICE_PIPELINE"))?;
        let group = pick(&cli.group, ENV_GROUP)
            .ok_or_else(|| cfg_err("--group", "required, or set SLUICE_GROUP"))?;
        let backend = pick(&cli.backend, ENV_BACKEND)
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse::<BackendKind>())
            .transpose()
            .map_err(|e| cfg_err("--backend", e))?;
        let redis = pick(&cli.redis, ENV_REDIS_URL);
        let hub = match pick(&cli.hub, ENV_HUB) {
            None => None,
            Some(s) => {
                let addr: SocketAddr = s.parse().map_err(|_| {
                    cfg_err(
                        "--hub",
                        format!("`{s}` is not an address like 127.0.0.1:7311"),
                    )
                })?;
                sluice_platform::tcp::require_loopback("--hub", addr)
                    .map_err(|e| cfg_err("--hub", e))?;
                Some(addr)
            }
        };
        let keys = match (cli.keys_stdin, path(&cli.keys, ENV_KEYS_DIR)) {
            (true, _) => KeySource::Stdin,
            (false, Some(dir)) => KeySource::Dir(dir),
            (false, None) => return Err(cfg_err(
                "--keys",
                "required: the key ring directory (create one with `sluice-web-ingress keygen DIR`), or set SLUICE_KEYS_DIR",
            )),
        };
        let admin_s = pick(&cli.admin, ENV_ADMIN).unwrap_or_else(|| "127.0.0.1:9090".into());
        let admin = admin_s.parse().map_err(|_| {
            cfg_err(
                "--admin",
                format!("`{admin_s}` is not an address like 127.0.0.1:9090"),
            )
        })?;
        // A count from its flag, else its variable.
        let count = |flag: Option<usize>, var: &str, name: &'static str| match flag {
            Some(n) => Ok(Some(n)),
            None => env
                .get(var)
                .map(|s| {
                    s.parse::<usize>()
                        .map_err(|_| cfg_err(name, format!("`{s}` is not a number")))
                })
                .transpose(),
        };
        let concurrency = count(cli.concurrency, ENV_CONCURRENCY, "--concurrency")?;
        if concurrency == Some(0) {
            return Err(cfg_err("--concurrency", "must be at least 1"));
        }
        let threads = match count(cli.threads, ENV_THREADS, "--threads")? {
            Some(0) => return Err(cfg_err("--threads", "must be at least 1")),
            Some(n) if n > MAX_THREADS => {
                return Err(cfg_err("--threads", format!("at most {MAX_THREADS}")))
            }
            Some(n) => n,
            None if hub.is_some() => 1,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let drain_timeout = match pick(&cli.drain_timeout, ENV_DRAIN_TIMEOUT) {
            None => Duration::from_secs(20),
            Some(s) => {
                sluice_crds::units::parse_duration(&s).map_err(|e| cfg_err("--drain-timeout", e))?
            }
        };
        let redis_timeout = match pick(&cli.redis_timeout, ENV_REDIS_TIMEOUT) {
            None => None,
            Some(s) => Some(
                sluice_crds::units::parse_duration(&s)
                    .map_err(|e| cfg_err("--redis-timeout", e))?,
            ),
        };
        let redis_pool_size = count(
            cli.redis_pool_size,
            ENV_REDIS_POOL_SIZE,
            "--redis-pool-size",
        )?;
        if redis_pool_size == Some(0) || redis_timeout == Some(Duration::ZERO) {
            return Err(cfg_err(
                "--redis-pool-size",
                "--redis-pool-size and --redis-timeout must be above zero",
            ));
        }
        let json_logs = match pick(&cli.log_format, ENV_LOG_FORMAT).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(cfg_err(
                    "--log-format",
                    format!("`{other}`: expected text or json"),
                ))
            }
        };
        Ok(Self {
            pipeline,
            backend,
            group,
            redis,
            hub,
            redis_timeout,
            redis_pool_size,
            redis_ca_file: path(&cli.redis_ca_file, ENV_REDIS_CA_FILE),
            redis_password_file: path(&cli.redis_password_file, ENV_REDIS_PASSWORD_FILE),
            keys,
            admin,
            concurrency,
            threads,
            secrets_dir: path(&cli.secrets_dir, ENV_SECRETS_DIR)
                .unwrap_or_else(|| PathBuf::from("/etc/sluice/secrets")),
            drain_timeout,
            json_logs,
            exit_with_parent: cli.exit_with_parent,
        })
    }
}

struct Admin {
    ready: AtomicBool,
    metrics: Metrics,
}

fn admin_router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(a): State<Arc<Admin>>| async move {
                if a.ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "draining")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(a): State<Arc<Admin>>| async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    sluice_platform::metrics::render(&a.metrics),
                )
                    .into_response()
            }),
        )
        .with_state(admin)
}

/// A started worker process.
pub struct Running {
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops reading and drains; [`Running::wait`] returns when done.
    pub fn begin_drain(&self) {
        self.shutdown.cancel();
    }

    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

fn consumer_name(group: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "worker".to_string()
    } else {
        host
    };
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{group}-{host}-{}-{suffix}", std::process::id())
}

/// Starts the worker for `cfg` with the nodes of `nodes`.
///
/// # Errors
/// See [`ProcessError`]; each names what to fix.
pub async fn start(cfg: ProcessConfig, nodes: Registry) -> Result<Running, ProcessError> {
    let (_, plan) = sluice_crds::load_manifest(&cfg.pipeline)?;
    let backend = cfg.backend.unwrap_or(plan.backend);
    if backend == BackendKind::Memory {
        return Err(cfg_err(
            "--backend",
            format!(
                "{} uses memory backends, which run the whole pipeline inside \
                 sluice-web-ingress; a separate worker needs redis or tcp backends \
                 (`backends: {{queue: redis, kv: redis, reply: redis}}` in the manifest, or --backend redis)",
                cfg.pipeline.display()
            ),
        ));
    }
    let plan = Arc::new(plan);
    match plan.groups.get(&cfg.group) {
        None => {
            return Err(cfg_err(
                "--group",
                format!(
                    "`{}` is not a group of {}; worker groups: {}",
                    cfg.group,
                    plan.id,
                    plan.worker_groups()
                        .map(|g| g.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
        Some(g) if g.role == GroupRole::Ingress => {
            return Err(cfg_err(
                "--group",
                format!(
                    "`{}` is the ingress group; it runs in sluice-web-ingress",
                    cfg.group
                ),
            ))
        }
        Some(_) => {}
    }
    let background = CancellationToken::new();
    let ring = match &cfg.keys {
        KeySource::Dir(dir) => {
            let ring = SharedKeyRing::from_dir(dir)?;
            ring.watch(Duration::from_secs(2), background.clone());
            ring
        }
        KeySource::Stdin => SharedKeyRing::fixed(keys_from_stdin()?),
    };
    let (queue, guard, backend_display) = match backend {
        BackendKind::Tcp => {
            let hub = cfg.hub.ok_or_else(|| {
                cfg_err(
                    "--hub",
                    "required with tcp backends: the ingress's hub address, or set SLUICE_HUB",
                )
            })?;
            let max_entry =
                sluice_platform::signing::max_entry_bytes(plan.security.max_payload_bytes as usize);
            let tcp = TcpBackend::new(
                TcpConfig {
                    hub,
                    pipeline: sluice_platform::Keys::new(&plan.id.namespace, &plan.id.name)
                        .pipeline()
                        .to_string(),
                    group: cfg.group.clone(),
                    limits: Limits::for_entries(max_entry),
                    timeout: Duration::from_secs(5),
                },
                ring.clone(),
            )
            .map_err(|e| cfg_err("--hub", e))?;
            let queue: Arc<dyn Queue> = tcp;
            // The hub claims each entry's nonce as it hands it out: what
            // this worker reads has passed the replay guard.
            (queue, None, format!("hub {hub}"))
        }
        _ => {
            let url = cfg.redis.as_deref().ok_or_else(|| {
                cfg_err(
                    "--redis",
                    "required with redis backends (workers talk to the ingress through Redis), or set SLUICE_REDIS_URL",
                )
            })?;
            // Lazy: a worker starts while Redis is down and finds it when it returns.
            let redis_cfg = RedisConfig::from_url(url)?
                .with_overrides(cfg.redis_timeout, cfg.redis_pool_size)
                .with_ca_file(cfg.redis_ca_file.as_deref())?
                .with_password_file(cfg.redis_password_file.as_deref())?;
            let shown = format!("redis {redis_cfg}");
            let redis = RedisBackend::connect_lazy(redis_cfg)?;
            let queue: Arc<dyn Queue> = redis.clone();
            let guard: Arc<dyn Kv> = redis;
            (queue, Some(guard), shown)
        }
    };

    let mut metrics = Metrics::default();
    let mut parts = RuntimeParts::new(&plan, &cfg.group, ring.clone(), guard.clone(), &mut metrics);
    // A tcp worker's hub has no pause key.
    if let Some(redis) = guard {
        parts.watch_pause(redis, background.clone());
    }
    let executor = Executor::build(
        plan.clone(),
        &cfg.group,
        &nodes,
        &cfg.secrets_dir,
        parts.durations.clone(),
    )?;
    let mut wcfg = WorkerConfig::from_plan(&plan, &cfg.group, consumer_name(&cfg.group));
    if let Some(c) = cfg.concurrency {
        wcfg.concurrency = c;
    }
    let consumer = wcfg.consumer.clone();
    let concurrency = wcfg.concurrency;
    let worker = Worker::new(wcfg, executor, queue, &parts);

    let admin = Arc::new(Admin {
        ready: true.into(),
        metrics,
    });
    let listener = sluice_platform::listen::bind(cfg.admin)
        .await
        .map_err(|source| ProcessError::Listen {
            addr: cfg.admin,
            source,
        })?;
    let admin_addr = listener
        .local_addr()
        .map_err(|source| ProcessError::Listen {
            addr: cfg.admin,
            source,
        })?;
    let admin_stop = background.clone();
    let app = admin_router(admin.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(admin_stop.cancelled_owned())
            .await;
    });

    let r = ring.get();
    let missing = crate::parts::missing_keys(&r, &parts.keys, &plan.key_needs(&cfg.group));
    if !missing.is_empty() {
        tracing::warn!(
            missing = ?missing,
            "the key directory lacks keys this group needs; envelopes needing them are refused or dead-lettered"
        );
    }
    tracing::info!(
        pipeline = %plan.id,
        group = %cfg.group,
        consumer = %consumer,
        concurrency,
        lease = ?plan.limits.lease,
        backend = %backend_display,
        admin = %admin_addr,
        signing_kid = r.current(),
        kids = ?r.kids().collect::<Vec<_>>(),
        keys = r.layout_name(),
        traces = sluice_platform::telemetry::summary(),
        "sluice-exec-worker started"
    );

    let shutdown = CancellationToken::new();
    let run_token = CancellationToken::new();
    let drain_timeout = cfg.drain_timeout;
    let done = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let run = tokio::spawn(worker.run(run_token.clone()));
            shutdown.cancelled().await;
            admin.ready.store(false, Ordering::SeqCst);
            tracing::info!("draining: no new entries; finishing in-flight work");
            run_token.cancel();
            if tokio::time::timeout(drain_timeout, run).await.is_err() {
                tracing::warn!(
                    "drain budget exhausted; unfinished entries will be reclaimed by other workers"
                );
            }
            background.cancel();
            tracing::info!("drained");
        })
    };
    Ok(Running {
        admin_addr,
        shutdown,
        done,
    })
}

/// The key files on standard input: a JSON object of file name to content,
/// at most 1 MiB, read to its end once. Nothing of it is ever printed.
fn keys_from_stdin() -> Result<sluice_platform::KeyRing, ProcessError> {
    keys_from(std::io::stdin())
}

/// The key files in `input` (see [`keys_from_stdin`]). The text is read
/// into one buffer of the most it may take, so no buffer that grew leaves
/// a copy behind, and wiped when dropped; the contents are read in place
/// from it (an escaped string, which the ingress never writes, would need
/// a copy and is refused).
fn keys_from(input: impl std::io::Read) -> Result<sluice_platform::KeyRing, ProcessError> {
    let text = read_keys_text(input)?;
    let files: std::collections::BTreeMap<String, &str> =
        serde_json::from_str(&text).map_err(|_| {
            keys_err("standard input is not a JSON object of key file names to contents")
        })?;
    Ok(sluice_platform::KeyRing::from_files(&files)?)
}

fn read_keys_text(input: impl std::io::Read) -> Result<Zeroizing<String>, ProcessError> {
    use std::io::Read;
    let mut text = Zeroizing::new(String::with_capacity(MAX_STDIN_KEYS + 1));
    input
        .take(MAX_STDIN_KEYS as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|_| keys_err("standard input is not readable UTF-8"))?;
    if text.len() > MAX_STDIN_KEYS {
        return Err(keys_err("more than 1 MiB of key files on standard input"));
    }
    Ok(text)
}

fn keys_err(message: &str) -> ProcessError {
    cfg_err("--keys-stdin", message.to_string())
}

/// The whole binary: parse flags, build the runtime with `--threads`
/// threads, start, drain on SIGTERM/SIGINT. A custom worker image's plain
/// (not async) `main` calls this with its registry.
pub fn run(nodes: Registry) -> std::process::ExitCode {
    // Taken first: a parent that dies while this process starts is seen.
    let parent = std::os::unix::process::parent_id();
    let cfg = match parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads)
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => rt.block_on(serve(parent, cfg, nodes)),
        Err(e) => {
            eprintln!("sluice-exec-worker: cannot start the runtime: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// [`run`] inside a runtime the caller built (an async `main`); `--threads`
/// is then the caller's choice, not this function's.
pub async fn main_with(nodes: Registry) -> std::process::ExitCode {
    let parent = std::os::unix::process::parent_id();
    match parse() {
        Ok(cfg) => serve(parent, cfg, nodes).await,
        Err(code) => code,
    }
}

/// The flags and environment, or the exit code of a refusal (printed).
fn parse() -> Result<ProcessConfig, std::process::ExitCode> {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    ProcessConfig::resolve(&cli, &env).map_err(|e| {
        eprintln!("sluice-exec-worker: {e}");
        std::process::ExitCode::from(2)
    })
}

async fn serve(parent: u32, cfg: ProcessConfig, nodes: Registry) -> std::process::ExitCode {
    let telemetry = sluice_platform::telemetry::init(
        "sluice-exec-worker",
        env!("CARGO_PKG_VERSION"),
        cfg.json_logs,
    );
    let exit_with_parent = cfg.exit_with_parent;
    let running = match start(cfg, nodes).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice-exec-worker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tokio::select! {
        r = shutdown_signal() => if let Err(e) = r {
            eprintln!("sluice-exec-worker: {e}");
        },
        _ = parent_gone(parent), if exit_with_parent => {
            tracing::warn!("the process that started this worker is gone; draining");
        }
    }
    running.begin_drain();
    running.wait().await;
    telemetry.shutdown().await;
    std::process::ExitCode::SUCCESS
}

/// Returns once this process's parent changed (it exited and the process
/// was handed to a reaper).
async fn parent_gone(parent: u32) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}

async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        r = tokio::signal::ctrl_c() => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_on_standard_input_are_read_in_place_from_one_buffer_that_never_grew() {
        use sluice_platform::keyring::{derived_files, files_json};
        use sluice_platform::{KeyRing, Kind};
        let raw = std::collections::BTreeMap::from([("k1".to_string(), vec![3u8; 32])]);
        let ring = KeyRing::from_raw("k1", &raw).unwrap();
        let handover =
            files_json(&derived_files(&ring, "ns/p", &[(Kind::Request, "work")]).unwrap());
        let text = read_keys_text(handover.as_bytes()).unwrap();
        assert_eq!(text.as_str(), handover.as_str());
        assert_eq!(
            text.capacity(),
            MAX_STDIN_KEYS + 1,
            "read into the one buffer made for it"
        );
        let read = keys_from(handover.as_bytes()).unwrap();
        assert_eq!(read.current(), "k1");
        assert!(read.holds(Kind::Request, "ns/p", "work"));
        // Escapes would need a copy out of the buffer: refused (the ingress
        // never writes one).
        let escaped = handover.replacen("\"current\":\"k1\"", "\"current\":\"k\\u0031\"", 1);
        assert_ne!(escaped, *handover, "the test edits the handover");
        assert!(keys_from(escaped.as_bytes()).is_err());
        let too_much = vec![b' '; MAX_STDIN_KEYS + 1];
        let e = read_keys_text(too_much.as_slice()).unwrap_err().to_string();
        assert!(e.contains("more than 1 MiB"), "{e}");
    }

    fn resolve(args: &[&str], env: &[(&str, &str)]) -> Result<ProcessConfig, ProcessError> {
        let base = [
            "sluice-exec-worker",
            "--pipeline",
            "p.yaml",
            "--group",
            "work",
        ];
        let cli = Cli::try_parse_from(base.iter().chain(args)).expect("flags parse");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProcessConfig::resolve(&cli, &env)
    }

    #[test]
    fn a_tcp_worker_runs_one_thread_unless_told_otherwise() {
        let tcp = ["--keys-stdin", "--hub", "127.0.0.1:7311"];
        assert_eq!(resolve(&tcp, &[]).unwrap().threads, 1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(resolve(&["--keys-stdin"], &[]).unwrap().threads, cores);
        assert_eq!(
            resolve(&tcp, &[(ENV_THREADS, "3")]).unwrap().threads,
            3,
            "the variable"
        );
        let flag = [&tcp[..], &["--threads", "2"]].concat();
        assert_eq!(
            resolve(&flag, &[(ENV_THREADS, "3")]).unwrap().threads,
            2,
            "the flag over the variable"
        );
    }

    #[test]
    fn a_thread_count_out_of_range_is_refused_naming_the_flag() {
        for (args, env, why) in [
            (&["--keys-stdin", "--threads", "0"][..], None, "at least 1"),
            (
                &["--keys-stdin", "--threads", "100000"],
                None,
                "at most 256",
            ),
            (&["--keys-stdin"], Some("many"), "`many` is not a number"),
        ] {
            let env: Vec<(&str, &str)> = env.map(|v| (ENV_THREADS, v)).into_iter().collect();
            let e = resolve(args, &env).unwrap_err().to_string();
            assert!(e.starts_with("--threads: ") && e.contains(why), "{e}");
        }
    }
}
