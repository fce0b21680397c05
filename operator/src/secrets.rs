//! The Secrets whose content the operator makes up: the key ring
//! `P-ipc-keys` and the managed Redis password `P-redis` (DESIGN §4, §6).
//!
//! ```text
//! GeneratedSecret ─GET by name─▶ 404 ─▶ fresh random material ─▶ create
//!                               └──▶ exists ─▶ key ring (ours): rotation::next decides
//!                                                 ├─ a step is due ─▶ replace (resourceVersion)
//!                                                 └─ otherwise     ─▶ recheck when the next is due
//!                                              P-redis (ours): re-render from the stored
//!                                              passwords, certificate and rotation step;
//!                                              replace if it differs
//! obsolete name ─GET by name─▶ controlled by this pipeline? ─▶ delete
//! ```
//!
//! Secrets are never listed or watched (least privilege): each is read by
//! its name, and the periodic requeue repairs a deleted one; a rotation
//! step that falls due sooner than the next requeue shortens it
//! ([`Ensured::recheck_after`]). The ordinary apply loop never writes the
//! key ring: only the rotation steps here do (see [`crate::rotation`]).
//! Key material and passwords never reach logs, events or errors.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, SubsecRound, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use kube::ResourceExt;
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use sluice_crds::{compile, PipelineId, StreamPipeline};
use tracing::{debug, warn};

use crate::apply::FIELD_MANAGER;
use crate::error::{api_error, Error};
use crate::password_rotation::{self, Step};
use crate::password_rotation::{NEXT_SUFFIX, PREVIOUS_SUFFIX};
use crate::redis_tls::{Stored, TlsMaterial};
use crate::render::key_ring::role_keys_secret;
use crate::render::redis::{password_acceptable, redis_secret, redis_secret_rotating};
use crate::render::redis_acl;
use crate::render::redis_use::managed_tls;
use crate::render::{self, initial_key_secret, GeneratedSecret, KEY_LEN};
use crate::rotation::{self, Decision, Ring, Timings};
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
    /// What the managed Redis Secret `P-redis` holds now (its passwords by
    /// key), when the pipeline has one and it is ours.
    pub redis_secret: Option<BTreeMap<String, String>>,
    /// The generated key ring as it stands after this pass (kids and
    /// rotation annotations, no key material), when it is ours.
    pub key_ring: Option<Ring>,
}

/// A Secret's data as text, by key; keys whose value is not UTF-8 are left
/// out (every Secret the operator generates is text).
pub fn text_data(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect()
}

/// A key ring with one fresh key, current, kid `k<unix seconds>`.
///
/// # Errors
/// Only if the pipeline lacks name, namespace or uid.
pub fn fresh_key_ring(sp: &StreamPipeline) -> Result<Secret, Error> {
    let now = Utc::now().trunc_subsecs(0);
    Ok(initial_key_secret(
        sp,
        &format!("k{}", now.timestamp()),
        &fresh_key(),
        &crate::clock::time_of(now),
    )?)
}

