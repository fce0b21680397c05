//! Starting and driving the simulator: [`ClusterSim::start`] binds `127.0.0.1:0`, writes an
//! admin kubeconfig and runs the HTTP server, the garbage collector and the workload
//! controllers until the returned [`ClusterSimHandle`] is shut down or dropped. The handle is
//! also the test hook: tokens, rollout holds, fault injection, inspection and direct store
//! access.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::controllers::{self, Workloads};
use crate::error::{ApiError, Result};
use crate::faults::{Faults, RequestMatch, RequestRecord};
use crate::gc;
use crate::ops::{self, DeleteOpts, WriteOpts};
use crate::rbac::{AuthzDecision, Identity};
use crate::resources::ResourceType;
use crate::store::{meta_str, State};

/// How a simulator behaves; `Default` is what a plain `start()` uses.
#[derive(Debug, Clone)]
pub struct ClusterSimOptions {
    /// Enforce RBAC for ServiceAccount tokens (the admin kubeconfig always bypasses it).
    pub rbac: bool,
    /// Delay between two rollout steps of the workload controllers (one replica per step).
    pub step_delay: Duration,
    /// Real length of one second of `spec.progressDeadlineSeconds`; shorten it in tests.
    pub progress_deadline_unit: Duration,
    /// How many change events are kept for watches; older versions answer `410 Gone`.
    pub watch_history: usize,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Port to bind on 127.0.0.1; 0 picks an ephemeral one.
    pub port: u16,
    /// Shortest time between two garbage-collection passes. Zero (the default) runs a pass
    /// right after every change. A pass walks the whole store under the lock, so with
    /// thousands of objects and a steady stream of writes, back-to-back passes keep the lock
    /// busy and slow every request; spacing them (a cluster's collector lags too) keeps a
    /// benchmark measuring its client rather than the stand-in.
    pub gc_min_interval: Duration,
    /// Shortest time between two passes of the workload controllers, for the same reason.
    /// Zero (the default) runs a pass after every change and every half rollout step.
    pub controller_min_interval: Duration,
}

impl Default for ClusterSimOptions {
    fn default() -> Self {
        Self {
            rbac: false,
            step_delay: Duration::from_millis(50),
            progress_deadline_unit: Duration::from_secs(1),
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(1),
            port: 0,
            gc_min_interval: Duration::ZERO,
            controller_min_interval: Duration::ZERO,
        }
    }
}

/// Shared state of one running simulator.
pub(crate) struct Core {
    pub state: Mutex<State>,
    /// Latest committed resourceVersion; watches, GC and controllers wake on changes.
    pub changed: watch::Sender<u64>,
    pub opts: ClusterSimOptions,
    pub faults: Mutex<Faults>,
    pub tokens: Mutex<HashMap<String, Identity>>,
    pub holds: Mutex<HashSet<(String, String)>>,
    pub decisions: Mutex<Vec<AuthzDecision>>,
    pub cancel: CancellationToken,
    /// Bumped to end every open watch stream (fault injection).
    pub watch_epoch: watch::Sender<u64>,
}

impl Core {
    /// Run `f` under the store lock and wake watchers if it committed anything.
    ///
    /// Admission, server-side apply and managed-field tracking walk objects
    /// recursively; an object as deep as the API server stores (thousands of
    /// levels in a free-form field) would overflow a test thread's stack, so
    /// `f` runs on a stack of its own, grown on demand.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.state.lock();
        let before = st.rv;
        let r = stacker::grow(WRITE_STACK, || f(&mut st));
        let after = st.rv;
        drop(st);
        if after != before {
            self.changed.send_replace(after);
        }
        r
    }
}

/// Stack for one write: room for the recursion of a 10,000-level object.
const WRITE_STACK: usize = 256 << 20;

/// Entry point.
pub struct ClusterSim;

impl ClusterSim {
    /// Start with default options.
    ///
    /// # Errors
    /// Binding the listener or writing the kubeconfig failed.
    pub async fn start() -> Result<ClusterSimHandle> {
        Self::start_with(ClusterSimOptions::default()).await
    }

