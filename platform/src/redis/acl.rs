//! ACL administration: what the operator's admin user does to keep a
//! managed Redis's users equal to the ones it rendered (a group added or
//! removed while Redis runs). Nothing in the runtime calls this.
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
}
