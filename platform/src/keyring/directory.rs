//! The key ring's directory: a fresh ring written into it, its files read
//! (bounded), and the ring a process uses, reloaded when the directory
//! changes. What a ring is made of and how its files are named is the
//! parent module's.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use parking_lot::RwLock;
use sha2::digest::zeroize::Zeroizing;
use tokio_util::sync::CancellationToken;

use super::{
    new_kid, random_key, KeyRing, KeyRingError, CURRENT_FILE, MAX_FILE_BYTES, MAX_KEY_FILES,
};

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
    let key = Zeroizing::new(random_key());
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key.as_slice()));
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

/// The directory's files (name → content), dotfiles skipped, symlinks
/// followed, every read bounded. Each file is read into a buffer of its
/// size (a buffer that grew would leave copies behind), wiped when the map
/// is dropped.
pub(super) fn read_dir(dir: &Path) -> Result<BTreeMap<String, Zeroizing<String>>, KeyRingError> {
    let io = |source| KeyRingError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(KeyRingError::BadName {
                name: name.to_string_lossy().into_owned(),
                reason: "the name is not UTF-8",
            });
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follow symlinks (the kubelet mounts files as links into `..data`).
        if !path.is_file() {
            continue;
        }
        if files.len() >= MAX_KEY_FILES {
            return Err(KeyRingError::TooManyFiles);
        }
        let file = std::fs::File::open(&path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len().min(MAX_FILE_BYTES);
        // One byte more than the size, so reading to the end needs no
        // second buffer; a file that grew meanwhile may still take one.
        let mut bytes = Zeroizing::new(Vec::with_capacity(usize::try_from(size).unwrap_or(0) + 1));
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(KeyRingError::BadKey {
                kid: name.to_string(),
                reason: format!("file is larger than {MAX_FILE_BYTES} bytes"),
            });
        }
        // The bytes move into the string, not copied; refused, they go
        // back into a buffer wiped when dropped.
        let text = String::from_utf8(std::mem::take(&mut *bytes)).map_err(|e| {
            drop(Zeroizing::new(e.into_bytes()));
            KeyRingError::BadKey {
                kid: name.to_string(),
                reason: "file is not text".into(),
            }
        })?;
        files.insert(name.to_string(), Zeroizing::new(text));
    }
    Ok(files)
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
        let changed = !guard.same_as(&ring);
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
                        tracing::info!(current = ring.current(), layout = ring.layout_name(), kids = ?ring.kids().collect::<Vec<_>>(), "key ring reloaded");
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
