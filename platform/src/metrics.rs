//! Prometheus families shared by the runtime processes, and rendering.
//!
//! Names follow `sluice_<component>_<what>_<unit>`. Labels never carry key
//! material, payloads or caller-chosen ids.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::rejection::Rejection;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    pub group: String,
}

/// `sluice_envelopes_rejected_total{reason}`: entries refused by verification.
#[derive(Clone, Debug, Default)]
pub struct Rejections(Family<ReasonLabel, Counter>);

impl Rejections {
    /// Registers the family in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let r = Self::default();
        registry.register(
            "sluice_envelopes_rejected",
            "Stream entries refused by verification, by reason",
            r.0.clone(),
        );
        r
    }

    pub fn inc(&self, why: Rejection) {
        self.0
            .get_or_create(&ReasonLabel {
                reason: why.reason().to_string(),
            })
            .inc();
    }

    /// The count for one reason (tests and the startup summary).
    pub fn get(&self, why: Rejection) -> u64 {
        self.0
            .get_or_create(&ReasonLabel {
                reason: why.reason().to_string(),
            })
            .get()
    }
}

/// The registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
