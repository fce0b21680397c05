//! Fields the Go types of the workspace's Kubernetes bindings (1.33) know but the served
//! version (1.30) treats differently: either the field does not exist yet in 1.30 (an unknown
//! field there: pruned with a warning, refused under `fieldValidation=Strict`, and "field not
//! declared in schema" for a server-side apply), or it exists but its feature gate is off by
//! default in 1.30, and the registry strategy drops it silently on create and on an update
//! whose old object did not use it (`dropDisabledFields` in `pkg/api/pod/util.go`, the PVC and
//! Service equivalents in `pkg/api/persistentvolumeclaim/util.go`, `pkg/api/service/util.go`).
//!
//! Rows are keyed by the OpenAPI definition that declares the field, so a row applies wherever
//! that type appears: in Pods and in the pod templates of every workload kind.

/// How the served version treats a field of the newer bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// Not part of the 1.30 API: an unknown field.
    Unknown,
    /// Part of the 1.30 API behind a gate that is off by default: dropped without a word.
    Dropped,
}

/// One field of one type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    /// OpenAPI definition name declaring the field.
    pub definition: &'static str,
    /// JSON name of the field.
    pub field: &'static str,
    /// Feature gate upstream guards the field with (documentation; pinned by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub gate: &'static str,
    /// What a 1.30 API server does with it.
    pub served: Served,
}

const CORE: &str = "io.k8s.api.core.v1.";

/// The table. Each row names the upstream source it was confirmed in.
pub(crate) const ROWS: &[Row] = &[
    // Lifecycle.stopSignal: added in 1.33 (KEP-4960, gate ContainerStopSignals, alpha);
    // staging/src/k8s.io/api/core/v1/types.go of release-1.30 has no StopSignal.
    Row {
        definition: "io.k8s.api.core.v1.Lifecycle",
        field: "stopSignal",
        gate: "ContainerStopSignals",
        served: Served::Unknown,
    },
];

/// How the served version treats `field` of the type named `definition`, when it differs
/// from the bindings.
pub(crate) fn served(definition: &str, field: &str) -> Option<Served> {
    if !definition.starts_with(CORE) && !definition.starts_with("io.k8s.api.") {
        return None;
    }
    ROWS.iter()
        .find(|r| r.definition == definition && r.field == field)
        .map(|r| r.served)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_names_its_gate_once() {
        for (i, r) in ROWS.iter().enumerate() {
            assert!(!r.gate.is_empty(), "{r:?}");
            assert!(
                !ROWS[..i]
                    .iter()
                    .any(|o| o.definition == r.definition && o.field == r.field),
                "{r:?} twice"
            );
        }
    }
}
