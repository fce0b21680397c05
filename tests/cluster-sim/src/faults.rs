//! Fault injection (fail the Nth matching request, add latency, cut watch streams after N
//! events) and inspection (every request with its verb, resource, caller and answer).

use std::collections::BTreeMap;
use std::time::Duration;

/// What a request was, as faults and counters see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection;
    /// or the HTTP method in lower case for non-resource paths (discovery, openapi).
    pub verb: String,
    /// API group (`""` for core).
    pub group: String,
    /// Plural resource, empty for non-resource paths.
    pub resource: String,
    /// Subresource (`status`, `scale`), empty for none.
    pub subresource: String,
    /// Namespace of the request, if any.
    pub namespace: Option<String>,
    /// Object name, if any.
    pub name: Option<String>,
    /// User the bearer token maps to, or `anonymous`.
    pub caller: String,
    /// HTTP status answered.
    pub code: u16,
    /// Request path.
    pub path: String,
}

impl RequestRecord {
    /// Whether the request was for an API resource (not discovery, `/version` or OpenAPI):
    /// only those carry a Kubernetes verb.
    pub fn is_resource(&self) -> bool {
        !self.resource.is_empty()
    }

    /// `deployments` or `deployments/scale`.
    pub fn resource_path(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// Which requests a fault or a count applies to; unset fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMatch {
    /// Verb, e.g. `patch`.
    pub verb: Option<String>,
    /// `deployments` (the object itself only) or `deployments/status`.
    pub resource: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// Object name.
    pub name: Option<String>,
    /// Caller (user name or `anonymous`).
    pub caller: Option<String>,
}

impl RequestMatch {
    /// Matches every request.
    pub fn any() -> Self {
        Self::default()
    }

    /// Only this verb.
    pub fn verb(mut self, verb: &str) -> Self {
        self.verb = Some(verb.into());
        self
    }

    /// Only this resource (`plural` or `plural/subresource`).
    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Only this namespace.
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// Only this object name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Only this caller.
    pub fn caller(mut self, caller: &str) -> Self {
        self.caller = Some(caller.into());
        self
    }

    /// Does a request match?
    pub fn matches(&self, r: &RequestRecord) -> bool {
        self.verb.as_ref().is_none_or(|v| *v == r.verb)
            && self
                .resource
                .as_ref()
                .is_none_or(|x| *x == r.resource_path())
            && self
                .namespace
                .as_ref()
                .is_none_or(|n| Some(n) == r.namespace.as_ref())
            && self
                .name
                .as_ref()
                .is_none_or(|n| Some(n) == r.name.as_ref())
            && self.caller.as_ref().is_none_or(|c| *c == r.caller)
    }
}

#[derive(Debug)]
struct FailRule {
    m: RequestMatch,
    /// 1-based index (among matching requests since the rule was added) of the first failure.
    nth: u64,
    /// How many consecutive matching requests fail from `nth` on.
    count: u64,
    code: u16,
    seen: u64,
}

/// Installed faults and the request log.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    fails: Vec<FailRule>,
    latency: Vec<(RequestMatch, Duration)>,
    watch_cuts: Vec<(RequestMatch, usize)>,
    pub log: Vec<RequestRecord>,
}

impl Faults {
    pub(crate) fn add_fail(&mut self, m: RequestMatch, nth: u64, count: u64, code: u16) {
        self.fails.push(FailRule {
            m,
            nth: nth.max(1),
            count: count.max(1),
            code,
            seen: 0,
        });
    }

    pub(crate) fn add_latency(&mut self, m: RequestMatch, d: Duration) {
        self.latency.push((m, d));
    }

    pub(crate) fn add_watch_cut(&mut self, m: RequestMatch, after: usize) {
        self.watch_cuts.push((m, after));
    }

    pub(crate) fn clear(&mut self) {
        self.fails.clear();
        self.latency.clear();
        self.watch_cuts.clear();
    }

