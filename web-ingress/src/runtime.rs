//! Start-up, background tasks and drain of one ingress process.
//!
//! ```text
//! start: manifest → plan → key ring → adapters → executors → inline workers
//!        (memory) or the tcp hub and its worker processes (tcp)
//!        → reply listener → backlog sampler → startup summary → HTTP listener
//! drain: readiness fails → grace → stop accepting → in-flight answered (≤ budget)
//!        → workers drain (inline, or the tcp children) → background tasks stop
//! ```
//!
//! A start that fails after workers or background tasks began tells them
//! to stop as it returns its error (they end soon after).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use foldhash::HashMap;
use parking_lot::RwLock;
use prometheus_client::registry::Registry;
use sluice_crds::{BackendKind, Plan};
use sluice_exec_worker::{
    missing_keys, Executor, Registry as NodeRegistry, RuntimeParts, Worker, WorkerConfig,
};
use sluice_platform::memory::{MemoryKv, MemoryStreams};
use sluice_platform::redis::{RedisBackend, RedisConfig};
use sluice_platform::{Format, Kv, Queue, Rejection, ReplyChannel, SharedKeyRing, Verifier};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::body::BodyBudget;
use crate::config::Config;
use crate::listener::ConnectionMetrics;
use crate::metrics::{GroupLabel, IngressMetrics};
use crate::replay_window::ReplayWindow;
use crate::server::{router, AppState, Backlog};
use crate::waiters::{Delivered, ReplySenders};

/// How often the reply stream's expiry is refreshed, and the expiry itself:
/// a dead instance's stream disappears within `REPLY_TTL`.
/// Short, so a Redis restart without persistence costs at most this long
/// of dropped replies before the stream exists again.
const REPLY_REFRESH: Duration = Duration::from_secs(2);
const REPLY_TTL: Duration = Duration::from_secs(30);
/// How often queue backlogs are sampled for admission: in process it is
/// free; on Redis it is one XLEN and MEMORY USAGE per group per period.
const SAMPLE_MEMORY: Duration = Duration::from_millis(100);
const SAMPLE_REDIS: Duration = Duration::from_millis(250);

