//! The HMAC key ring: keys by kid, one kid `current`, and the per-group keys
//! envelopes are signed with (DESIGN §6, docs/wire-format.md).
//!
//! Every envelope is signed with a key derived for one pipeline, one kind
//! and one group: requests with the request key of their destination group,
//! replies with the reply key of the group that sends them. HKDF-SHA256
//! (salt `sluice-ipc-v1`) expands a raw key with the label
//! `sluice/<kind>/<ns/p>/<group>` (see [`info_label`]).
//!
//! Two layouts on disk (`--keys DIR`, the mounted Secret), told apart by
//! their file names:
//!
//! | layout | files | holds |
//! | --- | --- | --- |
//! | ring | `<kid>`: base64 of 32 raw bytes; `current` | everything: any key of any group is derived on use |
//! | derived | `<kid>.request.<group>`, `<kid>.reply.<group>`: base64 of one 32-byte derived key; `current` | exactly those keys, nothing else |
//!
//! A directory holding both forms is refused. [`derived_files`] renders a
//! derived directory from a ring, so a process can be given only the keys
//! of its role. The whole directory is read (never single files), so the
//! kubelet's atomic `..data` symlink swap is seen as one change; names
//! starting with `.` are the kubelet's bookkeeping and are skipped.
//!
//! Key bytes never leave this module except as a MAC key, as the key the
//! tcp transport derives its session keys from ([`KeyRing::key`]), or as
//! base64 file content from [`derived_files`]; no `Debug`/`Display` output
//! and no error contains key material.
//!
//! The keys a ring holds and the HMAC states it keeps are wiped when the
//! ring, or a key of its cache, is dropped (a ring replaced after a
//! rotation). A key handed out by [`KeyRing::key`] is wiped when its holder
//! drops it; the tcp transport's sessions keep their keys only as HMAC
//! states. Key text is wiped too: a key directory's files as they are
//! read (each into a buffer of its size, so none is left behind by a
//! buffer that grew), [`derived_files`]' base64 text (which its callers
//! hand on wiped: the ingress's handover to its tcp workers, read by them
//! from standard input into wiped buffers) and [`write_new`]'s. That
//! narrows what lingers in memory; it is not a guarantee. Not wiped:
//! copies left behind when a key, a state or a session is moved or a map
//! grows; copies on the stack while a key is generated, derived or made
//! into an HMAC key; the temporary maps of a ring refused while it is
//! read; a file that grows while it is read, or whose size its file system
//! misreports; standard input's own buffer; the kernel's pipe and page
//! buffers; and
//! whatever the operator holds (it reads and writes the Secrets, through
//! its Kubernetes client's buffers).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use foldhash::HashMap;
use hkdf::Hkdf;
use parking_lot::RwLock;
use rand::RngCore;
use sha2::digest::zeroize::Zeroize;
/// A value wiped when dropped (the `zeroize` crate's, as the HMAC states
/// use it): what key text is handed out in.
pub use sha2::digest::zeroize::Zeroizing;
use sha2::Sha256;

use crate::envelope::Kind;

mod directory;

use directory::read_dir;
pub use directory::{write_new, SharedKeyRing};

/// Length of a raw key and of a derived key.
pub const KEY_LEN: usize = 32;
const HKDF_SALT: &[u8] = b"sluice-ipc-v1";
/// The file naming the signing kid.
pub const CURRENT_FILE: &str = "current";
/// Most files a key directory may hold, `current` included: a ring holds a few kids, a
/// derived directory a few kids times two keys per group (at most 32
/// groups); anything far beyond is not a key directory.
pub const MAX_KEY_FILES: usize = 1024;
/// Longest key file read: base64 of 32 bytes is 44 characters, a kid at
/// most 64; a longer file is refused unread rather than buffered.
const MAX_FILE_BYTES: u64 = 256;
/// Longest kid.
pub const MAX_KID_LEN: usize = 64;
/// Longest group name (a DNS label).
pub const MAX_GROUP_LEN: usize = 63;

type Key = [u8; KEY_LEN];

