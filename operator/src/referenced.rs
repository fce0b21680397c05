//! Secrets a pipeline names but does not own — external Redis's URL
//! (`redis.urlSecretRef`) and CA (`redis.caSecretRef`) — and how their
//! changes reach the pods that read them.
//!
//! ```text
//! GET each referenced Secret (by name, every reconcile)
//!   ├─ present with its key ─▶ "<name>/<resourceVersion>" ─▶ pod template annotation
//!   │                                                          sluice.dev/secret-versions
//!   └─ absent, or without the key ─▶ Degraded SecretMissing (the annotation leaves it out)
//! ```
//!
//! The runtime reads the URL (an environment variable) and the CA (a
//! mounted file) once, at start; a new value takes a new pod. Stamping the
//! Secrets' `resourceVersion`s on the runtime pod templates makes any change
//! of those Secret objects roll the pods that use them, noticed at the next
//! reconcile (at most `--requeue-interval` later: Secrets are read by name,
//! never watched, DESIGN §4). A version says nothing about the value: no key
//! byte reaches an annotation, log or event.
//!
//! Must not: read a Secret the spec does not name, or keep any value read.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use sluice_crds::{RedisMode, SecretKeyRef, StreamPipelineSpec};

use crate::error::{api_error, Error};

/// What the referenced Secrets look like now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Referenced {
    /// `name/resourceVersion` of each present Secret, in spec order, joined
    /// by `,`; `None` when the spec names no Secret.
    pub versions: Option<String>,
    /// What is missing (`Secret redis-url (spec.redis.urlSecretRef) does not
    /// exist`), one line per Secret.
    pub missing: Vec<String>,
}

/// The Secrets `spec` names, with the field naming each.
fn references(spec: &StreamPipelineSpec) -> Vec<(&'static str, &SecretKeyRef)> {
    let Some(r) = spec
        .redis
        .as_ref()
        .filter(|r| r.mode == RedisMode::External)
    else {
        return Vec::new();
    };
    [
        ("spec.redis.urlSecretRef", r.url_secret_ref.as_ref()),
        ("spec.redis.caSecretRef", r.ca_secret_ref.as_ref()),
    ]
    .into_iter()
    .filter_map(|(field, r)| Some((field, r?)))
    .collect()
}

/// Reads every Secret `spec` names.
///
/// # Errors
/// API errors other than `404`.
pub async fn read(api: &Api<Secret>, spec: &StreamPipelineSpec) -> Result<Referenced, Error> {
    let refs = references(spec);
    let mut found = Vec::new();
    for (_, r) in &refs {
        let secret = api
            .get_opt(&r.name)
            .await
            .map_err(|e| api_error("get", "Secret", &r.name, e))?;
        found.push(secret);
    }
    Ok(summarize(&refs, &found))
}

/// The versions and the missing of `refs`, given what was found for each.
fn summarize(refs: &[(&'static str, &SecretKeyRef)], found: &[Option<Secret>]) -> Referenced {
    let mut out = Referenced::default();
    let mut versions = Vec::new();
    for ((field, r), secret) in refs.iter().zip(found) {
        let Some(secret) = secret else {
            out.missing
                .push(format!("Secret {} ({field}) does not exist", r.name));
            continue;
        };
        let has_key = secret.data.as_ref().is_some_and(|d| d.contains_key(&r.key))
            || secret
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(&r.key));
        if !has_key {
            out.missing
                .push(format!("Secret {} ({field}) has no key {}", r.name, r.key));
        }
        let rv = secret.metadata.resource_version.as_deref().unwrap_or("");
        versions.push(format!("{}/{rv}", r.name));
    }
    if !refs.is_empty() {
        out.versions = Some(versions.join(","));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn spec(redis: &str) -> StreamPipelineSpec {
        sluice_crds::yaml::from_str(&format!(
            "redis: {redis}
interfaces: [{{name: api, path: /a, entry: a}}]
groups: [{{name: web, role: ingress}}]
nodes: [{{name: a, group: web, uses: builtin/echo}}]"
        ))
        .unwrap()
    }

    fn secret(rv: &str, keys: &[&str]) -> Secret {
        let mut s = Secret::default();
        s.metadata.resource_version = Some(rv.into());
        s.data = Some(
            keys.iter()
                .map(|k| {
                    (
                        (*k).to_string(),
                        ByteString(b"redis://secret@h:6379".to_vec()),
                    )
                })
                .collect(),
        );
        s
    }

    #[test]
    fn managed_redis_names_no_secret() {
        let s = spec("{mode: managed}");
        assert!(references(&s).is_empty());
        assert_eq!(summarize(&references(&s), &[]), Referenced::default());
    }

    #[test]
    fn versions_name_each_secret_and_never_a_value() {
        let s = spec(
            "{mode: external, urlSecretRef: {name: u, key: url}, caSecretRef: {name: c, key: ca.crt}}",
        );
        let refs = references(&s);
        let got = summarize(
            &refs,
            &[Some(secret("7", &["url"])), Some(secret("9", &["ca.crt"]))],
        );
        assert_eq!(got.versions.as_deref(), Some("u/7,c/9"));
        assert!(got.missing.is_empty());
        assert!(!format!("{got:?}").contains("secret@h"));
    }

    #[test]
    fn an_absent_secret_or_key_is_reported_with_its_field() {
        let s = spec(
            "{mode: external, urlSecretRef: {name: u, key: url}, caSecretRef: {name: c, key: ca.crt}}",
        );
        let refs = references(&s);
        let got = summarize(&refs, &[Some(secret("7", &["other"])), None]);
        assert_eq!(
            got.missing,
            [
                "Secret u (spec.redis.urlSecretRef) has no key url",
                "Secret c (spec.redis.caSecretRef) does not exist"
            ]
        );
        // The present one is still stamped: when the key appears, the
        // version changes and the pods roll onto it.
        assert_eq!(got.versions.as_deref(), Some("u/7"));
    }
}
