//! The built-in autoscaler's arithmetic: pure functions of what was
//! observed, so they are property-tested without Redis, a cluster or a clock.
//!
//! ```text
//! Observation ──recommend──▶ replicas wanted now (clamped to [min, max])
//!                                  │
//!        Stabilizer (recent recommendations) ──decide──▶ change or hold
//!                                  up: at once, at most ×2 (+4) per step
//!                                  down: only after a whole window of lower
//!                                        recommendations, at most −½ per step
//! ```
//!
//! Times are [`Duration`]s since an arbitrary epoch of the caller's choosing
//! (its start), never wall-clock reads: the functions stay deterministic.

use std::collections::VecDeque;
use std::time::Duration;

/// Slack for floating-point rates, so `ceil(20.0 / 10.0)` is 2, not 3.
const EPSILON: f64 = 1e-9;

/// Samples kept for rates: the rate is measured over the last `RATE_SPAN - 1`
/// evaluation periods, which smooths noise without hiding a real change.
const RATE_SPAN: usize = 5;

/// Largest growth per scale-up step: to `max(2 × current, current + 4)`.
const UP_FACTOR: u32 = 2;
const UP_MIN_STEP: u32 = 4;

/// What the spec and the process say about one group's scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub min: u32,
    pub max: u32,
    /// Entries (waiting + in progress) one replica should carry; at least 1.
    pub target_backlog: u32,
    /// Declared envelopes per second per replica; measured when `None`.
    pub rate_per_replica: Option<f64>,
    /// Work off the waiting entries within this time, on top of arrivals.
    pub processing_time: Option<Duration>,
    /// Envelopes one worker process holds at once.
    pub concurrency: u32,
    /// Scale-down stabilisation window.
    pub down_window: Duration,
}

/// What one evaluation saw of a group's queue.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observation {
    /// Entries in the stream: waiting plus in progress.
    pub length: u64,
    /// Entries held by workers right now.
    pub pending: u64,
    /// Envelopes per second arriving, when known.
    pub arrival_rate: Option<f64>,
    /// Envelopes per second one replica handled while saturated, when measured.
    pub measured_rate_per_replica: Option<f64>,
}

impl Observation {
    pub fn waiting(&self) -> u64 {
        self.length.saturating_sub(self.pending)
    }
}

/// Replicas wanted now and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub replicas: u32,
    pub reason: String,
}

fn ceil_div(n: u64, d: u64) -> u64 {
    n.div_ceil(d.max(1))
}

fn ceil_f(x: f64) -> u64 {
    if !x.is_finite() || x <= 0.0 {
        return 0;
    }
    // Saturating: a rate of 1e30 asks for u64::MAX, later clamped to max.
    (x - EPSILON).ceil().max(0.0) as u64
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Replicas the group needs for what was observed, within `[min, max]`:
/// the largest of
/// - `ceil(length / targetBacklogPerReplica)` (backlog),
/// - `ceil((arrival + waiting / targetProcessingTime) / ratePerReplica)`
///   when a rate per replica is declared or measured (rate; the backlog
///   term only with `targetProcessingTime`),
/// - `ceil(pending / concurrency)`: never fewer than the work in progress needs.
///
/// # Guarantees
/// `min <= replicas <= max` (with `min <= max`); monotone in `length`,
/// `pending` and `arrival_rate`.
pub fn recommend(p: &Params, o: &Observation) -> Recommendation {
    let by_backlog = ceil_div(o.length, u64::from(p.target_backlog.max(1)));
    let rate = p
        .rate_per_replica
        .or(o.measured_rate_per_replica)
        .filter(|r| r.is_finite() && *r > 0.0);
    let by_rate = rate.map(|r| {
        let arrival = o
            .arrival_rate
            .filter(|a| a.is_finite())
            .unwrap_or(0.0)
            .max(0.0);
        let drain = p
            .processing_time
            .filter(|t| !t.is_zero())
            .map_or(0.0, |t| o.waiting() as f64 / t.as_secs_f64());
        (ceil_f((arrival + drain) / r), arrival, drain, r)
    });
    let by_inflight = ceil_div(o.pending, u64::from(p.concurrency.max(1)));

    let (mut want, mut reason) = (
        by_backlog,
        format!(
            "backlog {} at {} per replica",
            o.length,
            p.target_backlog.max(1)
        ),
    );
    if let Some((n, arrival, drain, r)) = by_rate {
        if n > want {
            want = n;
            reason = if drain > 0.0 {
                format!("arrivals {arrival:.1}/s plus {drain:.1}/s to work off the backlog at {r:.1}/s per replica")
            } else {
                format!("arrivals {arrival:.1}/s at {r:.1}/s per replica")
            };
        }
    }
    if by_inflight > want {
        want = by_inflight;
        reason = format!(
            "{} entries in progress at concurrency {}",
            o.pending,
            p.concurrency.max(1)
        );
    }
    if want == 0 && o.length == 0 {
        reason = "idle".to_string();
    }
    let max = p.max.max(p.min);
    let replicas = to_u32(want).clamp(p.min, max);
    if replicas > to_u32(want) {
        reason = format!("{reason}; minReplicas {}", p.min);
    } else if u64::from(replicas) < want {
        reason = format!("{reason}; capped at maxReplicas {max}");
    }
    Recommendation { replicas, reason }
}

/// Recent recommendations of one group, for the scale-down window.
///
/// A fresh stabiliser (a new process, a new leader) has seen nothing, so
/// it allows no scale-down until it has watched a whole window: a leader
/// change never turns into a burst of scale-downs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stabilizer {
    since: Option<Duration>,
    recent: VecDeque<(Duration, u32)>,
}