/// Why a key directory could not be loaded or rendered. Names files, kids
/// and groups, never key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error("cannot read key directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key `{kid}`: {reason}")]
    BadKey { kid: String, reason: String },
    #[error("file {name:?} is not a key file: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("{0} has no `current` file naming the signing key")]
    NoCurrent(String),
    #[error("`current` names kid `{0}`, which is not in the directory")]
    CurrentUnknown(String),
    #[error(
        "the directory holds raw keys (`<kid>`) and derived keys (`<kid>.<kind>.<group>`) \
         together; a key directory holds one layout or the other"
    )]
    Mixed,
    #[error("the directory holds more than {MAX_KEY_FILES} files")]
    TooManyFiles,
    #[error("`{0}` is not a pipeline (`<namespace>/<name>`, both DNS labels)")]
    BadPipeline(String),
    #[error("no {kind} key for group `{group}` under kid `{kid}` in this ring")]
    Missing {
        kid: String,
        kind: &'static str,
        group: String,
    },
    #[error("no keys were asked for: a derived directory needs at least one")]
    NothingNeeded,
}

/// Whether `kid` is a key id: 1-64 characters of `[A-Za-z0-9_-]`, and not
/// the name of the `current` file.
pub fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid != CURRENT_FILE
        && kid
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// Whether `s` is a DNS label of at most `max` characters: `[a-z0-9-]`,
/// neither first nor last a `-`.
fn dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `group` is a group name: a DNS label of at most 63 characters.
/// Names in derivation labels, file names and reply key ids are checked
/// with it, so none can carry a `/` or `.` that would make two of them
/// read alike.
pub fn valid_group(group: &str) -> bool {
    dns_label(group, MAX_GROUP_LEN)
}

/// Whether `pipeline` is `<namespace>/<name>`, both DNS labels.
pub fn valid_pipeline(pipeline: &str) -> bool {
    pipeline
        .split_once('/')
        .is_some_and(|(ns, name)| dns_label(ns, 63) && dns_label(name, 63))
}

/// The HKDF `info` of the `kind` key of `group` in `pipeline`:
/// `sluice/request/<ns/p>/<group>` or `sluice/reply/<ns/p>/<group>`.
pub fn info_label(kind: Kind, pipeline: &str, group: &str) -> String {
    format!("sluice/{}/{pipeline}/{group}", kind.as_str())
}

/// The file of a derived directory holding `kid`'s `kind` key of `group`.
pub fn derived_file_name(kid: &str, kind: Kind, group: &str) -> String {
    format!("{kid}.{}.{group}", kind.as_str())
}

fn derive(raw: &Key, kind: Kind, pipeline: &str, group: &str) -> Key {
    let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), raw);
    let mut key = [0u8; KEY_LEN];
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit, the only
    // way `expand` can fail.
    hk.expand(info_label(kind, pipeline, group).as_bytes(), &mut key)
        .expect("32 bytes is a valid HKDF length");
    key
}

/// The keys of a ring, in one of the two layouts.
#[derive(Clone, PartialEq, Eq)]
enum Layout {
    /// Raw keys by kid: every derived key can be made from them.
    Ring(BTreeMap<String, Key>),
    /// Derived keys by kid, kind and group: exactly these.
    Derived(BTreeMap<String, BTreeMap<Kind, BTreeMap<String, Key>>>),
}

impl Drop for Layout {
    fn drop(&mut self) {
        match self {
            Layout::Ring(keys) => keys.values_mut().for_each(Zeroize::zeroize),
            Layout::Derived(keys) => keys
                .values_mut()
                .flat_map(BTreeMap::values_mut)
                .flat_map(BTreeMap::values_mut)
                .for_each(Zeroize::zeroize),
        }
    }
}

/// An immutable set of keys and the kid to sign with.
#[derive(Clone)]
pub struct KeyRing {
    current: String,
    layout: Layout,
    /// Keys used so far with their HMAC state (derived from a raw ring,
    /// or read from a derived one), shared by the ring's clones; a ring
    /// loaded again starts a cache of its own.
    derived: Arc<DerivedCache>,
}

/// Most keys a ring remembers with their HMAC state. A process needs a
/// few per kid (its groups' request and reply keys, and for the dead
/// letters' checks every group's); keys are kept only once a MAC verified
/// under them or when this process signs with them, so the bound is a
/// guard against a plan with very many groups, not against hostile
/// entries.
const DERIVED_CACHE_MAX: usize = 1024;

/// A group's derived keys by kid: [request, reply].
type GroupKeys = HashMap<String, [Option<Prepared>; 2]>;

/// HMAC-SHA256 keyed, before any message: what every MAC under one key
/// starts from.
pub(crate) type MacKey = hmac::Hmac<Sha256>;

/// A derived key with its HMAC state: the key's two padded blocks hashed
/// once, not at every MAC. Both wipe themselves when dropped (the state
/// through sha2's and digest's `zeroize`).
#[derive(Clone)]
struct Prepared {
    key: Zeroizing<Key>,
    mac: MacKey,
}

