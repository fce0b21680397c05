//! The tcp profile's transport: worker processes reach the queues and the
//! replay guard held by the ingress process over loopback TCP.
//!
//! ```text
//! sluice-web-ingress ── hub (127.0.0.1:port) ◀── handshake ── sluice-exec-worker --group a
//!   memory queues, replay guard                 ◀── sealed frames ── sluice-exec-worker --group b
//! ```
//!
//! The envelopes are the same signed entries as in the other profiles and
//! are verified the same way (size, version, key, MAC, freshness, kind and
//! destination), by the hub as it hands them out, which also runs the
//! replay guard, and again by the worker. Around them the connection adds its own
//! protection ([`session`]): a mutual HMAC handshake before any frame flows,
//! and frames sealed with per-connection, per-direction keys and counted,
//! so a frame cannot be injected, replayed or reordered. The hub binds and
//! the workers connect to loopback addresses only; any other address is
//! refused at start. The hub limits what each group may touch ([`hub`]).
//!
//! What this module must not do: hold work anywhere but in the hub's memory
//! queues (a worker keeps nothing a restart would lose beyond what it is
//! running), or let a call allocate more than its frame limit.

pub mod client;
mod conn;
pub mod hub;
pub mod nonces;
pub(crate) mod session;
pub mod wire;

use std::net::SocketAddr;

pub use client::{TcpBackend, TcpConfig};
pub use hub::{Connected, Hub, HubConfig, HubError};
pub use nonces::Nonces;
pub use session::SessionError;

/// Sizes a connection accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload, checked before a frame is read.
    pub max_frame: usize,
    /// Most entries one read or reclaim returns.
    pub max_read: usize,
    /// Largest entry a worker may write (the ingress's entry limit).
    pub max_entry: usize,
}

/// No frame is larger, whatever the entry limit: its length is a `u32`.
pub const MAX_FRAME: usize = 1 << 30;

/// Entries one read returns at most.
pub const MAX_READ: usize = 64;

/// Room for ids, stream names and counts around the entries of a frame.
const FRAME_SLACK: usize = 64 << 10;

/// The hand-off batch the worker gathers at most, in bytes of entries
/// (a batch may exceed it by its first entry).
const HAND_OFF_BYTES: usize = 1 << 20;

impl Limits {
    /// Limits for entries of at most `max_entry` bytes: a read's worth of
    /// them, or a full hand-off batch, whichever is larger.
    pub fn for_entries(max_entry: usize) -> Self {
        // An entry travels with its note, bounded apart.
        let stored = max_entry.saturating_add(crate::envelope::MAX_NOTE_BYTES);
        let reads = stored.saturating_mul(MAX_READ);
        let hand_offs = HAND_OFF_BYTES.saturating_add(stored);
        let max_frame = reads
            .max(hand_offs)
            .saturating_add(FRAME_SLACK)
            .min(MAX_FRAME);
        // Fewer entries per read when a read of MAX_READ would not fit.
        let max_read =
            ((max_frame - FRAME_SLACK.min(max_frame)) / stored.max(1)).clamp(1, MAX_READ);
        Self {
            max_frame,
            max_read,
            max_entry,
        }
    }
}

/// Refuses any address but loopback (`127.0.0.0/8`, `::1`).
///
/// # Errors
/// A message naming `flag` and the address.
pub fn require_loopback(flag: &str, addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "{flag} {addr}: the tcp profile binds and connects to loopback addresses only \
             (127.0.0.1 or ::1); its frames never leave the machine or pod"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_pass() {
        for ok in ["127.0.0.1:1", "127.3.2.1:9", "[::1]:80"] {
            assert!(
                require_loopback("--hub", ok.parse().unwrap()).is_ok(),
                "{ok}"
            );
        }
        for bad in ["0.0.0.0:1", "10.0.0.1:1", "[::]:1", "192.168.1.2:7"] {
            let e = require_loopback("--hub", bad.parse().unwrap()).unwrap_err();
            assert!(e.contains("--hub") && e.contains("loopback"), "{e}");
        }
    }

    #[test]
    fn a_frame_holds_a_full_read_and_a_full_hand_off() {
        let l = Limits::for_entries(1 << 20);
        assert!(l.max_frame >= 64 << 20);
        let l = Limits::for_entries(1 << 10);
        assert!(l.max_frame >= (1 << 20) + (1 << 10));
        assert_eq!(l.max_read, MAX_READ);
        let huge = Limits::for_entries(64 << 20);
        assert_eq!(huge.max_frame, MAX_FRAME, "a length always fits its u32");
        assert!(huge.max_read >= 1 && huge.max_read * (64 << 20) <= MAX_FRAME);
        assert_eq!(Limits::for_entries(usize::MAX).max_read, 1);
    }
}
