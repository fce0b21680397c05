//! The id a caller fetches an asynchronous answer with, and the address
//! its answer is stored at (docs/wire-format.md, the `r:async:` key): 128
//! random bits and the deadline in hex; the address is the SHA-256 of the
//! caller and the id, so what sits in Redis does not let anyone fetch it.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sluice_crds::Plan;
use sluice_platform::keyring::hex;
use sluice_platform::signing::new_nonce;

/// Random hex digits of an id (16 bytes), then the deadline's.
const RANDOM_DIGITS: usize = 32;
const DEADLINE_DIGITS: usize = 12;

/// The id a caller fetches an asynchronous answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobId {
    text: String,
    /// The request's deadline, ms since the epoch.
    deadline: u64,
}

impl JobId {
    /// A new id for a request due by `deadline`.
    pub fn new(deadline: u64) -> Self {
        let deadline = deadline.min((1 << (4 * DEADLINE_DIGITS)) - 1);
        Self {
            text: format!("{}{deadline:012x}", new_nonce()),
            deadline,
        }
    }

    /// Reads an id from a URL; `None` for anything this ingress did not
    /// make (wrong length, not lowercase hex).
    pub fn parse(text: &str) -> Option<Self> {
        let hexdigit = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        if text.len() != RANDOM_DIGITS + DEADLINE_DIGITS || !text.bytes().all(hexdigit) {
            return None;
        }
        let deadline = u64::from_str_radix(&text[RANDOM_DIGITS..], 16).ok()?;
        Some(Self {
            text: text.to_string(),
            deadline,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The request's deadline, ms since the epoch.
    pub fn deadline(&self) -> u64 {
        self.deadline
    }

    /// Where the answer of `caller`'s request goes: the reply address
    /// `async:<sha256(caller, id)>`, so only its caller finds it.
    pub fn address(&self, caller: &str) -> String {
        let scoped = crate::auth::scoped(caller, &self.text);
        format!("async:{}", hex(&Sha256::digest(scoped.as_bytes())))
    }
}

/// How long the stored answer of a request with `timeout` lives: its
/// timeout, then `results.ttl` to fetch it, and the clock skew.
pub fn retention(plan: &Plan, timeout: Duration) -> Duration {
    timeout
        .saturating_add(plan.results_ttl)
        .saturating_add(plan.security.clock_skew)
}
