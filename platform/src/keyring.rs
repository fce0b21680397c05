//! The HMAC key ring: one 32-byte key per kid, one of them `current`.
//!
//! On disk (`--keys DIR`, the mounted Secret, DESIGN §6): a file per key named
//! by its kid holding base64 of 32 random bytes, and a file `current` holding
//! the kid to sign with. The whole directory is read (never single files), so
//! the kubelet's atomic `..data` symlink swap is seen as one change; names
//! starting with `.` are the kubelet's bookkeeping and are skipped.
//!
//! Each raw key is expanded with HKDF-SHA256 into a request key and a reply
//! key under distinct `info` labels; raw bytes never leave this module and no
//! `Debug`/`Display` output contains key material.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hkdf::Hkdf;
use parking_lot::RwLock;
use rand::RngCore;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::envelope::Kind;

/// Length of a raw key.
pub const KEY_LEN: usize = 32;
const HKDF_SALT: &[u8] = b"sluice-ipc-v1";
const INFO_REQUEST: &[u8] = b"sluice/request";
const INFO_REPLY: &[u8] = b"sluice/reply";
/// The file naming the signing kid.
pub const CURRENT_FILE: &str = "current";

/// Why a key directory could not be loaded. Never contains key bytes.
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
    #[error("key directory {0} has no `current` file naming the signing key")]
    NoCurrent(String),
    #[error("`current` names kid `{0}`, which is not in the directory")]
    CurrentUnknown(String),
}

/// Derived keys of one kid.
#[derive(Clone)]
struct Derived {
    request: [u8; 32],
    reply: [u8; 32],
}

/// An immutable set of keys and the kid to sign with.
#[derive(Clone)]
pub struct KeyRing {
    current: String,
    keys: BTreeMap<String, Derived>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 64
        && kid
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

fn derive(raw: &[u8]) -> Derived {
    let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), raw);
    let mut request = [0u8; 32];
    let mut reply = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
    hk.expand(INFO_REQUEST, &mut request)
        .expect("32 bytes is a valid HKDF length");
    hk.expand(INFO_REPLY, &mut reply)
        .expect("32 bytes is a valid HKDF length");
    Derived { request, reply }
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
                    reason: "kid must be 1-64 characters of [A-Za-z0-9_-]".into(),
                });
            }
            if bytes.len() != KEY_LEN {
                return Err(KeyRingError::BadKey {
                    kid: kid.clone(),
                    reason: format!("expected {KEY_LEN} bytes, found {}", bytes.len()),
                });
            }
            keys.insert(kid.clone(), derive(bytes));
        }
        if !keys.contains_key(current) {
            return Err(KeyRingError::CurrentUnknown(current.to_string()));
        }
        Ok(Self {
            current: current.to_string(),
            keys,
        })
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

    /// Reads a key directory.
    ///
    /// # Errors
    /// See [`KeyRingError`].
    pub fn load(dir: &Path) -> Result<Self, KeyRingError> {
        let (current, raw) = read_dir(dir)?;
        let current = current.ok_or_else(|| KeyRingError::NoCurrent(dir.display().to_string()))?;
        Self::from_raw(&current, &raw)
    }

    /// The kid new envelopes are signed with.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// All kids that verify.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The derived key for `kid` and `kind`, if the kid is known.
    pub(crate) fn key(&self, kid: &str, kind: Kind) -> Option<&[u8; 32]> {
        self.keys.get(kid).map(|d| match kind {
            Kind::Request => &d.request,
            Kind::Reply => &d.reply,
        })
    }
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

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes a fresh ring (one key, made current) into `dir`, creating it.
/// Files are written with mode 0600 where the platform supports it.
///
/// # Errors
/// The directory exists and already holds a `current` file, or I/O fails.
pub fn write_new(dir: &Path) -> Result<String, KeyRingError> {
    let io = |source| KeyRingError::Io {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    if dir.join(CURRENT_FILE).exists() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "already holds a key ring (a `current` file); refusing to overwrite",
        )));
    }
    let kid = new_kid();
    let encoded = base64::engine::general_purpose::STANDARD.encode(random_key());
    write_private(&dir.join(&kid), encoded.as_bytes()).map_err(io)?;
    write_private(&dir.join(CURRENT_FILE), kid.as_bytes()).map_err(io)?;
    Ok(kid)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(data)
}

