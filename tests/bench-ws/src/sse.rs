//! The SSE benchmark: a bare axum server that streams a POSTed array back
//! as Server-Sent Events, and a load generator that streams one POST after
//! another on each connection, counting chunk events.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::response::sse::{Event, Sse};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Json;
use futures::stream::{self, Stream};
use serde_json::{json, Value};

use crate::Seen;

pub async fn echo(listen: SocketAddr) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() {
        bail!("--listen {listen}: the benchmark binds loopback only");
    }
    let app = axum::Router::new().route("/stream", post(stream_back));
    // Each event is its own small write: without TCP_NODELAY (which the
    // ingress sets) Nagle's algorithm would hold them for the peer's ACK.
    let listener = tokio::net::TcpListener::bind(listen).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

/// Each item of the body's array (or of its `words`) as a `chunk` event
/// with an id, then `result` with the count: the events sluice's split
/// node makes, with no pipeline behind them.
async fn stream_back(
    Json(body): Json<Value>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let items = match body {
        Value::Array(items) => items,
        mut other => match other.get_mut("words").map(Value::take) {
            Some(Value::Array(items)) => items,
            _ => vec![],
        },
    };
    let n = items.len();
    let chunks = items.into_iter().enumerate().map(|(i, item)| {
        Ok(Event::default()
            .id(format!("1.{}", i + 1))
            .event("chunk")
            .data(item.to_string()))
    });
    let result = Event::default()
        .event("result")
        .data(json!({ "chunks": n }).to_string());
    Sse::new(stream::iter(chunks.chain([Ok(result)])))
}

pub async fn load(
    url: String,
    conns: usize,
    warmup: Duration,
    duration: Duration,
    body: String,
) -> anyhow::Result<()> {
    if conns == 0 {
        bail!("--conns must be at least 1");
    }
    let start = Instant::now() + Duration::from_millis(200);
    let from = start + warmup;
    let to = from + duration;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        // One client per connection: each keeps its own connection alive.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(30))
            .build()?;
        let (url, body) = (url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            drive(client, url, body, start, from, to).await
        }));
    }
    let mut total = Seen::default();
    for t in tasks {
        total.add(t.await??);
    }
    total.print("chunks/s", "streams", duration);
    Ok(())
}

/// Streams POSTs one after another until `to`; counts the chunk events of
/// the streams that ended inside the measured window (`counted`; `units`
/// the streams), and a stream's time from the POST to its last event.
async fn drive(
    client: reqwest::Client,
    url: String,
    body: String,
    start: Instant,
    from: Instant,
    to: Instant,
) -> anyhow::Result<Seen> {
    tokio::time::sleep_until(start.into()).await;
    let mut seen = Seen::default();
    while Instant::now() < to {
        let began = Instant::now();
        let mut resp = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let ok = resp.status().is_success();
        let (mut chunks, mut tail, mut errored) = (0u64, Vec::new(), !ok);
        while let Some(bytes) = resp.chunk().await? {
            // Events may be split across reads: count whole lines only.
            tail.extend_from_slice(&bytes);
            let cut = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            for line in tail[..cut].split(|b| *b == b'\n') {
                if line == b"event: chunk" {
                    chunks += 1;
                } else if line == b"event: error" {
                    errored = true;
                }
            }
            tail.drain(..cut);
        }
        let now = Instant::now();
        if now >= from && now < to {
            seen.counted += chunks;
            seen.units += 1;
            seen.errors += u64::from(errored);
            let us = now.duration_since(began).as_micros();
            seen.latencies_us
                .push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }
    Ok(seen)
}
