//! Key ring rotation (DESIGN §6): the pure state machine deciding the next
//! change to a generated key ring Secret `P-ipc-keys`.
//!
//! ```text
//!              rotateEvery after the            propagation             propagation + longest
//!              last completed rotation                                  interface timeout + clockSkew
//! stable ─────────────────────────────▶ added ──────────────▶ retiring ─────────────────────────────▶ stable
//! K signs                                K signs, N verifies   N signs, K still verifies               K dropped,
//!                                        (N on its way to      (pods that see N late keep              N signs
//!                                         every pod)            signing with K until they do)
//! ```
//!
//! Everything a step needs to know is on the Secret itself: the phase, the
//! time it started and the kids involved are annotations written in the same
//! update as the keys they describe, so an operator that restarts (or a new
//! leader) resumes the rotation at the step it was in, with the wait it was
//! in, and never starts over.
//!
//! [`next`] is a function of the Secret's annotations and entry names, the
//! [`Timings`] and `now`: no I/O, no clock and no randomness (the caller
//! supplies fresh key material when a step adds a key, see [`Step::apply`]),
//! so each transition is tested at its exact due time.
//!
//! # Guarantees
//! - A kid becomes `current` only after it has been in the Secret for the
//!   propagation delay, counted from a timestamp written together with it.
//! - A key is dropped only after another kid has been `current` for the
//!   propagation delay plus the longest interface timeout plus the clock
//!   skew, counted from a timestamp written together with that switch, and
//!   never before a `retire-after` time recorded earlier (a timeout
//!   shortened during the overlap does not shorten it).
//! - Whatever is missing, unreadable or contradictory (annotations edited or
//!   lost, a timestamp ahead of the clock because the clock went back) is
//!   resolved by entering a safe phase with its wait counted from now, never
//!   by shortening a wait; nothing is dropped and nothing made current in the
//!   same step.
//! - New kids are `k<unix seconds>`, later than every kid in the ring, so a
//!   kid is never reused for a different key.
//! - Only kids, phases and times appear in notes and reasons, never key
//!   material.
//!
//! # Assumptions
//! - The operator's clock does not jump forward (a backward jump is
//!   detected and handled as above).
//! - Runtime pods sign only with the kid their mounted `current` names.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use sluice_crds::Plan;

use crate::labels::{ROTATION_PHASE, ROTATION_STABLE, ROTATION_UPDATED};
use crate::render::KEY_RING_CURRENT;

/// Phase: the new key is in the ring and verifies; the old one still signs.
pub const PHASE_ADDED: &str = "added";
/// Phase: the new key signs; the old one still verifies until the overlap ends.
pub const PHASE_RETIRING: &str = "retiring";
/// Annotation: the kid being introduced (phases `added` and `retiring`).
pub const ROTATION_NEW_KID: &str = "sluice.dev/rotation-new-kid";
/// Annotation: the kid being retired (phases `added` and `retiring`);
/// comma-separated when a repaired ring retires several.
pub const ROTATION_OLD_KID: &str = "sluice.dev/rotation-old-kid";
/// Annotation: RFC 3339 time from which the retired kids may be dropped
/// (phase `retiring`).
pub const ROTATION_RETIRE_AFTER: &str = "sluice.dev/rotation-retire-after";

/// Every annotation the rotation writes; a step sets those it names and
/// removes the others.
const ANNOTATIONS: [&str; 5] = [
    ROTATION_PHASE,
    ROTATION_UPDATED,
    ROTATION_NEW_KID,
    ROTATION_OLD_KID,
    ROTATION_RETIRE_AFTER,
];

// === timings ===

/// How long each phase lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// `spec.security.rotateEvery`: from one completed rotation to the next.
    pub rotate_every: Duration,
    /// The operator's `--key-propagation`: the longest time the kubelet may
    /// take to show a changed Secret in a pod.
    pub propagation: Duration,
    /// How long after it was signed something must still verify: an
    /// envelope lives until its deadline, at most the longest (async)
    /// timeout, and an asynchronous answer is fetched up to `results.ttl`
    /// after that.
    pub signed_life: Duration,
    /// `spec.security.clockSkew`: receivers accept envelopes this long
    /// past their deadline by the signer's clock.
    pub clock_skew: Duration,
}

impl Timings {
    /// The timings of a compiled pipeline under the operator's propagation delay.
    pub fn new(plan: &Plan, propagation: Duration) -> Self {
        Self {
            rotate_every: plan.security.rotate_every,
            propagation,
            signed_life: plan.max_timeout().saturating_add(plan.results_ttl),
            clock_skew: plan.security.clock_skew,
        }
    }

    /// How long the old key keeps verifying after the new one became
    /// current: a pod may keep signing with the old key until it sees the
    /// switch (propagation), what it signed must verify for its life
    /// (longest timeout plus results.ttl), and receivers' clocks may lag
    /// (clock skew).
    pub fn overlap(&self) -> Duration {
        self.propagation
            .saturating_add(self.signed_life)
            .saturating_add(self.clock_skew)
    }
}

