//! The replay-guard budget of one ingress: how many nonces the requests it
//! admitted may still hold in Redis, and the refusal once they would exceed
//! the plan's budget ([`sluice_crds::replay_budget`]).
//!
//! A request admitted with deadline `d` may make the workers claim up to its
//! interface's `hops` nonces, each kept until `d + clockSkew`. The window
//! counts them in one-second buckets by the second they expire; a bucket
//! whose second has passed is subtracted once, so admission is O(1)
//! amortised and nothing here grows with traffic (one bucket per second of
//! the longest timeout plus skew).
//!
//! It counts what was admitted, not what Redis holds: a request that failed
//! before its entry was written, or whose path was shorter than the longest,
//! counts until its expiry all the same. That errs on the side of Redis.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Nonces outstanding per expiry second.
pub struct ReplayWindow {
    capacity: u64,
    /// How long after its deadline a nonce may live in Redis (clock skew
    /// plus a second for Redis's expiry to reach it).
    linger: Duration,
    start: Instant,
    inner: Mutex<Buckets>,
}

struct Buckets {
    /// `(expiry second, nonces)`, indexed by expiry second modulo length.
    ring: Vec<(u64, u64)>,
    total: u64,
    /// Every bucket of a second before this one has been subtracted.
    swept: u64,
}

/// Refused: the budget is spent until `retry_after` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub retry_after: Duration,
}

impl ReplayWindow {
    /// A window for `capacity` nonces, for requests whose deadlines are at
    /// most `max_timeout` away and whose nonces outlive them by `skew`.
    pub fn new(capacity: u64, max_timeout: Duration, skew: Duration) -> Self {
        let linger = skew.saturating_add(Duration::from_secs(1));
        let span = max_timeout
            .saturating_add(linger)
            .as_secs()
            .saturating_add(2);
        let len = usize::try_from(span)
            .unwrap_or(usize::MAX)
            .clamp(2, 1 << 20);
        Self {
            capacity,
            linger,
            start: Instant::now(),
            inner: Mutex::new(Buckets {
                ring: vec![(0, 0); len],
                total: 0,
                swept: 0,
            }),
        }
    }

    /// Counts `nonces` for a request whose deadline is `timeout` from now,
    /// or refuses when they would not fit.
    pub fn admit(&self, nonces: u64, timeout: Duration) -> Result<(), Spent> {
        let now = self.start.elapsed();
        let expires = now.saturating_add(timeout).saturating_add(self.linger);
        self.admit_at(now.as_secs(), expires.as_secs().saturating_add(1), nonces)
    }

    /// [`Self::admit`] at second `now`, for nonces gone by second `expires`.
    fn admit_at(&self, now: u64, expires: u64, nonces: u64) -> Result<(), Spent> {
        let mut b = self.inner.lock();
        b.sweep(now);
        let len = b.ring.len() as u64;
        // A deadline past the ring (never: the ring spans the longest
        // timeout) is counted in its last bucket, which expires sooner.
        let expires = expires.clamp(now + 1, now + len - 1);
        if b.total.saturating_add(nonces) > self.capacity {
            let retry_after = b.first_expiry(now).saturating_sub(now).max(1);
            return Err(Spent {
                retry_after: Duration::from_secs(retry_after),
            });
        }
        let slot = &mut b.ring[(expires % len) as usize];
        if slot.0 != expires {
            // Swept (or never used): a live bucket holds a second in
            // (now, now + len), and only `expires` maps here.
            *slot = (expires, 0);
        }
        slot.1 += nonces;
        b.total += nonces;
        Ok(())
    }

    /// Nonces counted now (for tests and metrics).
    pub fn outstanding(&self) -> u64 {
        let mut b = self.inner.lock();
        b.sweep(self.start.elapsed().as_secs());
        b.total
    }
}

impl Buckets {
    /// Subtracts every bucket whose second is at or before `now`.
    fn sweep(&mut self, now: u64) {
        let len = self.ring.len() as u64;
        if now.saturating_sub(self.swept) >= len {
            self.ring.iter_mut().for_each(|s| *s = (0, 0));
            self.total = 0;
            self.swept = now + 1;
            return;
        }
        while self.swept <= now {
            let s = self.swept;
            let slot = &mut self.ring[(s % len) as usize];
            if slot.0 == s {
                self.total -= slot.1;
                *slot = (0, 0);
            }
            self.swept += 1;
        }
    }

    /// The earliest second at which a counted bucket expires: the first
    /// live bucket after `now` (every earlier one was swept), found by
    /// walking forward and stopping there, not by scanning the ring.
    fn first_expiry(&self, now: u64) -> u64 {
        let len = self.ring.len() as u64;
        (now + 1..now + len)
            .find(|s| {
                let (sec, n) = self.ring[(s % len) as usize];
                sec == *s && n > 0
            })
            .unwrap_or(now + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(capacity: u64) -> ReplayWindow {
        ReplayWindow::new(capacity, Duration::from_secs(5), Duration::from_secs(2))
    }

    #[test]
    fn admits_up_to_the_capacity_then_refuses_until_the_first_bucket_expires() {
        let w = window(10);
        w.admit_at(0, 4, 6).unwrap();
        w.admit_at(1, 6, 4).unwrap();
        assert_eq!(
            w.admit_at(2, 7, 1),
            Err(Spent {
                retry_after: Duration::from_secs(2)
            })
        );
        // Second 4 has passed: its six nonces are gone from Redis.
        w.admit_at(4, 9, 6).unwrap();
        assert_eq!(w.inner.lock().total, 10);
        assert!(w.admit_at(5, 10, 1).is_err());
        w.admit_at(6, 11, 4).unwrap();
    }

    #[test]
    fn a_request_larger_than_the_budget_is_refused_even_when_idle() {
        let w = window(3);
        assert!(w.admit_at(0, 5, 4).is_err());
        w.admit_at(0, 5, 3).unwrap();
    }

    #[test]
    fn a_long_idle_gap_clears_everything_at_once() {
        let w = window(5);
        w.admit_at(0, 8, 5).unwrap();
        w.admit_at(1_000_000, 1_000_008, 5).unwrap();
        assert_eq!(w.inner.lock().total, 5);
    }

    #[test]
    fn the_total_is_the_sum_of_what_has_not_expired() {
        let w = window(u64::MAX);
        let len = w.inner.lock().ring.len() as u64;
        let mut live = std::collections::VecDeque::new();
        // A request every second with expiries spread over the window.
        for now in 0..200u64 {
            let expires = now + 1 + (now * 7) % (len - 2);
            w.admit_at(now, expires, now % 3 + 1).unwrap();
            live.push_back((expires, now % 3 + 1));
            live.retain(|(e, _)| *e > now);
            let want: u64 = live.iter().map(|(_, n)| n).sum();
            assert_eq!(w.inner.lock().total, want, "at {now}");
        }
    }

    #[test]
    fn the_ring_spans_the_longest_timeout() {
        let w = ReplayWindow::new(100, Duration::from_secs(30), Duration::from_secs(5));
        // 30 s + 5 s + 1 s, and two more: no deadline is clamped.
        assert_eq!(w.inner.lock().ring.len(), 38);
        w.admit(1, Duration::from_secs(30)).unwrap();
        assert_eq!(w.outstanding(), 1);
    }
}
