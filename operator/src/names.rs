//! Names of the objects the operator creates for pipeline `P`, and the
//! checks that keep every derived name valid for its kind.
//!
//! | object | name |
//! | --- | --- |
//! | pipeline ConfigMap | `P-pipeline` |
//! | key ring Secret | `P-ipc-keys` |
//! | a group's derived keys Secret (what its pods mount) | `P-ipc-keys-<group>` |
//! | group workload, PDB, HPA, KEDA ScaledObject | `P-<group>` |
//! | KEDA TriggerAuthentication | `P-keda-redis` |
//! | ingress Service and Ingress | `P` |
//! | managed Redis StatefulSet, client Service, password Secret, NetworkPolicy | `P-redis` |
//! | managed Redis headless Service | `P-redis-headless` |

use sha2::{Digest, Sha256};

/// ConfigMap holding `pipeline.yaml`.
pub fn pipeline_config(p: &str) -> String {
    format!("{p}-pipeline")
}

/// Secret holding the HMAC key ring (when the operator generates it).
pub fn key_secret(p: &str) -> String {
    format!("{p}-ipc-keys")
}

/// Secret holding the derived keys a group's pods need (when the operator
/// generates the ring); only they mount it.
pub fn role_keys(p: &str, g: &str) -> String {
    format!("{p}-ipc-keys-{g}")
}

/// Workload (and PDB/HPA) of a group.
pub fn group(p: &str, g: &str) -> String {
    format!("{p}-{g}")
}

/// KEDA TriggerAuthentication of the pipeline's Redis.
pub fn keda_auth(p: &str) -> String {
    format!("{p}-keda-redis")
}

/// Service (and Ingress) in front of the ingress group.
pub fn ingress_service(p: &str) -> String {
    p.to_string()
}

/// Managed Redis: StatefulSet, client Service, password Secret, NetworkPolicy.
pub fn redis(p: &str) -> String {
    format!("{p}-redis")
}

/// Managed Redis: the StatefulSet's governing headless Service.
pub fn redis_headless(p: &str) -> String {
    format!("{p}-redis-headless")
}

/// Longest pipeline name with managed Redis: the StatefulSet's pods carry a
/// `controller-revision-hash` label `P-redis-<10 chars>`, and label values
/// are at most 63 characters.
pub const MAX_NAME_WITH_MANAGED_REDIS: usize = 63 - "-redis-".len() - 10;

/// Longest pipeline name: it names a Service and is a label value.
pub const MAX_NAME: usize = 63;

/// Why `P` cannot name the pipeline's objects, if it cannot.
///
/// Service names are DNS-1035 labels (lowercase letters, digits and `-`,
/// starting with a letter, at most 63 characters), stricter than the
/// DNS-1123 subdomain the API server accepts for a StreamPipeline.
pub fn check_pipeline_name(p: &str, managed_redis: bool) -> Result<(), String> {
    let max = if managed_redis {
        MAX_NAME_WITH_MANAGED_REDIS
    } else {
        MAX_NAME
    };
    let dns1035 = p.bytes().next().is_some_and(|c| c.is_ascii_lowercase())
        && p.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !p.ends_with('-');
    if !dns1035 {
        return Err(format!(
            "`{p}` names a Service: use lowercase letters, digits and '-', starting with a letter"
        ));
    }
    if p.len() > max {
        return Err(format!(
            "`{p}` is {} characters; at most {max}{}",
            p.len(),
            if managed_redis {
                " with managed Redis (its pods' labels carry the name)"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// Whether `s` is a DNS-1123 subdomain (the name of a Secret or ConfigMap).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// Whether `s` is a valid Secret/ConfigMap data key (and so a file name in
/// the mounted directory).
pub fn is_data_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && !s.starts_with("..")
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Pod volume name for a mounted node Secret: `secret-<name>` when that is a
/// valid volume name (a DNS-1123 label), else `secret-` and a hash of it.
pub fn secret_volume(secret: &str) -> String {
    let plain = format!("secret-{secret}");
    if plain.len() <= 63 && !secret.contains('.') {
        plain
    } else {
        let digest = Sha256::digest(secret.as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("secret-{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_follow_the_documented_table() {
        assert_eq!(pipeline_config("p"), "p-pipeline");
        assert_eq!(key_secret("p"), "p-ipc-keys");
        assert_eq!(group("p", "cpu"), "p-cpu");
        assert_eq!(ingress_service("p"), "p");
        assert_eq!(redis("p"), "p-redis");
        assert_eq!(redis_headless("p"), "p-redis-headless");
    }

    #[test]
    fn pipeline_names_that_cannot_name_a_service_are_refused() {
        assert!(check_pipeline_name("orders", true).is_ok());
        assert!(check_pipeline_name("1orders", false).is_err());
        assert!(check_pipeline_name("a.b", false).is_err());
        assert!(check_pipeline_name(&"a".repeat(63), false).is_ok());
        assert!(check_pipeline_name(&"a".repeat(47), true).is_err());
        assert!(check_pipeline_name(&"a".repeat(46), true).is_ok());
    }

    #[test]
    fn secret_volume_names_are_valid_labels() {
        assert_eq!(secret_volume("api-token"), "secret-api-token");
        let dotted = secret_volume("tls.example.com");
        assert!(dotted.starts_with("secret-") && !dotted.contains('.'));
        assert!(secret_volume(&"x".repeat(100)).len() <= 63);
        assert_ne!(secret_volume("a.b"), secret_volume("a.c"));
    }

    #[test]
    fn data_keys_and_subdomains_follow_kubernetes_rules() {
        assert!(is_data_key("token") && is_data_key(".dotfile") && is_data_key("a_b-c.d"));
        assert!(!is_data_key("..") && !is_data_key("a/b") && !is_data_key(""));
        assert!(is_dns_subdomain("a.b-c") && !is_dns_subdomain("A") && !is_dns_subdomain("a..b"));
    }
}
