//! sluice operator: reconciles `StreamPipeline` resources into the workloads
//! that run them (DESIGN §4).
//!
//! The core is pure: [`render::desired`] turns a StreamPipeline and the
//! operator's [`OperatorSettings`] into the typed Kubernetes objects to
//! apply, with no API server, clock or randomness involved, so it is
//! golden-tested (`tests/golden.rs`). The reconciler ([`reconcile`]) lists
//! what the pipeline owns, validates through `desired`, creates the
//! random-content Secrets when absent ([`secrets`]), server-side applies
//! what differs ([`apply`]), deletes owned objects no longer desired
//! ([`owned_kinds`]) and writes status only when it changed ([`status`]).
//! [`run()`] is the process: the `/metrics` endpoints, leader election, the
//! controller, the autoscaler, the dead-letter actions and the queue observer; the `sluice-operator` binary is a thin `main.rs` over it,
//! tested black-box against the in-memory API stand-in (`tests/`).
//!
//! This crate depends on `sluice-crds`, `sluice-platform` (the autoscaler
//! reads queue counters through its Redis adapter) and `sluice-web-ingress`
//! for its dead-letter listing, redrive and purge only (nothing else of the
//! runtime); the runtime's flags and variables it relies on are declared once
//! in [`render::contract`] and checked end to end.
//!
//! # Layout
//! - [`run()`](run::run): the process (client, endpoints, leader election, controller,
//!   autoscaler, dead-letter actions, queue observer).
//! - [`dead_letter_actions`]: DeadLetterActions carried out with the pipeline's key ring.
//! - [`observe`]: the queue observer (`status.queues`).
//! - [`key_ring_status`]: the `KeyRing` condition.
//! - [`redis_target`]: where a pipeline's Redis is, from its Secrets.
//! - [`config`]: flags and `SLUICE_*` variables.
//! - [`controller`]: the kube-runtime `Controller` and what triggers reconciles.
//! - [`reconcile`]: one reconcile and its backoff.
//! - [`error`]: why a reconcile failed (shared by [`reconcile`] and
//!   [`secrets`]), and its metric label.
//! - [`apply`]: whether a desired object must be applied (hash + drift check),
//!   and the field manager of every write.
//! - [`object`]: a StreamPipeline read so that one bad object never stops
//!   the watch (spec decoded per object, errors kept with their path).
//! - [`plugin`]: `kubectl sluice` (binary `kubectl-sluice`): status, pause,
//!   resume and dlq through the Kubernetes API only.
//! - [`pipelines`]: the controllers' StreamPipeline stores, read by the
//!   autoscaler too.
//! - [`quantity`]: resource quantities compared by value (the API server
//!   stores them in canonical form).
//! - [`status`]: conditions and group status from the live workloads.
//! - [`referenced`]: Secrets the spec names but the pipeline does not own:
//!   external Redis's URL and CA (their versions roll the pods), and those
//!   of nodes and sidecars (nothing is applied until each carries the
//!   `sluice.dev/allow-reference` opt-in label).
//! - [`secrets`]: the create-if-absent key ring and Redis password Secrets,
//!   and each group's keys derived from the ring.
//! - [`redis_users`]: gives a running managed Redis the ACL users of a
//!   changed spec, as its `admin` user.
//! - [`rotation`]: key ring rotation, phase by phase (DESIGN §6).
//! - [`pause`]: `spec.paused`: the `Paused` condition (the key itself is
//!   written by [`redis_users`]).
//! - [`autoscale`]: the builtin autoscaler (backlog and rate from Redis,
//!   `/scale`) and the `Autoscaling` conditions.
//! - [`leader`]: leader election on a Lease.
//! - [`server`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`metrics`]: the Prometheus families.
//! - [`render`]: [`desired`], the objects of a pipeline, one module per
//!   object family ([`render::pods`], [`render::services`],
//!   [`render::redis`], [`render::policy`], [`render::autoscale`], ...),
//!   the key ring Secret and the runtime contract constants. Also at its
//!   earlier path, `resources`.
//! - [`clock`]: API timestamps and the rotation schedule's time type.
//! - [`hash`]: the `sluice.dev/config-hash` of pod templates.
//! - [`labels`]: labels, selectors and annotation keys.
//! - [`names`]: object names derived from the pipeline name, and their checks.
//! - [`settings`]: images, operator namespace, drain budget and where
//!   runtime pods export traces.

pub mod apply;
pub mod autoscale;
pub mod cache;
pub mod check;
pub mod clock;
pub mod config;
pub mod controller;
pub mod dead_letter_actions;
pub mod error;
pub mod events;
pub mod hash;
pub mod key_ring_status;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod object;
pub mod observe;
pub mod password_rotation;
pub mod pause;
pub mod pipelines;
pub mod plugin;
pub mod quantity;
pub mod reconcile;
pub mod redis_target;
pub mod redis_tls;
pub mod redis_users;
pub mod referenced;
pub mod render;
pub mod rotation;
pub mod run;
pub mod secrets;
pub mod server;
pub mod settings;
pub mod status;

/// The renderer's path before it was split by object family.
pub use render as resources;
pub use render::{
    desired, initial_key_secret, owned_kinds, redis_secret, Child, Desired, Error, GeneratedSecret,
    OwnedKind, Result,
};
pub use run::run;
pub use settings::{DrainBudget, OperatorSettings, RuntimeImages};
