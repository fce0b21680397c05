//! The StreamPipelines the controllers watch, kept in memory and shared
//! read-only with the autoscaler, so its every-interval evaluation reads
//! memory instead of listing every pipeline from the API server.
//!
//! ```text
//! controller watch (per scope) ─▶ Writer ─▶ Store ◀── controller (reconcile requests)
//!                                              └───── autoscaler: snapshot() each tick
//! ```
//!
//! One store per watched scope (all namespaces, or each namespace of
//! `--namespaces`), the same scopes as the owned-object caches. A scope
//! whose first list has not finished yet makes [`PipelineStores::snapshot`]
//! answer `None`: the reader lists from the API server then, as it would
//! without the stores.
//!
//! Must not: write; hold anything but StreamPipelines.

use std::sync::Arc;

use futures::FutureExt;
use kube::runtime::reflector::{self, store::Writer, Store};

use crate::object::PipelineObject;

/// The pipeline stores of every watched scope.
pub struct PipelineStores {
    scopes: Vec<(Option<String>, Store<PipelineObject>)>,
}

/// The writing end of one scope's store, for that scope's controller.
pub struct ScopeWriter {
    /// The namespace, or `None` for all.
    pub scope: Option<String>,
    pub writer: Writer<PipelineObject>,
}

impl PipelineStores {
    /// Empty stores for `namespaces` (empty: one store over all
    /// namespaces), and their writers.
    #[must_use]
    pub fn new(namespaces: &[String]) -> (Arc<Self>, Vec<ScopeWriter>) {
        let scopes: Vec<Option<String>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().cloned().map(Some).collect()
        };
        let mut readers = Vec::new();
        let mut writers = Vec::new();
        for scope in scopes {
            let (reader, writer) = reflector::store();
            readers.push((scope.clone(), reader));
            writers.push(ScopeWriter { scope, writer });
        }
        (Arc::new(Self { scopes: readers }), writers)
    }

    /// Every pipeline of every scope, or `None` while any scope has not
    /// finished its first list.
    #[must_use]
    pub fn snapshot(&self) -> Option<Vec<Arc<PipelineObject>>> {
        let mut all = Vec::new();
        for (_, store) in &self.scopes {
            // Ready is a latch: once the first list is in, it stays ready.
            if !matches!(store.wait_until_ready().now_or_never(), Some(Ok(()))) {
                return None;
            }
            all.extend(store.state());
        }
        Some(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn pipeline(ns: &str, name: &str) -> PipelineObject {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "StreamPipeline",
            "metadata": {"name": name, "namespace": ns, "uid": format!("{ns}-{name}")},
            "spec": {}
        }))
        .unwrap()
    }

    #[test]
    fn a_snapshot_waits_for_every_scope_first_list() {
        let (stores, mut writers) = PipelineStores::new(&["a".into(), "b".into()]);
        assert!(stores.snapshot().is_none(), "nothing listed yet");
        writers[0].writer.apply_watcher_event(&Event::Init);
        writers[0]
            .writer
            .apply_watcher_event(&Event::InitApply(pipeline("a", "p")));
        writers[0].writer.apply_watcher_event(&Event::InitDone);
        assert!(stores.snapshot().is_none(), "scope b has not listed");
        writers[1].writer.apply_watcher_event(&Event::Init);
        writers[1].writer.apply_watcher_event(&Event::InitDone);
        let names: Vec<String> = stores
            .snapshot()
            .unwrap()
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["p"]);
        writers[1]
            .writer
            .apply_watcher_event(&Event::Apply(pipeline("b", "q")));
        assert_eq!(stores.snapshot().unwrap().len(), 2);
    }
}
