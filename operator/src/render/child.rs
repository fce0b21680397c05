//! One object to apply ([`Child`]) and the kinds it can be ([`OwnedKind`],
//! [`owned_kinds`]), including KEDA's `ScaledObject` and
//! `TriggerAuthentication`, which k8s-openapi has no types for.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An object kind the operator may create, with what a dynamic client and
/// an RBAC rule need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedKind {
    /// API group, `""` for core.
    pub group: &'static str,
    pub version: &'static str,
    pub api_version: &'static str,
    pub kind: &'static str,
    /// Resource name in URLs and RBAC rules.
    pub plural: &'static str,
}

impl OwnedKind {
    /// A kind whose API may be absent from a cluster (KEDA's): listing it
    /// finds nothing there, and applying it is reported in status instead
    /// of failing the reconcile.
    pub fn optional(&self) -> bool {
        self.group == <ScaledObject as k8s_openapi::Resource>::GROUP
    }

    pub const fn of<K: k8s_openapi::Resource>() -> Self {
        Self {
            group: K::GROUP,
            version: K::VERSION,
            api_version: K::API_VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
        }
    }
}

const OWNED_KINDS: [OwnedKind; 10] = [
    OwnedKind::of::<ConfigMap>(),
    OwnedKind::of::<Service>(),
    OwnedKind::of::<StatefulSet>(),
    OwnedKind::of::<Deployment>(),
    OwnedKind::of::<PodDisruptionBudget>(),
    OwnedKind::of::<HorizontalPodAutoscaler>(),
    OwnedKind::of::<Ingress>(),
    OwnedKind::of::<NetworkPolicy>(),
    OwnedKind::of::<ScaledObject>(),
    OwnedKind::of::<TriggerAuthentication>(),
];

/// The kinds [`desired`](super::desired) can produce: the reconciler lists each in the
/// pipeline's namespace with [`crate::labels::owned_selector`] and deletes what is
/// controlled by this pipeline but no longer desired (a removed group's
/// Deployment, managed Redis after switching to external, ...).
///
/// Secrets are not here on purpose: the operator never lists Secrets
/// (DESIGN §4); see [`Desired::obsolete_secrets`](super::Desired::obsolete_secrets).
pub fn owned_kinds() -> &'static [OwnedKind] {
    &OWNED_KINDS
}

/// One object to apply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Child {
    ConfigMap(ConfigMap),
    Service(Service),
    StatefulSet(StatefulSet),
    Deployment(Deployment),
    PodDisruptionBudget(PodDisruptionBudget),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    Ingress(Ingress),
    NetworkPolicy(NetworkPolicy),
    ScaledObject(ScaledObject),
    TriggerAuthentication(TriggerAuthentication),
}

macro_rules! each_child {
    ($self:expr, $o:ident => $e:expr) => {
        match $self {
            Child::ConfigMap($o) => $e,
            Child::Service($o) => $e,
            Child::StatefulSet($o) => $e,
            Child::Deployment($o) => $e,
            Child::PodDisruptionBudget($o) => $e,
            Child::HorizontalPodAutoscaler($o) => $e,
            Child::Ingress($o) => $e,
            Child::NetworkPolicy($o) => $e,
            Child::ScaledObject($o) => $e,
            Child::TriggerAuthentication($o) => $e,
        }
    };
}

fn kind_of<K: k8s_openapi::Resource>(_: &K) -> OwnedKind {
    OwnedKind::of::<K>()
}

impl Child {
    pub fn kind(&self) -> OwnedKind {
        each_child!(self, o => kind_of(o))
    }

    pub fn meta(&self) -> &ObjectMeta {
        each_child!(self, o => &o.metadata)
    }

    /// The object's name (always set by [`desired`](super::desired)).
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// The pod template of a workload.
    pub fn pod_template(&self) -> Option<&PodTemplateSpec> {
        match self {
            Child::Deployment(d) => d.spec.as_ref().map(|s| &s.template),
            Child::StatefulSet(s) => s.spec.as_ref().map(|s| &s.template),
            _ => None,
        }
    }
}

// === KEDA kinds ===

// The KEDA types carry only what the operator writes; KEDA's own
// validation is the authority on the rest.
macro_rules! keda_kind {
    ($t:ident, $kind:literal, $plural:literal) => {
        #[derive(Debug, Clone, PartialEq, Deserialize, Default)]
        pub struct $t {
            pub metadata: ObjectMeta,
            pub spec: Value,
        }

        // Written out, as k8s-openapi does for its types, so that the body
        // carries `apiVersion` and `kind`: the API server refuses an apply
        // patch without them ("Incorrect version specified in apply patch"),
        // and the golden snapshots and checkov need them to know the object.
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let mut o = s.serialize_struct($kind, 4)?;
                o.serialize_field("apiVersion", <Self as k8s_openapi::Resource>::API_VERSION)?;
                o.serialize_field("kind", <Self as k8s_openapi::Resource>::KIND)?;
                o.serialize_field("metadata", &self.metadata)?;
                o.serialize_field("spec", &self.spec)?;
                o.end()
            }
        }

        impl k8s_openapi::Resource for $t {
            const API_VERSION: &'static str = "keda.sh/v1alpha1";
            const GROUP: &'static str = "keda.sh";
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "v1alpha1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::NamespaceResourceScope;
        }

        impl k8s_openapi::Metadata for $t {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

keda_kind!(ScaledObject, "ScaledObject", "scaledobjects");
keda_kind!(
    TriggerAuthentication,
    "TriggerAuthentication",
    "triggerauthentications"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{examples, render};

    #[test]
    fn owned_kinds_cover_every_object_and_no_secret() {
        let covered: Vec<_> = owned_kinds().iter().map(|k| k.kind).collect();
        for sp in examples() {
            for o in &render(&sp).objects {
                assert!(covered.contains(&o.kind().kind), "{}", o.kind().kind);
            }
        }
        assert!(!covered.contains(&"Secret"));
        let deploy = owned_kinds()
            .iter()
            .find(|k| k.kind == "Deployment")
            .unwrap();
        assert_eq!(
            (deploy.group, deploy.plural, deploy.api_version),
            ("apps", "deployments", "apps/v1")
        );
    }

    #[test]
    fn keda_objects_serialise_with_their_api_version_and_kind() {
        let so = serde_json::to_value(Child::ScaledObject(ScaledObject::default())).unwrap();
        assert_eq!(
            (&so["apiVersion"], &so["kind"]),
            (&"keda.sh/v1alpha1".into(), &"ScaledObject".into())
        );
        let ta = TriggerAuthentication::default();
        let ta = serde_json::to_value(Child::TriggerAuthentication(ta)).unwrap();
        assert_eq!(ta["kind"], "TriggerAuthentication");
        // What the API server answers, with both, still reads back.
        let back: ScaledObject = serde_json::from_value(so).unwrap();
        assert_eq!(back, ScaledObject::default());
    }
}
