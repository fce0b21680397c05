//! The ingress's admin listener (`--admin ADDR`, loopback only): the dead
//! letters of a pipeline whose queues live in this process (memory and tcp
//! backends), the same actions as `sluice-web-ingress dlq` on Redis
//! (`sluice-web-ingress dlq … --admin ADDR` asks it).
//!
//! ```text
//! GET  /dlq[?limit=N&payloads=true]                      the listing (text)
//! POST /dlq/redrive {"ids": […] | "all": true, "interface", "caller", "followMoved", "dryRun"}
//! POST /dlq/purge   {"ids": […] | "all": true, "dryRun"}
//! ```
//!
//! Whoever may use it acts on every dead letter and signs requests with the
//! process's keys. So it is off unless asked for, never served on
//! `--listen`, bound to loopback only, and every request must carry
//! `Authorization: Bearer <token>`, the token the ingress writes at start
//! into `--admin-token-file` (mode 0600, a fresh one each start): another
//! local user cannot read it, and a web page cannot send the header to a
//! loopback address without a preflight the listener never answers. With
//! tcp backends the worker processes reach the same loopback: the listener
//! is served only with `--workers spawn` and `--keys DIR`, where the
//! workers, run as this user, can read the key directory itself, so the
//! token gives them nothing more. With a ring made for the run (in this
//! process only), or worker containers of one pod (they share its `/tmp`
//! and user, and each holds its own group's keys only), it would sign for
//! them what their keys cannot: refused at start. Actions run one at a time
//! (two redrives at once would send each letter twice), each on a task of
//! its own that a caller going away does not stop, for at most
//! [`DEADLINE`]; a redrive is refused once the ingress drains (nobody would
//! run it). At most [`MAX_CONNECTIONS`] connections, 10 s for a head and
//! 10 s for a body, which is read only once the token was checked.
//! Answers are text, one line per letter, as the command prints them; a
//! refusal is `400` with the reason, a backend failure `503` with what was
//! done before it; a missing or wrong token `401`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::dead_letters::DeadLetters;
use crate::dlq_command::{act, Act, ActError, Pick};
use crate::state::AppState;

/// What the admin endpoints act on.
pub struct Admin {
    pub letters: DeadLetters,
    /// The ingress: a redrive is refused once it drains.
    pub app: Arc<AppState>,
    /// The bearer token, hex.
    token: String,
    /// One action at a time.
    one: tokio::sync::Mutex<()>,
}

