//! sluice platform: the contracts every sluice process shares.
//!
//! This crate must not depend on any other sluice crate and must not know
//! about HTTP (beyond the OTLP exporter's transport), pipelines' node
//! graphs or Kubernetes: it moves signed,
//! opaque envelopes between processes and says whether one is genuine.
//!
//! # Layout
//! - [`keys`]: the Redis key layout of DESIGN §5 (`sluice:{ns/p}:…`).
//! - [`envelope`]: the envelope and its stream-entry codec (`v`, `k`, `m`, `s`).
//! - [`keyring`]: the HMAC key ring (raw or per-group derived keys), loaded
//!   from a directory and reloaded, and the derived directory of one role.
//! - [`signing`]: signing and the verification chain of DESIGN §6.
//! - [`rejection`]: why an entry was refused (the chain's reasons, the
//!   metric's labels).
//! - [`backend`]: the error every adapter reports and the fault injector.
//! - [`queue`]: the `Queue` and `ReplyChannel` ports (streams with a consumer group).
//! - [`kv`]: the `Kv` port (replay guard).
//! - [`memory`]: the in-memory adapters of all three ports.
//! - [`redis`]: the Redis adapters of all three ports (fred), and a test server.
//! - [`tcp`]: the tcp profile's transport: the hub serving the ingress's
//!   memory queues and replay guard to worker processes, the workers'
//!   `Queue` client, the authenticated session and the frames' format.
//! - [`conformance`]: one suite per port, run against every adapter.
//! - [`metrics`]: Prometheus families shared by the runtime processes.
//! - [`clock`]: wall-clock milliseconds, the unit of `ts` and deadlines.
//! - [`listen`]: binding `[::]` with an IPv4 fallback, for every listener.
//! - [`telemetry`]: logging setup, OTLP trace export and the runtime's spans.

pub mod backend;
pub mod clock;
pub mod codec;
pub mod conformance;
pub mod envelope;
pub mod keyring;
pub mod keys;
pub mod kv;
pub mod listen;
pub mod memory;
pub mod metrics;
pub mod pause;
pub mod queue;
pub mod redis;
pub mod rejection;
pub mod signing;
pub mod tcp;
pub mod telemetry;

pub use backend::{BackendError, Faults};
pub use codec::Format;
pub use envelope::{DeadLetterNote, Envelope, HandBackNote, Kind, ReplyError, StreamEntry};
pub use keyring::{KeyRing, KeyRingError, SharedKeyRing};
pub use keys::Keys;
pub use kv::Kv;
pub use pause::Pause;
pub use queue::{Completion, Delivery, Depth, Forward, Held, Queue, ReplyChannel};
pub use redis::{RedisBackend, RedisConfig};
pub use signing::{At, Rejection, SignError, Signer, VerifiedReply, Verifier, VerifyError};
