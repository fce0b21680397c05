//! The `P-redis` Secret of managed Redis and the `redis.conf` it carries:
//! one password per role, their hashes in the ACL lines of the file (two
//! per role while a password rotation runs), and with TLS the CA and
//! server certificate. The StatefulSet that mounts it and the runtime pods
//! that read it are [`super::redis`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use sluice_crds::{compile, Persistence, PipelineId, StreamPipeline};

use super::context::owner_of;
use super::error::{Error, Result};
use super::redis_acl;
use super::redis_use::REDIS_PORT;
use crate::labels::Component;
use crate::names;
use crate::redis_tls::{TlsMaterial, CERT_KEY, KEY_KEY};

/// Key of the config file in the `P-redis` Secret.
pub const CONFIG_KEY: &str = "redis.conf";
/// Where the `P-redis` Secret is mounted in the Redis container.
pub const CONFIG_DIR: &str = "/etc/redis";
/// Redis's data directory (the PVC or emptyDir `data`).
pub const DATA_DIR: &str = "/data";
/// Shortest and longest password [`redis_secret`] accepts.
const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 16..=256;

/// Whether [`redis_secret`] accepts `p` as a password: [`PASSWORD_LEN`]
/// characters of `A-Z a-z 0-9 - . _ ~` (it is spliced into a URL and a
/// config line).
pub fn password_acceptable(p: &str) -> bool {
    PASSWORD_LEN.contains(&p.len())
        && p.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'))
}

/// The config file of managed Redis, with `users` (from [`redis_acl`])
/// under their passwords' hashes.
///
/// `noeviction` because eviction would silently drop nonces and reply
/// streams (DESIGN §4); writes fail loudly once `maxmemory` is reached.
/// `protected-mode no` and `bind * -::*` because clients come over the pod
/// network; access is guarded by the ACL users (the `default` user is off
/// and has no password) and the NetworkPolicy.
pub fn redis_conf(
    persistence: Persistence,
    max_memory: u64,
    tls: bool,
    users: &[(redis_acl::User, Vec<&str>)],
) -> String {
    // TLS only: no plain port at all. Clients authenticate with their ACL
    // password, so they present no certificate.
    let listen = if tls {
        format!(
            "port 0\n\
             tls-port {REDIS_PORT}\n\
             tls-cert-file {CONFIG_DIR}/{CERT_KEY}\n\
             tls-key-file {CONFIG_DIR}/{KEY_KEY}\n\
             tls-auth-clients no\n\
             tls-protocols \"TLSv1.2 TLSv1.3\"\n"
        )
    } else {
        format!("port {REDIS_PORT}\n")
    };
    let persistence = match persistence {
        Persistence::Aof => "appendonly yes\n",
        // No AOF and no RDB snapshots: nothing is written to disk.
        Persistence::None => "appendonly no\nsave \"\"\n",
    };
    let mut acl = format!("{}\n", redis_acl::DEFAULT_USER_LINE);
    for (user, passwords) in users {
        acl.push_str(&user.conf_line(passwords));
        acl.push('\n');
    }
    format!(
        "# Managed Redis of a sluice pipeline, rendered by sluice-operator.\n\
         bind * -::*\n\
         {listen}\
         protected-mode no\n\
         dir {DATA_DIR}\n\
         maxmemory {max_memory}\n\
         maxmemory-policy noeviction\n\
         {persistence}\
         appendfsync everysec\n\
         enable-protected-configs no\n\
         enable-debug-command no\n\
         enable-module-command no\n\
         {acl}"
    )
}

/// The `P-redis` Secret: one password per role of the pipeline
/// (`<user>.password`, [`redis_acl::Role::password_key`]), the autoscaler's
/// user name for KEDA, the `redis.conf` that carries the passwords'
/// hashes, and with TLS the CA and server certificate `tls`
/// ([`crate::redis_tls`]).
///
/// Passwords are random, so the reconciler creates this Secret only when it
/// is absent, from fresh material `password` gives per role; later it
/// re-renders it with the stored passwords (fresh ones only for new roles)
/// and updates it if different — when a group or the persistence setting
/// changes. The Redis pod's config hash ignores the users, so a new group
/// restarts no Redis: the operator creates its user live
/// ([`crate::redis_users`]).
///
/// # Errors
/// Missing name, namespace or uid; a spec that does not compile; `tls`
/// given when managed Redis does not speak TLS or missing when it does; a
/// password shorter than 16 or longer than 256 characters, or with
/// characters other than `A-Z a-z 0-9 - . _ ~` (it is spliced into a URL).
/// The error never contains a password.
pub fn redis_secret(
    sp: &StreamPipeline,
    password: impl FnMut(&redis_acl::Role) -> String,
    tls: Option<&TlsMaterial>,
) -> Result<Secret> {
    redis_secret_rotating(sp, password, |_| None, "", tls)
}