    /// Latency to add and the injected failure code, if any, for a request.
    pub(crate) fn on_request(&mut self, r: &RequestRecord) -> (Duration, Option<u16>) {
        let delay = self
            .latency
            .iter()
            .filter(|(m, _)| m.matches(r))
            .map(|(_, d)| *d)
            .sum();
        let mut fail = None;
        for rule in self.fails.iter_mut().filter(|f| f.m.matches(r)) {
            rule.seen += 1;
            if fail.is_none() && rule.seen >= rule.nth && rule.seen < rule.nth + rule.count {
                fail = Some(rule.code);
            }
        }
        (delay, fail)
    }

    /// After how many events a watch matching `r` is cut, if at all.
    pub(crate) fn watch_cut(&self, r: &RequestRecord) -> Option<usize> {
        self.watch_cuts
            .iter()
            .filter(|(m, _)| m.matches(r))
            .map(|(_, n)| *n)
            .min()
    }

    pub(crate) fn counts(&self) -> BTreeMap<(String, String, String), usize> {
        let mut out = BTreeMap::new();
        for r in &self.log {
            *out.entry((r.verb.clone(), r.resource_path(), r.caller.clone()))
                .or_insert(0) += 1;
        }
        out
    }
}

/// Resource requests among `log` matching `m`, counted by Kubernetes verb; non-resource
/// requests (discovery, `/version`, OpenAPI) are left out, as they have no verb. Works on
/// any slice of the request log, so a window between two snapshots is counted consistently.
pub fn counts_by_verb<'a>(
    log: impl IntoIterator<Item = &'a RequestRecord>,
    m: &RequestMatch,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in log.into_iter().filter(|r| r.is_resource() && m.matches(r)) {
        *out.entry(r.verb.clone()).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(verb: &str) -> RequestRecord {
        RequestRecord {
            verb: verb.into(),
            group: "apps".into(),
            resource: "deployments".into(),
            subresource: String::new(),
            namespace: Some("ns".into()),
            name: Some("d".into()),
            caller: "anonymous".into(),
            code: 0,
            path: String::new(),
        }
    }

    #[test]
    fn only_the_nth_matching_request_fails() {
        let mut f = Faults::default();
        f.add_fail(
            RequestMatch::any().verb("patch").resource("deployments"),
            2,
            1,
            500,
        );
        assert_eq!(f.on_request(&rec("patch")).1, None);
        assert_eq!(
            f.on_request(&rec("get")).1,
            None,
            "non-matching verbs are not counted"
        );
        assert_eq!(f.on_request(&rec("patch")).1, Some(500));
        assert_eq!(f.on_request(&rec("patch")).1, None);
    }

    #[test]
    fn counts_by_verb_cover_matching_resource_requests_only() {
        let mut f = Faults::default();
        for verb in ["get", "list", "list", "watch", "patch", "patch", "patch"] {
            f.log.push(rec(verb));
        }
        let mut other = rec("create");
        other.caller = "someone-else".into();
        f.log.push(other);
        let mut discovery = rec("get");
        discovery.group.clear();
        discovery.resource.clear();
        discovery.path = "/apis".into();
        f.log.push(discovery);

        let counts = counts_by_verb(&f.log, &RequestMatch::any().caller("anonymous"));
        let expected: BTreeMap<String, usize> =
            [("get", 1), ("list", 2), ("patch", 3), ("watch", 1)]
                .into_iter()
                .map(|(v, n)| (v.to_string(), n))
                .collect();
        assert_eq!(counts, expected, "discovery and other callers are left out");
        assert_eq!(
            counts_by_verb(&f.log, &RequestMatch::any())["create"],
            1,
            "an empty match counts every caller"
        );
        assert_eq!(
            counts_by_verb(&f.log[..3], &RequestMatch::any().verb("list")).get("list"),
            Some(&2),
            "a slice of the log counts only its own requests"
        );
    }
}
