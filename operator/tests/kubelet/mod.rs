//! A tiny kubelet for tests: turns one container of a pod template into
//! the argv, environment and mounted files a real kubelet would give it,
//! on the local machine.
//!
//! ```text
//! PodTemplateSpec + container name + Cluster (ConfigMaps, Secrets, Service "DNS")
//!   ├─ volumes      ConfigMap/Secret → <root>/<volume>/..<ts>/<key> files,
//!   │               <volume>/..data -> ..<ts>, <volume>/<key> -> ..data/<key>
//!   │               (the kubelet's atomic-swap layout); emptyDir → empty dir
//!   ├─ env          value | secretKeyRef | configMapKeyRef | fieldRef |
//!   │               resourceFieldRef (CPU and memory, rounded up to the divisor;
//!   │               a limit not set reads the node's allocatable: this
//!   │               machine's CPUs, [`NODE_MEMORY`]), then
//!   │               `$(VAR)` expanded against the variables defined before it
//!   ├─ args         `$(VAR)` expanded against the whole environment
//!   └─ then, standing in for what differs between a pod and this machine:
//!        mount paths  a value that is a mount path or below one is moved
//!                     under <root>/<volume>
//!        Services     `<svc>[.<ns>[.svc[.cluster.local]]]:<port>` → the test's
//!                     local endpoint registered for that Service port
//!        ports        a value `<ip>:<containerPort>` of a declared container
//!                     port → `<ip>:<free local port>`, with `[::]`/`0.0.0.0` (the
//!                     pod's own network namespace) → `127.0.0.1` (pods have
//!                     their own network namespace; processes here share one)
//! ```
//!
//! [`materialise_pod`] does the same for every container of one pod: the
//! volumes once, and one port map for the whole pod (its containers share
//! a network namespace, so `127.0.0.1:<port>` means the same to each),
//! including ports the containers reach over loopback without declaring
//! them.
//!
//! Nothing else is changed: a flag the runtime lacks, a wrong path or an
//! unexpanded variable reaches the process as the operator wrote it. Every
//! unresolvable reference is an error naming it, as the kubelet would refuse
//! to start the container.
//!
//! Later changes to a Secret reach a running pod as the kubelet's periodic
//! sync delivers them ([`sync_secret_volumes`]): the new files in a fresh
//! timestamped directory, `..data` swapped to it in one rename, links of
//! new entries added and those of removed entries deleted, the old
//! directory removed.

#![allow(dead_code)] // not every test uses every accessor

pub mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, KeyToPath, PodTemplateSpec, Probe, Secret, Service, Volume,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The timestamped directory of the atomic-swap layout.
const DATA_DIR: &str = "..2026_01_01_00_00_00.000000001";
/// The mode of projected files when the volume sets no `defaultMode`.
const DEFAULT_MODE: i32 = 0o644;

/// What the pods of one namespace can see: the objects their volumes and
/// variables reference, and where each Service port is served locally.
#[derive(Debug, Default)]
pub struct Cluster {
    pub namespace: String,
    pub config_maps: BTreeMap<String, ConfigMap>,
    pub secrets: BTreeMap<String, Secret>,
    /// `(Service name, Service port)` → local address.
    endpoints: BTreeMap<(String, i32), SocketAddr>,
}

impl Cluster {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.into(),
            ..Self::default()
        }
    }

    pub fn add_config_map(&mut self, cm: ConfigMap) {
        let name = cm.metadata.name.clone().expect("ConfigMap has a name");
        self.config_maps.insert(name, cm);
    }

    pub fn add_secret(&mut self, s: Secret) {
        let name = s.metadata.name.clone().expect("Secret has a name");
        self.secrets.insert(name, s);
    }

    /// Serves the port named `port_name` of Service `svc` at `addr`.
    ///
    /// # Panics
    /// When the Service has no such port.
    pub fn serve(&mut self, svc: &Service, port_name: &str, addr: SocketAddr) {
        let name = svc.metadata.name.clone().expect("Service has a name");
        let port = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(port_name))
            .unwrap_or_else(|| panic!("Service {name} has no port named {port_name}"))
            .port;
        self.endpoints.insert((name, port), addr);
    }

    /// The DNS names a pod in this namespace may use for a Service,
    /// longest first.
    fn service_hosts(&self, svc: &str) -> [String; 4] {
        let ns = &self.namespace;
        [
            format!("{svc}.{ns}.svc.cluster.local"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}"),
            svc.to_string(),
        ]
    }
}

