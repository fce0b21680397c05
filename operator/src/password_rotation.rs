//! Rotation of managed Redis's passwords, on request, with no restart and
//! no failed request.
//!
//! ```text
//! StreamPipeline annotation sluice.dev/rotate-redis-passwords: <token>
//!   token new ─▶ Stage: each rotated role gets a fresh password as
//!                <user>.password.next (mounted by no pod); redis.conf and,
//!                live, the users accept old and new           phase staged
//!   the live users confirmed ─▶ Promote: <user>.password = new (pods read
//!                it at their next connection), the old one kept as
//!                <user>.password.previous; accepted set unchanged
//!                                                              phase both
//!   propagation passed ─▶ Finish: the previous passwords go, from the
//!                Secret, redis.conf and the live users (open connections
//!                stay authenticated)
//! ```
//!
//! So a pod can read the new password only once Redis accepts it, and the
//! old one is dropped only after every pod has had the kubelet's
//! propagation delay to read the new one. The operator's own connections
//! use the password Redis has surely known longest ([`operator_password`]).
//!
//! `keda` and `probe` are not rotated: KEDA keeps the credentials of a
//! scaler it has built, and the Redis pod's probe reads its password from
//! the environment, which only a restart of Redis would renew.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::render::redis_acl::Role;

/// Annotation on the StreamPipeline: a new value asks for a rotation.
pub const REQUEST: &str = "sluice.dev/rotate-redis-passwords";
/// Annotation on `P-redis`: a digest of the request last acted on.
pub const HANDLED: &str = "sluice.dev/redis-passwords-rotated-for";
/// Annotation on `P-redis`: `staged` or `both` while a rotation runs.
pub const PHASE: &str = "sluice.dev/redis-password-rotation";
/// Annotation on `P-redis` while both are accepted and pods may read the
/// new one: since when.
pub const SINCE: &str = "sluice.dev/redis-password-rotation-since";
/// Data key suffixes of `P-redis` during a rotation.
pub const NEXT_SUFFIX: &str = ".next";
pub const PREVIOUS_SUFFIX: &str = ".previous";

/// Whether `role`'s password is rotated.
pub fn rotates(role: &Role) -> bool {
    !matches!(role, Role::Keda | Role::Probe)
}

/// How a request is recorded on `P-redis`: its digest, so any text the
/// user chose is stored bounded.
pub fn handled(request: &str) -> String {
    crate::hash::hex_prefix(request.as_bytes())
}

/// The password the operator's own connections use for the role whose
/// password key is `key`, from `P-redis`'s data: the one Redis has surely
/// known longest — the previous while pods move to the new one, else the
/// current (which, while a new one is only staged, is still the old).
pub fn operator_password<'a>(data: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    data.get(&format!("{key}{PREVIOUS_SUFFIX}"))
        .or_else(|| data.get(key))
        .map(String::as_str)
}

/// When the wait with both passwords accepted ends: `propagation` after
/// the start recorded in `annotations`; `None` when that start is missing,
/// unreadable or after `now` (edited by hand).
pub fn wait_ends(
    annotations: &BTreeMap<String, String>,
    now: DateTime<Utc>,
    propagation: Duration,
) -> Option<DateTime<Utc>> {
    let since = annotations
        .get(SINCE)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| *t <= now)?;
    Some(
        chrono::Duration::from_std(propagation)
            .ok()
            .and_then(|d| since.checked_add_signed(d))
            .unwrap_or(since),
    )
}

/// What a pass does to `P-redis`'s passwords.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing under way or asked for.
    Idle,
    /// Nothing under way, but marks of one are left (edited by hand):
    /// remove them.
    Clean,
    /// Fresh passwords staged for the rotated roles.
    Stage { handled: String },
    /// Staged, waiting for Redis to accept them live.
    AwaitApply,
    /// Staged and accepted live: pods may read them now.
    Promote,
    /// Both accepted and readable until `until`.
    Wait { until: DateTime<Utc> },
    /// Both accepted, but the start time is lost, unreadable or in the
    /// future (edited by hand): the wait starts again now.
    Restamp,
    /// The previous passwords go.
    Finish,
}

/// What `P-redis` holds of a rotation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Held {
    /// Some `<user>.password.next`.
    pub next: bool,
    /// Some `<user>.password.previous`.
    pub previous: bool,
    /// The live users accept exactly what the Secret says.
    pub applied: bool,
}

