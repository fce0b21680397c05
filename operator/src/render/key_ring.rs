//! The key ring Secret `P-ipc-keys` of a new pipeline (DESIGN §6 layout).
//! It is never in the apply set: its content is random and only rotation
//! ([`crate::rotation`]) changes it; the pods mount it as a directory.

use std::collections::BTreeMap;

use base64::Engine;
use chrono::SecondsFormat;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::ByteString;
use sluice_crds::{KeyNeeds, StreamPipeline};
use sluice_platform::envelope::Kind;
use sluice_platform::keyring::{derived_files, KeyRing, KeyRingError};

use super::context::owner_of;
use super::contract::{KEY_LEN, KEY_RING_CURRENT};
use super::error::{Error, Result};
use crate::labels::{self, Component};
use crate::names;

/// The key ring Secret of a new pipeline (DESIGN §6 layout): one file per
/// key named by its kid holding base64 of 32 random bytes, and `current`
/// naming the signing kid; rotation annotations in phase `stable`.
///
/// The reconciler calls it only when the Secret is absent, with fresh random
/// material and the current time; after that only the rotation procedure
/// changes the Secret.
///
/// # Errors
/// Missing name, namespace or uid; a kid that is not 1–64 characters of
/// `A-Z a-z 0-9 _ -` (or is `current`); a key that is not standard base64
/// of exactly 32 bytes. Errors never contain the key.
pub fn initial_key_secret(
    sp: &StreamPipeline,
    kid: &str,
    key_b64: &str,
    updated: &Time,
) -> Result<Secret> {
    let owner = owner_of(sp)?;
    let kid_ok = !kid.is_empty()
        && kid.len() <= 64
        && kid != KEY_RING_CURRENT
        && kid
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if !kid_ok {
        return Err(Error::InvalidInput {
            what: "kid",
            reason: format!("`{kid}` must be 1-64 characters of [A-Za-z0-9_-] and not `current`"),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(key_b64.trim());
    if decoded.map(|k| k.len()) != Ok(KEY_LEN) {
        return Err(Error::InvalidInput {
            what: "key",
            reason: format!("must be standard base64 of exactly {KEY_LEN} bytes"),
        });
    }
    let mut metadata = owner.meta(names::key_secret(&owner.name), Component::Keys, None);
    metadata.annotations = Some(BTreeMap::from([
        (
            labels::ROTATION_PHASE.to_string(),
            labels::ROTATION_STABLE.to_string(),
        ),
        (
            labels::ROTATION_UPDATED.to_string(),
            crate::clock::datetime_of(updated).to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
    ]));
    Ok(Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                kid.to_string(),
                ByteString(key_b64.trim().as_bytes().to_vec()),
            ),
            (
                KEY_RING_CURRENT.to_string(),
                ByteString(kid.as_bytes().to_vec()),
            ),
        ])),
        ..Default::default()
    })
}

