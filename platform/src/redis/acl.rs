//! ACL administration: what the operator's admin user does to keep a
//! managed Redis's users equal to the ones it rendered (a group added or
//! removed while Redis runs), to make it load a renewed TLS
//! certificate, and to pause and resume the pipeline
//! ([`crate::pause`]). Nothing in the runtime calls this.
//!
//! The arguments of `ACL SETUSER` carry password hashes (`#<sha256>`),
//! never passwords; errors name the user and Redis's reason, not the rules.

use fred::types::Value;

use super::backend::RedisBackend;
use super::wire;
use crate::backend::{BackendError, Result};

impl RedisBackend {
    /// `ACL USERS`: the names of every user.
    ///
    /// # Errors
    /// Redis unreachable, or the connection's user may not list users.
    pub async fn acl_users(&self) -> Result<Vec<String>> {
        let reply = self
            .call("ACL", "", vec![Value::from("USERS")])
            .await
            .map_err(|e| self.err(e))?;
        Ok(wire::texts(&reply))
    }

    /// `ACL SETUSER <args…>`; `args[0]` is the user's name.
    ///
    /// # Errors
    /// Redis unreachable, or refused the rules; the message names the user
    /// and Redis's first words, never the rules (which hold a hash).
    pub async fn acl_setuser(&self, args: &[String]) -> Result<()> {
        let user = args.first().cloned().unwrap_or_default();
        let mut values = vec![Value::from("SETUSER")];
        values.extend(args.iter().map(|a| Value::from(a.as_str())));
        match self.call("ACL", "", values).await {
            Ok(_) => Ok(()),
            Err(e) => Err(match self.err(e) {
                BackendError::Unavailable(m) => {
                    // Redis quotes the offending rule after a colon.
                    let head = m.split(':').take(2).collect::<Vec<_>>().join(":");
                    BackendError::Unavailable(format!("ACL SETUSER {user}: {head}"))
                }
                other => other,
            }),
        }
    }

    /// `ACL DELUSER <names…>`; the number of users deleted.
    ///
    /// # Errors
    /// Redis unreachable or the connection's user may not delete users.
    pub async fn acl_deluser(&self, names: &[String]) -> Result<u64> {
        if names.is_empty() {
            return Ok(0);
        }
        let mut values = vec![Value::from("DELUSER")];
        values.extend(names.iter().map(|n| Value::from(n.as_str())));
        let reply = self
            .call("ACL", "", values)
            .await
            .map_err(|e| self.err(e))?;
        wire::integer(&reply, "ACL DELUSER")
    }

    /// `CONFIG SET tls-cert-file <cert> tls-key-file <key>` with the paths
    /// Redis already uses (read with `CONFIG GET`): Redis reads both files
    /// again and serves the certificate now on disk to new connections (a
    /// renewal); the ones open keep theirs. A pair that does not load
    /// leaves the old one.
    ///
    /// # Errors
    /// Redis unreachable, refused (no permission), speaks no TLS, or could
    /// not load the files; the message is Redis's.
    pub async fn reload_tls(&self) -> Result<()> {
        let mut values = vec![Value::from("SET")];
        for name in ["tls-cert-file", "tls-key-file"] {
            let reply = self
                .call("CONFIG", "", vec![Value::from("GET"), Value::from(name)])
                .await
                .map_err(|e| self.err(e))?;
            // `[name, value]`; RESP3 servers answer a map, flattened alike.
            let path = wire::texts(&reply).into_iter().nth(1).unwrap_or_default();
            if path.is_empty() {
                return Err(BackendError::Unavailable(format!(
                    "Redis has no {name}: it speaks no TLS"
                )));
            }
            values.extend([Value::from(name), Value::from(path)]);
        }
        self.call("CONFIG", "", values)
            .await
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Pauses (`SET <key> 1`, with no expiry) or resumes (`DEL <key>`) the
    /// pipeline whose pause key is `key` ([`crate::Keys::paused`]).
    ///
    /// # Errors
    /// Redis unreachable, or the connection's user may not write `key`.
    pub async fn set_paused(&self, key: &str, paused: bool) -> Result<()> {
        let (command, args) = if paused {
            ("SET", vec![Value::from(key), Value::from("1")])
        } else {
            ("DEL", vec![Value::from(key)])
        };
        self.call(command, key, args)
            .await
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}
