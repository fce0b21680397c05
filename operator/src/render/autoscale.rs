//! The objects of autoscaled worker groups. `engine: hpa`: an autoscaling/v2
//! HorizontalPodAutoscaler on CPU. `engine: keda`: a KEDA `ScaledObject` per
//! group and one `TriggerAuthentication` per pipeline, for clusters that run
//! KEDA. `engine: builtin` is the operator's own loop ([`crate::autoscale`])
//! and makes no object here.
//!
//! ```text
//! ScaledObject P-<group>            TriggerAuthentication P-keda-redis
//!   scaleTargetRef: Deployment P-<group>   secretTargetRef:
//!   min/maxReplicaCount, cooldownPeriod      managed:  username, password ← Secret P-redis/keda.*
//!                                                      ca ← P-redis/ca.crt (with TLS)
//!   trigger redis-streams:                   external: address  ← <urlSecretRef>/address
//!     stream  sluice:{ns/P}:q:<group>                  password ← <urlSecretRef>/password
//!     consumerGroup sluice                             ca       ← <caSecretRef> (when set)
//!     streamLength <targetBacklogPerReplica>
//!     enableTLS "true" (managed with TLS, external with caSecretRef)
//! ```
//!
//! The trigger uses the stream's length: a worker deletes what it hands
//! off, so the length is exactly waiting plus in-progress work (KEDA's
//! `lagCount` is unknown once entries were deleted). KEDA cannot parse a
//! URL, so with external Redis the Secret named by `urlSecretRef` must also
//! hold `address` (`host:port`) and `password` keys (docs/autoscaling.md).
//!
//! TLS: the operator cannot see the URL (it is in a Secret), but a
//! `caSecretRef` is only usable with a `rediss://` URL, so with one the
//! trigger gets `enableTLS: "true"` and the TriggerAuthentication the `ca`
//! parameter (PEM content, which KEDA adds to the roots it trusts). Not the
//! `tls: enable` authentication parameter: that would have to come from a
//! Secret key, and KEDA refuses it together with `enableTLS`.

use std::borrow::Cow;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use sluice_crds::{AutoscaleEngine, AutoscaleSpec, GroupSpec, SecretKeyRef};

use crate::redis_tls::CA_CERT_KEY;
use sluice_platform::keys::{Keys, CONSUMER_GROUP};

use super::child::{Child, ScaledObject, TriggerAuthentication};
use super::context::Ctx;
use super::redis_acl;
use super::redis_use::{managed_address, RedisUse};
use crate::autoscale::{DEFAULT_MIN_REPLICAS, DEFAULT_SCALE_DOWN_WINDOW, DEFAULT_TARGET_BACKLOG};
use crate::labels::Component;
use crate::names;

// === engine: hpa ===

/// Target CPU utilisation of `engine: hpa` when unset.
pub const DEFAULT_TARGET_CPU: i32 = 70;

