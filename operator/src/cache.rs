//! Watch caches of the objects the operator owns: a reconcile reads its
//! pipeline's children from memory instead of listing every owned kind.
//!
//! ```text
//! watch <owned kind>, managed-by=sluice-operator ─▶ KindStore ◀── reconcile reads
//!                          Deployments, StatefulSets ─┴─▶ owner's ObjectRef ─▶ controller trigger
//! ```
//!
//! One watch per owned kind and watched scope (all namespaces, or each
//! namespace of `--namespaces`). The watches select
//! `app.kubernetes.io/managed-by=sluice-operator`, so unrelated objects never
//! enter memory; objects are kept as JSON text without `managedFields`
//! (a parsed object takes several times the memory of its text, and a
//! reconcile parses only its own pipeline's few objects). Changes of
//! Deployments and StatefulSets — the children whose status the pipeline
//! reports — trigger a reconcile of their owner *after* the store holds them,
//! so a reconcile never reads an older copy than the change that woke it.
//!
//! A cache may still lag the API server by a watch event, so:
//! - a kind whose cache has not finished its first list (at start) is
//!   listed from the API server, as it would be without caches; an optional
//!   kind the API server does not serve (KEDA's, where KEDA is not
//!   installed) has no objects, until its watch finds it served;
//! - an object this operator deleted is ignored by readers until its delete
//!   event arrives (tombstones by uid), so a stale copy never causes a second
//!   delete or a second StatefulSet recreation;
//! - a stale copy of an object applied a moment ago at worst makes the next
//!   reconcile apply the same body again, which changes nothing.
//!
//! Must not: cache Secrets (DESIGN §4: no list or watch of Secrets; they are
//! read by name), or hold objects the operator does not manage.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{self, BoxStream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use parking_lot::{Mutex, RwLock};
use sluice_crds::StreamPipeline;
use tracing::{debug, warn};

use crate::labels;
use crate::resources::{owned_kinds, OwnedKind};

/// Tombstones kept at most; past this the oldest knowledge is dropped (a
/// delete event lost to a watch gap never removes its tombstone).
const MAX_TOMBSTONES: usize = 4096;

/// The cached owned objects of every watched scope.
pub struct OwnedCache {
    /// Per scope (`None` = all namespaces), one store per [`owned_kinds`]
    /// entry, in that order.
    scopes: Vec<(Option<String>, Vec<Arc<KindStore>>)>,
    /// uids of objects this operator deleted whose delete event has not
    /// arrived yet.
    deleted: Arc<Mutex<HashSet<String>>>,
}

/// What keeps one scope's caches filled, for its controller to drive.
pub struct Feeds {
    /// The namespace, or `None` for all.
    pub scope: Option<String>,
    /// Owners of changed Deployments and StatefulSets, after the change is
    /// in the cache.
    pub triggers: BoxStream<'static, ObjectRef<StreamPipeline>>,
    /// Drives the caches of the other kinds; never ends.
    pub background: BoxFuture<'static, ()>,
}

/// One kind's objects in one scope, kept as JSON text: a parsed object
/// takes several times the memory of its text, and a reconcile parses only
/// its own pipeline's few objects.
#[derive(Default)]
struct KindStore {
    state: RwLock<KindState>,
}

#[derive(Default)]
struct KindState {
    /// By (namespace, name); `None` until the first list completed.
    objects: Option<HashMap<(String, String), Cached>>,
    /// A list in progress (the first, or a re-list after a watch gap); it
    /// replaces `objects` when complete.
    listing: HashMap<(String, String), Cached>,
    /// The API server does not serve the kind (KEDA not installed): there
    /// is nothing of it.
    absent: bool,
}

struct Cached {
    pipeline: Option<String>,
    uid: Option<String>,
    json: Box<str>,
}

impl Cached {
    fn of(o: &DynamicObject) -> Option<((String, String), Self)> {
        let mut o = o.clone();
        o.metadata.managed_fields = None;
        let key = (o.metadata.namespace.clone()?, o.metadata.name.clone()?);
        let json = serde_json::to_string(&o).ok()?.into_boxed_str();
        Some((
            key,
            Self {
                pipeline: o.labels().get(labels::PIPELINE).cloned(),
                uid: o.metadata.uid.clone(),
                json,
            },
        ))
    }
}

