//! TLS termination in the ingress itself (`--tls-cert`, `--tls-key`), for
//! deployments without a proxy in front: HTTP/2 or HTTP/1.1 by ALPN, on
//! the one listener.
//!
//! - The certificate chain and key are PEM files (what a
//!   `kubernetes.io/tls` Secret holds as `tls.crt` and `tls.key`), at most
//!   1 MiB each; the key must match the first certificate. A bad pair
//!   refuses the start, naming the file.
//! - They are read again when either file changes (checked every
//!   [`RELOAD_EVERY`]): a renewed certificate is served to new connections
//!   without a restart. A bad pair on reload is logged and the previous one
//!   kept.
//! - TLS 1.2 and 1.3 only (rustls, ring); no client certificates.
//!
//! Nothing here logs or returns key bytes: errors name the file and what
//! is wrong with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

/// How often the files are checked for a change (by default).
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// The largest certificate or key file read.
const MAX_FILE: u64 = 1 << 20;

/// ALPN protocols offered, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Where the certificate chain and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{cert} and {key}: {message}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// The certificate served now, replaced when its files change.
#[derive(Debug)]
pub struct Certificates {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl Certificates {
    /// Reads the pair.
    ///
    /// # Errors
    /// An unreadable, oversized or malformed file, or a key that does not
    /// match the certificate.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_pair(&files, &provider)?;
        Ok(Self {
            files,
            current: RwLock::new(Arc::new(key)),
            provider,
        })
    }

    /// A TLS server configuration serving these certificates, offering h2
    /// and http/1.1.
    ///
    /// # Errors
    /// When the provider refuses the protocol versions (cannot happen with
    /// ring and TLS 1.2/1.3).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Reads the files again when they change (checked `every`), until
    /// `stop`.
    pub async fn reload(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut seen = stamps(&self.files);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = stamps(&self.files);
            if now == seen {
                continue;
            }
            // Marked seen only once loaded: a pair caught half-written (or
            // a read that failed) is tried again at the next check.
            match read_pair(&self.files, &self.provider) {
                Ok(key) => {
                    seen = now;
                    *self.current.write() = Arc::new(key);
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate not reloaded; serving the previous one");
                }
            }
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// Modification times of both files (`None` for one that cannot be read).
/// A Kubernetes Secret volume swaps a `..data` symlink: `metadata`
/// follows it, so the swap changes the time seen.
fn stamps(files: &TlsFiles) -> [Option<SystemTime>; 2] {
    let at = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    [at(&files.cert), at(&files.key)]
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let fail = |message: String| TlsError::File {
        path: path.to_path_buf(),
        message,
    };
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    // Not a FIFO or a device: opening one could block, reading it not end.
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(fail(format!("larger than {MAX_FILE} bytes")));
    }
    Ok(bytes)
}

fn read_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read_file(&files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            path: files.cert.clone(),
            message: format!("not PEM certificates: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::File {
            path: files.cert.clone(),
            message: "holds no CERTIFICATE block".into(),
        });
    }
    let key_pem = read_file(&files.key)?;
    // The parser's error can quote nothing of the key; it is not shown
    // anyway, only that the file holds no usable key.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::File {
        path: files.key.clone(),
        message: "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".into(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        message: match e {
            rustls::Error::InconsistentKeys(_) => {
                "the key does not belong to the first certificate".into()
            }
            other => format!("unusable: {other}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> TlsFiles {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.cert.pem()).unwrap();
        std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn a_matching_pair_loads_and_a_mismatched_or_broken_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a");
        let b = pair(dir.path(), "b");
        assert!(Certificates::load(a.clone()).is_ok());

        let crossed = TlsFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = Certificates::load(crossed).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");

        std::fs::write(&b.key, "not a key").unwrap();
        let e = Certificates::load(b.clone()).unwrap_err().to_string();
        assert!(
            e.contains("b.key") && e.contains("no PEM private key"),
            "{e}"
        );
        assert!(!e.contains("not a key"), "{e}");

        std::fs::write(&b.cert, "").unwrap();
        let e = Certificates::load(b).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");

        let missing = TlsFiles {
            cert: dir.path().join("none.crt"),
            key: a.key,
        };
        let e = Certificates::load(missing).unwrap_err().to_string();
        assert!(e.contains("none.crt") && e.contains("cannot read"), "{e}");
    }
}
