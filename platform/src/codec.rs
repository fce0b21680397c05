//! The two forms of an envelope's message `m`: JSON (format version 2)
//! and a binary form (format version 3), which this module lays out:
//!
//! ```text
//! m = kind:u8 present:u16 ts:u64 deadline:u64 attempt:u32
//!     pipeline dest cid rid nonce                      (text)
//!     [trace] [node] [plan] [reply_to] [live]          (text, when present)
//!     [seq:u64] [last_seq:u64]                         (when present)
//!     [error.code error.message]                       (text, when present)
//!     payload                                          (JSON, to the end)
//! text = len:u32 UTF-8 bytes
//! ```
//!
//! Integers are unsigned and little-endian; `kind` is 1 (request) or 2
//! (reply); `present` has one bit per optional field, in the order above
//! (trace 0x01 … error 0x80), and its other bits are refused (room for
//! fields to come). The payload is JSON as in version 2; names and payload
//! stay readable in a dump, the lengths being raw bytes.
//!
//! Decoding is for bytes whose MAC verified, yet it trusts nothing: every
//! length is checked against what is left before anything is allocated,
//! text must be UTF-8, the kind and the field bits known, and the payload
//! one JSON value to the end (serde_json's nesting limit applies). The
//! envelope's own fields take no more memory than their bytes; the payload
//! is parsed into a value, as in version 2.

use serde_json::Value;

use crate::envelope::{Envelope, Kind, ReplyError};

/// The format version whose message `m` is the binary form.
pub const BINARY_VERSION: &str = "3";

/// The format version whose message is the envelope as JSON.
pub const JSON_VERSION: &str = "2";

/// The two forms of `m` a process reads, and the one it writes.
///
/// Both sign with per-group derived keys and name the replying group in a
/// reply's `k` (a version-1 entry cannot be verified under those rules, and
/// is refused as `bad_version` rather than as a forgery). Releases before
/// the binary form read only JSON, so a process writes binary only where
/// every reader of its queues runs its own code: the memory profile, whose
/// queues live in its own process. Redis and tcp queues are read by other
/// processes, possibly of the release before during a rolling upgrade or
/// a rollback: they are written as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Version 2, what every release reads.
    #[default]
    Json,
    /// Version 3: shorter, and cheaper to encode and decode.
    Binary,
}

impl Format {
    /// The version written in `v`.
    pub fn version(self) -> &'static str {
        match self {
            Format::Json => JSON_VERSION,
            Format::Binary => BINARY_VERSION,
        }
    }

    /// Appends the message bytes of `env` in this form to `out` (the
    /// signer writes them into the buffer the signed entry's fields share).
    pub fn encode_into(self, env: &Envelope, out: &mut Vec<u8>) {
        match self {
            Format::Binary => encode_binary(env, out),
            Format::Json => {
                let start = out.len();
                // Serialising a struct of strings, integers and `Value`s
                // cannot fail; were it to, nothing of it is left and every
                // receiver refuses the entry.
                if serde_json::to_writer(&mut *out, env).is_err() {
                    out.truncate(start);
                }
            }
        }
    }
}

/// Encodes the message bytes of an envelope in `format`.
pub fn encode(env: &Envelope, format: Format) -> Vec<u8> {
    let mut m = Vec::new();
    format.encode_into(env, &mut m);
    m
}

/// Whether entries of format version `v` are read: 3 and 2.
pub fn readable(v: &[u8]) -> bool {
    v == BINARY_VERSION.as_bytes() || v == JSON_VERSION.as_bytes()
}

/// Why message bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Binary(#[from] BinaryError),
    #[error("the message is not a version-2 envelope: {0}")]
    Json(String),
    #[error("format version {0:?} is not read here")]
    Version(String),
}

/// Decodes the message bytes `m` of an entry of format `v`
/// ([`readable`]). Called only after the MAC has been verified.
///
/// # Errors
/// See [`DecodeError`].
pub fn decode(v: &[u8], m: &[u8]) -> Result<Envelope, DecodeError> {
    if v == BINARY_VERSION.as_bytes() {
        Ok(decode_binary(m)?)
    } else if v == JSON_VERSION.as_bytes() {
        serde_json::from_slice(m).map_err(|e| DecodeError::Json(e.to_string()))
    } else {
        Err(DecodeError::Version(
            String::from_utf8_lossy(v).chars().take(16).collect(),
        ))
    }
}

const REQUEST: u8 = 1;
const REPLY: u8 = 2;

