//! The Secrets whose content the operator makes up: the key ring
//! `P-ipc-keys` and the managed Redis password `P-redis` (DESIGN §4, §6).
//!
//! ```text
//! GeneratedSecret ─GET by name─▶ 404 ─▶ fresh random material ─▶ create
//!                               └──▶ exists ─▶ key ring: left alone (only rotation changes it)
//!                                              P-redis (ours): re-render redis.conf from the
//!                                              stored password; replace if it differs
//! obsolete name ─GET by name─▶ controlled by this pipeline? ─▶ delete
//! ```
//!
//! Secrets are never listed or watched (least privilege): each is read by
//! its name, and the periodic requeue repairs a deleted one.
//! Key material and passwords never reach logs, events or errors.

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::{SubsecRound, Utc};
use kube::api::{Api, DeleteParams, PostParams};
use kube::ResourceExt;
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use sluice_crds::StreamPipeline;

use crate::reconcile::{api_error, Error, FIELD_MANAGER};
use crate::redis::{initial_redis_secret, CONFIG_KEY, PASSWORD_KEY};
use crate::resources::{initial_key_secret, GeneratedSecret, KEY_LEN};
use crate::settings::OperatorSettings;

/// Length of a generated Redis password (alphanumeric: ~190 bits).
const PASSWORD_LEN: usize = 32;

/// What happened to one Secret, for events and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretChange {
    Created(String),
    Updated(String),
    Deleted(String),
    /// The key ring moved to another rotation phase; the text says which
    /// (kids only, never key material).
    Rotated(String),
}

/// What [`ensure`] did, and when the Secrets need looking at again.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ensured {
    pub changes: Vec<SecretChange>,
    /// The next moment a Secret must change (a rotation step falls due),
    /// so the reconcile requeues no later than this.
    pub recheck_after: Option<std::time::Duration>,
}

/// A key ring with one fresh key, current, kid `k<unix seconds>`.
///
/// # Errors
/// Only if the pipeline lacks name, namespace or uid.
pub fn fresh_key_ring(sp: &StreamPipeline) -> Result<Secret, Error> {
    let now = Utc::now().trunc_subsecs(0);
    let mut key = [0u8; KEY_LEN];
    OsRng.fill_bytes(&mut key);
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    Ok(initial_key_secret(
        sp,
        &format!("k{}", now.timestamp()),
        &b64,
        &Time(now),
    )?)
}

/// A `P-redis` Secret with a fresh random password.
///
/// # Errors
/// Only if the pipeline lacks name, namespace or uid.
pub fn fresh_redis_secret(sp: &StreamPipeline) -> Result<Secret, Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let password: String = (0..PASSWORD_LEN)
        .map(|_| char::from(ALPHABET[OsRng.gen_range(0..ALPHABET.len())]))
        .collect();
    Ok(initial_redis_secret(sp, &password)?)
}

fn controlled_by(s: &Secret, uid: &str) -> bool {
    s.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Creates each generated Secret that is absent, and keeps the config file
/// of an existing `P-redis` in step with the spec's persistence.
///
/// # Guarantees
/// An existing key ring is never modified; an existing password is never
/// changed. Losing a create race (`409 AlreadyExists`) is not an error.
///
/// # Errors
/// API errors other than those above.
pub async fn ensure(
    api: &Api<Secret>,
    sp: &StreamPipeline,
    uid: &str,
    generated: &[GeneratedSecret],
    _settings: &OperatorSettings,
) -> Result<Ensured, Error> {
    let mut changes = Vec::new();
    for g in generated {
        let name = g.name();
        let live = api
            .get_opt(name)
            .await
            .map_err(|e| api_error("get", "Secret", name, e))?;
        match (live, g) {
            (None, _) => {
                let fresh = match g {
                    GeneratedSecret::KeyRing(_) => fresh_key_ring(sp)?,
                    GeneratedSecret::RedisPassword(_) => fresh_redis_secret(sp)?,
                };
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                match api.create(&pp, &fresh).await {
                    Ok(_) => changes.push(SecretChange::Created(name.to_string())),
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(api_error("create", "Secret", name, e)),
                }
            }
            (Some(live), GeneratedSecret::RedisPassword(_)) if controlled_by(&live, uid) => {
                if let Some(updated) = redis_config_update(sp, live)? {
                    let pp = PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    };
                    // Replace carries the resourceVersion read above: a
                    // concurrent change makes it fail (409) and retry.
                    api.replace(name, &pp, &updated)
                        .await
                        .map_err(|e| api_error("update", "Secret", name, e))?;
                    changes.push(SecretChange::Updated(name.to_string()));
                }
            }
            (Some(_), _) => {}
        }
    }
    Ok(Ensured {
        changes,
        recheck_after: None,
    })
}

