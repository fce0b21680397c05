//! Signing envelopes and the verification chain of DESIGN §6.
//!
//! ```text
//! entry ─▶ size ─▶ version ─▶ key id ─▶ key held ─▶ MAC ─▶ decode ─▶ freshness ─▶ kind/destination ─▶ replay guard ─▶ Envelope
//!           └──────────── each failure is a Rejection with a counted reason; nothing is executed ───────────────────────┘
//! ```
//!
//! The key is chosen before anything is decoded: a request with the request
//! key of the group that receives it, a reply with the reply key of the
//! group named in its key id (`k` = `<kid>/<group>`). Nothing is decoded
//! before the MAC has been checked with the MAC library's constant-time
//! comparison. Callers never tell a remote peer which check failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::Mac;
use rand::RngCore;

use crate::backend::BackendError;
use crate::clock::now_ms;
use crate::codec::{decode, readable, Format};
use crate::envelope::{Envelope, Kind, StreamEntry};
use crate::keyring::{
    hex, hex_into, valid_group, valid_kid, CheckKey, KeyRing, MacKey, SharedKeyRing,
};
use crate::keys::Keys;
use crate::kv::Kv;
use crate::metrics::Rejections;
pub use crate::rejection::Rejection;

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

/// The MAC of `v` ‖ `m` under a key's HMAC state.
fn mac(key: MacKey, v: &[u8], m: &[u8]) -> MacKey {
    let mut mac = key;
    mac.update(v);
    mac.update(m);
    mac
}

/// A fresh 128-bit nonce, hex.
pub fn new_nonce() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex(&b)
}

/// Appends the key id `k` of an entry to `out`: the kid alone on
/// requests, `<kid>/<group>` on replies, naming the group whose reply key
/// signed it.
fn push_key_id(out: &mut Vec<u8>, kid: &str, kind: Kind, from: &str) {
    out.extend_from_slice(kid.as_bytes());
    if kind == Kind::Reply {
        out.push(b'/');
        out.extend_from_slice(from.as_bytes());
    }
}

/// Reads a key id as `kind` expects it: `(kid, None)` for requests,
/// `(kid, Some(group))` for replies; `None` for anything else.
fn parse_key_id(k: &[u8], kind: Kind) -> Option<(&str, Option<&str>)> {
    let k = std::str::from_utf8(k).ok()?;
    match kind {
        Kind::Request => valid_kid(k).then_some((k, None)),
        Kind::Reply => {
            let (kid, group) = k.split_once('/')?;
            (valid_kid(kid) && valid_group(group)).then_some((kid, Some(group)))
        }
    }
}

/// Why an envelope could not be signed. Names kids and groups, never keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The process's key directory does not hold the key: it was given only
    /// the keys of its role (docs/wire-format.md), and this envelope is
    /// outside it. A deployment fault, not the request's.
    #[error(
        "this process holds no {kind} key for group `{group}` (kid `{kid}`): \
         its key directory holds only the keys of its role"
    )]
    MissingKey {
        kind: &'static str,
        group: String,
        kid: String,
    },
}

/// Signs envelopes with the current key of a shared ring, as the process of
/// one group of one pipeline: a request with the request key of its
/// destination group, a reply with the reply key of the signer's group.
#[derive(Clone, Debug)]
pub struct Signer {
    ring: SharedKeyRing,
    pipeline: String,
    group: String,
    /// The generation of the graph this process runs, stamped on the
    /// requests it signs.
    plan: Option<String>,
    /// The form of `m` it writes ([`Format`]: JSON unless every reader
    /// is this process).
    format: Format,
}

impl Signer {
    /// A signer for `keys`' pipeline in a process running `group` (the
    /// ingress group for the ingress): its replies say they come from
    /// `group` and are signed with that group's reply key.
    pub fn new(ring: SharedKeyRing, keys: &Keys, group: &str) -> Self {
        Self {
            ring,
            pipeline: keys.pipeline().to_string(),
            group: group.to_string(),
            plan: None,
            format: Format::default(),
        }
    }

    /// The same signer, writing `m` in `format`.
    pub fn with_format(self, format: Format) -> Self {
        Self { format, ..self }
    }

    /// The same signer, stamping `generation` (the process's
    /// `Plan::generation`) on every request it signs.
    pub fn with_plan(self, generation: String) -> Self {
        Self {
            plan: Some(generation),
            ..self
        }
    }

    /// The same ring and pipeline, replying as `group` (each inline worker
    /// of the memory profile signs as its own group).
    pub fn for_group(&self, group: &str) -> Self {
        Self {
            group: group.to_string(),
            ..self.clone()
        }
    }

