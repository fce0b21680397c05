//! Bounded waits for conditions that become true eventually (linkerd's
//! `assert_eventually!`): a patience, a message saying what was awaited, and
//! the last observation when it runs out.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is re-checked.
const POLL: Duration = Duration::from_millis(50);

/// Re-checks `check` until it returns `Ok`, for at most `patience`; returns
/// the value and how long it took.
///
/// # Panics
/// When `patience` runs out, naming `what` and the last `Err` observed.
pub async fn eventually<T, F, Fut>(patience: Duration, what: &str, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return (v, start.elapsed()),
            Err(e) => e,
        };
        if start.elapsed() >= patience {
            panic!("gave up after {patience:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}
