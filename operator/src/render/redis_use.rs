//! Which Redis a pipeline's pods use — none (memory backends), the managed
//! one the operator runs, or the user's external one — and what a client of
//! managed Redis needs: its address and the key of its password.
//!
//! Shared by the renderers ([`super::redis`], [`super::autoscale`]) and the
//! builtin autoscaler ([`crate::autoscale`]), which reads queue counters from
//! the same Redis.

use sluice_crds::{
    BackendKind, FieldError, Persistence, RedisMode, SecretKeyRef, StreamPipelineSpec,
};

use crate::names;
use crate::settings::OperatorSettings;

/// Port of managed Redis (container, Services, NetworkPolicy).
pub const REDIS_PORT: i32 = 6379;
/// Key of the password in the `P-redis` Secret.
pub const PASSWORD_KEY: &str = "password";
/// PVC size when `spec.redis.storage` is unset.
pub const DEFAULT_STORAGE: &str = "1Gi";
pub use sluice_crds::replay_budget::{max_memory, DEFAULT_MAX_MEMORY};

/// Which Redis the runtime pods of a pipeline use.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisUse<'a> {
    /// Memory backends: no Redis at all.
    None,
    /// The operator runs it.
    Managed(ManagedRedis),
    /// The user's: the URL is in the Secret key `url`, and the PEM CA its
    /// certificate chains to in `ca` when that is not a public CA.
    External {
        url: &'a SecretKeyRef,
        ca: Option<&'a SecretKeyRef>,
    },
}

/// Managed Redis settings with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedRedis {
    pub persistence: Persistence,
    /// PVC size (used with `persistence: aof`).
    pub storage: String,
    /// StorageClass of the volume; `None` for the cluster's default.
    pub storage_class: Option<String>,
    /// Keep the volume when the pipeline is deleted (`redis.retainOnDelete`).
    pub retain_on_delete: bool,
    /// `maxmemory` in bytes (`redis.maxMemory`).
    pub max_memory: u64,
    /// TLS only, with the operator's CA (`redis.tls`, default on).
    pub tls: bool,
    pub image: String,
}

/// The Redis a spec asks for. With redis backends and no `spec.redis`, Redis
/// is managed with the defaults.
///
/// # Errors
/// `mode: external` without `urlSecretRef` (validation refuses that first).
pub fn redis_use<'a>(
    spec: &'a StreamPipelineSpec,
    settings: &OperatorSettings,
) -> Result<RedisUse<'a>, FieldError> {
    if spec.backends.queue != BackendKind::Redis {
        return Ok(RedisUse::None);
    }
    let Some(r) = spec.redis.as_ref() else {
        return Ok(RedisUse::Managed(ManagedRedis {
            persistence: Persistence::default(),
            storage: DEFAULT_STORAGE.to_string(),
            storage_class: None,
            retain_on_delete: true,
            max_memory: DEFAULT_MAX_MEMORY,
            tls: true,
            image: settings.images.redis.clone(),
        }));
    };
    match (r.mode, &r.url_secret_ref) {
        (RedisMode::External, Some(url)) => Ok(RedisUse::External {
            url,
            ca: r.ca_secret_ref.as_ref(),
        }),
        (RedisMode::External, None) => Err(FieldError {
            path: "spec.redis.urlSecretRef".into(),
            message: "external Redis needs urlSecretRef".into(),
        }),
        (RedisMode::Managed, _) => Ok(RedisUse::Managed(ManagedRedis {
            persistence: r.persistence,
            storage: r
                .storage
                .clone()
                .unwrap_or_else(|| DEFAULT_STORAGE.to_string()),
            storage_class: r.storage_class_name.clone(),
            retain_on_delete: r.retain_on_delete.unwrap_or(true),
            max_memory: max_memory(spec),
            tls: r.tls.unwrap_or(true),
            image: r
                .image
                .clone()
                .unwrap_or_else(|| settings.images.redis.clone()),
        })),
    }
}

/// `host:port` of a pipeline's managed Redis client Service.
pub fn managed_address(pipeline: &str, namespace: &str) -> String {
    format!("{}.{namespace}.svc:{REDIS_PORT}", names::redis(pipeline))
}

/// The URL of a pipeline's managed Redis for `user`, with `password` or
/// without one (given apart, as a file) (`rediss://` when it speaks TLS).
pub fn managed_url(
    pipeline: &str,
    namespace: &str,
    tls: bool,
    user: &str,
    password: Option<&str>,
) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    let secret = password.map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{scheme}://{user}{secret}@{}",
        managed_address(pipeline, namespace)
    )
}

/// Whether a spec's managed Redis speaks TLS: redis backends, managed, and
/// `redis.tls` not `false`.
pub fn managed_tls(spec: &StreamPipelineSpec) -> bool {
    spec.backends.queue == BackendKind::Redis
        && spec
            .redis
            .as_ref()
            .is_none_or(|r| r.mode == RedisMode::Managed && r.tls != Some(false))
}