impl KindStore {
    fn apply(&self, e: &Event<DynamicObject>) {
        let mut state = self.state.write();
        match e {
            Event::Init => state.listing.clear(),
            Event::InitApply(o) => {
                if let Some((key, c)) = Cached::of(o) {
                    state.listing.insert(key, c);
                }
            }
            Event::InitDone => {
                state.objects = Some(std::mem::take(&mut state.listing));
                state.absent = false;
            }
            Event::Apply(o) => {
                if let (Some((key, c)), Some(objects)) = (Cached::of(o), state.objects.as_mut()) {
                    objects.insert(key, c);
                }
            }
            Event::Delete(o) => {
                if let (Some(ns), Some(name), Some(objects)) = (
                    o.metadata.namespace.clone(),
                    o.metadata.name.clone(),
                    state.objects.as_mut(),
                ) {
                    objects.remove(&(ns, name));
                }
            }
        }
    }

    /// The kind is not served: forget what was cached.
    fn absent(&self) {
        let mut state = self.state.write();
        state.objects = None;
        state.absent = true;
    }

    /// Objects in `ns` labelled for `pipeline`, except those whose uid is
    /// in `deleted`; `None` when not known.
    fn read(
        &self,
        ns: &str,
        pipeline: &str,
        deleted: &HashSet<String>,
    ) -> Option<Vec<DynamicObject>> {
        let state = self.state.read();
        let Some(objects) = &state.objects else {
            return state.absent.then(Vec::new);
        };
        objects
            .iter()
            .filter(|((o_ns, _), c)| {
                o_ns == ns
                    && c.pipeline.as_deref() == Some(pipeline)
                    && !c.uid.as_ref().is_some_and(|u| deleted.contains(u))
            })
            // An unreadable copy (never expected) sends the reader to the
            // API server instead.
            .map(|(_, c)| serde_json::from_str(&c.json).ok())
            .collect()
    }
}

pub(crate) fn api_resource(k: &OwnedKind) -> ApiResource {
    ApiResource {
        group: k.group.into(),
        version: k.version.into(),
        api_version: k.api_version.into(),
        kind: k.kind.into(),
        plural: k.plural.into(),
    }
}

/// Whether changes of `k` wake the owning pipeline's reconcile.
fn triggers(k: &OwnedKind) -> bool {
    matches!(k.kind, "Deployment" | "StatefulSet")
}

