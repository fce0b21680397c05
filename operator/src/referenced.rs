//! Secrets a pipeline names but does not own, read by name at every
//! reconcile (never listed or watched, DESIGN §4):
//!
//! - external Redis's URL (`redis.urlSecretRef`) and CA
//!   (`redis.caSecretRef`): the pipeline's infrastructure, and how their
//!   changes reach the pods that read them;
//! - the Secrets nodes and sidecars name ([`SecretReference`]s): the
//!   namespace's other Secrets, which reach the pods only with their
//!   owner's opt-in.
//!
//! ```text
//! GET each Secret once by name
//!   ├─ Redis URL / CA ─ present with its key ─▶ "<name>/<resourceVersion>" ─▶ pod template
//!   │                 │                          annotation sluice.dev/secret-versions
//!   │                 └─ absent, or without the key ─▶ Degraded SecretMissing
//!   └─ node / sidecar ─ labelled sluice.dev/allow-reference=true ─▶ fine
//!                     └─ absent, or not labelled ─▶ refused: nothing is applied,
//!                                                    Degraded SecretReferenceRefused
//! ```
//!
//! The runtime reads the URL (an environment variable) and the CA (a
//! mounted file) once, at start; a new value takes a new pod. Stamping the
//! Secrets' `resourceVersion`s on the runtime pod templates makes any change
//! of those Secret objects roll the pods that use them, noticed at the next
//! reconcile (at most `--requeue-interval` later). A version says nothing
//! about the value: no key byte reaches an annotation, log or event.
//!
//! The opt-in keeps a StreamPipeline from being a way round RBAC: whoever
//! may edit one could otherwise name any Secret of the namespace and read it
//! through a sidecar or a `builtin/http` header. The label is the Secret
//! owner's consent, checked before anything naming the Secret is applied.
//!
//! Must not: read a Secret the spec does not name, or keep any value read.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use sluice_crds::{RedisMode, SecretKeyRef, StreamPipelineSpec};

use crate::error::{api_error, Error};
use crate::labels::ALLOW_REFERENCE;
use crate::render::SecretReference;

/// What the referenced Secrets look like now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Referenced {
    /// `name/resourceVersion` of each present Secret, in spec order, joined
    /// by `,`; `None` when the spec names no Secret.
    pub versions: Option<String>,
    /// What is missing (`Secret redis-url (spec.redis.urlSecretRef) does not
    /// exist`), one line per Secret.
    pub missing: Vec<String>,
    /// The Secrets nodes and sidecars name that are absent or lack the
    /// opt-in label, one line per Secret with every field naming it
    /// (`Secret api (spec.nodes[1].with.headersFrom.A.secretRef) is not
    /// labelled sluice.dev/allow-reference=true`).
    pub refused: Vec<String>,
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

/// Reads every Secret `spec` names for its Redis, and each of `opt_in`
/// (the Secrets its nodes and sidecars name, [`crate::Desired`]'s
/// `referenced_secrets`), each once.
///
/// # Errors
/// API errors other than `404`.
pub async fn read(
    api: &Api<Secret>,
    spec: &StreamPipelineSpec,
    opt_in: &[SecretReference],
) -> Result<Referenced, Error> {
    let refs = references(spec);
    let names = refs
        .iter()
        .map(|(_, r)| r.name.as_str())
        .chain(opt_in.iter().map(|r| r.name.as_str()));
    let mut found: BTreeMap<&str, Option<Secret>> = BTreeMap::new();
    for name in names {
        if found.contains_key(name) {
            continue;
        }
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| api_error("get", "Secret", name, e))?;
        found.insert(name, secret);
    }
    let of_refs: Vec<_> = refs
        .iter()
        .map(|(_, r)| found.get(r.name.as_str()).and_then(Option::as_ref))
        .collect();
    let mut out = summarize(&refs, &of_refs);
    out.refused = refused(opt_in, &found);
    Ok(out)
}

/// Whether the Secret's owner lets pipelines reference it.
fn allows_reference(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ALLOW_REFERENCE))
        .is_some_and(|v| v == "true")
}

