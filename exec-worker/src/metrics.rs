//! The worker's metric families (`sluice_worker_*`), registered once per
//! process and shared by every worker loop in it.
//!
//! Labels never carry payloads, entry ids or key material.

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