impl OwnedCache {
    /// Creates the caches of every scope and the streams that fill them.
    /// Nothing is read until the [`Feeds`] are polled.
    pub fn start(client: &Client, namespaces: &[String]) -> (Arc<Self>, Vec<Feeds>) {
        let scopes: Vec<Option<String>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().cloned().map(Some).collect()
        };
        let deleted = Arc::new(Mutex::new(HashSet::new()));
        let config = watcher::Config::default().labels(&format!(
            "{}={}",
            labels::MANAGED_BY,
            labels::MANAGER
        ));
        let mut stores = Vec::new();
        let mut feeds = Vec::new();
        for scope in scopes {
            let mut scope_stores = Vec::new();
            let mut trigger_streams = Vec::new();
            let mut other_streams = Vec::new();
            for k in owned_kinds() {
                let ar = api_resource(k);
                let api: Api<DynamicObject> = match &scope {
                    None => Api::all_with(client.clone(), &ar),
                    Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                };
                let store = Arc::new(KindStore::default());
                scope_stores.push(store.clone());
                let deleted = deleted.clone();
                let kind: &'static OwnedKind = k;
                let events = watcher::watcher(api, config.clone())
                    .default_backoff()
                    .filter_map(move |e| {
                        let out = match e {
                            Ok(e) => {
                                store.apply(&e);
                                if let Event::Delete(o) = &e {
                                    if let Some(uid) = &o.metadata.uid {
                                        deleted.lock().remove(uid);
                                    }
                                }
                                Some(e)
                            }
                            Err(e) => {
                                if kind.optional() && not_served(&e) {
                                    store.absent();
                                }
                                log_watch_error(kind, &e);
                                None
                            }
                        };
                        futures::future::ready(out)
                    });
                if triggers(k) {
                    trigger_streams.push(events.flat_map(|e| stream::iter(owners(&e))).boxed());
                } else {
                    other_streams.push(events.map(|_| ()).boxed());
                }
            }
            stores.push((scope.clone(), scope_stores));
            feeds.push(Feeds {
                scope,
                triggers: stream::select_all(trigger_streams).boxed(),
                background: stream::select_all(other_streams)
                    .for_each(|()| futures::future::ready(()))
                    .boxed(),
            });
        }
        let cache = Arc::new(Self {
            scopes: stores,
            deleted,
        });
        (cache, feeds)
    }

    /// The cached objects of `kind` in `ns` labelled for `pipeline`: empty
    /// when the API server does not serve the kind, `None` when that cache
    /// has not finished its first list.
    pub fn objects(
        &self,
        kind: &OwnedKind,
        ns: &str,
        pipeline: &str,
    ) -> Option<Vec<DynamicObject>> {
        let index = owned_kinds().iter().position(|k| k == kind)?;
        let (_, stores) = self
            .scopes
            .iter()
            .find(|(scope, _)| scope.as_deref().is_none_or(|s| s == ns))?;
        stores[index].read(ns, pipeline, &self.deleted.lock())
    }

    /// Records that the object with `uid` was deleted: readers ignore a
    /// cached copy of it from now on.
    pub fn deleted(&self, uid: &str) {
        let mut deleted = self.deleted.lock();
        if deleted.len() >= MAX_TOMBSTONES {
            deleted.clear();
        }
        deleted.insert(uid.to_string());
    }
}

/// The StreamPipelines controlling the objects an event touched.
fn owners(e: &Event<DynamicObject>) -> Vec<ObjectRef<StreamPipeline>> {
    let o = match e {
        Event::Apply(o) | Event::Delete(o) | Event::InitApply(o) => o,
        Event::Init | Event::InitDone => return Vec::new(),
    };
    let Some(ns) = o.metadata.namespace.as_deref() else {
        return Vec::new();
    };
    let group = StreamPipeline::group(&());
    o.metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.controller == Some(true) && r.kind == StreamPipeline::kind(&()))
        .filter(|r| r.api_version.split('/').next() == Some(group.as_ref()))
        .map(|r| ObjectRef::new(&r.name).within(ns))
        .collect()
}

/// Whether `e` says the API server does not serve the kind at all.
fn not_served(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(r))
            | watcher::Error::WatchFailed(kube::Error::Api(r))
            if r.code == 404
    )
}