/// One line per Secret of `opt_in` that is absent or lacks the label, with
/// every field naming it, in spec order; then one per key a reference needs
/// that its (allowed) Secret lacks.
fn refused(opt_in: &[SecretReference], found: &BTreeMap<&str, Option<Secret>>) -> Vec<String> {
    let mut lines = unlabelled(opt_in, found);
    for r in opt_in {
        let (Some(key), Some(Some(secret))) = (&r.key, found.get(r.name.as_str())) else {
            continue;
        };
        let has = secret.data.as_ref().is_some_and(|d| d.contains_key(key));
        if allows_reference(secret) && !has {
            lines.push(format!("Secret {} ({}) has no key {key}", r.name, r.path));
        }
    }
    lines
}

fn unlabelled(opt_in: &[SecretReference], found: &BTreeMap<&str, Option<Secret>>) -> Vec<String> {
    let mut paths: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in opt_in {
        match paths.iter_mut().find(|(n, _)| *n == r.name) {
            Some((_, p)) => p.push(&r.path),
            None => paths.push((&r.name, vec![&r.path])),
        }
    }
    paths
        .into_iter()
        .filter_map(|(name, fields)| {
            let fields = fields.join(", ");
            match found.get(name) {
                Some(Some(s)) if allows_reference(s) => None,
                Some(Some(_)) => Some(format!(
                    "Secret {name} ({fields}) is not labelled {ALLOW_REFERENCE}=true"
                )),
                _ => Some(format!("Secret {name} ({fields}) does not exist")),
            }
        })
        .collect()
}

/// The versions and the missing of `refs`, given what was found for each.
fn summarize(refs: &[(&'static str, &SecretKeyRef)], found: &[Option<&Secret>]) -> Referenced {
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
            &[
                Some(&secret("7", &["url"])),
                Some(&secret("9", &["ca.crt"])),
            ],
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
        let got = summarize(&refs, &[Some(&secret("7", &["other"])), None]);
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

    fn reference(name: &str, path: &str) -> SecretReference {
        SecretReference {
            name: name.into(),
            path: path.into(),
            key: None,
        }
    }

    fn labelled(value: &str) -> Secret {
        let mut s = secret("3", &["token"]);
        s.metadata.labels = Some([(ALLOW_REFERENCE.to_string(), value.to_string())].into());
        s
    }

    #[test]
    fn a_referenced_secret_needs_the_opt_in_label_set_to_true() {
        let refs = [
            reference("open", "spec.nodes[0].with.headersFrom.A.secretRef"),
            reference("closed", "spec.nodes[0].with.headersFrom.B.secretRef"),
            reference("maybe", "spec.groups[1].sidecars[0].envFrom[0].secretRef"),
            reference(
                "gone",
                "spec.groups[1].sidecars[0].env[2].valueFrom.secretKeyRef",
            ),
            reference("closed", "spec.groups[1].sidecars[0].envFrom[1].secretRef"),
        ];
        let found = BTreeMap::from([
            ("open", Some(labelled("true"))),
            ("closed", Some(secret("4", &["token"]))),
            ("maybe", Some(labelled("yes"))),
            ("gone", None),
        ]);
        let got = refused(&refs, &found);
        assert_eq!(
            got,
            [
                "Secret closed (spec.nodes[0].with.headersFrom.B.secretRef, spec.groups[1].sidecars[0].envFrom[1].secretRef) is not labelled sluice.dev/allow-reference=true",
                "Secret maybe (spec.groups[1].sidecars[0].envFrom[0].secretRef) is not labelled sluice.dev/allow-reference=true",
                "Secret gone (spec.groups[1].sidecars[0].env[2].valueFrom.secretKeyRef) does not exist",
            ]
        );
        assert!(
            got.iter().all(|l| !l.contains("secret@h")),
            "no Secret value in a message"
        );
        assert!(refused(&refs[..1], &found).is_empty());
        // A key the pods need, absent from an allowed Secret, is named.
        let needs = |key: &str| SecretReference {
            key: Some(key.into()),
            ..reference("open", "spec.expose.tlsSecret")
        };
        assert!(refused(&[needs("token")], &found).is_empty());
        assert_eq!(
            refused(&[needs("tls.key")], &found),
            ["Secret open (spec.expose.tlsSecret) has no key tls.key"]
        );
    }
}
