//! The calls and answers of the tcp profile, as bytes.
//!
//! A hand-written binary encoding: integers big-endian, byte strings and
//! texts with a `u32` length before them, lists with a `u32` count. The
//! decoder never allocates more than the bytes it was given can fill (every
//! count is checked against what is left), and refuses trailing bytes, so a
//! frame decodes to exactly one message or to an error naming what is
//! wrong. Frames are decoded only after their MAC was verified.

use std::time::Duration;

use crate::envelope::StreamEntry;
use crate::queue::{Completion, Delivery, Depth, Forward};

/// Why a payload did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed frame: {0}")]
pub struct Malformed(pub &'static str);

type Decoded<T> = Result<T, Malformed>;

/// Appends encoded values to a buffer.
#[derive(Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        // Frames are far below 4 GiB (their limit is checked before
        // sending), so every length fits.
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(v);
        self
    }

    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub fn count(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX))
    }

    pub fn millis(&mut self, d: Duration) -> &mut Self {
        self.u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn entry(&mut self, e: &StreamEntry) -> &mut Self {
        self.bytes(&e.v)
            .bytes(&e.k)
            .bytes(&e.m)
            .bytes(&e.s)
            .bytes(&e.note)
    }
}

/// Reads encoded values from a payload.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Decoded<&'a [u8]> {
        if self.rest.len() < n {
            return Err(Malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Decoded<u8> {
        Ok(self.take(1, "truncated")?[0])
    }

    pub fn u32(&mut self) -> Decoded<u32> {
        let b = self.take(4, "truncated")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Decoded<u64> {
        let b = self.take(8, "truncated")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub fn bytes(&mut self) -> Decoded<Vec<u8>> {
        Ok(self.slice()?.to_vec())
    }

    /// A length-prefixed field, as it lies in the frame.
    fn slice(&mut self) -> Decoded<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n, "a length runs past the frame")
    }

    pub fn str(&mut self) -> Decoded<String> {
        String::from_utf8(self.bytes()?).map_err(|_| Malformed("a text is not UTF-8"))
    }

    /// A list's count, checked against what is left: every element takes at
    /// least `min_len` bytes, so a count no payload can hold is refused
    /// before anything is allocated for it.
    pub fn count(&mut self, min_len: usize) -> Decoded<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_len.max(1)) > self.rest.len() {
            return Err(Malformed("a count runs past the frame"));
        }
        Ok(n)
    }

    pub fn millis(&mut self) -> Decoded<Duration> {
        Ok(Duration::from_millis(self.u64()?))
    }

    pub fn bool(&mut self) -> Decoded<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed("a flag is neither 0 nor 1")),
        }
    }

    pub fn entry(&mut self) -> Decoded<StreamEntry> {
        let fields = [
            self.slice()?,
            self.slice()?,
            self.slice()?,
            self.slice()?,
            self.slice()?,
        ];
        Ok(StreamEntry::copied(fields))
    }

    pub fn end(self) -> Decoded<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Malformed("trailing bytes"))
        }
    }
}

/// What a worker asks the hub: the operations of the `Queue` port.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    EnsureGroup {
        stream: String,
    },
    Push {
        stream: String,
        entry: StreamEntry,
    },
    PushCapped {
        stream: String,
        entry: StreamEntry,
        max_len: u64,
    },
    Read {
        stream: String,
        consumer: String,
        max: u32,
        block: Duration,
    },
    /// Held entries with how long ago the worker last knew each was its own
    /// (an `Instant` means nothing in another process).
    Renew {
        stream: String,
        consumer: String,
        held: Vec<(String, Duration)>,
        lease: Duration,
    },
    Reclaim {
        stream: String,
        consumer: String,
        min_idle: Duration,
        max: u32,
    },
    /// A hand-off batch, and with `then` a read without waiting of as many
    /// entries as the batch frees slots (answered with [`Answer::Handed`]).
    CompleteAll {
        stream: String,
        done: Vec<Completion>,
        then: Option<ThenRead>,
    },
    Append {
        streams: Vec<String>,
        entry: StreamEntry,
    },
    Depth {
        stream: String,
    },
    Pending {
        stream: String,
    },
}

/// The read that follows a hand-off: `consumer` takes up to `max` entries
/// of the same stream, if there are any now.
#[derive(Debug, Clone, PartialEq)]
pub struct ThenRead {
    pub consumer: String,
    pub max: u32,
}

/// The hub's answer to one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Done,
    Id(String),
    Deliveries(Vec<Delivery>),
    Ids(Vec<String>),
    Flags(Vec<bool>),
    Count(u64),
    Depth(Depth),
    /// A hand-off's flags and what the read after it took.
    Handed {
        flags: Vec<bool>,
        deliveries: Vec<Delivery>,
    },
    /// The call failed; the text says why (never payloads or keys).
    Failed(String),
}

