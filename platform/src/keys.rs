//! The Redis key layout of DESIGN §5.
//!
//! Every key of pipeline `p` in namespace `ns` carries the hash tag `{ns/p}`,
//! so one pipeline lives in one Redis Cluster slot (multi-key transactions
//! work) and equally named pipelines in different namespaces never share keys.

/// Key names of one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys of pipeline `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            prefix: format!("sluice:{{{namespace}/{name}}}"),
        }
    }

    /// `sluice:{ns/p}:q:<group>`: work for a worker group.
    pub fn queue(&self, group: &str) -> String {
        self.under(&[":q:", group])
    }

    /// `sluice:{ns/p}:r:<ingress-id>`: replies for one ingress instance.
    pub fn reply(&self, ingress_id: &str) -> String {
        self.under(&[":r:", ingress_id])
    }

    /// `sluice:{ns/p}:n:<group>:<kid>:<nonce>`: replay guard of one
    /// envelope, under its destination group (so a per-group ACL pattern
    /// covers exactly that group's nonces).
    pub fn nonce(&self, group: &str, kid: &str, nonce: &str) -> String {
        self.under(&[":n:", group, ":", kid, ":", nonce])
    }

    /// `sluice:{ns/p}:n:<group>:`: what every nonce of `group` starts with.
    pub fn nonce_prefix(&self, group: &str) -> String {
        self.under(&[":n:", group, ":"])
    }

    /// `sluice:{ns/p}:i:<interface>:<sha256(key)>`: a caller's
    /// `Idempotency-Key` on one interface, and where its answer is.
    pub fn idempotency(&self, interface: &str, key_digest: &str) -> String {
        self.under(&[":i:", interface, ":", key_digest])
    }

    /// `sluice:{ns/p}:dlq`: envelopes past `maxDeliveries`.
    pub fn dead_letter(&self) -> String {
        self.under(&[":dlq"])
    }

    /// `sluice:{ns/p}:paused`: present while the pipeline is paused
    /// (`spec.paused`); written only by the operator, read by every process
    /// of the pipeline ([`crate::pause`]).
    pub fn paused(&self) -> String {
        self.under(&[":paused"])
    }

    /// The prefix, then `parts`: every key name is joined this one way,
    /// without the formatting machinery (a request makes several).
    fn under(&self, parts: &[&str]) -> String {
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        let mut key = String::with_capacity(self.prefix.len() + len);
        key.push_str(&self.prefix);
        for p in parts {
            key.push_str(p);
        }
        key
    }

    /// `ns/p`, as carried in envelopes.
    pub fn pipeline(&self) -> &str {
        let inner = self.prefix.strip_prefix("sluice:{").unwrap_or(&self.prefix);
        inner.strip_suffix('}').unwrap_or(inner)
    }
}

/// The consumer group every queue stream uses.
pub const CONSUMER_GROUP: &str = "sluice";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let k = Keys::new("prod", "enrich");
        assert_eq!(k.queue("cpu"), "sluice:{prod/enrich}:q:cpu");
        assert_eq!(k.reply("web-1"), "sluice:{prod/enrich}:r:web-1");
        assert_eq!(
            k.nonce("cpu", "k1", "abc"),
            "sluice:{prod/enrich}:n:cpu:k1:abc"
        );
        assert_eq!(k.dead_letter(), "sluice:{prod/enrich}:dlq");
        assert_eq!(k.paused(), "sluice:{prod/enrich}:paused");
        assert_eq!(
            k.idempotency("api", "ab12"),
            "sluice:{prod/enrich}:i:api:ab12"
        );
        assert_eq!(k.nonce_prefix("cpu"), "sluice:{prod/enrich}:n:cpu:");
        assert_eq!(k.pipeline(), "prod/enrich");
        assert!(k
            .nonce("cpu", "k1", "abc")
            .starts_with(&k.nonce_prefix("cpu")));
    }

    #[test]
    fn same_name_in_two_namespaces_never_shares_keys() {
        assert_ne!(
            Keys::new("a", "p").queue("g"),
            Keys::new("b", "p").queue("g")
        );
    }
}
