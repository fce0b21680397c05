//! Envelopes as someone who captured or forged them would write them
//! straight onto a group's stream, and read them off one.

use serde_json::Value;
use sluice_platform::clock::now_ms;
use sluice_platform::{Envelope, Keys, StreamEntry};

use crate::resp::Probe;

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
        plan: None,
        reply_to: Some("no-such-ingress".to_string()),
        live: None,
        seq: None,
        last_seq: None,
        payload,
        error: None,
    }
}

/// The entries queued on `stream`, as anyone who can read Redis sees them
/// (Redis queues hold JSON envelopes, format version 2), paired with their
/// decoded envelope.
///
/// # Panics
/// When Redis cannot be read.
pub fn queued(probe: &Probe, stream: &str) -> Vec<(StreamEntry, Option<Envelope>)> {
    probe
        .xrange(stream)
        .unwrap_or_else(|e| panic!("XRANGE {stream}: {e}"))
        .into_iter()
        .map(|(_, fields)| {
            let entry =
                StreamEntry::from_fields(fields.into_iter().map(|(f, v)| (field_name(&f), v)));
            let env = sluice_platform::codec::decode(&entry.v, &entry.m).ok();
            (entry, env)
        })
        .collect()
}

/// The static name of a stream entry field (`from_fields` keeps only these).
fn field_name(f: &[u8]) -> &'static [u8] {
    match f {
        b"v" => b"v",
        b"k" => b"k",
        b"m" => b"m",
        b"s" => b"s",
        _ => b"",
    }
}