// The HMAC states kept here hold what the key's padded blocks hashed to:
// the build fails if SHA-256's state or HMAC's block buffer stops wiping
// itself when dropped.
const _: fn() = || {
    fn wiped_on_drop<T: sha2::digest::zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<sha2::block_api::Sha256VarCore>();
    wiped_on_drop::<hmac::digest::block_api::Buffer<hmac::block_api::HmacCore<Sha256>>>();
};

impl Prepared {
    fn new(key: Key) -> Self {
        use hmac::KeyInit;
        Self {
            // HMAC accepts keys of any length.
            mac: MacKey::new_from_slice(&key).expect("HMAC takes any key length"),
            key: Zeroizing::new(key),
        }
    }
}

/// The key that checks one entry's MAC ([`KeyRing::check_key`]).
pub(crate) struct CheckKey {
    pub(crate) mac: MacKey,
    /// Not in the cache yet: kept there once the MAC verified.
    pub(crate) unseen: Option<Box<Unseen>>,
}

/// A key made for a check, with the names it is kept under.
pub(crate) struct Unseen {
    kid: String,
    kind: Kind,
    pipeline: String,
    group: String,
    prepared: Prepared,
}

/// Keys as they are used, each made ready once: derived from a raw ring
/// (HKDF costs more than the MAC it keys) or read from a derived one, with
/// their HMAC state; every signature and verification needs one. Hashed
/// with foldhash, not SipHash: only names a MAC vouched for, or that this
/// process signs with, are ever inserted, so an entry's names can look a
/// key up but never crowd the maps.
#[derive(Default)]
struct DerivedCache {
    /// pipeline → group → kid → keys.
    keys: RwLock<HashMap<String, HashMap<String, GroupKeys>>>,
    len: AtomicUsize,
}

impl DerivedCache {
    fn slot(kind: Kind) -> usize {
        match kind {
            Kind::Request => 0,
            Kind::Reply => 1,
        }
    }

    fn get(&self, kid: &str, kind: Kind, pipeline: &str, group: &str) -> Option<Prepared> {
        self.keys.read().get(pipeline)?.get(group)?.get(kid)?[Self::slot(kind)].clone()
    }

    fn put(&self, kid: &str, kind: Kind, pipeline: &str, group: &str, key: Prepared) {
        // `KeyRing::lookup` skips the name checks on a hit.
        debug_assert!(valid_group(group) && valid_pipeline(pipeline));
        let mut keys = self.keys.write();
        // Counted under the lock, so racing writers cannot pass the bound.
        if self.len.load(Ordering::Relaxed) >= DERIVED_CACHE_MAX {
            return;
        }
        let slot = &mut keys
            .entry(pipeline.to_string())
            .or_default()
            .entry(group.to_string())
            .or_default()
            .entry(kid.to_string())
            .or_default()[Self::slot(kind)];
        if slot.replace(key).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("KeyRing");
        d.field("current", &self.current)
            .field("layout", &self.layout_name())
            .field("kids", &self.kids().collect::<Vec<_>>());
        if let Layout::Derived(keys) = &self.layout {
            let held: Vec<String> = keys
                .iter()
                .flat_map(|(kid, kinds)| {
                    kinds.iter().flat_map(move |(kind, groups)| {
                        groups.keys().map(move |g| derived_file_name(kid, *kind, g))
                    })
                })
                .collect();
            d.field("keys", &held);
        }
        d.finish()
    }
}

/// What a key directory's file name says it holds.
enum FileName<'a> {
    Current,
    Raw(&'a str),
    Derived(&'a str, Kind, &'a str),
}

fn parse_file_name(name: &str) -> Result<FileName<'_>, KeyRingError> {
    let bad = |reason| KeyRingError::BadName {
        name: name.to_string(),
        reason,
    };
    if name == CURRENT_FILE {
        return Ok(FileName::Current);
    }
    let mut parts = name.split('.');
    let (Some(kid), kind, group, None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected `<kid>` or `<kid>.<request|reply>.<group>`"));
    };
    if !valid_kid(kid) {
        return Err(bad("a kid is 1-64 characters of [A-Za-z0-9_-]"));
    }
    match (kind, group) {
        (None, None) => Ok(FileName::Raw(kid)),
        (Some(kind), Some(group)) => {
            let kind = match kind {
                "request" => Kind::Request,
                "reply" => Kind::Reply,
                _ => return Err(bad("the kind is `request` or `reply`")),
            };
            if !valid_group(group) {
                return Err(bad("a group is a DNS label of at most 63 characters"));
            }
            Ok(FileName::Derived(kid, kind, group))
        }
        _ => Err(bad("expected `<kid>` or `<kid>.<request|reply>.<group>`")),
    }
}

