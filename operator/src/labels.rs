//! Labels, selectors and annotations on the objects the operator creates.
//!
//! Every object of pipeline `P` carries the recommended
//! `app.kubernetes.io/*` labels plus `sluice.dev/pipeline: P` (and
//! `sluice.dev/group: <g>` on a group's workload and pods). Selectors use only
//! labels that never change for the life of the object they select, because a
//! Deployment's or StatefulSet's selector is immutable.

use std::collections::BTreeMap;

pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const PART_OF: &str = "app.kubernetes.io/part-of";
/// The pipeline an object belongs to; the NetworkPolicy of managed Redis
/// admits pods carrying it.
pub const PIPELINE: &str = "sluice.dev/pipeline";
/// The process group whose pods an object runs or selects.
pub const GROUP: &str = "sluice.dev/group";

/// Value of `app.kubernetes.io/name` and `part-of`.
pub const APP: &str = "sluice";
/// Value of `app.kubernetes.io/managed-by`; also the server-side apply field manager.
pub const MANAGER: &str = "sluice-operator";

/// Pod template annotation: hash of what the pods run (see [`crate::hash`]);
/// a change rolls the pods.
pub const CONFIG_HASH: &str = "sluice.dev/config-hash";
/// Pod template annotation: `name/resourceVersion` of the Secrets the pods
/// read once at start and the pipeline does not own (external Redis's URL
/// and CA); a change rolls the pods (see [`crate::referenced`]).
pub const SECRET_VERSIONS: &str = "sluice.dev/secret-versions";
/// Pod templates of a pipeline whose managed Redis speaks TLS: a digest of
/// the CA in `P-redis`. Pods read the CA (Redis its certificate) only at
/// start, so a new CA rolls them all.
pub const REDIS_CA: &str = "sluice.dev/redis-ca";
/// Label a Secret's owner puts on it to let pipelines reference it from a
/// node (`secretRef`) or a sidecar (`secretKeyRef`, `envFrom`); value
/// `"true"`. Without it, whoever may edit a StreamPipeline could read every
/// Secret of the namespace through the pods (see [`crate::referenced`]).
pub const ALLOW_REFERENCE: &str = "sluice.dev/allow-reference";
/// Key ring Secret annotation: the rotation phase (DESIGN §6), `stable` outside a rotation.
pub const ROTATION_PHASE: &str = "sluice.dev/rotation-phase";
/// Key ring Secret annotation: RFC 3339 time the phase last changed.
pub const ROTATION_UPDATED: &str = "sluice.dev/rotation-updated";
/// Rotation phase of a fresh ring.
pub const ROTATION_STABLE: &str = "stable";
/// Pod template annotation naming the container `kubectl logs/exec` picks.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// The part of a pipeline an object belongs to (`app.kubernetes.io/component`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The ingress group's workload, Service, Ingress and PDB.
    Ingress,
    /// A worker group's workload and HPA.
    Worker,
    /// Managed Redis: StatefulSet, Services, NetworkPolicy, password Secret.
    Redis,
    /// The `P-pipeline` ConfigMap.
    Config,
    /// The `P-ipc-keys` key ring Secret.
    Keys,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Ingress => "ingress",
            Component::Worker => "worker",
            Component::Redis => "redis",
            Component::Config => "config",
            Component::Keys => "keys",
        }
    }
}

/// The labels of an object of `pipeline`.
pub fn labels(
    pipeline: &str,
    component: Component,
    group: Option<&str>,
) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (NAME.to_string(), APP.to_string()),
        (INSTANCE.to_string(), pipeline.to_string()),
        (COMPONENT.to_string(), component.as_str().to_string()),
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (PART_OF.to_string(), APP.to_string()),
        (PIPELINE.to_string(), pipeline.to_string()),
    ]);
    if let Some(g) = group {
        l.insert(GROUP.to_string(), g.to_string());
    }
    l
}

/// Selects the pods of one group. The component is left out on purpose: a
/// group that changes role keeps its Deployment (same name) and selector.
pub fn group_selector(pipeline: &str, group: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (PIPELINE.to_string(), pipeline.to_string()),
        (GROUP.to_string(), group.to_string()),
    ])
}

/// Selects the managed Redis pods of a pipeline.
pub fn redis_selector(pipeline: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (PIPELINE.to_string(), pipeline.to_string()),
        (COMPONENT.to_string(), Component::Redis.as_str().to_string()),
    ])
}

/// Label selector (list/watch syntax) matching every object the operator
/// created for `pipeline`; the reconciler lists owned kinds with it while
/// their caches are not ready (and then checks the controller owner's uid).
pub fn owned_selector(pipeline: &str) -> String {
    format!("{PIPELINE}={pipeline},{MANAGED_BY}={MANAGER}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_carry_the_recommended_keys_and_the_group_when_given() {
        let l = labels("orders", Component::Worker, Some("cpu"));
        assert_eq!(l[NAME], "sluice");
        assert_eq!(l[INSTANCE], "orders");
        assert_eq!(l[COMPONENT], "worker");
        assert_eq!(l[MANAGED_BY], "sluice-operator");
        assert_eq!(l[PART_OF], "sluice");
        assert_eq!(l[PIPELINE], "orders");
        assert_eq!(l[GROUP], "cpu");
        assert!(!labels("orders", Component::Config, None).contains_key(GROUP));
    }

    #[test]
    fn selectors_are_subsets_of_the_pod_labels() {
        let pod = labels("p", Component::Ingress, Some("web"));
        assert!(group_selector("p", "web")
            .iter()
            .all(|(k, v)| pod.get(k) == Some(v)));
        let redis = labels("p", Component::Redis, None);
        assert!(redis_selector("p")
            .iter()
            .all(|(k, v)| redis.get(k) == Some(v)));
        assert_eq!(
            owned_selector("p"),
            "sluice.dev/pipeline=p,app.kubernetes.io/managed-by=sluice-operator"
        );
    }
}
