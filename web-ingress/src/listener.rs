//! The public HTTP listener: accepts connections up to a cap and serves each
//! with HTTP/1.1 or cleartext HTTP/2 (prior knowledge, on the same port)
//! under a header deadline, until told to stop.
//!
//! ```text
//! accept ─▶ connection cap ─┬─ full: 503 written, connection closed, counted
//!                           └─ first bytes by the header deadline ─┬─ HTTP/2 preface ─▶ hyper http2 ─▶ router
//!                                                                  └─ anything else ──▶ hyper http1 ─▶ router
//! stop   ─▶ no more accepts ─▶ each connection finishes the requests it is on
//!           (HTTP/2: GOAWAY), idle ones close, WebSockets drain (see `websocket`)
//!           ─▶ returns once every connection has ended
//! ```
//!
//! # HTTP/2 limits
//! Per connection: at most [`MAX_STREAMS`] concurrent streams, a header
//! block of at most [`MAX_HEAD_BYTES`], at most 20 streams reset by the
//! client before they were answered (rapid reset) pending at once; a
//! connection with no open stream for the header deadline is sent GOAWAY
//! and closed, as an idle HTTP/1.1 connection is; pings find dead peers.
//!
//! # Why not `axum::serve`
//! It offers neither a header deadline nor a connection cap. Hyper's
//! header-read timeout runs from the moment a connection waits for a head —
//! when it opens and after every response — so it ends both a slowly sent
//! head and an idle keep-alive connection. Nothing here bounds a
//! connection's lifetime or the time a response takes to stream: body
//! deadlines are per request (see `server`), so long-lived responses and
//! upgraded connections are never cut by these limits.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::HttpLimits;

/// The largest request head (request line and headers) a connection
/// buffers; a longer one is refused by hyper with 431. Also bounds hyper's
/// read buffer, hence the memory of each open connection.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Concurrent streams one HTTP/2 connection may open; each request also
/// needs a slot of its interface's `maxInFlight`.
pub const MAX_STREAMS: u32 = 256;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 pings: a peer that answers none within the timeout is gone.
const H2_PING_EVERY: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The connection gauges and counters.
#[derive(Clone, Debug)]
pub struct ConnectionMetrics {
    /// `sluice_ingress_connections`: open client connections.
    pub open: Gauge,
    /// `sluice_ingress_connections_refused_total`: refused at the cap.
    pub refused: Counter,
}

/// Serves `app` on `listener` until `stop`, then waits for the open
/// connections to finish.
///
/// # Guarantees
/// - At most `limits.max_connections` connections are served at once.
/// - A connection waiting longer than `limits.header_timeout` for a request
///   head is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: ConnectionMetrics,
    stop: CancellationToken,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let cap = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(cap as usize));
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_pending_accept_reset_streams(20)
        .keep_alive_interval(H2_PING_EVERY)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let protocols = Arc::new(Protocols {
        h1,
        h2,
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
    });
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most often: wait a little
                    // rather than spin, the way hyper's examples do.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.inc();
            // A TLS client would read a cleartext answer as garbage: it is
            // only closed.
            if protocols.tls.is_none() {
                refuse(&stream);
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics.open.inc();
        let hold = ConnectionHold {
            _held: Arc::new(Held {
                _slot: slot,
                open: metrics.open.clone(),
            }),
            stop: stop.clone(),
        };
        let app = app.clone();
        let protocols = protocols.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let result = serve_connection(stream, app, &protocols, header_timeout, hold).await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    // Closing the socket now makes new connections fail at once, rather
    // than wait in the kernel's backlog for an accept that never comes.
    drop(listener);
    // Every connection holds one slot until it ends: all slots back means
    // all connections are done.
    let _all = slots.acquire_many(cap).await;
}

/// A connection's place under the cap, in every request's extensions. A
/// connection upgraded to a WebSocket keeps it while the socket lives, so
/// sockets count against `--max-connections` and the listener's drain
/// waits for them; `stop` tells the socket to drain.
#[derive(Clone)]
pub struct ConnectionHold {
    _held: Arc<Held>,
    pub stop: CancellationToken,
}

struct Held {
    _slot: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
    }
}