// === the ring as the state machine sees it ===

/// The parts of a key ring Secret rotation decides on: annotations, the
/// names of its entries and the kid `current` names. Never key material.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    pub annotations: BTreeMap<String, String>,
    /// Names of the data entries other than `current`.
    pub kids: BTreeSet<String>,
    /// Content of the `current` entry, trimmed; `None` when absent or not UTF-8.
    pub current: Option<String>,
}

impl Ring {
    pub fn of(secret: &Secret) -> Self {
        let data = secret.data.as_ref();
        Self {
            annotations: secret.metadata.annotations.clone().unwrap_or_default(),
            kids: data
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .filter(|k| k != KEY_RING_CURRENT)
                .collect(),
            current: data
                .and_then(|d| d.get(KEY_RING_CURRENT))
                .and_then(|v| std::str::from_utf8(&v.0).ok())
                .map(|s| s.trim().to_string()),
        }
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

// === decisions ===

/// What to do with a key ring now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing changes before `until`, when the next step falls due.
    Wait { until: DateTime<Utc> },
    /// Write this change now.
    Step(Step),
    /// The ring cannot be rotated as it is (no usable `current`); it is
    /// left exactly as it is. The reason names kids at most.
    Hold { reason: String },
}

/// One change to the key ring Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The phase the ring enters.
    pub phase: &'static str,
    /// A kid to add with fresh key material.
    pub add: Option<String>,
    /// The kid `current` will name.
    pub make_current: Option<String>,
    /// Entries to drop.
    pub remove: Vec<String>,
    /// The rotation annotations after the step; the others are removed.
    pub annotations: BTreeMap<&'static str, String>,
    /// What happened, for the event and the log: kids, phases, times.
    pub note: String,
    /// When the phase entered falls due for its next step.
    pub next_due: DateTime<Utc>,
}

impl Step {
    /// Applies the step to the live Secret. `fresh_key` is called once
    /// when the step adds a kid, and returns the new key as base64 of
    /// [`crate::render::KEY_LEN`] random bytes.
    pub fn apply(&self, secret: &mut Secret, fresh_key: impl FnOnce() -> String) {
        let data = secret.data.get_or_insert_with(Default::default);
        if let Some(kid) = &self.add {
            data.insert(kid.clone(), ByteString(fresh_key().into_bytes()));
        }
        if let Some(kid) = &self.make_current {
            data.insert(
                KEY_RING_CURRENT.to_string(),
                ByteString(kid.as_bytes().to_vec()),
            );
        }
        for kid in &self.remove {
            data.remove(kid);
        }
        let annotations = secret
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        for key in ANNOTATIONS {
            match self.annotations.get(key) {
                Some(v) => annotations.insert(key.to_string(), v.clone()),
                None => annotations.remove(key),
            };
        }
    }
}

// === the state machine ===

