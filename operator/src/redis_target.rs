//! Where a pipeline's Redis is and how to connect to it, as its Secrets
//! say: managed Redis from the password of a role in `P-redis` (and its CA
//! when it speaks TLS), external Redis from the user's `urlSecretRef` (and
//! `caSecretRef`). Read by the autoscaler and the queue observer (as
//! `autoscaler`) and by the dead-letter actions (as `admin`).
//!
//! [`Connection`] keeps a connection made from them across readings, and
//! reads the Secrets again every [`TARGET_TTL`] or after a failure.
//!
//! Nothing here logs; nothing built here shows a password or a PEM in its
//! errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};
use sluice_crds::{RedisMode, StreamPipeline};
use sluice_platform::{RedisBackend, RedisConfig};

use crate::names;
use crate::password_rotation::PREVIOUS_SUFFIX;
use crate::redis_tls::CA_CERT_KEY;
use crate::render::redis_acl::Role;
use crate::render::redis_use::{managed_tls, managed_url};

/// What the pipeline's Secrets say about its Redis. No `Debug`: it holds
/// the URL's password and nothing here may log it.
#[derive(PartialEq, Eq)]
pub struct Target {
    pub url: String,
    /// External Redis with `caSecretRef`, or managed Redis with TLS.
    pub ca: Option<CaPem>,
}

/// The PEM CA of a Redis with a private CA, and where it came from (for
/// error messages, which never show the PEM).
#[derive(PartialEq, Eq)]
pub struct CaPem {
    /// The Secret and key it came from.
    pub secret: String,
    pub key: String,
    pub pem: Vec<u8>,
}

