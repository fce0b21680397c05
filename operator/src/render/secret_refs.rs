//! The Secrets a pipeline's spec names for its nodes and sidecars, and the
//! pipeline's own Secrets, which none of them may name.
//!
//! ```text
//! nodes' `with` (any {secretRef: {name, key}})  ─┐
//! sidecars' env[].valueFrom.secretKeyRef,         ├─▶ SecretReference (name, field path)
//!           envFrom[].secretRef                  ─┘       │
//!                                                          ├─ one of OwnSecrets ─▶ FieldError (InvalidSpec)
//!                                                          └─ else ─▶ Desired::referenced_secrets: the
//!                                                             reconciler applies nothing that names one
//!                                                             unless it carries sluice.dev/allow-reference=true
//! ```
//!
//! Own Secrets are what the pipeline itself runs on: the key ring (`P-ipc-keys`
//! or `security.secretName`), managed Redis's password (`P-redis`), external
//! Redis's URL and CA, and the Ingress's TLS Secret. A node's `with` is sent
//! to services (`builtin/http` headers) and a sidecar is the user's code:
//! either could carry those values out of the pipeline.

use serde_json::Value;
use sluice_crds::{FieldError, StreamPipelineSpec};

use crate::names;

/// One `secretRef: {name, key}` found in a node's `with`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRefUse {
    /// Field path of the `secretRef`, e.g. `spec.nodes[2].with.headersFrom.Authorization.secretRef`.
    pub path: String,
    pub name: String,
    pub key: String,
}

/// A Secret the spec names for a node or a sidecar. Not the pipeline's
/// infrastructure: it reaches the pods only while it carries the label
/// [`crate::labels::ALLOW_REFERENCE`] (checked by [`crate::referenced`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretReference {
    pub name: String,
    /// Where the spec names it: the `secretRef` of a node
    /// (`spec.nodes[1].with.headersFrom.Authorization.secretRef`), or a
    /// sidecar's `…env[0].valueFrom.secretKeyRef` / `…envFrom[0].secretRef`.
    pub path: String,
    /// The key the pods need from it (a projected file, a required
    /// variable): without it they would not start, so its absence is
    /// reported like the Secret's. `None`: the whole Secret (`envFrom`) or
    /// an optional key.
    pub key: Option<String>,
}

impl From<&SecretRefUse> for SecretReference {
    fn from(u: &SecretRefUse) -> Self {
        SecretReference {
            name: u.name.clone(),
            path: u.path.clone(),
            key: Some(u.key.clone()),
        }
    }
}

/// Every `{"secretRef": {"name": .., "key": ..}}` object inside `with`, at
/// any depth (DESIGN §3: Secrets come by reference). A `secretRef` of any
/// other shape is reported, since the runtime would not find its Secret.
pub fn find_secret_refs(
    with: &Value,
    path: &str,
    found: &mut Vec<SecretRefUse>,
    errors: &mut Vec<FieldError>,
) {
    match with {
        Value::Object(map) => {
            for (k, v) in map {
                let p = format!("{path}.{k}");
                if k == "secretRef" {
                    match secret_ref(v) {
                        Ok((name, key)) => found.push(SecretRefUse {
                            path: p.clone(),
                            name,
                            key,
                        }),
                        Err(message) => errors.push(FieldError {
                            path: p.clone(),
                            message,
                        }),
                    }
                    continue;
                }
                find_secret_refs(v, &p, found, errors);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                find_secret_refs(v, &format!("{path}[{i}]"), found, errors);
            }
        }
        _ => {}
    }
}

fn secret_ref(v: &Value) -> Result<(String, String), String> {
    let name = v.get("name").and_then(Value::as_str);
    let key = v.get("key").and_then(Value::as_str);
    match (name, key) {
        (Some(name), Some(key)) => {
            if !names::is_dns_subdomain(name) {
                return Err(format!("`{name}` is not a valid Secret name"));
            }
            if !names::is_data_key(key) {
                return Err(format!("`{key}` is not a valid Secret key"));
            }
            Ok((name.to_string(), key.to_string()))
        }
        _ => Err("secretRef needs string fields `name` and `key`".into()),
    }
}

// === own Secrets ===

/// The Secrets pipeline `P` runs on, each with what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnSecrets {
    named: Vec<(String, &'static str)>,
    /// Every group's derived keys Secret starts with this, for any group
    /// this spec or a later one may have.
    role_keys_prefix: String,
}

impl OwnSecrets {
    /// The own Secrets of pipeline `pipeline` with `spec`: the names the
    /// operator generates whether or not this spec uses them (a sidecar
    /// naming `P-redis` on external Redis would read whatever a later switch
    /// to managed Redis puts there), and every infrastructure Secret the
    /// spec names.
    pub fn of(pipeline: &str, spec: &StreamPipelineSpec) -> Self {
        let mut own = vec![
            (names::key_secret(pipeline), "the key ring"),
            (names::redis(pipeline), "the managed Redis password"),
        ];
        if let Some(n) = &spec.security.secret_name {
            own.push((n.clone(), "the key ring"));
        }
        if let Some(r) = &spec.redis {
            if let Some(u) = &r.url_secret_ref {
                own.push((u.name.clone(), "the Redis URL"));
            }
            if let Some(c) = &r.ca_secret_ref {
                own.push((c.name.clone(), "the Redis CA"));
            }
        }
        let tls = spec.expose.as_ref().and_then(|e| e.ingress.as_ref());
        if let Some(t) = tls.and_then(|i| i.tls_secret.as_ref()) {
            own.push((t.clone(), "the Ingress's TLS certificate and key"));
        }
        Self {
            named: own,
            role_keys_prefix: names::role_keys(pipeline, ""),
        }
    }