/// The next change to a generated key ring, or when it falls due.
///
/// # Guarantees
/// See the module documentation. The result depends only on the arguments.
pub fn next(ring: &Ring, t: &Timings, now: DateTime<Utc>) -> Decision {
    let current = match ring.current.as_deref() {
        Some(c) if ring.kids.contains(c) => c,
        Some(c) if valid_kid(c) => {
            return Decision::Hold {
                reason: format!("`current` names kid `{c}`, which is not in the ring"),
            }
        }
        Some(_) => {
            return Decision::Hold {
                reason: "`current` does not hold a valid kid".into(),
            }
        }
        None => {
            return Decision::Hold {
                reason: "has no `current` entry naming the signing kid".into(),
            }
        }
    };
    let others: Vec<String> = ring
        .kids
        .iter()
        .filter(|k| k.as_str() != current)
        .cloned()
        .collect();
    // A phase start ahead of the clock means the clock went back: its true
    // age is unknown but not negative, so counting it from now is safe.
    let updated = parse_time(ring.annotation(ROTATION_UPDATED)).filter(|u| *u <= now);
    let new_kid = ring
        .annotation(ROTATION_NEW_KID)
        .filter(|k| valid_kid(k) && ring.kids.contains(*k));
    match ring.annotation(ROTATION_PHASE) {
        Some(ROTATION_STABLE) => {
            if !others.is_empty() {
                return Decision::Step(retiring(
                    current,
                    &others,
                    None,
                    t,
                    now,
                    "phase stable, but the ring holds more than the current key".into(),
                    None,
                ));
            }
            let Some(u) = updated else {
                return Decision::Step(stable(
                    Vec::new(),
                    t,
                    now,
                    format!(
                        "{} missing, unreadable or ahead of the clock; the next rotation is \
                         counted from now ({})",
                        ROTATION_UPDATED,
                        show(after(now, t.rotate_every))
                    ),
                ));
            };
            let due = after(u, t.rotate_every);
            if now < due {
                return Decision::Wait { until: due };
            }
            let kid = fresh_kid(&ring.kids, now);
            let note = format!(
                "rotation started: added key {kid}, verifying only; {current} signs until {}",
                show(after(now, t.propagation))
            );
            Decision::Step(added(&kid, current, true, t, now, note))
        }
        Some(PHASE_ADDED) => match new_kid {
            Some(n) if n == current => Decision::Step(retiring(
                current,
                &others,
                None,
                t,
                now,
                format!("phase added, but the new key {n} is already current"),
                parse_time(ring.annotation(ROTATION_RETIRE_AFTER)),
            )),
            Some(n) => {
                let Some(u) = updated else {
                    let note = format!(
                        "{ROTATION_UPDATED} missing, unreadable or ahead of the clock; key {n} \
                         verifies only until {}",
                        show(after(now, t.propagation))
                    );
                    return Decision::Step(added(n, current, false, t, now, note));
                };
                let due = after(u, t.propagation);
                if now < due {
                    return Decision::Wait { until: due };
                }
                let retire_after = after(now, t.overlap());
                let old = others
                    .iter()
                    .filter(|k| k.as_str() != n)
                    .cloned()
                    .chain([current.to_string()])
                    .collect::<Vec<_>>();
                let note = format!(
                    "key {n} is now current; {} verifies until {}",
                    old.join(","),
                    show(retire_after)
                );
                Decision::Step(retiring(n, &old, Some(n), t, now, note, None))
            }
            None => {
                let kid = fresh_kid(&ring.kids, now);
                let note = format!(
                    "phase added, but the key being added is not in the ring; added key {kid}, \
                     verifying only; {current} signs until {}",
                    show(after(now, t.propagation))
                );
                Decision::Step(added(&kid, current, true, t, now, note))
            }
        },
        Some(PHASE_RETIRING) => {
            let recorded = parse_time(ring.annotation(ROTATION_RETIRE_AFTER));
            if new_kid != Some(current) {
                return Decision::Step(retiring(
                    current,
                    &others,
                    None,
                    t,
                    now,
                    format!("phase retiring, but {current} was not the key being introduced"),
                    recorded,
                ));
            }
            if others.is_empty() {
                return Decision::Step(stable(
                    Vec::new(),
                    t,
                    now,
                    format!("rotation complete: {current} is the only key"),
                ));
            }
            let (Some(u), Some(recorded)) = (updated, recorded) else {
                return Decision::Step(retiring(
                    current,
                    &others,
                    None,
                    t,
                    now,
                    format!(
                        "{ROTATION_UPDATED} or {ROTATION_RETIRE_AFTER} missing, unreadable or \
                         ahead of the clock"
                    ),
                    recorded,
                ));
            };
            let due = recorded.max(after(u, t.overlap()));
            if now < due {
                return Decision::Wait { until: due };
            }
            let note = format!(
                "rotation complete: dropped {}; {current} is the only key",
                others.join(",")
            );
            Decision::Step(stable(others, t, now, note))
        }
        phase => {
            let what = match phase {
                None => format!("{ROTATION_PHASE} missing"),
                Some(_) => format!("{ROTATION_PHASE} unknown"),
            };
            if others.is_empty() {
                let note = format!(
                    "{what}; the ring holds one key: stable from now, next rotation at {}",
                    show(after(now, t.rotate_every))
                );
                Decision::Step(stable(Vec::new(), t, now, note))
            } else {
                Decision::Step(retiring(current, &others, None, t, now, what, None))
            }
        }
    }
}

/// Enters `stable` now, dropping `remove`.
fn stable(remove: Vec<String>, t: &Timings, now: DateTime<Utc>, note: String) -> Step {
    Step {
        phase: ROTATION_STABLE,
        add: None,
        make_current: None,
        remove,
        annotations: BTreeMap::from([
            (ROTATION_PHASE, ROTATION_STABLE.to_string()),
            (ROTATION_UPDATED, stamp(now)),
        ]),
        note,
        next_due: after(now, t.rotate_every),
    }
}

/// Enters `added` now with `new` (added by this step when `add`) and
/// `old` still current.
fn added(new: &str, old: &str, add: bool, t: &Timings, now: DateTime<Utc>, note: String) -> Step {
    Step {
        phase: PHASE_ADDED,
        add: add.then(|| new.to_string()),
        make_current: None,
        remove: Vec::new(),
        annotations: BTreeMap::from([
            (ROTATION_PHASE, PHASE_ADDED.to_string()),
            (ROTATION_UPDATED, stamp(now)),
            (ROTATION_NEW_KID, new.to_string()),
            (ROTATION_OLD_KID, old.to_string()),
        ]),
        note,
        next_due: after(now, t.propagation),
    }
}