impl Target {
    /// The URL the pipeline's pods use — managed Redis from the password in
    /// `P-redis`, external from the user's `urlSecretRef` — and the CA:
    /// managed Redis's in `P-redis` when it speaks TLS, or the one in the
    /// user's `caSecretRef`, if any. Secrets are read by name (`get`);
    /// one that holds both is read once.
    pub async fn read(client: &Client, sp: &StreamPipeline, role: Role) -> Result<Target, String> {
        let ns = sp.namespace().unwrap_or_default();
        let name = sp.name_any();
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let external = sp
            .spec
            .redis
            .as_ref()
            .filter(|r| r.mode == RedisMode::External);
        let url_ref = external.and_then(|r| r.url_secret_ref.as_ref());
        let (secret, key) = match url_ref {
            Some(r) => (r.name.clone(), r.key.clone()),
            None => (names::redis(&name), role.password_key()),
        };
        let s = read_secret(&api, &secret).await?;
        // While a password rotation is under way, the previous password is
        // the one Redis surely knows (the new one only once applied).
        let previous = format!("{key}{PREVIOUS_SUFFIX}");
        let key = match s.data.as_ref() {
            Some(d) if url_ref.is_none() && d.contains_key(&previous) => previous,
            _ => key,
        };
        let value = s
            .data
            .as_ref()
            .and_then(|d| d.get(&key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .ok_or_else(|| format!("Secret {secret} has no UTF-8 key {key}"))?;
        let url = match url_ref {
            Some(_) => value.trim().to_string(),
            None => managed_url(
                &name,
                &ns,
                managed_tls(&sp.spec),
                &role.user(),
                Some(&value),
            ),
        };
        let ca = match (url_ref, external.and_then(|r| r.ca_secret_ref.as_ref())) {
            // Managed Redis with TLS: its CA is in the same Secret.
            (None, _) if managed_tls(&sp.spec) => {
                let pem = s
                    .data
                    .and_then(|mut d| d.remove(CA_CERT_KEY))
                    .ok_or_else(|| format!("Secret {secret} has no key {CA_CERT_KEY}"))?
                    .0;
                Some(CaPem {
                    secret: secret.clone(),
                    key: CA_CERT_KEY.into(),
                    pem,
                })
            }
            (_, None) => None,
            (_, Some(r)) => {
                let ca_secret = if r.name == secret {
                    s
                } else {
                    read_secret(&api, &r.name).await?
                };
                let pem = ca_secret
                    .data
                    .and_then(|mut d| d.remove(&r.key))
                    .ok_or_else(|| format!("Secret {} has no key {}", r.name, r.key))?
                    .0;
                Some(CaPem {
                    secret: r.name.clone(),
                    key: r.key.clone(),
                    pem,
                })
            }
        };
        Ok(Target { url, ca })
    }
}

/// The client configuration of a connection to `target`, whose commands
/// and connection attempts time out after `timeout`.
///
/// # Errors
/// A URL that does not parse; a CA with a URL that is not `rediss://`, or
/// without a usable certificate. The message names the CA's Secret and key,
/// never the PEM (nor the URL's password).
pub fn config(target: &Target, timeout: Duration) -> Result<RedisConfig, String> {
    let cfg = RedisConfig::from_url(&target.url)
        .map_err(|e| format!("the Redis URL does not parse: {e}"))?
        .with_command_timeout(timeout)
        .with_connect_timeout(timeout)
        .with_pool_size(1);
    match &target.ca {
        None => Ok(cfg),
        Some(ca) => cfg.with_ca_pem(&ca.pem).map_err(|e| {
            format!(
                "the Redis CA in Secret {} key {} cannot be used: {e}",
                ca.secret, ca.key
            )
        }),
    }
}

/// The Secret `name`, which must exist.
async fn read_secret(api: &Api<Secret>, name: &str) -> Result<Secret, String> {
    api.get_opt(name)
        .await
        .map_err(|e| format!("cannot read Secret {name}: {e}"))?
        .ok_or_else(|| format!("Secret {name} does not exist"))
}

/// How long a connection's Secrets are trusted before they are read again
/// (a rotated password, a new CA, a moved Redis).
pub const TARGET_TTL: Duration = Duration::from_secs(300);

/// A pipeline's Redis connection and what it was made from.
pub struct Connection {
    target: Target,
    read_at: Instant,
    /// It failed since: read the Secrets again before the next use.
    pub stale: bool,
    pub backend: Arc<RedisBackend>,
}

impl Connection {
    /// `sp`'s Redis as `role`: `cached` while its Secrets were read within
    /// [`TARGET_TTL`] and it did not fail since, else the one the Secrets
    /// now describe — `cached` again when they say the same (it may still be
    /// connecting). A new one's commands and connection attempts time out
    /// after `timeout`; with `wait` it is made only once it answers, else
    /// it connects in the background.
    ///
    /// # Errors
    /// The Secrets unreadable or unusable; with `wait`, Redis not answering.
    pub async fn refresh(
        client: &Client,
        sp: &StreamPipeline,
        role: Role,
        cached: Option<Self>,
        timeout: Duration,
        wait: bool,
    ) -> Result<Self, String> {
        let cached = match cached {
            Some(c) if !c.stale && c.read_at.elapsed() < TARGET_TTL => return Ok(c),
            other => other,
        };
        let target = Target::read(client, sp, role).await?;
        if let Some(c) = cached.filter(|c| c.target == target) {
            return Ok(Self {
                read_at: Instant::now(),
                stale: false,
                ..c
            });
        }
        let cfg = config(&target, timeout)?;
        let backend = if wait {
            RedisBackend::connect(cfg)
                .await
                .map_err(|e| format!("connecting to the pipeline's Redis: {e}"))?
        } else {
            RedisBackend::connect_lazy(cfg).map_err(|e| e.to_string())?
        };
        Ok(Self {
            target,
            read_at: Instant::now(),
            stale: false,
            backend,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);

    fn target(url: &str, pem: &[u8]) -> Target {
        Target {
            url: url.into(),
            ca: Some(CaPem {
                secret: "redis-tls".into(),
                key: "ca.crt".into(),
                pem: pem.to_vec(),
            }),
        }
    }

    #[test]
    fn an_unusable_ca_is_reported_by_its_secret_and_never_shown() {
        let pem = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";
        let e = config(&target("rediss://:pw-xyz@redis.example:6380/0", pem), T)
            .expect_err("a certificate that does not parse is refused");
        assert!(e.contains("Secret redis-tls key ca.crt"), "{e}");
        assert!(!e.contains("bm90IGEgY2VydA"), "the PEM leaked: {e}");
        let e = config(&target("rediss://redis.example:6380/0", b"no pem here"), T)
            .expect_err("no certificate at all is refused");
        assert!(e.contains("Secret redis-tls key ca.crt"), "{e}");
        assert!(!e.contains("no pem here"), "the content leaked: {e}");
    }

    #[test]
    fn a_ca_with_a_plain_redis_url_is_refused_without_the_password() {
        let e = config(&target("redis://:pw-xyz@redis.example:6379/0", b""), T)
            .expect_err("a CA needs rediss://");
        assert!(e.contains("rediss://"), "{e}");
        assert!(!e.contains("pw-xyz"), "the password leaked: {e}");
    }

    #[test]
    fn without_a_ca_the_url_alone_configures_the_connection() {
        let t = Target {
            url: "rediss://redis.example:6380/0".into(),
            ca: None,
        };
        assert!(config(&t, T).is_ok());
    }
}