    /// What Secret `name` holds for the pipeline, if it is one of its own.
    pub fn what(&self, name: &str) -> Option<&'static str> {
        self.named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, w)| *w)
            .or_else(|| {
                name.starts_with(&self.role_keys_prefix)
                    .then_some("a group's signing keys")
            })
    }

    /// Refuses each of `refs` that names an own Secret, at `<path>.name`.
    pub fn refuse(&self, refs: &[SecretReference], errors: &mut Vec<FieldError>) {
        for r in refs {
            if let Some(what) = self.what(&r.name) {
                errors.push(FieldError {
                    path: format!("{}.name", r.path),
                    message: format!(
                        "`{}` is the pipeline's own Secret ({what}); nodes and sidecars may not reference it",
                        r.name
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_refs_are_found_at_any_depth_with_their_paths() {
        let with = json!({
            "url": "http://127.0.0.1:9000",
            "headersFrom": {
                "Authorization": {"secretRef": {"name": "api", "key": "token"}},
                "X-Other": {"secretRef": {"name": "api", "key": "other"}}
            },
            "list": [{"secretRef": {"name": "db", "key": "password"}}]
        });
        let (mut found, mut errors) = (vec![], vec![]);
        find_secret_refs(&with, "spec.nodes[0].with", &mut found, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let mut got: Vec<_> = found
            .iter()
            .map(|u| (u.path.as_str(), u.name.as_str(), u.key.as_str()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    "spec.nodes[0].with.headersFrom.Authorization.secretRef",
                    "api",
                    "token"
                ),
                (
                    "spec.nodes[0].with.headersFrom.X-Other.secretRef",
                    "api",
                    "other"
                ),
                ("spec.nodes[0].with.list[0].secretRef", "db", "password"),
            ]
        );
    }

    #[test]
    fn malformed_secret_refs_are_reported() {
        let with = json!({"a": {"secretRef": {"name": "x"}}, "b": {"secretRef": {"name": "Bad_Name", "key": "k"}}});
        let (mut found, mut errors) = (vec![], vec![]);
        find_secret_refs(&with, "spec.nodes[1].with", &mut found, &mut errors);
        assert!(found.is_empty());
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.nodes[1].with.a.secretRef",
                "spec.nodes[1].with.b.secretRef"
            ]
        );
    }

    fn spec(extra: &str) -> StreamPipelineSpec {
        sluice_crds::yaml::from_str(&format!(
            "{extra}
interfaces: [{{name: api, path: /a, entry: a}}]
groups: [{{name: web, role: ingress}}]
nodes: [{{name: a, group: web, uses: builtin/echo}}]"
        ))
        .unwrap()
    }

    #[test]
    fn own_secrets_are_the_generated_names_and_the_infrastructure_the_spec_names() {
        let s = spec(
            "security: {keys: secretRef, secretName: my-keys}
redis: {mode: external, urlSecretRef: {name: redis-url, key: url}, caSecretRef: {name: redis-ca, key: ca.crt}}
expose: {ingress: {host: p.example.com, tlsSecret: p-tls}}",
        );
        let own = OwnSecrets::of("p", &s);
        for (name, what) in [
            ("p-ipc-keys", "the key ring"),
            ("p-redis", "the managed Redis password"),
            ("my-keys", "the key ring"),
            ("redis-url", "the Redis URL"),
            ("redis-ca", "the Redis CA"),
            ("p-tls", "the Ingress's TLS certificate and key"),
            ("p-ipc-keys-web", "a group's signing keys"),
            (
                "p-ipc-keys-group-that-comes-later",
                "a group's signing keys",
            ),
        ] {
            assert_eq!(own.what(name), Some(what), "{name}");
        }
        assert_eq!(own.what("enrich-api"), None);
        assert_eq!(own.what("q-ipc-keys-web"), None, "another pipeline's");
        assert_eq!(OwnSecrets::of("p", &spec("")).named.len(), 2);
    }

    #[test]
    fn a_reference_to_an_own_secret_is_refused_at_its_name() {
        let own = OwnSecrets::of("p", &spec(""));
        let refs = [
            SecretReference {
                name: "enrich-api".into(),
                path: "spec.nodes[0].with.headersFrom.A.secretRef".into(),
                key: None,
            },
            SecretReference {
                name: "p-redis".into(),
                path: "spec.nodes[0].with.headersFrom.B.secretRef".into(),
                key: None,
            },
        ];
        let mut errors = vec![];
        own.refuse(&refs, &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            "spec.nodes[0].with.headersFrom.B.secretRef.name: `p-redis` is the pipeline's own Secret (the managed Redis password); nodes and sidecars may not reference it"
        );
    }
}
