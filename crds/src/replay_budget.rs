//! How many replay-guard nonces one ingress may leave in managed Redis.
//!
//! Every envelope a worker takes from a queue claims one nonce key in Redis
//! (`sluice:{ns/p}:n:<group>:<kid>:<nonce>`), kept until the envelope's
//! deadline plus `security.clockSkew`. Their number is rate × window, and
//! under `maxmemory-policy noeviction` a Redis full of them refuses the
//! writes that carry work. So the ingress counts the nonces its admitted
//! requests may still hold and sheds load (503 `overloaded`) before they
//! would outgrow their share of `redis.maxMemory`:
//!
//! ```text
//! share   = max(maxMemory − worker groups × maxQueueBytes − reserve, maxMemory / 4)
//! budget  = share / (key length + per-key overhead) / ingress replicas   (nonces)
//! request = nonces it may claim: worker-group nodes on its longest path
//! ```
//!
//! The ingress replicas are the most the ingress group may run
//! (`autoscale.maxReplicas`, else `replicas`), so the share holds at any
//! scale. External Redis has no budget: its size is not the pipeline's to
//! know (docs/operator.md says how to size it).
//!
//! This module only computes; the web ingress does the counting.

use crate::types::{GroupRole, RedisMode, StreamPipelineSpec};
use crate::units::parse_size;

/// Default `redis.maxMemory`, in bytes.
pub const DEFAULT_MAX_MEMORY: u64 = 256 << 20;

/// Redis memory kept for everything else that is not a queue or a nonce:
/// reply streams (at most a few hundred read replies per ingress), the
/// dead-letter stream, client buffers.
pub const RESERVE_BYTES: u64 = 32 << 20;

/// Redis's memory per nonce key beyond the key's own bytes, measured as the
/// growth of `used_memory` over 200,000 keys written as the guard writes
/// them (`SET k <entry id> NX PX …`, redis 7.0, jemalloc): the dict entry,
/// the key and value objects, the expiry entry and allocator rounding. It
/// was 139–155 bytes for keys of 83–202 bytes (`MEMORY USAGE` reports
/// about 60 bytes less: it leaves out the expiry entry and the buckets).
pub const NONCE_OVERHEAD_BYTES: u64 = 160;

/// Length of a generated key id (`k<unix seconds>-<12 hex>`) with room to
/// spare, and of a nonce (16 random bytes in hex).
const KID_BYTES: u64 = 32;
const NONCE_BYTES: u64 = 32;

/// `redis.maxMemory` of the spec in bytes, or the default. Validation has
/// refused what does not parse.
pub fn max_memory(spec: &StreamPipelineSpec) -> u64 {
    spec.redis
        .as_ref()
        .and_then(|r| r.max_memory.as_deref())
        .and_then(|m| parse_size(m).ok())
        .unwrap_or(DEFAULT_MAX_MEMORY)
}

/// Bytes of Redis memory one nonce of `group` takes in pipeline
/// `namespace/name`.
pub fn nonce_bytes(namespace: &str, name: &str, group: &str) -> u64 {
    // sluice:{<ns>/<name>}:n:<group>:<kid>:<nonce>
    let key = "sluice:{".len() + namespace.len() + 1 + name.len() + "}:n:".len() + group.len() + 2;
    key as u64 + KID_BYTES + NONCE_BYTES + NONCE_OVERHEAD_BYTES
}

/// Nonces one ingress process of pipeline `namespace/name` may have
/// outstanding, with `queue_bytes` the queues' `maxQueueBytes` as
/// compiled; `None` where the pipeline's Redis is not managed (no known
/// `maxmemory`).
pub fn per_ingress(
    namespace: &str,
    name: &str,
    spec: &StreamPipelineSpec,
    queue_bytes: u64,
) -> Option<u64> {
    if spec
        .redis
        .as_ref()
        .is_some_and(|r| r.mode == RedisMode::External)
    {
        return None;
    }
    let max_memory = max_memory(spec);
    let workers = spec.groups.iter().filter(|g| g.role == GroupRole::Worker);
    let queues = queue_bytes.saturating_mul(workers.clone().count() as u64);
    let share = max_memory
        .saturating_sub(queues.saturating_add(RESERVE_BYTES))
        .max(max_memory / 4);
    let per_nonce = workers
        .map(|g| nonce_bytes(namespace, name, &g.name))
        .max()
        .unwrap_or(nonce_bytes(namespace, name, ""));
    let replicas = spec
        .groups
        .iter()
        .find(|g| g.role == GroupRole::Ingress)
        .map(|g| match &g.autoscale {
            Some(a) => a.max_replicas,
            None => g.replicas.unwrap_or(1),
        })
        .unwrap_or(1);
    let replicas = u64::try_from(replicas).unwrap_or(1).max(1);
    Some(share / per_nonce / replicas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_manifest;
    use crate::plan::Plan;

    fn plan(extra: &str, web: &str) -> Plan {
        let yaml = format!(
            r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: {{ name: hello, namespace: default }}
spec:
  interfaces:
    - {{ name: hello, kind: http, path: /v1/hello, entry: greet }}
  groups:
    - {{ name: web, role: ingress{web} }}
    - {{ name: work, role: worker }}
  nodes:
    - {{ name: greet, group: work, uses: builtin/json-map, with: {{ template: {{ a: 1 }} }} }}
{extra}"#
        );
        parse_manifest("test", &yaml).unwrap().1
    }

    #[test]
    fn the_default_budget_is_what_is_left_beside_the_queues() {
        let p = plan("", "");
        // `sluice:{default/hello}:n:work:` + kid + `:` + nonce
        let per = nonce_bytes(&p.id.namespace, &p.id.name, "work");
        assert_eq!(per, 30 + 32 + 1 + 32 + 160);
        let share = (256u64 << 20) - (64 << 20) - (32 << 20);
        assert_eq!(p.replay_budget, Some(share / per));
    }

    #[test]
    fn the_budget_is_shared_by_the_most_ingress_replicas() {
        let one = plan("", "").replay_budget.unwrap();
        assert_eq!(plan("", ", replicas: 3").replay_budget, Some(one / 3));
    }

    #[test]
    fn queues_larger_than_memory_leave_a_quarter_for_nonces() {
        let p = plan(
            "  redis: { maxMemory: 64Mi }\n  limits: { maxQueueBytes: 1Gi }\n",
            "",
        );
        assert_eq!(
            p.replay_budget,
            Some((16u64 << 20) / nonce_bytes(&p.id.namespace, &p.id.name, "work"))
        );
    }

    #[test]
    fn external_redis_has_no_budget() {
        let p = plan(
            "  redis: { mode: external, urlSecretRef: { name: r, key: url } }\n",
            "",
        );
        assert_eq!(p.replay_budget, None);
    }
}