/// Enters `retiring` now with `new` current (made current by this step
/// when `make_current`) and `old` kept for the overlap. `keep_until` is a
/// retire-after recorded earlier, which is never lowered. A repair (no
/// `make_current`) explains itself in `why`; the note adds the plan.
fn retiring(
    new: &str,
    old: &[String],
    make_current: Option<&str>,
    t: &Timings,
    now: DateTime<Utc>,
    why: String,
    keep_until: Option<DateTime<Utc>>,
) -> Step {
    let retire_after =
        keep_until.map_or(after(now, t.overlap()), |k| k.max(after(now, t.overlap())));
    let note = if make_current.is_some() {
        why
    } else {
        format!(
            "{why}; {new} stays current, {} verifies until {}",
            old.join(","),
            show(retire_after)
        )
    };
    Step {
        phase: PHASE_RETIRING,
        add: None,
        make_current: make_current.map(str::to_string),
        remove: Vec::new(),
        annotations: BTreeMap::from([
            (ROTATION_PHASE, PHASE_RETIRING.to_string()),
            (ROTATION_UPDATED, stamp(now)),
            (ROTATION_NEW_KID, new.to_string()),
            (ROTATION_OLD_KID, old.join(",")),
            (ROTATION_RETIRE_AFTER, stamp(retire_after)),
        ]),
        note,
        next_due: retire_after,
    }
}

// === kids and times ===

/// The runtime's rule for a kid (`sluice_platform::keyring`): 1–64
/// characters of `A-Z a-z 0-9 _ -`, and never the `current` file's name.
pub fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 64
        && kid != KEY_RING_CURRENT
        && kid
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// A kid for a new key: `k<unix seconds>`, the seconds later than those of
/// every `k<seconds>[-…]` kid in the ring even if the clock went back, and
/// a `-<n>` suffix should the name still be taken.
pub fn fresh_kid(kids: &BTreeSet<String>, now: DateTime<Utc>) -> String {
    let newest = kids
        .iter()
        .filter_map(|k| k.strip_prefix('k')?.split('-').next()?.parse::<i64>().ok())
        .max();
    let secs = newest.map_or(now.timestamp(), |n| {
        now.timestamp().max(n.saturating_add(1))
    });
    let base = format!("k{secs}");
    let mut kid = base.clone();
    let mut n = 1u32;
    while kids.contains(&kid) {
        kid = format!("{base}-{n}");
        n += 1;
    }
    kid
}

