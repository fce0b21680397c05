//! Connection settings of the Redis adapters: URL (credentials, database,
//! TLS), timeouts and pool size.
//!
//! The URL is parsed once, here, so a bad URL is reported when the process
//! starts rather than on the first command. The password never leaves this
//! module in readable form: `Debug`, `Display` and every error show the URL
//! with its credentials replaced by `***`.

use std::fmt;
use std::time::Duration;

use fred::types::config::Config as FredConfig;

/// How long one ordinary command may take before the caller gets
/// [`BackendError::Timeout`](crate::BackendError::Timeout).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long opening one TCP (and TLS) connection may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pooled connections for ordinary commands. Blocking reads never use them.
///
/// Two: the client writes a command and flushes it only when no other
/// command waits behind it on the same connection, so traffic spread over
/// fewer connections goes out in fewer system calls (docs/benchmarks.md,
/// 2026-12-04: two instead of four gave up to 7 % more requests per
/// second, one up to 8 %); a second one keeps a large entry being written
/// from holding up every other command.
pub const DEFAULT_POOL_SIZE: usize = 2;

/// Idle dedicated connections (of blocking reads) kept for the next one, at
/// least: a process with several readers blocked at once (the reply
/// listener, streamed answers) does not open and close one per read.
pub const MIN_IDLE_BLOCKING: usize = 4;

/// Where and how to reach Redis.
///
/// Built from a URL, `redis://[[user]:password@]host[:port][/db]`; `rediss://`
/// selects TLS (rustls, verifying the server against the system's root
/// certificates, or only against a private CA given to
/// [`RedisConfig::with_ca_pem`]), and fred's
/// `redis-cluster://` form reaches a Redis Cluster (every key of one pipeline
/// shares a hash tag, so its transactions stay in one slot). Redis 7.0 or
/// newer is required (`SET … NX GET`, `XAUTOCLAIM`).
///
/// # Guarantees
/// `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct RedisConfig {
    url: String,
    fred: FredConfig,
    /// Client-side limit of every ordinary command; blocking reads get their
    /// block time plus this. Default [`DEFAULT_COMMAND_TIMEOUT`].
    pub command_timeout: Duration,
    /// Limit of opening one connection. Default [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// Connections carrying ordinary commands (at least 1). Default
    /// [`DEFAULT_POOL_SIZE`]. Blocking reads use connections of their own,
    /// kept idle up to the same number, [`MIN_IDLE_BLOCKING`] at least.
    pub pool_size: usize,
}

/// A Redis URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The URL does not parse, or names something this build cannot do.
    #[error("invalid Redis URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with its credentials redacted.
        url: String,
        reason: String,
    },
    /// The CA certificate file for a `rediss://` URL cannot be used.
    #[error("invalid Redis CA certificate: {reason}")]
    InvalidCa { reason: String },
    /// The password file cannot be used; the reason never holds its content.
    #[error("invalid Redis password file: {reason}")]
    InvalidPasswordFile { reason: String },
}

/// Longest password file read, in bytes.
const MAX_PASSWORD_FILE: u64 = 1024;

/// The password in the file at `path`: its text without one trailing line
/// break; at most [`MAX_PASSWORD_FILE`] bytes, UTF-8, not empty. Errors name
/// the file, never its content.
fn read_password(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    // The limit plus a line break, and one byte more to tell it was passed.
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PASSWORD_FILE + 3).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let line = bytes
        .strip_suffix(b"\r\n")
        .or_else(|| bytes.strip_suffix(b"\n"))
        .unwrap_or(&bytes);
    if line.len() as u64 > MAX_PASSWORD_FILE {
        return Err(format!(
            "{} is longer than {MAX_PASSWORD_FILE} bytes",
            path.display()
        ));
    }
    let password =
        std::str::from_utf8(line).map_err(|_| format!("{} is not UTF-8", path.display()))?;
    if password.is_empty() || password.contains(['\r', '\n']) {
        return Err(format!("{} must hold one non-empty line", path.display()));
    }
    Ok(password.to_string())
}

/// Credentials read from a file at every new connection: a password
/// rotated on disk (a Kubernetes Secret volume) is used by the next
/// connection, with no restart. No `Debug` of the password: it is never
/// held here.
#[derive(Debug)]
struct PasswordFile {
    user: Option<String>,
    path: std::path::PathBuf,
}

#[async_trait::async_trait]
impl fred::types::config::CredentialProvider for PasswordFile {
    async fn fetch(
        &self,
        _server: Option<&fred::types::config::Server>,
    ) -> Result<(Option<String>, Option<String>), fred::error::Error> {
        // Off the async threads: the file is a mounted Secret, but a read
        // may still block.
        let path = self.path.clone();
        let password = tokio::task::spawn_blocking(move || read_password(&path))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|reason| fred::error::Error::new(fred::error::ErrorKind::Auth, reason))?;
        Ok((self.user.clone(), Some(password)))
    }
}

