//! The `Queue` port on Redis Streams with the consumer group `sluice`.
//!
//! ```text
//!   push ──XADD──► stream ──XREADGROUP >──► consumer (pending, count 1)
//!                                              │ renew: XCLAIM <min-idle> … JUSTID (idle 0,
//!                                              │        count kept) of the ids still this consumer's
//!                                              │ lease lapsed: XAUTOCLAIM by another (count+1)
//!                                              ▼
//!   complete_all: MULTI  XADD next [NOMKSTREAM] (one per forward)  XACK ids…  XDEL ids…  EXEC
//! ```
//!
//! Groups are created from id `0`, so entries pushed before the group
//! existed are delivered too, and are created again whenever Redis answers
//! `NOGROUP` (after a restart without persistence).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use fred::types::Value;

use fred::error::Error as FredError;

use super::backend::{is_redis_answer, is_reply, RedisBackend};
use super::wire;
use crate::backend::{BackendError, Result};
use crate::envelope::StreamEntry;
use crate::keys::CONSUMER_GROUP;
use crate::queue::{Completion, Delivery, Depth, Held, Queue};

/// The most `XAUTOCLAIM` scans one reclaim makes, each going on where the
/// last ended, while it has claimed fewer entries than asked for.
const RECLAIM_SCANS: usize = 8;

/// The idle time a handed-back redelivery is given: beyond any lease (about
/// 31 years), so a lease changed meanwhile still reclaims it at once.
const LONG_IDLE_MS: i64 = 1_000_000_000_000;

fn v(s: &str) -> Value {
    Value::from(s)
}