/// The step due at `now` for `P-redis` with `annotations` holding `held`,
/// when the pipeline asks for `request`.
pub fn next(
    request: Option<&str>,
    annotations: &BTreeMap<String, String>,
    held: Held,
    now: DateTime<Utc>,
    propagation: Duration,
) -> Step {
    if held.next {
        return if held.applied {
            Step::Promote
        } else {
            Step::AwaitApply
        };
    }
    if held.previous {
        let Some(until) = wait_ends(annotations, now, propagation) else {
            return Step::Restamp;
        };
        return if now >= until {
            Step::Finish
        } else {
            Step::Wait { until }
        };
    }
    match request.map(handled) {
        Some(h) if annotations.get(HANDLED) != Some(&h) => Step::Stage { handled: h },
        _ if annotations.contains_key(PHASE) || annotations.contains_key(SINCE) => Step::Clean,
        _ => Step::Idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROPAGATION: Duration = Duration::from_secs(150);

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn held(next: bool, previous: bool, applied: bool) -> Held {
        Held {
            next,
            previous,
            applied,
        }
    }

    #[test]
    fn a_request_is_staged_promoted_once_applied_and_finished_after_the_delay() {
        let now = at("2026-12-02T10:00:00Z");
        let none = Held::default();
        assert_eq!(
            next(None, &annotations(&[]), none, now, PROPAGATION),
            Step::Idle
        );
        let h = handled("r1");
        assert_eq!(
            next(Some("r1"), &annotations(&[]), none, now, PROPAGATION),
            Step::Stage { handled: h.clone() }
        );
        let staged = annotations(&[(HANDLED, &h), (PHASE, "staged")]);
        assert_eq!(
            next(
                Some("r1"),
                &staged,
                held(true, false, false),
                now,
                PROPAGATION
            ),
            Step::AwaitApply,
            "pods never see a password Redis does not accept yet"
        );
        assert_eq!(
            next(
                Some("r1"),
                &staged,
                held(true, false, true),
                now,
                PROPAGATION
            ),
            Step::Promote
        );
        let both = annotations(&[
            (HANDLED, &h),
            (PHASE, "both"),
            (SINCE, "2026-12-02T10:00:00Z"),
        ]);
        assert_eq!(
            next(
                Some("r1"),
                &both,
                held(false, true, true),
                at("2026-12-02T10:02:29Z"),
                PROPAGATION
            ),
            Step::Wait {
                until: at("2026-12-02T10:02:30Z")
            }
        );
        // A second request while one runs waits for it to end.
        assert!(matches!(
            next(
                Some("r2"),
                &both,
                held(false, true, true),
                at("2026-12-02T10:01:00Z"),
                PROPAGATION
            ),
            Step::Wait { .. }
        ));
        assert_eq!(
            next(
                Some("r1"),
                &both,
                held(false, true, false),
                at("2026-12-02T10:02:30Z"),
                PROPAGATION
            ),
            Step::Finish
        );
        let done = annotations(&[(HANDLED, &h)]);
        assert_eq!(next(Some("r1"), &done, none, now, PROPAGATION), Step::Idle);
        assert_eq!(
            next(Some("r2"), &done, none, now, PROPAGATION),
            Step::Stage {
                handled: handled("r2")
            }
        );
    }

    #[test]
    fn hand_edited_marks_are_repaired_not_trusted() {
        let now = at("2026-12-02T10:00:00Z");
        let both = held(false, true, true);
        for a in [
            annotations(&[]),
            annotations(&[(SINCE, "yesterday")]),
            annotations(&[(SINCE, "2026-12-03T10:00:00Z")]),
        ] {
            assert_eq!(
                next(None, &a, both, now, PROPAGATION),
                Step::Restamp,
                "{a:?}"
            );
        }
        let leftover = annotations(&[(PHASE, "both"), (SINCE, "2026-12-02T09:00:00Z")]);
        assert_eq!(
            next(None, &leftover, Held::default(), now, PROPAGATION),
            Step::Clean,
            "marks without passwords are removed, not waited on"
        );
    }

    #[test]
    fn the_operator_uses_the_password_redis_knows_longest() {
        let data: BTreeMap<String, String> = [
            ("admin.password", "new"),
            ("admin.password.previous", "old"),
            ("ingress.password", "cur"),
            ("ingress.password.next", "staged"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(operator_password(&data, "admin.password"), Some("old"));
        assert_eq!(operator_password(&data, "ingress.password"), Some("cur"));
        assert_eq!(operator_password(&data, "probe.password"), None);
    }

    #[test]
    fn keda_and_the_probe_keep_their_passwords() {
        assert!(rotates(&Role::Ingress));
        assert!(rotates(&Role::Group("io".into())));
        assert!(rotates(&Role::Admin));
        assert!(rotates(&Role::Autoscaler));
        assert!(!rotates(&Role::Keda));
        assert!(!rotates(&Role::Probe));
    }
}
