//! The `Kv` port: small keys with a TTL, used by the replay guard.

use std::time::Duration;

use async_trait::async_trait;

use crate::backend::Result;

/// A key-value store with expiry.
#[async_trait]
pub trait Kv: Send + Sync + 'static {
    /// Sets `key` to `value` for `ttl` if it is absent. Returns the existing
    /// value when the key was present (and leaves it unchanged), `None` when
    /// this call set it.
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<Option<String>>;

    /// The value of `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<String>>;

    /// Removes `key`; true if it existed.
    async fn delete(&self, key: &str) -> Result<bool>;
}
