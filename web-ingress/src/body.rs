//! Reading a request body under the ingress's limits.
//!
//! ```text
//! Content-Length over the limit ─▶ 413 at once, nothing read
//! frames ─▶ each counted against the size limit (413) and the process's
//!           body budget (waits while it is spent) ─▶ all by the deadline (408)
//! ```
//!
//! # Why the budget
//! A body is read *before* its request takes an in-flight slot, so a client
//! trickling a body holds no slot: it cannot starve the interface, and is
//! cut at its deadline. What bounds memory instead is the [`BodyBudget`]:
//! every buffered byte holds one permit until the request's JSON is parsed,
//! so bodies being read never total more than the budget, however many
//! connections are open.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, HttpBody};
use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Bytes of request bodies the process buffers at most, across all requests.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    bytes: usize,
}

impl BodyBudget {
    /// A budget of `bytes`, clamped to what a semaphore can count.
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(bytes)),
            bytes,
        }
    }

    /// The budget's size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes not held by any body now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Holds `bytes` of the budget until the permit is dropped, if they
    /// are free now.
    pub fn try_hold(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes).ok()?;
        self.permits.clone().try_acquire_many_owned(bytes).ok()
    }
}

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Over `limit` bytes (declared or sent).
    TooLarge { limit: usize },
    /// Not complete by the deadline.
    TimedOut { after: Duration },
    /// The connection failed mid-body.
    Broken,
}

/// A body read in full, holding its share of the budget until dropped.
#[derive(Debug)]
pub struct ReadBody {
    pub bytes: Bytes,
    _held: Option<OwnedSemaphorePermit>,
}

/// Reads `body` (at most `limit` bytes) by `deadline`, holding budget for
/// every byte buffered.
///
/// # Errors
/// See [`BodyError`].
pub async fn read(
    body: Body,
    limit: usize,
    started: Instant,
    deadline: Instant,
    budget: &BodyBudget,
) -> Result<ReadBody, BodyError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge { limit });
    }
    let timed_out = || BodyError::TimedOut {
        after: deadline.saturating_duration_since(started),
    };
    match tokio::time::timeout_at(deadline, collect(body, limit, budget)).await {
        Ok(r) => r,
        Err(_) => Err(timed_out()),
    }
}

async fn collect(mut body: Body, limit: usize, budget: &BodyBudget) -> Result<ReadBody, BodyError> {
    let mut buf = BytesMut::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(|_| BodyError::Broken)?;
        let Ok(data) = frame.into_data() else {
            // Trailers carry no body bytes.
            continue;
        };
        if buf.len() + data.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        // A chunk is at most `limit` bytes here, and the budget is at least
        // one full body (see runtime), so this acquisition can be granted.
        let n = u32::try_from(data.len()).map_err(|_| BodyError::TooLarge { limit })?;
        let permit = budget
            .permits
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| BodyError::Broken)?;
        match &mut held {
            Some(h) => h.merge(permit),
            None => held = Some(permit),
        }
        buf.extend_from_slice(&data);
    }
    Ok(ReadBody {
        bytes: buf.freeze(),
        _held: held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_is_held_while_the_body_lives_and_returned_after() {
        let budget = BodyBudget::new(100);
        let now = Instant::now();
        let body = read(
            Body::from("0123456789"),
            50,
            now,
            now + Duration::from_secs(5),
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(&body.bytes[..], b"0123456789");
        assert_eq!(budget.available(), 90);
        drop(body);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn a_declared_or_sent_size_over_the_limit_is_too_large() {
        let budget = BodyBudget::new(100);
        let now = Instant::now();
        let err = read(
            Body::from(vec![b'x'; 60]),
            50,
            now,
            now + Duration::from_secs(5),
            &budget,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 50 }), "{err:?}");
        assert_eq!(budget.available(), 100, "nothing stays held");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_times_out_at_the_deadline() {
        let budget = BodyBudget::new(100);
        let (mut tx, body) = {
            let (tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
            (tx, Body::from_stream(rx))
        };
        tx.try_send(Ok(Bytes::from_static(b"{"))).unwrap();
        let now = Instant::now();
        let err = read(body, 50, now, now + Duration::from_secs(2), &budget)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BodyError::TimedOut { after } if after == Duration::from_secs(2)),
            "{err:?}"
        );
        assert_eq!(budget.available(), 100);
        drop(tx);
    }
}
