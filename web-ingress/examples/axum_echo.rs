//! A bare axum server that echoes a POSTed JSON body: the baseline the
//! ingress benchmark compares against on the same machine.
//!
//! `cargo run --release -p sluice-web-ingress --example axum_echo -- 127.0.0.1:8090`

use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".to_string());
    let app = Router::new().route("/echo", post(|Json(v): Json<Value>| async move { Json(v) }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