/// The least bytes an encoded entry takes: four lengths.
const MIN_ENTRY: usize = 16;

/// Elements reserved ahead of decoding at most: a list's decoded form can
/// be many times its encoded bytes, so it grows with what actually decodes.
const PREALLOCATED: usize = 64;

fn forward(w: &mut Writer, f: &Forward) {
    w.str(&f.stream).entry(&f.entry).u8(u8::from(f.must_exist));
    match &f.copy_to {
        Some(s) => w.u8(1).str(s),
        None => w.u8(0),
    };
}

fn write_deliveries<'w>(w: &'w mut Writer, ds: &[Delivery]) -> &'w mut Writer {
    w.count(ds.len());
    for d in ds {
        w.str(&d.id).entry(&d.entry).u32(d.deliveries);
    }
    w
}

fn read_deliveries(r: &mut Reader<'_>) -> Decoded<Vec<Delivery>> {
    let n = r.count(4 + MIN_ENTRY + 4)?;
    let mut ds = Vec::with_capacity(n.min(PREALLOCATED));
    for _ in 0..n {
        ds.push(Delivery {
            id: r.str()?,
            entry: r.entry()?,
            deliveries: r.u32()?,
        });
    }
    Ok(ds)
}

fn write_flags<'w>(w: &'w mut Writer, fs: &[bool]) -> &'w mut Writer {
    w.count(fs.len());
    for f in fs {
        w.u8(u8::from(*f));
    }
    w
}

fn read_flags(r: &mut Reader<'_>) -> Decoded<Vec<bool>> {
    let n = r.count(1)?;
    let mut fs = Vec::with_capacity(n.min(PREALLOCATED));
    for _ in 0..n {
        fs.push(r.bool()?);
    }
    Ok(fs)
}

fn read_forward(r: &mut Reader<'_>) -> Decoded<Forward> {
    Ok(Forward {
        stream: r.str()?,
        entry: r.entry()?,
        must_exist: r.bool()?,
        copy_to: if r.bool()? { Some(r.str()?) } else { None },
    })
}

impl Call {
    /// `id` followed by the call.
    pub fn encode(&self, id: u64) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(id);
        match self {
            Call::EnsureGroup { stream } => w.u8(1).str(stream),
            Call::Push { stream, entry } => w.u8(2).str(stream).entry(entry),
            Call::PushCapped {
                stream,
                entry,
                max_len,
            } => w.u8(3).str(stream).entry(entry).u64(*max_len),
            Call::Read {
                stream,
                consumer,
                max,
                block,
            } => w.u8(4).str(stream).str(consumer).u32(*max).millis(*block),
            Call::Renew {
                stream,
                consumer,
                held,
                lease,
            } => {
                w.u8(5).str(stream).str(consumer).millis(*lease);
                w.count(held.len());
                for (id, age) in held {
                    w.str(id).millis(*age);
                }
                &mut w
            }
            Call::Reclaim {
                stream,
                consumer,
                min_idle,
                max,
            } => w
                .u8(6)
                .str(stream)
                .str(consumer)
                .millis(*min_idle)
                .u32(*max),
            Call::CompleteAll { stream, done, then } => {
                w.u8(7).str(stream).count(done.len());
                for c in done {
                    w.str(&c.id);
                    match &c.forward {
                        Some(f) => {
                            w.u8(1);
                            forward(&mut w, f);
                        }
                        None => {
                            w.u8(0);
                        }
                    }
                }
                match then {
                    Some(t) => w.u8(1).str(&t.consumer).u32(t.max),
                    None => w.u8(0),
                }
            }
            Call::Append { streams, entry } => {
                w.u8(8).count(streams.len());
                for s in streams {
                    w.str(s);
                }
                w.entry(entry)
            }
            Call::Depth { stream } => w.u8(9).str(stream),
            Call::Pending { stream } => w.u8(10).str(stream),
        };
        w.buf
    }

    /// The call id and the call.
    ///
    /// # Errors
    /// [`Malformed`] naming what is wrong.
    pub fn decode(buf: &[u8]) -> Decoded<(u64, Call)> {
        let mut r = Reader::new(buf);
        let id = r.u64()?;
        let call = match r.u8()? {
            1 => Call::EnsureGroup { stream: r.str()? },
            2 => Call::Push {
                stream: r.str()?,
                entry: r.entry()?,
            },
            3 => Call::PushCapped {
                stream: r.str()?,
                entry: r.entry()?,
                max_len: r.u64()?,
            },
            4 => Call::Read {
                stream: r.str()?,
                consumer: r.str()?,
                max: r.u32()?,
                block: r.millis()?,
            },
            5 => {
                let stream = r.str()?;
                let consumer = r.str()?;
                let lease = r.millis()?;
                let n = r.count(12)?;
                let mut held = Vec::with_capacity(n.min(PREALLOCATED));
                for _ in 0..n {
                    held.push((r.str()?, r.millis()?));
                }
                Call::Renew {
                    stream,
                    consumer,
                    held,
                    lease,
                }
            }
            6 => Call::Reclaim {
                stream: r.str()?,
                consumer: r.str()?,
                min_idle: r.millis()?,
                max: r.u32()?,
            },
            7 => {
                let stream = r.str()?;
                let n = r.count(5)?;
                let mut done = Vec::with_capacity(n.min(PREALLOCATED));
                for _ in 0..n {
                    let id = r.str()?;
                    let forward = if r.bool()? {
                        Some(read_forward(&mut r)?)
                    } else {
                        None
                    };
                    done.push(Completion { id, forward });
                }
                let then = if r.bool()? {
                    Some(ThenRead {
                        consumer: r.str()?,
                        max: r.u32()?,
                    })
                } else {
                    None
                };
                Call::CompleteAll { stream, done, then }
            }
            8 => {
                let n = r.count(4)?;
                let mut streams = Vec::with_capacity(n.min(PREALLOCATED));
                for _ in 0..n {
                    streams.push(r.str()?);
                }
                Call::Append {
                    streams,
                    entry: r.entry()?,
                }
            }
            9 => Call::Depth { stream: r.str()? },
            10 => Call::Pending { stream: r.str()? },
            _ => return Err(Malformed("unknown call")),
        };
        r.end()?;
        Ok((id, call))
    }
}

