//! The plan generation: a short digest of a pipeline's graph that every
//! request envelope carries (`plan`, docs/wire-format.md), so a worker that
//! reads an entry for a node it does not run can tell a request of another
//! generation of the graph (a spec change rolling out: give it back for a
//! worker of that generation) from a request sent to the wrong group (refuse
//! it).
//!
//! Only what decides where a request goes is digested: each node's group
//! and edges, each interface's entry nodes (a graphql interface's
//! operations' too), each group's role. A change to a
//! node's configuration, a limit or an interface's timeout keeps the
//! generation: entries of before and after run alike on any worker.
//!
//! Every process computes it from the plan it compiled, so the processes of
//! one manifest agree without being told; nothing here is secret.

use sha2::{Digest as _, Sha256};

use crate::plan::{Next, Plan};
use crate::types::GroupRole;

/// Hex characters of a generation: 64 bits of SHA-256.
pub const GENERATION_LEN: usize = 16;

impl Plan {
    /// This plan's generation: 16 lowercase hex characters.
    pub fn generation(&self) -> String {
        let mut d = Fields::new();
        d.text("sluice plan generation 2");
        for g in self.groups.values() {
            d.text("group");
            d.text(&g.name);
            d.text(match g.role {
                GroupRole::Ingress => "ingress",
                GroupRole::Worker => "worker",
            });
        }
        for n in self.nodes.values() {
            d.text("node");
            d.text(&n.name);
            d.text(&n.group);
            match &n.next {
                Next::Terminal => d.text("terminal"),
                Next::To(to) => {
                    d.text("to");
                    d.text(to);
                }
                Next::Routes { routes, default } => {
                    d.text("routes");
                    d.count(routes.len());
                    for (when, to) in routes {
                        d.text(when);
                        d.text(to);
                    }
                    match default {
                        Some(to) => {
                            d.text("default");
                            d.text(to);
                        }
                        None => d.text("no default"),
                    }
                }
            }
        }
        for i in &self.interfaces {
            d.text("interface");
            d.text(&i.name);
            let entries = i.entries();
            d.count(entries.len());
            for e in entries {
                d.text(e);
            }
        }
        d.finish()
    }
}

/// Length-prefixed fields, so no two sequences of strings digest alike.
struct Fields(Sha256);

impl Fields {
    fn new() -> Self {
        Self(Sha256::new())
    }

    fn count(&mut self, n: usize) {
        self.0.update((n as u64).to_le_bytes());
    }

    fn text(&mut self, s: &str) {
        self.count(s.len());
        self.0.update(s.as_bytes());
    }

    fn finish(self) -> String {
        self.0.finalize()[..GENERATION_LEN / 2]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: orders }
spec:
  backends: { queue: redis, kv: redis, reply: redis }
  interfaces:
    - { name: orders, kind: http, path: /v1/orders, entry: classify, timeout: 5s }
  groups:
    - { name: web, role: ingress }
    - { name: cpu, role: worker }
    - { name: io, role: worker }
  nodes:
    - name: classify
      group: web
      uses: builtin/route
      with: { field: /type }
      next: [ { when: priority, to: rush }, { to: standard } ]
    - { name: rush, group: cpu, uses: builtin/echo, next: summarize }
    - { name: standard, group: cpu, uses: builtin/echo, next: price }
    - { name: price, group: cpu, uses: builtin/echo, next: summarize }
    - { name: summarize, group: io, uses: builtin/echo }
"#;

    fn generation(edit: impl Fn(&str) -> String) -> String {
        crate::parse_manifest("orders.yaml", &edit(MANIFEST))
            .unwrap()
            .1
            .generation()
    }

    #[test]
    fn is_sixteen_hex_characters_and_the_same_for_the_same_graph() {
        let g = generation(str::to_string);
        assert_eq!(g.len(), GENERATION_LEN);
        assert!(g
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(g, generation(str::to_string));
    }

    #[test]
    fn configuration_limits_and_timeouts_keep_it() {
        let g = generation(str::to_string);
        for edit in [
            MANIFEST.replace("field: /type", "field: /kind"),
            MANIFEST.replace(
                "uses: builtin/echo, next: price",
                "uses: builtin/json-map, next: price",
            ),
            MANIFEST.replace("timeout: 5s", "timeout: 9s"),
            MANIFEST.replace(
                "{ name: io, role: worker }",
                "{ name: io, role: worker, concurrency: 3 }",
            ),
        ] {
            assert_ne!(edit, MANIFEST, "the edit applies");
            assert_eq!(generation(|_| edit.clone()), g, "{edit}");
        }
    }

    #[test]
    fn a_node_moved_an_edge_changed_a_route_or_an_entry_changes_it() {
        let g = generation(str::to_string);
        let edits = [
            // `price` moves to `io`.
            MANIFEST.replace("{ name: price, group: cpu", "{ name: price, group: io"),
            // `standard` skips `price`.
            MANIFEST.replace(
                "uses: builtin/echo, next: price",
                "uses: builtin/echo, next: summarize",
            ),
            // A route's tag.
            MANIFEST.replace("when: priority", "when: urgent"),
            // The interface enters elsewhere.
            MANIFEST.replace("entry: classify", "entry: standard"),
        ];
        let mut seen = std::collections::BTreeSet::from([g]);
        for edit in edits {
            assert_ne!(edit, MANIFEST, "the edit applies");
            assert!(seen.insert(generation(|_| edit.clone())), "{edit}");
        }
    }
}
