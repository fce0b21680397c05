//! Keeps the live ACL users of each managed Redis equal to the ones its
//! `P-redis` Secret describes ([`crate::render::redis_acl`]).
//!
//! Redis reads its users from `redis.conf` only when it starts, and the
//! operator never restarts Redis for a user change (without persistence
//! that would drop every queue). So when a group comes or goes, the
//! operator connects as the `admin` user and runs `ACL SETUSER` for every
//! role (each from `reset`, so nothing granted earlier survives) and
//! `ACL DELUSER` for the users of groups that are gone. The file and the
//! live users then agree, and a restart changes nothing.
//!
//! ```text
//! reconcile ─▶ P-redis ensured ─▶ Redis StatefulSet ready? ─▶ digest of the users
//!                                   same as applied < 5 min ago ─▶ nothing
//!                                   else ─▶ background task: AUTH admin, SETUSER…, DELUSER…,
//!                                            with TLS: CONFIG SET tls-cert-file… (reload)
//!                                            ok  ─▶ remember the digest
//!                                            err ─▶ warn; the next reconcile tries again
//! ```
//!
//! What was applied is trusted for five minutes, then applied again (a
//! Redis restarted from an older file, or a stale apply by another operator
//! replica during a leader change, is repaired then).
//!
//! The work runs beside the reconcile, never inside it: a Redis that does
//! not answer delays no other object. Passwords never reach logs or errors;
//! the rules sent carry only their SHA-256.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use sluice_platform::{RedisBackend, RedisConfig};
use tracing::{info, warn};

use crate::password_rotation::{self, NEXT_SUFFIX, PREVIOUS_SUFFIX};
use crate::redis_tls::{CA_CERT_KEY, CERT_KEY};
use crate::render::redis_acl::{self, Role, User};

/// Connect and command timeout of the admin connection.
const TIMEOUT: Duration = Duration::from_secs(3);
/// How long an applied set of users is trusted before it is applied again:
/// a Redis that restarted from an older file, or a stale apply of another
/// operator replica during a leader change, is repaired within this.
const RESYNC: Duration = Duration::from_secs(300);
/// How long a written pause is trusted before it is written again: a Redis
/// restarted without persistence (or from an AOF a second short) has lost
/// the key, and its pods run until it is back.
pub const PAUSED_RESYNC: Duration = Duration::from_secs(30);

/// The users one managed Redis should have, with the passwords each
/// accepts (the current one first; the previous one too while a password
/// rotation is under way), and with TLS the CA its certificate chains to
/// and that certificate.
#[derive(Clone)]
pub struct Wanted {
    pub users: Vec<(User, Vec<String>)>,
    /// The admin password the operator connects with.
    admin: Option<String>,
    pub tls: Option<Tls>,
    /// The pipeline's pause key, and whether it should exist
    /// (`spec.paused`).
    pub pause: Option<(String, bool)>,
}

/// Managed Redis's TLS, as `P-redis` holds it.
#[derive(Clone)]
pub struct Tls {
    /// PEM of the CA the admin connection trusts.
    pub ca: String,
    /// PEM of the server certificate Redis should serve: when it changes,
    /// the next apply makes Redis load it.
    pub cert: String,
}

impl std::fmt::Debug for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.users.iter().map(|(u, _)| u.role.user()).collect();
        f.debug_struct("Wanted").field("users", &names).finish()
    }
}

impl Wanted {
    /// The users of `users` whose password `passwords` (the `P-redis`
    /// data) holds; `None` if any is missing (the Secret is not written
    /// yet, and the next reconcile comes back).
    /// With TLS when `passwords` holds a CA certificate.
    pub fn from_secret(users: Vec<User>, passwords: &BTreeMap<String, String>) -> Option<Self> {
        let users = users
            .into_iter()
            .map(|u| {
                let key = u.role.password_key();
                let mut accepted = vec![passwords.get(&key)?.clone()];
                for suffix in [NEXT_SUFFIX, PREVIOUS_SUFFIX] {
                    accepted.extend(passwords.get(&format!("{key}{suffix}")).cloned());
                }
                Some((u, accepted))
            })
            .collect::<Option<Vec<_>>>()?;
        let tls = match (passwords.get(CA_CERT_KEY), passwords.get(CERT_KEY)) {
            (Some(ca), Some(cert)) => Some(Tls {
                ca: ca.clone(),
                cert: cert.clone(),
            }),
            _ => None,
        };
        let admin = password_rotation::operator_password(passwords, &Role::Admin.password_key())
            .map(str::to_string);
        Some(Self {
            users,
            admin,
            tls,
            pause: None,
        })
    }

