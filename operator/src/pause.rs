//! Pause and resume of a pipeline (`spec.paused`, docs/operator.md "Pause
//! and resume"): the `Paused` condition, and what the autoscaler does.
//!
//! ```text
//! spec.paused ─▶ reconcile ─▶ redis_users: SET/DEL sluice:{ns/p}:paused as admin (background)
//!                    │                          └─▶ runtime pods read it every second
//!                    └─▶ condition Paused from spec.paused and what the last apply left
//! autoscaler: builtin groups of a paused pipeline ─▶ minReplicas (0 if allowed), never up
//! ```
//!
//! The pause is a key in the pipeline's Redis, not a field of the pod
//! template (which would roll every pod) nor of the mounted ConfigMap (which
//! reaches pods a minute or more late). No pod restarts for a pause.
//!
//! This module must not write anything: the key is written by
//! [`crate::redis_users`], replicas by [`crate::autoscale`].

use sluice_crds::StreamPipelineSpec;

use crate::autoscale::algorithm::Decision;
use crate::autoscale::ConditionParts;

/// Status condition type.
pub const CONDITION: &str = "Paused";

/// Condition reasons.
pub mod reason {
    /// The pause is in place: no request is taken, no entry read.
    pub const PAUSED: &str = "Paused";
    /// `spec.paused` is true, and Redis does not hold the pause yet.
    pub const PAUSING: &str = "Pausing";
    /// `spec.paused` is false, and Redis still holds the pause.
    pub const RESUMING: &str = "Resuming";
    /// Not paused.
    pub const RUNNING: &str = "Running";
}

/// Whether `spec` asks for a pause.
pub fn wanted(spec: &StreamPipelineSpec) -> bool {
    spec.paused == Some(true)
}

/// The `Paused` condition of a pipeline that wants `wanted`, whose pause
/// the last write to its Redis left `applied` (`None`: none yet), and the
/// last write's `error` while one is not in place.
pub fn condition(wanted: bool, applied: Option<bool>, error: Option<&str>) -> ConditionParts {
    let (status, reason, message) = match (wanted, applied) {
        (true, Some(true)) => (
            true,
            reason::PAUSED,
            "no request is taken and no entry is read; queued entries wait, and their deadlines still apply",
        ),
        (true, _) => (
            false,
            reason::PAUSING,
            "the pause is not written to the pipeline's Redis yet (it needs a ready Redis)",
        ),
        (false, Some(true)) => (
            true,
            reason::RESUMING,
            "the pause is not lifted in the pipeline's Redis yet",
        ),
        (false, _) => (false, reason::RUNNING, "the pipeline is not paused"),
    };
    let message = match error {
        Some(e) if !settled(wanted, applied) => format!("{message}: {e}"),
        _ => message.to_string(),
    };
    (CONDITION.into(), status, reason.into(), message)
}

/// The builtin autoscaler's decision for a group at `current` replicas of a
/// paused pipeline, whose bounds start at `min`: never up (the backlog waits,
/// it is no load), down to `min` — zero for a group that may be at zero —
/// once Redis `holds` the pause (before, callers are still taken and need
/// workers). Groups with `min ≥ 1` keep workers, so a resume cold-starts
/// only the groups their users let go to zero anyway.
pub fn scale_down(current: u32, min: u32, holds: bool) -> Option<Decision> {
    (holds && current > min).then(|| Decision {
        from: current,
        to: min,
        reason: "the pipeline is paused".into(),
    })
}

/// Whether the pause is where `wanted` asks it to be.
pub fn settled(wanted: bool, applied: Option<bool>) -> bool {
    applied.unwrap_or(false) == wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paused_group_goes_down_to_its_minimum_once_redis_holds_the_pause() {
        let d = scale_down(3, 0, true).expect("a decision");
        assert_eq!((d.from, d.to), (3, 0));
        let d = scale_down(3, 1, true).expect("a decision");
        assert_eq!((d.from, d.to), (3, 1));
        assert!(scale_down(0, 0, true).is_none());
        assert!(scale_down(1, 1, true).is_none(), "never below the minimum");
        assert!(scale_down(3, 0, false).is_none(), "callers are still taken");
    }

    #[test]
    fn the_condition_follows_what_redis_holds_not_only_the_spec() {
        let reason_of = |w, a| condition(w, a, None).2;
        assert_eq!(reason_of(true, None), reason::PAUSING);
        assert_eq!(reason_of(true, Some(false)), reason::PAUSING);
        assert_eq!(reason_of(true, Some(true)), reason::PAUSED);
        assert_eq!(reason_of(false, Some(true)), reason::RESUMING);
        assert_eq!(reason_of(false, Some(false)), reason::RUNNING);
        assert_eq!(reason_of(false, None), reason::RUNNING);
        // True while requests are refused: paused, and not yet resumed.
        assert!(condition(true, Some(true), None).1);
        assert!(condition(false, Some(true), None).1);
        assert!(!condition(true, None, None).1);
        // Why a pause is not in place yet, while it is not.
        let oom = "pausing the pipeline: OOM command not allowed";
        assert!(condition(true, None, Some(oom)).3.ends_with(oom));
        assert!(!condition(true, Some(true), Some(oom)).3.contains("OOM"));
        assert!(settled(false, None) && settled(true, Some(true)));
        assert!(!settled(true, None) && !settled(false, Some(true)));
    }
}