/// A container port with the local port standing in for it.
#[derive(Debug, Clone, Copy)]
pub struct PortMap {
    pub container: i32,
    pub local: u16,
}

/// One container, ready to run here.
#[derive(Debug)]
pub struct Materialised {
    pub pod_name: String,
    pub container: String,
    pub image: String,
    /// `command` of the container (`None`: the image's entrypoint).
    pub command: Option<Vec<String>>,
    pub args: Vec<String>,
    /// In the container's order, values resolved and expanded.
    pub env: Vec<(String, String)>,
    /// Where the volumes were materialised (`<root>/<volume>`).
    pub root: PathBuf,
    /// Mount path in the pod → directory here.
    pub mounts: BTreeMap<String, PathBuf>,
    /// Named container ports (of the whole pod with [`materialise_pod`]).
    pub ports: BTreeMap<String, PortMap>,
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
}

impl Materialised {
    /// The local port of a probe's `httpGet` and its path.
    ///
    /// # Errors
    /// No `httpGet`, or a port the container does not declare.
    pub fn http_probe(&self, probe: &Probe) -> Result<(u16, String), String> {
        let get = probe
            .http_get
            .as_ref()
            .ok_or_else(|| format!("{}: probe is not httpGet", self.pod_name))?;
        let port = self.local_port(&get.port)?;
        Ok((port, get.path.clone().unwrap_or_else(|| "/".into())))
    }

    /// The local port of a container port given by name or number.
    ///
    /// # Errors
    /// A port the container does not declare.
    pub fn local_port(&self, port: &IntOrString) -> Result<u16, String> {
        match port {
            IntOrString::String(name) => self
                .ports
                .get(name)
                .map(|p| p.local)
                .ok_or_else(|| format!("{}: no container port named `{name}`", self.pod_name)),
            IntOrString::Int(n) => self
                .ports
                .values()
                .find(|p| p.container == *n)
                .map(|p| p.local)
                .ok_or_else(|| format!("{}: no container port {n}", self.pod_name)),
        }
    }
}

/// Materialises container `container` of a pod named `pod_name` created
/// from `template`, writing its volumes under `root`.
///
/// # Errors
/// Whatever would keep a kubelet from starting the container (a missing
/// ConfigMap, Secret or key, an unsupported volume or field), named.
pub fn materialise(
    cluster: &Cluster,
    template: &PodTemplateSpec,
    container: &str,
    pod_name: &str,
    root: &Path,
) -> Result<Materialised, String> {
    let spec = template.spec.as_ref().ok_or("pod template has no spec")?;
    let c: &Container = spec
        .containers
        .iter()
        .find(|c| c.name == container)
        .ok_or_else(|| format!("pod template has no container `{container}`"))?;
    let volume_dirs = materialise_volumes(cluster, template, root)?;
    let ports = declared_ports(std::slice::from_ref(c))?;
    materialise_container(cluster, template, c, pod_name, root, &volume_dirs, ports)
}

