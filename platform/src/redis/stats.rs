//! Counters of one queue stream for autoscaling: how much work waits, how
//! much is being worked on, and how much ever arrived.
//!
//! ```text
//! MULTI-less pipeline:  XLEN  ·  XPENDING <stream> sluice  ·  XINFO STREAM <stream>
//!   length        = waiting + in progress (handed-off entries are deleted)
//!   pending       = delivered to a worker, not yet handed off
//!   entries_added = every XADD since the stream was created (Redis ≥ 7.0)
//!   completed     = entries_added − length (handed off or dead-lettered)
//! ```
//!
//! Reading these never changes the stream: no group is created, nothing is
//! acknowledged. A stream that does not exist yet reads as all zeros.

use fred::types::Value;

use super::backend::{is_reply, RedisBackend};
use super::wire;
use crate::backend::Result;
use crate::keys::CONSUMER_GROUP;

/// Counters of one queue stream at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Entries in the stream: waiting plus in progress.
    pub length: u64,
    /// Entries delivered to a consumer and not yet handed off.
    pub pending: u64,
    /// Entries ever appended (`entries-added`); monotonic until the stream
    /// is lost (a restart without persistence starts it again from 0).
    pub entries_added: u64,
}

impl StreamStats {
    /// Entries waiting for a worker.
    pub fn waiting(&self) -> u64 {
        self.length.saturating_sub(self.pending)
    }

    /// Entries that left the stream: handed off or dead-lettered.
    pub fn completed(&self) -> u64 {
        self.entries_added.saturating_sub(self.length)
    }
}

impl RedisBackend {
    /// Entries in `stream` (`XLEN`; 0 when it does not exist).
    ///
    /// # Errors
    /// [`crate::BackendError::Unavailable`] or `Timeout` when Redis does not
    /// answer.
    pub async fn stream_len(&self, stream: &str) -> Result<u64> {
        let r = self
            .call("XLEN", stream, vec![Value::from(stream.to_string())])
            .await
            .map_err(|e| self.err(e))?;
        wire::integer(&r, "XLEN")
    }

    /// Reads the counters of `stream` in one round trip.
    ///
    /// # Errors
    /// [`crate::BackendError::Unavailable`] or `Timeout` when Redis does not
    /// answer; a missing stream or consumer group is not an error.
    pub async fn stream_stats(&self, stream: &str) -> Result<StreamStats> {
        let v = |s: &str| Value::from(s.to_string());
        let cmds = vec![
            ("XLEN", stream, vec![v(stream)]),
            ("XPENDING", stream, vec![v(stream), v(CONSUMER_GROUP)]),
            ("XINFO", stream, vec![v("STREAM"), v(stream)]),
        ];
        let mut replies = self
            .pipeline(cmds)
            .await
            .map_err(|e| self.err(e))?
            .into_iter();
        let length = match replies.next() {
            Some(Ok(r)) => wire::integer(&r, "XLEN")?,
            Some(Err(e)) => return Err(self.err(e)),
            None => 0,
        };
        let pending = match replies.next() {
            Some(Ok(r)) => wire::pending_total(r)?,
            Some(Err(e)) if is_reply(&e, "NOGROUP") => 0,
            Some(Err(e)) => return Err(self.err(e)),
            None => 0,
        };
        let entries_added = match replies.next() {
            Some(Ok(r)) => wire::field_integer(r, "entries-added", "XINFO STREAM")?,
            // `ERR no such key`: the stream does not exist yet.
            Some(Err(e)) if is_reply(&e, "ERR no such key") || length == 0 => 0,
            Some(Err(e)) => return Err(self.err(e)),
            None => 0,
        };
        Ok(StreamStats {
            length,
            pending,
            entries_added,
        })
    }
}
