//! The `ReplyChannel` port: one reply stream per ingress instance.
//!
//! ```text
//!   ingress: open ──EXISTS, then PEXPIRE or MULTI{XADD MAXLEN 0, PEXPIRE}──► sluice:{ns/p}:r:<id>
//!   worker:  complete ──XADD NOMKSTREAM──────────────────►      │
//!   ingress: recv ◄──XREAD BLOCK from last id──────────────────┘
//!   ingress: peek ◄──MULTI{EXISTS, XREAD from 0}: an asynchronous answer, left in place
//!            every 256 replies or 1 MiB read, or 500 ms after one: XTRIM MINID past the last one read
//! ```
//!
//! Only the owning ingress creates its stream; workers write with
//! `NOMKSTREAM`, so the stream of a dead instance expires and is never
//! recreated. The adapter remembers the last id it returned per stream, so
//! every entry is returned once, and trims what it has read in one command
//! per [`TRIM_EVERY`] replies instead of deleting each batch. The check runs
//! when a read starts, so the stream holds at most that many read replies
//! (or [`TRIM_BYTES`] of them plus the last batch read), or those read in
//! the last [`TRIM_AFTER`] plus one blocking read. One reader per stream is
//! assumed (the ingress's reply listener).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::types::Value;

use super::backend::RedisBackend;
use super::cursor::ReplyCursor;
use super::wire;
use crate::backend::Result;
use crate::envelope::StreamEntry;
use crate::queue::ReplyChannel;

/// Where a first read of a stream starts: everything already in it.
const FROM_START: &str = "0";

/// Read replies are trimmed once this many wait…
const TRIM_EVERY: usize = 256;
/// …or this many bytes of them (replies may be up to the payload limit)…
const TRIM_BYTES: usize = 1 << 20;
/// …or once the oldest of them has waited this long.
const TRIM_AFTER: Duration = Duration::from_millis(500);

/// The smallest stream id above `id` (`<ms>-<seq>`), so `XTRIM MINID` of it
/// removes `id` too; `id` itself if it does not parse or has no successor.
fn successor(id: &str) -> String {
    let next = id.split_once('-').and_then(|(ms, seq)| {
        let (ms, seq) = (ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?);
        match seq.checked_add(1) {
            Some(seq) => Some(format!("{ms}-{seq}")),
            None => Some(format!("{}-0", ms.checked_add(1)?)),
        }
    });
    next.unwrap_or_else(|| id.to_string())
}

impl RedisBackend {
    /// Trims `stream` past its last returned entry when enough replies
    /// wait or the oldest has waited long enough; a failure is logged and
    /// the trim tried again on the next read.
    async fn trim_replies(&self, stream: &str) {
        let minid = {
            let cursors = self.reply_cursors.lock();
            match cursors.get(stream) {
                Some(c)
                    if c.untrimmed > 0
                        && (c.untrimmed >= TRIM_EVERY
                            || c.untrimmed_bytes >= TRIM_BYTES
                            || c.since.elapsed() >= TRIM_AFTER) =>
                {
                    successor(&c.last)
                }
                _ => return,
            }
        };
        let args = vec![
            Value::from(stream),
            Value::from("MINID"),
            Value::from(minid),
        ];
        match self.call("XTRIM", stream, args).await {
            Ok(_) => {
                if let Some(c) = self.reply_cursors.lock().get_mut(stream) {
                    c.untrimmed = 0;
                    c.untrimmed_bytes = 0;
                }
            }
            // The leftovers go with a later trim or when the stream expires.
            Err(e) => tracing::warn!(stream, error = %self.err(e), "could not trim read replies"),
        }
    }
}