/// Materialises every container of a pod named `pod_name` created from
/// `template`, in the pod's order, writing the volumes once under `root`.
/// Every declared container port of the pod, and each port of `loopback`
/// (ports a container serves only on the pod's loopback, declared nowhere),
/// gets one local port, the same for every container.
///
/// # Errors
/// As [`materialise`], for any container.
pub fn materialise_pod(
    cluster: &Cluster,
    template: &PodTemplateSpec,
    pod_name: &str,
    root: &Path,
    loopback: &[u16],
) -> Result<Vec<Materialised>, String> {
    let spec = template.spec.as_ref().ok_or("pod template has no spec")?;
    let volume_dirs = materialise_volumes(cluster, template, root)?;
    let mut ports = declared_ports(&spec.containers)?;
    for p in loopback {
        let local = free_port().map_err(|e| format!("no free port: {e}"))?;
        ports.insert(
            format!("loopback-{p}"),
            PortMap {
                container: i32::from(*p),
                local,
            },
        );
    }
    spec.containers
        .iter()
        .map(|c| {
            materialise_container(
                cluster,
                template,
                c,
                pod_name,
                root,
                &volume_dirs,
                ports.clone(),
            )
        })
        .collect()
}

/// Every volume the pod declares, as the kubelet sets them all up: volume
/// name → its directory under `root`.
fn materialise_volumes(
    cluster: &Cluster,
    template: &PodTemplateSpec,
    root: &Path,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let spec = template.spec.as_ref().ok_or("pod template has no spec")?;
    std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut volume_dirs = BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        let dir = root.join(&v.name);
        materialise_volume(cluster, v, &dir)?;
        volume_dirs.insert(v.name.clone(), dir);
    }
    Ok(volume_dirs)
}

/// A free local port for each declared port of `containers`, by name.
fn declared_ports(containers: &[Container]) -> Result<BTreeMap<String, PortMap>, String> {
    let mut ports = BTreeMap::new();
    for p in containers.iter().flat_map(|c| c.ports.iter().flatten()) {
        let local = free_port().map_err(|e| format!("no free port: {e}"))?;
        let name = p
            .name
            .clone()
            .unwrap_or_else(|| p.container_port.to_string());
        ports.insert(
            name,
            PortMap {
                container: p.container_port,
                local,
            },
        );
    }
    Ok(ports)
}

fn materialise_container(
    cluster: &Cluster,
    template: &PodTemplateSpec,
    c: &Container,
    pod_name: &str,
    root: &Path,
    volume_dirs: &BTreeMap<String, PathBuf>,
    ports: BTreeMap<String, PortMap>,
) -> Result<Materialised, String> {
    let container = &c.name;
    let mut mounts = BTreeMap::new();
    for m in c.volume_mounts.iter().flatten() {
        let dir = volume_dirs
            .get(&m.name)
            .ok_or_else(|| format!("{container}: mount of unknown volume `{}`", m.name))?;
        let dir = match m.sub_path.as_deref() {
            Some(sub) if !sub.is_empty() => dir.join(sub),
            _ => dir.clone(),
        };
        mounts.insert(m.mount_path.trim_end_matches('/').to_string(), dir);
    }

    // Environment, in order: each `$(VAR)` sees only the variables before it.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c.env.iter().flatten() {
        let raw = env_value(cluster, template, pod_name, c, e)?;
        let value = expand(&raw, &env);
        env.push((e.name.clone(), value));
    }
    let args: Vec<String> = c.args.iter().flatten().map(|a| expand(a, &env)).collect();
    let command = c
        .command
        .as_ref()
        .map(|cmd| cmd.iter().map(|a| expand(a, &env)).collect::<Vec<_>>());

    // What differs between a pod and this machine.
    let localise = |v: &str| localise(cluster, &mounts, &ports, v);
    let env = env
        .into_iter()
        .map(|(k, v)| {
            let v = localise(&v);
            (k, v)
        })
        .collect();
    let args = args.iter().map(|a| localise(a)).collect();
    let command = command.map(|cmd| cmd.iter().map(|a| localise(a)).collect());

    Ok(Materialised {
        pod_name: pod_name.into(),
        container: container.clone(),
        image: c.image.clone().unwrap_or_default(),
        command,
        args,
        env,
        root: root.to_path_buf(),
        mounts,
        ports,
        readiness: c.readiness_probe.clone(),
        liveness: c.liveness_probe.clone(),
    })
}

