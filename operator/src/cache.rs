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
//! - an object this operator deletes is ignored by readers from just before
//!   the request until its delete event arrives (tombstones by uid), and
//!   every delete carries the uid as a precondition, so a stale copy never
//!   deletes a successor of the same name;
//! - after a failed watch request the kind is listed from the API server
//!   until an event arrives again or a minute passes (a watch that keeps
//!   failing fails again within its 30 s backoff);
//! - a re-list after a watch gap wakes the owners of everything before and
//!   after it, once the new list is in the store;
//! - a stale copy of an object applied a moment ago at worst makes the next
//!   reconcile apply the same body again, which changes nothing.
//!
//! Must not: cache Secrets (DESIGN §4: no list or watch of Secrets; they are
//! read by name), or hold objects the operator does not manage.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{self, BoxStream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use parking_lot::{Mutex, RwLock};
use sluice_crds::StreamPipeline;

use crate::object::PipelineObject;
use tracing::{debug, warn};

use crate::labels;
use crate::render::{owned_kinds, OwnedKind};

/// Tombstones kept at most; past this the oldest knowledge is dropped (a
/// delete event lost to a watch gap never removes its tombstone).
const MAX_TOMBSTONES: usize = 4096;

/// How long after a failed watch its objects are not trusted (unless an
/// event arrives first): a watch failing for good fails again within the
/// watcher's longest backoff, 30 s, so readers keep listing meanwhile.
const DISTRUST_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// uids of objects this operator deleted whose delete event has not
/// arrived yet; the oldest is forgotten first when full.
#[derive(Debug, Default)]
pub(crate) struct Tombstones {
    by_uid: HashMap<String, u64>,
    next: u64,
}

impl Tombstones {
    fn insert(&mut self, uid: &str) {
        if self.by_uid.len() >= MAX_TOMBSTONES {
            let oldest = self
                .by_uid
                .iter()
                .min_by_key(|(_, n)| **n)
                .map(|(u, _)| u.clone());
            if let Some(u) = oldest {
                self.by_uid.remove(&u);
            }
        }
        self.next += 1;
        self.by_uid.insert(uid.to_string(), self.next);
    }

    fn remove(&mut self, uid: &str) {
        self.by_uid.remove(uid);
    }

    fn contains(&self, uid: &str) -> bool {
        self.by_uid.contains_key(uid)
    }
}

/// The cached owned objects of every watched scope.
pub struct OwnedCache {
    /// Per scope (`None` = all namespaces), one store per [`owned_kinds`]
    /// entry, in that order.
    scopes: Vec<(Option<String>, Vec<Arc<KindStore>>)>,
    /// uids of objects this operator deleted whose delete event has not
    /// arrived yet.
    deleted: Arc<Mutex<Tombstones>>,
}

/// What keeps one scope's caches filled, for its controller to drive.
pub struct Feeds {
    /// The namespace, or `None` for all.
    pub scope: Option<String>,
    /// Owners of changed Deployments and StatefulSets, after the change is
    /// in the cache.
    pub triggers: BoxStream<'static, ObjectRef<PipelineObject>>,
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
    /// When the watch last failed, if no event arrived since: the objects
    /// may be stale, so readers go to the API server for a while.
    failed_at: Option<Instant>,
}

struct Cached {
    pipeline: Option<String>,
    uid: Option<String>,
    /// The StreamPipeline controlling it.
    owner: Option<String>,
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
                owner: controller_of(&o),
                json,
            },
        ))
    }
}

impl KindStore {
    /// Applies one watch event; returns the pipelines owning what changed,
    /// now that the store holds the change. A list (first, or after a
    /// watch gap) wakes the owners of everything before and after it.
    fn apply(&self, e: &Event<DynamicObject>) -> Vec<ObjectRef<PipelineObject>> {
        let mut state = self.state.write();
        state.failed_at = None;
        match e {
            Event::Init => {
                state.listing.clear();
                Vec::new()
            }
            Event::InitApply(o) => {
                if let Some((key, c)) = Cached::of(o) {
                    state.listing.insert(key, c);
                }
                Vec::new()
            }
            Event::InitDone => {
                let listed = std::mem::take(&mut state.listing);
                let before = state.objects.replace(listed).unwrap_or_default();
                state.absent = false;
                let mut woken: Vec<_> = before
                    .iter()
                    .chain(state.objects.iter().flatten())
                    .filter_map(|((ns, _), c)| Some(ObjectRef::new(c.owner.as_ref()?).within(ns)))
                    .collect();
                woken.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
                woken.dedup();
                woken
            }
            Event::Apply(o) => {
                if let (Some((key, c)), Some(objects)) = (Cached::of(o), state.objects.as_mut()) {
                    objects.insert(key, c);
                }
                owners(o)
            }
            Event::Delete(o) => {
                if let (Some(ns), Some(name), Some(objects)) = (
                    o.metadata.namespace.clone(),
                    o.metadata.name.clone(),
                    state.objects.as_mut(),
                ) {
                    objects.remove(&(ns, name));
                }
                owners(o)
            }
        }
    }

    /// The watch failed: until an event arrives again, the objects may be
    /// stale.
    fn failed(&self) {
        self.state.write().failed_at = Some(Instant::now());
    }

    /// The kind is not served: forget what was cached.
    fn absent(&self) {
        let mut state = self.state.write();
        state.objects = None;
        state.absent = true;
    }

