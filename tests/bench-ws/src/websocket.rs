//! The WebSocket benchmark: a bare axum WebSocket echo, and a load
//! generator that keeps a window of messages in flight per connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::ws::{Message as AxumMessage, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::Seen;

pub async fn echo(listen: SocketAddr) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() {
        bail!("--listen {listen}: the benchmark binds loopback only");
    }
    let app = axum::Router::new().route(
        "/echo",
        get(|ws: WebSocketUpgrade| async { ws.on_upgrade(echo_socket) }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn echo_socket(mut socket: WebSocket) {
    while let Some(Ok(m)) = socket.recv().await {
        if let AxumMessage::Text(t) = m {
            if socket.send(AxumMessage::Text(t)).await.is_err() {
                return;
            }
        }
    }
}

pub async fn load(
    url: String,
    conns: usize,
    window: usize,
    warmup: Duration,
    duration: Duration,
    message: String,
) -> anyhow::Result<()> {
    if conns == 0 || window == 0 {
        bail!("--conns and --window must be at least 1");
    }
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + warmup;
    let measure_to = measure_from + duration;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .with_context(|| format!("connect {url}"))?;
        let message = message.clone();
        tasks.push(tokio::spawn(async move {
            drive(socket, window, message, start, measure_from, measure_to).await
        }));
    }
    let mut total = Seen::default();
    for t in tasks {
        total.add(t.await??);
    }
    total.print("messages/s", "answers", duration);
    Ok(())
}

/// Keeps `window` messages in flight on one socket until `to`; answers on
/// one socket come back in the order sent (an echo, an ordered interface).
async fn drive(
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    window: usize,
    message: String,
    start: Instant,
    from: Instant,
    to: Instant,
) -> anyhow::Result<Seen> {
    let (mut tx, mut rx) = socket.split();
    tokio::time::sleep_until(start.into()).await;
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(window);
    let mut seen = Seen::default();
    for _ in 0..window {
        tx.send(Message::text(message.clone())).await?;
        sent.push_back(Instant::now());
    }
    while let Some(frame) = rx.next().await {
        let Message::Text(text) = frame? else {
            continue;
        };
        let now = Instant::now();
        let at = sent
            .pop_front()
            .context("an answer to a message never sent")?;
        if now >= from && now < to {
            // Each answer is both what the rate counts and a unit.
            seen.counted += 1;
            seen.units += 1;
            if text.as_str().contains(r#""error""#) {
                seen.errors += 1;
            }
            let us = now.duration_since(at).as_micros();
            seen.latencies_us
                .push(u32::try_from(us).unwrap_or(u32::MAX));
        }
        if now >= to {
            if sent.is_empty() {
                break;
            }
            continue;
        }
        tx.send(Message::text(message.clone())).await?;
        sent.push_back(Instant::now());
    }
    let _ = tx.close().await;
    Ok(seen)
}
