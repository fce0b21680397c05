//! The streaming benchmarks' halves (run by `scripts/bench-websocket` and
//! `scripts/bench-sse`):
//!
//! - `echo`: the WebSocket reference, a bare axum WebSocket server that
//!   writes every text message back as it came — the upper bound of any
//!   WebSocket ingress on the machine.
//! - `load`: opens WebSocket connections, keeps a window of messages in
//!   flight on each (a new one per answer), and prints answers per second,
//!   latency percentiles and how many answers were errors.
//! - `sse-echo`: the SSE reference, a bare axum server that streams each
//!   item of a POSTed array back as a Server-Sent Event, then a result.
//! - `sse-load`: streams one POST after another on each connection and
//!   prints chunks per second and stream latency percentiles.
//!
//! Measures; asserts nothing. Not part of the product.

mod sse;
mod websocket;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "WebSocket and SSE benchmarks: bare reference servers and load generators")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve `GET /echo` (WebSocket): every text message is written back.
    Echo {
        /// Address to listen on (loopback only).
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
    },
    /// Load a WebSocket endpoint and print what it sustained.
    Load {
        /// `ws://host:port/path`.
        #[arg(long)]
        url: String,
        /// Connections.
        #[arg(long, default_value_t = 64)]
        conns: usize,
        /// Messages in flight per connection.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Seconds of measurement, after `--warmup` seconds unmeasured.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// The text of every message.
        #[arg(long, default_value = r#"{"input": {"name": "benchmark"}}"#)]
        message: String,
    },
    /// Serve `POST /stream` (SSE): each item of the JSON array in the body
    /// is one `chunk` event, then a `result` event with their count.
    SseEcho {
        /// Address to listen on (loopback only).
        #[arg(long, default_value = "127.0.0.1:8091")]
        listen: SocketAddr,
    },
    /// Load an SSE endpoint and print the chunks per second it sustained.
    SseLoad {
        /// `http://host:port/path`.
        #[arg(long)]
        url: String,
        /// Connections, each streaming one POST after another.
        #[arg(long, default_value_t = 64)]
        conns: usize,
        /// Seconds of measurement, after `--warmup` seconds unmeasured.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// The body of every POST.
        #[arg(long)]
        body: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Echo { listen } => rt.block_on(websocket::echo(listen)),
        Command::SseEcho { listen } => rt.block_on(sse::echo(listen)),
        Command::SseLoad {
            url,
            conns,
            duration,
            warmup,
            body,
        } => rt.block_on(sse::load(
            url,
            conns,
            Duration::from_secs(warmup),
            Duration::from_secs(duration),
            body,
        )),
        Command::Load {
            url,
            conns,
            window,
            duration,
            warmup,
            message,
        } => rt.block_on(websocket::load(
            url,
            conns,
            window,
            Duration::from_secs(warmup),
            Duration::from_secs(duration),
            message,
        )),
    }
}

/// The `p` quantile of sorted microseconds, in milliseconds.
fn percentile(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 * p) as usize).min(sorted_us.len() - 1);
    f64::from(sorted_us[i]) / 1000.0
}

/// What the connections of one load run saw in the measured window.
#[derive(Default)]
struct Seen {
    /// What the rate is of: answers, or chunks.
    counted: u64,
    /// Answers, or whole streams.
    units: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

impl Seen {
    fn add(&mut self, other: Seen) {
        self.counted += other.counted;
        self.units += other.units;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
    }

    /// One line: `<rate> R p50_ms A p99_ms B errors E <units> U`, the
    /// format `scripts/bench-websocket` and `scripts/bench-sse` read.
    fn print(mut self, rate: &str, units: &str, duration: Duration) {
        self.latencies_us.sort_unstable();
        let pct = |p| percentile(&self.latencies_us, p);
        println!(
            "{rate} {:.0} p50_ms {:.2} p99_ms {:.2} errors {} {units} {}",
            self.counted as f64 / duration.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            self.errors,
            self.units
        );
    }
}