    /// The group replies are signed as.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Stamps `env` with a fresh `ts` and nonce (and a request with this
    /// signer's plan generation, when it has one) and signs it with the
    /// current key for its kind and group.
    ///
    /// # Errors
    /// The ring does not hold that key ([`SignError::MissingKey`]).
    pub fn sign(&self, env: &mut Envelope) -> Result<StreamEntry, SignError> {
        env.ts = now_ms();
        env.nonce = new_nonce();
        if env.kind == Kind::Request && self.plan.is_some() {
            env.plan.clone_from(&self.plan);
        }
        self.sign_as_is(env)
    }

    /// Signs `env` without touching `ts` or nonce (tests forge with this).
    ///
    /// # Errors
    /// As [`Signer::sign`].
    pub fn sign_as_is(&self, env: &Envelope) -> Result<StreamEntry, SignError> {
        let ring = self.ring.get();
        let kid = ring.current();
        let group = match env.kind {
            Kind::Request => env.dest.as_str(),
            Kind::Reply => self.group.as_str(),
        };
        let Some(key) = ring.mac_key(kid, env.kind, &self.pipeline, group) else {
            return Err(SignError::MissingKey {
                kind: env.kind.as_str(),
                // A name the ring cannot derive for is shown escaped: it
                // may come from a hostile envelope's destination.
                group: group
                    .chars()
                    .take(64)
                    .collect::<String>()
                    .escape_debug()
                    .to_string(),
                kid: kid.to_string(),
            });
        };
        let v = Bytes::from_static(self.format.version().as_bytes());
        // `m`, then `s` and `k` after it, in one buffer the entry's fields
        // share, with room for a small payload's envelope (about 350 bytes
        // as JSON, 220 in the binary form), its MAC and key id.
        let mut buf = Vec::with_capacity(640);
        self.format.encode_into(env, &mut buf);
        let m_len = buf.len();
        let tag = mac(key, &v, &buf).finalize().into_bytes();
        hex_into(&tag, &mut buf);
        let s_len = buf.len() - m_len;
        push_key_id(&mut buf, kid, env.kind, &self.group);
        let mut buf = Bytes::from(buf);
        let m = buf.split_to(m_len);
        let s = buf.split_to(s_len);
        Ok(StreamEntry {
            v,
            k: buf,
            m,
            s,
            note: Bytes::new(),
        })
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
    /// A genuine request that the caller's predicate hands back (a request
    /// of another generation of the graph, for a node this worker does not
    /// run): checked up to its destination, its nonce not claimed, so
    /// another worker can take it as if it had never been read here.
    #[error("a request for another generation of the graph")]
    HandedBack(Box<Envelope>),
}

/// Which genuine requests a receiver hands back unclaimed
/// ([`Verifier::verify_request_unless`]).
pub type HandBack<'a> = dyn Fn(&Envelope) -> bool + Sync + 'a;

/// Where a request entry was read: its stream, its entry id, and how many
/// times the queue has delivered it (this time included).
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub stream: &'a str,
    pub id: &'a str,
    pub deliveries: u32,
}

/// A reply that passed verification, and the group that signed it: named
/// in its key id, and proven by the MAC (only a holder of that group's reply
/// key can make one that verifies).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedReply {
    pub envelope: Envelope,
    pub from: String,
}