    /// Objects in `ns` labelled for `pipeline`, except those whose uid is
    /// in `deleted`; `None` when not known, or perhaps stale after a watch
    /// failure.
    fn read(&self, ns: &str, pipeline: &str, deleted: &Tombstones) -> Option<Vec<DynamicObject>> {
        let state = self.state.read();
        if state
            .failed_at
            .is_some_and(|t| t.elapsed() < DISTRUST_AFTER_FAILURE)
        {
            return None;
        }
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
        let deleted = Arc::new(Mutex::new(Tombstones::default()));
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
                        let woken = match e {
                            Ok(e) => {
                                let woken = store.apply(&e);
                                if let Event::Delete(o) = &e {
                                    if let Some(uid) = &o.metadata.uid {
                                        deleted.lock().remove(uid);
                                    }
                                }
                                Some(woken)
                            }
                            Err(e) => {
                                if kind.optional() && not_served(&e) {
                                    store.absent();
                                } else {
                                    store.failed();
                                }
                                log_watch_error(kind, &e);
                                None
                            }
                        };
                        futures::future::ready(woken)
                    });
                if triggers(k) {
                    trigger_streams.push(events.flat_map(stream::iter).boxed());
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

    /// Records that the object with `uid` is being deleted: readers ignore
    /// a cached copy of it from now on. Called before the request, so its
    /// delete event cannot arrive first.
    pub fn deleting(&self, uid: &str) {
        self.deleted.lock().insert(uid);
    }

    /// The delete of `uid` failed: its cached copy stands again.
    pub fn not_deleted(&self, uid: &str) {
        self.deleted.lock().remove(uid);
    }
}

/// The StreamPipeline controlling `o`, as a reconcile request.
fn owners(o: &DynamicObject) -> Vec<ObjectRef<PipelineObject>> {
    match (o.metadata.namespace.as_deref(), controller_of(o)) {
        (Some(ns), Some(owner)) => vec![ObjectRef::new(&owner).within(ns)],
        _ => Vec::new(),
    }
}

/// The name of the StreamPipeline controlling `o`, if one does.
fn controller_of(o: &DynamicObject) -> Option<String> {
    let group = StreamPipeline::group(&());
    o.metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.controller == Some(true) && r.kind == StreamPipeline::kind(&()))
        .find(|r| r.api_version.split('/').next() == Some(group.as_ref()))
        .map(|r| r.name.clone())
}

/// Whether `e` says the API server does not serve the kind at all.
fn not_served(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(r))
            | watcher::Error::WatchStartFailed(kube::Error::Api(r))
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
            &api_resource(&crate::render::OwnedKind::of::<
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
        assert_eq!(owners(&o), vec![ObjectRef::new("orders").within("shop")]);
        let store = KindStore::default();
        store.apply(&Event::Init);
        store.apply(&Event::InitDone);
        assert_eq!(store.apply(&Event::Apply(o.clone())), owners(&o));
        assert_eq!(
            store.apply(&Event::Delete(o)),
            vec![ObjectRef::new("orders").within("shop")]
        );
    }

    #[test]
    fn a_relist_wakes_the_owners_of_what_it_found_and_what_it_no_longer_found() {
        let api_version = StreamPipeline::api_version(&()).to_string();
        let owned = |name: &str, owner: &str| {
            let mut o = owned_by(vec![reference(&api_version, "StreamPipeline", owner, true)]);
            o.metadata.name = Some(name.into());
            o
        };
        let store = KindStore::default();
        store.apply(&Event::Init);
        store.apply(&Event::InitApply(owned("a-web", "a")));
        store.apply(&Event::InitApply(owned("b-web", "b")));
        assert_eq!(store.apply(&Event::InitDone).len(), 2);
        // A watch gap: b's object went away, c's appeared. Nothing is woken
        // before the new list is in the store; then all three are.
        assert!(store.apply(&Event::Init).is_empty());
        assert!(store
            .apply(&Event::InitApply(owned("a-web", "a")))
            .is_empty());
        assert!(store
            .apply(&Event::InitApply(owned("c-web", "c")))
            .is_empty());
        let woken = store.apply(&Event::InitDone);
        let names: Vec<_> = woken.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn a_failed_watch_sends_readers_to_the_api_server_until_an_event_arrives() {
        let store = KindStore::default();
        let none = Tombstones::default();
        store.apply(&Event::Init);
        store.apply(&Event::InitDone);
        assert_eq!(names(store.read("shop", "orders", &none)), Some(vec![]));
        store.failed();
        assert_eq!(store.read("shop", "orders", &none), None);
        store.apply(&Event::Apply(object("shop", "orders-web", "orders", "1")));
        assert_eq!(
            names(store.read("shop", "orders", &none)),
            Some(vec!["orders-web".into()])
        );
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
        let none = Tombstones::default();
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
        let mut deleted = Tombstones::default();
        deleted.insert("4");
        assert_eq!(names(store.read("shop", "orders", &deleted)), Some(vec![]));
    }

    #[test]
    fn a_relist_replaces_the_objects_only_when_complete() {
        let store = KindStore::default();
        let none = Tombstones::default();
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
        let none = Tombstones::default();
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
    fn tombstones_are_bounded_and_forget_the_oldest_first() {
        let mut t = Tombstones::default();
        for i in 0..MAX_TOMBSTONES + 10 {
            t.insert(&i.to_string());
        }
        assert_eq!(t.by_uid.len(), MAX_TOMBSTONES);
        assert!(!t.contains("0") && !t.contains("9"));
        assert!(t.contains("10") && t.contains(&(MAX_TOMBSTONES + 9).to_string()));
    }
}