// === volumes ===

fn materialise_volume(cluster: &Cluster, v: &Volume, dir: &Path) -> Result<(), String> {
    let io = |e: std::io::Error| format!("volume {}: {}: {e}", v.name, dir.display());
    if let Some(src) = &v.config_map {
        let files = match cluster.config_maps.get(&src.name) {
            Some(cm) => {
                let mut data: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, s)| (k.clone(), s.clone().into_bytes()))
                    .collect();
                for (k, b) in cm.binary_data.iter().flatten() {
                    data.insert(k.clone(), b.0.clone());
                }
                data
            }
            None if src.optional == Some(true) => BTreeMap::new(),
            None => {
                return Err(format!(
                    "volume {}: ConfigMap {} not found",
                    v.name, src.name
                ))
            }
        };
        let files = project(&v.name, &files, src.items.as_deref(), src.default_mode)?;
        write_atomic_layout(dir, &files).map_err(io)
    } else if let Some(src) = &v.secret {
        let name = src.secret_name.clone().unwrap_or_default();
        let files = match cluster.secrets.get(&name) {
            Some(s) => secret_files(s),
            None if src.optional == Some(true) => BTreeMap::new(),
            None => return Err(format!("volume {}: Secret {name} not found", v.name)),
        };
        let files = project(&v.name, &files, src.items.as_deref(), src.default_mode)?;
        write_atomic_layout(dir, &files).map_err(io)
    } else if v.empty_dir.is_some() {
        std::fs::create_dir_all(dir).map_err(io)
    } else {
        Err(format!(
            "volume {}: only ConfigMap, Secret and emptyDir volumes are supported here",
            v.name
        ))
    }
}

/// The files a Secret projects: `data`, then `stringData` over it.
fn secret_files(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, b)| (k.clone(), b.0.clone()))
        .collect();
    for (k, t) in s.string_data.iter().flatten() {
        data.insert(k.clone(), t.clone().into_bytes());
    }
    data
}

/// Relative path → (content, mode) of the files of a volume: every key, or
/// only `items` (a missing key is an error unless the volume is optional,
/// which these tests never need).
fn project(
    volume: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> Result<BTreeMap<String, (Vec<u8>, i32)>, String> {
    let mode = default_mode.unwrap_or(DEFAULT_MODE);
    match items {
        None => Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), (v.clone(), mode)))
            .collect()),
        Some(items) => items
            .iter()
            .map(|i| {
                let v = data
                    .get(&i.key)
                    .ok_or_else(|| format!("volume {volume}: key `{}` not found", i.key))?;
                Ok((i.path.clone(), (v.clone(), i.mode.unwrap_or(mode))))
            })
            .collect(),
    }
}

/// The kubelet's atomic-writer layout: the files in a timestamped
/// directory, `..data` pointing at it, and each top-level entry a link
/// through `..data`.
fn write_atomic_layout(
    dir: &Path,
    files: &BTreeMap<String, (Vec<u8>, i32)>,
) -> std::io::Result<()> {
    use std::os::unix::fs::symlink;
    write_payload(&dir.join(DATA_DIR), files)?;
    symlink(DATA_DIR, dir.join("..data"))?;
    for t in top_level(files) {
        symlink(Path::new("..data").join(&t), dir.join(&t))?;
    }
    Ok(())
}