/// The `P-redis` Secret with `redis.conf` re-rendered from its stored
/// password, if that changes it (the persistence setting changed).
fn redis_config_update(sp: &StreamPipeline, mut live: Secret) -> Result<Option<Secret>, Error> {
    let data = live.data.get_or_insert_with(Default::default);
    let Some(password) = data
        .get(PASSWORD_KEY)
        .and_then(|p| String::from_utf8(p.0.clone()).ok())
    else {
        return Err(Error::Unusable {
            what: "Secret",
            name: live.name_any(),
            reason: format!("has no UTF-8 `{PASSWORD_KEY}` key"),
        });
    };
    let rendered = initial_redis_secret(sp, &password)?;
    let Some(conf) = rendered.data.and_then(|mut d| d.remove(CONFIG_KEY)) else {
        return Ok(None);
    };
    if data.get(CONFIG_KEY) == Some(&conf) {
        return Ok(None);
    }
    data.insert(CONFIG_KEY.to_string(), conf);
    Ok(Some(live))
}

/// Deletes each named Secret that exists and is controlled by the pipeline.
///
/// # Errors
/// API errors other than `404` (already gone).
pub async fn delete_obsolete(
    api: &Api<Secret>,
    uid: &str,
    names: &[String],
) -> Result<Vec<SecretChange>, Error> {
    let mut changes = Vec::new();
    for name in names {
        let Some(live) = api
            .get_opt(name)
            .await
            .map_err(|e| api_error("get", "Secret", name, e))?
        else {
            continue;
        };
        if !controlled_by(&live, uid) {
            continue;
        }
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => changes.push(SecretChange::Deleted(name.clone())),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(api_error("delete", "Secret", name, e)),
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn pipeline(persistence: &str) -> StreamPipeline {
        let mut sp: StreamPipeline = serde_yaml::from_str(&format!(
            "apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: p, namespace: demo, uid: u-1}}
spec:
  backends: {{queue: redis, kv: redis, reply: redis}}
  redis: {{mode: managed, persistence: {persistence}}}
  interfaces: [{{name: a, kind: http, path: /a, entry: n}}]
  groups: [{{name: web, role: ingress}}]
  nodes: [{{name: n, group: web, uses: builtin/echo}}]
"
        ))
        .unwrap();
        sp.metadata.uid = Some("u-1".into());
        sp
    }

    #[test]
    fn fresh_material_differs_every_time_and_is_valid() {
        let sp = pipeline("aof");
        let a = fresh_redis_secret(&sp).unwrap();
        let b = fresh_redis_secret(&sp).unwrap();
        assert_ne!(a.data, b.data);
        let k1 = fresh_key_ring(&sp).unwrap();
        let k2 = fresh_key_ring(&sp).unwrap();
        let key = |s: &Secret| {
            s.data
                .as_ref()
                .unwrap()
                .iter()
                .find(|(k, _)| k.as_str() != "current")
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_ne!(key(&k1), key(&k2));
        assert!(controlled_by(&k1, "u-1"));
        assert!(!controlled_by(&k1, "other"));
    }

    #[test]
    fn the_redis_config_follows_persistence_and_keeps_the_password() {
        let live = fresh_redis_secret(&pipeline("aof")).unwrap();
        assert_eq!(
            redis_config_update(&pipeline("aof"), live.clone()).unwrap(),
            None
        );
        let updated = redis_config_update(&pipeline("none"), live.clone())
            .unwrap()
            .unwrap();
        let data = updated.data.unwrap();
        assert_eq!(
            data[PASSWORD_KEY],
            live.data.as_ref().unwrap()[PASSWORD_KEY]
        );
        let conf = String::from_utf8(data[CONFIG_KEY].0.clone()).unwrap();
        assert!(conf.contains("appendonly no"));
        let mut broken = live;
        broken
            .data
            .as_mut()
            .unwrap()
            .insert(PASSWORD_KEY.into(), ByteString(vec![0xff]));
        let e = redis_config_update(&pipeline("none"), broken).unwrap_err();
        assert!(matches!(e, Error::Unusable { .. }));
    }
}