impl Stabilizer {
    fn record(&mut self, now: Duration, replicas: u32, window: Duration) {
        if self.since.is_none_or(|s| now < s) {
            // First sample, or a clock that went backwards: start over.
            *self = Self {
                since: Some(now),
                recent: VecDeque::new(),
            };
        }
        self.recent.push_back((now, replicas));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > window)
        {
            self.recent.pop_front();
        }
    }

    /// The highest recommendation of the trailing window, if the window is
    /// fully observed.
    fn ceiling(&self, now: Duration, window: Duration) -> Option<u32> {
        let since = self.since?;
        if now.saturating_sub(since) < window {
            return None;
        }
        self.recent.iter().map(|(_, r)| *r).max()
    }
}

/// A change of replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// Whether to change `current` replicas, given this evaluation's
/// recommendation; records the recommendation in `stab`.
///
/// - Outside `[min, max]` (the bounds changed): straight to the bound.
/// - Up: at once, to at most `max(2 × current, current + 4)` per step.
/// - Down: only when every recommendation of the last `down_window` is
///   below `current`, and `down_window` has been observed in full; to their
///   highest, and by at most half of `current` per step.
pub fn decide(
    p: &Params,
    current: u32,
    rec: &Recommendation,
    stab: &mut Stabilizer,
    now: Duration,
) -> Option<Decision> {
    stab.record(now, rec.replicas, p.down_window);
    let max = p.max.max(p.min);
    let change = |to: u32, reason: String| {
        (to != current).then_some(Decision {
            from: current,
            to,
            reason,
        })
    };
    if current > max {
        return change(max, format!("above maxReplicas {max}"));
    }
    if current < p.min {
        return change(p.min, format!("below minReplicas {}", p.min));
    }
    if rec.replicas > current {
        let bound = current
            .saturating_mul(UP_FACTOR)
            .max(current.saturating_add(UP_MIN_STEP));
        let to = rec.replicas.min(bound);
        let reason = if current == 0 {
            format!("waking: {}", rec.reason)
        } else {
            rec.reason.clone()
        };
        return change(to, reason);
    }
    if rec.replicas < current {
        let ceiling = stab.ceiling(now, p.down_window)?;
        if ceiling >= current {
            return None;
        }
        let floor = current - (current / 2).max(1);
        let to = ceiling.max(floor).max(p.min);
        return change(
            to,
            format!("{} for {}s", rec.reason, p.down_window.as_secs()),
        );
    }
    None
}

/// One reading of a queue's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: Duration,
    /// Entries ever appended to the stream.
    pub entries_added: u64,
    /// Entries that left the stream (handed off or dead-lettered).
    pub completed: u64,
    /// Entries waiting for a worker.
    pub waiting: u64,
    /// Ready replicas at the time.
    pub replicas: u32,
}

/// Arrival and per-replica processing rates from successive samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    samples: VecDeque<Sample>,
    per_replica: Option<f64>,
}