/// Millisecond precision, so a wait counted from the stamp is never
/// shorter than the time actually elapsed since the write.
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// For notes: whole seconds are enough for a reader.
fn show(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s?.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `t + d`, saturating at the latest representable time.
pub fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const P: Duration = Duration::from_secs(150);
    const EVERY: Duration = Duration::from_secs(24 * 3600);
    const MS: Duration = Duration::from_millis(1);

    fn timings() -> Timings {
        Timings {
            rotate_every: EVERY,
            propagation: P,
            signed_life: Duration::from_secs(30),
            clock_skew: Duration::from_secs(30),
        }
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    fn before(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
        t - TimeDelta::from_std(d).unwrap()
    }

    /// A key ring Secret with the given entries (kid → key text, plus
    /// `current`) and annotations.
    fn secret(current: &str, kids: &[&str], annotations: &[(&str, &str)]) -> Secret {
        let mut data: BTreeMap<String, ByteString> = kids
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    ByteString(format!("key-of-{k}").into_bytes()),
                )
            })
            .collect();
        data.insert(
            KEY_RING_CURRENT.into(),
            ByteString(current.as_bytes().to_vec()),
        );
        let mut s = Secret {
            data: Some(data),
            ..Default::default()
        };
        s.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        s
    }

    fn step(d: Decision) -> Step {
        match d {
            Decision::Step(s) => s,
            other => panic!("expected a step, got {other:?}"),
        }
    }

    fn applied(mut s: Secret, st: &Step) -> Secret {
        st.apply(&mut s, || "fresh-key".to_string());
        s
    }

    fn stable_since(u: DateTime<Utc>) -> Secret {
        secret(
            "k100",
            &["k100"],
            &[(ROTATION_PHASE, "stable"), (ROTATION_UPDATED, &stamp(u))],
        )
    }

    #[test]
    fn overlap_is_propagation_plus_signed_life_plus_clock_skew() {
        let plan = sluice_crds::compile(
            sluice_crds::PipelineId {
                namespace: "n".into(),
                name: "p".into(),
            },
            &sluice_crds::yaml::from_str(
                "backends: {queue: memory, kv: memory, reply: memory}
interfaces:
  - {name: a, kind: http, path: /a, entry: n, timeout: 7s}
  - {name: b, kind: http, path: /b, entry: n, timeout: 12s}
  - {name: c, kind: http, path: /c, entry: n, timeout: 5s, asyncTimeout: 30s}
groups: [{name: web, role: ingress}]
nodes: [{name: n, group: web, uses: builtin/echo}]
security: {rotateEvery: 1h, clockSkew: 3s}
results: {ttl: 20s}
",
            )
            .unwrap(),
        )
        .unwrap();
        let t = Timings::new(&plan, Duration::from_secs(100));
        assert_eq!(t.rotate_every, Duration::from_secs(3600));
        assert_eq!(t.signed_life, Duration::from_secs(30 + 20));
        assert_eq!(t.overlap(), Duration::from_secs(100 + 30 + 20 + 3));
    }

    #[test]
    fn a_stable_ring_is_left_alone_until_rotate_every_has_passed() {
        let t = timings();
        let ring = Ring::of(&stable_since(t0()));
        let due = after(t0(), EVERY);
        assert_eq!(
            next(&ring, &t, before(due, MS)),
            Decision::Wait { until: due }
        );
        assert_eq!(next(&ring, &t, t0()), Decision::Wait { until: due });
        let s = step(next(&ring, &t, due));
        assert_eq!(s.phase, PHASE_ADDED);
        let new = s.add.clone().expect("a key is added");
        assert_eq!(new, format!("k{}", due.timestamp()));
        assert_eq!(s.make_current, None, "the new key must not sign yet");
        assert!(s.remove.is_empty());
        assert_eq!(s.annotations[ROTATION_NEW_KID], new);
        assert_eq!(s.annotations[ROTATION_OLD_KID], "k100");
        assert_eq!(s.annotations[ROTATION_UPDATED], stamp(due));
        assert_eq!(s.next_due, after(due, P));
        let out = applied(stable_since(t0()), &s);
        let data = out.data.as_ref().unwrap();
        assert_eq!(data[&new].0, b"fresh-key");
        assert_eq!(data[KEY_RING_CURRENT].0, b"k100");
        assert!(data.contains_key("k100"));
    }

    #[test]
    fn the_new_key_becomes_current_exactly_when_the_propagation_delay_has_passed() {
        let t = timings();
        let u = t0();
        let live = secret(
            "k100",
            &["k100", "k200"],
            &[
                (ROTATION_PHASE, PHASE_ADDED),
                (ROTATION_UPDATED, &stamp(u)),
                (ROTATION_NEW_KID, "k200"),
                (ROTATION_OLD_KID, "k100"),
            ],
        );
        let ring = Ring::of(&live);
        let due = after(u, P);
        assert_eq!(
            next(&ring, &t, before(due, MS)),
            Decision::Wait { until: due }
        );
        let s = step(next(&ring, &t, due));
        assert_eq!(s.phase, PHASE_RETIRING);
        assert_eq!(s.make_current.as_deref(), Some("k200"));
        assert_eq!(s.add, None);
        assert!(s.remove.is_empty(), "the old key must stay: {s:?}");
        let retire_after = after(due, t.overlap());
        assert_eq!(s.annotations[ROTATION_RETIRE_AFTER], stamp(retire_after));
        assert_eq!(s.annotations[ROTATION_OLD_KID], "k100");
        assert_eq!(s.next_due, retire_after);
        let out = applied(live, &s);
        let data = out.data.as_ref().unwrap();
        assert_eq!(data[KEY_RING_CURRENT].0, b"k200");
        assert!(data.contains_key("k100") && data.contains_key("k200"));
    }

    fn retiring_since(u: DateTime<Utc>, retire_after: DateTime<Utc>) -> Secret {
        secret(
            "k200",
            &["k100", "k200"],
            &[
                (ROTATION_PHASE, PHASE_RETIRING),
                (ROTATION_UPDATED, &stamp(u)),
                (ROTATION_NEW_KID, "k200"),
                (ROTATION_OLD_KID, "k100"),
                (ROTATION_RETIRE_AFTER, &stamp(retire_after)),
            ],
        )
    }

    #[test]
    fn the_old_key_is_kept_until_the_overlap_has_passed_then_dropped() {
        let t = timings();
        let u = t0();
        let due = after(u, t.overlap());
        let live = retiring_since(u, due);
        let ring = Ring::of(&live);
        for early in [u, after(u, P), before(due, MS)] {
            assert_eq!(next(&ring, &t, early), Decision::Wait { until: due });
        }
        let s = step(next(&ring, &t, due));
        assert_eq!(s.phase, ROTATION_STABLE);
        assert_eq!(s.remove, ["k100"]);
        assert_eq!(s.next_due, after(due, EVERY));
        let out = applied(live, &s);
        let data = out.data.as_ref().unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["current", "k200"],
            "only the new key remains"
        );
        let a = out.metadata.annotations.unwrap();
        assert_eq!(a[ROTATION_PHASE], "stable");
        assert_eq!(a[ROTATION_UPDATED], stamp(due));
        for gone in [ROTATION_NEW_KID, ROTATION_OLD_KID, ROTATION_RETIRE_AFTER] {
            assert!(!a.contains_key(gone), "{gone} left behind");
        }
    }

    #[test]
    fn a_recorded_retire_after_is_never_shortened_by_a_shorter_timeout() {
        let t = timings();
        let u = t0();
        // Recorded when the longest timeout was 10 minutes.
        let recorded = after(u, P + Duration::from_secs(600));
        let ring = Ring::of(&retiring_since(u, recorded));
        assert_eq!(
            next(&ring, &t, after(u, t.overlap())),
            Decision::Wait { until: recorded }
        );
        assert_eq!(step(next(&ring, &t, recorded)).remove, ["k100"]);
        // A longer timeout now than at the switch lengthens the overlap.
        let longer = Timings {
            signed_life: Duration::from_secs(900),
            ..t
        };
        let due = after(u, longer.overlap());
        assert_eq!(
            next(&ring, &longer, recorded),
            Decision::Wait { until: due }
        );
    }

    /// Every reconcile reads only the Secret, as an operator that has just
    /// restarted would; the run checks the safety rules at every second.
    #[test]
    fn a_rotation_resumed_from_the_annotations_at_every_second_is_safe_and_in_order() {
        let t = Timings {
            rotate_every: Duration::from_secs(600),
            propagation: Duration::from_secs(100),
            signed_life: Duration::from_secs(10),
            clock_skew: Duration::from_secs(1),
        };
        let start = t0();
        let mut live = stable_since(start);
        // kid → when it appeared; kid → when it stopped being current.
        let mut appeared: BTreeMap<String, DateTime<Utc>> =
            BTreeMap::from([("k100".to_string(), start)]);
        let mut last_current: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        let mut phases = vec!["stable".to_string()];
        let mut steps = 0;
        // Two full rotations: due at 600 s, current at 700 s, old key
        // dropped at 811 s; then again 600 s later.
        for s in 0..=1700 {
            let now = after(start, Duration::from_secs(s));
            let before_step = Ring::of(&live);
            let Decision::Step(st) = next(&before_step, &t, now) else {
                continue;
            };
            steps += 1;
            live = applied(live, &st);
            let ring = Ring::of(&live);
            let cur = ring.current.clone().unwrap();
            for k in &ring.kids {
                appeared.entry(k.clone()).or_insert(now);
            }
            if before_step.current.as_ref() != Some(&cur) {
                let since = appeared[&cur];
                assert!(
                    now - since >= TimeDelta::from_std(t.propagation).unwrap(),
                    "{cur} made current {:?} after it appeared",
                    now - since
                );
                last_current.insert(before_step.current.clone().unwrap(), now);
            }
            for gone in before_step.kids.difference(&ring.kids) {
                let until = last_current[gone];
                assert!(
                    now - until >= TimeDelta::from_std(t.overlap()).unwrap(),
                    "{gone} dropped {:?} after it stopped signing",
                    now - until
                );
            }
            phases.push(st.phase.to_string());
        }
        assert_eq!(
            phases,
            ["stable", "added", "retiring", "stable", "added", "retiring", "stable"]
        );
        assert_eq!(steps, 6, "one write per phase change and none besides");
        assert_eq!(Ring::of(&live).kids.len(), 1);
    }

    #[test]
    fn a_stable_ring_without_a_readable_time_restarts_its_period_from_now() {
        let t = timings();
        let now = t0();
        for bad in [None, Some("yesterday"), Some("")] {
            let mut annotations = vec![(ROTATION_PHASE, "stable")];
            if let Some(b) = bad {
                annotations.push((ROTATION_UPDATED, b));
            }
            let ring = Ring::of(&secret("k100", &["k100"], &annotations));
            let s = step(next(&ring, &t, now));
            assert_eq!(s.phase, ROTATION_STABLE);
            assert_eq!((s.add.as_ref(), s.make_current.as_ref()), (None, None));
            assert!(s.remove.is_empty());
            assert_eq!(s.annotations[ROTATION_UPDATED], stamp(now));
            assert_eq!(s.next_due, after(now, EVERY));
        }
    }

    #[test]
    fn a_clock_gone_back_restarts_the_wait_from_now_instead_of_acting() {
        let t = timings();
        let now = t0();
        let ahead = after(now, Duration::from_secs(3600));
        // Stable: the period restarts (no rotation, no stall of an hour).
        let s = step(next(&Ring::of(&stable_since(ahead)), &t, now));
        assert_eq!((s.phase, s.add.is_none()), (ROTATION_STABLE, true));
        assert_eq!(s.annotations[ROTATION_UPDATED], stamp(now));
        // Added: the new key waits the full delay again, from now.
        let live = secret(
            "k100",
            &["k100", "k200"],
            &[
                (ROTATION_PHASE, PHASE_ADDED),
                (ROTATION_UPDATED, &stamp(ahead)),
                (ROTATION_NEW_KID, "k200"),
                (ROTATION_OLD_KID, "k100"),
            ],
        );
        let s = step(next(&Ring::of(&live), &t, now));
        assert_eq!(s.phase, PHASE_ADDED);
        assert_eq!((s.add.as_ref(), s.make_current.as_ref()), (None, None));
        assert_eq!(s.annotations[ROTATION_NEW_KID], "k200");
        assert_eq!(s.next_due, after(now, P));
        let live = applied(live, &s);
        assert_eq!(
            next(&Ring::of(&live), &t, after(now, P - MS)),
            Decision::Wait {
                until: after(now, P)
            }
        );
        // Retiring: the old key stays for the full overlap from now.
        let live = retiring_since(ahead, after(ahead, t.overlap()));
        let s = step(next(&Ring::of(&live), &t, now));
        assert_eq!(s.phase, PHASE_RETIRING);
        assert!(s.remove.is_empty() && s.make_current.is_none());
        assert!(s.next_due >= after(now, t.overlap()));
    }

    #[test]
    fn an_added_ring_whose_new_key_is_unknown_adds_a_fresh_one_and_signs_with_neither_yet() {
        let t = timings();
        let now = t0();
        let u = before(now, Duration::from_secs(3600));
        for new in [None, Some("k999"), Some("not a kid!"), Some("current")] {
            let mut annotations = vec![(ROTATION_PHASE, PHASE_ADDED)];
            let stamped = stamp(u);
            annotations.push((ROTATION_UPDATED, &stamped));
            if let Some(n) = new {
                annotations.push((ROTATION_NEW_KID, n));
            }
            let ring = Ring::of(&secret("k100", &["k100", "k150"], &annotations));
            let s = step(next(&ring, &t, now));
            assert_eq!(s.phase, PHASE_ADDED, "{new:?}");
            assert_eq!(s.make_current, None, "{new:?}");
            assert!(s.remove.is_empty(), "{new:?}");
            let kid = s.add.clone().unwrap();
            assert!(!ring.kids.contains(&kid));
            assert_eq!(s.annotations[ROTATION_UPDATED], stamp(now));
            assert!(!s.note.contains("not a kid"), "{}", s.note);
        }
    }

    #[test]
    fn an_added_ring_without_a_readable_time_keeps_its_new_key_waiting_from_now() {
        let t = timings();
        let now = t0();
        let ring = Ring::of(&secret(
            "k100",
            &["k100", "k200"],
            &[(ROTATION_PHASE, PHASE_ADDED), (ROTATION_NEW_KID, "k200")],
        ));
        let s = step(next(&ring, &t, now));
        assert_eq!(s.phase, PHASE_ADDED);
        assert_eq!((s.add.as_ref(), s.make_current.as_ref()), (None, None));
        assert_eq!(s.annotations[ROTATION_NEW_KID], "k200");
        assert_eq!(s.annotations[ROTATION_OLD_KID], "k100");
        assert_eq!(s.next_due, after(now, P));
    }

    #[test]
    fn a_ring_whose_current_changed_behind_the_rotation_retires_the_rest_from_now() {
        let t = timings();
        let now = t0();
        let long_ago = before(now, Duration::from_secs(86_400));
        // Retiring, but `current` is not the key being introduced.
        let mut live = retiring_since(long_ago, long_ago);
        live.data
            .as_mut()
            .unwrap()
            .insert("current".into(), ByteString(b"k100".to_vec()));
        let s = step(next(&Ring::of(&live), &t, now));
        assert_eq!(s.phase, PHASE_RETIRING);
        assert!(s.remove.is_empty() && s.make_current.is_none() && s.add.is_none());
        assert_eq!(s.annotations[ROTATION_NEW_KID], "k100");
        assert_eq!(s.annotations[ROTATION_OLD_KID], "k200");
        assert_eq!(s.next_due, after(now, t.overlap()));
        // Added, but the new key is already current.
        let live = secret(
            "k200",
            &["k100", "k200"],
            &[
                (ROTATION_PHASE, PHASE_ADDED),
                (ROTATION_UPDATED, &stamp(long_ago)),
                (ROTATION_NEW_KID, "k200"),
            ],
        );
        let s = step(next(&Ring::of(&live), &t, now));
        assert_eq!(s.phase, PHASE_RETIRING);
        assert!(s.remove.is_empty());
        assert_eq!(s.next_due, after(now, t.overlap()));
    }

    #[test]
    fn a_retiring_ring_without_its_times_keeps_the_old_key_for_a_full_overlap_from_now() {
        let t = timings();
        let now = t0();
        let long_ago = before(now, Duration::from_secs(86_400));
        let mut live = retiring_since(long_ago, long_ago);
        for missing in [ROTATION_UPDATED, ROTATION_RETIRE_AFTER] {
            let mut l = live.clone();
            l.metadata.annotations.as_mut().unwrap().remove(missing);
            let s = step(next(&Ring::of(&l), &t, now));
            assert_eq!(s.phase, PHASE_RETIRING, "{missing}");
            assert!(s.remove.is_empty(), "{missing}");
            assert_eq!(s.next_due, after(now, t.overlap()), "{missing}");
        }
        live.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ROTATION_RETIRE_AFTER.into(), "garbage".into());
        assert!(step(next(&Ring::of(&live), &t, now)).remove.is_empty());
    }

    #[test]
    fn a_ring_of_unknown_phase_is_adopted_without_dropping_or_switching_anything() {
        let t = timings();
        let now = t0();
        for phase in [None, Some("rotating"), Some("")] {
            let annotations: Vec<(&str, &str)> =
                phase.map(|p| vec![(ROTATION_PHASE, p)]).unwrap_or_default();
            let one = Ring::of(&secret("k100", &["k100"], &annotations));
            let s = step(next(&one, &t, now));
            assert_eq!(s.phase, ROTATION_STABLE, "{phase:?}");
            assert_eq!(s.next_due, after(now, EVERY));
            let two = Ring::of(&secret("k100", &["k100", "k200"], &annotations));
            let s = step(next(&two, &t, now));
            assert_eq!(s.phase, PHASE_RETIRING, "{phase:?}");
            assert!(s.remove.is_empty() && s.make_current.is_none() && s.add.is_none());
            assert_eq!(s.annotations[ROTATION_OLD_KID], "k200");
            assert_eq!(s.next_due, after(now, t.overlap()));
        }
        // Stable with a stray key: it is retired the same way.
        let ring = Ring::of(&secret(
            "k100",
            &["k100", "k050"],
            &[
                (ROTATION_PHASE, "stable"),
                (ROTATION_UPDATED, &stamp(before(now, EVERY))),
            ],
        ));
        let s = step(next(&ring, &t, now));
        assert_eq!(s.phase, PHASE_RETIRING);
        assert!(s.remove.is_empty() && s.add.is_none());
    }

    #[test]
    fn a_ring_without_a_usable_current_is_held_and_its_content_never_echoed() {
        let t = timings();
        let now = t0();
        let mut no_current = stable_since(before(now, EVERY));
        no_current.data.as_mut().unwrap().remove("current");
        assert!(matches!(
            next(&Ring::of(&no_current), &t, now),
            Decision::Hold { .. }
        ));
        let unknown = secret("k300", &["k100"], &[(ROTATION_PHASE, "stable")]);
        let Decision::Hold { reason } = next(&Ring::of(&unknown), &t, now) else {
            panic!("not held")
        };
        assert!(reason.contains("k300"), "{reason}");
        // A `current` that holds something else than a kid is not repeated.
        let odd = secret(
            "c2VjcmV0IGtleSBtYXRlcmlhbA==",
            &["k100"],
            &[(ROTATION_PHASE, "stable")],
        );
        let Decision::Hold { reason } = next(&Ring::of(&odd), &t, now) else {
            panic!("not held")
        };
        assert!(!reason.contains("c2VjcmV0"), "{reason}");
    }

    #[test]
    fn new_kids_are_unique_and_later_than_every_kid_even_when_the_clock_went_back() {
        let now = t0();
        let kids = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>();
        let secs = now.timestamp();
        assert_eq!(fresh_kid(&kids(&["k100"]), now), format!("k{secs}"));
        // Same second as the current kid (two rotations within a second).
        assert_eq!(
            fresh_kid(&kids(&[&format!("k{secs}")]), now),
            format!("k{}", secs + 1)
        );
        // The clock went back below the newest kid.
        let future = secs + 5000;
        assert_eq!(
            fresh_kid(&kids(&[&format!("k{future}-ab12"), "k100"]), now),
            format!("k{}", future + 1)
        );
        // Kids of another shape do not confuse it; a taken name gets a suffix.
        let odd = kids(&["alpha", &format!("k{secs}x")]);
        let k = fresh_kid(&odd, now);
        assert!(!odd.contains(&k) && valid_kid(&k), "{k}");
        let mut taken = kids(&["alpha"]);
        taken.insert(format!("k{secs}"));
        // `k<secs>` parses, so the next second is used rather than a suffix.
        assert_eq!(fresh_kid(&taken, now), format!("k{}", secs + 1));
        // No later second exists: the suffix keeps it unique.
        let last = kids(&[&format!("k{}", i64::MAX)]);
        assert_eq!(fresh_kid(&last, now), format!("k{}-1", i64::MAX));
    }

    #[test]
    fn notes_name_kids_and_never_key_material() {
        let t = timings();
        let live = stable_since(t0());
        let s = step(next(&Ring::of(&live), &t, after(t0(), EVERY)));
        let mut out = live.clone();
        s.apply(&mut out, || "S0VZLU1BVEVSSUFM".to_string());
        assert!(!s.note.contains("S0VZLU1BVEVSSUFM"));
        assert!(!format!("{s:?}").contains("S0VZLU1BVEVSSUFM"));
        assert!(s.note.contains("k100"), "{}", s.note);
        assert!(s.note.contains(s.add.as_deref().unwrap()), "{}", s.note);
        assert!(!s.note.contains("key-of-"), "{}", s.note);
    }
}
