//! The error every adapter reports, and the fault injector the memory
//! adapters carry so failure paths are testable.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// A backend operation failed. Callers map it to `503` (ingress) or retry
/// later (worker); it never carries payloads or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend could not be reached or refused the command.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The command did not complete within its timeout.
    #[error("backend command timed out")]
    Timeout,
    /// The backend refused a transaction as a whole before applying any
    /// of it (Redis's `EXECABORT`: a command it would not queue — denied
    /// by its ACL, or Redis out of memory).
    #[error("backend refused the whole transaction: {0}")]
    NotApplied(String),
    /// A transaction ran, but a command in it failed (Redis does not roll
    /// back: `WRONGTYPE` on a forward's key), or ran without its `MULTI`:
    /// the entries it acknowledged are gone from their queue while a
    /// forward may be missing. Nothing redelivers them: the caller keeps
    /// them (a worker dead-letters them).
    #[error("backend applied only part of a transaction: {0}")]
    PartlyApplied(String),
    /// A fault injected by a test.
    #[error("injected backend fault")]
    Injected,
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// Fails or slows the next operations of an adapter, for tests.
#[derive(Debug, Default)]
pub struct Faults {
    fail_next: AtomicU32,
    latency_ms: AtomicU64,
}

impl Faults {
    /// The next `n` operations fail with [`BackendError::Injected`].
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every operation waits `d` first (zero to stop).
    pub fn set_latency(&self, d: Duration) {
        self.latency_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Called at the start of each adapter operation.
    ///
    /// # Errors
    /// [`BackendError::Injected`] while failures are armed.
    pub async fn check(&self) -> Result<()> {
        let ms = self.latency_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let armed = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match armed {
            Ok(_) => Err(BackendError::Injected),
            Err(_) => Ok(()),
        }
    }
}