impl RedisConfig {
    /// Parses `url` and takes the default timeouts and pool size.
    ///
    /// # Errors
    /// [`ConfigError::InvalidUrl`] when fred cannot parse the URL (bad
    /// scheme, port or database, or TLS roots that cannot be loaded).
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        // Not a URL at all (a bare password in the wrong Secret key, say):
        // nothing of it is repeated.
        if !url.contains("://") {
            return Err(ConfigError::InvalidUrl {
                url: "(not a URL)".into(),
                reason: "no scheme: expected redis:// or rediss://".into(),
            });
        }
        let fred = FredConfig::from_url(url).map_err(|e| ConfigError::InvalidUrl {
            url: redact_url(url),
            reason: redact_secret(e.details(), password_of(url).as_deref()),
        })?;
        Ok(Self {
            url: url.to_string(),
            fred,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
        })
    }

    /// Sets [`Self::command_timeout`].
    pub fn with_command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = d;
        self
    }

    /// Sets [`Self::connect_timeout`].
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets [`Self::pool_size`] (0 is taken as 1).
    /// Applies the optional `--redis-timeout` (command and connect timeout)
    /// and `--redis-pool-size` settings of the runtime binaries.
    pub fn with_overrides(self, timeout: Option<Duration>, pool_size: Option<usize>) -> Self {
        let c = match timeout {
            Some(t) => self.with_command_timeout(t).with_connect_timeout(t),
            None => self,
        };
        match pool_size {
            Some(n) => c.with_pool_size(n),
            None => c,
        }
    }

    pub fn with_pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// The URL with its credentials replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Verifies the server's certificate against the CA certificates in
    /// `pem` (one or more PEM `CERTIFICATE` blocks) instead of the system's
    /// roots: for a Redis whose certificate a private CA signed. The host
    /// name (or IP) of the URL must still match the certificate.
    ///
    /// # Errors
    /// [`ConfigError::InvalidUrl`] when the URL is not `rediss://`, and
    /// [`ConfigError::InvalidCa`] when `pem` holds no usable certificate.
    pub fn with_ca_pem(mut self, pem: &[u8]) -> Result<Self, ConfigError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        if !self.uses_tls() {
            return Err(ConfigError::InvalidUrl {
                url: self.redacted_url(),
                reason: "a CA certificate is given, but the URL is not rediss:// (TLS)".into(),
            });
        }
        let bad = |reason: String| ConfigError::InvalidCa { reason };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("a certificate that cannot be a root: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("no PEM CERTIFICATE block in it".into()));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("no TLS version to offer: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.fred.tls = Some(fred::types::config::TlsConfig {
            connector: tls.into(),
            hostnames: fred::types::config::TlsHostMapping::None,
        });
        Ok(self)
    }

    /// [`Self::with_ca_pem`] with the PEM file at `path`; no file, no change.
    ///
    /// # Errors
    /// As [`Self::with_ca_pem`], and [`ConfigError::InvalidCa`] when the file
    /// cannot be read.
    pub fn with_ca_file(self, path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else { return Ok(self) };
        let pem = std::fs::read(path).map_err(|e| ConfigError::InvalidCa {
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        self.with_ca_pem(&pem)
    }

    /// Authenticates every new connection with the password in the file at
    /// `path`, read again each time (with the URL's user name, if any): a
    /// password changed on disk is used from the next connection on, and
    /// the password is in no environment variable or argument. The URL must
    /// then carry no password. No path, no change.
    ///
    /// # Errors
    /// [`ConfigError::InvalidPasswordFile`] when the file cannot be read now
    /// or holds no usable password, or the URL carries a password too.
    pub fn with_password_file(
        mut self,
        path: Option<&std::path::Path>,
    ) -> Result<Self, ConfigError> {
        let Some(path) = path else { return Ok(self) };
        if self.secret().is_some() {
            return Err(ConfigError::InvalidPasswordFile {
                reason: format!(
                    "the URL {} carries a password already; give one or the other",
                    self.redacted_url()
                ),
            });
        }
        read_password(path).map_err(|reason| ConfigError::InvalidPasswordFile { reason })?;
        self.fred.credential_provider = Some(std::sync::Arc::new(PasswordFile {
            user: self.fred.username.clone(),
            path: path.to_path_buf(),
        }));
        Ok(self)
    }

    /// Whether connections use TLS (`rediss://`).
    pub fn uses_tls(&self) -> bool {
        self.fred.uses_tls()
    }

    /// The database selected by the URL's path, if any.
    pub fn database(&self) -> Option<u8> {
        self.fred.database
    }

    pub(super) fn fred(&self) -> &FredConfig {
        &self.fred
    }

    /// The password, kept only to scrub it from error texts.
    pub(super) fn secret(&self) -> Option<String> {
        self.fred.password.clone().filter(|p| !p.is_empty())
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl fmt::Display for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted_url())
    }
}

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`. A userinfo
/// without `:` is redacted whole: people do write `redis://secret@host`.
pub(super) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        None => url.to_string(),
        Some((userinfo, host)) => {
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_string(),
            };
            format!("{scheme}://{user}@{host}{tail}")
        }
    }
}

