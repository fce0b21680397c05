//! Signing envelopes and the verification chain of DESIGN §6.
//!
//! ```text
//! entry ─▶ size ─▶ version ─▶ known kid ─▶ MAC ─▶ decode ─▶ freshness ─▶ kind/destination ─▶ replay guard ─▶ Envelope
//!           └──────────── each failure is a Rejection with a counted reason; nothing is executed ─────────────┘
//! ```
//!
//! Nothing is decoded before the MAC has been checked with the MAC library's
//! constant-time comparison. Callers never tell a remote peer which check
//! failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::backend::BackendError;
use crate::clock::now_ms;
use crate::envelope::{decode, encode, Envelope, Kind, StreamEntry, FORMAT_VERSION};
use crate::keyring::{hex, SharedKeyRing};
use crate::keys::Keys;
use crate::kv::Kv;
use crate::metrics::Rejections;

type HmacSha256 = Hmac<Sha256>;

/// Bytes an entry may hold beyond the payload limit: the envelope's own
/// fields (ids, names, nonce, MAC).
pub const ENVELOPE_OVERHEAD: usize = 16 * 1024;

/// The largest stream entry a receiver accepts for a pipeline whose
/// payloads may be `max_payload_bytes` long.
pub fn max_entry_bytes(max_payload_bytes: usize) -> usize {
    max_payload_bytes + ENVELOPE_OVERHEAD
}

/// What a caller is told when `node`'s output made an entry of `len` bytes,
/// over the `limit` every receiver enforces.
pub fn oversized_output(node: &str, len: usize, limit: usize) -> String {
    format!(
        "the output of node {node} is too large: its envelope is {len} bytes, \
         the limit is {limit} (security.maxPayloadBytes + {ENVELOPE_OVERHEAD})"
    )
}

fn mac(key: &[u8; 32], v: &[u8], m: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(v);
    mac.update(m);
    mac
}

/// The value of a replay-guard key once its envelope was handed off: any
/// entry carrying that nonce again is a replay.
pub const NONCE_DONE: &str = "done";

/// A fresh 128-bit nonce, hex.
pub fn new_nonce() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex(&b)
}

/// Signs envelopes with the current key of a shared ring.
#[derive(Clone, Debug)]
pub struct Signer {
    ring: SharedKeyRing,
}

impl Signer {
    pub fn new(ring: SharedKeyRing) -> Self {
        Self { ring }
    }

    /// Stamps `env` with a fresh `ts` and nonce and signs it with the current
    /// key for its kind.
    pub fn sign(&self, env: &mut Envelope) -> StreamEntry {
        env.ts = now_ms();
        env.nonce = new_nonce();
        self.sign_as_is(env)
    }

    /// Signs `env` without touching `ts` or nonce (tests forge with this).
    pub fn sign_as_is(&self, env: &Envelope) -> StreamEntry {
        let ring = self.ring.get();
        let kid = ring.current().to_string();
        // `current` is always one of the ring's kids (checked at load).
        let key = ring
            .key(&kid, env.kind)
            .expect("current kid is in the ring");
        let m = encode(env);
        let v = FORMAT_VERSION.as_bytes().to_vec();
        let s = hex(&mac(key, &v, &m).finalize().into_bytes()).into_bytes();
        StreamEntry {
            v,
            k: kid.into_bytes(),
            m,
            s,
        }
    }
}

/// Why an entry was refused. Each reason is counted; none executes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("entry exceeds the size limit")]
    Oversized,
    #[error("unsupported format version")]
    BadVersion,
    #[error("unknown key id")]
    UnknownKid,
    #[error("MAC does not verify")]
    BadMac,
    #[error("message does not decode")]
    Malformed,
    #[error("timestamp is in the future beyond the clock skew")]
    FromFuture,
    #[error("deadline has passed")]
    Expired,
    #[error("nonce already seen on another entry")]
    Replay,
    #[error("envelope of the wrong kind")]
    WrongKind,
    #[error("envelope for another destination")]
    WrongDestination,
}

impl Rejection {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Oversized => "oversized",
            Rejection::BadVersion => "bad_version",
            Rejection::UnknownKid => "unknown_kid",
            Rejection::BadMac => "bad_mac",
            Rejection::Malformed => "malformed",
            Rejection::FromFuture => "from_future",
            Rejection::Expired => "expired",
            Rejection::Replay => "replay",
            Rejection::WrongKind => "wrong_kind",
            Rejection::WrongDestination => "wrong_destination",
        }
    }
}

/// Verification failed: either the entry is refused for good, or the replay
/// guard's backend could not answer (try again later; do not drop the entry).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("rejected: {0}")]
    Rejected(Rejection),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Where a request entry was read: its stream, its entry id, and how many
/// times the queue has delivered it (this time included).
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub stream: &'a str,
    pub id: &'a str,
    pub deliveries: u32,
}

/// Runs the verification chain for one receiver.
#[derive(Clone)]
pub struct Verifier {
    ring: SharedKeyRing,
    kv: Arc<dyn Kv>,
    keys: Keys,
    skew: Duration,
    max_entry_bytes: usize,
    rejections: Rejections,
    decoded: Arc<AtomicU64>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("pipeline", &self.keys.pipeline())
            .field("skew", &self.skew)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .finish()
    }
}

