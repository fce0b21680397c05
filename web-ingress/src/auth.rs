//! Caller identity per interface (`interfaces[].auth`): bearer tokens read
//! from a Secret key, or a header set by an authenticating proxy in front.
//! The caller's name scopes what a caller may find again: its asynchronous
//! answers and its idempotency keys.
//!
//! ```text
//! Authorization: Bearer <token> ─▶ SHA-256 ─▶ map of token digests ─▶ caller │ 401
//! <trustedHeader>: <name>        ─▶ printable, ≤ 256 bytes          ─▶ caller │ 401
//! no auth                        ─▶ the anonymous caller ("")
//! ```
//!
//! Tokens are looked up by their SHA-256, so the lookup compares digests,
//! never the secret bytes, and no token is kept in memory as read. The file
//! (`<secrets dir>/<secret>/<key>`, one `<caller>:<token>` per line, `#`
//! comments) is read again every [`RELOAD_EVERY`]: a token added to or
//! removed from the Secret takes effect once the kubelet has updated the
//! mounted file. A file that cannot be read or parsed keeps the tokens last
//! loaded (none at start: every call is refused) and is logged by path and
//! line number, never by content.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use sluice_crds::{AuthPlan, Plan};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// How often token files are read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);
/// Largest token file read.
pub const MAX_TOKEN_FILE: u64 = 1 << 20;
/// Longest caller name (from a token file or a trusted header).
pub const MAX_CALLER: usize = 256;

/// The tokens of one interface: digest → caller.
type Tokens = HashMap<[u8; 32], String>;

/// Every interface's way of identifying callers.
#[derive(Default)]
pub struct Callers {
    by_interface: HashMap<String, Identify>,
}

enum Identify {
    Bearer {
        file: PathBuf,
        tokens: RwLock<Arc<Tokens>>,
    },
    Header(String),
}

impl Callers {
    /// Reads the token files of `plan`'s interfaces under `secrets_dir`.
    pub fn load(plan: &Plan, secrets_dir: &Path) -> Self {
        let by_interface = plan
            .interfaces
            .iter()
            .filter_map(|it| {
                let identify = match it.auth.as_ref()? {
                    AuthPlan::Bearer { secret, key } => {
                        let file = secrets_dir.join(secret).join(key);
                        let tokens = read_tokens(&file).unwrap_or_else(|why| {
                            tracing::error!(interface = %it.name, file = %file.display(), %why, "no bearer tokens: every call is refused until the file is readable");
                            Tokens::new()
                        });
                        Identify::Bearer {
                            file,
                            tokens: RwLock::new(Arc::new(tokens)),
                        }
                    }
                    AuthPlan::TrustedHeader(h) => Identify::Header(h.clone()),
                };
                Some((it.name.clone(), identify))
            })
            .collect();
        Self { by_interface }
    }

    /// The caller of a request to interface `name`: `""` where the
    /// interface has no `auth`.
    ///
    /// # Errors
    /// `401 unauthorized` without a known token or the trusted header.
    pub fn identify(&self, name: &str, headers: &HeaderMap, rid: &str) -> Result<String, ApiError> {
        let Some(identify) = self.by_interface.get(name) else {
            return Ok(String::new());
        };
        match identify {
            Identify::Bearer { tokens, .. } => {
                let token = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        let (scheme, token) = v.split_once(' ')?;
                        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                    })
                    .filter(|t| !t.is_empty());
                let digest: Option<[u8; 32]> = token.map(|t| Sha256::digest(t.as_bytes()).into());
                let tokens = tokens.read().clone();
                match digest.and_then(|d| tokens.get(&d)) {
                    Some(caller) => Ok(caller.clone()),
                    None => Err(unauthorized(rid, "a valid bearer token")),
                }
            }
            Identify::Header(h) => {
                let mut values = headers.get_all(h.as_str()).iter();
                match (values.next(), values.next()) {
                    (Some(v), None) if valid_caller(v.as_bytes()) => {
                        Ok(String::from_utf8_lossy(v.as_bytes()).into_owned())
                    }
                    _ => Err(unauthorized(
                        rid,
                        "the caller's identity from the proxy in front",
                    )),
                }
            }
        }
    }

    /// Reads the token files again every [`RELOAD_EVERY`] until `stop`.
    pub async fn reload(self: Arc<Self>, stop: CancellationToken) {
        if !self
            .by_interface
            .values()
            .any(|i| matches!(i, Identify::Bearer { .. }))
        {
            return;
        }
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (name, identify) in &self.by_interface {
                if let Identify::Bearer { file, tokens } = identify {
                    match read_tokens(file) {
                        Ok(t) if *tokens.read().as_ref() != t => {
                            tracing::info!(interface = %name, callers = t.len(), "bearer tokens reloaded");
                            *tokens.write() = Arc::new(t);
                        }
                        Ok(_) => {}
                        Err(why) => {
                            tracing::warn!(interface = %name, file = %file.display(), %why, "bearer tokens not reloaded; the last ones stay")
                        }
                    }
                }
            }
        }
    }
}

