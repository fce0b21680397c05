//! The public HTTP listener: accepts connections up to a cap and serves each
//! with HTTP/1.1 under a header deadline, until told to stop.
//!
//! ```text
//! accept ─▶ connection cap ─┬─ full: 503 written, connection closed, counted
//!                           └─ hyper http1: head ≤ MAX_HEAD_BYTES, by the header deadline ─▶ router
//! stop   ─▶ no more accepts ─▶ each connection finishes the request it is on,
//!           idle ones close ─▶ returns once every connection has ended
//! ```
//!
//! # Why not `axum::serve`
//! It offers neither a header deadline nor a connection cap. Hyper's
//! header-read timeout runs from the moment a connection waits for a head —
//! when it opens and after every response — so it ends both a slowly sent
//! head and an idle keep-alive connection. Nothing here bounds a
//! connection's lifetime or the time a response takes to stream: body
//! deadlines are per request (see `server`), so long-lived responses and
//! upgraded connections are never cut by these limits.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::HttpLimits;

/// The largest request head (request line and headers) a connection
/// buffers; a longer one is refused by hyper with 431. Also bounds hyper's
/// read buffer, hence the memory of each open connection.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

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
) {
    let cap = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(cap as usize));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
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
            refuse(&stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics.open.inc();
        let open = metrics.open.clone();
        let app = app.clone();
        let stop = stop.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            app.clone().oneshot(req.map(Body::new))
        });
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            open.dec();
            drop(slot);
        });
    }
    // Closing the socket now makes new connections fail at once, rather
    // than wait in the kernel's backlog for an accept that never comes.
    drop(listener);
    // Every connection holds one slot until it ends: all slots back means
    // all connections are done.
    let _all = slots.acquire_many(cap).await;
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