/// Writes `files` under `data_dir` with their modes.
fn write_payload(data_dir: &Path, files: &BTreeMap<String, (Vec<u8>, i32)>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(data_dir)?;
    for (rel, (content, mode)) in files {
        let path = data_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content)?;
        let mode = u32::try_from(*mode).unwrap_or(0o644);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The top-level names of a volume's files (the links beside `..data`).
fn top_level(files: &BTreeMap<String, (Vec<u8>, i32)>) -> BTreeSet<String> {
    files
        .keys()
        .map(|rel| rel.split('/').next().unwrap_or(rel).to_string())
        .collect()
}

// === later changes ===

/// Brings each volume of the pod that projects `secret` in line with it,
/// as the kubelet's periodic sync does for a running pod. A volume whose
/// files already match is left alone; the others are updated with the
/// atomic writer's swap ([`swap_atomic_layout`]). Returns the names of the
/// volumes that changed.
///
/// # Errors
/// A volume projecting a key the Secret lacks, or I/O.
pub fn sync_secret_volumes(
    template: &PodTemplateSpec,
    secret: &Secret,
    root: &Path,
) -> Result<Vec<String>, String> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let mut changed = Vec::new();
    let volumes = template
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten());
    for v in volumes {
        let Some(src) = v
            .secret
            .as_ref()
            .filter(|s| s.secret_name.as_deref() == Some(name))
        else {
            continue;
        };
        let files = project(
            &v.name,
            &secret_files(secret),
            src.items.as_deref(),
            src.default_mode,
        )?;
        let dir = root.join(&v.name);
        let io = |e: std::io::Error| format!("volume {}: {}: {e}", v.name, dir.display());
        if read_payload(&dir.join("..data")).map_err(io)? == files {
            continue;
        }
        swap_atomic_layout(&dir, &files).map_err(io)?;
        changed.push(v.name.clone());
    }
    Ok(changed)
}

/// Relative path → (content, mode) of the files under `data_dir`.
fn read_payload(data_dir: &Path) -> std::io::Result<BTreeMap<String, (Vec<u8>, i32)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut todo = vec![data_dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(data_dir)
                .map_err(std::io::Error::other)?
                .to_string_lossy()
                .into_owned();
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o7777;
            out.insert(
                rel,
                (std::fs::read(&path)?, i32::try_from(mode).unwrap_or(0)),
            );
        }
    }
    Ok(out)
}