    /// The same, with the pipeline paused or not through `key`.
    pub fn with_pause(mut self, key: String, paused: bool) -> Self {
        self.pause = Some((key, paused));
        self
    }

    /// The admin's password Redis has surely known longest
    /// ([`password_rotation::operator_password`]).
    fn admin_password(&self) -> Option<&str> {
        self.admin.as_deref()
    }

    /// Identifies exactly the users and TLS [`apply`] would send (not the
    /// pause, which is tracked apart: a pause that fails never holds back a
    /// password rotation).
    fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (u, p) in &self.users {
            for a in u.setuser_args(&refs(p)) {
                h.update(a.as_bytes());
                h.update([0]);
            }
            h.update([1]);
        }
        if let Some(t) = &self.tls {
            h.update(t.ca.as_bytes());
            h.update([0]);
            h.update(t.cert.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn refs(passwords: &[String]) -> Vec<&str> {
    passwords.iter().map(String::as_str).collect()
}

/// What [`apply`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub set: Vec<String>,
    pub deleted: Vec<String>,
    /// Redis was told to load its certificate files again.
    pub tls_reloaded: bool,
}

/// What [`apply`] did: the users, and the pause when [`Wanted::pause`] asks
/// for one (whether the pipeline was left paused).
#[derive(Debug)]
pub struct Outcome {
    /// `None` when the users were not set (they were in place already).
    pub users: Option<Result<Applied, String>>,
    pub pause: Option<Result<bool, String>>,
}

/// Makes the Redis behind `redis` (connected as `admin`) hold `wanted`:
/// `default` off with no password and no command, every wanted user set
/// from `reset`, the pause key set or deleted (right after the users, whose
/// admin rules allow it, so neither a `DELUSER` nor a certificate reload
/// that fails holds it back), the users of groups not wanted any more
/// deleted. Users that are not a sluice role are left alone.
///
/// Errors (in [`Outcome`]): Redis unreachable or refusing a command; the
/// message names the user, or the pause.
pub async fn apply(redis: &RedisBackend, wanted: &Wanted) -> Outcome {
    let set = set_users(redis, wanted).await;
    let pause = apply_pause(redis, wanted).await;
    let users = match set {
        Ok(set) => finish_users(redis, wanted, set).await,
        Err(e) => Err(e),
    };
    Outcome {
        users: Some(users),
        pause,
    }
}

/// Only the pause of `wanted`, when it asks for one: whether the pipeline
/// was left paused.
pub async fn apply_pause(redis: &RedisBackend, wanted: &Wanted) -> Option<Result<bool, String>> {
    let (key, paused) = wanted.pause.as_ref()?;
    let written = redis.set_paused(key, *paused).await;
    Some(written.map(|()| *paused).map_err(|e| {
        let what = if *paused { "pausing" } else { "resuming" };
        format!("{what} the pipeline: {e}")
    }))
}

/// `default` off, then every wanted user from `reset`; the names set.
async fn set_users(redis: &RedisBackend, wanted: &Wanted) -> Result<Vec<String>, String> {
    let default: Vec<String> = redis_acl::DEFAULT_USER_LINE
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    redis
        .acl_setuser(&default)
        .await
        .map_err(|e| e.to_string())?;
    // Admin last: its rules do not change, but were they to, the
    // connection keeps working until every other user is set.
    let mut ordered: Vec<&(User, Vec<String>)> = wanted.users.iter().collect();
    ordered.sort_by_key(|(u, _)| u.role == Role::Admin);
    let mut set = vec![];
    for (u, p) in ordered {
        redis
            .acl_setuser(&u.setuser_args(&refs(p)))
            .await
            .map_err(|e| e.to_string())?;
        set.push(u.role.user());
    }
    Ok(set)
}

/// The users of groups gone deleted, and with TLS the certificate reloaded.
async fn finish_users(
    redis: &RedisBackend,
    wanted: &Wanted,
    set: Vec<String>,
) -> Result<Applied, String> {
    let mut applied = Applied {
        set,
        ..Default::default()
    };
    let keep: HashSet<String> = wanted.users.iter().map(|(u, _)| u.role.user()).collect();
    let gone: Vec<String> = redis
        .acl_users()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|n| n.starts_with(Role::GROUP_PREFIX) && !keep.contains(n))
        .collect();
    redis.acl_deluser(&gone).await.map_err(|e| e.to_string())?;
    applied.deleted = gone;
    if wanted.tls.is_some() {
        // The files on disk lag the Secret by up to the kubelet's sync
        // period: a reload now may load the old pair again, and the one
        // after the next resync the new one, long before the old expires
        // (renewal starts with a third of its life left).
        redis
            .reload_tls()
            .await
            .map_err(|e| format!("reloading the TLS certificate: {e}"))?;
        applied.tls_reloaded = true;
    }
    Ok(applied)
}

/// The key [`RedisUsers`] keeps a pipeline under: its uid too, so a
/// pipeline deleted and created again under the same name (a restore)
/// inherits nothing of the one before.
pub fn key(namespace: &str, name: &str, uid: &str) -> String {
    format!("{namespace}/{name}/{uid}")
}

/// How long after `failed` pause writes in a row the next is tried: 2 s,
/// doubling, at most 30 s.
fn pause_backoff(failed: u32) -> Duration {
    Duration::from_secs(2)
        .saturating_mul(1 << failed.saturating_sub(1).min(4))
        .min(PAUSED_RESYNC)
}

/// Which users each managed Redis has been given, by [`key`].
#[derive(Debug, Default)]
pub struct RedisUsers {
    /// Digest of what was applied, and when.
    applied: Mutex<HashMap<String, (String, Instant)>>,
    /// Whether the last pause write left the pipeline paused, and when.
    paused: Mutex<HashMap<String, (bool, Instant)>>,
    /// Why the last pause write failed, how many failed in a row and when
    /// the last did, until one succeeds.
    pause_errors: Mutex<HashMap<String, (String, u32, Instant)>>,
    running: Mutex<HashSet<String>>,
}

impl RedisUsers {
    /// Starts a background [`apply`] to the managed Redis of `key` at
    /// `address` (`host:port`) unless exactly `wanted` was applied there
    /// already or an apply is running. Returns whether one was started.
    pub fn sync(self: &Arc<Self>, key: &str, address: &str, wanted: Wanted) -> bool {
        let digest = wanted.digest();
        let users_fresh = self
            .applied
            .lock()
            .get(key)
            .is_some_and(|(d, at)| *d == digest && at.elapsed() < RESYNC);
        // A pause is written again more often: a Redis that restarted
        // without persistence has lost the key and the pods run meanwhile.
        let pause_fresh = wanted.pause.as_ref().is_none_or(|(_, want)| {
            self.paused.lock().get(key).is_some_and(|(p, at)| {
                p == want && at.elapsed() < if *p { PAUSED_RESYNC } else { RESYNC }
            })
        });
        // A pause write that fails is tried again after 2 s, doubling to 30 s.
        let pause_waits = self
            .pause_errors
            .lock()
            .get(key)
            .is_some_and(|(_, failed, at)| at.elapsed() < pause_backoff(*failed));
        if (users_fresh && (pause_fresh || pause_waits)) || !self.running.lock().insert(key.into())
        {
            return false;
        }
        let Some(admin) = wanted.admin_password().map(str::to_string) else {
            self.running.lock().remove(key);
            return false;
        };
        let scheme = if wanted.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let url = format!("{scheme}://{}:{admin}@{address}", Role::Admin.user());
        let (this, key) = (self.clone(), key.to_string());
        // What is written is stamped with when the write began: a resync
        // after 30 s means 30 s after, not 30 s after the write ended.
        let started = Instant::now();
        tokio::spawn(async move {
            let cfg = RedisConfig::from_url(&url).and_then(|cfg| match &wanted.tls {
                Some(t) => cfg.with_ca_pem(t.ca.as_bytes()),
                None => Ok(cfg),
            });
            let outcome = match cfg {
                Ok(cfg) => {
                    let cfg = cfg
                        .with_connect_timeout(TIMEOUT)
                        .with_command_timeout(TIMEOUT)
                        .with_pool_size(1);
                    match RedisBackend::connect(cfg).await {
                        // Users in place: the pause alone.
                        Ok(redis) if users_fresh => Outcome {
                            users: None,
                            pause: apply_pause(&redis, &wanted).await,
                        },
                        Ok(redis) => apply(&redis, &wanted).await,
                        Err(e) => Outcome {
                            users: Some(Err(e.to_string())),
                            pause: wanted
                                .pause
                                .as_ref()
                                .map(|_| Err(format!("connecting to Redis: {e}"))),
                        },
                    }
                }
                Err(e) => Outcome {
                    users: Some(Err(e.to_string())),
                    pause: wanted.pause.as_ref().map(|_| Err(e.to_string())),
                },
            };
            match outcome.pause {
                Some(Ok(p)) => {
                    let was = this.paused.lock().insert(key.clone(), (p, started));
                    if was.map(|(w, _)| w) != Some(p) {
                        info!(pipeline = %key, paused = p, "pause written to managed Redis");
                    }
                    this.pause_errors.lock().remove(&key);
                }
                Some(Err(e)) => {
                    warn!(pipeline = %key, error = %e, "cannot write the pause to managed Redis yet; tried again later");
                    let mut errors = this.pause_errors.lock();
                    let failed = errors.get(&key).map_or(0, |(_, n, _)| *n);
                    errors.insert(key.clone(), (e, failed.saturating_add(1), Instant::now()));
                }
                None => {}
            }
            match outcome.users {
                Some(Ok(a)) => {
                    info!(pipeline = %key, set = ?a.set, deleted = ?a.deleted, tls_reloaded = a.tls_reloaded, "managed Redis users applied");
                    this.applied.lock().insert(key.clone(), (digest, started));
                }
                Some(Err(e)) => {
                    warn!(pipeline = %key, error = %e, "cannot apply the managed Redis users yet; retried on the next reconcile");
                }
                None => {}
            }
            this.running.lock().remove(&key);
        });
        true
    }

