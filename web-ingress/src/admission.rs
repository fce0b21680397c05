//! Admission: the pipeline's pause, the backlog of the queues on a request's path, the in-flight
//! slot of a POST (taken once its body is read) or of a request that is
//! already read, and the replay guard's share of Redis memory.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use sluice_crds::InterfacePlan;

use crate::error::{paused, too_many_requests, unavailable, ApiError};
use crate::state::AppState;

/// A request that is already read (a WebSocket message, a GraphQL
/// operation): the backlog on its path, then one of the interface's
/// `maxInFlight` slots, held until dropped.
pub fn admit_read(
    s: &AppState,
    it: &InterfacePlan,
    rid: &str,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    admit_backlog(s, it, rid)?;
    s.slots[&it.name]
        .clone()
        .try_acquire_owned()
        .map_err(|_| too_many_requests(it, rid))
}

/// A POST's body, then one of the interface's `maxInFlight` slots, held
/// until dropped: a full interface is refused before the body is read (it
/// costs no read), then the backlog on the request's path is checked, the
/// body read by its deadline and parsed, and only then the slot taken (a
/// client trickling its body holds none).
pub async fn admit_body(
    s: &AppState,
    it: &InterfacePlan,
    rid: &str,
    body: axum::body::Body,
) -> Result<(serde_json::Value, tokio::sync::OwnedSemaphorePermit), ApiError> {
    let slots = &s.slots[&it.name];
    if slots.available_permits() == 0 {
        return Err(too_many_requests(it, rid));
    }
    admit_backlog(s, it, rid)?;
    let input = crate::request::read_input(s, it, rid, body).await?;
    let slot = slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| too_many_requests(it, rid))?;
    Ok((input, slot))
}

/// The pipeline is not paused, and the backlog of every queue on the
/// request's path is below its limits.
pub fn admit_backlog(s: &AppState, it: &InterfacePlan, rid: &str) -> Result<(), ApiError> {
    if s.pause.is_paused() {
        return Err(paused(rid));
    }
    if it.path_groups.is_empty() {
        return Ok(());
    }
    if !s.replies_open.load(Ordering::SeqCst) {
        return Err(unavailable(rid));
    }
    let guard = s.backlog.read();
    let Some(sample) = guard.as_ref() else {
        return Err(unavailable(rid));
    };
    let limits = &s.plan.limits;
    for g in &it.path_groups {
        let b = sample.get(g).copied().unwrap_or_default();
        if b.entries >= limits.max_queue_depth || b.bytes >= limits.max_queue_bytes {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("the backlog of group `{g}` is at its limit"),
                rid,
            )
            .retry_after(1));
        }
    }
    Ok(())
}

/// Counts the nonces this request may make the workers claim, or refuses
/// it while the requests admitted before hold the whole budget.
pub fn admit_replay_budget(
    s: &AppState,
    it: &InterfacePlan,
    timeout: Duration,
    rid: &str,
) -> Result<(), ApiError> {
    let Some(w) = &s.replay_window else {
        return Ok(());
    };
    if it.hops == 0 {
        return Ok(());
    }
    w.admit(u64::from(it.hops), timeout).map_err(|spent| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the requests in flight hold this ingress's share of Redis memory for the \
             replay guard (redis.maxMemory)",
            rid,
        )
        .retry_after(u32::try_from(spent.retry_after.as_secs()).unwrap_or(u32::MAX))
    })
}