/// The HPA of a group with `autoscale.engine: hpa`. `builtin` is the
/// operator's own loop and `keda` a ScaledObject, neither an object here.
pub(crate) fn hpa(ctx: &Ctx<'_>, g: &GroupSpec) -> Option<HorizontalPodAutoscaler> {
    let a = g
        .autoscale
        .as_ref()
        .filter(|a| a.engine == AutoscaleEngine::Hpa)?;
    let name = names::group(&ctx.name, &g.name);
    Some(HorizontalPodAutoscaler {
        metadata: ctx.meta(name.clone(), Component::Worker, Some(&g.name)),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(<Deployment as k8s_openapi::Resource>::API_VERSION.into()),
                kind: <Deployment as k8s_openapi::Resource>::KIND.into(),
                name,
            },
            // An HPA cannot scale to zero without an alpha feature gate.
            min_replicas: Some(a.min_replicas.unwrap_or(1).max(1)),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(
                            a.target_cpu_utilization.unwrap_or(DEFAULT_TARGET_CPU),
                        ),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

// === engine: keda ===

/// ScaledObjects of the `engine: keda` groups and, when there is one, the
/// pipeline's TriggerAuthentication.
pub(crate) fn keda_objects(ctx: &Ctx<'_>) -> Vec<Child> {
    let groups = crate::autoscale::groups_with(ctx.spec, AutoscaleEngine::Keda);
    let redis_name = names::redis(&ctx.name);
    let address = managed_address(&ctx.name, &ctx.namespace);
    let target = match &ctx.redis {
        RedisUse::External { url, ca } => RedisTarget::External { url, ca: *ca },
        RedisUse::Managed(m) => RedisTarget::Managed {
            address: &address,
            secret: &redis_name,
            tls: m.tls,
        },
        RedisUse::None => RedisTarget::Managed {
            address: &address,
            secret: &redis_name,
            tls: false,
        },
    };
    if groups.is_empty() {
        return vec![];
    }
    let auth = names::keda_auth(&ctx.name);
    let mut out: Vec<Child> = groups
        .into_iter()
        .map(|(g, a)| {
            let mut meta = ctx.meta(
                names::group(&ctx.name, &g.name),
                Component::Worker,
                Some(&g.name),
            );
            if crate::pause::wanted(ctx.spec) {
                // KEDA scales the group to this count and stops scaling it:
                // its minimum, as the builtin engine does.
                let min = a.min_replicas.unwrap_or(DEFAULT_MIN_REPLICAS).max(0);
                meta.annotations
                    .get_or_insert_with(Default::default)
                    .insert(KEDA_PAUSED_REPLICAS.into(), min.to_string());
            }
            Child::ScaledObject(scaled_object(
                meta,
                &ctx.namespace,
                &ctx.name,
                g,
                a,
                target,
                &auth,
            ))
        })
        .collect();
    out.push(Child::TriggerAuthentication(trigger_authentication(
        ctx.meta(auth, Component::Worker, None),
        target,
    )));
    out
}

/// The ScaledObject annotation that pauses KEDA at a replica count.
pub const KEDA_PAUSED_REPLICAS: &str = "autoscaling.keda.sh/paused-replicas";

/// Keys of an external Redis Secret that KEDA reads.
pub const EXTERNAL_ADDRESS_KEY: &str = "address";
pub const EXTERNAL_PASSWORD_KEY: &str = "password";

/// How often KEDA polls the stream, in seconds.
const POLLING_INTERVAL: i64 = 15;

/// Which Redis the trigger reads.
#[derive(Debug, Clone, Copy)]
pub enum RedisTarget<'a> {
    /// The managed Redis at this `host:port`, password in `P-redis`, and
    /// with `tls` the CA there too.
    Managed {
        address: &'a str,
        secret: &'a str,
        tls: bool,
    },
    /// The user's Secret (`urlSecretRef`), with `address` and `password`
    /// keys, and the CA of a Redis with a private CA (`caSecretRef`).
    External {
        url: &'a SecretKeyRef,
        ca: Option<&'a SecretKeyRef>,
    },
}

/// The ScaledObject of one group. `meta` names it like the Deployment.
pub fn scaled_object(
    meta: ObjectMeta,
    namespace: &str,
    pipeline: &str,
    g: &GroupSpec,
    a: &AutoscaleSpec,
    redis: RedisTarget<'_>,
    auth_name: &str,
) -> ScaledObject {
    let deployment = meta.name.clone().unwrap_or_default();
    let mut trigger_meta = json!({
        "stream": Keys::new(namespace, pipeline).queue(&g.name),
        "consumerGroup": CONSUMER_GROUP,
        "streamLength": a.target_backlog_per_replica.unwrap_or(DEFAULT_TARGET_BACKLOG).max(1).to_string(),
        "databaseIndex": "0",
    });
    match redis {
        RedisTarget::Managed { address, tls, .. } => {
            trigger_meta["address"] = json!(address);
            if tls {
                trigger_meta["enableTLS"] = json!("true");
            }
        }
        RedisTarget::External { ca: Some(_), .. } => trigger_meta["enableTLS"] = json!("true"),
        RedisTarget::External { ca: None, .. } => {}
    }
    let window = a
        .scale_down_stabilization
        .as_deref()
        .and_then(|s| sluice_crds::units::parse_duration(s).ok())
        .unwrap_or(DEFAULT_SCALE_DOWN_WINDOW)
        .as_secs();
    ScaledObject {
        metadata: meta,
        spec: json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicaCount": a.min_replicas.unwrap_or(DEFAULT_MIN_REPLICAS),
            "maxReplicaCount": a.max_replicas,
            "pollingInterval": POLLING_INTERVAL,
            "cooldownPeriod": window,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                "scaleDown": {"stabilizationWindowSeconds": window}
            }}},
            "triggers": [{
                "type": "redis-streams",
                "metadata": trigger_meta,
                "authenticationRef": {"name": auth_name},
            }],
        }),
    }
}