#[async_trait]
impl ReplyChannel for RedisBackend {
    /// Creates the stream when absent, without touching entries already
    /// there, and sets its expiry. No script: the ingress's Redis user has
    /// no `EVAL` (a script that never ends would stop Redis for everyone).
    /// Creating is one `MULTI` of `XADD … MAXLEN 0` (the one command that
    /// leaves an existing-but-empty stream behind) and `PEXPIRE`, so a
    /// stream never exists without a TTL; it runs only when `EXISTS` said
    /// the stream is absent, since on a live stream `MAXLEN 0` would trim
    /// unread replies. Nobody else creates this stream (workers write with
    /// `NOMKSTREAM`), so nothing can slip in between; a stream that expires
    /// between `EXISTS` and `PEXPIRE` is created on the second round.
    async fn open(&self, stream: &str, ttl: Duration) -> Result<()> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let pexpire = || vec![Value::from(stream), Value::Integer(ttl_ms)];
        for _ in 0..2 {
            let exists = self
                .call("EXISTS", stream, vec![Value::from(stream)])
                .await
                .map_err(|e| self.err(e))?;
            if wire::integer(&exists, "EXISTS")? > 0 {
                let renewed = self
                    .call("PEXPIRE", stream, pexpire())
                    .await
                    .map_err(|e| self.err(e))?;
                if wire::integer(&renewed, "PEXPIRE")? > 0 {
                    return Ok(());
                }
                continue;
            }
            let create = vec![
                Value::from(stream),
                Value::from("MAXLEN"),
                Value::from("0"),
                Value::from("*"),
                Value::from("open"),
                Value::from("1"),
            ];
            self.transaction(vec![
                ("XADD", stream, create),
                ("PEXPIRE", stream, pexpire()),
            ])
            .await
            .map_err(|e| self.err(e))?;
            // A new stream (first open, or after it expired or Redis lost
            // it): its ids restart, so must the cursor.
            self.reply_cursors.lock().remove(stream);
            return Ok(());
        }
        Err(crate::backend::BackendError::Unavailable(format!(
            "reply stream {stream} expired twice while it was being opened"
        )))
    }

    async fn recv(
        &self,
        stream: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<(String, StreamEntry)>> {
        if max == 0 {
            return Ok(vec![]);
        }
        self.trim_replies(stream).await;
        let cursor = self
            .reply_cursors
            .lock()
            .get(stream)
            .map_or_else(|| FROM_START.to_string(), |c| c.last.clone());
        let args = vec![
            Value::from("COUNT"),
            Value::Integer(i64::try_from(max).unwrap_or(i64::MAX)),
            Value::from("STREAMS"),
            Value::from(stream),
            Value::from(cursor),
        ];
        // A missing (expired) stream is not recreated: XREAD just finds
        // nothing. BLOCK goes before STREAMS.
        let reply = self
            .blocking_read("XREAD", stream, args, block, 2)
            .await
            .map_err(|e| self.err(e))?;
        let got = wire::read_reply(reply, "XREAD")?;
        let Some((last, _)) = got.last() else {
            return Ok(vec![]);
        };
        {
            let mut cursors = self.reply_cursors.lock();
            let c = cursors
                .entry(stream.to_string())
                .or_insert_with(|| ReplyCursor {
                    last: String::new(),
                    untrimmed: 0,
                    untrimmed_bytes: 0,
                    since: Instant::now(),
                });
            c.last.clone_from(last);
            if c.untrimmed == 0 {
                c.since = Instant::now();
            }
            c.untrimmed = c.untrimmed.saturating_add(got.len());
            let bytes: usize = got
                .iter()
                .filter_map(|(_, e)| e.as_ref().map(StreamEntry::stored_len))
                .sum();
            c.untrimmed_bytes = c.untrimmed_bytes.saturating_add(bytes);
        }
        Ok(got
            .into_iter()
            .filter_map(|(id, e)| e.map(|e| (id, e)))
            .collect())
    }

    /// `EXISTS` and `XREAD … STREAMS <stream> 0` in one transaction (an
    /// absent stream and an empty one read the same).
    async fn read_after(
        &self,
        stream: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Option<Vec<(String, StreamEntry)>>> {
        let read = vec![
            Value::from("COUNT"),
            Value::Integer(i64::try_from(max.max(1)).unwrap_or(i64::MAX)),
            Value::from("STREAMS"),
            Value::from(stream),
            Value::from(after.unwrap_or(FROM_START)),
        ];
        let mut results = self
            .transaction(vec![
                ("EXISTS", stream, vec![Value::from(stream)]),
                ("XREAD", stream, read),
            ])
            .await
            .map_err(|e| self.err(e))?
            .into_iter();
        let exists = wire::integer(&results.next().unwrap_or(Value::Null), "EXISTS")?;
        if exists == 0 {
            return Ok(None);
        }
        let got = wire::read_reply(results.next().unwrap_or(Value::Null), "XREAD")?;
        Ok(Some(
            got.into_iter()
                .filter_map(|(id, e)| e.map(|e| (id, e)))
                .take(max)
                .collect(),
        ))
    }

    /// `XREVRANGE <stream> + - COUNT 1`: the newest entry, of which only
    /// the id is kept.
    async fn last_id(&self, stream: &str) -> Result<Option<String>> {
        let args = vec![
            Value::from(stream),
            Value::from("+"),
            Value::from("-"),
            Value::from("COUNT"),
            Value::from("1"),
        ];
        let reply = self
            .call("XREVRANGE", stream, args)
            .await
            .map_err(|e| self.err(e))?;
        Ok(match reply {
            Value::Array(entries) => entries.into_iter().next().and_then(|e| match e {
                Value::Array(parts) => parts.into_iter().next().as_ref().and_then(wire::text),
                _ => None,
            }),
            _ => None,
        })
    }

    async fn close(&self, stream: &str) -> Result<()> {
        self.reply_cursors.lock().remove(stream);
        self.call("DEL", stream, vec![Value::from(stream)])
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::successor;

    #[test]
    fn the_successor_of_an_id_is_the_next_sequence_or_millisecond() {
        assert_eq!(successor("1700000000000-0"), "1700000000000-1");
        assert_eq!(successor("5-41"), "5-42");
        assert_eq!(successor(&format!("5-{}", u64::MAX)), "6-0");
        assert_eq!(
            successor(&format!("{}-{}", u64::MAX, u64::MAX)),
            format!("{}-{}", u64::MAX, u64::MAX)
        );
        assert_eq!(successor("garbage"), "garbage");
    }
}
