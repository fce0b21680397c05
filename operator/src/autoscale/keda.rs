//! `engine: keda`: a KEDA `ScaledObject` per group and one
//! `TriggerAuthentication` per pipeline, for clusters that run KEDA.
//!
//! ```text
//! ScaledObject P-<group>            TriggerAuthentication P-keda-redis
//!   scaleTargetRef: Deployment P-<group>   secretTargetRef:
//!   min/maxReplicaCount, cooldownPeriod      managed:  password ← Secret P-redis/password
//!   trigger redis-streams:                   external: address  ← <urlSecretRef>/address
//!     stream  sluice:{ns/P}:q:<group>                  password ← <urlSecretRef>/password
//!     consumerGroup sluice                             ca       ← <caSecretRef> (when set)
//!     streamLength <targetBacklogPerReplica>
//!     enableTLS "true" (external with caSecretRef)
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
//!
//! The types here carry only what the operator writes; KEDA's own
//! validation is the authority on the rest.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_crds::{AutoscaleSpec, GroupSpec, SecretKeyRef};
use sluice_platform::keys::{Keys, CONSUMER_GROUP};

use super::DEFAULT_TARGET_BACKLOG;
use crate::redis::PASSWORD_KEY;

/// Keys of an external Redis Secret that KEDA reads.
pub const EXTERNAL_ADDRESS_KEY: &str = "address";
pub const EXTERNAL_PASSWORD_KEY: &str = "password";

/// How often KEDA polls the stream, in seconds.
const POLLING_INTERVAL: i64 = 15;

macro_rules! keda_kind {
    ($t:ident, $kind:literal, $plural:literal) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
        pub struct $t {
            pub metadata: ObjectMeta,
            pub spec: Value,
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

/// Which Redis the trigger reads.
#[derive(Debug, Clone, Copy)]
pub enum RedisTarget<'a> {
    /// The managed Redis at this `host:port`, password in `P-redis`.
    Managed { address: &'a str, secret: &'a str },
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
        RedisTarget::Managed { address, .. } => trigger_meta["address"] = json!(address),
        RedisTarget::External { ca: Some(_), .. } => trigger_meta["enableTLS"] = json!("true"),
        RedisTarget::External { ca: None, .. } => {}
    }
    let window = a
        .scale_down_stabilization
        .as_deref()
        .and_then(|s| sluice_crds::units::parse_duration(s).ok())
        .unwrap_or(super::DEFAULT_SCALE_DOWN_WINDOW)
        .as_secs();
    ScaledObject {
        metadata: meta,
        spec: json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicaCount": a.min_replicas.unwrap_or(super::DEFAULT_MIN_REPLICAS),
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
        RedisTarget::Managed { secret, .. } => {
            vec![("password", Cow::Borrowed(secret), PASSWORD_KEY)]
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