/// The Secret of one group's derived keys: for every kid of the key ring
/// `ring` (the data of `P-ipc-keys`, as text), the request and reply keys
/// `needs` lists, and `current` (docs/wire-format.md, "What each role
/// holds"). Deterministic, so the reconciler re-renders it after every
/// rotation step and writes only what changed.
///
/// # Errors
/// Missing name, namespace or uid; a ring the runtime could not load
/// either; no needs. Errors never contain key material.
pub fn role_keys_secret(
    sp: &StreamPipeline,
    name: &str,
    ring: &BTreeMap<String, String>,
    needs: &KeyNeeds,
) -> Result<Secret> {
    let owner = owner_of(sp)?;
    let bad = |e: KeyRingError| Error::InvalidInput {
        what: "key ring",
        reason: e.to_string(),
    };
    let ring = KeyRing::from_files(ring).map_err(bad)?;
    let wanted: Vec<(Kind, &str)> = needs
        .request
        .iter()
        .map(|g| (Kind::Request, g.as_str()))
        .chain(needs.reply.iter().map(|g| (Kind::Reply, g.as_str())))
        .collect();
    let pipeline = format!("{}/{}", owner.namespace, owner.name);
    let files = derived_files(&ring, &pipeline, &wanted).map_err(bad)?;
    Ok(Secret {
        metadata: owner.meta(name.to_string(), Component::Keys, None),
        type_: Some("Opaque".into()),
        data: Some(
            files
                .into_iter()
                .map(|(k, v)| (k, ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    use crate::render::fixtures::{orders_redis, UID};

    #[test]
    fn the_initial_key_secret_is_a_ring_the_runtime_loads() {
        let sp = orders_redis();
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; KEY_LEN]);
        let t = crate::clock::time_of(Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap());
        let s = initial_key_secret(&sp, "k1", &key, &t).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("orders-redis-ipc-keys"));
        let ann = s.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[labels::ROTATION_PHASE], "stable");
        assert_eq!(ann[labels::ROTATION_UPDATED], "2025-01-02T03:04:05Z");
        assert_eq!(s.metadata.owner_references.as_ref().unwrap()[0].uid, UID);
        // Materialise it as the kubelet would and load it with the runtime's loader.
        let dir = tempfile::tempdir().unwrap();
        for (k, v) in s.data.unwrap() {
            std::fs::write(dir.path().join(k), v.0).unwrap();
        }
        let ring = sluice_platform::KeyRing::load(dir.path()).unwrap();
        assert_eq!(ring.current(), "k1");
    }

    #[test]
    fn bad_key_material_is_refused_without_echoing_it() {
        let sp = orders_redis();
        let t = crate::clock::time_of(Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap());
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let e = initial_key_secret(&sp, "k1", &short, &t)
            .unwrap_err()
            .to_string();
        assert!(!e.contains(&short));
        let good = base64::engine::general_purpose::STANDARD.encode([7u8; KEY_LEN]);
        assert!(initial_key_secret(&sp, "current", &good, &t).is_err());
        assert!(initial_key_secret(&sp, "a/b", &good, &t).is_err());
        assert!(initial_key_secret(&sp, "k1", "not base64!", &t).is_err());
    }

    #[test]
    fn a_groups_key_secret_holds_exactly_its_needs_for_every_kid_and_never_the_ring() {
        let sp = orders_redis();
        let raw = base64::engine::general_purpose::STANDARD.encode([7u8; KEY_LEN]);
        let ring = BTreeMap::from([
            ("k1".to_string(), raw.clone()),
            (
                "k2".to_string(),
                base64::engine::general_purpose::STANDARD.encode([8u8; KEY_LEN]),
            ),
            ("current".to_string(), "k2".to_string()),
        ]);
        let needs = KeyNeeds {
            request: ["cpu".to_string(), "io".to_string()].into(),
            reply: ["cpu".to_string()].into(),
        };
        let s = role_keys_secret(&sp, "orders-redis-ipc-keys-cpu", &ring, &needs).unwrap();
        assert_eq!(s.metadata.owner_references.as_ref().unwrap()[0].uid, UID);
        let data = s.data.unwrap();
        let names: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "current",
                "k1.reply.cpu",
                "k1.request.cpu",
                "k1.request.io",
                "k2.reply.cpu",
                "k2.request.cpu",
                "k2.request.io"
            ]
        );
        assert!(data.values().all(|v| v.0 != raw.as_bytes()), "no raw key");
        let again = role_keys_secret(&sp, "orders-redis-ipc-keys-cpu", &ring, &needs).unwrap();
        assert_eq!(again.data.unwrap(), data, "deterministic");
        // What the runtime loads from it.
        let files: BTreeMap<String, String> = data
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect();
        assert_eq!(KeyRing::from_files(&files).unwrap().current(), "k2");

        let e = role_keys_secret(&sp, "x", &BTreeMap::new(), &needs).unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    }
}