/// The pipeline's TriggerAuthentication: where KEDA finds the Redis
/// credentials (by Secret reference; no secret value is copied).
pub fn trigger_authentication(meta: ObjectMeta, redis: RedisTarget<'_>) -> TriggerAuthentication {
    let refs: Vec<(&str, Cow<'_, str>, &str)> = match redis {
        RedisTarget::Managed { secret, tls, .. } => {
            let mut refs = vec![
                (
                    "username",
                    Cow::Borrowed(secret),
                    redis_acl::KEDA_USERNAME_KEY,
                ),
                (
                    "password",
                    Cow::Borrowed(secret),
                    redis_acl::KEDA_PASSWORD_KEY,
                ),
            ];
            if tls {
                refs.push(("ca", Cow::Borrowed(secret), CA_CERT_KEY));
            }
            refs
        }
        RedisTarget::External { url, ca } => {
            let mut refs = vec![
                (
                    "address",
                    Cow::Borrowed(url.name.as_str()),
                    EXTERNAL_ADDRESS_KEY,
                ),
                (
                    "password",
                    Cow::Borrowed(url.name.as_str()),
                    EXTERNAL_PASSWORD_KEY,
                ),
            ];
            if let Some(ca) = ca {
                refs.push(("ca", Cow::Borrowed(ca.name.as_str()), ca.key.as_str()));
            }
            refs
        }
    };
    TriggerAuthentication {
        metadata: meta,
        spec: json!({
            "secretTargetRef": refs
                .into_iter()
                .map(|(parameter, name, key)| json!({"parameter": parameter, "name": name, "key": key}))
                .collect::<Vec<_>>(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{deployment, group_mut, orders_redis, render, with_everything};
    use crate::render::Desired;

    #[test]
    fn autoscaled_groups_have_no_replicas_and_hpa_groups_get_an_hpa() {
        let d = render(&with_everything());
        assert_eq!(
            deployment(&d, "enrich-cpu").spec.as_ref().unwrap().replicas,
            None
        );
        assert_eq!(
            deployment(&d, "enrich-io").spec.as_ref().unwrap().replicas,
            None,
            "autoscale wins over replicas"
        );
        assert!(
            !d.contains("HorizontalPodAutoscaler", "enrich-cpu"),
            "builtin engine: no HPA"
        );
        let hpa = d
            .objects
            .iter()
            .find_map(|o| match o {
                Child::HorizontalPodAutoscaler(h) => Some(h),
                _ => None,
            })
            .unwrap();
        let s = hpa.spec.as_ref().unwrap();
        assert_eq!(s.scale_target_ref.name, "enrich-io");
        assert_eq!(s.scale_target_ref.kind, "Deployment");
        assert_eq!((s.min_replicas, s.max_replicas), (Some(1), 4));
        let target = &s.metrics.as_ref().unwrap()[0]
            .resource
            .as_ref()
            .unwrap()
            .target;
        assert_eq!(target.average_utilization, Some(60));
    }

    fn trigger_auth(d: &Desired) -> &TriggerAuthentication {
        d.objects
            .iter()
            .find_map(|o| match o {
                Child::TriggerAuthentication(a) => Some(a),
                _ => None,
            })
            .expect("a TriggerAuthentication")
    }

    fn scaled_object(d: &Desired) -> &ScaledObject {
        d.objects
            .iter()
            .find_map(|o| match o {
                Child::ScaledObject(s) => Some(s),
                _ => None,
            })
            .expect("a ScaledObject")
    }

    #[test]
    fn keda_groups_get_a_scaled_object_and_the_pipeline_one_trigger_authentication() {
        let mut sp = orders_redis();
        group_mut(&mut sp, "io").autoscale = sluice_crds::yaml::from_str(
            "{engine: keda, minReplicas: 0, maxReplicas: 5, scaleDownStabilization: 90s}",
        )
        .unwrap();
        let d = render(&sp);
        assert_eq!(
            deployment(&d, "orders-redis-io")
                .spec
                .as_ref()
                .unwrap()
                .replicas,
            None
        );
        let so = d
            .objects
            .iter()
            .find_map(|o| match o {
                Child::ScaledObject(s) => Some(s),
                _ => None,
            })
            .expect("a ScaledObject");
        assert_eq!(so.metadata.name.as_deref(), Some("orders-redis-io"));
        assert_eq!(so.spec["minReplicaCount"], 0);
        assert_eq!(so.spec["cooldownPeriod"], 90);
        let t = &so.spec["triggers"][0];
        assert_eq!(t["metadata"]["stream"], "sluice:{demo/orders-redis}:q:io");
        assert_eq!(t["metadata"]["streamLength"], "50");
        assert_eq!(t["authenticationRef"]["name"], "orders-redis-keda-redis");
        assert!(d.contains("TriggerAuthentication", "orders-redis-keda-redis"));
        assert!(!d.contains("HorizontalPodAutoscaler", "orders-redis-io"));
        let annotation = |d: &Desired| {
            scaled_object(d)
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(KEDA_PAUSED_REPLICAS).cloned())
        };
        assert_eq!(annotation(&d), None);
        sp.spec.paused = Some(true);
        assert_eq!(
            annotation(&render(&sp)).as_deref(),
            Some("0"),
            "paused at zero"
        );
        sp.spec.paused = None;
        // KEDA's operator reads the lag: the managed Redis admits it too.
        let peers = |d: &Desired| {
            let np = d
                .objects
                .iter()
                .find_map(|o| match o {
                    Child::NetworkPolicy(n) => Some(n.clone()),
                    _ => None,
                })
                .expect("a NetworkPolicy");
            serde_json::to_value(&np.spec.unwrap().ingress.unwrap()[0].from).unwrap()
        };
        let keda_peer = serde_json::json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
            "podSelector": {"matchLabels": {"app": "keda-operator"}},
        });
        let with_keda = peers(&d);
        assert_eq!(with_keda.as_array().unwrap().len(), 3, "{with_keda}");
        assert_eq!(with_keda[2], keda_peer);
        let without = peers(&render(&orders_redis()));
        assert_eq!(without.as_array().unwrap().len(), 2, "{without}");
        assert!(!without.as_array().unwrap().contains(&keda_peer));

        // External Redis: address and password come from the user's Secret.
        sp.spec.redis =
            sluice_crds::yaml::from_str("{mode: external, urlSecretRef: {name: ext, key: url}}")
                .unwrap();
        let d = render(&sp);
        let auth = trigger_auth(&d);
        assert_eq!(
            auth.spec["secretTargetRef"],
            serde_json::json!([
                {"parameter": "address", "name": "ext", "key": "address"},
                {"parameter": "password", "name": "ext", "key": "password"},
            ])
        );
        let so = scaled_object(&d);
        assert!(so.spec["triggers"][0]["metadata"].get("address").is_none());
        assert!(so.spec["triggers"][0]["metadata"]
            .get("enableTLS")
            .is_none());

        // A private CA: TLS on in the trigger, the CA by Secret reference.
        sp.spec.redis = sluice_crds::yaml::from_str(
            "{mode: external, urlSecretRef: {name: ext, key: url}, caSecretRef: {name: ext-ca, key: ca.crt}}",
        )
        .unwrap();
        let d = render(&sp);
        let auth = trigger_auth(&d);
        assert_eq!(
            auth.spec["secretTargetRef"],
            serde_json::json!([
                {"parameter": "address", "name": "ext", "key": "address"},
                {"parameter": "password", "name": "ext", "key": "password"},
                {"parameter": "ca", "name": "ext-ca", "key": "ca.crt"},
            ])
        );
        let so = scaled_object(&d);
        assert_eq!(so.spec["triggers"][0]["metadata"]["enableTLS"], "true");
    }
}