fn decode_key(name: &str, text: &str) -> Result<Key, KeyRingError> {
    let bad = |reason: String| KeyRingError::BadKey {
        kid: name.to_string(),
        reason,
    };
    // Decoded into a buffer that holds what any file may decode to, wiped
    // when dropped, on error too; the key is copied out of it.
    let mut buf = Zeroizing::new([0u8; MAX_FILE_BYTES as usize * 3 / 4]);
    let len = base64::engine::general_purpose::STANDARD
        .decode_slice(text.trim(), &mut *buf)
        .map_err(|_| bad("file is not base64".into()))?;
    Key::try_from(&buf[..len]).map_err(|_| bad(format!("expected {KEY_LEN} bytes, found {len}")))
}

impl KeyRing {
    /// A ring from raw keys and the current kid.
    ///
    /// # Errors
    /// Invalid kids, keys that are not 32 bytes, or an unknown current kid.
    pub fn from_raw(current: &str, raw: &BTreeMap<String, Vec<u8>>) -> Result<Self, KeyRingError> {
        let mut keys = BTreeMap::new();
        for (kid, bytes) in raw {
            if !valid_kid(kid) {
                return Err(KeyRingError::BadKey {
                    kid: kid.clone(),
                    reason: "kid must be 1-64 characters of [A-Za-z0-9_-], not `current`".into(),
                });
            }
            let key: Key = bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyRingError::BadKey {
                    kid: kid.clone(),
                    reason: format!("expected {KEY_LEN} bytes, found {}", bytes.len()),
                })?;
            keys.insert(kid.clone(), key);
        }
        if !keys.contains_key(current) {
            return Err(KeyRingError::CurrentUnknown(current.to_string()));
        }
        Ok(Self {
            current: current.to_string(),
            layout: Layout::Ring(keys),
            derived: Arc::default(),
        })
    }

    /// A ring from the files of a key directory (name → content), in
    /// either layout: what [`KeyRing::load`] reads, and what
    /// [`derived_files`] renders.
    ///
    /// # Errors
    /// A name that is neither layout's, both layouts at once, content that
    /// is not base64 of 32 bytes, no `current`, or a `current` naming a kid
    /// that holds no key.
    pub fn from_files<T: AsRef<str>>(files: &BTreeMap<String, T>) -> Result<Self, KeyRingError> {
        if files.len() > MAX_KEY_FILES {
            return Err(KeyRingError::TooManyFiles);
        }
        let mut current = None;
        let mut raw = BTreeMap::new();
        let mut derived: BTreeMap<String, BTreeMap<Kind, BTreeMap<String, Key>>> = BTreeMap::new();
        for (name, text) in files {
            let text = text.as_ref();
            match parse_file_name(name)? {
                FileName::Current => current = Some(text.trim()),
                FileName::Raw(kid) => {
                    raw.insert(kid.to_string(), decode_key(name, text)?);
                }
                FileName::Derived(kid, kind, group) => {
                    derived
                        .entry(kid.to_string())
                        .or_default()
                        .entry(kind)
                        .or_default()
                        .insert(group.to_string(), decode_key(name, text)?);
                }
            }
        }
        let current = current.ok_or_else(|| KeyRingError::NoCurrent("the key set".into()))?;
        if !valid_kid(current) {
            return Err(KeyRingError::BadKey {
                kid: CURRENT_FILE.into(),
                reason: "does not name a kid (1-64 characters of [A-Za-z0-9_-])".into(),
            });
        }
        let layout = match (raw.is_empty(), derived.is_empty()) {
            (false, false) => return Err(KeyRingError::Mixed),
            (false, true) => Layout::Ring(raw),
            (true, _) => Layout::Derived(derived),
        };
        let ring = Self {
            current: current.to_string(),
            layout,
            derived: Arc::default(),
        };
        if !ring.knows(current) {
            return Err(KeyRingError::CurrentUnknown(current.to_string()));
        }
        Ok(ring)
    }

    /// A fresh ring with one random key, for a memory-profile run that was
    /// given no key directory. Lives as long as the process.
    pub fn ephemeral() -> Self {
        let kid = new_kid();
        let mut raw = BTreeMap::new();
        raw.insert(kid.clone(), random_key().to_vec());
        // One valid kid with a 32-byte key and matching current: cannot fail.
        Self::from_raw(&kid, &raw).expect("a generated ring is valid")
    }

    /// Reads a key directory, in either layout.
    ///
    /// # Errors
    /// See [`KeyRingError`].
    pub fn load(dir: &Path) -> Result<Self, KeyRingError> {
        let files = read_dir(dir)?;
        if !files.contains_key(CURRENT_FILE) {
            return Err(KeyRingError::NoCurrent(format!(
                "key directory {}",
                dir.display()
            )));
        }
        Self::from_files(&files)
    }

    /// The kid new envelopes are signed with.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// All kids that verify (in a derived ring: that hold at least one key).
    pub fn kids(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.layout {
            Layout::Ring(keys) => Box::new(keys.keys().map(String::as_str)),
            Layout::Derived(keys) => Box::new(keys.keys().map(String::as_str)),
        }
    }

    /// `ring` (raw keys, derives any key) or `derived` (holds only its keys).
    pub fn layout_name(&self) -> &'static str {
        match &self.layout {
            Layout::Ring(_) => "ring",
            Layout::Derived(_) => "derived",
        }
    }

    /// Whether `kid` is one of the ring's kids.
    pub fn knows(&self, kid: &str) -> bool {
        match &self.layout {
            Layout::Ring(keys) => keys.contains_key(kid),
            Layout::Derived(keys) => keys.contains_key(kid),
        }
    }

    /// Whether the current kid's `kind` key of `group` in `pipeline` can be
    /// had (startup checks name what a derived directory lacks).
    pub fn holds(&self, kind: Kind, pipeline: &str, group: &str) -> bool {
        self.key(&self.current, kind, pipeline, group).is_some()
    }

    /// The `kind` key of `group` in `pipeline` under `kid`: derived on use
    /// from a raw key, or looked up in a derived ring (whose keys were made
    /// for one pipeline: the one its directory was rendered for). `None`
    /// when the kid is unknown, the key is not held, or a name is invalid.
    /// The copy handed out is wiped when dropped.
    pub(crate) fn key(
        &self,
        kid: &str,
        kind: Kind,
        pipeline: &str,
        group: &str,
    ) -> Option<Zeroizing<Key>> {
        self.lookup(kid, kind, pipeline, group).map(|(p, _)| p.key)
    }

    /// The HMAC state of [`KeyRing::key`]'s key, ready for a message, for
    /// a key this process signs with: kept in the ring's cache.
    pub(crate) fn mac_key(
        &self,
        kid: &str,
        kind: Kind,
        pipeline: &str,
        group: &str,
    ) -> Option<MacKey> {
        let CheckKey { mac, unseen } = self.check_key(kid, kind, pipeline, group)?;
        self.remember(unseen);
        Some(mac)
    }

    /// The HMAC state of the key that checks an entry's MAC. The entry
    /// chose the group (a reply's key id names it), so the key is kept in
    /// the ring's cache only once a MAC verified under it
    /// ([`KeyRing::remember`]): entries naming made-up groups cannot fill
    /// the cache and push real keys out of it.
    pub(crate) fn check_key(
        &self,
        kid: &str,
        kind: Kind,
        pipeline: &str,
        group: &str,
    ) -> Option<CheckKey> {
        let (p, cached) = self.lookup(kid, kind, pipeline, group)?;
        if cached {
            return Some(CheckKey {
                mac: p.mac,
                unseen: None,
            });
        }
        Some(CheckKey {
            mac: p.mac.clone(),
            unseen: Some(Box::new(Unseen {
                kid: kid.to_string(),
                kind,
                pipeline: pipeline.to_string(),
                group: group.to_string(),
                prepared: p,
            })),
        })
    }

    /// Keeps the key of a [`CheckKey`] whose MAC verified.
    pub(crate) fn remember(&self, unseen: Option<Box<Unseen>>) {
        if let Some(u) = unseen {
            self.derived
                .put(&u.kid, u.kind, &u.pipeline, &u.group, u.prepared);
        }
    }

    /// A key from the cache (`true`), or made now and not kept.
    fn lookup(
        &self,
        kid: &str,
        kind: Kind,
        pipeline: &str,
        group: &str,
    ) -> Option<(Prepared, bool)> {
        // Only valid names are ever cached: a hit needs no check.
        if let Some(p) = self.derived.get(kid, kind, pipeline, group) {
            return Some((p, true));
        }
        if !valid_group(group) || !valid_pipeline(pipeline) {
            return None;
        }
        let key = match &self.layout {
            Layout::Ring(keys) => derive(keys.get(kid)?, kind, pipeline, group),
            Layout::Derived(keys) => *keys.get(kid)?.get(&kind)?.get(group)?,
        };
        Some((Prepared::new(key), false))
    }

    /// Same kids, layout and key bytes (whether a reload changed anything).
    fn same_as(&self, other: &KeyRing) -> bool {
        self.current == other.current && self.layout == other.layout
    }
}