impl Verifier {
    /// A verifier for `keys`' pipeline; entries over `max_payload_bytes`
    /// plus [`ENVELOPE_OVERHEAD`] are refused unread.
    pub fn new(
        ring: SharedKeyRing,
        kv: Arc<dyn Kv>,
        keys: Keys,
        skew: Duration,
        max_payload_bytes: usize,
        rejections: Rejections,
    ) -> Self {
        Self {
            ring,
            kv,
            keys,
            skew,
            max_entry_bytes: max_entry_bytes(max_payload_bytes),
            rejections,
            decoded: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Whether an entry of this size passes the size check; a sender
    /// checks its own entries with it, since one that does not would be
    /// refused unread and its caller left to time out.
    pub fn accepts_size(&self, entry: &StreamEntry) -> bool {
        entry.stored_len() <= self.max_entry_bytes
    }

    /// The largest entry accepted, in bytes.
    pub fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }

    /// How many messages reached the decoder (for tests proving that
    /// refused entries never do).
    pub fn decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    /// Verifies a request taken from `group`'s queue: `at` says where
    /// (stream, entry id) and how often it was delivered; the replay guard
    /// runs last.
    ///
    /// # Errors
    /// A [`Rejection`] (counted), or the replay guard's backend error.
    pub async fn verify_request(
        &self,
        entry: &StreamEntry,
        at: &At<'_>,
        group: &str,
    ) -> Result<Envelope, VerifyError> {
        let r = self.check(entry, Kind::Request, group, Some(at)).await;
        self.count(r)
    }

    /// The replay-guard key of a verified request of `group`, which the
    /// hand-off marks [`NONCE_DONE`].
    pub fn guard_key(&self, entry: &StreamEntry, env: &Envelope, group: &str) -> String {
        let kid = std::str::from_utf8(&entry.k).unwrap_or("");
        self.keys.nonce(group, kid, &env.nonce)
    }

    /// Verifies a reply for ingress instance `ingress_id`. Replies skip the
    /// replay guard: a replayed reply finds its waiter gone and is dropped.
    ///
    /// # Errors
    /// A [`Rejection`] (counted).
    pub async fn verify_reply(
        &self,
        entry: &StreamEntry,
        ingress_id: &str,
    ) -> Result<Envelope, VerifyError> {
        let r = self.check(entry, Kind::Reply, ingress_id, None).await;
        self.count(r)
    }

    fn count(&self, r: Result<Envelope, VerifyError>) -> Result<Envelope, VerifyError> {
        if let Err(VerifyError::Rejected(why)) = &r {
            self.rejections.inc(*why);
        }
        r
    }

    async fn check(
        &self,
        entry: &StreamEntry,
        kind: Kind,
        dest: &str,
        at: Option<&At<'_>>,
    ) -> Result<Envelope, VerifyError> {
        use Rejection::*;
        let reject = |r| Err(VerifyError::Rejected(r));
        if !self.accepts_size(entry) {
            return reject(Oversized);
        }
        if entry.v != FORMAT_VERSION.as_bytes() {
            return reject(BadVersion);
        }
        let ring = self.ring.get();
        let kid = std::str::from_utf8(&entry.k).unwrap_or("");
        let Some(key) = ring.key(kid, kind) else {
            return reject(UnknownKid);
        };
        let Some(sig) = unhex32(&entry.s) else {
            return reject(BadMac);
        };
        // `verify_slice` compares in constant time.
        if mac(key, &entry.v, &entry.m).verify_slice(&sig).is_err() {
            return reject(BadMac);
        }
        self.decoded.fetch_add(1, Ordering::Relaxed);
        let Ok(env) = decode(&entry.m) else {
            return reject(Malformed);
        };
        let now = now_ms();
        if env.ts > now + self.skew.as_millis() as u64 {
            return reject(FromFuture);
        }
        if env.deadline <= now {
            return reject(Expired);
        }
        // Who it is for before any nonce is claimed: an entry copied into
        // another group's queue must not use up the nonce of the original.
        if env.kind != kind {
            return reject(WrongKind);
        }
        if env.dest != dest || env.pipeline != self.keys.pipeline() {
            return reject(WrongDestination);
        }
        if let Some(at) = at {
            let ttl = Duration::from_millis(env.deadline - now) + self.skew;
            let key = self.keys.nonce(dest, kid, &env.nonce);
            let here = format!("{}/{}", at.stream, at.id);
            if let Some(seen) = self.kv.set_nx(&key, &here, ttl).await? {
                // Only the queue's own redelivery of the same entry (lease
                // lapsed, delivered again) may pass a seen nonce; a first
                // delivery of a seen stream/id is that entry added back,
                // and `done` means it was handed off already.
                if seen != here || at.deliveries < 2 {
                    return reject(Replay);
                }
            }
        }
        Ok(env)
    }
}

fn unhex32(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    // Lowercase only: one MAC has exactly one accepted spelling.
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}