/// Runs the verification chain for one receiver.
#[derive(Clone)]
pub struct Verifier {
    ring: SharedKeyRing,
    /// The replay guard's store; `None` where nothing outside this process
    /// can write the queues (see [`Verifier::new`]).
    kv: Option<Arc<dyn Kv>>,
    keys: Keys,
    skew: Duration,
    max_entry_bytes: usize,
    /// The longest a request may be given between its signing and its
    /// deadline; `None`: no bound.
    max_lifetime: Option<Duration>,
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
    /// plus [`ENVELOPE_OVERHEAD`] are refused unread. Requests claim their
    /// nonce in `guard`; without one there is no replay guard, which is
    /// right only for queues nothing outside this process can write (the
    /// memory profile: a replay needs someone who can add a captured entry
    /// to a queue). Every other check runs either way.
    pub fn new(
        ring: SharedKeyRing,
        guard: Option<Arc<dyn Kv>>,
        keys: Keys,
        skew: Duration,
        max_payload_bytes: usize,
        rejections: Rejections,
    ) -> Self {
        Self {
            ring,
            kv: guard,
            keys,
            skew,
            max_entry_bytes: max_entry_bytes(max_payload_bytes),
            max_lifetime: None,
            rejections,
            decoded: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The same verifier, refusing requests whose deadline lies more than
    /// `lifetime` plus the clock skew ahead (`far_deadline`), so a holder of
    /// a request key cannot make requests, and replay-guard keys, that
    /// outlive every caller. Workers and the ingress use a bound no
    /// pipeline reaches (the longest `asyncTimeout` any may set), so that a
    /// timeout changed by a spec change never refuses the requests of the
    /// other generation.
    pub fn with_max_lifetime(self, lifetime: Duration) -> Self {
        Self {
            max_lifetime: Some(lifetime),
            ..self
        }
    }

    /// Whether an entry of this size passes the size check; a sender
    /// checks its own entries with it, since one that does not would be
    /// refused unread and its caller left to time out.
    pub fn accepts_size(&self, entry: &StreamEntry) -> bool {
        entry.signed_len() <= self.max_entry_bytes
            && entry.note.len() <= crate::envelope::MAX_NOTE_BYTES
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
        self.verify_request_unless(entry, at, group, &|_| false)
            .await
    }

    /// [`Self::verify_request`], except that a request `hand_back` picks,
    /// once its MAC, age, kind and destination have passed, ends with
    /// [`VerifyError::HandedBack`] before the replay guard sees it.
    ///
    /// # Errors
    /// As [`Self::verify_request`], and [`VerifyError::HandedBack`].
    pub async fn verify_request_unless(
        &self,
        entry: &StreamEntry,
        at: &At<'_>,
        group: &str,
        hand_back: &HandBack<'_>,
    ) -> Result<Envelope, VerifyError> {
        let r = self
            .check(entry, Kind::Request, group, Some((at, hand_back)), true)
            .await;
        self.count(r)
    }

    /// Verifies a reply for ingress instance `ingress_id`, with the reply
    /// key of the group its key id names. Replies skip the replay guard: a
    /// replayed reply finds its waiter gone and is dropped. Whether that
    /// group may answer the waiting request is the caller's check (it knows
    /// the waiter); it counts a refusal with [`Verifier::count_rejection`].
    ///
    /// # Errors
    /// A [`Rejection`] (counted).
    pub async fn verify_reply(
        &self,
        entry: &StreamEntry,
        ingress_id: &str,
    ) -> Result<VerifiedReply, VerifyError> {
        self.reply(entry, ingress_id, true).await
    }

    /// Verifies the stored answer of an asynchronous request, addressed to
    /// `dest` (`async:<handle>`): every check of [`Self::verify_reply`] but
    /// the deadline, since an answer is fetched up to `results.ttl` after
    /// it. The key that signed it is kept that long (the rotation overlap
    /// counts `results.ttl`).
    ///
    /// # Errors
    /// A [`Rejection`] (counted).
    pub async fn verify_stored_reply(
        &self,
        entry: &StreamEntry,
        dest: &str,
    ) -> Result<VerifiedReply, VerifyError> {
        self.reply(entry, dest, false).await
    }

    async fn reply(
        &self,
        entry: &StreamEntry,
        dest: &str,
        deadline_applies: bool,
    ) -> Result<VerifiedReply, VerifyError> {
        let r = self
            .check(entry, Kind::Reply, dest, None, deadline_applies)
            .await;
        let envelope = self.count(r)?;
        // `check` accepted this key id, so it parses.
        let from = parse_key_id(&entry.k, Kind::Reply)
            .and_then(|(_, group)| group)
            .unwrap_or_default()
            .to_string();
        Ok(VerifiedReply { envelope, from })
    }

    /// Verifies an entry of the dead-letter stream: a request entry as it
    /// was read from a group's queue (or as the ingress signed it), which
    /// any group's process may have written there, so as untrusted as any
    /// entry. Which group it was for is not known before its MAC: the
    /// request key of each of `groups` is tried (each comparison in
    /// constant time), and the envelope must then be a request of this
    /// pipeline addressed to the group whose key verified it. Neither its
    /// deadline (a dead letter is usually past it) nor the replay guard
    /// applies, and nothing is counted: this serves an operator's command,
    /// not traffic.
    ///
    /// # Errors
    /// The [`Rejection`] of the first check that fails.
    pub fn verify_dead_letter(
        &self,
        entry: &StreamEntry,
        groups: &[&str],
    ) -> Result<Envelope, Rejection> {
        use Rejection::*;
        let ring = self.ring.get();
        let (kid, _) = self.framing(&ring, entry, Kind::Request)?;
        let sig = unhex32(&entry.s).ok_or(BadMac)?;
        let group = groups
            .iter()
            .find(|g| {
                ring.mac_key(kid, Kind::Request, self.keys.pipeline(), g)
                    .is_some_and(|key| mac(key, &entry.v, &entry.m).verify_slice(&sig).is_ok())
            })
            .ok_or(BadMac)?;
        let env = decode(&entry.v, &entry.m).map_err(|_| Malformed)?;
        if env.kind != Kind::Request {
            return Err(WrongKind);
        }
        if env.dest != *group || env.pipeline != self.keys.pipeline() {
            return Err(WrongDestination);
        }
        Ok(env)
    }

    /// Counts a rejection its caller decided after the chain passed (the
    /// ingress refusing a reply from a group that does not answer the
    /// waiting request: [`Rejection::WrongSender`]).
    pub fn count_rejection(&self, why: Rejection) {
        self.rejections.inc(why);
    }

    fn count(&self, r: Result<Envelope, VerifyError>) -> Result<Envelope, VerifyError> {
        if let Err(VerifyError::Rejected(why)) = &r {
            self.rejections.inc(*why);
        }
        r
    }

    /// The checks before any key is chosen: size, version, and a key id
    /// of `kind`'s form that `ring` knows (with the replying group a
    /// reply's names).
    fn framing<'e>(
        &self,
        ring: &KeyRing,
        entry: &'e StreamEntry,
        kind: Kind,
    ) -> Result<(&'e str, Option<&'e str>), Rejection> {
        if !self.accepts_size(entry) {
            return Err(Rejection::Oversized);
        }
        if !readable(&entry.v) {
            return Err(Rejection::BadVersion);
        }
        match parse_key_id(&entry.k, kind) {
            Some((kid, from)) if ring.knows(kid) => Ok((kid, from)),
            _ => Err(Rejection::UnknownKid),
        }
    }

    async fn check(
        &self,
        entry: &StreamEntry,
        kind: Kind,
        dest: &str,
        at: Option<(&At<'_>, &HandBack<'_>)>,
        deadline_applies: bool,
    ) -> Result<Envelope, VerifyError> {
        use Rejection::*;
        let reject = |r| Err(VerifyError::Rejected(r));
        // The key is chosen from the key id and this receiver alone: a
        // request with the request key of the group receiving it, a reply
        // with the reply key of the group its key id names.
        let ring = self.ring.get();
        let (kid, from) = self
            .framing(&ring, entry, kind)
            .map_err(VerifyError::Rejected)?;
        let group = from.unwrap_or(dest);
        let Some(CheckKey { mac: key, unseen }) =
            ring.check_key(kid, kind, self.keys.pipeline(), group)
        else {
            return reject(MissingKey);
        };
        let Some(sig) = unhex32(&entry.s) else {
            return reject(BadMac);
        };
        // `verify_slice` compares in constant time.
        if mac(key, &entry.v, &entry.m).verify_slice(&sig).is_err() {
            return reject(BadMac);
        }
        // A group a valid MAC names is a real one: its key is kept.
        ring.remember(unseen);
        self.decoded.fetch_add(1, Ordering::Relaxed);
        let Ok(env) = decode(&entry.v, &entry.m) else {
            return reject(Malformed);
        };
        let now = now_ms();
        if env.ts > now + self.skew.as_millis() as u64 {
            return reject(FromFuture);
        }
        if deadline_applies && env.deadline <= now {
            return reject(Expired);
        }
        // On this receiver's clock, as the nonce's time to live is.
        if let (Kind::Request, Some(max)) = (kind, self.max_lifetime) {
            let bound =
                u64::try_from(max.saturating_add(self.skew).as_millis()).unwrap_or(u64::MAX);
            if env.deadline.saturating_sub(now) > bound {
                return reject(FarDeadline);
            }
        }
        // Who it is for before any nonce is claimed: an entry copied into
        // another group's queue must not use up the nonce of the original.
        if env.kind != kind {
            return reject(WrongKind);
        }
        // A streamed request's replies name two receivers: the store they
        // are kept in (`dest`) and the ingress following them (`live`).
        let addressed =
            env.dest == dest || (kind == Kind::Reply && env.live.as_deref() == Some(dest));
        if !addressed || env.pipeline != self.keys.pipeline() {
            return reject(WrongDestination);
        }
        let Some((at, hand_back)) = at else {
            return Ok(env);
        };
        if hand_back(&env) {
            return Err(VerifyError::HandedBack(Box::new(env)));
        }
        if let Some(kv) = &self.kv {
            let ttl = Duration::from_millis(env.deadline - now) + self.skew;
            // The key names the destination group, whose queue is the one
            // stream it is read from: the entry id alone says where.
            let key = self.keys.nonce(dest, kid, &env.nonce);
            if let Some(seen) = kv.set_nx(&key, at.id, ttl).await? {
                // Only the queue's own redelivery of the same entry (lease
                // lapsed, delivered again) may pass a seen nonce; a first
                // delivery of a seen id is that entry added back. Values
                // written as `<stream>/<id>` by earlier versions count too.
                let same = seen == at.id
                    || seen
                        .strip_prefix(at.stream)
                        .and_then(|rest| rest.strip_prefix('/'))
                        == Some(at.id);
                if !same || at.deliveries < 2 {
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