    /// Start with the given options.
    ///
    /// # Guarantees
    /// When this returns the server accepts connections, namespaces `default`,
    /// `kube-system`, `kube-public` and `kube-node-lease` exist, and
    /// [`ClusterSimHandle::kubeconfig_path`] holds an admin kubeconfig.
    ///
    /// # Errors
    /// Binding the listener or writing the kubeconfig failed.
    pub async fn start_with(opts: ClusterSimOptions) -> Result<ClusterSimHandle> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port)).await?;
        let addr = listener.local_addr()?;
        let (changed, _) = watch::channel(0);
        let core = Arc::new(Core {
            state: Mutex::new(State::new(opts.watch_history)),
            changed,
            opts: opts.clone(),
            faults: Mutex::new(Faults::default()),
            tokens: Mutex::new(HashMap::new()),
            holds: Mutex::new(HashSet::new()),
            decisions: Mutex::new(Vec::new()),
            cancel: CancellationToken::new(),
            watch_epoch: watch::channel(0).0,
        });
        core.write(|st| {
            let rt = st
                .registry
                .find("", "v1", "namespaces")
                .ok_or_else(|| ApiError::internal("namespaces type missing"))?;
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                ops::create(
                    st,
                    &rt,
                    None,
                    json!({"metadata": {"name": ns}}),
                    &WriteOpts {
                        manager: "cluster-sim".into(),
                        ..Default::default()
                    },
                )?;
            }
            Ok::<_, ApiError>(())
        })?;
        let admin_token = format!("admin-{}", uuid::Uuid::new_v4().simple());
        core.tokens
            .lock()
            .insert(admin_token.clone(), Identity::admin());
        let dir = tempfile::tempdir()?;
        let url = format!("http://{addr}");
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig, &url, "admin", &admin_token)?;

        let mut tasks = Vec::new();
        let app = crate::server::router(core.clone());
        let cancel = core.cancel.clone();
        tasks.push(tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "cluster-sim server failed");
            }
        }));
        tasks.push(tokio::spawn(gc_loop(core.clone())));
        tasks.push(tokio::spawn(controller_loop(core.clone())));
        tracing::info!(%url, "cluster-sim started");
        Ok(ClusterSimHandle {
            core,
            url,
            addr,
            kubeconfig,
            admin_token,
            dir,
            tasks,
        })
    }
}

async fn gc_loop(core: Arc<Core>) {
    let mut rx = core.changed.subscribe();
    loop {
        tokio::select! {
            _ = core.cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        core.write(gc::collect);
        if !pause(&core, core.opts.gc_min_interval).await {
            return;
        }
    }
}

/// Waits `interval` after a background pass; changes made meanwhile leave the change
/// receiver marked, so the next pass follows at once. False when the simulator is shutting
/// down.
async fn pause(core: &Core, interval: Duration) -> bool {
    if interval.is_zero() {
        return true;
    }
    tokio::select! {
        _ = core.cancel.cancelled() => false,
        _ = tokio::time::sleep(interval) => true,
    }
}

async fn controller_loop(core: Arc<Core>) {
    let mut wl = Workloads::new(core.opts.step_delay, core.opts.progress_deadline_unit);
    let tick =
        (core.opts.step_delay / 2).clamp(Duration::from_millis(5), Duration::from_millis(100));
    let mut rx = core.changed.subscribe();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = core.cancel.cancelled() => return,
            _ = interval.tick() => {}
            r = rx.changed() => if r.is_err() { return },
        }
        let holds = core.holds.lock().clone();
        core.write(|st| controllers::pass(st, &mut wl, &holds, Instant::now()));
        if !pause(&core, core.opts.controller_min_interval).await {
            return;
        }
    }
}

/// Write a kubeconfig for `server` authenticating with a bearer `token`.
pub(crate) fn write_kubeconfig(path: &Path, server: &str, user: &str, token: &str) -> Result<()> {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster-sim", "cluster": {"server": server}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "cluster-sim", "context": {"cluster": "cluster-sim", "user": user, "namespace": "default"}}],
        "current-context": "cluster-sim",
        "preferences": {},
    });
    std::fs::write(path, serde_saphyr::to_string(&doc)?)?;
    Ok(())
}