/// Why the ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Manifest(#[from] sluice_crds::ManifestError),
    #[error("key ring: {0}")]
    Keys(#[from] sluice_platform::KeyRingError),
    #[error("{0}")]
    Nodes(#[from] sluice_exec_worker::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--tls-cert/--tls-key: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot start the worker threads: {0}")]
    Threads(#[source] std::io::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("--redis: {0}")]
    RedisUrl(#[from] sluice_platform::redis::ConfigError),
    #[error("redis: {0}")]
    Redis(#[from] sluice_platform::BackendError),
    #[error(transparent)]
    Tcp(#[from] crate::tcp_workers::TcpStartError),
}

/// A running ingress.
pub struct Ingress {
    addr: SocketAddr,
    state: Arc<AppState>,
    drain: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Ingress {
    /// The bound public address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waiters currently registered (tests check it returns to 0).
    pub fn waiters(&self) -> usize {
        self.state.waiters.len()
    }

    /// Shared state (tests inspect metrics and the plan).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Starts the drain sequence; [`Ingress::wait`] returns when it is done.
    pub fn begin_drain(&self) {
        self.drain.cancel();
    }

    /// Waits until the process has drained.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// The adapters of one profile.
struct Ports {
    queue: Arc<dyn Queue>,
    replies: Arc<dyn ReplyChannel>,
    /// The replay guard's store: none in the memory profile, whose queues
    /// nothing outside this process can write.
    guard: Option<Arc<dyn Kv>>,
    /// Idempotency keys.
    store: Arc<dyn Kv>,
    sample_every: Duration,
}

struct Inline {
    cancel: CancellationToken,
    done: tokio::sync::oneshot::Receiver<()>,
    /// The runtime's threads; zero: no runtime.
    threads: usize,
}

/// Starts an ingress for `config`.
///
/// # Errors
/// See [`StartError`]; each names what to fix.
pub async fn start(config: Config) -> Result<Ingress, StartError> {
    start_with(config, NodeRegistry::builtin()).await
}

/// The pipeline `config` names, read and checked: what [`start_planned`]
/// runs.
///
/// # Errors
/// [`StartError`] naming the manifest's fault.
pub fn load_plan(config: &Config) -> Result<Plan, StartError> {
    Ok(sluice_crds::load_manifest(&config.pipeline)?.1)
}

/// The threads the HTTP runtime of an ingress for `config` running `plan`
/// should have (`--threads`, else the share [`crate::threads`] gives it,
/// from the plan's backends unless `--backend` overrides them, and its
/// worker groups).
pub fn http_threads(config: &Config, plan: &Plan) -> usize {
    config
        .threads
        .split(runs_inline(config, plan), crate::threads::cpus())
        .http
}

/// Whether worker groups of `plan` run in this process: memory backends
/// and at least one worker group (the groups [`start_with`] runs inline).
fn runs_inline(config: &Config, plan: &Plan) -> bool {
    config.backend.unwrap_or(plan.backend) == BackendKind::Memory
        && plan.worker_groups().next().is_some()
}

/// Like [`start`], with a node registry holding custom `rust/*` nodes.
///
/// # Errors
/// See [`StartError`].
pub async fn start_with(config: Config, nodes: NodeRegistry) -> Result<Ingress, StartError> {
    let plan = load_plan(&config)?;
    start_planned(config, plan, nodes).await
}

/// Like [`start_with`], with the plan already read ([`load_plan`]): the
/// binary reads its manifest once, before it sizes its runtime.
///
/// # Errors
/// See [`StartError`].
pub async fn start_planned(
    config: Config,
    plan: Plan,
    nodes: NodeRegistry,
) -> Result<Ingress, StartError> {
    let plan = Arc::new(plan);
    let backend = config.backend.unwrap_or(plan.backend);
    if backend == BackendKind::Tcp
        && config.tcp.workers == crate::config::WorkerMode::External
        && config.keys.is_none()
    {
        return Err(StartError::Unsupported(
            "tcp backends with --workers external need --keys DIR (or SLUICE_KEYS_DIR): the worker containers must share the ingress's key ring"
                .into(),
        ));
    }
    if backend == BackendKind::Redis && config.keys.is_none() {
        return Err(StartError::Unsupported(
            "redis backends need --keys DIR (or SLUICE_KEYS_DIR): every process of the pipeline must share one key ring; \
             create one with `sluice-web-ingress keygen DIR`"
                .into(),
        ));
    }
    let admin_listener = match &config.admin {
        None => None,
        Some(_) if backend == BackendKind::Redis => return Err(StartError::Unsupported(
            "--admin serves dead letters that live in this process (memory and tcp backends); \
                 a Redis pipeline's are listed, redriven and purged with `sluice-web-ingress dlq --redis`"
                .into(),
        )),
        Some(_) if backend == BackendKind::Tcp
            && (config.tcp.workers == crate::config::WorkerMode::External
                || config.keys.is_none()) =>
        {
            return Err(StartError::Unsupported(
                "--admin with tcp backends needs --workers spawn and --keys DIR: the worker \
                 processes reach the same loopback and, run as this user, could read the token \
                 file; spawned workers can read the key directory itself, so the token gives them \
                 nothing more, but with a ring made for the run, or worker containers of one pod \
                 (which share its /tmp and user and hold their own group's keys only), the \
                 listener would sign for them what their keys cannot"
                    .into(),
            ))
        }
        Some((at, _)) => Some(
            crate::admin::bind(*at)
                .await
                .map_err(StartError::Unsupported)?,
        ),
    };
    let certificates = match &config.tls {
        Some(files) => Some(Arc::new(crate::tls::Certificates::load(files.clone())?)),
        None => None,
    };
    let tls = match &certificates {
        Some(c) => Some(
            c.server_config()
                .map_err(|e| StartError::Unsupported(format!("TLS: {e}")))?,
        ),
        None => None,
    };
    let background = CancellationToken::new();
    // Until the ingress is handed back, a start that fails stops what it
    // started: the background tasks (which hold the state, and through it
    // the tcp hub and children: dropped with it, they stop) and the inline
    // workers below.
    let stop_background_on_failure = background.clone().drop_guard();
    if let Some(c) = &certificates {
        tokio::spawn(
            c.clone()
                .reload(config.tls_reload_every, background.clone()),
        );
    }
    let ring = match &config.keys {
        Some(dir) => {
            let ring = SharedKeyRing::from_dir(dir)?;
            ring.watch(Duration::from_secs(2), background.clone());
            ring
        }
        None => SharedKeyRing::fixed(sluice_platform::KeyRing::ephemeral()),
    };
    // The tcp profile's queues and replay guard, which its hub serves.
    let mut tcp_parts = None;
    let Ports {
        queue,
        replies,
        guard,
        store,
        sample_every,
    } = match backend {
        BackendKind::Tcp => {
            let streams = MemoryStreams::new();
            tcp_parts = Some(streams.clone());
            Ports {
                queue: streams.clone(),
                replies: streams,
                // Worker processes write these queues: every envelope
                // passes the replay guard, as with Redis, which the hub
                // runs as it hands entries out; this process's
                // own verifier checks replies only.
                guard: None,
                store: MemoryKv::new(),
                sample_every: SAMPLE_MEMORY,
            }
        }
        BackendKind::Memory => {
            let streams = MemoryStreams::new();
            Ports {
                queue: streams.clone(),
                replies: streams,
                guard: None,
                store: MemoryKv::new(),
                sample_every: SAMPLE_MEMORY,
            }
        }
        BackendKind::Redis => {
            let url = config.redis.as_deref().ok_or_else(|| {
                StartError::Unsupported(
                    "redis backends need --redis URL (or SLUICE_REDIS_URL)".into(),
                )
            })?;
            // Lazy: the ingress starts while Redis is down (not ready before
            // Redis first answered; ready through later outages), answering
            // 503 until it returns.
            let cfg = RedisConfig::from_url(url)?
                .with_overrides(config.redis_timeout, config.redis_pool_size)
                .with_ca_file(config.redis_ca_file.as_deref())?
                .with_password_file(config.redis_password_file.as_deref())?;
            let redis = RedisBackend::connect_lazy(cfg)?;
            Ports {
                queue: redis.clone(),
                replies: redis.clone(),
                guard: Some(redis.clone()),
                store: redis,
                sample_every: SAMPLE_REDIS,
            }
        }
    };

    let mut registry = Registry::default();
    let metrics = IngressMetrics::register(&mut registry);
    let mut parts = RuntimeParts::new(
        &plan,
        &plan.ingress_group,
        ring.clone(),
        guard.clone(),
        &mut registry,
    );
    if let Some(redis) = guard {
        parts.watch_pause(redis, background.clone());
    }
    parts.signer = parts.signer.clone().with_format(envelope_format(backend));
    let build = |group: &str| {
        Executor::build(
            plan.clone(),
            group,
            &nodes,
            &config.secrets_dir,
            parts.durations.clone(),
        )
    };
    let executor = build(&plan.ingress_group)?;

    // Worker groups run in this process only in the memory profile; with
    // Redis they are sluice-exec-worker processes.
    let mut workers = vec![];
    for g in plan
        .worker_groups()
        .filter(|_| backend == BackendKind::Memory)
    {
        let cfg = WorkerConfig::from_plan(&plan, &g.name, format!("{}-inline", config.ingress_id));
        workers.push(Worker::new(cfg, build(&g.name)?, queue.clone(), &parts));
    }
    let split = config
        .threads
        .split(!workers.is_empty(), crate::threads::cpus());
    let inline = start_inline(workers, split.inline)?;
    let stop_inline_on_failure = inline.cancel.clone().drop_guard();
    // Worker groups of a tcp pipeline are processes of their own; they are
    // started, and ready, before anything is served.
    let tcp = match tcp_parts {
        Some(streams) => Some(
            crate::tcp_workers::TcpWorkers::start(
                &config,
                &plan,
                &ring,
                streams,
                parts.rejections.clone(),
            )
            .await?,
        ),
        None => None,
    };

    let slots = plan
        .interfaces
        .iter()
        .map(|i| {
            (
                i.name.clone(),
                Arc::new(Semaphore::new(i.max_in_flight as usize)),
            )
        })
        .collect();
    let graphql = crate::graphql::schemas(&plan)
        .map_err(|e| StartError::Unsupported(format!("graphql schema: {e}")))?;
    let sockets = plan
        .interfaces
        .iter()
        .filter_map(|i| {
            let ws = i.websocket?;
            Some((
                i.name.clone(),
                Arc::new(Semaphore::new(ws.max_connections as usize)),
            ))
        })
        .collect();
    let reply_senders = plan
        .interfaces
        .iter()
        .map(|i| (i.name.clone(), Arc::new(ReplySenders::of(i))))
        .collect();
    let interface_metrics = plan
        .interfaces
        .iter()
        .map(|i| {
            let m = crate::metrics::InterfaceMetrics::new(metrics.clone(), &i.name);
            (i.name.clone(), m)
        })
        .collect();
    let body_budget = BodyBudget::new(body_budget_bytes(&plan));
    // Nonces live in Redis, or in the tcp hub; the memory profile has no
    // replay guard.
    let replay_budget = match backend {
        BackendKind::Memory => None,
        BackendKind::Redis => plan.replay_budget,
        BackendKind::Tcp => Some(crate::tcp_workers::DEFAULT_MAX_NONCES),
    };
    let replay_window = replay_budget
        .map(|cap| ReplayWindow::new(cap, plan.max_timeout(), plan.security.clock_skew));
    let callers = Arc::new(crate::auth::Callers::load(&plan, &config.secrets_dir));
    let state = Arc::new(AppState {
        pause: parts.pause.clone(),
        replay_window,
        replies: replies.clone(),
        verifier: parts.verifier.clone(),
        store,
        callers: callers.clone(),
        rate_limits: crate::rate_limit::RateLimits::of(&plan),
        http: config.http,
        body_budget,
        plan: plan.clone(),
        keys: parts.keys.clone(),
        ingress_id: config.ingress_id.clone(),
        queue: queue.clone(),
        signer: parts.signer.clone(),
        executor,
        waiters: Default::default(),
        reply_senders,
        metrics,
        registry,
        ready: true.into(),
        replies_open: false.into(),
        reached_backend: false.into(),
        backlog: RwLock::new(Some(HashMap::default())),
        slots,
        interface_metrics,
        sockets,
        graphql,
        tcp: tcp.clone(),
    });

    let reply_stream = parts.keys.reply(&config.ingress_id);
    match replies.open(&reply_stream, REPLY_TTL).await {
        Ok(()) => {
            state.replies_open.store(true, Ordering::SeqCst);
            state.reached_backend.store(true, Ordering::SeqCst);
        }
        // Not fatal: the listener keeps trying while requests get 503.
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the reply stream yet; retrying in the background")
        }
    }
    tokio::spawn(listen_replies(
        state.clone(),
        replies.clone(),
        parts.verifier.clone(),
        reply_stream.clone(),
        background.clone(),
    ));
    tokio::spawn(sample_backlog(
        state.clone(),
        sample_every,
        background.clone(),
    ));
    tokio::spawn(callers.reload(background.clone()));

    let listener = sluice_platform::listen::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    if let (Some(listener), Some((at, token_file))) = (admin_listener, &config.admin) {
        let letters = crate::dead_letters::DeadLetters {
            plan: plan.clone(),
            keys: parts.keys.clone(),
            queue: state.queue.clone(),
            replies: replies.clone(),
            verifier: parts.verifier.clone(),
            signer: parts.signer.clone(),
        };
        let admin = crate::admin::Admin::new(letters, state.clone(), token_file)
            .map_err(StartError::Unsupported)?;
        tracing::info!(admin = %at, token_file = %token_file.display(), "dead letters served on the admin listener");
        tokio::spawn(crate::admin::serve(
            listener,
            Arc::new(admin),
            background.clone(),
        ));
    }
    // Said before the first request is served: whoever waits for the
    // ingress to answer finds the start-up line written.
    summary(&config, &plan, backend, &ring, &parts, addr, inline.threads);
    let stop_accepting = CancellationToken::new();
    let app = router(state.clone());
    let server = tokio::spawn(crate::listener::serve(
        listener,
        app,
        config.http,
        ConnectionMetrics {
            open: state.metrics.connections.clone(),
            refused: state.metrics.connections_refused.clone(),
        },
        stop_accepting.clone(),
        tls,
    ));

    stop_background_on_failure.disarm();
    stop_inline_on_failure.disarm();
    let drain = CancellationToken::new();
    let done = tokio::spawn(drain_sequence(DrainParts {
        state: state.clone(),
        drain: drain.clone(),
        grace: config.drain_grace,
        budget: config.drain_timeout,
        stop_accepting,
        server,
        inline,
        background,
        replies,
        reply_stream,
        tcp,
    }));
    Ok(Ingress {
        addr,
        state,
        drain,
        done,
    })
}

/// The body budget: every HTTP interface's `maxInFlight` full bodies, and
/// every WebSocket interface's `maxConnections` full messages (an open
/// socket holds one, the most it buffers of a message being received):
/// the memory the limits already allow for. At least one full body, so any
/// single body can always be read.
fn body_budget_bytes(plan: &Plan) -> usize {
    let max_payload = plan.security.max_payload_bytes as usize;
    plan.interfaces
        .iter()
        .fold(0usize, |sum, i| {
            let share = match i.websocket {
                Some(ws) => (ws.max_connections as usize)
                    .saturating_mul(crate::websocket::max_message(max_payload)),
                None => (i.max_in_flight as usize).saturating_mul(max_payload),
            };
            sum.saturating_add(share)
        })
        .max(max_payload)
}

fn summary(
    config: &Config,
    plan: &Plan,
    backend: BackendKind,
    ring: &SharedKeyRing,
    parts: &RuntimeParts,
    addr: SocketAddr,
    inline_threads: usize,
) {
    let r = ring.get();
    // With memory backends every group runs in this process; with tcp
    // backends this process hands each worker its keys and checks their
    // handshakes.
    let needs = match backend {
        BackendKind::Memory | BackendKind::Tcp => plan.key_needs_of_all(),
        BackendKind::Redis => plan.key_needs(&plan.ingress_group),
    };
    let missing = missing_keys(&r, &parts.keys, &needs);
    if !missing.is_empty() {
        tracing::warn!(
            missing = ?missing,
            "the key directory lacks keys this ingress needs; requests and replies needing them fail"
        );
    }
    let interfaces: Vec<String> = plan
        .interfaces
        .iter()
        .map(|i| {
            let how = if i.websocket.is_some() { "WS" } else { "POST" };
            format!("{} {how} {}", i.name, i.path)
        })
        .collect();
    let groups: Vec<String> = plan
        .groups
        .values()
        .map(|g| format!("{} ({:?}, {} nodes)", g.name, g.role, g.nodes.len()).to_lowercase())
        .collect();
    tracing::info!(
        pipeline = %plan.id,
        profile = %backend,
        listen = %addr,
        tls = config.tls.is_some(),
        max_connections = config.http.max_connections,
        header_timeout = ?config.http.header_timeout,
        body_timeout = ?config.http.body_timeout,
        ingress_id = %config.ingress_id,
        // What the runtimes run with, as they report it.
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        inline_threads,
        interfaces = ?interfaces,
        groups = ?groups,
        signing_kid = r.current(),
        kids = ?r.kids().collect::<Vec<_>>(),
        keys = if config.keys.is_some() { r.layout_name() } else { "ephemeral (generated for this run)" },
        traces = sluice_platform::telemetry::summary(),
        "sluice-web-ingress started"
    );
}

/// Runs the worker groups on their own runtime, so a node that blocks or
/// burns CPU never stalls the threads accepting requests.
/// No workers (redis and tcp backends): no runtime.
fn start_inline(workers: Vec<Arc<Worker>>, threads: usize) -> Result<Inline, StartError> {
    let cancel = CancellationToken::new();
    let (tx, done) = tokio::sync::oneshot::channel();
    if workers.is_empty() {
        let _ = tx.send(());
        return Ok(Inline {
            cancel,
            done,
            threads: 0,
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("sluice-worker")
        .enable_all()
        .build()
        .map_err(StartError::Threads)?;
    let threads = rt.metrics().num_workers();
    let token = cancel.clone();
    std::thread::Builder::new()
        .name("sluice-inline".into())
        .spawn(move || {
            rt.block_on(async move {
                let runs: Vec<_> = workers
                    .into_iter()
                    .map(|w| tokio::spawn(w.run(token.clone())))
                    .collect();
                for r in runs {
                    let _ = r.await;
                }
            });
            let _ = tx.send(());
        })
        .map_err(StartError::Threads)?;
    Ok(Inline {
        cancel,
        done,
        threads,
    })
}

async fn listen_replies(
    state: Arc<AppState>,
    replies: Arc<dyn ReplyChannel>,
    verifier: Verifier,
    stream: String,
    stop: CancellationToken,
) {
    let mut last_refresh = tokio::time::Instant::now();
    let mut opened = state.replies_open.load(Ordering::SeqCst);
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        if !opened || last_refresh.elapsed() >= REPLY_REFRESH {
            match replies.open(&stream, REPLY_TTL).await {
                Ok(()) => {
                    if !opened {
                        tracing::info!("reply stream open again");
                    }
                    opened = true;
                    state.replies_open.store(true, Ordering::SeqCst);
                    state.reached_backend.store(true, Ordering::SeqCst);
                    last_refresh = tokio::time::Instant::now();
                }
                Err(e) => {
                    if opened {
                        tracing::warn!(error = %e, "reply stream refresh failed");
                    }
                    opened = false;
                    state.replies_open.store(false, Ordering::SeqCst);
                }
            }
        }
        let got = tokio::select! {
            _ = stop.cancelled() => return,
            r = replies.recv(&stream, 256, Duration::from_millis(500)) => r,
        };
        match got {
            Ok(entries) => {
                backoff = Duration::from_millis(100);
                for (_, entry) in entries {
                    match verifier.verify_reply(&entry, &state.ingress_id).await {
                        Ok(reply) => match state.waiters.complete(reply.envelope, &reply.from) {
                            Delivered::Completed | Delivered::Chunk => {}
                            Delivered::ChunkDeferred => state.metrics.dropped("chunk_deferred"),
                            Delivered::Duplicate => state.metrics.dropped("duplicate"),
                            Delivered::Late => state.metrics.dropped("late"),
                            Delivered::WrongSender => {
                                verifier.count_rejection(Rejection::WrongSender);
                                tracing::debug!(from = %reply.from, "reply refused: its group does not answer this request's interface");
                            }
                        },
                        Err(e) => tracing::debug!(error = %e, "reply refused"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reply read failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn sample_backlog(state: Arc<AppState>, every: Duration, stop: CancellationToken) {
    let groups: Vec<String> = state.plan.worker_groups().map(|g| g.name.clone()).collect();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut sample = HashMap::default();
        let mut ok = true;
        for g in &groups {
            match state.queue.depth(&state.keys.queue(g)).await {
                Ok(d) => {
                    let label = GroupLabel { group: g.clone() };
                    state
                        .metrics
                        .queue_depth
                        .get_or_create(&label)
                        .set(d.entries as i64);
                    state
                        .metrics
                        .queue_bytes
                        .get_or_create(&label)
                        .set(d.bytes as i64);
                    sample.insert(
                        g.clone(),
                        Backlog {
                            entries: d.entries,
                            bytes: d.bytes,
                        },
                    );
                }
                Err(e) => {
                    tracing::debug!(error = %e, group = %g, "backlog sample failed");
                    ok = false;
                }
            }
        }
        *state.backlog.write() = ok.then_some(sample);
        if let Some(w) = &state.replay_window {
            state.metrics.replay_nonces.set(w.outstanding() as i64);
        }
    }
}

struct DrainParts {
    state: Arc<AppState>,
    drain: CancellationToken,
    grace: Duration,
    budget: Duration,
    stop_accepting: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    inline: Inline,
    background: CancellationToken,
    replies: Arc<dyn ReplyChannel>,
    reply_stream: String,
    tcp: Option<Arc<crate::tcp_workers::TcpWorkers>>,
}

async fn drain_sequence(p: DrainParts) {
    p.drain.cancelled().await;
    tracing::info!(grace = ?p.grace, "draining: readiness failed, still serving");
    p.state.ready.store(false, Ordering::SeqCst);
    tokio::time::sleep(p.grace).await;
    tracing::info!(
        waiting = p.state.waiters.len(),
        "draining: no longer accepting"
    );
    p.stop_accepting.cancel();
    if tokio::time::timeout(p.budget, p.server).await.is_err() {
        tracing::warn!(
            left = p.state.waiters.len(),
            "drain budget exhausted with requests in flight"
        );
    }
    p.inline.cancel.cancel();
    if tokio::time::timeout(p.budget, p.inline.done).await.is_err() {
        tracing::warn!("workers did not drain within the budget");
    }
    if let Some(tcp) = &p.tcp {
        tcp.stop(p.budget).await;
    }
    p.background.cancel();
    let _ = p.replies.close(&p.reply_stream).await;
    tracing::info!("drained");
}

/// Writes a fresh key ring into `dir` (the `keygen` subcommand).
///
/// # Errors
/// As [`sluice_platform::keyring::write_new`].
pub fn keygen(dir: &std::path::Path) -> Result<String, sluice_platform::KeyRingError> {
    sluice_platform::keyring::write_new(dir)
}

/// The form of the envelopes this process writes: binary where its queues
/// are read by this process alone (memory), else JSON, which processes of
/// the release before read too (tcp workers and Redis workers may run it
/// during an upgrade; see `Format`).
fn envelope_format(backend: BackendKind) -> Format {
    match backend {
        BackendKind::Memory => Format::Binary,
        BackendKind::Redis | BackendKind::Tcp => Format::Json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_memory_profile_writes_the_binary_form() {
        assert_eq!(envelope_format(BackendKind::Memory), Format::Binary);
        assert_eq!(envelope_format(BackendKind::Redis), Format::Json);
        assert_eq!(envelope_format(BackendKind::Tcp), Format::Json);
    }
}
