//! The `KeyRing` condition: where the generated key ring's rotation stands
//! (docs/key-rotation.md), for `kubectl sluice status` and whoever reads
//! the pipeline's status. Kids, phases and times only, never key material.
//!
//! This module must not write anything: the reconciler puts the condition
//! into status with the others.

use crate::autoscale::ConditionParts;
use crate::labels::{ROTATION_PHASE, ROTATION_STABLE};
use crate::rotation::{Ring, PHASE_ADDED, PHASE_RETIRING, ROTATION_NEW_KID, ROTATION_OLD_KID};

/// Condition type.
pub const CONDITION: &str = "KeyRing";

/// The condition of a generated key ring as `ring` stands.
pub fn condition(ring: &Ring) -> ConditionParts {
    let get = |k: &str| ring.annotations.get(k).map(String::as_str);
    let current = ring.current.as_deref().unwrap_or("-");
    let (reason, message) = match get(ROTATION_PHASE).unwrap_or(ROTATION_STABLE) {
        PHASE_ADDED => (
            "Added",
            format!(
                "{current} signs; {} is on its way to every pod, and signs once it is there",
                get(ROTATION_NEW_KID).unwrap_or("a new key")
            ),
        ),
        PHASE_RETIRING => (
            "Retiring",
            format!(
                "{current} signs; {} still verifies until the overlap ends",
                get(ROTATION_OLD_KID).unwrap_or("the old key")
            ),
        ),
        _ => (
            "Stable",
            format!("{current} signs; {} key(s) in the ring", ring.kids.len()),
        ),
    };
    (CONDITION.into(), true, reason.into(), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(phase: Option<&str>) -> Ring {
        let mut r = Ring {
            current: Some("k2".into()),
            kids: ["k1".to_string(), "k2".to_string()].into(),
            ..Ring::default()
        };
        if let Some(p) = phase {
            r.annotations.insert(ROTATION_PHASE.into(), p.into());
            r.annotations.insert(ROTATION_NEW_KID.into(), "k2".into());
            r.annotations.insert(ROTATION_OLD_KID.into(), "k1".into());
        }
        r
    }

    #[test]
    fn the_condition_names_the_phase_and_the_kids() {
        let (type_, status, reason, message) = condition(&ring(None));
        assert_eq!(
            (type_.as_str(), status, reason.as_str()),
            ("KeyRing", true, "Stable")
        );
        assert_eq!(message, "k2 signs; 2 key(s) in the ring");
        let (_, _, reason, message) = condition(&ring(Some(PHASE_RETIRING)));
        assert_eq!(reason, "Retiring");
        assert!(message.contains("k1 still verifies"), "{message}");
        let (_, _, reason, _) = condition(&ring(Some(PHASE_ADDED)));
        assert_eq!(reason, "Added");
    }
}