fn n(x: usize) -> Value {
    Value::Integer(i64::try_from(x).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> Value {
    Value::Integer(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn xadd_args(stream: &str, entry: &StreamEntry, must_exist: bool) -> Vec<Value> {
    xadd_args_capped(stream, entry, must_exist, None)
}

/// `XADD` arguments; with `max_len`, an exact `MAXLEN` trim (used for rarely
/// written streams such as the dead letters, where exactness is cheap).
fn xadd_args_capped(
    stream: &str,
    entry: &StreamEntry,
    must_exist: bool,
    max_len: Option<u64>,
) -> Vec<Value> {
    let mut args = vec![v(stream)];
    if must_exist {
        args.push(v("NOMKSTREAM"));
    }
    if let Some(n) = max_len {
        args.push(v("MAXLEN"));
        args.push(v(n.to_string().as_str()));
    }
    args.push(v("*"));
    args.extend(wire::entry_args(entry));
    args
}

impl RedisBackend {
    /// `XREADGROUP` once; `Err` carries fred's error so `NOGROUP` can be told
    /// apart.
    async fn read_group(
        &self,
        stream: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> std::result::Result<Value, FredError> {
        let args = vec![
            v("GROUP"),
            v(CONSUMER_GROUP),
            v(consumer),
            v("COUNT"),
            n(max),
            v("STREAMS"),
            v(stream),
            v(">"),
        ];
        // BLOCK goes before STREAMS.
        self.blocking_read("XREADGROUP", stream, args, block, 5)
            .await
    }

    /// What a failed hand-off of `done`, entries of `stream`, applied,
    /// said as the error its caller acts on.
    ///
    /// - `EXECABORT`: Redis refused a command while it was queued and
    ///   discarded the whole transaction: [`BackendError::NotApplied`].
    /// - Any other error answered by Redis — a command failing inside
    ///   `EXEC` (`WRONGTYPE` on a forward's key; an ACL changed since the
    ///   commands were queued), or a `MULTI` refused whose commands then
    ///   ran on their own and one failed: whether the entries are still
    ///   pending is read back. None is (their `XACK` ran):
    ///   [`BackendError::PartlyApplied`] — acknowledged and deleted while a
    ///   forward may be missing, so nothing redelivers them and the caller
    ///   must send its forwards again or keep the entries. One still is:
    ///   the acknowledgement did not run, and the entries wait for their
    ///   lease as after any failure ([`BackendError::NotApplied`]: sending
    ///   the hand-off again repeats at most forwards that already landed,
    ///   which their receivers' replay guard refuses).
    /// - The client's own failure (a timeout, a lost connection, or a
    ///   read-back that failed): maybe applied; said as it is.
    async fn failed_hand_off(
        &self,
        stream: &str,
        done: &[Completion],
        e: FredError,
    ) -> BackendError {
        if is_reply(&e, "EXECABORT") {
            return BackendError::NotApplied(self.err(e).to_string());
        }
        if !is_redis_answer(&e) {
            return self.err(e);
        }
        let why = self.err(e).to_string();
        // XPENDING rather than XRANGE: the managed worker users may run it.
        let cmds = done
            .iter()
            .map(|c| {
                let args = vec![v(stream), v(CONSUMER_GROUP), v(&c.id), v(&c.id), n(1)];
                ("XPENDING", stream, args)
            })
            .collect();
        let Ok(rows) = self.pipeline(cmds).await else {
            return BackendError::Unavailable(why);
        };
        let mut still_pending = false;
        for row in rows {
            match row {
                Ok(Value::Array(r)) => still_pending |= !r.is_empty(),
                _ => return BackendError::Unavailable(why),
            }
        }
        if still_pending {
            BackendError::NotApplied(why)
        } else {
            BackendError::PartlyApplied(format!(
                "{why}: the entries are acknowledged and deleted, a forward may be missing"
            ))
        }
    }
}

#[async_trait]
impl Queue for RedisBackend {
    async fn ensure_group(&self, stream: &str) -> Result<()> {
        let args = vec![
            v("CREATE"),
            v(stream),
            v(CONSUMER_GROUP),
            v("0"),
            v("MKSTREAM"),
        ];
        match self.call("XGROUP", stream, args).await {
            Ok(_) => Ok(()),
            Err(e) if is_reply(&e, "BUSYGROUP") => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn push(&self, stream: &str, entry: StreamEntry) -> Result<String> {
        let reply = self
            .call("XADD", stream, xadd_args(stream, &entry, false))
            .await
            .map_err(|e| self.err(e))?;
        wire::text(&reply).ok_or_else(|| {
            crate::BackendError::Unavailable("redis: XADD returned no id".to_string())
        })
    }

    async fn push_capped(&self, stream: &str, entry: StreamEntry, max_len: u64) -> Result<String> {
        let reply = self
            .call(
                "XADD",
                stream,
                xadd_args_capped(stream, &entry, false, Some(max_len)),
            )
            .await
            .map_err(|e| self.err(e))?;
        wire::text(&reply).ok_or_else(|| {
            crate::BackendError::Unavailable("redis: XADD returned no id".to_string())
        })
    }

    async fn read(
        &self,
        stream: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(vec![]);
        }
        let reply = match self.read_group(stream, consumer, max, block).await {
            Ok(r) => r,
            Err(e) if is_reply(&e, "NOGROUP") => {
                // Stream or group gone (Redis restarted without persistence,
                // or nobody created it yet): create it and read again.
                tracing::info!(stream, "consumer group missing; creating it");
                self.ensure_group(stream).await?;
                self.read_group(stream, consumer, max, block)
                    .await
                    .map_err(|e| self.err(e))?
            }
            Err(e) => return Err(self.err(e)),
        };
        Ok(wire::read_reply(reply, "XREADGROUP")?
            .into_iter()
            .filter_map(|(id, entry)| {
                entry.map(|entry| Delivery {
                    id,
                    entry,
                    deliveries: 1,
                })
            })
            .collect())
    }

    /// `XCLAIM` cannot ask "still mine?", and a script that could would
    /// need `EVAL`, which lets whoever holds the password run any Lua,
    /// an endless loop included. Instead each entry is claimed with a
    /// minimum idle time: the time since the consumer last learned it was
    /// its own, less half a lease. Still this consumer's, the entry has
    /// been idle at least that time (Redis reset its idle time before that
    /// answer left), so it is claimed even if a renewal that timed out
    /// reached Redis up to half a lease late or the clocks drift that much.
    /// Taken by another consumer, it was reclaimed only after a whole lease
    /// idle, so it has been idle a whole lease less: `XCLAIM` skips it and
    /// it is reported lost, unless the round trip took half a lease.
    /// Completed, it is not pending and is reported lost too. A
    /// misjudgement (a step of Redis's wall clock by half a lease) runs an
    /// entry twice: at-least-once, never lost.
    async fn renew(
        &self,
        stream: &str,
        consumer: &str,
        held: &[Held],
        lease: Duration,
    ) -> Result<Vec<String>> {
        if held.is_empty() {
            return Ok(vec![]);
        }
        let now = std::time::Instant::now();
        // One XCLAIM per distinct bound, in one round trip; entries read
        // together share one.
        let mut by_idle: BTreeMap<u128, Vec<&str>> = BTreeMap::new();
        for h in held {
            let idle = now
                .saturating_duration_since(h.since)
                .saturating_sub(lease / 2);
            by_idle.entry(idle.as_millis()).or_default().push(&h.id);
        }
        let cmds = by_idle
            .iter()
            .map(|(idle, ids)| {
                let mut args = vec![
                    v(stream),
                    v(CONSUMER_GROUP),
                    v(consumer),
                    Value::Integer(i64::try_from(*idle).unwrap_or(i64::MAX)),
                ];
                args.extend(ids.iter().map(|id| v(id)));
                args.push(v("JUSTID"));
                ("XCLAIM", stream, args)
            })
            .collect();
        let mut renewed = HashSet::new();
        for reply in self.pipeline(cmds).await.map_err(|e| self.err(e))? {
            match reply {
                Ok(ids) => renewed.extend(wire::texts(&ids)),
                // No group means no pending entries: nothing left to hold.
                Err(e) if is_reply(&e, "NOGROUP") => {}
                Err(e) => return Err(self.err(e)),
            }
        }
        Ok(held
            .iter()
            .filter(|h| !renewed.contains(&h.id))
            .map(|h| h.id.clone())
            .collect())
    }

    async fn hand_back(
        &self,
        stream: &str,
        consumer: &str,
        d: &Delivery,
        entry: &StreamEntry,
        since: std::time::Instant,
        lease: Duration,
    ) -> Result<bool> {
        if since.elapsed() >= lease / 2 {
            return Ok(false);
        }
        if d.deliveries <= 1 {
            let back = Completion::hand_back(&d.id, stream, entry.clone());
            return Ok(self.complete_all(stream, &[back]).await?.first() == Some(&true));
        }
        // Only while still this consumer's (the bound `renew` uses), made
        // idle beyond any lease, so any consumer's next reclaim takes it.
        let min_idle = since.elapsed().saturating_sub(lease / 2);
        let args = vec![
            v(stream),
            v(CONSUMER_GROUP),
            v(consumer),
            ms(min_idle),
            v(&d.id),
            v("IDLE"),
            Value::Integer(LONG_IDLE_MS),
            v("RETRYCOUNT"),
            Value::Integer(i64::from(d.deliveries.saturating_sub(1))),
            v("JUSTID"),
        ];
        // The next reclaim scans from the start, where the entry may sit
        // behind the cursor.
        self.reclaim_cursors.lock().remove(stream);
        match self.call("XCLAIM", stream, args).await {
            Ok(ids) => Ok(wire::texts(&ids).contains(&d.id)),
            Err(e) if is_reply(&e, "NOGROUP") => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn delete(&self, stream: &str, ids: &[String]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut args = vec![v(stream)];
        args.extend(ids.iter().map(|id| v(id)));
        let n = self
            .call("XDEL", stream, args)
            .await
            .map_err(|e| self.err(e))?;
        wire::integer(&n, "XDEL")
    }

    async fn reclaim(
        &self,
        stream: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(vec![]);
        }
        // One scan looks at no more than ten entries per one asked for:
        // each picks up where the last ended, so lapsed entries behind a
        // long pending list of held ones are reached in turn, a few scans
        // at a time (never more than [`RECLAIM_SCANS`] per call).
        let mut claimed = vec![];
        for _ in 0..RECLAIM_SCANS {
            let start = self
                .reclaim_cursors
                .lock()
                .get(stream)
                .cloned()
                .unwrap_or_else(|| "0-0".into());
            let args = vec![
                v(stream),
                v(CONSUMER_GROUP),
                v(consumer),
                ms(min_idle),
                v(&start),
                v("COUNT"),
                n(max - claimed.len()),
            ];
            let reply = match self.call("XAUTOCLAIM", stream, args).await {
                Ok(r) => r,
                // What earlier scans claimed is this consumer's now: it is
                // handed out rather than left to wait a lease.
                Err(_) if !claimed.is_empty() => break,
                Err(e) if is_reply(&e, "NOGROUP") => return Ok(vec![]),
                Err(e) => return Err(self.err(e)),
            };
            // Redis 7 drops deleted entries from the pending list itself and
            // lists them apart; older servers return them as nil entries that
            // stay pending, so those are acknowledged below.
            let (cursor, got, _deleted) = wire::autoclaim_reply(reply)?;
            claimed.extend(got);
            let wrapped = cursor == "0-0";
            {
                let mut cursors = self.reclaim_cursors.lock();
                if wrapped {
                    cursors.remove(stream);
                } else {
                    cursors.insert(stream.to_string(), cursor);
                }
            }
            if wrapped || claimed.len() >= max {
                break;
            }
        }
        let (live, gone): (Vec<_>, Vec<_>) = claimed.into_iter().partition(|(_, e)| e.is_some());
        if !gone.is_empty() {
            let mut args = vec![v(stream), v(CONSUMER_GROUP)];
            args.extend(gone.iter().map(|(id, _)| v(id)));
            self.call("XACK", stream, args)
                .await
                .map_err(|e| self.err(e))?;
        }
        if live.is_empty() {
            return Ok(vec![]);
        }
        // XAUTOCLAIM increased each count but does not report it: read the
        // counts back, one XPENDING row per id, in one round trip.
        let cmds = live
            .iter()
            .map(|(id, _)| {
                let args = vec![v(stream), v(CONSUMER_GROUP), v(id), v(id), n(1)];
                ("XPENDING", stream, args)
            })
            .collect();
        let counts = self.pipeline(cmds).await.map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(live.len());
        for ((id, entry), count) in live.into_iter().zip(counts) {
            let count = count.map_err(|e| self.err(e))?;
            // No row: completed by its previous holder in the meantime.
            if let (Some(entry), Some(deliveries)) = (entry, wire::pending_count(count)?) {
                out.push(Delivery {
                    id,
                    entry,
                    deliveries,
                });
            }
        }
        Ok(out)
    }

    async fn complete_all(&self, stream: &str, done: &[Completion]) -> Result<Vec<bool>> {
        if done.is_empty() {
            return Ok(vec![]);
        }
        let mut cmds = Vec::with_capacity(done.len() + 2);
        let mut ack = vec![v(stream), v(CONSUMER_GROUP)];
        let mut del = vec![v(stream)];
        for c in done {
            if let Some(f) = &c.forward {
                let args = xadd_args(&f.stream, &f.entry, f.must_exist);
                cmds.push(("XADD", f.stream.as_str(), args));
                if let Some(copy) = &f.copy_to {
                    cmds.push(("XADD", copy.as_str(), xadd_args(copy, &f.entry, true)));
                }
            }
            ack.push(v(&c.id));
            del.push(v(&c.id));
        }
        cmds.push(("XACK", stream, ack));
        cmds.push(("XDEL", stream, del));
        let results = match self.transaction(cmds).await {
            Ok(results) => results,
            Err(e) => return Err(self.failed_hand_off(stream, done, e).await),
        };
        // One XADD answer per forward (then one per copy), in order; a
        // NOMKSTREAM XADD to a missing stream answers nil.
        let mut added = results.iter();
        Ok(done
            .iter()
            .map(|c| match &c.forward {
                None => true,
                Some(f) => {
                    let kept = added.next().is_some_and(|r| !r.is_null());
                    if f.copy_to.is_some() {
                        added.next();
                    }
                    kept
                }
            })
            .collect())
    }

    async fn append(&self, streams: &[&str], entry: &StreamEntry) -> Result<usize> {
        if streams.is_empty() {
            return Ok(0);
        }
        let cmds = streams
            .iter()
            .map(|s| ("XADD", *s, xadd_args(s, entry, true)))
            .collect();
        let mut appended = 0;
        for r in self.pipeline(cmds).await.map_err(|e| self.err(e))? {
            let r = r.map_err(|e| self.err(e))?;
            if !r.is_null() {
                appended += 1;
            }
        }
        Ok(appended)
    }

    async fn depth(&self, stream: &str) -> Result<Depth> {
        // MEMORY USAGE samples a few listpack nodes (default 5) and
        // extrapolates, so it costs O(1) and counts the stream's own
        // bookkeeping too: an over-estimate of the entries' bytes, which is
        // what a backlog limit wants. Space of deleted entries is counted
        // until their node empties.
        let cmds = vec![
            ("XLEN", stream, vec![v(stream)]),
            ("MEMORY", stream, vec![v("USAGE"), v(stream)]),
        ];
        let mut replies = self
            .pipeline(cmds)
            .await
            .map_err(|e| self.err(e))?
            .into_iter();
        let mut next = |what| -> Result<u64> {
            let r = replies
                .next()
                .ok_or_else(|| {
                    crate::BackendError::Unavailable(format!("redis: no reply to {what}"))
                })?
                .map_err(|e| self.err(e))?;
            wire::integer(&r, what)
        };
        let entries = next("XLEN")?;
        let bytes = next("MEMORY USAGE")?;
        Ok(Depth { entries, bytes })
    }

    async fn pending(&self, stream: &str) -> Result<u64> {
        match self
            .call("XPENDING", stream, vec![v(stream), v(CONSUMER_GROUP)])
            .await
        {
            Ok(r) => wire::pending_total(r),
            Err(e) if is_reply(&e, "NOGROUP") => Ok(0),
            Err(e) => Err(self.err(e)),
        }
    }
}
