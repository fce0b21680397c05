//! `RedisBackend`: the connections of the Redis adapters and the one way
//! every command is sent (bounded in time, fail-fast while disconnected,
//! errors mapped to [`BackendError`] without secrets).
//!
//! ```text
//!   ordinary commands ──► Pool (pool_size clients, reconnect forever)
//!                          fail fast while reconnecting; timeout = command_timeout
//!
//!   XREADGROUP / XREAD ──► Dedicated client, checked out for one read
//!        BLOCK ms           timeout = block + command_timeout
//!                           back to the idle list on success, dropped
//!                           (connection closed) on any connection error
//! ```
//!
//! Blocking reads never share a connection with other commands (DESIGN §5
//! "Redis clients"): a blocked `XREADGROUP` would otherwise stall every
//! command queued behind it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::{Client, Pool};
use fred::error::{Error as FredError, ErrorKind};
use fred::interfaces::{ClientLike, EventInterface};
use fred::types::config::{
    ConnectionConfig, Options, PerformanceConfig, ReconnectPolicy, UnresponsiveConfig,
};
use fred::types::{ClusterHash, ConnectHandle, CustomCommand, Value};
use fred::util::redis_keyslot;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::config::{redact_secret, RedisConfig};
use crate::backend::{BackendError, Result};

/// The oldest Redis sluice runs on: `SET NX GET` (the replay guard) and
/// `XINFO STREAM`'s `entries-added` (the backlog) came with 7.0.
pub const MIN_REDIS_VERSION: (u32, u32, u32) = (7, 0, 0);

/// Attempts at reading the version after a (re)connection, and the pause
/// between them.
const VERSION_CHECK_ATTEMPTS: u32 = 20;
const VERSION_CHECK_PAUSE: Duration = Duration::from_millis(250);