/// [`redis_secret`] in the middle of a password rotation
/// ([`crate::password_rotation`]): `also` gives a role a second password
/// Redis accepts besides the current one (both hashes in the role's line
/// of `redis.conf`), which the Secret keeps under `<key><suffix>` (`.next`
/// while staged, `.previous` while pods move).
///
/// # Errors
/// As [`redis_secret`]; the second passwords are checked alike.
pub fn redis_secret_rotating(
    sp: &StreamPipeline,
    mut password: impl FnMut(&redis_acl::Role) -> String,
    mut also: impl FnMut(&redis_acl::Role) -> Option<String>,
    suffix: &str,
    tls: Option<&TlsMaterial>,
) -> Result<Secret> {
    let owner = owner_of(sp)?;
    if tls.is_some() != crate::render::redis_use::managed_tls(&sp.spec) {
        return Err(Error::InvalidInput {
            what: "Redis TLS material",
            reason: "given exactly when managed Redis speaks TLS".into(),
        });
    }
    let plan = compile(
        PipelineId {
            namespace: owner.namespace.clone(),
            name: owner.name.clone(),
        },
        &sp.spec,
    )
    .map_err(Error::InvalidSpec)?;
    let users = redis_acl::users(&plan, tls.is_some());
    let check = |p: &str| {
        if password_acceptable(p) {
            Ok(())
        } else {
            Err(Error::InvalidInput {
                what: "Redis password",
                reason: format!(
                    "must be {} to {} characters of A-Z a-z 0-9 - . _ ~",
                    PASSWORD_LEN.start(),
                    PASSWORD_LEN.end()
                ),
            })
        }
    };
    // Each role's current password, and the second one Redis accepts too.
    let mut passwords = Vec::with_capacity(users.len());
    for u in &users {
        let p = password(&u.role);
        check(&p)?;
        let second = also(&u.role);
        if let Some(s) = &second {
            check(s)?;
        }
        passwords.push((p, second));
    }
    let persistence = sp
        .spec
        .redis
        .as_ref()
        .map(|r| r.persistence)
        .unwrap_or_default();
    let max_memory = crate::render::redis_use::max_memory(&sp.spec);
    let pairs: Vec<(redis_acl::User, Vec<&str>)> = users
        .iter()
        .zip(&passwords)
        .map(|(u, (p, second))| {
            let mut accepted = vec![p.as_str()];
            accepted.extend(second.as_deref());
            (u.clone(), accepted)
        })
        .collect();
    let mut data = BTreeMap::new();
    for (u, (p, second)) in users.iter().zip(&passwords) {
        let key = u.role.password_key();
        if let Some(s) = second {
            data.insert(format!("{key}{suffix}"), ByteString(s.as_bytes().to_vec()));
        }
        data.insert(key, ByteString(p.as_bytes().to_vec()));
    }
    data.insert(
        redis_acl::KEDA_USERNAME_KEY.to_string(),
        ByteString(redis_acl::Role::Keda.user().into_bytes()),
    );
    data.insert(
        CONFIG_KEY.to_string(),
        ByteString(redis_conf(persistence, max_memory, tls.is_some(), &pairs).into_bytes()),
    );
    if let Some(tls) = tls {
        data.extend(
            tls.to_data()
                .into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes()))),
        );
    }
    Ok(Secret {
        metadata: owner.meta(names::redis(&owner.name), Component::Redis, None),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::orders_redis;

    fn tls() -> TlsMaterial {
        TlsMaterial::placeholder(chrono::Utc::now())
    }

    #[test]
    fn config_file_carries_users_persistence_and_noeviction() {
        let user = redis_acl::User {
            role: redis_acl::Role::Probe,
            rules: vec!["-@all".into(), "+ping".into()],
        };
        let aof = redis_conf(
            Persistence::Aof,
            256 << 20,
            false,
            &[(user, vec!["s3cret-password-x"])],
        );
        assert!(!aof.contains("s3cret-password-x"), "only hashes: {aof}");
        assert!(
            !aof.contains("requirepass"),
            "the default user is off: {aof}"
        );
        let probe = format!(
            "user probe on #{} -@all +ping",
            redis_acl::password_hash("s3cret-password-x")
        );
        for line in [
            "maxmemory 268435456",
            redis_acl::DEFAULT_USER_LINE,
            probe.as_str(),
            "appendonly yes",
            "appendfsync everysec",
            "maxmemory-policy noeviction",
            "dir /data",
            "protected-mode no",
            "bind * -::*",
            "port 6379",
        ] {
            assert!(aof.lines().any(|l| l == line), "missing `{line}` in\n{aof}");
        }
        assert!(!aof.contains("tls"), "{aof}");
        let none = redis_conf(Persistence::None, 256 << 20, true, &[]);
        assert!(none.lines().any(|l| l == "appendonly no"));
        assert!(none.lines().any(|l| l == "save \"\""));
        for line in [
            "port 0",
            "tls-port 6379",
            "tls-cert-file /etc/redis/tls.crt",
            "tls-key-file /etc/redis/tls.key",
            "tls-auth-clients no",
        ] {
            assert!(
                none.lines().any(|l| l == line),
                "missing `{line}` in\n{none}"
            );
        }
    }

    #[test]
    fn passwords_that_could_break_the_url_or_the_file_are_refused() {
        let sp = orders_redis();
        for bad in [
            "short",
            "has space in it xxxxxxxx",
            "new\nline-requirepass-x",
            "at@sign-xxxxxxxxxxxx",
        ] {
            let e = redis_secret(&sp, |_| bad.into(), Some(&tls())).unwrap_err();
            assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
            let e = e.to_string();
            assert!(!e.contains(bad), "error must not echo the password: {e}");
        }
        let s = redis_secret(
            &sp,
            |r| format!("0123456789abcdef-{}", r.user()),
            Some(&tls()),
        )
        .unwrap();
        let data = s.data.unwrap();
        assert_eq!(data["ingress.password"].0, b"0123456789abcdef-ingress");
        assert_eq!(data["keda.username"].0, b"keda");
        let conf = String::from_utf8(data[CONFIG_KEY].0.clone()).unwrap();
        assert!(!conf.contains("0123456789abcdef"), "no password in {conf}");
        assert!(conf.contains(&redis_acl::password_hash("0123456789abcdef-admin")));
        assert!(conf.contains("appendonly yes\n"), "aof is the default");
    }
}