impl Admin {
    /// The admin state, with a fresh token written to `token_file`
    /// (created or replaced, mode 0600).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn new(
        letters: DeadLetters,
        app: Arc<AppState>,
        token_file: &Path,
    ) -> Result<Self, String> {
        let token = format!(
            "{}{}",
            sluice_platform::signing::new_nonce(),
            sluice_platform::signing::new_nonce()
        );
        write_private(token_file, &token).map_err(|e| {
            format!(
                "--admin-token-file {}: cannot write the token: {e}",
                token_file.display()
            )
        })?;
        Ok(Self {
            letters,
            app,
            token,
            one: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether `headers` carry the token (compared in constant time).
    fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let (a, b) = (given.as_bytes(), self.token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
    }
}

/// Writes `text` to `path`, readable and writable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}

/// Largest request body the admin endpoints read.
pub const MAX_BODY: usize = 64 << 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    payloads: bool,
}

fn default_limit() -> usize {
    100
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RedriveBody {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
    interface: Option<String>,
    caller: Option<String>,
    #[serde(default)]
    follow_moved: bool,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PurgeBody {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    dry_run: bool,
}

/// The admin routes over `admin`.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/dlq", get(list))
        .route("/dlq/redrive", post(redrive))
        .route("/dlq/purge", post(purge))
        .with_state(admin)
}

/// Open connections the admin listener serves at most: a local process
/// that opens many without the token holds no more of the ingress.
pub const MAX_CONNECTIONS: usize = 8;

/// How long one action may run: it stops before its next letter after
/// that, and says how far it got (as the operator's actions do).
pub const DEADLINE: Duration = Duration::from_secs(300);

/// Serves [`router`] on `listener` until `stop`, with the public
/// listener's protections at the admin listener's own sizes: at most
/// [`MAX_CONNECTIONS`] connections, 10 s for a request head.
pub async fn serve(listener: tokio::net::TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    let limits = crate::config::HttpLimits {
        header_timeout: Duration::from_secs(10),
        max_connections: MAX_CONNECTIONS,
        ..crate::config::HttpLimits::default()
    };
    // Not the public listener's metrics, and not registered: the admin
    // listener's connections are not exported.
    let metrics = crate::listener::ConnectionMetrics {
        open: prometheus_client::metrics::gauge::Gauge::default(),
        refused: prometheus_client::metrics::counter::Counter::default(),
    };
    crate::listener::serve(listener, router(admin), limits, metrics, stop, None).await;
}

/// Binds `addr` for the admin listener: loopback only.
///
/// # Errors
/// A non-loopback address, or the port cannot be bound.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    if !addr.ip().is_loopback() {
        return Err(format!("--admin {addr}: loopback addresses only"));
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--admin: cannot listen on {addr}: {e}"))
}

async fn list(
    State(a): State<Arc<Admin>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !a.allows(&headers) {
        return unauthorized();
    }
    let Ok(Query(q)) = query else {
        return refused("the query takes limit=N and payloads=true|false");
    };
    run(
        &a,
        Act::List {
            limit: q.limit,
            payloads: q.payloads,
        },
    )
    .await
}

async fn redrive(State(a): State<Arc<Admin>>, headers: HeaderMap, body: Body) -> Response {
    if !a.allows(&headers) {
        return unauthorized();
    }
    let b: RedriveBody = match json(&a, body).await {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    if !b.dry_run && !a.app.ready.load(Ordering::SeqCst) {
        return refused("the ingress is draining: nothing would run a redriven request");
    }
    run(
        &a,
        Act::Redrive {
            pick: Pick {
                ids: b.ids,
                all: b.all,
            },
            interface: b.interface,
            caller: b.caller,
            follow_moved: b.follow_moved,
            dry_run: b.dry_run,
        },
    )
    .await
}

async fn purge(State(a): State<Arc<Admin>>, headers: HeaderMap, body: Body) -> Response {
    if !a.allows(&headers) {
        return unauthorized();
    }
    let b: PurgeBody = match json(&a, body).await {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    run(
        &a,
        Act::Purge {
            pick: Pick {
                ids: b.ids,
                all: b.all,
            },
            dry_run: b.dry_run,
        },
    )
    .await
}

/// Runs `what`, one action at a time, within [`DEADLINE`] of its start. It
/// runs on a task of its own: a caller that goes away midway does not stop
/// a redrive between sending a letter and deleting it.
async fn run(a: &Arc<Admin>, what: Act) -> Response {
    let a = a.clone();
    let done = tokio::spawn(async move {
        let _one = a.one.lock().await;
        act(
            &a.letters,
            what,
            Some(tokio::time::Instant::now() + DEADLINE),
        )
        .await
    })
    .await;
    match done {
        Ok(r) => answer(r),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the action failed: {e}\n"),
        )
            .into_response(),
    }
}

/// How long a request body may take to arrive, once its head has.
const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// The body as JSON, read only after the token was checked, as the public
/// listener reads one ([`crate::body::read`], under the process's body
/// budget): at most [`MAX_BODY`] bytes (`413` past it) within
/// [`BODY_DEADLINE`] (`408`), so a local process that sends slowly holds no
/// connection slot for long.
async fn json<T: serde::de::DeserializeOwned>(a: &Admin, body: Body) -> Result<T, Response> {
    use crate::body::BodyError;
    let started = tokio::time::Instant::now();
    let read = crate::body::read(
        body,
        MAX_BODY,
        started,
        started + BODY_DEADLINE,
        &a.app.body_budget,
    )
    .await;
    let bytes = match read {
        Ok(b) => b.bytes,
        Err(BodyError::TooLarge { limit }) => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {} KiB\n", limit >> 10),
            )
                .into_response())
        }
        Err(BodyError::TimedOut { after }) => {
            return Err((
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {}s\n", after.as_secs()),
            )
                .into_response())
        }
        Err(BodyError::Broken) => return Err(refused("the body broke off")),
    };
    serde_json::from_slice(&bytes).map_err(|e| refused(&format!("the body: {e}")))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        "the admin listener needs Authorization: Bearer <the token in --admin-token-file>\n",
    )
        .into_response()
}

fn refused(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
}

fn answer(r: Result<String, ActError>) -> Response {
    match r {
        Ok(text) => (StatusCode::OK, text).into_response(),
        Err(ActError::Refused(why)) => refused(&why),
        Err(ActError::Stopped { done, error }) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{done}{error}\n")).into_response()
        }
    }
}