struct Protocols {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// Set with `--tls-cert`: every connection is TLS, the protocol chosen
    /// by ALPN.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves one connection with the protocol its first bytes name (with TLS:
/// its ALPN protocol), until it ends or `stop`; a connection that sends no
/// complete first bytes (a TLS handshake) by `header_timeout` is closed.
async fn serve_connection(
    mut stream: TcpStream,
    app: Router,
    protocols: &Protocols,
    header_timeout: Duration,
    hold: ConnectionHold,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let stop = hold.stop.clone();
    let deadline = tokio::time::Instant::now() + header_timeout;
    if let Some(acceptor) = &protocols.tls {
        let handshake = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
        };
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            // Nothing complete by the deadline.
            Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        return if h2 {
            serve_h2(io, app, protocols, header_timeout, hold).await
        } else {
            serve_h1(io, app, protocols, deadline, hold).await
        };
    }
    let preface = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        r = tokio::time::timeout_at(deadline, read_preface(&mut stream)) => r,
    };
    let (first, h2) = match preface {
        Ok(Ok(Some(read))) => read,
        // Closed before a first request, or nothing complete by the deadline.
        Ok(Ok(None)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e.into()),
    };
    let io = TokioIo::new(Rewound::new(first, stream));
    if h2 {
        serve_h2(io, app, protocols, header_timeout, hold).await
    } else {
        serve_h1(io, app, protocols, deadline, hold).await
    }
}

/// HTTP/2 on `io` until it ends, `stop`, or no stream has been open for
/// `header_timeout` (then GOAWAY and a graceful end).
async fn serve_h2<I>(
    io: TokioIo<I>,
    app: Router,
    protocols: &Protocols,
    header_timeout: Duration,
    hold: ConnectionHold,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stop = hold.stop.clone();
    let activity = Arc::new(Activity::new());
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = tracked.begin();
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(hold.clone());
        let call = app.clone().oneshot(req);
        async move {
            let response = call.await;
            drop(busy);
            response
        }
    });
    let mut conn = std::pin::pin!(protocols.h2.serve_connection(io, service));
    let mut idle_check = tokio::time::interval(header_timeout / 4);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = conn.as_mut() => return Ok(r?),
            _ = stop.cancelled() => break,
            _ = idle_check.tick() => if activity.idle_for() >= header_timeout { break },
        }
    }
    conn.as_mut().graceful_shutdown();
    Ok(conn.await?)
}

/// HTTP/1.1 on `io` (with upgrades) until it ends or `stop`; the first
/// head is due by `deadline`.
async fn serve_h1<I>(
    io: TokioIo<I>,
    app: Router,
    protocols: &Protocols,
    deadline: tokio::time::Instant,
    hold: ConnectionHold,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stop = hold.stop.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(hold.clone());
        app.clone().oneshot(req)
    });
    // The first head's deadline counts from the connection's opening,
    // the first bytes (or the TLS handshake) included.
    let mut h1 = protocols.h1.clone();
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    h1.header_read_timeout(left.max(Duration::from_millis(1)));
    let mut conn = std::pin::pin!(h1.serve_connection(io, service).with_upgrades());
    tokio::select! {
        r = conn.as_mut() => Ok(r?),
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            Ok(conn.await?)
        }
    }
}

/// Reads until the bytes read either are the HTTP/2 preface (`true`) or
/// cannot begin it (`false`, HTTP/1.x); `None` when the peer closed first.
/// Returns the bytes read, to be served again.
async fn read_preface(stream: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, bool)>> {
    let mut buf = vec![0u8; H2_PREFACE.len()];
    let mut len = 0;
    while len < H2_PREFACE.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(None);
        }
        len += n;
        if buf[..len] != H2_PREFACE[..len] {
            buf.truncate(len);
            return Ok(Some((buf, false)));
        }
    }
    Ok(Some((buf, true)))
}

/// Open streams of one HTTP/2 connection and when the last one ended.
struct Activity {
    open: AtomicUsize,
    /// Milliseconds after `since` when the last stream ended.
    last: AtomicU64,
    since: tokio::time::Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            since: tokio::time::Instant::now(),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.open.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// How long the connection has had no open stream.
    fn idle_for(&self) -> Duration {
        if self.open.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        let last = self.since + Duration::from_millis(self.last.load(Ordering::SeqCst));
        tokio::time::Instant::now().saturating_duration_since(last)
    }
}

/// A stream being answered; dropping it records when it ended.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.last.store(ms, Ordering::SeqCst);
        a.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A stream whose first bytes were already read: they are read again first.
struct Rewound {
    first: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl Rewound {
    fn new(first: Vec<u8>, inner: TcpStream) -> Self {
        Self {
            first,
            at: 0,
            inner,
        }
    }
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.first.len() {
            let n = (self.first.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.first[at..at + n]);
            self.at += n;
            if self.at == self.first.len() {
                self.first = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Answers a connection over the cap with 503 and closes it. One
/// non-blocking write: a refusal never waits on the client.
fn refuse(stream: &TcpStream) {
    let body = format!(
        r#"{{"error":{{"code":"too_many_connections","message":"the ingress has its maximum of open connections","request_id":"{}"}}}}"#,
        uuid::Uuid::new_v4()
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}