impl Rates {
    /// Adds a sample; returns (arrival rate, per-replica rate), each when known.
    ///
    /// The arrival rate is measured over the kept samples. The rate per
    /// replica is measured only over spans where work waited at every
    /// sample and the ready replicas did not change (the workers were
    /// saturated, so completions show capacity, not demand); the last such
    /// measurement is kept. Counters going backwards (the stream was lost
    /// and recreated) restart the samples.
    pub fn observe(&mut self, s: Sample) -> (Option<f64>, Option<f64>) {
        if let Some(last) = self.samples.back() {
            if s.entries_added < last.entries_added
                || s.completed < last.completed
                || s.at <= last.at
            {
                self.samples.clear();
            }
        }
        self.samples.push_back(s);
        while self.samples.len() > RATE_SPAN {
            self.samples.pop_front();
        }
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return (None, self.per_replica);
        };
        let dt = last.at.saturating_sub(first.at).as_secs_f64();
        if self.samples.len() < 2 || dt <= 0.0 {
            return (None, self.per_replica);
        }
        let arrival = (last.entries_added - first.entries_added) as f64 / dt;
        let saturated = self
            .samples
            .iter()
            .all(|x| x.waiting > 0 && x.replicas == last.replicas && x.replicas > 0);
        if saturated {
            let done = (last.completed - first.completed) as f64 / dt;
            if done > 0.0 {
                self.per_replica = Some(done / f64::from(last.replicas));
            }
        }
        (Some(arrival), self.per_replica)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params() -> Params {
        Params {
            min: 1,
            max: 20,
            target_backlog: 50,
            rate_per_replica: None,
            processing_time: None,
            concurrency: 8,
            down_window: Duration::from_secs(60),
        }
    }

