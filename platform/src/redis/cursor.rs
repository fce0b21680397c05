//! Where the ingress's reader of one reply stream stands: the state the
//! `ReplyChannel` adapter (`reply`) keeps per stream inside the backend.

use std::time::Instant;

/// Where the reader of one reply stream stands.
pub(super) struct ReplyCursor {
    /// Id of the last entry returned.
    pub(super) last: String,
    /// Entries returned since the last trim, and their bytes.
    pub(super) untrimmed: usize,
    pub(super) untrimmed_bytes: usize,
    /// When the first of those was returned.
    pub(super) since: Instant,
}