/// A running simulator. Dropping it stops everything (the server, watches, controllers)
/// and removes its temporary directory; [`ClusterSimHandle::shutdown`] also waits for that.
pub struct ClusterSimHandle {
    core: Arc<Core>,
    url: String,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    admin_token: String,
    /// Holds the kubeconfig files; removed on drop.
    dir: tempfile::TempDir,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ClusterSimHandle {
    fn drop(&mut self) {
        self.core.cancel.cancel();
    }
}

impl ClusterSimHandle {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Admin kubeconfig (bypasses RBAC).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Stop the server and background tasks and wait for them (bounded).
    pub async fn shutdown(mut self) {
        self.core.cancel.cancel();
        for t in self.tasks.drain(..) {
            // a task that does not stop within the bound is aborted when the runtime ends
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    // === identities ===

    /// Mint a bearer token for ServiceAccount `ns/name` (the ServiceAccount object need not
    /// exist, as with a projected token whose account was deleted later).
    pub fn service_account_token(&self, ns: &str, name: &str) -> String {
        let token = format!("sa-{ns}-{name}-{}", uuid::Uuid::new_v4().simple());
        self.core
            .tokens
            .lock()
            .insert(token.clone(), Identity::service_account(ns, name));
        token
    }

    /// Write a kubeconfig that authenticates with `token`.
    ///
    /// # Errors
    /// Writing the file failed.
    pub fn kubeconfig_for_token(&self, token: &str) -> Result<PathBuf> {
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}", uuid::Uuid::new_v4().simple()));
        write_kubeconfig(&path, &self.url, "token-user", token)?;
        Ok(path)
    }

    /// Mint a token for ServiceAccount `ns/name` and write a kubeconfig using it.
    ///
    /// # Errors
    /// Writing the file failed.
    pub fn service_account_kubeconfig(&self, ns: &str, name: &str) -> Result<PathBuf> {
        let token = self.service_account_token(ns, name);
        self.kubeconfig_for_token(&token)
    }

    /// Every RBAC decision so far (only recorded when RBAC is enabled).
    pub fn authz_decisions(&self) -> Vec<AuthzDecision> {
        self.core.decisions.lock().clone()
    }

    // === workload controllers ===

    /// Stop rolling Deployment/StatefulSet `ns/name`: its status stops progressing and, for a
    /// Deployment, reports `ProgressDeadlineExceeded` once `progressDeadlineSeconds` (in units
    /// of [`ClusterSimOptions::progress_deadline_unit`]) pass without progress.
    pub fn hold_rollout(&self, ns: &str, name: &str) {
        self.core.holds.lock().insert((ns.into(), name.into()));
    }

    /// Let a held rollout continue.
    pub fn release_rollout(&self, ns: &str, name: &str) {
        self.core
            .holds
            .lock()
            .remove(&(ns.to_string(), name.to_string()));
    }

    // === faults ===

    /// Fail the `nth` (1-based, counted from now) request matching `m` with `code`
    /// (500, 429, 409, 503, ...).
    pub fn fail_nth(&self, m: RequestMatch, nth: u64, code: u16) {
        self.core.faults.lock().add_fail(m, nth, 1, code);
    }

    /// Fail the next `count` requests matching `m` with `code`.
    pub fn fail_next(&self, m: RequestMatch, count: u64, code: u16) {
        self.core.faults.lock().add_fail(m, 1, count, code);
    }

    /// Delay every request matching `m` by `delay`.
    pub fn add_latency(&self, m: RequestMatch, delay: Duration) {
        self.core.faults.lock().add_latency(m, delay);
    }

    /// End every watch stream matching `m` (started from now on) after it sent `events`
    /// events (bookmarks excluded).
    pub fn cut_watches_after(&self, m: RequestMatch, events: usize) {
        self.core.faults.lock().add_watch_cut(m, events);
    }

    /// End every watch stream open right now (clients see the connection close normally).
    pub fn close_watches(&self) {
        self.core.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Remove all installed faults (the request log is kept).
    pub fn clear_faults(&self) {
        self.core.faults.lock().clear();
    }

    // === inspection ===

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.core.faults.lock().log.clone()
    }

    /// How many requests matched `m`.
    pub fn request_count(&self, m: &RequestMatch) -> usize {
        self.core
            .faults
            .lock()
            .log
            .iter()
            .filter(|r| m.matches(r))
            .count()
    }

    /// Request counts by (verb, resource[/subresource], caller).
    pub fn request_counts(&self) -> BTreeMap<(String, String, String), usize> {
        self.core.faults.lock().counts()
    }

    /// Resource requests matching `m`, counted by Kubernetes verb (`get`, `list`, `watch`,
    /// `create`, `update`, `patch`, `delete`, `deletecollection`). Non-resource requests
    /// (discovery, `/version`, OpenAPI) are left out: [`Self::request_count`] counts those.
    /// For a window between two moments, count slices of [`Self::requests`] with
    /// [`crate::faults::counts_by_verb`].
    pub fn request_counts_by_verb(&self, m: &RequestMatch) -> BTreeMap<String, usize> {
        crate::faults::counts_by_verb(&self.core.faults.lock().log, m)
    }

    /// Latest committed resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.core.state.lock().rv
    }