    fn obs(length: u64) -> Observation {
        Observation {
            length,
            ..Default::default()
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn backlog_over_target_gives_the_ceiling_within_bounds() {
        let p = params();
        assert_eq!(recommend(&p, &obs(0)).replicas, 1, "min");
        assert_eq!(recommend(&p, &obs(50)).replicas, 1);
        assert_eq!(recommend(&p, &obs(51)).replicas, 2);
        assert_eq!(recommend(&p, &obs(230)).replicas, 5);
        let capped = recommend(&p, &obs(100_000));
        assert_eq!(capped.replicas, 20);
        assert!(
            capped.reason.contains("capped at maxReplicas 20"),
            "{}",
            capped.reason
        );
        let zero = Params { min: 0, ..params() };
        assert_eq!(
            recommend(&zero, &obs(0)),
            Recommendation {
                replicas: 0,
                reason: "idle".into()
            }
        );
        assert_eq!(
            recommend(&zero, &obs(1)).replicas,
            1,
            "one entry wakes the group"
        );
    }

    #[test]
    fn a_known_rate_per_replica_sizes_the_group_for_the_arrivals() {
        let p = Params {
            rate_per_replica: Some(10.0),
            ..params()
        };
        let o = Observation {
            arrival_rate: Some(42.0),
            length: 3,
            ..Default::default()
        };
        let r = recommend(&p, &o);
        assert_eq!(r.replicas, 5);
        assert!(
            r.reason.contains("arrivals 42.0/s at 10.0/s per replica"),
            "{}",
            r.reason
        );
        // Exactly on a multiple: no extra replica from rounding.
        let o = Observation {
            arrival_rate: Some(20.0),
            ..Default::default()
        };
        assert_eq!(recommend(&p, &o).replicas, 2);
        // Processing time adds what it takes to work the waiting entries off.
        let p = Params {
            processing_time: Some(secs(10)),
            ..p
        };
        let o = Observation {
            arrival_rate: Some(20.0),
            length: 100,
            pending: 0,
            ..Default::default()
        };
        assert_eq!(recommend(&p, &o).replicas, 3, "(20 + 100/10) / 10");
        // A measured rate is used when none is declared.
        let p = Params {
            rate_per_replica: None,
            ..params()
        };
        let o = Observation {
            arrival_rate: Some(30.0),
            measured_rate_per_replica: Some(4.0),
            ..Default::default()
        };
        assert_eq!(recommend(&p, &o).replicas, 8);
    }

    #[test]
    fn work_in_progress_is_never_starved() {
        let p = Params {
            target_backlog: 1000,
            ..params()
        };
        let o = Observation {
            length: 40,
            pending: 40,
            ..Default::default()
        };
        let r = recommend(&p, &o);
        assert_eq!(r.replicas, 5, "40 in progress at concurrency 8");
        assert!(r.reason.contains("in progress"), "{}", r.reason);
    }

    #[test]
    fn scale_up_is_immediate_and_bounded_per_step() {
        let p = params();
        let mut s = Stabilizer::default();
        let rec = recommend(&p, &obs(1000));
        let d = decide(&p, 1, &rec, &mut s, secs(0)).unwrap();
        assert_eq!((d.from, d.to), (1, 5), "1 → at most 1 + 4");
        let d = decide(&p, 5, &rec, &mut s, secs(1)).unwrap();
        assert_eq!(d.to, 10, "5 → at most ×2");
        let d = decide(&p, 10, &rec, &mut s, secs(2)).unwrap();
        assert_eq!(d.to, 20);
        assert_eq!(decide(&p, 20, &rec, &mut s, secs(3)), None);
    }

    #[test]
    fn scale_down_waits_for_a_full_window_then_steps_by_at_most_half() {
        let p = params();
        let mut s = Stabilizer::default();
        let idle = recommend(&p, &obs(0));
        for t in 0..60 {
            assert_eq!(
                decide(&p, 8, &idle, &mut s, secs(t)),
                None,
                "t={t}: inside the window"
            );
        }
        let d = decide(&p, 8, &idle, &mut s, secs(60)).unwrap();
        assert_eq!((d.from, d.to), (8, 4));
        let d = decide(&p, 4, &idle, &mut s, secs(61)).unwrap();
        assert_eq!(d.to, 2);
        let d = decide(&p, 2, &idle, &mut s, secs(62)).unwrap();
        assert_eq!(d.to, 1);
        assert_eq!(decide(&p, 1, &idle, &mut s, secs(63)), None, "at min");
    }

    #[test]
    fn a_high_recommendation_inside_the_window_holds_the_replicas() {
        let p = params();
        let mut s = Stabilizer::default();
        let idle = recommend(&p, &obs(0));
        let busy = recommend(&p, &obs(300)); // 6
        for t in 0..61 {
            decide(&p, 6, &idle, &mut s, secs(t));
        }
        assert_eq!(decide(&p, 6, &busy, &mut s, secs(61)), None);
        for t in 62..121 {
            assert_eq!(decide(&p, 6, &idle, &mut s, secs(t)), None, "t={t}");
        }
        assert_eq!(decide(&p, 6, &idle, &mut s, secs(122)).unwrap().to, 3);
    }

    #[test]
    fn a_fresh_stabilizer_never_scales_down_before_a_window() {
        // A new leader took over with the group at 10 and nothing to do.
        let p = params();
        let mut s = Stabilizer::default();
        let idle = recommend(&p, &obs(0));
        for t in 1000..1060 {
            assert_eq!(decide(&p, 10, &idle, &mut s, secs(t)), None);
        }
        assert!(decide(&p, 10, &idle, &mut s, secs(1060)).is_some());
    }

    #[test]
    fn bounds_that_changed_apply_at_once() {
        let p = Params {
            min: 2,
            max: 4,
            ..params()
        };
        let mut s = Stabilizer::default();
        let rec = recommend(&p, &obs(0));
        assert_eq!(decide(&p, 9, &rec, &mut s, secs(0)).unwrap().to, 4);
        assert_eq!(decide(&p, 0, &rec, &mut s, secs(1)).unwrap().to, 2);
    }

    #[test]
    fn scale_to_zero_and_wake() {
        let p = Params {
            min: 0,
            down_window: secs(10),
            ..params()
        };
        let mut s = Stabilizer::default();
        let idle = recommend(&p, &obs(0));
        for t in 0..10 {
            assert_eq!(decide(&p, 1, &idle, &mut s, secs(t)), None);
        }
        assert_eq!(decide(&p, 1, &idle, &mut s, secs(10)).unwrap().to, 0);
        let one = recommend(&p, &obs(1));
        let d = decide(&p, 0, &one, &mut s, secs(11)).unwrap();
        assert_eq!(d.to, 1);
        assert!(d.reason.starts_with("waking"), "{}", d.reason);
    }

    #[test]
    fn rates_come_from_counter_deltas_and_capacity_only_when_saturated() {
        let mut r = Rates::default();
        let sample = |t: u64, added: u64, completed: u64, waiting: u64| Sample {
            at: secs(t),
            entries_added: added,
            completed,
            waiting,
            replicas: 2,
        };
        assert_eq!(r.observe(sample(0, 0, 0, 0)), (None, None));
        // 100/s arriving, 100/s done, nothing waiting: no capacity reading.
        assert_eq!(r.observe(sample(1, 100, 100, 0)), (Some(100.0), None));
        let mut r = Rates::default();
        r.observe(sample(0, 0, 0, 5));
        let (a, c) = r.observe(sample(2, 100, 60, 45));
        assert_eq!(a, Some(50.0));
        assert_eq!(c, Some(15.0), "30/s done by 2 saturated replicas");
        // A counter reset (stream recreated) starts over, keeping the capacity.
        assert_eq!(r.observe(sample(3, 5, 0, 5)), (None, Some(15.0)));
    }

    /// A closed loop: arrivals at `rate`/s, each replica finishing `cap`/s,
    /// the autoscaler evaluating every second with measured rates. Returns
    /// the replica count after each evaluation.
    fn simulate(p: &Params, rate: u64, cap: u64, steps: u64) -> Vec<u32> {
        let (mut added, mut done, mut waiting) = (0u64, 0u64, 0u64);
        let mut replicas = 1u32;
        let (mut stab, mut rates) = (Stabilizer::default(), Rates::default());
        let mut out = vec![];
        for t in 0..steps {
            added += rate;
            waiting += rate;
            let served = waiting.min(cap * u64::from(replicas));
            waiting -= served;
            done += served;
            let (arrival, measured) = rates.observe(Sample {
                at: secs(t),
                entries_added: added,
                completed: done,
                waiting,
                replicas,
            });
            let o = Observation {
                length: waiting,
                pending: 0,
                arrival_rate: arrival,
                measured_rate_per_replica: measured,
            };
            let rec = recommend(p, &o);
            if let Some(d) = decide(p, replicas, &rec, &mut stab, secs(t)) {
                replicas = d.to;
            }
            out.push(replicas);
        }
        out
    }

    #[test]
    fn a_steady_load_settles_on_arrivals_over_capacity_and_stays_there() {
        let p = Params {
            down_window: secs(30),
            ..params()
        };
        let history = simulate(&p, 95, 10, 400);
        let tail = &history[200..];
        assert!(tail.iter().all(|r| *r == tail[0]), "oscillates: {tail:?}");
        assert_eq!(tail[0], 10, "ceil(95 / 10)");
    }

    proptest! {
        #[test]
        fn recommendations_stay_within_bounds_and_grow_with_the_backlog(
            min in 0u32..10, extra in 0u32..50, target in 1u32..500,
            a in 0u64..1_000_000, b in 0u64..1_000_000, pending in 0u64..10_000,
            rate in proptest::option::of(0.0f64..1e6), per in proptest::option::of(0.01f64..1e4),
        ) {
            let p = Params { min, max: min + extra, target_backlog: target, rate_per_replica: per, ..params() };
            let (lo, hi) = (a.min(b), a.max(b));
            let mk = |length: u64| Observation { length: length.max(pending), pending, arrival_rate: rate, measured_rate_per_replica: None };
            let r_lo = recommend(&p, &mk(lo)).replicas;
            let r_hi = recommend(&p, &mk(hi)).replicas;
            prop_assert!(p.min <= r_lo && r_hi <= p.max);
            prop_assert!(r_lo <= r_hi, "monotone: {} entries → {}, {} → {}", lo, r_lo, hi, r_hi);
        }

        #[test]
        fn a_constant_observation_never_oscillates(
            min in 0u32..5, extra in 0u32..30, length in 0u64..5000, start in 0u32..40,
            window in 0u64..20,
        ) {
            let p = Params { min, max: min + extra, down_window: secs(window), ..params() };
            let o = obs(length);
            let rec = recommend(&p, &o);
            let mut s = Stabilizer::default();
            let mut current = start;
            let mut seen = vec![current];
            for t in 0..200 {
                if let Some(d) = decide(&p, current, &rec, &mut s, secs(t)) {
                    prop_assert!(d.to >= p.min && d.to <= p.max.max(p.min));
                    current = d.to;
                }
                seen.push(current);
            }
            // Monotone towards the recommendation, then constant.
            let up = seen.windows(2).all(|w| w[0] <= w[1]);
            let down = seen.windows(2).all(|w| w[0] >= w[1]);
            prop_assert!(up || down, "changed direction: {:?}", seen);
            prop_assert_eq!(current, rec.replicas);
        }
    }
}