const TRACE: u16 = 0x01;
const NODE: u16 = 0x02;
const PLAN: u16 = 0x04;
const REPLY_TO: u16 = 0x08;
const LIVE: u16 = 0x10;
const SEQ: u16 = 0x20;
const LAST_SEQ: u16 = 0x40;
const ERROR: u16 = 0x80;
/// Every bit `present` may have.
const KNOWN: u16 = 0xff;

/// Why message bytes are not a version-3 envelope. Names the part, never
/// echoes the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    #[error("the message ends inside its {0}")]
    Short(&'static str),
    #[error("the message's {0} is not UTF-8")]
    NotText(&'static str),
    #[error("unknown kind {0}")]
    Kind(u8),
    #[error("unknown field bits {0:#06x}")]
    Bits(u16),
    #[error("the payload is not JSON: {0}")]
    Payload(String),
}

/// Appends the version-3 message bytes of `env` to `out`.
pub fn encode_binary(env: &Envelope, out: &mut Vec<u8>) {
    let present = [
        (TRACE, env.trace.is_some()),
        (NODE, env.node.is_some()),
        (PLAN, env.plan.is_some()),
        (REPLY_TO, env.reply_to.is_some()),
        (LIVE, env.live.is_some()),
        (SEQ, env.seq.is_some()),
        (LAST_SEQ, env.last_seq.is_some()),
        (ERROR, env.error.is_some()),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .fold(0u16, |bits, (bit, _)| bits | bit);
    out.push(match env.kind {
        Kind::Request => REQUEST,
        Kind::Reply => REPLY,
    });
    out.extend_from_slice(&present.to_le_bytes());
    out.extend_from_slice(&env.ts.to_le_bytes());
    out.extend_from_slice(&env.deadline.to_le_bytes());
    out.extend_from_slice(&env.attempt.to_le_bytes());
    for s in [&env.pipeline, &env.dest, &env.cid, &env.rid, &env.nonce] {
        text(out, s);
    }
    for s in [&env.trace, &env.node, &env.plan, &env.reply_to, &env.live]
        .into_iter()
        .flatten()
    {
        text(out, s);
    }
    for n in [env.seq, env.last_seq].into_iter().flatten() {
        out.extend_from_slice(&n.to_le_bytes());
    }
    if let Some(e) = &env.error {
        text(out, &e.code);
        text(out, &e.message);
    }
    // Writing a `Value` into a Vec cannot fail; were it to, the payload
    // would not be JSON and every receiver would refuse the entry.
    let _ = serde_json::to_writer(&mut *out, &env.payload);
}

fn text(out: &mut Vec<u8>, s: &str) {
    // An entry is capped far below 4 GiB (`max_entry_bytes`): a longer
    // text is cut to the length its prefix can say, and the entry is
    // refused by size before anyone decodes it.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

/// Decodes version-3 message bytes.
///
/// # Errors
/// See [`BinaryError`].
pub fn decode_binary(m: &[u8]) -> Result<Envelope, BinaryError> {
    let mut r = Reader(m);
    let kind = match r.u8("kind")? {
        REQUEST => Kind::Request,
        REPLY => Kind::Reply,
        other => return Err(BinaryError::Kind(other)),
    };
    let present = u16::from_le_bytes(r.array("field bits")?);
    if present & !KNOWN != 0 {
        return Err(BinaryError::Bits(present & !KNOWN));
    }
    let ts = r.u64("ts")?;
    let deadline = r.u64("deadline")?;
    let attempt = u32::from_le_bytes(r.array("attempt")?);
    let pipeline = r.text("pipeline")?;
    let dest = r.text("dest")?;
    let cid = r.text("cid")?;
    let rid = r.text("rid")?;
    let nonce = r.text("nonce")?;
    let trace = r.text_if(present & TRACE, "trace")?;
    let node = r.text_if(present & NODE, "node")?;
    let plan = r.text_if(present & PLAN, "plan")?;
    let reply_to = r.text_if(present & REPLY_TO, "reply_to")?;
    let live = r.text_if(present & LIVE, "live")?;
    let seq = r.u64_if(present & SEQ, "seq")?;
    let last_seq = r.u64_if(present & LAST_SEQ, "last_seq")?;
    let error = if present & ERROR != 0 {
        Some(ReplyError {
            code: r.text("error code")?,
            message: r.text("error message")?,
        })
    } else {
        None
    };
    let payload: Value =
        serde_json::from_slice(r.0).map_err(|e| BinaryError::Payload(e.to_string()))?;
    Ok(Envelope {
        kind,
        pipeline,
        dest,
        cid,
        rid,
        trace,
        ts,
        nonce,
        deadline,
        attempt,
        node,
        plan,
        reply_to,
        live,
        seq,
        last_seq,
        payload,
        error,
    })
}

/// The bytes not read yet.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], BinaryError> {
        if self.0.len() < n {
            return Err(BinaryError::Short(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], BinaryError> {
        let head = self.take(N, what)?;
        // `take` returned exactly N bytes.
        Ok(head.try_into().unwrap_or([0; N]))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, BinaryError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, BinaryError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn text(&mut self, what: &'static str) -> Result<String, BinaryError> {
        let len = u32::from_le_bytes(self.array(what)?);
        // Checked against what is left before anything is allocated.
        let bytes = self.take(len as usize, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| BinaryError::NotText(what))
    }

    fn text_if(&mut self, bit: u16, what: &'static str) -> Result<Option<String>, BinaryError> {
        (bit != 0).then(|| self.text(what)).transpose()
    }

    fn u64_if(&mut self, bit: u16, what: &'static str) -> Result<Option<u64>, BinaryError> {
        (bit != 0).then(|| self.u64(what)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn request() -> Envelope {
        Envelope {
            kind: Kind::Request,
            pipeline: "default/orders".into(),
            dest: "cpu".into(),
            cid: "6f1c".into(),
            rid: "caller-1".into(),
            trace: None,
            ts: 1_795_439_225_123,
            nonce: "9f2a".repeat(8),
            deadline: 1_795_439_230_123,
            attempt: 1,
            node: Some("standard".into()),
            plan: Some("3f9a1c07b2d4e865".into()),
            reply_to: Some("web-7d9c-1a2b3c4d".into()),
            live: None,
            seq: None,
            last_seq: None,
            payload: json!({"id": "B2", "items": [1, 2], "note": "ünïcode"}),
            error: None,
        }
    }

    fn encoded(env: &Envelope) -> Vec<u8> {
        let mut m = vec![];
        encode_binary(env, &mut m);
        m
    }

    #[test]
    fn a_request_and_a_reply_come_back_as_they_went() {
        let req = request();
        assert_eq!(decode_binary(&encoded(&req)), Ok(req.clone()));
        let mut reply = req.reply(Err(ReplyError::new("node_failed", "it broke")));
        reply.trace = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        reply.live = Some("web-1".into());
        reply.seq = Some(3);
        reply.last_seq = Some(0);
        assert_eq!(decode_binary(&encoded(&reply)), Ok(reply));
    }

    #[test]
    fn names_and_payload_stay_readable_in_the_stored_bytes() {
        let m = encoded(&request());
        let shown = String::from_utf8_lossy(&m);
        for part in ["default/orders", "standard", "web-7d9c-1a2b3c4d"] {
            assert!(shown.contains(part), "{part} in {shown:?}");
        }
        assert!(shown.ends_with(r#"{"id":"B2","items":[1,2],"note":"ünïcode"}"#));
    }

    /// The fuzz seeds were written from the layout in docs/wire-format.md
    /// by a separate encoder (a short Python script, not kept), not by this
    /// one: the documented layout is the one read.
    #[test]
    fn messages_written_from_the_documented_layout_decode() {
        let request = decode_binary(include_bytes!("../../fuzz/seeds/codec/request")).unwrap();
        assert_eq!(
            (
                request.kind,
                request.pipeline.as_str(),
                request.dest.as_str()
            ),
            (Kind::Request, "ns/p", "work")
        );
        assert_eq!(
            (request.ts, request.deadline),
            (1_700_000_000_000, 4_102_444_800_000)
        );
        assert_eq!(request.nonce, "00112233445566778899aabbccddeeff");
        assert_eq!(request.node.as_deref(), Some("greet"));
        assert_eq!(request.plan.as_deref(), Some("3f9a1c07b2d4e865"));
        assert_eq!(request.reply_to.as_deref(), Some("ingress-1"));
        assert_eq!(
            request.payload,
            json!({"name": "world", "n": [1, 2.5, null, true]})
        );
        let reply = decode_binary(include_bytes!("../../fuzz/seeds/codec/reply")).unwrap();
        assert_eq!(
            (reply.kind, reply.dest.as_str()),
            (Kind::Reply, "ingress-1")
        );
        assert_eq!(
            reply.trace.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(reply.error, Some(ReplyError::new("node_failed", "boom")));
        let chunk = decode_binary(include_bytes!("../../fuzz/seeds/codec/error-chunk")).unwrap();
        assert_eq!(chunk.kind, Kind::Reply);
        assert_eq!(
            (chunk.live.as_deref(), chunk.seq, chunk.last_seq),
            (Some("web-1"), Some(2), Some(1))
        );
        assert_eq!(
            chunk.error,
            Some(ReplyError::new("node_failed", "it broke"))
        );
        assert_eq!(chunk.payload, Value::Null);
        // Encoded again, byte for byte the same.
        let mut m = vec![];
        encode_binary(&request, &mut m);
        assert_eq!(m, include_bytes!("../../fuzz/seeds/codec/request"));
    }

    /// A number read from a caller's JSON is the same number after any
    /// count of hops (serde_json's `float_roundtrip`: without it, a large
    /// integer read as a float changed by one unit in the last place when
    /// its own output was read again).
    #[test]
    fn numbers_keep_their_value_from_hop_to_hop() {
        let mut env = request();
        env.payload =
            serde_json::from_str("[111111111111111111111, 0.1, 1e-7, 123456789.123456789]")
                .unwrap();
        let first = encoded(&env);
        let once = decode_binary(&first).unwrap();
        assert_eq!(once.payload, env.payload);
        assert_eq!(encoded(&once), first);
    }

    #[test]
    fn every_cut_of_a_message_is_refused() {
        let m = encoded(&request());
        // The payload is the tail: a cut inside it leaves invalid JSON.
        for n in 0..m.len() {
            assert!(decode_binary(&m[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn hostile_bytes_are_refused_with_the_part_named() {
        let m = encoded(&request());
        let mut bad_kind = m.clone();
        bad_kind[0] = 7;
        assert_eq!(decode_binary(&bad_kind), Err(BinaryError::Kind(7)));
        // A length far past the end is refused before anything is made.
        let mut long = m.clone();
        long[23..27].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_binary(&long), Err(BinaryError::Short("pipeline")));
        // Not UTF-8 inside a name.
        let mut latin = m.clone();
        latin[27] = 0xff;
        assert_eq!(decode_binary(&latin), Err(BinaryError::NotText("pipeline")));
        // A field bit set with nothing behind it shifts what follows.
        let mut bits = m.clone();
        bits[1] |= ERROR as u8;
        assert!(decode_binary(&bits).is_err());
        // A bit no field has.
        let mut unknown = m.clone();
        unknown[2] = 0x01;
        assert_eq!(decode_binary(&unknown), Err(BinaryError::Bits(0x100)));
        // Bytes after the payload.
        let mut trailing = m;
        trailing.extend_from_slice(b" 1");
        assert!(matches!(
            decode_binary(&trailing),
            Err(BinaryError::Payload(_))
        ));
    }

    proptest! {
        #[test]
        fn any_envelope_round_trips(
            names in proptest::collection::vec("\\PC{0,12}", 9),
            ts in any::<u64>(),
            deadline in any::<u64>(),
            attempt in any::<u32>(),
            reply in any::<bool>(),
            optional in any::<u8>(),
            seq in any::<u64>(),
            payload in "\\PC{0,40}",
        ) {
            let optional = u16::from(optional);
            let on = |bit: u16, s: &str| (optional & bit != 0).then(|| s.to_string());
            let env = Envelope {
                kind: if reply { Kind::Reply } else { Kind::Request },
                pipeline: names[0].clone(),
                dest: names[1].clone(),
                cid: names[2].clone(),
                rid: names[3].clone(),
                trace: on(TRACE, &names[4]),
                ts,
                nonce: names[5].clone(),
                deadline,
                attempt,
                node: on(NODE, &names[6]),
                plan: on(PLAN, &names[7]),
                reply_to: on(REPLY_TO, &names[8]),
                live: on(LIVE, "web-1"),
                seq: (optional & SEQ != 0).then_some(seq),
                last_seq: (optional & LAST_SEQ != 0).then_some(seq / 2),
                payload: json!({ "s": payload }),
                error: (optional & ERROR != 0).then(|| ReplyError::new("c", payload.clone())),
            };
            prop_assert_eq!(decode_binary(&encoded(&env)), Ok(env));
        }

        /// A stored message with one byte of its binary part changed
        /// decodes to an envelope that encodes back to the same bytes, or is
        /// refused: nothing is read that the encoding cannot say. (The JSON
        /// payload has more than one spelling of one value.)
        #[test]
        fn a_changed_byte_is_refused_or_read_one_way(at in any::<prop::sample::Index>(), to in any::<u8>()) {
            let env = request();
            let mut m = encoded(&env);
            let json = serde_json::to_vec(&env.payload).unwrap().len();
            let i = at.index(m.len() - json);
            m[i] = to;
            if let Ok(env) = decode_binary(&m) {
                prop_assert_eq!(encoded(&env), m);
            }
        }
    }
}