    /// Forget all watch history: watching from any earlier version now answers `410 Gone`.
    pub fn compact_history(&self) {
        self.core.write(|st| st.compact());
    }

    // === direct store access ===

    fn type_for(&self, api_version: &str, kind: &str) -> Result<Arc<ResourceType>, ApiError> {
        self.core
            .state
            .lock()
            .registry
            .find_kind(api_version, kind)
            .ok_or_else(|| {
                ApiError::new(404, "NotFound", format!("no type {kind} in {api_version}"))
            })
    }

    /// The stored object, if any.
    ///
    /// # Errors
    /// The type is not served.
    pub fn get_object(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>> {
        let rt = self.type_for(api_version, kind)?;
        let st = self.core.state.lock();
        match ops::get(&st, &rt, ns, name) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Objects of a type, optionally in one namespace.
    ///
    /// # Errors
    /// The type is not served.
    pub fn list_objects(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
    ) -> Result<Vec<Value>> {
        let rt = self.type_for(api_version, kind)?;
        let st = self.core.state.lock();
        let list = ops::list(
            &st,
            &rt,
            ns,
            &Default::default(),
            &Default::default(),
            &Default::default(),
        )?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Create or replace an object (no resourceVersion check), as field manager `cluster-sim`.
    /// The object goes through admission, versioning and watch events like an API write.
    ///
    /// # Errors
    /// The object is refused as the API would refuse it.
    pub fn put_object(&self, obj: Value) -> Result<Value> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let rt = self.type_for(&api_version, &kind)?;
        let ns = meta_str(&obj, "namespace").map(str::to_string);
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let opts = WriteOpts {
            manager: "cluster-sim".into(),
            ..Default::default()
        };
        let res = self.core.write(|st| {
            let exists = ops::get(st, &rt, ns.as_deref(), &name).is_ok();
            let mut obj = obj;
            crate::store::remove_meta(&mut obj, "resourceVersion");
            if exists {
                ops::update(st, &rt, ns.as_deref(), &name, ops::Sub::Main, obj, &opts)
            } else {
                ops::create(st, &rt, ns.as_deref(), obj, &opts)
            }
        })?;
        Ok(res)
    }

    /// Delete an object (background propagation; finalizers respected).
    ///
    /// # Errors
    /// The type is not served or the object does not exist.
    pub fn delete_object(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<()> {
        let rt = self.type_for(api_version, kind)?;
        self.core
            .write(|st| ops::delete(st, &rt, ns, name, &DeleteOpts::default()))?;
        Ok(())
    }
}