/// Base64 of [`KEY_LEN`] bytes from the operating system's CSPRNG.
fn fresh_key() -> String {
    let mut key = [0u8; KEY_LEN];
    OsRng.fill_bytes(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A fresh random password from the operating system's CSPRNG.
fn fresh_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..PASSWORD_LEN)
        .map(|_| char::from(ALPHABET[OsRng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// A `P-redis` Secret with a fresh random password for every role and,
/// when managed Redis speaks TLS, a fresh CA and server certificate valid
/// for `cert_lifetime`.
///
/// # Errors
/// The pipeline lacks name, namespace or uid, or its spec does not compile;
/// the certificates could not be made.
pub fn fresh_redis_secret(sp: &StreamPipeline, cert_lifetime: Duration) -> Result<Secret, Error> {
    let tls = managed_tls(&sp.spec)
        .then(|| fresh_tls(sp, Utc::now(), cert_lifetime))
        .transpose()?;
    let mut secret = redis_secret(sp, |_| fresh_password(), tls.as_ref())?;
    // Passwords made now answer any rotation already asked for.
    if let Some(r) = sp.annotations().get(password_rotation::REQUEST) {
        secret
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                password_rotation::HANDLED.into(),
                password_rotation::handled(r),
            );
    }
    Ok(secret)
}

fn fresh_tls(
    sp: &StreamPipeline,
    now: DateTime<Utc>,
    lifetime: Duration,
) -> Result<TlsMaterial, Error> {
    TlsMaterial::fresh(
        &sp.name_any(),
        &sp.namespace().unwrap_or_default(),
        now,
        lifetime,
    )
    .map_err(|e| Error::Unusable {
        what: "Secret",
        name: crate::names::redis(&sp.name_any()),
        reason: e.to_string(),
    })
}

/// The TLS material `live` data should hold at `now`: the stored one,
/// renewed from its CA when due; a fresh CA and certificate when none is
/// stored or what is stored is unusable (a warning says why; pods trusting
/// the old CA connect again once restarted).
fn tls_for(
    sp: &StreamPipeline,
    data: &BTreeMap<String, String>,
    now: DateTime<Utc>,
    lifetime: Duration,
) -> Result<TlsMaterial, Error> {
    let (p, ns) = (sp.name_any(), sp.namespace().unwrap_or_default());
    match TlsMaterial::from_data(data) {
        Stored::Usable(m) if !m.due(now) && m.verifies(&p, &ns, now) => Ok(m),
        // Due, or a certificate that does not verify (edited, or its CA
        // changed under it): a new one from the CA — unless the CA itself
        // is unusable or expires before the next renewal.
        Stored::Usable(m) => match m.renewed(&p, &ns, now, lifetime) {
            Ok(r) if r.verifies(&p, &ns, now) && r.verifies(&p, &ns, r.renew_after) => Ok(r),
            Ok(_) => {
                warn!(pipeline = %p, "the managed Redis CA does not sign a certificate valid until its next renewal; making a new CA");
                fresh_tls(sp, now, lifetime)
            }
            Err(e) => {
                warn!(pipeline = %p, error = %e, "cannot renew the managed Redis certificate from its CA; making a new CA");
                fresh_tls(sp, now, lifetime)
            }
        },
        Stored::Absent => fresh_tls(sp, now, lifetime),
        Stored::Unusable(why) => {
            warn!(pipeline = %p, reason = %why, "the managed Redis TLS material is unusable; making a new CA");
            fresh_tls(sp, now, lifetime)
        }
    }
}

fn controlled_by(s: &Secret, uid: &str) -> bool {
    s.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Creates each generated Secret that is absent, moves an existing key ring
/// of this pipeline through its rotation (DESIGN §6, [`crate::rotation`])
/// when a step is due, and keeps an existing `P-redis` in step with the
/// spec, its certificate and its password rotation
/// ([`crate::password_rotation`]); `applied` tells whether the live Redis
/// users match a `P-redis`'s data.
///
/// # Guarantees
/// - A key ring changes only by a rotation step, written with `replace`
///   carrying the resourceVersion just read: a concurrent writer makes it
///   fail (`409`), and the reconcile retries from a fresh read. A ring not
///   controlled by this pipeline is never changed.
/// - An existing password changes only by a password rotation, and a pod
///   can read a new one only once the live users accept it.
/// - Losing a create race (`409 AlreadyExists`) is not an error.
/// - [`Ensured::recheck_after`] is no later than the next rotation step.
///
/// # Errors
/// API errors other than those above.
pub async fn ensure(
    api: &Api<Secret>,
    sp: &StreamPipeline,
    uid: &str,
    generated: &[GeneratedSecret],
    settings: &OperatorSettings,
    applied: &(dyn Fn(&BTreeMap<String, String>) -> bool + Sync),
) -> Result<Ensured, Error> {
    let mut changes = Vec::new();
    let mut redis_secret = None;
    let mut recheck_after: Option<std::time::Duration> = None;
    let mut recheck = |d: std::time::Duration| {
        recheck_after = Some(recheck_after.map_or(d, |r| r.min(d)));
    };
    // The key ring as it stands after this pass, for the derived Secrets.
    let mut ring: Option<BTreeMap<String, String>> = None;
    let mut key_ring = None;
    for g in generated {
        let name = g.name();
        let live = api
            .get_opt(name)
            .await
            .map_err(|e| api_error("get", "Secret", name, e))?;
        if let GeneratedSecret::RoleKeys { needs, .. } = g {
            // No ring of ours yet (lost a create race): the next pass.
            if let Some(ring) = &ring {
                let wanted = role_keys_secret(sp, name, ring, needs)?;
                changes.extend(write_derived(api, name, live, wanted, uid).await?);
            }
            continue;
        }
        match (live, g) {
            (None, _) => {
                let fresh = match g {
                    GeneratedSecret::KeyRing(_) => fresh_key_ring(sp)?,
                    GeneratedSecret::RedisPassword(_) => {
                        fresh_redis_secret(sp, settings.redis_cert_lifetime)?
                    }
                    GeneratedSecret::RoleKeys { .. } => continue,
                };
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                match api.create(&pp, &fresh).await {
                    Ok(_) => {
                        if matches!(g, GeneratedSecret::RedisPassword(_)) {
                            let data = text_data(&fresh);
                            if let Some(due) = renew_after(&data) {
                                recheck(until(Utc::now(), due));
                            }
                            redis_secret = Some(data);
                        }
                        changes.push(SecretChange::Created(name.to_string()));
                        if matches!(g, GeneratedSecret::KeyRing(_)) {
                            ring = Some(text_data(&fresh));
                            key_ring = Some(Ring::of(&fresh));
                            recheck(timings(sp, settings)?.rotate_every);
                        }
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(api_error("create", "Secret", name, e)),
                }
            }
            (Some(live), GeneratedSecret::KeyRing(_)) if controlled_by(&live, uid) => {
                let now = Utc::now();
                let (change, due, now_ring, now_key_ring) =
                    rotate(api, name, live, &timings(sp, settings)?, now).await?;
                ring = Some(now_ring);
                key_ring = Some(now_key_ring);
                changes.extend(change);
                if let Some(due) = due {
                    recheck(until(now, due));
                }
            }
            (Some(live), GeneratedSecret::RedisPassword(_)) if controlled_by(&live, uid) => {
                redis_secret = Some(text_data(&live));
                let now = Utc::now();
                let mut due = rotation_due(&live, now, settings.key_propagation);
                if let Some((updated, note)) =
                    redis_secret_update(sp, live, now, settings, applied)?
                {
                    let pp = PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    };
                    // Replace carries the resourceVersion read above: a
                    // concurrent change makes it fail (409) and retry.
                    api.replace(name, &pp, &updated)
                        .await
                        .map_err(|e| api_error("update", "Secret", name, e))?;
                    redis_secret = Some(text_data(&updated));
                    changes.push(match note {
                        Some(note) => SecretChange::Rotated(note),
                        None => SecretChange::Updated(name.to_string()),
                    });
                    due = rotation_due(&updated, now, settings.key_propagation);
                }
                if let Some(due) = due {
                    recheck(due);
                }
                if let Some(due) = redis_secret.as_ref().and_then(renew_after) {
                    recheck(until(now, due));
                }
            }
            (Some(_), _) => {}
        }
    }
    Ok(Ensured {
        changes,
        recheck_after,
        redis_secret,
        key_ring,
    })
}

/// Creates or updates a group's derived keys Secret to `wanted`; one not
/// controlled by this pipeline is left alone (and its pods will not
/// verify: the clash shows as rejected envelopes, never as a leak).
///
/// # Errors
/// API errors other than losing a create race.
async fn write_derived(
    api: &Api<Secret>,
    name: &str,
    live: Option<Secret>,
    wanted: Secret,
    uid: &str,
) -> Result<Option<SecretChange>, Error> {
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match live {
        None => match api.create(&pp, &wanted).await {
            Ok(_) => Ok(Some(SecretChange::Created(name.to_string()))),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
            Err(e) => Err(api_error("create", "Secret", name, e)),
        },
        Some(mut live) if controlled_by(&live, uid) => {
            if live.data == wanted.data {
                return Ok(None);
            }
            live.data = wanted.data;
            // Carries the resourceVersion read: a concurrent writer makes
            // it fail (409), and the retry starts from a fresh read.
            api.replace(name, &pp, &live)
                .await
                .map_err(|e| api_error("update", "Secret", name, e))?;
            Ok(Some(SecretChange::Updated(name.to_string())))
        }
        Some(_) => {
            warn!(
                secret = name,
                "a Secret of this name belongs to something else; left alone"
            );
            Ok(None)
        }
    }
}

/// The rotation timings of the pipeline: its plan under the operator's
/// propagation delay.
fn timings(sp: &StreamPipeline, settings: &OperatorSettings) -> Result<Timings, Error> {
    let id = PipelineId {
        namespace: sp
            .metadata
            .namespace
            .clone()
            .ok_or(Error::MissingObjectKey("metadata.namespace"))?,
        name: sp
            .metadata
            .name
            .clone()
            .ok_or(Error::MissingObjectKey("metadata.name"))?,
    };
    // The reconciler calls `ensure` only for a spec `desired` accepted, which
    // compiles; a refusal here is reported like one there.
    let plan = compile(id, &sp.spec).map_err(render::Error::InvalidSpec)?;
    Ok(Timings::new(&plan, settings.key_propagation))
}

/// One rotation step on the live key ring if one is due: the change to
/// report, when the next step falls due, and the ring's data as it stands
/// after.
///
/// # Errors
/// The `replace` failed (a `409` when another writer changed the Secret
/// since it was read).
async fn rotate(
    api: &Api<Secret>,
    name: &str,
    mut live: Secret,
    timings: &Timings,
    now: DateTime<Utc>,
) -> Result<RotationOutcome, Error> {
    let step = match rotation::next(&Ring::of(&live), timings, now) {
        Decision::Wait { until } => {
            debug!(secret = name, due = %until, "key ring: next rotation step");
            return Ok((None, Some(until), text_data(&live), Ring::of(&live)));
        }
        Decision::Hold { reason } => {
            warn!(secret = name, %reason, "key ring cannot be rotated; left as it is");
            return Ok((None, None, text_data(&live), Ring::of(&live)));
        }
        Decision::Step(step) => step,
    };
    step.apply(&mut live, fresh_key);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    // Replace carries the resourceVersion read above: a concurrent change
    // makes it fail (409), and the retry decides again from a fresh read.
    api.replace(name, &pp, &live)
        .await
        .map_err(|e| api_error("update", "Secret", name, e))?;
    let note = format!("{name} {}: {}", step.phase, step.note);
    Ok((
        Some(SecretChange::Rotated(note)),
        Some(step.next_due),
        text_data(&live),
        Ring::of(&live),
    ))
}

/// What a rotation pass did: the change, the next due step, the ring's
/// data after, and what rotation reads of it.
type RotationOutcome = (
    Option<SecretChange>,
    Option<DateTime<Utc>>,
    BTreeMap<String, String>,
    Ring,
);

/// When the server certificate in a `P-redis` Secret's text data is due
/// for renewal.
fn renew_after(data: &BTreeMap<String, String>) -> Option<DateTime<Utc>> {
    match TlsMaterial::from_data(data) {
        Stored::Usable(m) => Some(m.renew_after),
        _ => None,
    }
}

/// Time from `now` to `due`, rounded up to whole seconds so the requeue
/// lands at or after it; zero when it has passed.
fn until(now: DateTime<Utc>, due: DateTime<Utc>) -> std::time::Duration {
    let d = (due - now).to_std().unwrap_or_default();
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    std::time::Duration::from_secs(secs)
}

/// The `P-redis` Secret `live` re-rendered at `now`, if that changes it,
/// with a note for an event when a password rotation started or ended: a
/// group came or went (its password and user with it), the persistence or
/// TLS setting changed, the certificate is due, the Secret predates
/// per-role users, or a [password rotation](crate::password_rotation) takes
/// its next step. A stored password changes only by a rotation; a role
/// without one gets a fresh one.
///
/// # Errors
/// A stored password that is not UTF-8 or not a valid password (the
/// Secret was edited by hand), or a spec that does not compile.
pub fn redis_secret_update(
    sp: &StreamPipeline,
    mut live: Secret,
    now: DateTime<Utc>,
    settings: &OperatorSettings,
    applied: &dyn Fn(&BTreeMap<String, String>) -> bool,
) -> Result<Option<(Secret, Option<String>)>, Error> {
    let name = live.name_any();
    let stored = text_data(&live);
    let tls = managed_tls(&sp.spec)
        .then(|| tls_for(sp, &stored, now, settings.redis_cert_lifetime))
        .transpose()?;
    let mut annotations = live.metadata.annotations.clone().unwrap_or_default();
    // A second password per role, by suffix; one a person garbled is
    // dropped (it is only ever hashed) rather than blocking the pipeline.
    let second = |suffix: &str| -> BTreeMap<String, String> {
        stored
            .iter()
            .filter_map(|(k, v)| Some((k.strip_suffix(suffix)?.to_string(), v.clone())))
            .filter(|(k, v)| {
                let usable = stored.contains_key(k) && password_acceptable(v);
                if !usable {
                    warn!(secret = %name, key = %format!("{k}{suffix}"), "dropping an unusable second Redis password");
                }
                usable
            })
            .collect()
    };
    let (next, previous) = (second(NEXT_SUFFIX), second(PREVIOUS_SUFFIX));
    let held = password_rotation::Held {
        next: !next.is_empty(),
        previous: !previous.is_empty(),
        applied: applied(&stored),
    };
    let step = password_rotation::next(
        sp.annotations()
            .get(password_rotation::REQUEST)
            .map(String::as_str),
        &annotations,
        held,
        now,
        settings.key_propagation,
    );
    let stamp = || now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // A role's second password (staged passwords are made while rendering),
    // its key suffix, and the event's note.
    let (also, suffix, note): (BTreeMap<String, String>, &str, Option<String>) = match &step {
        Step::Idle => (BTreeMap::new(), "", None),
        Step::Clean => {
            annotations.remove(password_rotation::PHASE);
            annotations.remove(password_rotation::SINCE);
            (BTreeMap::new(), "", None)
        }
        Step::Stage { handled } => {
            annotations.insert(password_rotation::HANDLED.into(), handled.clone());
            annotations.insert(password_rotation::PHASE.into(), "staged".into());
            annotations.remove(password_rotation::SINCE);
            // Made while rendering, one per rotated role.
            (
                BTreeMap::new(),
                NEXT_SUFFIX,
                Some(format!(
                    "{name}: new Redis passwords staged; pods get them once Redis accepts them"
                )),
            )
        }
        Step::AwaitApply => (next.clone(), NEXT_SUFFIX, None),
        Step::Promote => {
            annotations.insert(password_rotation::PHASE.into(), "both".into());
            annotations.insert(password_rotation::SINCE.into(), stamp());
            // The old current password becomes the previous one.
            let old = next
                .keys()
                .filter_map(|k| Some((k.clone(), stored.get(k)?.clone())))
                .collect();
            (old, PREVIOUS_SUFFIX, Some(format!(
                "{name}: new Redis passwords given to the pods; the previous ones are accepted until they have read them"
            )))
        }
        Step::Wait { .. } => (previous.clone(), PREVIOUS_SUFFIX, None),
        Step::Restamp => {
            annotations.insert(password_rotation::PHASE.into(), "both".into());
            annotations.insert(password_rotation::SINCE.into(), stamp());
            (previous.clone(), PREVIOUS_SUFFIX, None)
        }
        Step::Finish => {
            annotations.remove(password_rotation::PHASE);
            annotations.remove(password_rotation::SINCE);
            (
                BTreeMap::new(),
                "",
                Some(format!("{name}: previous Redis passwords retired")),
            )
        }
    };
    let data = live.data.get_or_insert_with(Default::default);
    let mut unusable = None;
    let current = |role: &redis_acl::Role, unusable: &mut Option<String>| {
        let key = role.password_key();
        if matches!(step, Step::Promote) {
            if let Some(new) = next.get(&key) {
                return new.clone();
            }
        }
        match data.get(&key).map(|p| String::from_utf8(p.0.clone())) {
            None => fresh_password(),
            Some(Ok(p)) => p,
            Some(Err(_)) => {
                *unusable = Some(key);
                fresh_password()
            }
        }
    };
    let stage = matches!(step, Step::Stage { .. });
    let rendered = redis_secret_rotating(
        sp,
        |role| current(role, &mut unusable),
        |role| match stage {
            true => password_rotation::rotates(role).then(fresh_password),
            false => also.get(&role.password_key()).cloned(),
        },
        suffix,
        tls.as_ref(),
    );
    if let Some(key) = unusable {
        return Err(Error::Unusable {
            what: "Secret",
            name,
            reason: format!("key `{key}` is not UTF-8"),
        });
    }
    let rendered = rendered.map_err(|e| match e {
        render::Error::InvalidInput { what, reason } => Error::Unusable {
            what: "Secret",
            name: name.clone(),
            reason: format!("a stored {what} is unusable: {reason}"),
        },
        other => other.into(),
    })?;
    let wanted = rendered.data.unwrap_or_default();
    let same_annotations = live.metadata.annotations.clone().unwrap_or_default() == annotations;
    if *data == wanted && same_annotations {
        return Ok(None);
    }
    *data = wanted;
    live.metadata.annotations = Some(annotations);
    Ok(Some((live, note)))
}

/// When the next step of a password rotation recorded on `P-redis` is due,
/// if one is under way: soon while new passwords wait to be accepted live,
/// else when the previous ones may go.
fn rotation_due(s: &Secret, now: DateTime<Utc>, propagation: Duration) -> Option<Duration> {
    match s
        .annotations()
        .get(password_rotation::PHASE)
        .map(String::as_str)
    {
        Some("staged") => Some(STAGED_RECHECK),
        Some("both") => {
            let ends = password_rotation::wait_ends(s.annotations(), now, propagation)?;
            Some(until(now, ends).max(Duration::from_secs(1)))
        }
        _ => None,
    }
}

/// How soon a pass looks again at passwords staged for Redis to accept.
const STAGED_RECHECK: Duration = Duration::from_secs(2);

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
    use crate::render::redis::CONFIG_KEY;
    use k8s_openapi::ByteString;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// `redis_secret_update` with [`settings`], the Secret only.
    fn upd(sp: &StreamPipeline, live: Secret, now: DateTime<Utc>) -> Result<Option<Secret>, Error> {
        redis_secret_update(sp, live, now, &settings(), &|_| false).map(|u| u.map(|(s, _)| s))
    }

    fn settings() -> OperatorSettings {
        OperatorSettings {
            redis_cert_lifetime: DAY,
            ..Default::default()
        }
    }

    fn pipeline(persistence: &str) -> StreamPipeline {
        let mut sp: StreamPipeline = sluice_crds::yaml::from_str(&format!(
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
        let a = fresh_redis_secret(&sp, DAY).unwrap();
        let b = fresh_redis_secret(&sp, DAY).unwrap();
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
    fn rotation_timings_come_from_the_spec_and_the_operator_settings() {
        let settings = OperatorSettings {
            key_propagation: std::time::Duration::from_secs(100),
            ..OperatorSettings::default()
        };
        let t = timings(&pipeline("aof"), &settings).unwrap();
        assert_eq!(t.propagation, std::time::Duration::from_secs(100));
        // The spec sets neither: the defaults of `sluice_crds::plan`.
        assert_eq!(t.rotate_every, sluice_crds::plan::DEFAULT_ROTATE_EVERY);
        assert_eq!(
            t.signed_life,
            sluice_crds::plan::DEFAULT_TIMEOUT + sluice_crds::plan::DEFAULT_RESULTS_TTL
        );
        assert_eq!(t.clock_skew, sluice_crds::plan::DEFAULT_CLOCK_SKEW);
    }

    #[test]
    fn the_recheck_lands_at_or_after_the_due_time() {
        use chrono::TimeZone;
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let ms = |n| chrono::TimeDelta::milliseconds(n);
        let secs = |d: std::time::Duration| d.as_secs_f64();
        assert_eq!(secs(until(now, now + ms(1))), 1.0);
        assert_eq!(secs(until(now, now + ms(150_000))), 150.0);
        assert_eq!(secs(until(now, now + ms(150_001))), 151.0);
        assert_eq!(secs(until(now, now - ms(5))), 0.0);
    }

    #[test]
    fn the_redis_config_follows_persistence_and_keeps_the_passwords() {
        let now = Utc::now();
        let update = |sp: &StreamPipeline, live: Secret| upd(sp, live, now);
        let live = fresh_redis_secret(&pipeline("aof"), DAY).unwrap();
        assert_eq!(update(&pipeline("aof"), live.clone()).unwrap(), None);
        let updated = update(&pipeline("none"), live.clone()).unwrap().unwrap();
        let data = updated.data.unwrap();
        let stored = live.data.as_ref().unwrap();
        for key in ["ingress.password", "admin.password", "probe.password"] {
            assert_eq!(data[key], stored[key], "{key} kept");
        }
        let conf = String::from_utf8(data[CONFIG_KEY].0.clone()).unwrap();
        assert!(conf.contains("appendonly no"));

        // A Secret from before per-role users: the legacy `password` goes,
        // every role gets one, and the file names each user.
        let mut legacy = live.clone();
        legacy.data = Some(
            [
                (
                    "password".to_string(),
                    ByteString(b"0123456789abcdef0123".to_vec()),
                ),
                (
                    CONFIG_KEY.to_string(),
                    ByteString(b"requirepass x".to_vec()),
                ),
            ]
            .into(),
        );
        let upgraded = update(&pipeline("aof"), legacy)
            .unwrap()
            .unwrap()
            .data
            .unwrap();
        assert!(!upgraded.contains_key("password"));
        assert!(upgraded.contains_key("ingress.password"));
        let conf = String::from_utf8(upgraded[CONFIG_KEY].0.clone()).unwrap();
        assert!(conf.contains("\nuser ingress on #"), "{conf}");

        let mut broken = live;
        broken
            .data
            .as_mut()
            .unwrap()
            .insert("ingress.password".into(), ByteString(vec![0xff]));
        let e = update(&pipeline("none"), broken).unwrap_err();
        assert!(matches!(e, Error::Unusable { .. }));
    }

    fn tls_of(s: &Secret) -> TlsMaterial {
        match TlsMaterial::from_data(&text_data(s)) {
            Stored::Usable(m) => m,
            _ => panic!("P-redis holds usable TLS material"),
        }
    }

    #[test]
    fn the_redis_certificate_is_kept_until_due_then_renewed_from_the_same_ca() {
        let sp = pipeline("aof");
        let live = fresh_redis_secret(&sp, DAY).unwrap();
        let first = tls_of(&live);
        let conf = String::from_utf8(live.data.as_ref().unwrap()[CONFIG_KEY].0.clone()).unwrap();
        assert!(
            conf.contains("tls-port 6379\n"),
            "TLS is the default: {conf}"
        );
        let before_due = first.renew_after - chrono::Duration::minutes(1);
        assert_eq!(
            upd(&sp, live.clone(), before_due).unwrap(),
            None,
            "nothing changes before the renewal is due"
        );
        let renewed = upd(&sp, live.clone(), first.renew_after)
            .unwrap()
            .expect("due: renewed");
        let second = tls_of(&renewed);
        assert_eq!(second.ca_cert, first.ca_cert, "the CA stays");
        assert_ne!(second.cert, first.cert);
        assert!(second.renew_after > first.renew_after);
        for key in ["ingress.password", "admin.password"] {
            assert_eq!(
                renewed.data.as_ref().unwrap()[key],
                live.data.as_ref().unwrap()[key]
            );
        }
        // A certificate the CA did not sign (edited by hand) is replaced by
        // one it signs.
        let stranger = TlsMaterial::fresh("p", "demo", Utc::now(), DAY).unwrap();
        let mut swapped = live.clone();
        swapped.data.as_mut().unwrap().insert(
            crate::redis_tls::CERT_KEY.into(),
            ByteString(stranger.cert.clone().into_bytes()),
        );
        let fixed = tls_of(&upd(&sp, swapped, Utc::now()).unwrap().expect("replaced"));
        assert_eq!(fixed.ca_cert, first.ca_cert);
        assert!(fixed.verifies("p", "demo", Utc::now()));
        // Damaged material (a key edited by hand) is replaced by a new CA.
        let mut damaged = live.clone();
        damaged.data.as_mut().unwrap().insert(
            crate::redis_tls::CA_KEY_KEY.into(),
            ByteString(b"not a key".to_vec()),
        );
        let repaired = upd(&sp, damaged, Utc::now()).unwrap().expect("repaired");
        assert_ne!(tls_of(&repaired).ca_cert, first.ca_cert);
    }

    #[test]
    fn turning_tls_off_drops_the_material_and_the_tls_lines() {
        let live = fresh_redis_secret(&pipeline("aof"), DAY).unwrap();
        let mut off = pipeline("aof");
        off.spec.redis.as_mut().unwrap().tls = Some(false);
        let plain = upd(&off, live, Utc::now()).unwrap().expect("changed");
        let data = text_data(&plain);
        assert!(matches!(TlsMaterial::from_data(&data), Stored::Absent));
        assert!(!data[CONFIG_KEY].contains("tls"), "{}", data[CONFIG_KEY]);
        assert!(fresh_redis_secret(&off, DAY)
            .map(|s| matches!(TlsMaterial::from_data(&text_data(&s)), Stored::Absent))
            .unwrap());
    }

    #[test]
    fn a_password_rotation_stages_promotes_once_applied_then_retires_the_old() {
        use crate::render::redis_acl::password_hash;
        let t0 = Utc::now();
        let live = fresh_redis_secret(&pipeline("aof"), DAY).unwrap();
        let before = text_data(&live);
        let mut sp = pipeline("aof");
        sp.metadata.annotations = Some(BTreeMap::from([(
            password_rotation::REQUEST.to_string(),
            "r1".to_string(),
        )]));
        let step = |live: Secret, at: DateTime<Utc>, applied: bool| {
            redis_secret_update(&sp, live, at, &settings(), &|_| applied)
                .unwrap()
                .map(|(s, _)| s)
        };
        let accepts = |data: &BTreeMap<String, String>, user: &str, password: &str| {
            data[CONFIG_KEY]
                .lines()
                .find(|l| l.starts_with(&format!("user {user} on ")))
                .unwrap()
                .contains(&password_hash(password))
        };

        // Staged: pods still read the old password; Redis accepts both.
        let staged = step(live, t0, false).expect("staged");
        let data = text_data(&staged);
        for user in ["ingress", "admin", "autoscaler", "group-web"] {
            let key = format!("{user}.password");
            if !data.contains_key(&key) {
                continue;
            }
            assert_eq!(
                data[&key], before[&key],
                "{user}: the mounted key is unchanged"
            );
            let new = &data[&format!("{key}.next")];
            assert!(accepts(&data, user, new) && accepts(&data, user, &before[&key]));
        }
        for user in ["keda", "probe"] {
            assert!(
                !data.contains_key(&format!("{user}.password.next")),
                "{user}"
            );
        }
        assert_eq!(staged.annotations()[password_rotation::PHASE], "staged");
        assert_eq!(
            step(staged.clone(), t0, false),
            None,
            "not promoted until Redis accepts the new passwords"
        );

        // Promoted: the new one is mounted, the old one kept as previous.
        let both = step(staged, t0, true).expect("promoted");
        let promoted = text_data(&both);
        assert_eq!(promoted["ingress.password"], data["ingress.password.next"]);
        assert_eq!(
            promoted["ingress.password.previous"],
            before["ingress.password"]
        );
        assert!(!promoted.contains_key("ingress.password.next"));
        assert_eq!(
            promoted[CONFIG_KEY], data[CONFIG_KEY],
            "the accepted set does not change: nothing to apply"
        );
        let due = rotation_due(&both, t0, settings().key_propagation).unwrap();
        let ends = t0 + chrono::Duration::from_std(settings().key_propagation).unwrap();
        assert!(due >= Duration::from_secs(1));
        assert_eq!(
            step(both.clone(), ends - chrono::Duration::seconds(1), false),
            None,
            "both stay accepted until the kubelet has shown the new files"
        );
        let done = step(both, ends, false).expect("finished");
        let after = text_data(&done);
        assert!(after
            .keys()
            .all(|k| !k.ends_with(".previous") && !k.ends_with(".next")));
        assert_eq!(after["ingress.password"], data["ingress.password.next"]);
        assert!(!accepts(&after, "ingress", &before["ingress.password"]));
        assert!(!done.annotations().contains_key(password_rotation::PHASE));
        assert_eq!(
            step(done, ends + chrono::Duration::hours(1), false),
            None,
            "the same request is not acted on twice"
        );
    }

    #[test]
    fn a_pipeline_created_with_a_rotation_request_does_not_rotate_at_once() {
        let mut sp = pipeline("aof");
        sp.metadata.annotations = Some(BTreeMap::from([(
            password_rotation::REQUEST.to_string(),
            "r1".to_string(),
        )]));
        let live = fresh_redis_secret(&sp, DAY).unwrap();
        assert_eq!(
            redis_secret_update(&sp, live, Utc::now(), &settings(), &|_| true).unwrap(),
            None
        );
    }

    #[test]
    fn a_garbled_second_password_is_dropped_not_fatal() {
        let live = fresh_redis_secret(&pipeline("aof"), DAY).unwrap();
        let mut edited = live.clone();
        edited.data.as_mut().unwrap().insert(
            "ingress.password.previous".into(),
            ByteString(b"x y".to_vec()),
        );
        let fixed = upd(&pipeline("aof"), edited, Utc::now())
            .unwrap()
            .expect("repaired");
        assert!(!text_data(&fixed).contains_key("ingress.password.previous"));
    }
}
