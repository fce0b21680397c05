//! The events of a streamed answer: how they are written (Server-Sent
//! Events or NDJSON) and in which order chunks are let through.
//!
//! | event | `id` | `data` |
//! | --- | --- | --- |
//! | `start` | — | `{"id", "events"}`: the stream's id and where to resume it |
//! | `chunk` | `<attempt>.<seq>` | the chunk, as the node emitted it |
//! | `reset` | — | `{"attempt"}`: a new delivery of the node starts over; discard the chunks so far |
//! | `result` | — | the answer (the terminal node's output) |
//! | `error` | — | `{"error": {code, message, status, request_id}}` |
//!
//! As SSE: `id:` (when there is one), `event:` and one `data:` line, then a
//! blank line; a comment line every 15 s keeps idle connections open. As
//! NDJSON (`Accept: application/x-ndjson`): one object per line,
//! `{"event", "id"?, "data"}`.

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{json, Value};

/// How the events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Sse,
    Ndjson,
}

impl Format {
    /// NDJSON when the caller's `Accept` names `application/x-ndjson`
    /// (or `application/jsonl`) and not `text/event-stream`; SSE otherwise.
    pub fn of(headers: &HeaderMap) -> Self {
        let accept: Vec<String> = headers
            .get_all("accept")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .collect();
        let named = |t: &str| accept.iter().any(|a| a == t);
        if !named("text/event-stream")
            && (named("application/x-ndjson") || named("application/jsonl"))
        {
            Format::Ndjson
        } else {
            Format::Sse
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Sse => "text/event-stream",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    /// One event, ready to write.
    pub fn event(self, name: &str, id: Option<&str>, data: &Value) -> Bytes {
        match self {
            Format::Sse => {
                let mut out = String::new();
                if let Some(id) = id {
                    out.push_str("id: ");
                    out.push_str(id);
                    out.push('\n');
                }
                out.push_str("event: ");
                out.push_str(name);
                // serde_json writes no raw line breaks: one data line.
                out.push_str("\ndata: ");
                out.push_str(&data.to_string());
                out.push_str("\n\n");
                Bytes::from(out)
            }
            Format::Ndjson => {
                let line = match id {
                    Some(id) => json!({"event": name, "id": id, "data": data}),
                    None => json!({"event": name, "data": data}),
                };
                let mut out = line.to_string();
                out.push('\n');
                Bytes::from(out)
            }
        }
    }

    /// What keeps an idle connection open: an SSE comment; NDJSON has
    /// none, so an empty line (readers skip it).
    pub fn keep_alive(self) -> Bytes {
        match self {
            Format::Sse => Bytes::from_static(b": keep-alive\n\n"),
            Format::Ndjson => Bytes::from_static(b"\n"),
        }
    }
}

/// The id of chunk `seq` of delivery `attempt`.
pub fn chunk_id(attempt: u32, seq: u64) -> String {
    format!("{attempt}.{seq}")
}

/// Reads a `Last-Event-ID` this ingress wrote; `None` for anything else
/// (which resumes from the start).
pub fn parse_chunk_id(text: &str) -> Option<(u32, u64)> {
    let (a, s) = text.trim().split_once('.')?;
    let digits = |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(a) || !digits(s) {
        return None;
    }
    Some((a.parse().ok()?, s.parse().ok()?))
}

/// Which chunks of a streamed answer go to the caller, and when: in
/// sequence order, each once, and only from the newest delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The attempt whose chunks are being passed on (0: none yet).
    attempt: u32,
    /// The next chunk of it the caller needs.
    next: u64,
    /// Whether the caller holds chunks of an earlier attempt (or of this
    /// one), so a newer attempt must be announced with a reset.
    shown: bool,
}

/// What to do with one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Pass it on; `reset` first when it starts a new attempt after the
    /// caller saw chunks of an earlier one.
    Emit { reset: bool },
    /// Already passed on, or of an attempt superseded: drop it.
    Skip,
    /// Chunks before it have not come yet: fetch them from the store first
    /// (they were deferred), then offer this one again.
    Gap,
}

impl Default for Order {
    fn default() -> Self {
        Self::new()
    }
}

impl Order {
    /// From the start.
    pub fn new() -> Self {
        Self {
            attempt: 0,
            next: 1,
            shown: false,
        }
    }

    /// After the caller's `Last-Event-ID` (chunk `seq` of `attempt`).
    pub fn after(attempt: u32, seq: u64) -> Self {
        Self {
            attempt,
            next: seq.saturating_add(1),
            shown: true,
        }
    }

    /// Decides for chunk `seq` of `attempt`, and records it when emitted.
    pub fn chunk(&mut self, attempt: u32, seq: u64) -> Take {
        if attempt < self.attempt || seq == 0 {
            return Take::Skip;
        }
        let reset = attempt > self.attempt && self.shown;
        let next = if attempt > self.attempt { 1 } else { self.next };
        if seq < next {
            return Take::Skip;
        }
        if seq > next {
            return Take::Gap;
        }
        self.attempt = attempt;
        self.next = seq + 1;
        self.shown = true;
        Take::Emit { reset }
    }

