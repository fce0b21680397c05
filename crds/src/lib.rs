//! sluice crds: the `StreamPipeline` API (group `sluice.dev`, version
//! `v1alpha1`), its defaulting and validation, the compile step from a spec to
//! the execution [`Plan`] that every runtime process runs, and the generated
//! CustomResourceDefinition.
//!
//! This crate must not depend on any other sluice crate, perform I/O beyond
//! reading a manifest file, or know how nodes are executed.
//!
//! # Layout
//! - [`types`]: the resource types (kube `CustomResource` + schemars).
//! - [`units`]: durations (`5s`) and sizes (`64Mi`) as they appear in specs.
//! - [`limits`]: every bound on what a spec may hold (numbers, durations,
//!   sizes, lengths, counts, nesting), shared by validation and the CRD.
//! - [`names`]: the syntax of Kubernetes names and interface paths.
//! - [`defaults`]: what a spec left out becomes.
//! - [`validate`]: every rule a spec must satisfy, with field paths.
//! - [`plan`]: the compiled, validated execution plan.
//! - [`replay_budget`]: how many replay-guard nonces an ingress may leave
//!   in managed Redis.
//! - [`key_needs`]: which derived keys the processes of each group hold.
//! - [`generation`]: the plan generation every request envelope carries.
//! - [`graphql`]: the types a `graphql` interface declares, parsed.
//! - [`manifest`]: reading a StreamPipeline file for a local run.
//! - [`crd`]: the generated CRDs with the structural fixes and CEL rules.
//! - [`dead_letter_action`]: the `DeadLetterAction` resource (a person's
//!   list, redrive or purge of a pipeline's dead letters).
//! - [`yaml`]: bounded YAML reading (size, depth, aliases, duplicate keys) and
//!   the one style generated YAML is written in.

pub mod crd;
pub mod dead_letter_action;
pub mod defaults;
pub mod generation;
pub mod graphql;
pub mod key_needs;
pub mod limits;
pub mod manifest;
pub mod names;
pub mod plan;
pub mod replay_budget;
pub mod types;
pub mod units;
pub mod validate;
pub mod yaml;

pub use key_needs::KeyNeeds;
pub use manifest::{load_manifest, parse_manifest, parse_manifest_bytes, ManifestError};
pub use plan::{
    compile, AuthPlan, GraphqlOperationPlan, GraphqlPlan, GraphqlResult, GroupPlan, InterfacePlan,
    Next, NodePlan, PipelineId, Plan, WebSocketPlan,
};
pub use types::*;
pub use validate::{validate, validate_id, FieldError};
