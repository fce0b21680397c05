//! The `ReplyChannel` port: one reply stream per ingress instance.
//!
//! ```text
//!   ingress: open ──EXISTS, then PEXPIRE or MULTI{XADD MAXLEN 0, PEXPIRE}──► sluice:{ns/p}:r:<id>
//!   worker:  complete ──XADD NOMKSTREAM──────────────────►      │
//!   ingress: recv ◄──XREAD BLOCK from last id──────────────────┘ then XDEL
//! ```
//!
//! Only the owning ingress creates its stream; workers write with
//! `NOMKSTREAM`, so the stream of a dead instance expires and is never
//! recreated. The adapter remembers the last id it returned per stream, so
//! an entry whose `XDEL` failed is still returned only once; one reader per
//! stream is assumed (the ingress's reply listener).

use std::time::Duration;

use async_trait::async_trait;
use fred::types::Value;

use super::backend::RedisBackend;
use super::wire;
use crate::backend::Result;
use crate::envelope::StreamEntry;
use crate::queue::ReplyChannel;

/// Where a first read of a stream starts: everything already in it.
const FROM_START: &str = "0";

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
        let cursor = self
            .reply_cursors
            .lock()
            .get(stream)
            .cloned()
            .unwrap_or_else(|| FROM_START.to_string());
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
        self.reply_cursors
            .lock()
            .insert(stream.to_string(), last.clone());
        let mut del = vec![Value::from(stream)];
        del.extend(got.iter().map(|(id, _)| Value::from(id.as_str())));
        if let Err(e) = self.call("XDEL", stream, del).await {
            // The entries are returned anyway (the cursor is past them); the
            // leftovers go when the stream expires.
            tracing::warn!(stream, error = %self.err(e), "could not delete read replies");
        }
        Ok(got
            .into_iter()
            .filter_map(|(id, e)| e.map(|e| (id, e)))
            .collect())
    }

    async fn close(&self, stream: &str) -> Result<()> {
        self.reply_cursors.lock().remove(stream);
        self.call("DEL", stream, vec![Value::from(stream)])
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}
