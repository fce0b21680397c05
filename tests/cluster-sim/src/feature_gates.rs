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

const fn row(
    definition: &'static str,
    field: &'static str,
    gate: &'static str,
    served: Served,
) -> Row {
    Row {
        definition,
        field,
        gate,
        served,
    }
}

use Served::{Dropped, Unknown};

/// The table. Gate history from `pkg/features/versioned_kube_features.go` (1.33), the drops
/// from `dropDisabledFields` and its helpers in `pkg/api/pod/util.go` (called by the Pod,
/// PodTemplate, Deployment, ReplicaSet, StatefulSet, DaemonSet and Job strategies),
/// `dropDisabledFields` in `pkg/api/service/util.go`, `DropDisabledFields` in
/// `pkg/api/persistentvolumeclaim/util.go`, `dropStatefulSetDisabledFields` in
/// `pkg/registry/apps/statefulset/strategy.go`.
#[rustfmt::skip]
pub(crate) const ROWS: &[Row] = &[
    // Newer than 1.30: unknown fields there.
    // ContainerStopSignals: alpha in 1.33 (KEP-4960).
    row("io.k8s.api.core.v1.Lifecycle", "stopSignal", "ContainerStopSignals", Unknown),
    // PodLevelResources: alpha in 1.32 (KEP-2837).
    row("io.k8s.api.core.v1.PodSpec", "resources", "PodLevelResources", Unknown),
    // ImageVolume: alpha in 1.31 (KEP-4639).
    row("io.k8s.api.core.v1.Volume", "image", "ImageVolume", Unknown),
    // SupplementalGroupsPolicy: alpha in 1.31 (KEP-3619).
    row("io.k8s.api.core.v1.PodSecurityContext", "supplementalGroupsPolicy", "SupplementalGroupsPolicy", Unknown),
    // SELinuxChangePolicy: alpha in 1.32 (KEP-1710).
    row("io.k8s.api.core.v1.PodSecurityContext", "seLinuxChangePolicy", "SELinuxChangePolicy", Unknown),
    // HPAConfigurableTolerance: alpha in 1.33 (KEP-4951).
    row("io.k8s.api.autoscaling.v2.HPAScalingRules", "tolerance", "HPAConfigurableTolerance", Unknown),
    // CoordinatedLeaderElection: alpha in 1.31 (KEP-4355).
    row("io.k8s.api.coordination.v1.LeaseSpec", "strategy", "CoordinatedLeaderElection", Unknown),
    row("io.k8s.api.coordination.v1.LeaseSpec", "preferredHolder", "CoordinatedLeaderElection", Unknown),
    // In 1.30 behind a gate that is off by default: dropped unless the old object used them.
    // InPlacePodVerticalScaling: alpha 1.27, beta (on) only in 1.33; containers' resizePolicy.
    row("io.k8s.api.core.v1.Container", "resizePolicy", "InPlacePodVerticalScaling", Dropped),
    // UserNamespacesSupport: beta but off in 1.30, on from 1.33 (hostUsersInUse).
    row("io.k8s.api.core.v1.PodSpec", "hostUsers", "UserNamespacesSupport", Dropped),
    // RecursiveReadOnlyMounts: alpha in 1.30, beta (on) in 1.31 (rroInUse).
    row("io.k8s.api.core.v1.VolumeMount", "recursiveReadOnly", "RecursiveReadOnlyMounts", Dropped),
    // MatchLabelKeysInPodAffinity: alpha 1.29, beta (on) in 1.31.
    row("io.k8s.api.core.v1.PodAffinityTerm", "matchLabelKeys", "MatchLabelKeysInPodAffinity", Dropped),
    row("io.k8s.api.core.v1.PodAffinityTerm", "mismatchLabelKeys", "MatchLabelKeysInPodAffinity", Dropped),
    // DynamicResourceAllocation: alpha 1.26, beta (still off) in 1.32.
    row("io.k8s.api.core.v1.PodSpec", "resourceClaims", "DynamicResourceAllocation", Dropped),
    row("io.k8s.api.core.v1.ResourceRequirements", "claims", "DynamicResourceAllocation", Dropped),
    // ServiceTrafficDistribution: alpha in 1.30, beta (on) in 1.31.
    row("io.k8s.api.core.v1.ServiceSpec", "trafficDistribution", "ServiceTrafficDistribution", Dropped),
    // VolumeAttributesClass: alpha 1.29, beta (still off) in 1.31.
    row("io.k8s.api.core.v1.PersistentVolumeClaimSpec", "volumeAttributesClassName", "VolumeAttributesClass", Dropped),
    // MaxUnavailableStatefulSet: alpha since 1.24, off.
    row("io.k8s.api.apps.v1.RollingUpdateStatefulSetStrategy", "maxUnavailable", "MaxUnavailableStatefulSet", Dropped),
];

/// How the served version treats `field` of the type named `definition`, when it differs
/// from the bindings.
pub(crate) fn served(definition: &str, field: &str) -> Option<Served> {
    if !definition.starts_with("io.k8s.api.") {
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