/// The files of a derived key directory holding, for every kid of `ring`,
/// the `(kind, group)` keys of `pipeline` listed in `needs`, plus `current`
/// (the ring's): file name → content (base64 of the key; the kid for
/// `current`).
///
/// Deterministic: the same ring, pipeline and needs give the same files, so
/// a renderer can run at every rotation step and write only on change.
/// Every kid is rendered, so a process given the files verifies whatever
/// the ring verifies, and rotation works as with the ring itself. From a
/// derived ring only the keys it holds can be rendered.
///
/// # Errors
/// An invalid pipeline or group name, no needs, or a key the ring cannot
/// give (a derived ring without it).
pub fn derived_files(
    ring: &KeyRing,
    pipeline: &str,
    needs: &[(Kind, &str)],
) -> Result<BTreeMap<String, Zeroizing<String>>, KeyRingError> {
    if !valid_pipeline(pipeline) {
        return Err(KeyRingError::BadPipeline(
            pipeline.escape_debug().to_string(),
        ));
    }
    if needs.is_empty() {
        return Err(KeyRingError::NothingNeeded);
    }
    if let Some((_, group)) = needs.iter().find(|(_, g)| !valid_group(g)) {
        return Err(KeyRingError::BadName {
            name: group.to_string(),
            reason: "a group is a DNS label of at most 63 characters",
        });
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut files = BTreeMap::new();
    for kid in ring.kids() {
        for &(kind, group) in needs {
            let key =
                ring.key(kid, kind, pipeline, group)
                    .ok_or_else(|| KeyRingError::Missing {
                        kid: kid.to_string(),
                        kind: kind.as_str(),
                        group: group.to_string(),
                    })?;
            let text = Zeroizing::new(b64.encode(key));
            files.insert(derived_file_name(kid, kind, group), text);
        }
    }
    let current = Zeroizing::new(ring.current().to_string());
    files.insert(CURRENT_FILE.to_string(), current);
    Ok(files)
}

/// Key files (name → content) as one JSON object, in a buffer of its final
/// size, wiped when dropped: the handover of a derived directory to
/// another process. Names and base64 text need no escaping, so the size is
/// known before writing; content that did would grow the buffer, leaving
/// a copy behind.
pub fn files_json(files: &BTreeMap<String, Zeroizing<String>>) -> Zeroizing<String> {
    let size = files
        .iter()
        .map(|(name, text)| name.len() + text.len() + 6)
        .sum::<usize>()
        + 2;
    let mut out = Zeroizing::new(Vec::with_capacity(size));
    let view: BTreeMap<&str, &str> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    // A map of strings always serialises, as UTF-8.
    let _ = serde_json::to_writer(&mut *out, &view);
    debug_assert_eq!(out.capacity(), size, "key files needed no escaping");
    Zeroizing::new(String::from_utf8(std::mem::take(&mut *out)).unwrap_or_default())
}

/// A new kid: UTC-free, sortable enough to read, unique with high probability.
pub fn new_kid() -> String {
    let mut b = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut b);
    format!("k{}-{}", crate::clock::now_ms() / 1000, hex(&b))
}

/// 32 random bytes from the OS-seeded CSPRNG.
pub fn random_key() -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    rand::thread_rng().fill_bytes(&mut k);
    k
}

/// Lowercase hex of `b`, in one allocation (every nonce goes through
/// here; a signature's is written in place with [`hex_into`]).
pub fn hex(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len() * 2);
    hex_into(b, &mut out);
    // Only ASCII digits were written.
    String::from_utf8(out).expect("hex digits are UTF-8")
}

/// Appends the lowercase hex of `b` to `out`.
pub fn hex_into(b: &[u8], out: &mut Vec<u8>) {
    out.reserve(b.len() * 2);
    for x in b {
        out.extend_from_slice(&hex_pair(*x));
    }
}

fn hex_pair(x: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[usize::from(x >> 4)], DIGITS[usize::from(x & 0xf)]]
}

#[cfg(test)]
mod tests;
