//! The `Kv` port on Redis strings with a TTL (the replay guard).
//!
//! `set_nx` is one `SET key value NX GET PX ttl` (Redis ≥ 7.0): set-if-absent
//! and "who was there first" in one atomic command.

use std::time::Duration;

use async_trait::async_trait;
use fred::types::Value;

use super::backend::RedisBackend;
use super::wire;
use crate::backend::Result;
use crate::kv::Kv;

#[async_trait]
impl Kv for RedisBackend {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<Option<String>> {
        // PX 0 is an error in Redis; the shortest expiry is 1 ms.
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let args = vec![
            Value::from(key),
            Value::from(value),
            Value::from("NX"),
            Value::from("GET"),
            Value::from("PX"),
            Value::Integer(ttl_ms),
        ];
        let reply = self.call("SET", key, args).await.map_err(|e| self.err(e))?;
        // nil: this call set the key; otherwise the value already there.
        Ok(wire::text(&reply))
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        let reply = self
            .call("GET", key, vec![Value::from(key)])
            .await
            .map_err(|e| self.err(e))?;
        Ok(wire::text(&reply))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let reply = self
            .call("DEL", key, vec![Value::from(key)])
            .await
            .map_err(|e| self.err(e))?;
        Ok(wire::integer(&reply, "DEL")? > 0)
    }
}