fn unauthorized(rid: &str, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("this interface needs {what}"),
        rid,
    )
}

fn valid_caller(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_CALLER && v.iter().all(|c| (0x21..0x7f).contains(c))
}

/// Parses a token file: one `<caller>:<token>` per line; blank lines and
/// `#` comments skipped. Errors name a line number, never its content.
fn read_tokens(file: &Path) -> Result<Tokens, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_TOKEN_FILE + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read it: {}", e.kind()))?;
    if text.len() as u64 > MAX_TOKEN_FILE {
        return Err(format!("larger than {MAX_TOKEN_FILE} bytes"));
    }
    parse_tokens(&text)
}

fn parse_tokens(text: &str) -> Result<Tokens, String> {
    let mut tokens = Tokens::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| Err(format!("line {}: {why}", n + 1));
        let Some((caller, token)) = line.split_once(':') else {
            return bad("expected <caller>:<token>");
        };
        let (caller, token) = (caller.trim(), token.trim());
        if !valid_caller(caller.as_bytes()) {
            return bad("the caller must be 1 to 256 printable characters without spaces");
        }
        if token.len() < 16 || token.bytes().any(|c| c.is_ascii_whitespace()) {
            return bad("the token must be at least 16 characters, without spaces");
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if tokens.insert(digest, caller.to_string()).is_some() {
            return bad("this token is listed twice");
        }
    }
    Ok(tokens)
}

/// What scopes a caller's stored answers and idempotency keys: the digest
/// input `<caller>\n<value>` (a caller name has no newline).
pub fn scoped(caller: &str, value: &str) -> String {
    format!("{caller}\n{value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_name_callers_and_refuse_what_they_cannot_read() {
        let t = parse_tokens(
            "# billing's and search's tokens\n\nbilling: 0123456789abcdef0123\n search:fedcba9876543210fedc \n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        let d: [u8; 32] = Sha256::digest(b"0123456789abcdef0123").into();
        assert_eq!(t.get(&d).map(String::as_str), Some("billing"));
        for (text, line) in [
            ("no-colon", "line 1"),
            ("a:short", "line 1"),
            ("\n:0123456789abcdef0123", "line 2"),
            ("a b:0123456789abcdef0123", "line 1"),
            ("a:0123456789abcdef0123\nb:0123456789abcdef0123", "line 2"),
        ] {
            let e = parse_tokens(text).unwrap_err();
            assert!(e.starts_with(line), "{text:?}: {e}");
            assert!(!e.contains("0123456789"), "a token in an error: {e}");
        }
    }

    #[test]
    fn scopes_of_two_callers_never_meet() {
        // A caller name holds no newline, so the scope splits one way only.
        assert!(!valid_caller(b"a\nb"));
        assert_ne!(scoped("a", "k"), scoped("b", "k"));
        assert_eq!(scoped("", "k"), "\nk");
    }
}