/// `redis_version` of an `INFO server` answer, as (major, minor, patch).
fn server_version(info: &str) -> Option<(u32, u32, u32)> {
    let v = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Slack on top of fred's own timeout before our outer `tokio::time::timeout`
/// fires; fred's fires first in the normal case and says more.
const TIMEOUT_MARGIN: Duration = Duration::from_millis(250);

/// Reconnect backoff of the pooled clients: quick first retries so a
/// restarted Redis is found within about a second, capped so a long outage
/// costs one attempt per second per connection. fred keeps a client's state
/// at "connected" until its first reconnect attempt, and commands sent in
/// that window wait for their timeout instead of failing fast, so the first
/// delay (and its jitter) is kept short.
const RECONNECT_MIN_MS: u32 = 10;
const RECONNECT_MAX_MS: u32 = 1000;
const RECONNECT_JITTER_MS: u32 = 20;

/// The Redis adapter of the `Queue`, `ReplyChannel` and `Kv` ports.
///
/// # Guarantees
/// - Every command returns within its timeout (ordinary:
///   `command_timeout`; blocking reads: block + `command_timeout`), plus a
///   small margin; while Redis is unreachable commands fail at once with
///   [`BackendError::Unavailable`] instead of queueing for the reconnect.
/// - Pooled connections reconnect by themselves, forever, with backoff;
///   dedicated connections are replaced on the next blocking read.
/// - No error text contains the password.
///
/// # Assumptions
/// One pipeline's keys share a hash tag (DESIGN §5), so a completion's
/// `MULTI` touches one slot.
pub struct RedisBackend {
    cfg: RedisConfig,
    /// Password, kept only to scrub it from error texts.
    secret: Option<String>,
    pool: Pool,
    /// Tasks driving the pooled connections and watching their errors;
    /// aborted on drop, which closes the connections.
    tasks: Mutex<Vec<ConnectHandle>>,
    /// Per pooled client: when its connection last broke, in ms since
    /// `epoch` (0: never). See [`Self::pooled`].
    lost_at: Vec<Arc<AtomicU64>>,
    epoch: Instant,
    /// Round-robin position over the pool.
    next: AtomicUsize,
    /// Idle dedicated connections for blocking reads.
    idle_blocking: Mutex<Vec<Dedicated>>,
    /// Reply streams: where each stream's reader stands, so a read never
    /// returns an entry twice and read entries are trimmed in bulk.
    pub(super) reply_cursors: Mutex<HashMap<String, super::cursor::ReplyCursor>>,
    /// Queues: where the next reclaim scan of each starts (`XAUTOCLAIM`'s
    /// cursor), so a pending list longer than one scan is covered in turn.
    pub(super) reclaim_cursors: Mutex<HashMap<String, String>>,
}

/// A connection used by one blocking read at a time.
struct Dedicated {
    client: Client,
    task: ConnectHandle,
}

impl Dedicated {
    /// Whether the connection can take a command. Without a reconnect
    /// policy fred ends the routing task when the socket closes but may
    /// leave the state at "connected"; a command sent then would wait for
    /// its timeout, so the task is checked too.
    fn alive(&self) -> bool {
        self.client.is_connected() && !self.task.is_finished()
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        // Ends the routing task, which closes the socket; a read that timed
        // out client-side may still be blocked on the server otherwise.
        self.task.abort();
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().iter() {
            t.abort();
        }
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

// === impl RedisBackend: lifecycle ===

impl RedisBackend {
    /// Connects the pool and waits until every pooled connection is up.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when Redis cannot be reached (or refuses
    /// the credentials) within `connect_timeout` + `command_timeout`; the
    /// message carries the last connection error, without the password.
    pub async fn connect(cfg: RedisConfig) -> Result<Arc<Self>> {
        let backend = Self::connect_lazy(cfg)?;
        let mut errors = backend.pool.clients()[0].error_rx();
        let patience = backend.cfg.connect_timeout + backend.cfg.command_timeout;
        let deadline = Instant::now() + patience;
        while !backend.pool.clients().iter().all(|c| c.is_connected()) {
            if Instant::now() >= deadline {
                let mut last = None;
                while let Ok((e, _)) = errors.try_recv() {
                    last = Some(e);
                }
                let why = last.map_or("no answer".to_string(), |e| {
                    redact_secret(&e.to_string(), backend.secret.as_deref())
                });
                return Err(BackendError::Unavailable(format!(
                    "could not connect to {} within {patience:?}: {why}",
                    backend.cfg.redacted_url()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        backend.check_server().await?;
        Ok(backend)
    }

    /// Refuses a Redis older than [`MIN_REDIS_VERSION`]: sluice's commands
    /// would fail on it one by one (`SET NX GET` is a syntax error before
    /// 7.0), so it is better said once, plainly. A server that does not
    /// tell its version (a proxy, or `INFO` denied by an ACL) is given the
    /// benefit of the doubt: its commands will tell.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] naming the server and its version when
    /// it is older.
    pub async fn check_server(&self) -> Result<()> {
        match self.server_version().await {
            Ok(Some(v)) if v < MIN_REDIS_VERSION => Err(self.too_old(v)),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the Redis version");
                Ok(())
            }
        }
    }

    /// `redis_version` from `INFO server`; `None` when it names none.
    async fn server_version(&self) -> Result<Option<(u32, u32, u32)>> {
        let info = self
            .call("INFO", "", vec!["server".into()])
            .await
            .map_err(|e| self.err(e))?;
        Ok(server_version(&info.as_str().unwrap_or_default()))
    }

    fn too_old(&self, v: (u32, u32, u32)) -> BackendError {
        BackendError::Unavailable(format!(
            "{} runs Redis {}.{}.{}; sluice needs Redis {}.{} or later",
            self.cfg.redacted_url(),
            v.0,
            v.1,
            v.2,
            MIN_REDIS_VERSION.0,
            MIN_REDIS_VERSION.1,
        ))
    }

    /// Checks the version after each (re)connection that `reconnected`
    /// announces. The announcement comes before the client counts as
    /// connected, so the first attempts may find no connection up.
    async fn watch_version(
        backend: std::sync::Weak<Self>,
        mut reconnected: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match reconnected.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
            for attempt in 1..=VERSION_CHECK_ATTEMPTS {
                let Some(b) = backend.upgrade() else { return };
                match b.server_version().await {
                    Ok(Some(v)) if v < MIN_REDIS_VERSION => {
                        let e = b.too_old(v);
                        tracing::error!(error = %e, "unsupported Redis: requests will fail");
                        break;
                    }
                    Ok(_) => break,
                    Err(e) if attempt == VERSION_CHECK_ATTEMPTS => {
                        tracing::debug!(error = %e, "cannot read the Redis version");
                    }
                    Err(_) => {}
                }
                drop(b);
                tokio::time::sleep(VERSION_CHECK_PAUSE).await;
            }
        }
    }

    /// Starts connecting in the background and returns at once; commands
    /// fail with [`BackendError::Unavailable`] until the connection is up.
    /// For processes that must start (and answer 503) while Redis is down.
    ///
    /// Must be called inside a Tokio runtime (it spawns the connection tasks).
    ///
    /// # Errors
    /// Only configuration errors fred detects before connecting.
    pub fn connect_lazy(cfg: RedisConfig) -> Result<Arc<Self>> {
        let secret = cfg.secret();
        let mut fred_cfg = cfg.fred().clone();
        // The first connection attempt follows the reconnect policy too, so
        // a process started before Redis finds it once it comes up.
        fred_cfg.fail_fast = false;
        let mut policy = ReconnectPolicy::new_exponential(0, RECONNECT_MIN_MS, RECONNECT_MAX_MS, 2);
        policy.set_jitter(RECONNECT_JITTER_MS);
        let pool = Pool::new(
            fred_cfg,
            Some(Self::perf(&cfg)),
            Some(Self::connection(&cfg, true)),
            Some(policy),
            cfg.pool_size.max(1),
        )
        .map_err(|e| BackendError::Unavailable(redact_secret(&e.to_string(), secret.as_deref())))?;
        // Subscribed before connecting: the first connection counts too.
        let reconnected = pool.clients()[0].reconnect_rx();
        let mut tasks = pool.connect_pool();
        let epoch = Instant::now();
        let mut lost_at = vec![];
        for (i, client) in pool.clients().iter().enumerate() {
            let broke = Arc::new(AtomicU64::new(0));
            lost_at.push(broke.clone());
            // Logs the loss and the return of each connection once, not
            // every failed attempt in between.
            let down = Arc::new(AtomicBool::new(false));
            let (url, secret, lost) = (cfg.redacted_url(), secret.clone(), down.clone());
            tasks.push(client.on_error(move |(e, _server)| {
                broke.store(millis_since(epoch).max(1), Ordering::Relaxed);
                let why = redact_secret(&e.to_string(), secret.as_deref());
                let first = !lost.swap(true, Ordering::Relaxed);
                log_lost(&url, i, &why, first);
                async { Ok(()) }
            }));
            let url = cfg.redacted_url();
            tasks.push(client.on_reconnect(move |_server| {
                if down.swap(false, Ordering::Relaxed) {
                    tracing::info!(redis = %url, connection = i, "redis connection restored");
                }
                async { Ok(()) }
            }));
        }
        let backend = Arc::new(Self {
            cfg,
            secret,
            pool,
            tasks: Mutex::new(tasks),
            lost_at,
            epoch,
            next: AtomicUsize::new(0),
            idle_blocking: Mutex::new(Vec::new()),
            reply_cursors: Mutex::new(HashMap::new()),
            reclaim_cursors: Mutex::new(HashMap::new()),
        });
        // Checks the server version at the first connection and after each
        // reconnection (a failover may land on another server).
        let weak = Arc::downgrade(&backend);
        let check = tokio::spawn(async move {
            Self::watch_version(weak, reconnected).await;
            Ok(())
        });
        backend.tasks.lock().push(check);
        Ok(backend)
    }

    /// The settings this backend was built from (password redacted in `Debug`).
    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    /// Whether every pooled connection is currently up. A hint for metrics
    /// and logs, not for readiness (DESIGN §5: a Redis outage does not fail
    /// `/readyz`).
    pub fn is_connected(&self) -> bool {
        self.pool.clients().iter().all(|c| c.is_connected())
    }

    fn perf(cfg: &RedisConfig) -> PerformanceConfig {
        PerformanceConfig {
            default_command_timeout: cfg.command_timeout,
            ..PerformanceConfig::default()
        }
    }

    fn connection(cfg: &RedisConfig, pooled: bool) -> ConnectionConfig {
        let unresponsive = if pooled {
            // Pooled connections never block, so an answer this late means
            // the connection is dead (e.g. a peer gone without a FIN):
            // close it and reconnect rather than wait for TCP to notice.
            UnresponsiveConfig {
                max_timeout: Some(cfg.command_timeout * 2),
                interval: (cfg.command_timeout / 2).max(Duration::from_millis(100)),
            }
        } else {
            UnresponsiveConfig::default()
        };
        ConnectionConfig {
            connection_timeout: cfg.connect_timeout,
            internal_command_timeout: cfg.command_timeout,
            // A command is written once: a retry after a dropped connection
            // could apply an XADD twice, and the caller retries anyway.
            max_command_attempts: 1,
            unresponsive,
            ..ConnectionConfig::default()
        }
    }

    /// Per-command options: bounded, written once, failing at once while
    /// the connection is down instead of waiting in fred's reconnect buffer.
    fn options(timeout: Duration) -> Options {
        Options {
            timeout: Some(timeout),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        }
    }
}

// === impl RedisBackend: sending commands ===

/// A command whose cluster slot is that of `key`.
fn command(name: &'static str, key: &str, blocking: bool) -> CustomCommand {
    CustomCommand::new_static(
        name,
        ClusterHash::Custom(redis_keyslot(key.as_bytes())),
        blocking,
    )
}

/// Whether `e` is the Redis error reply `code` (e.g. `NOGROUP`).
pub(super) fn is_reply(e: &FredError, code: &str) -> bool {
    e.details().starts_with(code)
}

/// Whether `e` is an error Redis answered (the kinds fred gives its error
/// replies), rather than the client's own failure (a timeout, a lost
/// connection, a frame it could not read) after which the command may still
/// be on its way.
pub(super) fn is_redis_answer(e: &FredError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Unknown
            | ErrorKind::InvalidArgument
            | ErrorKind::InvalidCommand
            | ErrorKind::Auth
            | ErrorKind::Cluster
            | ErrorKind::Config
    )
}

fn timed_out() -> FredError {
    FredError::new(ErrorKind::Timeout, "command timed out")
}

/// Awaits `fut` at most `limit` + margin.
///
/// A combinator rather than an `async fn`: the latter would hold `fut`
/// twice (as its argument and inside the timeout). The client's command
/// futures are about 7 KB each, copied whole whenever a future holding
/// one is moved; callers box them once where they are made, so the
/// futures that carry a command through sluice's own code stay small.
fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = std::result::Result<T, FredError>>,
) -> impl Future<Output = std::result::Result<T, FredError>> {
    use futures::FutureExt as _;
    tokio::time::timeout(limit + TIMEOUT_MARGIN, fut)
        .map(|answered| answered.unwrap_or_else(|_| Err(timed_out())))
}

/// Whether the connection that produced `e` may be used again.
fn connection_survives(e: &FredError) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::IO | ErrorKind::Protocol
    )
}

/// How long a pooled client is avoided after its connection broke. fred
/// reports it connected until its first reconnect attempt, and a command
/// sent meanwhile waits in its queue for the full command timeout; after
/// this window the state is accurate again (reconnecting, or reconnected).
const SUSPECT_AFTER_ERROR: Duration = Duration::from_millis(250);

/// A pooled connection broke (`first`) or another attempt to restore it
/// failed.
fn log_lost(url: &str, connection: usize, why: &str, first: bool) {
    if first {
        tracing::warn!(redis = %url, connection, error = %why, "redis connection lost");
    } else {
        tracing::debug!(redis = %url, connection, error = %why, "redis still unreachable");
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl RedisBackend {
    /// A pooled client that is connected and whose connection did not just
    /// break, round-robin; an error at once when there is none, so callers
    /// do not wait out a timeout during an outage.
    fn pooled(&self) -> std::result::Result<&Client, FredError> {
        let clients = self.pool.clients();
        let now = millis_since(self.epoch);
        let window = u64::try_from(SUSPECT_AFTER_ERROR.as_millis()).unwrap_or(u64::MAX);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..clients.len())
            .map(|k| (start + k) % clients.len())
            .find(|&i| {
                let lost = self.lost_at[i].load(Ordering::Relaxed);
                clients[i].is_connected() && (lost == 0 || now.saturating_sub(lost) > window)
            })
            .map(|i| &clients[i])
            .ok_or_else(|| FredError::new(ErrorKind::Canceled, "no pooled connection is up"))
    }

    /// Maps a fred error to the port error, scrubbing the password.
    pub(super) fn err(&self, e: FredError) -> BackendError {
        match e.kind() {
            ErrorKind::Timeout => BackendError::Timeout,
            _ => BackendError::Unavailable(redact_secret(
                &format!("redis: {e}"),
                self.secret.as_deref(),
            )),
        }
    }

    /// One ordinary command on a pooled connection.
    pub(super) async fn call(
        &self,
        name: &'static str,
        key: &str,
        args: Vec<Value>,
    ) -> std::result::Result<Value, FredError> {
        let limit = self.cfg.command_timeout;
        let client = self.pooled()?.with_options(&Self::options(limit));
        bounded(
            limit,
            Box::pin(client.custom(command(name, key, false), args)),
        )
        .await
    }

    /// Several commands in one round trip on one pooled connection (not
    /// atomic); one result per command.
    pub(super) async fn pipeline(
        &self,
        cmds: Vec<(&'static str, &str, Vec<Value>)>,
    ) -> std::result::Result<Vec<std::result::Result<Value, FredError>>, FredError> {
        let limit = self.cfg.command_timeout;
        let pipe = self.pooled()?.pipeline();
        let queued = pipe.with_options(&Self::options(limit));
        for (name, key, args) in cmds {
            let _: Value = Box::pin(queued.custom(command(name, key, false), args)).await?;
        }
        tokio::time::timeout(limit + TIMEOUT_MARGIN, Box::pin(pipe.try_all::<Value>()))
            .await
            .map_err(|_| timed_out())
    }

    /// Commands in one `MULTI`/`EXEC` on one pooled connection; the `EXEC`
    /// results, one per command.
    ///
    /// Sent as one pipeline (`MULTI`, the commands, `EXEC`), written back
    /// to back: other commands on the connection neither wait for it nor
    /// come between its parts (the client's one router task writes a
    /// pipeline whole before it takes the next request; fred is pinned to
    /// the version this was read from). The client library's own
    /// transaction would first wait for every answer outstanding on the
    /// connection and hold it until `EXEC` answered: under load every
    /// hand-off stalled a pooled connection for two round trips. One
    /// attempt only, so a connection lost midway never sends the rest
    /// outside `MULTI` (Redis drops a transaction left open by a closed
    /// connection); in a cluster, a command redirected while queued fails
    /// with it and `EXEC` aborts.
    ///
    /// # Errors
    /// `EXECABORT: <the first refusal>` when Redis discarded the
    /// transaction because a command was refused while queued (ACL, out of
    /// memory, a redirection): nothing of it was applied. When `MULTI`
    /// itself was refused, the commands after it ran on their own: their
    /// answers when every one succeeded, else `MULTI refused (…)` naming
    /// the first failure (or that they were queued in a transaction open
    /// already: what ran is then not known). Otherwise `EXEC`'s error
    /// (Redis does not roll back: a command failing inside `EXEC` fails it,
    /// the others ran), or the client's.
    pub(super) async fn transaction(
        &self,
        cmds: Vec<(&'static str, &str, Vec<Value>)>,
    ) -> std::result::Result<Vec<Value>, FredError> {
        let Some(&(_, first, _)) = cmds.first() else {
            return Ok(vec![]);
        };
        let sent = cmds.len() + 2;
        let mut wrapped = Vec::with_capacity(sent);
        wrapped.push(("MULTI", first, vec![]));
        wrapped.extend(cmds);
        wrapped.push(("EXEC", first, vec![]));
        let mut answers = self.pipeline(wrapped).await?;
        if answers.len() != sent {
            // The client failed the pipeline before its answers came (one
            // error for all): whether Redis ran it is unknown.
            let why = answers.into_iter().find_map(Result::err);
            return Err(why.unwrap_or_else(|| {
                FredError::new(ErrorKind::Protocol, "answers missing from a transaction")
            }));
        }
        let exec = answers.pop().unwrap_or(Ok(Value::Null));
        let mut answers = answers.into_iter();
        if let Some(Err(e)) = answers.next() {
            let ran: Vec<_> = answers.collect();
            if ran.iter().any(|r| matches!(r, Ok(Value::Queued))) {
                // Queued all the same: a transaction was open already, and
                // what its EXEC ran is not known here (a Redis answer: the
                // caller reads back what applied).
                return Err(FredError::new(
                    ErrorKind::Unknown,
                    format!("MULTI refused ({}) inside an open transaction", e.details()),
                ));
            }
            // No transaction was opened: each command after it ran on its
            // own and answered for itself.
            return match ran.into_iter().collect::<std::result::Result<Vec<Value>, _>>() {
                Ok(ran) => Ok(ran),
                Err(failed) => Err(FredError::new(
                    ErrorKind::Unknown,
                    format!(
                        "MULTI refused ({}); the commands after it ran on their own, and one failed: {}",
                        e.details(),
                        failed.details()
                    ),
                )),
            };
        }
        match exec {
            Ok(results) => Ok(results.into_array()),
            Err(e) if is_reply(&e, "EXECABORT") => {
                let refused = answers.find_map(Result::err);
                Err(FredError::new(
                    e.kind().clone(),
                    format!(
                        "EXECABORT: {}",
                        refused.as_ref().map_or(e.details(), FredError::details)
                    ),
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// One read that may block up to `block`, on a dedicated connection.
    /// A zero `block` is a plain, non-blocking read on the pool (Redis
    /// reads `BLOCK 0` as "forever").
    pub(super) async fn blocking_read(
        &self,
        name: &'static str,
        key: &str,
        mut args: Vec<Value>,
        block: Duration,
        block_arg_at: usize,
    ) -> std::result::Result<Value, FredError> {
        let block_ms = i64::try_from(block.as_millis()).unwrap_or(i64::MAX);
        if block_ms == 0 {
            return self.call(name, key, args).await;
        }
        args.splice(
            block_arg_at..block_arg_at,
            [Value::from("BLOCK"), Value::Integer(block_ms)],
        );
        let conn = self.dedicated().await?;
        let limit = block + self.cfg.command_timeout;
        let client = conn.client.with_options(&Self::options(limit));
        let result = bounded(
            limit,
            Box::pin(client.custom(command(name, key, true), args)),
        )
        .await;
        let reusable = match &result {
            Ok(_) => true,
            Err(e) => connection_survives(e),
        };
        if reusable && conn.alive() {
            let mut idle = self.idle_blocking.lock();
            if idle.len() < self.cfg.pool_size.max(super::config::MIN_IDLE_BLOCKING) {
                idle.push(conn);
            }
        }
        result
    }

    /// An idle dedicated connection, or a new one.
    async fn dedicated(&self) -> std::result::Result<Dedicated, FredError> {
        loop {
            let Some(conn) = self.idle_blocking.lock().pop() else {
                break;
            };
            if conn.alive() {
                return Ok(conn);
            }
        }
        let mut fred_cfg = self.cfg.fred().clone();
        // No reconnect policy: a broken dedicated connection is dropped and
        // the next read opens a fresh one, so it must fail, not retry.
        fred_cfg.fail_fast = true;
        let client = Client::new(
            fred_cfg,
            Some(Self::perf(&self.cfg)),
            Some(Self::connection(&self.cfg, false)),
            None,
        );
        let task = client.connect();
        let conn = Dedicated { client, task };
        let patience = self.cfg.connect_timeout + self.cfg.command_timeout;
        let waited = tokio::time::timeout(patience, conn.client.wait_for_connect()).await;
        // Checked again: the connection may have come up between fred's
        // state check and its subscription to the connect notification.
        if conn.client.is_connected() {
            return Ok(conn);
        }
        Err(match waited {
            Ok(Err(e)) => e,
            _ => FredError::new(
                ErrorKind::IO,
                "could not open a connection for a blocking read",
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:6.2.14\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(server_version(info), Some((6, 2, 14)));
        assert_eq!(server_version("redis_version:7.0\r\n"), Some((7, 0, 0)));
        assert_eq!(server_version("redis_version:8\r\n"), Some((8, 0, 0)));
        assert_eq!(
            server_version("# Server\r\nredis_mode:standalone\r\n"),
            None
        );
        assert_eq!(server_version("redis_version:unknown\r\n"), None);
    }

    #[test]
    fn seven_and_later_are_new_enough() {
        assert!((6, 2, 14) < MIN_REDIS_VERSION);
        assert!((7, 0, 0) >= MIN_REDIS_VERSION);
        assert!((7, 2, 4) >= MIN_REDIS_VERSION);
        assert!((10, 0, 0) >= MIN_REDIS_VERSION);
    }
}

#[cfg(test)]
mod future_size {
    use super::*;
    use crate::envelope::StreamEntry;
    use crate::queue::Queue;

    /// A command's future is large (fred's, several KB) and is copied
    /// whole when the future holding it is boxed, once per command: the
    /// adapter's own futures hold it once, not twice.
    #[test]
    fn a_commands_future_is_held_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = rt.enter();
        let backend =
            RedisBackend::connect_lazy(RedisConfig::from_url("redis://127.0.0.1:1").unwrap())
                .unwrap();
        let client = backend
            .pool
            .next()
            .with_options(&RedisBackend::options(Duration::ZERO));
        let fred = std::mem::size_of_val(
            &client.custom::<Value, Vec<Value>>(command("XADD", "k", false), vec![]),
        );
        let push = backend.push(
            "k",
            StreamEntry::from_fields(Vec::<(&[u8], Vec<u8>)>::new()),
        );
        let pushed = std::mem::size_of_val(&*push);
        assert!(
            pushed < 2 * fred,
            "push's future holds {pushed} bytes against a command's {fred}"
        );
    }
}