type RawDir = (Option<String>, BTreeMap<String, Vec<u8>>);

fn read_dir(dir: &Path) -> Result<RawDir, KeyRingError> {
    let io = |source| KeyRingError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut current = None;
    let mut raw = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follow symlinks (the kubelet mounts files as links into `..data`).
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        if name == CURRENT_FILE {
            current = Some(text.trim().to_string());
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| KeyRingError::BadKey {
                kid: name.clone(),
                reason: "file is not base64".into(),
            })?;
        raw.insert(name, bytes);
    }
    Ok((current, raw))
}

/// The ring a process signs and verifies with, swapped atomically when the
/// directory changes.
#[derive(Clone, Debug)]
pub struct SharedKeyRing {
    inner: Arc<RwLock<Arc<KeyRing>>>,
    dir: Option<PathBuf>,
}

impl SharedKeyRing {
    /// A ring that never changes.
    pub fn fixed(ring: KeyRing) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Arc::new(ring))),
            dir: None,
        }
    }

    /// Loads `dir` now; [`SharedKeyRing::watch`] keeps it current.
    ///
    /// # Errors
    /// As [`KeyRing::load`]: a process must not start without a valid ring.
    pub fn from_dir(dir: &Path) -> Result<Self, KeyRingError> {
        let ring = KeyRing::load(dir)?;
        Ok(Self {
            inner: Arc::new(RwLock::new(Arc::new(ring))),
            dir: Some(dir.to_path_buf()),
        })
    }

    /// The ring as of now.
    pub fn get(&self) -> Arc<KeyRing> {
        self.inner.read().clone()
    }

    /// Re-reads the directory; returns true when the ring changed.
    ///
    /// # Errors
    /// The directory is unreadable or invalid; the previous ring stays in use
    /// (a half-written update must not stop a running process).
    pub fn reload(&self) -> Result<bool, KeyRingError> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let ring = KeyRing::load(dir)?;
        let mut guard = self.inner.write();
        let changed = guard.current != ring.current
            || !guard.keys.keys().eq(ring.keys.keys())
            || guard
                .keys
                .iter()
                .zip(ring.keys.iter())
                .any(|((_, a), (_, b))| a.request != b.request);
        if changed {
            *guard = Arc::new(ring);
        }
        Ok(changed)
    }

    /// Polls the directory every `every` until `cancel`, logging changes
    /// (kids only) and load failures.
    ///
    /// Polling, rather than inotify, sees the kubelet's symlink swaps on every
    /// filesystem and costs a few small reads per period.
    pub fn watch(&self, every: Duration, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match this.reload() {
                    Ok(true) => {
                        let ring = this.get();
                        tracing::info!(current = ring.current(), kids = ?ring.kids().collect::<Vec<_>>(), "key ring reloaded");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "key ring reload failed; keeping the previous ring")
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_names_kids_and_never_key_bytes() {
        let ring = KeyRing::ephemeral();
        let s = format!("{ring:?}");
        assert!(s.contains(ring.current()));
        let key = ring.key(ring.current(), Kind::Request).unwrap();
        assert!(!s.contains(&hex(key)));
    }

    #[test]
    fn request_and_reply_keys_differ() {
        let ring = KeyRing::ephemeral();
        assert_ne!(
            ring.key(ring.current(), Kind::Request),
            ring.key(ring.current(), Kind::Reply)
        );
    }

    #[test]
    fn write_new_then_load_round_trips_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let kid = write_new(dir.path()).unwrap();
        let ring = KeyRing::load(dir.path()).unwrap();
        assert_eq!(ring.current(), kid);
        assert!(write_new(dir.path()).is_err());
    }

    #[test]
    fn bad_directories_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            KeyRing::load(dir.path()),
            Err(KeyRingError::NoCurrent(_))
        ));
        std::fs::write(dir.path().join("current"), "k1").unwrap();
        assert!(matches!(
            KeyRing::load(dir.path()),
            Err(KeyRingError::CurrentUnknown(_))
        ));
        std::fs::write(dir.path().join("k1"), "not base64!").unwrap();
        let e = KeyRing::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not base64"), "{e}");
        std::fs::write(dir.path().join("k1"), "c2hvcnQ=").unwrap();
        let e = KeyRing::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("expected 32 bytes"), "{e}");
    }
}
