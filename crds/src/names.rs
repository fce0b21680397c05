//! The syntax of names and paths in a StreamPipeline: what the API server
//! enforces for Kubernetes names, and what the ingress router takes
//! literally for interface paths; and a pipeline's `namespace/name`
//! ([`PipelineId`]).
//!
//! Each predicate has a regular expression twin used by the CRD schema
//! (RE2 syntax, which the API server and the `regex` crate share); a test
//! checks the two agree.

use crate::limits::MAX_PATH;

/// `pattern` of a DNS-1123 label (length checked separately).
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// `pattern` of a DNS-1035 label: a DNS-1123 label starting with a letter.
pub const DNS1035_LABEL_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// `pattern` of a DNS-1123 subdomain (length checked separately).
pub const DNS_SUBDOMAIN_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// `pattern` of a Secret or ConfigMap data key: [`is_data_key`] without
/// lookahead (either no leading `.`, or one `.` and then something else).
pub const DATA_KEY_PATTERN: &str = "^(\\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*)$";
/// `pattern` of an Ingress host: a DNS-1123 subdomain, optionally after `*.`.
pub const HOST_PATTERN: &str =
    "^(\\*\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// One path segment: unreserved characters only, and not `.` or `..`.
const SEGMENT: &str =
    "([A-Za-z0-9_~-][A-Za-z0-9._~-]*|\\.[A-Za-z0-9_~-][A-Za-z0-9._~-]*|\\.\\.[A-Za-z0-9._~-]+)";

/// `pattern` of an interface path; see [`check_interface_path`].
pub fn interface_path_pattern() -> String {
    format!("^(/|(/{SEGMENT})+)$")
}

/// Whether `s` is a DNS-1123 label of at most `max` characters (lower case
/// letters, digits and `-`, neither first nor last): the name of a
/// namespace, group, node or interface.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1035 label of at most `max` characters: a DNS-1123
/// label that starts with a letter (what a Service name must be).
pub fn is_dns1035_label(s: &str, max: usize) -> bool {
    is_dns_label(s, max) && s.bytes().next().is_some_and(|c| c.is_ascii_lowercase())
}

/// Whether `s` is a DNS-1123 subdomain of at most `max` characters: dot
/// separated DNS-1123 labels (the name of a Secret or an IngressClass).
pub fn is_dns_subdomain(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.split('.').all(|part| is_dns_label(part, max))
}

/// Whether `s` is a valid Secret or ConfigMap data key of at most `max`
/// characters, as the API server checks it (it becomes a file name in the
/// mounted directory, so `.`, `..` and `..`-prefixed names are refused).
pub fn is_data_key(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s != "."
        && !s.starts_with("..")
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Checks an interface path: `/`, or `/`-separated segments of letters,
/// digits, `-`, `.`, `_` and `~` — no empty, `.` or `..` segment, no
/// trailing `/`, nothing percent-encoded, at most [`MAX_PATH`] characters.
///
/// Such a path is matched literally by the ingress router (which gives `:`,
/// `*`, `{` and `}` a meaning) and is in the canonical form clients and
/// proxies send, so the route a user writes is the route callers reach.
///
/// # Errors
/// The first rule broken, as a message that does not echo the input.
pub fn check_interface_path(path: &str) -> Result<(), String> {
    if path.len() > MAX_PATH {
        return Err(format!("at most {MAX_PATH} characters"));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must start with '/'".into());
    };
    if rest.is_empty() {
        return Ok(());
    }
    for segment in rest.split('/') {
        match segment {
            "" => {
                return Err(
                    "has an empty segment (`//` or a trailing '/'); write the canonical path"
                        .into(),
                )
            }
            "." | ".." => return Err("has a `.` or `..` segment; write the canonical path".into()),
            _ => {}
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
        {
            let why = match c {
                ':' | '*' | '{' | '}' => "the router gives it a meaning (a parameter or wildcard)",
                '%' => "percent-encoding is not canonical; write the character itself",
                c if !c.is_ascii() => "only ASCII is allowed",
                _ => "path segments hold letters, digits, '-', '.', '_' and '~'",
            };
            return Err(format!("must not contain {c:?}: {why}"));
        }
    }
    Ok(())
}

/// `namespace/name` of a pipeline; the hash tag of all its Redis keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PipelineId {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PipelineId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn re(p: &str) -> regex::Regex {
        regex::Regex::new(p).unwrap()
    }

    #[test]
    fn interface_paths_in_canonical_form_are_accepted() {
        for ok in [
            "/",
            "/v1",
            "/v1/orders",
            "/a-b_c~d.e",
            "/...",
            "/.well-known/x",
            "/..a",
        ] {
            assert_eq!(check_interface_path(ok), Ok(()), "{ok}");
            assert!(re(&interface_path_pattern()).is_match(ok), "{ok}");
        }
    }

    #[test]
    fn interface_paths_the_router_would_not_take_literally_are_refused() {
        for (bad, why) in [
            ("/v1/:id", "a parameter"),
            ("/v1/*rest", "wildcard"),
            ("/v1/{id}", "a parameter"),
            ("/v1/}", "a parameter"),
            ("/v1//x", "empty segment"),
            ("/v1/", "trailing"),
            ("/v1/./x", "`..` segment"),
            ("/v1/..", "`..` segment"),
            ("/v1/%41", "percent-encoding"),
            ("/v1/é", "only ASCII"),
            ("/v1/a b", "letters, digits"),
            ("/v1?x", "letters, digits"),
            ("v1", "start with '/'"),
            ("", "start with '/'"),
        ] {
            let e = check_interface_path(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!re(&interface_path_pattern()).is_match(bad), "{bad}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH));
        assert!(check_interface_path(&long).unwrap_err().contains("at most"));
    }

    #[test]
    fn name_predicates_agree_with_their_patterns() {
        let samples = [
            "a", "a-b", "-a", "a-", "A", "1a", "a.b", "a..b", ".a", "a_b", "", "ab.cd-e", "x.",
        ];
        for s in samples {
            assert_eq!(
                is_dns_label(s, 63),
                re(DNS_LABEL_PATTERN).is_match(s),
                "{s}"
            );
            assert_eq!(
                is_dns1035_label(s, 63),
                re(DNS1035_LABEL_PATTERN).is_match(s),
                "{s}"
            );
            assert_eq!(
                is_dns_subdomain(s, 253),
                re(DNS_SUBDOMAIN_PATTERN).is_match(s),
                "{s}"
            );
        }
        for key in [
            "ca.crt", "A_b-1", ".x", "x..", "", ".", "..", "..x", "a/b", "a b",
        ] {
            assert_eq!(
                is_data_key(key, 253),
                re(DATA_KEY_PATTERN).is_match(key),
                "{key}"
            );
        }
        assert!(is_data_key("ca.crt", 253) && !is_data_key("..x", 253));
        for host in ["a.example.com", "*.example.com", "*", "*.", "A.b", "a..b"] {
            let stripped = host.strip_prefix("*.").unwrap_or(host);
            assert_eq!(
                is_dns_subdomain(stripped, 253),
                re(HOST_PATTERN).is_match(host),
                "{host}"
            );
        }
    }
}