/// The password part of a URL's userinfo, before fred has parsed it (used to
/// scrub parse errors).
fn password_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = authority.rsplit_once('@')?.0;
    let secret = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
    (!secret.is_empty()).then(|| secret.to_string())
}

/// Replaces every occurrence of `secret` in `text` by `***`.
pub(super) fn redact_secret(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_password() {
        let cfg = RedisConfig::from_url("redis://:hunter22@127.0.0.1:6380/3").unwrap();
        for shown in [format!("{cfg:?}"), cfg.to_string()] {
            assert!(!shown.contains("hunter22"), "{shown}");
            assert!(shown.contains("127.0.0.1:6380/3"), "{shown}");
        }
        assert_eq!(cfg.database(), Some(3));
        assert_eq!(cfg.secret().as_deref(), Some("hunter22"));
    }

    #[test]
    fn redaction_covers_user_and_bare_secret_forms() {
        assert_eq!(
            redact_url("redis://alice:pw@h:1/0"),
            "redis://alice:***@h:1/0"
        );
        assert_eq!(redact_url("redis://pw@h"), "redis://***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(password_of("redis://alice:pw@h:1/0").as_deref(), Some("pw"));
        assert_eq!(password_of("redis://h:1"), None);
    }

    #[test]
    fn invalid_url_error_is_redacted() {
        let err = RedisConfig::from_url("redis://:hunter22@host:notaport/0").unwrap_err();
        assert!(!err.to_string().contains("hunter22"), "{err}");
        // A bare secret where a URL belongs is not repeated either.
        let err = RedisConfig::from_url("hunter22-bare-password").unwrap_err();
        assert!(!err.to_string().contains("hunter22"), "{err}");
        assert!(err.to_string().contains("redis://"), "{err}");
        assert_eq!(redact_url("hunter22"), "(not a URL)");
    }

    #[test]
    fn rediss_selects_tls() {
        let cfg = RedisConfig::from_url("rediss://:pw@redis.example:6380").unwrap();
        assert!(cfg.uses_tls());
        assert!(!RedisConfig::from_url("redis://h").unwrap().uses_tls());
    }

    #[test]
    fn defaults_are_documented_values() {
        let cfg = RedisConfig::from_url("redis://127.0.0.1").unwrap();
        assert_eq!(cfg.command_timeout, DEFAULT_COMMAND_TIMEOUT);
        assert_eq!(cfg.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(cfg.pool_size, DEFAULT_POOL_SIZE);
        assert_eq!(cfg.with_pool_size(0).pool_size, 1);
    }

    #[test]
    fn a_password_file_is_checked_at_start_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        let url = "rediss://group-io@redis.example:6379";
        let missing = RedisConfig::from_url(url)
            .unwrap()
            .with_password_file(Some(&file))
            .unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
        for (content, why) in [
            ("", "one non-empty line"),
            ("\n", "one non-empty line"),
            ("two\nlines-secret\n", "one non-empty line"),
        ] {
            std::fs::write(&file, content).unwrap();
            let e = RedisConfig::from_url(url)
                .unwrap()
                .with_password_file(Some(&file))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{e}");
            assert!(!e.contains("lines-secret"), "the content leaked: {e}");
        }
        std::fs::write(&file, format!("{}\n", "x".repeat(1024))).unwrap();
        assert_eq!(
            read_password(&file).unwrap().len(),
            1024,
            "the limit itself is fine"
        );
        std::fs::write(&file, "x".repeat(2000)).unwrap();
        let e = RedisConfig::from_url(url)
            .unwrap()
            .with_password_file(Some(&file))
            .unwrap_err();
        assert!(e.to_string().contains("longer than 1024"), "{e}");
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        let e = RedisConfig::from_url(url)
            .unwrap()
            .with_password_file(Some(&file))
            .unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");

        std::fs::write(&file, "s3cret-from-file\n").unwrap();
        assert_eq!(read_password(&file).unwrap(), "s3cret-from-file");
        let cfg = RedisConfig::from_url(url)
            .unwrap()
            .with_password_file(Some(&file))
            .unwrap();
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let both = RedisConfig::from_url("redis://u:pw@h:1")
            .unwrap()
            .with_password_file(Some(&file))
            .unwrap_err();
        assert!(both.to_string().contains("one or the other"), "{both}");
        assert!(!both.to_string().contains("pw@"), "{both}");
    }
}
