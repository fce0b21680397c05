//! sluice operator: reconciles `StreamPipeline` resources into the workloads
//! that run them (DESIGN §4).
//!
//! This first part is the pure core: [`resources::desired`] turns a
//! StreamPipeline and the operator's [`OperatorSettings`] into the typed
//! Kubernetes objects to apply, with no API server, clock or randomness
//! involved, so it is golden-tested (`tests/golden.rs`). The reconciler
//! (planned) validates, applies those objects with server-side apply,
//! creates the random-content Secrets when absent ([`initial_key_secret`],
//! [`initial_redis_secret`]), deletes owned objects no longer desired
//! ([`owned_kinds`]) and writes status.
//!
//! This crate depends on `sluice-crds` (and later `sluice-platform`) only,
//! never on the runtime crates; the runtime's flags and variables it relies
//! on are declared once in [`resources`] and checked end to end.
//!
//! # Layout
//! - [`resources`]: [`desired`], the objects of a pipeline, the key ring
//!   Secret and the runtime contract constants.
//! - [`redis`]: managed Redis (StatefulSet, Services, NetworkPolicy,
//!   password Secret, config file) or the external Redis URL.
//! - [`pod`]: restricted security contexts, sidecar hardening, probes,
//!   directory mounts and node Secret references.
//! - [`hash`]: the `sluice.dev/config-hash` of pod templates.
//! - [`labels`]: labels, selectors and annotation keys.
//! - [`names`]: object names derived from the pipeline name, and their checks.
//! - [`settings`]: images, operator namespace and drain budget.

pub mod hash;
pub mod labels;
pub mod names;
pub mod pod;
pub mod redis;
pub mod resources;
pub mod settings;

pub use redis::initial_redis_secret;
pub use resources::{
    desired, initial_key_secret, owned_kinds, Child, Desired, Error, GeneratedSecret, OwnedKind,
    Result,
};
pub use settings::{DrainBudget, OperatorSettings, RuntimeImages};