    /// For the answer, sent by delivery `attempt` after `last_seq` chunks
    /// (`None`: not a streamed answer, or an error): whether chunks of it
    /// are missing (fetch them first), and whether a reset comes first
    /// (the caller holds chunks of an earlier attempt).
    pub fn answer(&self, attempt: u32, last_seq: Option<u64>) -> (bool, bool) {
        let Some(last) = last_seq else {
            return (false, false);
        };
        if attempt < self.attempt {
            // An answer from a superseded delivery: the newest one's chunks
            // were shown; the answer stands on its own.
            return (false, false);
        }
        if attempt > self.attempt {
            return (last > 0, self.shown && last == 0);
        }
        (self.next <= last, false)
    }

    /// The caller's position: the attempt and the last chunk shown.
    #[cfg(test)]
    fn position(&self) -> (u32, u64) {
        (self.attempt, self.next.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn chunks_pass_in_order_once_each() {
        let mut o = Order::new();
        assert_eq!(o.chunk(1, 1), Take::Emit { reset: false });
        assert_eq!(o.chunk(1, 1), Take::Skip, "a duplicate");
        assert_eq!(o.chunk(1, 3), Take::Gap, "2 has not come");
        assert_eq!(o.chunk(1, 2), Take::Emit { reset: false });
        assert_eq!(o.chunk(1, 3), Take::Emit { reset: false });
        assert_eq!(o.chunk(1, 0), Take::Skip);
        assert_eq!(o.position(), (1, 3));
    }

    #[test]
    fn a_new_attempt_resets_only_a_caller_that_saw_chunks() {
        let mut o = Order::new();
        assert_eq!(
            o.chunk(2, 1),
            Take::Emit { reset: false },
            "attempt 1 showed nothing"
        );
        assert_eq!(o.chunk(1, 2), Take::Skip, "superseded attempt");
        assert_eq!(o.chunk(3, 2), Take::Gap, "attempt 3 starts at 1");
        assert_eq!(o.chunk(3, 1), Take::Emit { reset: true });
        assert_eq!(o.chunk(3, 2), Take::Emit { reset: false });
    }

    #[test]
    fn resuming_skips_what_the_caller_has() {
        let mut o = Order::after(1, 2);
        assert_eq!(o.chunk(1, 1), Take::Skip);
        assert_eq!(o.chunk(1, 2), Take::Skip);
        assert_eq!(o.chunk(1, 3), Take::Emit { reset: false });
        let mut o = Order::after(1, 2);
        assert_eq!(
            o.chunk(2, 1),
            Take::Emit { reset: true },
            "the caller's chunks were of attempt 1"
        );
    }

    #[test]
    fn the_answer_says_what_is_missing_and_whether_to_reset() {
        let mut o = Order::new();
        assert_eq!(o.answer(1, None), (false, false));
        assert_eq!(o.answer(1, Some(0)), (false, false));
        assert_eq!(o.answer(1, Some(2)), (true, false), "chunks 1-2 missing");
        o.chunk(1, 1);
        o.chunk(1, 2);
        assert_eq!(o.answer(1, Some(2)), (false, false));
        assert_eq!(o.answer(2, Some(1)), (true, false), "attempt 2's chunk");
        assert_eq!(
            o.answer(2, Some(0)),
            (false, true),
            "attempt 2 sent none: reset"
        );
        assert_eq!(o.answer(1, Some(9)), (true, false), "7 chunks to come");
        assert_eq!(o.chunk(2, 1), Take::Emit { reset: true });
        assert_eq!(o.answer(1, Some(9)), (false, false), "a superseded attempt");
    }

    #[test]
    fn chunk_ids_read_back_and_nothing_else_does() {
        assert_eq!(parse_chunk_id(&chunk_id(2, 17)), Some((2, 17)));
        assert_eq!(parse_chunk_id(" 1.3 "), Some((1, 3)));
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "a.1",
            "1.-1",
            "1.2.3",
            "99999999999.1",
            "1.1e3",
        ] {
            assert_eq!(parse_chunk_id(bad), None, "{bad:?}");
        }
        assert_eq!(parse_chunk_id(&format!("1.{}", "9".repeat(30))), None);
    }

    #[test]
    fn events_are_written_in_each_format() {
        let data = json!({"text": "a\nb"});
        assert_eq!(
            Format::Sse.event("chunk", Some("1.2"), &data),
            "id: 1.2\nevent: chunk\ndata: {\"text\":\"a\\nb\"}\n\n"
        );
        assert_eq!(
            Format::Sse.event("result", None, &json!(3)),
            "event: result\ndata: 3\n\n"
        );
        let line = Format::Ndjson.event("chunk", Some("1.2"), &data);
        assert!(line.ends_with(b"\n") && line.iter().filter(|b| **b == b'\n').count() == 1);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"event": "chunk", "id": "1.2", "data": {"text": "a\nb"}})
        );
    }

    #[test]
    fn the_format_follows_accept() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("accept", HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(Format::of(&HeaderMap::new()), Format::Sse);
        assert_eq!(Format::of(&with("text/event-stream")), Format::Sse);
        assert_eq!(Format::of(&with("application/x-ndjson")), Format::Ndjson);
        assert_eq!(
            Format::of(&with("application/json, Application/X-NDJSON;q=0.9")),
            Format::Ndjson
        );
        assert_eq!(
            Format::of(&with("application/x-ndjson, text/event-stream")),
            Format::Sse
        );
        assert_eq!(Format::of(&with("*/*")), Format::Sse);
    }
}