    /// Whether exactly `wanted` is in place in the Redis of `key` (applied,
    /// and no apply running): a password rotation moves on only then.
    pub fn holds(&self, key: &str, wanted: &Wanted) -> bool {
        let digest = wanted.digest();
        self.applied
            .lock()
            .get(key)
            .is_some_and(|(d, _)| *d == digest)
            && !self.running.lock().contains(key)
    }

    /// Whether the users last given to [`Self::sync`] for `key` are in
    /// place.
    pub fn is_applied(&self, key: &str) -> bool {
        self.applied.lock().contains_key(key) && !self.running.lock().contains(key)
    }

    /// Whether the pipeline of `key` was left paused by the last pause
    /// write that succeeded; `None` before one did (since this process
    /// started).
    pub fn paused(&self, key: &str) -> Option<bool> {
        self.paused.lock().get(key).map(|(p, _)| *p)
    }

    /// Why the last pause write to the Redis of `key` failed, until one
    /// succeeds.
    pub fn pause_error(&self, key: &str) -> Option<String> {
        self.pause_errors.lock().get(key).map(|(e, _, _)| e.clone())
    }

    /// When the pause write that failed last for `key` is tried again.
    pub fn pause_retry_in(&self, key: &str) -> Option<Duration> {
        self.pause_errors.lock().get(key).map(|(_, failed, at)| {
            pause_backoff(*failed)
                .saturating_sub(at.elapsed())
                .max(Duration::from_millis(100))
        })
    }

    /// Whether an apply to the Redis of `key` is under way.
    pub fn is_running(&self, key: &str) -> bool {
        self.running.lock().contains(key)
    }

    /// Forgets the pause of a pipeline that has no managed Redis any more
    /// (what it held is gone with it).
    pub fn forget_pause(&self, key: &str) {
        self.paused.lock().remove(key);
        self.pause_errors.lock().remove(key);
    }

    /// Forgets a pipeline (deleted): a new one of the same name starts over.
    pub fn forget(&self, key: &str) {
        self.applied.lock().remove(key);
        self.forget_pause(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_pause_write_is_tried_again_ever_later_up_to_the_resync() {
        let waits: Vec<u64> = (1..=7).map(|n| pause_backoff(n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(pause_backoff(u32::MAX), PAUSED_RESYNC);
    }
}
