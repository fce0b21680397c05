//! Envelopes as someone who captured or forged them would write them
//! straight onto a group's stream.

use serde_json::Value;
use sluice_platform::clock::now_ms;
use sluice_platform::{Envelope, Keys};

/// A request for `node` of `group`, deadline a minute away, whose reply
/// address belongs to no live ingress: executing it shows as the worker
/// outcome `reply_dropped`, never as an answer.
pub fn unanswerable_request(keys: &Keys, group: &str, node: &str, payload: Value) -> Envelope {
    Envelope {
        kind: sluice_platform::Kind::Request,
        pipeline: keys.pipeline().to_string(),
        dest: group.to_string(),
        cid: uuid::Uuid::new_v4().to_string(),
        rid: "forged".to_string(),
        trace: None,
        ts: 0,
        nonce: String::new(),
        deadline: now_ms() + 60_000,
        attempt: 1,
        node: Some(node.to_string()),
        reply_to: Some("no-such-ingress".to_string()),
        payload,
        error: None,
    }
}
