//! The operator's Prometheus metrics, served on `/metrics`.
//!
//! | family | labels | meaning |
//! | --- | --- | --- |
//! | `sluice_operator_reconciles_total` | | reconciles run (whatever their outcome) |
//! | `sluice_operator_reconcile_errors_total` | `kind` | reconciles that failed, by [`crate::reconcile::Error::kind`] |
//! | `sluice_operator_reconcile_duration_seconds` | | histogram of reconcile durations |
//! | `sluice_operator_objects_applied_total` | `kind` | server-side applies that were needed (skipped ones are not counted) |
//! | `sluice_operator_objects_deleted_total` | `kind` | owned objects deleted as no longer desired |
//! | `sluice_operator_status_writes_total` | | status patches (only when the status changed) |
//! | `sluice_operator_invalid_specs_total` | | reconciles that found the spec invalid |
//! | `sluice_operator_leader` | | 1 while this process runs the controller |
//! | `sluice_operator_watch_errors_total` | | failed list/watch requests of the StreamPipeline watch (retried with backoff; `/readyz` fails while they last over a minute) |
//! | `sluice_operator_autoscaler_backlog` | `namespace`, `pipeline`, `group` | entries in the group's queue (waiting + in progress) at the last evaluation |
//! | `sluice_operator_autoscaler_pending` | 〃 | entries held by workers |
//! | `sluice_operator_autoscaler_arrival_rate` | 〃 | envelopes per second arriving |
//! | `sluice_operator_autoscaler_rate_per_replica` | 〃 | envelopes per second one replica handles (declared, or measured while saturated) |
//! | `sluice_operator_autoscaler_recommended_replicas` | 〃 | replicas the last evaluation asked for |
//! | `sluice_operator_autoscaler_scalings_total` | `direction` | replica changes written (`up`, `down`) |
//! | `sluice_operator_autoscaler_errors_total` | `kind` | evaluations that could not run (`redis`, `api`) |
//!
//! Labels carry Kubernetes kinds, error kinds and, for the autoscaler's
//! gauges, the names of the pipelines and groups it scales (removed with
//! the pipeline): never keys or spec content, so cardinality stays bounded.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// One autoscaled group.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    pub namespace: String,
    pub pipeline: String,
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The autoscaler's families.
#[derive(Debug, Default)]
pub struct AutoscalerMetrics {
    pub backlog: Family<GroupLabel, Gauge>,
    pub pending: Family<GroupLabel, Gauge>,
    pub arrival_rate: Family<GroupLabel, FloatGauge>,
    pub rate_per_replica: Family<GroupLabel, FloatGauge>,
    pub recommended: Family<GroupLabel, Gauge>,
    pub scalings: Family<DirectionLabel, Counter>,
    pub errors: Family<KindLabel, Counter>,
}

impl AutoscalerMetrics {
    /// Forgets a group that is no longer autoscaled.
    pub fn remove(&self, g: &GroupLabel) {
        self.backlog.remove(g);
        self.pending.remove(g);
        self.arrival_rate.remove(g);
        self.rate_per_replica.remove(g);
        self.recommended.remove(g);
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "sluice_operator_autoscaler_backlog",
            "Entries in an autoscaled group's queue (waiting and in progress)",
            self.backlog.clone(),
        );
        r.register(
            "sluice_operator_autoscaler_pending",
            "Entries of an autoscaled group's queue held by workers",
            self.pending.clone(),
        );
        r.register(
            "sluice_operator_autoscaler_arrival_rate",
            "Envelopes per second arriving on an autoscaled group's queue",
            self.arrival_rate.clone(),
        );
        r.register(
            "sluice_operator_autoscaler_rate_per_replica",
            "Envelopes per second one replica handles, declared or measured while saturated",
            self.rate_per_replica.clone(),
        );
        r.register(
            "sluice_operator_autoscaler_recommended_replicas",
            "Replicas the last evaluation recommended",
            self.recommended.clone(),
        );
        r.register(
            "sluice_operator_autoscaler_scalings",
            "Replica changes the autoscaler wrote, by direction",
            self.scalings.clone(),
        );
        r.register(
            "sluice_operator_autoscaler_errors",
            "Autoscaler evaluations that could not run, by kind",
            self.errors.clone(),
        );
    }
}

