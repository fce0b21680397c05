//! sluice-e2e: end-to-end tests of the Redis backbone. `sluice-web-ingress`
//! and `sluice-exec-worker` run as separate processes around a real
//! `redis-server`, as they will in Kubernetes pods, and are driven
//! black-box: HTTP in front, `/metrics` on every process, Redis inspected
//! directly.
//!
//! ```text
//!   test ──HTTP──▶ sluice-web-ingress ──XADD──▶ redis-server ◀──XREADGROUP── sluice-exec-worker × N
//!     │                  /metrics                  ▲                            /metrics (admin port)
//!     └──────────── scrape, kill -9, SIGTERM ──────┴── XLEN / XPENDING / XADD (raw RESP) ──┘
//! ```
//!
//! Every process binds 127.0.0.1 on a free port, writes its log into the
//! test's sandbox directory, and is killed by PID when its guard drops; a
//! failing test prints the tail of every log and keeps the directory.
//!
//! # Layout
//! - [`binaries`]: where the product binaries are (built once per test process).
//! - [`sandbox`]: a test's temporary directory: manifests, key ring, logs.
//! - [`process`]: process guards, and ingress/worker services that can be
//!   killed and restarted.
//! - [`http`]: the HTTP client the tests call interfaces with.
//! - [`metrics`]: scraping and reading Prometheus text.
//! - [`orders`]: inputs and expected answers of the orders example.
//! - [`forge`]: envelopes written straight onto a stream, as an attacker would.
//! - [`resp`]: a minimal Redis client for inspecting and forging stream entries.
//! - [`eventually`]: bounded waits for eventually-true conditions.
//! - [`dlq`]: the dead-letter command run as a user runs it, its listings read.

pub mod binaries;
pub mod dlq;
pub mod eventually;
pub mod forge;
pub mod http;
pub mod metrics;
pub mod orders;
pub mod process;
pub mod resp;
pub mod sandbox;

pub use binaries::{binary, example, INGRESS_BIN, WORKER_BIN};
pub use eventually::eventually;
pub use http::{Answer, Http};
pub use metrics::{scrape, Scrape};
pub use process::{Service, Spec};
pub use sandbox::Sandbox;
