//! The Redis adapters of the `Queue`, `ReplyChannel` and `Kv` ports, on
//! [`fred`] (the project's one Redis client).
//!
//! ```text
//!              ┌────────────── RedisBackend ───────────────┐
//!   Queue ─────┤ XADD · XREADGROUP · XCLAIM · XAUTOCLAIM    │
//!              │ MULTI{XADD… XACK XDEL} · XGROUP CREATE     │──► Redis ≥ 7.0
//!   Reply ─────┤ XREAD · XTRIM MINID · EXISTS · PEXPIRE     │
//!   Kv ────────┤ SET NX GET PX · GET · DEL                  │
//!              └─ pool (ordinary) + dedicated (blocking) ───┘
//! ```
//!
//! One [`RedisBackend`] implements all three ports, as one Redis holds the
//! queues and the reply streams: a completion can forward to a reply
//! stream in the same `MULTI`. The conformance suites of
//! [`crate::conformance`] run against it in `tests/redis_conformance.rs`.
//!
//! # Layout
//! - [`config`]: [`RedisConfig`], parsed from a URL; never shows the password.
//! - `backend`: connections (pool + dedicated blocking ones), timeouts,
//!   reconnects, error mapping.
//! - `queue`, `reply`, `kv`: the three ports.
//! - `cursor`: where the reader of one reply stream stands (`reply`'s state
//!   in the backend).
//! - `stats`: [`StreamStats`], a queue's counters for autoscaling.
//! - `acl`: ACL users, for the operator that administers a managed Redis.
//! - `wire`: arguments and replies of the stream commands.
//! - [`testing`]: a real `redis-server` for tests.

pub mod config;
pub mod testing;

mod acl;
mod backend;
mod cursor;
mod kv;
mod queue;
mod reply;
mod stats;
mod wire;

pub use backend::RedisBackend;
pub use config::{ConfigError, RedisConfig};
pub use stats::StreamStats;
