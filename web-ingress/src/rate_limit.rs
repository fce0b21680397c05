//! Per-caller rate limits (`interfaces[].auth.rateLimit`): a token bucket per
//! caller and interface in each ingress process; a request finding its
//! caller's bucket empty is answered `429 rate_limited` with `Retry-After`.
//!
//! The buckets of an interface are at most [`MAX_CALLERS`]: a full bucket
//! holds nothing worth keeping (a new one is the same), so when the map is
//! full the full buckets are dropped, and if that frees nothing the map is
//! cleared — beyond that many active callers per process the limiter
//! forgets, it never grows. Callers named by bearer tokens are as many as the
//! token file lists; a trusted header can name any number.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_crds::Plan;

/// Most buckets one interface keeps.
pub const MAX_CALLERS: usize = 65_536;

/// Every rate-limited interface's buckets.
#[derive(Default)]
pub struct RateLimits {
    by_interface: HashMap<String, Limiter>,
}

struct Limiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimits {
    /// The limiters of `plan`'s rate-limited interfaces.
    pub fn of(plan: &Plan) -> Self {
        let by_interface = plan
            .interfaces
            .iter()
            .filter_map(|it| {
                let (per_second, burst) = it.rate_limit?;
                Some((
                    it.name.clone(),
                    Limiter {
                        per_second: f64::from(per_second.max(1)),
                        burst: f64::from(burst.max(1)),
                        buckets: Mutex::default(),
                    },
                ))
            })
            .collect();
        Self { by_interface }
    }

    /// Takes one request of `caller` on interface `name`; when its bucket
    /// is empty, how long until it holds one again.
    pub fn take(&self, name: &str, caller: &str) -> Result<(), Duration> {
        match self.by_interface.get(name) {
            None => Ok(()),
            Some(l) => l.take(caller, Instant::now()),
        }
    }
}

impl Limiter {
    fn take(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock();
        if !buckets.contains_key(caller) && buckets.len() >= MAX_CALLERS {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.refilled(now, rate, burst) < burst);
            if buckets.len() >= MAX_CALLERS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(caller.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = bucket.refilled(now, self.per_second, self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, per_second: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * per_second).min(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: f64) -> Limiter {
        Limiter {
            per_second,
            burst,
            buckets: Mutex::default(),
        }
    }

    #[test]
    fn a_burst_then_the_sustained_rate_per_caller() {
        let l = limiter(2.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.take("a", t0).unwrap();
        }
        let wait = l.take("a", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another caller has its own bucket.
        l.take("b", t0).unwrap();
        // Half a second later one more request of a's.
        let t1 = t0 + Duration::from_millis(500);
        l.take("a", t1).unwrap();
        assert!(l.take("a", t1).is_err());
        // A long quiet spell refills the burst, never more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            l.take("a", t2).unwrap();
        }
        assert!(l.take("a", t2).is_err());
    }

    #[test]
    fn the_buckets_never_outgrow_their_bound() {
        let l = limiter(1.0, 1.0);
        let t0 = Instant::now();
        for i in 0..MAX_CALLERS {
            l.take(&format!("c{i}"), t0).unwrap();
        }
        assert_eq!(l.buckets.lock().len(), MAX_CALLERS);
        // All empty (each took its one token): a new caller clears the map.
        l.take("new", t0).unwrap();
        assert_eq!(l.buckets.lock().len(), 1);
        // When the map is full again, the buckets refilled by then are
        // dropped to make room.
        for i in 0..MAX_CALLERS - 1 {
            l.take(&format!("d{i}"), t0).unwrap();
        }
        let later = t0 + Duration::from_millis(500);
        assert!(l.take("new", later).is_err(), "half a token");
        let t1 = t0 + Duration::from_secs(2);
        l.take("newer", t1).unwrap();
        assert!(l.buckets.lock().len() <= 2);
    }
}
