//! Which derived keys the processes of each group hold (docs/wire-format.md,
//! "What each role holds"): the request keys of the groups whose requests
//! they verify or send, and the reply keys of the groups they reply as or
//! take replies from. The operator renders each role's key directory from
//! it; each runtime process checks at start that its directory holds them.

use std::collections::BTreeSet;

use crate::plan::Plan;
use crate::types::GroupRole;

/// The derived keys one group's processes need, by the group each key is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyNeeds {
    /// Groups whose request key is held: to verify the requests a worker
    /// group receives (its own), or to sign those it sends (the groups its
    /// nodes' edges lead to, and for the ingress the interfaces' entry groups).
    pub request: BTreeSet<String>,
    /// Groups whose reply key is held: to sign a worker group's own replies,
    /// or, for the ingress, to verify the replies it takes.
    pub reply: BTreeSet<String>,
}

impl KeyNeeds {
    /// Adds `other`'s keys to these.
    pub fn extend(&mut self, other: KeyNeeds) {
        self.request.extend(other.request);
        self.reply.extend(other.reply);
    }
}

impl Plan {
    /// The keys a process running `group` needs; none for a group that is
    /// not in the plan.
    ///
    /// - A worker group verifies requests with its own request key, signs
    ///   the requests its edges send with each destination's request key,
    ///   and signs replies with its own reply key when it lies on some
    ///   interface's path (it answers, or fails a request it holds).
    /// - The ingress group signs requests for each interface's entry group
    ///   and for its own nodes' edges (and with its own request key the
    ///   dead-letter record of a request whose ingress node crashed), and
    ///   verifies replies with the reply key of every group on an
    ///   interface's path.
    pub fn key_needs(&self, group: &str) -> KeyNeeds {
        let mut needs = KeyNeeds::default();
        let Some(g) = self.groups.get(group) else {
            return needs;
        };
        let sends_to = g
            .nodes
            .iter()
            .filter_map(|n| self.nodes.get(n))
            .flat_map(|n| n.next.targets())
            .filter_map(|t| self.nodes.get(t))
            .map(|t| &t.group)
            .filter(|d| *d != group);
        needs.request.extend(sends_to.cloned());
        match g.role {
            GroupRole::Worker => {
                needs.request.insert(group.to_string());
                // A tcp worker proves its group to the ingress's hub with a
                // key only the group and the ingress hold: its reply key
                // (a request key is also held by the groups sending to it).
                // Replies it could sign with it are still refused unless
                // its group answers the interface ("Who may answer").
                if self.backend == crate::BackendKind::Tcp
                    || self
                        .interfaces
                        .iter()
                        .any(|i| i.path_groups.iter().any(|p| p == group))
                {
                    needs.reply.insert(group.to_string());
                }
            }
            GroupRole::Ingress => {
                for i in &self.interfaces {
                    for entry in i.entries().into_iter().filter_map(|e| self.nodes.get(e)) {
                        if entry.group != group {
                            needs.request.insert(entry.group.clone());
                        }
                    }
                    needs.reply.extend(i.path_groups.iter().cloned());
                }
                if !g.nodes.is_empty() {
                    needs.request.insert(group.to_string());
                }
            }
        }
        needs
    }

    /// The keys of a process running every group: an ingress with memory
    /// backends, whose worker groups run inline.
    pub fn key_needs_of_all(&self) -> KeyNeeds {
        let mut needs = KeyNeeds::default();
        for g in self.groups.keys() {
            needs.extend(self.key_needs(g));
        }
        needs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The orders graph plus an interface answered by another group:
    ///
    /// ```text
    /// orders: web classify ─▶ cpu rush/standard ─▶ cpu price ─▶ io summarize
    /// audit:  other audit
    /// ```
    const MANIFEST: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: orders, namespace: shop }
spec:
  interfaces:
    - { name: orders, path: /v1/orders, entry: classify }
    - { name: audit, path: /v1/audit, entry: audit }
  groups:
    - { name: web, role: ingress }
    - { name: cpu, role: worker }
    - { name: io, role: worker }
    - { name: other, role: worker }
  nodes:
    - { name: classify, group: web, uses: builtin/route, with: { field: /type }, next: [ { when: priority, to: rush }, { to: standard } ] }
    - { name: rush, group: cpu, uses: builtin/echo, next: summarize }
    - { name: standard, group: cpu, uses: builtin/echo, next: price }
    - { name: price, group: cpu, uses: builtin/echo, next: summarize }
    - { name: summarize, group: io, uses: builtin/echo }
    - { name: audit, group: other, uses: builtin/echo }
"#;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn plan() -> Plan {
        crate::parse_manifest("orders.yaml", MANIFEST).unwrap().1
    }

    #[test]
    fn interfaces_know_the_groups_that_answer_them() {
        let plan = plan();
        let it = |name: &str| plan.interfaces.iter().find(|i| i.name == name).unwrap();
        assert_eq!(it("orders").terminal_groups, vec!["io"]);
        assert_eq!(it("orders").path_groups, vec!["cpu", "io"]);
        assert_eq!(it("audit").terminal_groups, vec!["other"]);
    }

    #[test]
    fn each_role_needs_the_keys_of_its_edges_and_answers_only() {
        let plan = plan();
        let needs = |g| plan.key_needs(g);
        assert_eq!(
            needs("web"),
            KeyNeeds {
                request: set(&["cpu", "other", "web"]),
                reply: set(&["cpu", "io", "other"]),
            }
        );
        assert_eq!(
            needs("cpu"),
            KeyNeeds {
                request: set(&["cpu", "io"]),
                reply: set(&["cpu"]),
            }
        );
        assert_eq!(
            needs("io"),
            KeyNeeds {
                request: set(&["io"]),
                reply: set(&["io"]),
            }
        );
        assert_eq!(
            needs("other"),
            KeyNeeds {
                request: set(&["other"]),
                reply: set(&["other"]),
            }
        );
        assert_eq!(needs("nope"), KeyNeeds::default());
        assert_eq!(
            plan.key_needs_of_all(),
            KeyNeeds {
                request: set(&["cpu", "io", "other", "web"]),
                reply: set(&["cpu", "io", "other"]),
            }
        );
    }
}
