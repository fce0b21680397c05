//! RBAC authorization of ServiceAccount tokens against Roles/ClusterRoles reached through
//! RoleBindings/ClusterRoleBindings (verbs, API groups, resources and subresources,
//! resourceNames, aggregated ClusterRoles), with every decision recorded.

use serde_json::Value;

use crate::selectors::LabelSelector;
use crate::store::{meta, State};

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name (`system:serviceaccount:<ns>:<name>` for ServiceAccounts).
    pub user: String,
    /// Groups the user is in.
    pub groups: Vec<String>,
    /// ServiceAccount namespace and name, for ServiceAccount tokens.
    pub service_account: Option<(String, String)>,
    /// The admin credential of the written kubeconfig: bypasses RBAC.
    pub admin: bool,
}

impl Identity {
    pub(crate) fn admin() -> Self {
        Self {
            user: "kubernetes-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            service_account: None,
            admin: true,
        }
    }

    pub(crate) fn anonymous() -> Self {
        Self {
            user: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            service_account: None,
            admin: false,
        }
    }

    pub(crate) fn service_account(ns: &str, name: &str) -> Self {
        Self {
            user: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
            service_account: Some((ns.into(), name.into())),
            admin: false,
        }
    }

    /// Name used in request counts: the user, or `anonymous`.
    pub fn caller(&self) -> String {
        if self.user == "system:anonymous" {
            "anonymous".into()
        } else {
            self.user.clone()
        }
    }
}

/// What a request asks to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// Kubernetes verb.
    pub verb: String,
    /// API group.
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// Subresource or empty.
    pub subresource: String,
    /// Namespace, for namespaced requests.
    pub namespace: Option<String>,
    /// Object name, when the request names one.
    pub name: Option<String>,
}

/// One recorded authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzDecision {
    /// User asking.
    pub user: String,
    /// What was asked.
    pub attributes: Attributes,
    /// Whether it was allowed.
    pub allowed: bool,
    /// Which binding allowed it, or why not.
    pub reason: String,
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn subject_matches(s: &Value, id: &Identity, binding_ns: &str) -> bool {
    let name = s["name"].as_str().unwrap_or_default();
    match s["kind"].as_str() {
        Some("ServiceAccount") => id.service_account.as_ref().is_some_and(|(ns, n)| {
            let sns = s["namespace"]
                .as_str()
                .filter(|x| !x.is_empty())
                .unwrap_or(binding_ns);
            n == name && ns == sns
        }),
        Some("User") => id.user == name,
        Some("Group") => id.groups.iter().any(|g| g == name),
        _ => false,
    }
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let verbs = strs(&rule["verbs"]);
    let groups = strs(&rule["apiGroups"]);
    let resources = strs(&rule["resources"]);
    let names = strs(&rule["resourceNames"]);
    let res = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = resources.iter().any(|r| {
        *r == "*"
            || *r == res
            || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
    });
    let names_ok = names.is_empty() || a.name.as_deref().is_some_and(|n| names.contains(&n));
    (verbs.contains(&"*") || verbs.contains(&a.verb.as_str()))
        && (groups.contains(&"*") || groups.contains(&a.group.as_str()))
        && resource_ok
        && names_ok
}

/// Rules of a ClusterRole, including those aggregated through `aggregationRule`.
fn cluster_role_rules(st: &State, name: &str) -> Vec<Value> {
    let Some((_, role)) = st
        .objects_of("rbac.authorization.k8s.io", "clusterroles", None)
        .find(|(k, _)| k.name == name)
    else {
        return vec![];
    };
    let mut rules: Vec<Value> = role["rules"].as_array().cloned().unwrap_or_default();
    if let Some(sels) = role
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
    {
        for (k, other) in st.objects_of("rbac.authorization.k8s.io", "clusterroles", None) {
            if k.name == name {
                continue;
            }
            if sels
                .iter()
                .any(|s| LabelSelector::from_object(s).matches(meta(other, "labels")))
            {
                rules.extend(other["rules"].as_array().cloned().unwrap_or_default());
            }
        }
    }
    rules
}

fn role_rules(st: &State, ns: &str, name: &str) -> Vec<Value> {
    st.objects_of("rbac.authorization.k8s.io", "roles", Some(ns))
        .find(|(k, _)| k.name == name)
        .and_then(|(_, r)| r["rules"].as_array().cloned())
        .unwrap_or_default()
}

/// Decide a request; the reason names the binding that allowed it.
pub(crate) fn authorize(st: &State, id: &Identity, a: &Attributes) -> (bool, String) {
    for (k, b) in st.objects_of("rbac.authorization.k8s.io", "clusterrolebindings", None) {
        let subjects = b["subjects"].as_array().cloned().unwrap_or_default();
        if !subjects.iter().any(|s| subject_matches(s, id, "")) {
            continue;
        }
        let role = b["roleRef"]["name"].as_str().unwrap_or_default();
        if cluster_role_rules(st, role)
            .iter()
            .any(|r| rule_allows(r, a))
        {
            return (
                true,
                format!(
                    "RBAC: allowed by ClusterRoleBinding \"{}\" of ClusterRole \"{role}\"",
                    k.name
                ),
            );
        }
    }
    if let Some(ns) = &a.namespace {
        for (k, b) in st.objects_of("rbac.authorization.k8s.io", "rolebindings", Some(ns)) {
            let subjects = b["subjects"].as_array().cloned().unwrap_or_default();
            if !subjects.iter().any(|s| subject_matches(s, id, ns)) {
                continue;
            }
            let role = b["roleRef"]["name"].as_str().unwrap_or_default();
            let rules = match b["roleRef"]["kind"].as_str() {
                Some("ClusterRole") => cluster_role_rules(st, role),
                _ => role_rules(st, ns, role),
            };
            if rules.iter().any(|r| rule_allows(r, a)) {
                return (
                    true,
                    format!(
                        "RBAC: allowed by RoleBinding \"{}/{}\" of {} \"{role}\"",
                        ns,
                        k.name,
                        b["roleRef"]["kind"].as_str().unwrap_or("Role")
                    ),
                );
            }
        }
    }
    (false, "no RBAC policy matched".into())
}

/// The `403` message upstream answers with.
pub(crate) fn forbidden_message(id: &Identity, a: &Attributes, qualified: &str) -> String {
    let res = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let target = match &a.name {
        Some(n) => format!("{qualified} \"{n}\""),
        None => qualified.to_string(),
    };
    let scope = match &a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    format!(
        "{target} is forbidden: User \"{}\" cannot {} resource \"{res}\" in API group \"{}\" {scope}",
        id.user, a.verb, a.group
    )
}
