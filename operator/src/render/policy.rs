//! Policy objects: the PodDisruptionBudget that keeps an ingress pod up
//! through node drains, and the NetworkPolicy that admits only the
//! pipeline's pods, the operator (and KEDA's operator when a group scales
//! with KEDA) to managed Redis.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_crds::{AutoscaleEngine, GroupSpec};

use super::context::Ctx;
use super::redis_use::REDIS_PORT;
use crate::labels::{self, Component};
use crate::names;
use crate::settings::KEDA_OPERATOR_POD_LABELS;

/// Keeps one ingress pod up through voluntary disruptions (node drains).
pub(crate) fn pdb(ctx: &Ctx<'_>, g: &GroupSpec) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ctx.meta(
            names::group(&ctx.name, &g.name),
            Component::Ingress,
            Some(&g.name),
        ),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::group_selector(&ctx.name, &g.name)),
                ..Default::default()
            }),
            // A pod that is not ready serves nobody; evicting it must not
            // block a node drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

// === managed Redis ===

/// Pods labelled `labels` in namespace `namespace`.
fn pods_in(namespace: &str, labels: BTreeMap<String, String>) -> NetworkPolicyPeer {
    let select = |labels| LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    };
    NetworkPolicyPeer {
        namespace_selector: Some(select(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            namespace.to_string(),
        )]))),
        pod_selector: Some(select(labels)),
        ..Default::default()
    }
}

/// Only the pipeline's own pods and the operator's may reach its Redis, and
/// KEDA's operator when a group scales with KEDA.
pub(crate) fn network_policy(ctx: &Ctx<'_>) -> NetworkPolicy {
    let s = ctx.settings;
    let pipeline_pods = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                labels::PIPELINE.to_string(),
                ctx.name.clone(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut from = vec![
        pipeline_pods,
        pods_in(&s.operator_namespace, s.operator_pod_labels.clone()),
    ];
    if !crate::autoscale::groups_with(ctx.spec, AutoscaleEngine::Keda).is_empty() {
        let keda = KEDA_OPERATOR_POD_LABELS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from.push(pods_in(&s.keda_namespace, keda));
    }
    NetworkPolicy {
        metadata: ctx.meta(names::redis(&ctx.name), Component::Redis, None),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels::redis_selector(&ctx.name)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(vec![NetworkPolicyPort {
                    protocol: Some("TCP".into()),
                    port: Some(IntOrString::Int(REDIS_PORT)),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{orders_redis, render};
    use crate::render::Child;

    #[test]
    fn the_redis_network_policy_admits_the_pipeline_and_the_operator_only() {
        let d = render(&orders_redis());
        let Some(Child::NetworkPolicy(np)) =
            d.objects.iter().find(|o| o.kind().kind == "NetworkPolicy")
        else {
            panic!("no NetworkPolicy")
        };
        let s = np.spec.as_ref().unwrap();
        assert_eq!(
            s.pod_selector.as_ref().and_then(|p| p.match_labels.clone()),
            Some(labels::redis_selector("orders-redis"))
        );
        let rule = &s.ingress.as_ref().unwrap()[0];
        let from = rule.from.as_ref().unwrap();
        assert_eq!(from.len(), 2);
        assert_eq!(
            from[0]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[labels::PIPELINE],
            "orders-redis"
        );
        assert!(from[0].namespace_selector.is_none(), "same namespace only");
        assert_eq!(
            from[1]
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["kubernetes.io/metadata.name"],
            "sluice-system"
        );
        assert_eq!(
            rule.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(6379))
        );
    }
}