fn log_watch_error(kind: &OwnedKind, e: &watcher::Error) {
    if not_served(e) && kind.optional() {
        // KEDA not installed: there is nothing of it; status says so.
        debug!(kind = kind.kind, "owned kind not served");
    } else {
        warn!(kind = kind.kind, error = %e, "watch of owned objects failed; retrying");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owned_by(refs: Vec<OwnerReference>) -> DynamicObject {
        let mut o = DynamicObject::new(
            "orders-web",
            &api_resource(&crate::resources::OwnedKind::of::<
                k8s_openapi::api::apps::v1::Deployment,
            >()),
        )
        .within("shop");
        o.metadata.owner_references = Some(refs);
        o
    }

    fn reference(api_version: &str, kind: &str, name: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller: Some(controller),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn only_the_controlling_stream_pipeline_is_woken() {
        let api_version = StreamPipeline::api_version(&()).to_string();
        let o = owned_by(vec![
            reference(&api_version, "StreamPipeline", "orders", true),
            reference(&api_version, "StreamPipeline", "other", false),
            reference("apps/v1", "ReplicaSet", "rs", true),
            reference("example.com/v1", "StreamPipeline", "foreign", true),
        ]);
        let woken = owners(&Event::Apply(o.clone()));
        assert_eq!(woken, vec![ObjectRef::new("orders").within("shop")]);
        assert_eq!(owners(&Event::Delete(o)), woken);
        assert!(owners(&Event::InitDone).is_empty());
    }

    fn object(ns: &str, name: &str, pipeline: &str, uid: &str) -> DynamicObject {
        let mut o = DynamicObject::new(
            name,
            &api_resource(&OwnedKind::of::<k8s_openapi::api::core::v1::Service>()),
        )
        .within(ns);
        o.metadata.uid = Some(uid.into());
        o.metadata.labels = Some([(labels::PIPELINE.to_string(), pipeline.to_string())].into());
        o.metadata.managed_fields = Some(vec![Default::default()]);
        o
    }

    fn names(objects: Option<Vec<DynamicObject>>) -> Option<Vec<String>> {
        objects.map(|os| {
            let mut n: Vec<String> = os.iter().map(ResourceExt::name_any).collect();
            n.sort();
            n
        })
    }

    #[test]
    fn a_store_answers_after_its_first_list_with_its_pipelines_objects() {
        let store = KindStore::default();
        let none = HashSet::new();
        assert_eq!(store.read("shop", "orders", &none), None);
        store.apply(&Event::Init);
        store.apply(&Event::InitApply(object(
            "shop",
            "orders-web",
            "orders",
            "1",
        )));
        store.apply(&Event::InitApply(object("shop", "other-web", "other", "2")));
        store.apply(&Event::InitApply(object(
            "lab",
            "orders-web",
            "orders",
            "3",
        )));
        // Still listing: not known yet.
        assert_eq!(store.read("shop", "orders", &none), None);
        store.apply(&Event::InitDone);
        assert_eq!(
            names(store.read("shop", "orders", &none)),
            Some(vec!["orders-web".into()])
        );
        store.apply(&Event::Apply(object("shop", "orders-io", "orders", "4")));
        store.apply(&Event::Delete(object("shop", "orders-web", "orders", "1")));
        assert_eq!(
            names(store.read("shop", "orders", &none)),
            Some(vec!["orders-io".into()])
        );
        // managedFields are not kept.
        let read = store.read("shop", "orders", &none).unwrap();
        assert_eq!(read[0].metadata.managed_fields, None);
        // What this operator deleted is not seen, even before its event.
        let deleted = HashSet::from(["4".to_string()]);
        assert_eq!(names(store.read("shop", "orders", &deleted)), Some(vec![]));
    }

    #[test]
    fn a_relist_replaces_the_objects_only_when_complete() {
        let store = KindStore::default();
        let none = HashSet::new();
        store.apply(&Event::Init);
        store.apply(&Event::InitApply(object("shop", "a", "orders", "1")));
        store.apply(&Event::InitDone);
        // A watch gap: the re-list is in progress, the old objects stand.
        store.apply(&Event::Init);
        store.apply(&Event::InitApply(object("shop", "b", "orders", "2")));
        assert_eq!(
            names(store.read("shop", "orders", &none)),
            Some(vec!["a".into()])
        );
        store.apply(&Event::InitDone);
        assert_eq!(
            names(store.read("shop", "orders", &none)),
            Some(vec!["b".into()])
        );
    }

    #[test]
    fn a_kind_not_served_has_no_objects_until_it_is_listed() {
        let store = KindStore::default();
        let none = HashSet::new();
        store.absent();
        assert_eq!(names(store.read("shop", "orders", &none)), Some(vec![]));
        store.apply(&Event::Init);
        store.apply(&Event::InitApply(object("shop", "a", "orders", "1")));
        store.apply(&Event::InitDone);
        assert_eq!(
            names(store.read("shop", "orders", &none)),
            Some(vec!["a".into()])
        );
    }

    #[test]
    fn tombstones_are_bounded() {
        let cache = OwnedCache {
            scopes: Vec::new(),
            deleted: Arc::default(),
        };
        for i in 0..MAX_TOMBSTONES + 10 {
            cache.deleted(&i.to_string());
        }
        assert!(cache.deleted.lock().len() <= MAX_TOMBSTONES);
        assert!(cache
            .deleted
            .lock()
            .contains(&(MAX_TOMBSTONES + 9).to_string()));
    }
}
