//! sluice web-ingress: serves a StreamPipeline's interfaces.
//!
//! It admits requests (in-flight limit, backlog, payload size), registers a
//! waiter per request, runs the ingress group's nodes, signs the envelope
//! for the first worker group, and completes the waiter from the verified
//! reply. In the memory profile it also runs every worker group inline, on
//! threads of their own; in the tcp profile it serves the hub its worker
//! processes connect to, and may start and supervise them.
//!
//! It must not trust caller-chosen ids as keys, tell a caller why an
//! envelope failed verification, or log key material.
//!
//! # Layout
//! - [`config`]: flags and `SLUICE_*` variables.
//! - [`listener`]: the HTTP listener: HTTP/1.1 and cleartext HTTP/2 on one port
//!   (connection cap, header deadline, stream limits, graceful stop).
//! - [`server`]: the router and the request handler.
//! - [`state`]: what every handler shares.
//! - [`admission`]: backlog and replay-budget admission.
//! - [`body`]: reading a request body (size, deadline, process-wide budget).
//! - [`json_scan`]: nesting and element limits checked before parsing.
//! - [`waiters`]: the waiter registry.
//! - [`auth`]: who calls an interface (bearer tokens, a trusted header).
//! - [`rate_limit`]: a token bucket per caller.
//! - [`idempotency`]: `Idempotency-Key`: repeats get the first answer.
//! - [`async_answers`]: `202` for asynchronous requests, and fetching their answers.
//! - [`replay_window`]: the replay-guard nonces admitted requests may hold.
//! - [`error`]: errors as HTTP responses.
//! - [`metrics`]: the ingress's metric families.
//! - [`runtime`]: start-up, reply listener, backlog sampler, inline workers, drain.
//! - [`threads`]: the CPUs shared between the HTTP runtime and the inline workers.
//! - [`request`]: what a request brings: its id, its body parsed, its span.
//! - [`job_id`]: the id an asynchronous answer is fetched with.
//! - [`sse`], [`stream_events`]: streamed answers (SSE or NDJSON).
//! - [`websocket`]: WebSocket interfaces.
//! - [`graphql`], [`graphql_cost`]: GraphQL interfaces, and what a document
//!   may cost before it is parsed.
//! - [`tls`]: TLS termination in the ingress itself.
//! - [`tcp_workers`], [`supervisor`]: the tcp profile's hub and the worker
//!   processes it starts.
//! - [`dead_letters`], [`dlq_command`]: listing, redriving and purging dead
//!   letters; [`admin`] serves them from this process (memory and tcp
//!   backends), [`admin_client`] asks it (`dlq --admin`).

pub mod admin;
pub mod admin_client;
pub mod admission;
pub mod async_answers;
pub mod auth;
pub mod body;
mod call;
pub mod config;
pub mod dead_letters;
pub mod dlq_command;
pub mod error;
pub mod graphql;
pub mod graphql_cost;
pub mod idempotency;
pub mod job_id;
pub mod json_scan;
pub mod listener;
pub mod metrics;
pub mod rate_limit;
pub mod replay_window;
pub mod request;
pub mod runtime;
pub mod server;
pub mod sse;
pub mod state;
mod stream_caller;
pub mod stream_events;
mod stream_store;
pub mod supervisor;
pub mod tcp_workers;
pub mod threads;
pub mod tls;
pub mod waiters;
pub mod websocket;

pub use config::{Cli, Command, Config, HttpLimits, LogFormat};
pub use runtime::{
    http_threads, keygen, load_plan, start, start_planned, start_with, Ingress, StartError,
};