/// Every family the operator exports, registered once at start.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Family<KindLabel, Counter>,
    pub reconcile_duration: Histogram,
    pub objects_applied: Family<KindLabel, Counter>,
    pub objects_deleted: Family<KindLabel, Counter>,
    pub status_writes: Counter,
    pub invalid_specs: Counter,
    pub leader: Gauge,
    pub watch_errors: Counter,
    /// Since when every list/watch attempt of the StreamPipeline watch
    /// failed; `None` while it works.
    watch_failing_since: Mutex<Option<(Instant, String)>>,
    pub autoscaler: AutoscalerMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Counter::default();
        let reconcile_errors = Family::<KindLabel, Counter>::default();
        // 5 ms .. ~20 s
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 13));
        let objects_applied = Family::<KindLabel, Counter>::default();
        let objects_deleted = Family::<KindLabel, Counter>::default();
        let status_writes = Counter::default();
        let invalid_specs = Counter::default();
        let leader = Gauge::default();
        let watch_errors = Counter::default();
        registry.register(
            "sluice_operator_watch_errors",
            "Failed list/watch requests of the StreamPipeline watch",
            watch_errors.clone(),
        );
        registry.register(
            "sluice_operator_reconciles",
            "Reconciles run, whatever their outcome",
            reconciles.clone(),
        );
        registry.register(
            "sluice_operator_reconcile_errors",
            "Reconciles that failed, by error kind",
            reconcile_errors.clone(),
        );
        registry.register(
            "sluice_operator_reconcile_duration_seconds",
            "Duration of reconciles",
            reconcile_duration.clone(),
        );
        registry.register(
            "sluice_operator_objects_applied",
            "Server-side applies of owned objects that were needed, by kind",
            objects_applied.clone(),
        );
        registry.register(
            "sluice_operator_objects_deleted",
            "Owned objects deleted because they were no longer desired, by kind",
            objects_deleted.clone(),
        );
        registry.register(
            "sluice_operator_status_writes",
            "StreamPipeline status patches (written only when the status changed)",
            status_writes.clone(),
        );
        registry.register(
            "sluice_operator_invalid_specs",
            "Reconciles that found the StreamPipeline spec invalid",
            invalid_specs.clone(),
        );
        registry.register(
            "sluice_operator_leader",
            "1 while this process holds the leader lease and runs the controller",
            leader.clone(),
        );
        let autoscaler = AutoscalerMetrics::default();
        autoscaler.register(&mut registry);
        Self {
            registry,
            autoscaler,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            objects_applied,
            objects_deleted,
            status_writes,
            invalid_specs,
            leader,
            watch_errors,
            watch_failing_since: Mutex::new(None),
        }
    }

    pub fn applied(&self, kind: &str) {
        self.objects_applied
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn deleted(&self, kind: &str) {
        self.objects_deleted
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn error(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// The StreamPipeline watch answered.
    pub fn watch_ok(&self) {
        *self.watch_failing_since.lock() = None;
    }

    /// The StreamPipeline watch failed with `error` (no key material: a
    /// transport or API error text).
    pub fn watch_failed(&self, error: String) {
        self.watch_errors.inc();
        let mut since = self.watch_failing_since.lock();
        let started = since.as_ref().map_or_else(Instant::now, |(t, _)| *t);
        *since = Some((started, error));
    }

    /// How long the watch has failed without a success, and its last error.
    pub fn watch_failing(&self) -> Option<(Duration, String)> {
        self.watch_failing_since
            .lock()
            .as_ref()
            .map(|(t, e)| (t.elapsed(), e.clone()))
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_rendered_with_its_labels() {
        let m = Metrics::new();
        m.reconciles.inc();
        m.error("kube");
        m.applied("Deployment");
        m.reconcile_duration.observe(0.01);
        m.autoscaler
            .scalings
            .get_or_create(&DirectionLabel { direction: "up" })
            .inc();
        let g = GroupLabel {
            namespace: "n".into(),
            pipeline: "p".into(),
            group: "g".into(),
        };
        m.autoscaler.arrival_rate.get_or_create(&g).set(2.5);
        let text = m.render();
        for needle in [
            "sluice_operator_reconciles_total 1",
            "sluice_operator_reconcile_errors_total{kind=\"kube\"} 1",
            "sluice_operator_objects_applied_total{kind=\"Deployment\"} 1",
            "sluice_operator_reconcile_duration_seconds_count 1",
            "sluice_operator_leader 0",
            "sluice_operator_autoscaler_scalings_total{direction=\"up\"} 1",
            "sluice_operator_autoscaler_arrival_rate{namespace=\"n\",pipeline=\"p\",group=\"g\"} 2.5",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
