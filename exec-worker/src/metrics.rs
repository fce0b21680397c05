//! The worker's metric families (`sluice_worker_*`), registered once per
//! process and shared by every worker loop in it.
//!
//! Labels never carry payloads, entry ids or key material.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sluice_platform::metrics::GroupLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub group: String,
    pub outcome: String,
}

/// The worker's metric families.
#[derive(Clone, Debug, Default)]
pub struct WorkerMetrics {
    /// `sluice_worker_entries_total{group,outcome}`: forwarded, replied,
    /// failed, retried, dead_lettered, crashed, expired, rejected,
    /// reply_dropped, key_missing, hand_off_failed, lost, handed_back.
    pub entries: Family<OutcomeLabel, Counter>,
    /// `sluice_worker_redeliveries_total{group}`: entries seen more than once.
    pub redeliveries: Family<GroupLabel, Counter>,
    /// `sluice_worker_in_flight{group}`.
    pub in_flight: Family<GroupLabel, Gauge>,
}

impl WorkerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "sluice_worker_entries",
            "Queue entries handled, by outcome",
            m.entries.clone(),
        );
        registry.register(
            "sluice_worker_redeliveries",
            "Entries delivered more than once (after a crash, a lapsed lease or a retryable failure)",
            m.redeliveries.clone(),
        );
        registry.register(
            "sluice_worker_in_flight",
            "Entries being worked on",
            m.in_flight.clone(),
        );
        m
    }

    pub(crate) fn outcome(&self, group: &str, outcome: &str) {
        self.entries
            .get_or_create(&OutcomeLabel {
                group: group.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The count for one outcome (tests).
    pub fn count(&self, group: &str, outcome: &str) -> u64 {
        self.entries
            .get_or_create(&OutcomeLabel {
                group: group.to_string(),
                outcome: outcome.to_string(),
            })
            .get()
    }
}

/// The outcomes a worker counts, each a slot of [`GroupMetrics`].
const OUTCOMES: [&str; 13] = [
    "forwarded",
    "replied",
    "failed",
    "retried",
    "dead_lettered",
    "crashed",
    "expired",
    "rejected",
    "reply_dropped",
    "key_missing",
    "hand_off_failed",
    "lost",
    "handed_back",
];

/// One group's series of the worker's families, each looked up on first
/// use and kept: counting an entry builds no label and takes no lock (an
/// outcome's slot is found among a dozen short names). A series still
/// appears only once something was counted in it.
pub(crate) struct GroupMetrics {
    all: WorkerMetrics,
    group: String,
    in_flight: OnceLock<Gauge>,
    redeliveries: OnceLock<Counter>,
    outcomes: [OnceLock<Counter>; OUTCOMES.len()],
}

impl GroupMetrics {
    pub(crate) fn new(all: WorkerMetrics, group: &str) -> Self {
        Self {
            all,
            group: group.to_string(),
            in_flight: OnceLock::new(),
            redeliveries: OnceLock::new(),
            outcomes: Default::default(),
        }
    }

    fn label(&self) -> GroupLabel {
        GroupLabel {
            group: self.group.clone(),
        }
    }

    /// The group's `sluice_worker_in_flight` gauge.
    pub(crate) fn in_flight(&self) -> &Gauge {
        self.in_flight
            .get_or_init(|| self.all.in_flight.get_or_create(&self.label()).clone())
    }

    /// Counts an entry delivered more than once.
    pub(crate) fn redelivered(&self) {
        self.redeliveries
            .get_or_init(|| self.all.redeliveries.get_or_create(&self.label()).clone())
            .inc();
    }

    /// Counts one entry handled with `outcome`.
    pub(crate) fn outcome(&self, outcome: &str) {
        match OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => {
                self.outcomes[i]
                    .get_or_init(|| {
                        self.all
                            .entries
                            .get_or_create(&OutcomeLabel {
                                group: self.group.clone(),
                                outcome: outcome.to_string(),
                            })
                            .clone()
                    })
                    .inc();
            }
            None => self.all.outcome(&self.group, outcome),
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_platform::metrics::render as text;

    use super::*;

    #[test]
    fn a_group_counts_in_the_shared_families_and_shows_a_series_once_counted() {
        let mut r = Registry::default();
        let all = WorkerMetrics::register(&mut r);
        let work = GroupMetrics::new(all.clone(), "work");
        let io = GroupMetrics::new(all.clone(), "io");
        assert!(!text(&r).contains("group=\"work\""), "{}", text(&r));

        work.outcome("replied");
        work.outcome("replied");
        io.outcome("replied");
        // Not one of the known outcomes: counted all the same.
        work.outcome("something_new");
        assert_eq!(all.count("work", "replied"), 2);
        assert_eq!(all.count("io", "replied"), 1);
        assert_eq!(all.count("work", "something_new"), 1);
        let shown = text(&r);
        assert!(
            shown.contains("sluice_worker_entries_total{group=\"work\",outcome=\"replied\"} 2"),
            "{shown}"
        );
        assert!(
            !shown.contains("sluice_worker_in_flight{group=\"work\"}"),
            "{shown}"
        );

        work.redelivered();
        work.in_flight().inc();
        io.in_flight().inc();
        io.in_flight().inc();
        io.in_flight().dec();
        let shown = text(&r);
        assert!(
            shown.contains("sluice_worker_redeliveries_total{group=\"work\"} 1"),
            "{shown}"
        );
        assert!(
            shown.contains("sluice_worker_in_flight{group=\"work\"} 1"),
            "{shown}"
        );
        assert!(
            shown.contains("sluice_worker_in_flight{group=\"io\"} 1"),
            "{shown}"
        );
    }
}
