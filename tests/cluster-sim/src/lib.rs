//! `cluster-sim`: an in-memory stand-in for the Kubernetes API server, so the operator,
//! kube-rs clients and `kubectl` can be tested end to end without a cluster. A test tool,
//! not part of the product; `README.md` lists what is real, simplified and missing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cluster_sim::Error> {
//! let sim = cluster_sim::ClusterSim::start().await?;
//! println!("KUBECONFIG={}", sim.kubeconfig_path().display());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`sim`]: starting, options, the handle (tokens, holds, faults, inspection, store access)
//! - `server`: HTTP routing, authentication, RBAC and fault hooks
//! - `watch`: watch streams over the store's event history
//! - `store`: objects, resourceVersions, history
//! - `ops`: the verbs and their semantics (versions, generation, finalizers, subresources)
//! - `fields`: managed fields and server-side apply
//! - `patch`: merge, JSON and strategic merge patches
//! - `protobuf`: the protobuf bodies kubectl's generators send for a few core kinds
//! - `builtin`: built-in objects decoded against their Go types (wrong types, unknown fields,
//!   `fieldValidation`)
//! - `feature_gates`: fields of the newer bindings the served version does not know or drops
//! - `warnings`: `Warning` response headers
//! - `schema`: CRD structural check, validation, pruning, defaults, CEL rules
//! - `resources`: served types and discovery documents
//! - `selectors`: label and field selectors
//! - `gc`: owner-reference garbage collection and namespace termination
//! - `controllers`: Deployment/StatefulSet rollout status, ReplicaSets, StatefulSet PVCs,
//!   default ServiceAccounts
//! - `pod_security`: Pod Security admission (`enforce` refuses Pods, `warn` warns)
//! - `rbac`: authorization of ServiceAccount tokens
//! - [`faults`]: fault injection and the request log
//! - `quantity`: resource quantities checked and stored in canonical form (`1024Mi` → `1Gi`)
//! - `downward`: the resources and divisors a container's env may read (`resourceFieldRef`)
//! - `immutable`: fields an update may not change (Deployment selector, StatefulSet spec,
//!   PVC spec but storage growth, Service clusterIP)
//! - `defaults`, `table`, `openapi`: defaulting, Table/metadata renderings, minimal OpenAPI
//! - [`error`]: `ApiError` (the `Status` answers) and `Error`

mod builtin;
mod controllers;
mod defaults;
mod downward;
pub mod error;
pub mod faults;
mod feature_gates;
mod fields;
mod gc;
mod immutable;
mod openapi;
mod ops;
mod patch;
mod pod_security;
mod protobuf;
mod quantity;
pub mod rbac;
mod resources;
mod schema;
mod selectors;
mod server;
pub mod sim;
mod store;
mod table;
mod warnings;
mod watch;

pub use builtin::FieldValidation;
pub use controllers::CONTROLLER_MANAGER;
pub use error::{ApiError, Error, Result};
pub use faults::{counts_by_verb, RequestMatch, RequestRecord};
pub use rbac::{Attributes, AuthzDecision};
pub use sim::{ClusterSim, ClusterSimHandle, ClusterSimOptions};