/// The atomic writer's update of a volume laid out by
/// [`write_atomic_layout`]: the files go into a new timestamped directory,
/// a `..data_tmp` link to it is renamed over `..data` (one atomic step: a
/// reader of `..data/…` sees the old files or the new, never a mix), links
/// of new top-level entries are created, those of removed entries deleted,
/// and the old directory is removed.
fn swap_atomic_layout(dir: &Path, files: &BTreeMap<String, (Vec<u8>, i32)>) -> std::io::Result<()> {
    use std::os::unix::fs::symlink;
    /// Distinct timestamped names within this process (the first layout
    /// uses [`DATA_DIR`]).
    static NEXT: AtomicU64 = AtomicU64::new(2);
    let old = std::fs::read_link(dir.join("..data"))?;
    let fresh = format!(
        "..2026_01_01_00_00_00.{:09}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    write_payload(&dir.join(&fresh), files)?;
    let tmp = dir.join("..data_tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    symlink(&fresh, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    let top = top_level(files);
    for t in &top {
        let link = dir.join(t);
        if link.symlink_metadata().is_err() {
            symlink(Path::new("..data").join(t), link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && !top.contains(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    std::fs::remove_dir_all(dir.join(old))
}

// === environment ===

fn env_value(
    cluster: &Cluster,
    template: &PodTemplateSpec,
    pod_name: &str,
    container: &Container,
    e: &EnvVar,
) -> Result<String, String> {
    let Some(from) = &e.value_from else {
        return Ok(e.value.clone().unwrap_or_default());
    };
    let name = &e.name;
    if let Some(r) = &from.secret_key_ref {
        let s = cluster
            .secrets
            .get(&r.name)
            .ok_or_else(|| format!("env {name}: Secret {} not found", r.name))?;
        let v = s
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .ok_or_else(|| format!("env {name}: Secret {} has no key `{}`", r.name, r.key))?;
        return String::from_utf8(v.0.clone())
            .map_err(|_| format!("env {name}: Secret {} key `{}` is not UTF-8", r.name, r.key));
    }
    if let Some(r) = &from.config_map_key_ref {
        let cm = cluster
            .config_maps
            .get(&r.name)
            .ok_or_else(|| format!("env {name}: ConfigMap {} not found", r.name))?;
        return cm
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .cloned()
            .ok_or_else(|| format!("env {name}: ConfigMap {} has no key `{}`", r.name, r.key));
    }
    if let Some(f) = &from.field_ref {
        let meta = &template.metadata;
        let label = |path: &str, map: Option<&BTreeMap<String, String>>| {
            let key = path.trim_end_matches("']");
            map.and_then(|m| m.get(key)).cloned().unwrap_or_default()
        };
        return match f.field_path.as_str() {
            "metadata.name" => Ok(pod_name.to_string()),
            "metadata.namespace" => Ok(cluster.namespace.clone()),
            "metadata.uid" => Ok("00000000-0000-4000-8000-0000000000aa".into()),
            "spec.nodeName" => Ok("node-1".into()),
            "spec.serviceAccountName" => Ok(template
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into())),
            "status.podIP" | "status.hostIP" => Ok("127.0.0.1".into()),
            p if p.starts_with("metadata.labels['") => Ok(label(
                &p["metadata.labels['".len()..],
                meta.as_ref().and_then(|m| m.labels.as_ref()),
            )),
            p if p.starts_with("metadata.annotations['") => Ok(label(
                &p["metadata.annotations['".len()..],
                meta.as_ref().and_then(|m| m.annotations.as_ref()),
            )),
            p => Err(format!("env {name}: unsupported fieldRef `{p}`")),
        };
    }
    if let Some(r) = &from.resource_field_ref {
        return resource_field(template, container, r).map_err(|e| format!("env {name}: {e}"));
    }
    Err(format!("env {name}: valueFrom names no source"))
}

/// The memory the stand-in's node offers (its allocatable), which a
/// container without a memory limit reads as `limits.memory`.
pub const NODE_MEMORY: i128 = 8 << 30;

/// A `resourceFieldRef`'s value as the kubelet writes it: the container's
/// request or limit divided by the divisor (default 1) and rounded up
/// (`convertResourceCPUToString`, `…MemoryToString`). A limit not set is
/// the node's allocatable (`MergeContainerResourceLimits`); a request not
/// set is 0.
fn resource_field(
    template: &PodTemplateSpec,
    own: &Container,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Result<String, String> {
    let c = match r.container_name.as_deref() {
        None | Some("") => own,
        Some(other) => template
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == other)
            .ok_or_else(|| format!("resourceFieldRef names no container `{other}`"))?,
    };
    let (list, resource) = r
        .resource
        .split_once('.')
        .filter(|(l, res)| matches!(*l, "limits" | "requests") && matches!(*res, "cpu" | "memory"))
        .ok_or_else(|| format!("unsupported resource `{}`", r.resource))?;
    let set = |l: &str| {
        let r = c.resources.as_ref();
        let l = if l == "limits" {
            r.and_then(|r| r.limits.as_ref())
        } else {
            r.and_then(|r| r.requests.as_ref())
        };
        l.and_then(|m| m.get(resource)).map(|q| q.0.clone())
    };
    let nanos = |q: &str| {
        sluice_operator::quantity::nanos(q).ok_or_else(|| format!("`{q}` is not a quantity"))
    };
    let value = match (list, set(list)) {
        (_, Some(q)) => nanos(&q)?,
        ("limits", None) if resource == "cpu" => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            i128::try_from(cpus).unwrap_or(1) * 1_000_000_000
        }
        ("limits", None) => NODE_MEMORY * 1_000_000_000,
        _ => 0,
    };
    // A divisor not set, or zero (what the API server stores for one not
    // set), is 1.
    let divisor = match nanos(r.divisor.as_ref().map_or("1", |d| d.0.as_str()))? {
        0 => 1_000_000_000,
        d => d,
    };
    // CPU is divided in millicores, memory in bytes, each rounded up to its
    // unit first (`MilliValue`, `Value`).
    let unit: i128 = if resource == "cpu" {
        1_000_000
    } else {
        1_000_000_000
    };
    let up = |v: i128| v.div_euclid(unit) + i128::from(v.rem_euclid(unit) != 0);
    let (value, divisor) = (up(value), up(divisor));
    if divisor <= 0 {
        return Err("the divisor is negative".into());
    }
    Ok(((value + divisor - 1).div_euclid(divisor)).to_string())
}

/// The labels of a pod template's pods.
pub fn labels_of(t: &PodTemplateSpec) -> BTreeMap<String, String> {
    t.metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// Whether `svc` selects the pods of `t` (a Service without a selector
/// selects none).
pub fn selects(svc: &Service, t: &PodTemplateSpec) -> bool {
    let labels = labels_of(t);
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Kubernetes' `$(VAR)` expansion: a reference to a variable in `env` is
/// replaced by its value, `$$` is a literal `$`, and anything else
/// (an undefined variable, an unterminated reference) is left as written.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) => {
                    let name = &tail[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

// === from the pod to this machine ===

fn localise(
    cluster: &Cluster,
    mounts: &BTreeMap<String, PathBuf>,
    ports: &BTreeMap<String, PortMap>,
    value: &str,
) -> String {
    // A mount path, or a path below one (the deepest mount wins).
    let mut by_depth: Vec<_> = mounts.iter().collect();
    by_depth.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    for (path, dir) in by_depth {
        if value == path {
            return dir.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(&format!("{path}/")) {
            return dir.join(rest).display().to_string();
        }
    }
    // A listen address on a declared container port.
    if let Some((host, port)) = value.rsplit_once(':') {
        let ip = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = ip.parse::<std::net::IpAddr>() {
            if let Some(p) = ports.values().find(|p| p.container.to_string() == port) {
                // A pod's wildcard address is its own network namespace; here
                // that is loopback, so test servers never listen beyond it.
                let host = if ip.is_unspecified() {
                    "127.0.0.1"
                } else {
                    host
                };
                return format!("{host}:{}", p.local);
            }
        }
    }
    // Service host:port, wherever it appears (URLs), as DNS + kube-proxy would.
    let mut out = value.to_string();
    for ((svc, port), addr) in &cluster.endpoints {
        for host in cluster.service_hosts(svc) {
            out = replace_host(&out, &format!("{host}:{port}"), &addr.to_string());
        }
    }
    out
}

/// Replaces `from` in `s` where it stands as a whole host:port (not the
/// tail of a longer host name, nor followed by more digits).
fn replace_host(s: &str, from: &str, to: &str) -> String {
    let is_host_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(from) {
        let before_ok = !rest[..i].chars().next_back().is_some_and(is_host_char);
        let after = &rest[i + from.len()..];
        let after_ok = !after.chars().next().is_some_and(|c| c.is_ascii_digit());
        out.push_str(&rest[..i]);
        out.push_str(if before_ok && after_ok { to } else { from });
        rest = after;
    }
    out.push_str(rest);
    out
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$(A", &env), "x-$(B)-$(A)-$(A");
        assert_eq!(expand("a$b", &env), "a$b");
    }

    #[test]
    fn resource_fields_are_divided_and_rounded_up_as_the_kubelet_does() {
        let template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [
                {"name": "c", "resources": {"requests": {"cpu": "1500m", "memory": "128Mi"}}},
                {"name": "bare"}
            ]}
        }))
        .unwrap();
        let containers = &template.spec.as_ref().unwrap().containers;
        let field = |c: usize, resource: &str, divisor: Option<&str>, container: Option<&str>| {
            let r: k8s_openapi::api::core::v1::ResourceFieldSelector =
                serde_json::from_value(serde_json::json!({
                    "resource": resource, "divisor": divisor, "containerName": container
                }))
                .unwrap();
            resource_field(&template, &containers[c], &r)
        };
        let cpus = std::thread::available_parallelism()
            .unwrap()
            .get()
            .to_string();
        assert_eq!(field(0, "requests.cpu", None, None).unwrap(), "2");
        assert_eq!(field(0, "requests.cpu", Some("1"), None).unwrap(), "2");
        assert_eq!(
            field(0, "requests.cpu", Some("0"), None).unwrap(),
            "2",
            "0 is 1"
        );
        assert_eq!(field(0, "requests.cpu", Some("1m"), None).unwrap(), "1500");
        assert_eq!(
            field(0, "requests.memory", Some("1Mi"), None).unwrap(),
            "128"
        );
        assert_eq!(field(0, "requests.memory", Some("1Gi"), None).unwrap(), "1");
        // No limit: the node's allocatable.
        assert_eq!(field(0, "limits.cpu", None, None).unwrap(), cpus);
        assert_eq!(field(0, "limits.memory", Some("1Gi"), None).unwrap(), "8");
        // No request: 0.
        assert_eq!(field(1, "requests.cpu", None, None).unwrap(), "0");
        // Another container, by name.
        assert_eq!(
            field(1, "requests.cpu", Some("1m"), Some("c")).unwrap(),
            "1500"
        );
        assert!(field(0, "requests.cpu", None, Some("gone"))
            .unwrap_err()
            .contains("gone"));
        assert!(field(0, "requests.gpu", None, None)
            .unwrap_err()
            .contains("requests.gpu"));
    }

    #[test]
    fn a_secret_update_swaps_the_volume_atomically_and_drops_removed_keys() {
        use k8s_openapi::ByteString;
        let template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "spec": {
                "containers": [{"name": "c"}],
                "volumes": [{"name": "keys", "secret": {"secretName": "ring", "defaultMode": 0o440}}]
            }
        }))
        .unwrap();
        let secret = |entries: &[(&str, &str)]| Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("ring".into()),
                ..Default::default()
            },
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        let root = tempfile::tempdir().unwrap();
        let mut cluster = Cluster::new("ns");
        cluster.add_secret(secret(&[("current", "a"), ("a", "A")]));
        materialise(&cluster, &template, "c", "pod", root.path()).unwrap();
        let dir = root.path().join("keys");
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let first = std::fs::read_link(dir.join("..data")).unwrap();

        let unchanged = sync_secret_volumes(
            &template,
            &secret(&[("current", "a"), ("a", "A")]),
            root.path(),
        );
        assert_eq!(unchanged.unwrap(), Vec::<String>::new());
        assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), first);

        let added = secret(&[("current", "a"), ("a", "A"), ("b", "B")]);
        assert_eq!(
            sync_secret_volumes(&template, &added, root.path()).unwrap(),
            ["keys"]
        );
        assert_eq!((read("a"), read("b")), (Some("A".into()), Some("B".into())));
        assert!(!dir.join(&first).exists(), "the old directory is removed");
        let dropped = secret(&[("current", "b"), ("b", "B")]);
        sync_secret_volumes(&template, &dropped, root.path()).unwrap();
        assert_eq!((read("current"), read("a")), (Some("b".into()), None));
        assert!(
            dir.join("a").symlink_metadata().is_err(),
            "the link of a removed key is gone"
        );
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        assert_eq!(names, ["b", "current"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o440);
    }

    #[test]
    fn hosts_are_replaced_only_whole() {
        assert_eq!(
            replace_host("redis://:p@r.ns.svc:6379/0", "r.ns.svc:6379", "127.0.0.1:1"),
            "redis://:p@127.0.0.1:1/0"
        );
        assert_eq!(
            replace_host("redis://xr.ns.svc:63790", "r.ns.svc:6379", "127.0.0.1:1"),
            "redis://xr.ns.svc:63790"
        );
    }
}
