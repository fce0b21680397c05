//! The ingress's metric families.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
pub use sluice_platform::metrics::{GroupLabel, ReasonLabel};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub interface: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InterfaceLabel {
    pub interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    pub interface: String,
    pub code: u16,
}

#[derive(Clone, Debug)]
pub struct IngressMetrics {
    pub requests: Family<RequestLabel, Counter>,
    pub duration: Family<RequestLabel, Histogram>,
    pub in_flight: Family<InterfaceLabel, Gauge>,
    pub timeouts: Family<InterfaceLabel, Counter>,
    pub queue_depth: Family<GroupLabel, Gauge>,
    pub queue_bytes: Family<GroupLabel, Gauge>,
    pub replies_dropped: Family<ReasonLabel, Counter>,
    /// Open client connections.
    pub connections: Gauge,
    /// Connections refused at `--max-connections`.
    pub connections_refused: Counter,
    /// Replay-guard nonces this ingress's admitted requests may still hold
    /// in Redis (sampled with the backlog).
    pub replay_nonces: Gauge,
    /// Open WebSocket connections, per interface.
    pub websockets: Family<InterfaceLabel, Gauge>,
    /// WebSocket connections ended, by interface and close code.
    pub websocket_closes: Family<CloseLabel, Counter>,
}

impl IngressMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            in_flight: Family::default(),
            timeouts: Family::default(),
            queue_depth: Family::default(),
            queue_bytes: Family::default(),
            replies_dropped: Family::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            replay_nonces: Gauge::default(),
            websockets: Family::default(),
            websocket_closes: Family::default(),
        };
        r.register(
            "sluice_ingress_requests",
            "Requests answered, by interface and status",
            m.requests.clone(),
        );
        r.register(
            "sluice_ingress_request_duration_seconds",
            "Time from request to response, by interface",
            m.duration.clone(),
        );
        r.register(
            "sluice_ingress_in_flight",
            "Requests waiting for their answer",
            m.in_flight.clone(),
        );
        r.register(
            "sluice_ingress_timeouts",
            "Requests answered 504 at their timeout",
            m.timeouts.clone(),
        );
        r.register(
            "sluice_ingress_queue_depth",
            "Sampled entries in each worker group's queue",
            m.queue_depth.clone(),
        );
        r.register(
            "sluice_ingress_queue_bytes",
            "Sampled bytes in each worker group's queue",
            m.queue_bytes.clone(),
        );
        r.register(
            "sluice_ingress_replies_dropped",
            "Replies without a waiter: late (waiter gone) or duplicate",
            m.replies_dropped.clone(),
        );
        r.register(
            "sluice_ingress_connections",
            "Open client connections",
            m.connections.clone(),
        );
        r.register(
            "sluice_ingress_connections_refused",
            "Client connections refused (503, closed) at the --max-connections cap",
            m.connections_refused.clone(),
        );
        r.register(
            "sluice_ingress_replay_nonces",
            "Replay-guard nonces this ingress's requests may still hold in managed Redis \
             (its budget: redis.maxMemory)",
            m.replay_nonces.clone(),
        );
        r.register(
            "sluice_ingress_websocket_connections",
            "Open WebSocket connections, by interface",
            m.websockets.clone(),
        );
        r.register(
            "sluice_ingress_websocket_closed",
            "WebSocket connections ended, by interface and close code \
             (1006: ended without a close frame)",
            m.websocket_closes.clone(),
        );
        m
    }

    /// Counts one answered request (an HTTP request or a WebSocket
    /// message) and its duration.
    pub fn answered(&self, interface: &str, status: u16, elapsed: std::time::Duration) {
        let label = RequestLabel {
            interface: interface.to_string(),
            status,
        };
        self.requests.get_or_create(&label).inc();
        self.duration
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }

    pub fn dropped(&self, reason: &str) {
        self.replies_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// One interface's series of the request families that every answered
/// HTTP or WebSocket request touches, each looked up on first use and kept:
/// counting builds no label and takes no lock (answers other than 200 go
/// through the families). A series still appears only once something was
/// counted in it.
#[derive(Debug)]
pub struct InterfaceMetrics {
    all: IngressMetrics,
    interface: String,
    in_flight: OnceLock<Gauge>,
    ok: OnceLock<(Counter, Histogram)>,
}

impl InterfaceMetrics {
    pub fn new(all: IngressMetrics, interface: &str) -> Self {
        Self {
            all,
            interface: interface.to_string(),
            in_flight: OnceLock::new(),
            ok: OnceLock::new(),
        }
    }

    /// The interface's `sluice_ingress_in_flight` gauge.
    pub fn in_flight(&self) -> &Gauge {
        self.in_flight.get_or_init(|| {
            self.all
                .in_flight
                .get_or_create(&InterfaceLabel {
                    interface: self.interface.clone(),
                })
                .clone()
        })
    }

    /// As [`IngressMetrics::answered`].
    pub fn answered(&self, status: u16, elapsed: std::time::Duration) {
        if status != 200 {
            return self.all.answered(&self.interface, status, elapsed);
        }
        let (count, duration) = self.ok.get_or_init(|| {
            let label = RequestLabel {
                interface: self.interface.clone(),
                status,
            };
            (
                self.all.requests.get_or_create(&label).clone(),
                self.all.duration.get_or_create(&label).clone(),
            )
        });
        count.inc();
        duration.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_platform::metrics::render as text;

    use super::*;

    #[test]
    fn an_interface_counts_in_the_shared_families_and_shows_a_series_once_counted() {
        let mut r = Registry::default();
        let all = IngressMetrics::register(&mut r);
        let echo = InterfaceMetrics::new(all.clone(), "echo");
        assert!(!text(&r).contains("interface=\"echo\""), "{}", text(&r));

        echo.answered(200, Duration::from_millis(2));
        echo.answered(200, Duration::from_millis(3));
        echo.answered(503, Duration::from_millis(1));
        all.answered("echo", 200, Duration::from_millis(4));
        echo.in_flight().inc();
        let shown = text(&r);
        for line in [
            "sluice_ingress_requests_total{interface=\"echo\",status=\"200\"} 3",
            "sluice_ingress_requests_total{interface=\"echo\",status=\"503\"} 1",
            "sluice_ingress_request_duration_seconds_count{interface=\"echo\",status=\"200\"} 3",
            "sluice_ingress_in_flight{interface=\"echo\"} 1",
        ] {
            assert!(shown.contains(line), "{line} missing from\n{shown}");
        }
    }
}