impl Answer {
    /// `id` followed by the answer.
    pub fn encode(&self, id: u64) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(id);
        match self {
            Answer::Done => w.u8(1),
            Answer::Id(s) => w.u8(2).str(s),
            Answer::Deliveries(ds) => {
                w.u8(3);
                write_deliveries(&mut w, ds)
            }
            Answer::Ids(ids) => {
                w.u8(4).count(ids.len());
                for id in ids {
                    w.str(id);
                }
                &mut w
            }
            Answer::Flags(fs) => {
                w.u8(5);
                write_flags(&mut w, fs)
            }
            Answer::Count(n) => w.u8(6).u64(*n),
            Answer::Depth(d) => w.u8(7).u64(d.entries).u64(d.bytes),
            // Tag 8 is retired (the replay guard's answers, before the
            // guard moved into the hub).
            Answer::Failed(why) => w.u8(9).str(why),
            Answer::Handed { flags, deliveries } => {
                w.u8(10);
                write_flags(&mut w, flags);
                write_deliveries(&mut w, deliveries)
            }
        };
        w.buf
    }

    /// The call id and the answer.
    ///
    /// # Errors
    /// [`Malformed`] naming what is wrong.
    pub fn decode(buf: &[u8]) -> Decoded<(u64, Answer)> {
        let mut r = Reader::new(buf);
        let id = r.u64()?;
        let answer = match r.u8()? {
            1 => Answer::Done,
            2 => Answer::Id(r.str()?),
            3 => Answer::Deliveries(read_deliveries(&mut r)?),
            4 => {
                let n = r.count(4)?;
                let mut ids = Vec::with_capacity(n.min(PREALLOCATED));
                for _ in 0..n {
                    ids.push(r.str()?);
                }
                Answer::Ids(ids)
            }
            5 => Answer::Flags(read_flags(&mut r)?),
            6 => Answer::Count(r.u64()?),
            7 => Answer::Depth(Depth {
                entries: r.u64()?,
                bytes: r.u64()?,
            }),
            9 => Answer::Failed(r.str()?),
            10 => Answer::Handed {
                flags: read_flags(&mut r)?,
                deliveries: read_deliveries(&mut r)?,
            },
            _ => return Err(Malformed("unknown answer")),
        };
        r.end()?;
        Ok((id, answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(m: &str) -> StreamEntry {
        StreamEntry {
            v: bytes::Bytes::from_static(b"1"),
            k: bytes::Bytes::from_static(b"kid"),
            m: bytes::Bytes::copy_from_slice(m.as_bytes()),
            s: bytes::Bytes::from_static(&[0xff, 0, 7]),
            note: bytes::Bytes::new(),
        }
    }

    fn calls() -> Vec<Call> {
        let f = Forward {
            stream: "r:1".into(),
            entry: entry("{}"),
            must_exist: true,
            copy_to: Some("r:2".into()),
        };
        vec![
            Call::EnsureGroup { stream: "q".into() },
            Call::Push {
                stream: "q".into(),
                entry: entry("a"),
            },
            Call::PushCapped {
                stream: "dlq".into(),
                // A dead letter carries a note.
                entry: StreamEntry {
                    note: bytes::Bytes::from_static(br#"{"group":"io"}"#),
                    ..entry("b")
                },
                max_len: 10,
            },
            Call::Read {
                stream: "q".into(),
                consumer: "c".into(),
                max: 64,
                block: Duration::from_millis(1500),
            },
            Call::Renew {
                stream: "q".into(),
                consumer: "c".into(),
                held: vec![
                    ("0-1".into(), Duration::from_millis(3)),
                    ("0-2".into(), Duration::ZERO),
                ],
                lease: Duration::from_secs(30),
            },
            Call::Reclaim {
                stream: "q".into(),
                consumer: "c".into(),
                min_idle: Duration::from_secs(30),
                max: 3,
            },
            Call::CompleteAll {
                stream: "q".into(),
                done: vec![
                    Completion {
                        id: "0-1".into(),
                        forward: Some(f.clone()),
                    },
                    Completion {
                        id: "0-2".into(),
                        forward: Some(Forward {
                            copy_to: None,
                            must_exist: false,
                            ..f
                        }),
                    },
                    Completion {
                        id: "0-3".into(),
                        forward: None,
                    },
                ],
                then: None,
            },
            Call::CompleteAll {
                stream: "q".into(),
                done: vec![Completion {
                    id: "0-4".into(),
                    forward: None,
                }],
                then: Some(ThenRead {
                    consumer: "c".into(),
                    max: 1,
                }),
            },
            Call::Append {
                streams: vec!["a".into(), "b".into()],
                entry: entry("c"),
            },
            Call::Depth { stream: "q".into() },
            Call::Pending { stream: "q".into() },
        ]
    }

    fn answers() -> Vec<Answer> {
        vec![
            Answer::Done,
            Answer::Id("0-9".into()),
            Answer::Deliveries(vec![Delivery {
                id: "0-1".into(),
                entry: entry("x"),
                deliveries: 2,
            }]),
            Answer::Ids(vec!["0-1".into(), "0-2".into()]),
            Answer::Flags(vec![true, false]),
            Answer::Count(7),
            Answer::Depth(Depth {
                entries: 3,
                bytes: 900,
            }),
            Answer::Failed("backend unavailable".into()),
            Answer::Handed {
                flags: vec![true],
                deliveries: vec![Delivery {
                    id: "0-5".into(),
                    entry: entry("y"),
                    deliveries: 1,
                }],
            },
            Answer::Handed {
                flags: vec![false, true],
                deliveries: vec![],
            },
        ]
    }

    #[test]
    fn every_call_and_answer_decodes_to_itself() {
        for (i, c) in calls().into_iter().enumerate() {
            assert_eq!(Call::decode(&c.encode(i as u64)), Ok((i as u64, c)));
        }
        for (i, a) in answers().into_iter().enumerate() {
            assert_eq!(Answer::decode(&a.encode(i as u64)), Ok((i as u64, a)));
        }
    }

    #[test]
    fn every_cut_and_every_trailing_byte_is_refused() {
        for c in calls() {
            let full = c.encode(1);
            for n in 0..full.len() {
                assert!(Call::decode(&full[..n]).is_err(), "{c:?} cut at {n}");
            }
            let mut longer = full.clone();
            longer.push(0);
            assert_eq!(Call::decode(&longer), Err(Malformed("trailing bytes")));
        }
        for a in answers() {
            let full = a.encode(1);
            for n in 0..full.len() {
                assert!(Answer::decode(&full[..n]).is_err(), "{a:?} cut at {n}");
            }
        }
    }

    #[test]
    fn a_count_no_frame_can_hold_is_refused_before_allocating() {
        let mut w = Writer::default();
        w.u64(1).u8(8).u32(u32::MAX);
        assert_eq!(
            Call::decode(&w.buf),
            Err(Malformed("a count runs past the frame"))
        );
        let mut w = Writer::default();
        w.u64(1).u8(3).u32(1 << 30);
        assert_eq!(
            Answer::decode(&w.buf),
            Err(Malformed("a count runs past the frame"))
        );
        let mut w = Writer::default();
        w.u64(1).u8(1).u32(u32::MAX);
        assert_eq!(
            Call::decode(&w.buf),
            Err(Malformed("a length runs past the frame"))
        );
    }

    #[test]
    fn unknown_tags_and_bad_flags_are_refused() {
        let mut w = Writer::default();
        w.u64(1).u8(200);
        assert_eq!(Call::decode(&w.buf), Err(Malformed("unknown call")));
        assert_eq!(Answer::decode(&w.buf), Err(Malformed("unknown answer")));
        let mut w = Writer::default();
        w.u64(1).u8(5).u32(1).u8(2);
        assert_eq!(
            Answer::decode(&w.buf),
            Err(Malformed("a flag is neither 0 nor 1"))
        );
        let mut w = Writer::default();
        w.u64(1).u8(1).bytes(&[0xff, 0xfe]);
        assert_eq!(Call::decode(&w.buf), Err(Malformed("a text is not UTF-8")));
    }
}
