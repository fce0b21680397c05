//! Nodes: names, groups, `uses`, `with`, credentials kept out of the
//! manifest, `next` and the graph having no cycles.

use super::*;

/// Returns node name → (group, next targets) for the nodes that are well-formed.
pub(super) fn check_nodes(
    spec: &StreamPipelineSpec,
    groups: &BTreeMap<String, GroupRole>,
    e: &mut Errors,
) -> BTreeMap<String, (String, Vec<String>)> {
    if spec.nodes.len() > MAX_NODES {
        e.push("spec.nodes", format!("at most {MAX_NODES} nodes"));
    }
    if spec.nodes.is_empty() {
        e.push("spec.nodes", "a pipeline needs at least one node");
    }
    let names: BTreeMap<&str, &NodeSpec> =
        spec.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut seen = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        let p = format!("spec.nodes[{i}]");
        if !is_dns_label(&n.name, MAX_NAME) {
            e.push(
                format!("{p}.name"),
                format!(
                    "{} must be lowercase letters, digits and '-', at most {MAX_NAME} characters",
                    shown(&n.name)
                ),
            );
        }
        if !seen.insert(n.name.as_str()) {
            e.push(
                format!("{p}.name"),
                format!("duplicate node name {}", shown(&n.name)),
            );
        }
        if !groups.contains_key(&n.group) {
            e.push(
                format!("{p}.group"),
                format!("unknown group {}", shown(&n.group)),
            );
        }
        check_uses(&p, &n.uses, e);
        let with_ok = check_with(&p, n.with.as_ref(), e);
        if with_ok {
            check_inline_credentials(&p, n, e);
        }
        let targets = next_targets(&p, n.next.as_ref(), e);
        for t in &targets {
            match names.get(t.as_str()) {
                None => e.push(format!("{p}.next"), format!("unknown node {}", shown(t))),
                Some(target) => {
                    let from_worker = groups.get(&n.group) == Some(&GroupRole::Worker);
                    let to_ingress = groups.get(&target.group) == Some(&GroupRole::Ingress);
                    if from_worker && to_ingress {
                        e.push(
                            format!("{p}.next"),
                            format!(
                                "{} runs on the ingress group; nodes of worker groups may only forward to worker groups",
                                shown(t)
                            ),
                        );
                    }
                }
            }
        }
        out.insert(n.name.clone(), (n.group.clone(), targets));
    }
    out
}

/// Checks a node's `with` block: an object, at most [`MAX_WITH_DEPTH`]
/// levels deep, at most [`MAX_WITH_KEYS`] keys and [`MAX_WITH_BYTES`] as
/// JSON. Returns whether it passed.
fn check_with(p: &str, with: Option<&Value>, e: &mut Errors) -> bool {
    let Some(w) = with else { return true };
    let path = format!("{p}.with");
    let Some(o) = w.as_object() else {
        e.push(path, "must be an object");
        return false;
    };
    if o.len() > MAX_WITH_KEYS {
        e.push(path, format!("at most {MAX_WITH_KEYS} keys"));
        return false;
    }
    if nested_deeper_than(w, MAX_WITH_DEPTH) {
        e.push(path, format!("nested deeper than {MAX_WITH_DEPTH} levels"));
        return false;
    }
    // Measured only once the depth is known to be small: the encoder recurses.
    let mut budget = Budget(MAX_WITH_BYTES);
    if serde_json::to_writer(&mut budget, w).is_err() {
        e.push(path, format!("larger than {MAX_WITH_BYTES} bytes as JSON"));
        return false;
    }
    true
}

/// Whether `v` nests arrays and objects more than `limit` levels deep
/// (a scalar is level 0, `{}` level 1). Iterative, so any depth is safe to
/// inspect; stops at the first container past the limit.
pub fn nested_deeper_than(v: &Value, limit: usize) -> bool {
    let mut stack = vec![(v, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if depth > limit {
            return true;
        }
        stack.extend(
            children
                .filter(|c| c.is_array() || c.is_object())
                .map(|c| (c, depth + 1)),
        );
    }
    false
}

/// A writer that accepts at most its budget of bytes, then fails.
struct Budget(usize);

impl std::io::Write for Budget {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.checked_sub(buf.len()) {
            Some(left) => {
                self.0 = left;
                Ok(buf.len())
            }
            None => Err(std::io::Error::other("over budget")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Header names that carry credentials: a pipeline resource never holds
/// secrets inline (DESIGN §3), so `builtin/http` takes them from
/// `headersFrom` (a Secret) only. Lower case.
pub const CREDENTIAL_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];

/// `builtin/http` static headers that would put a credential in the
/// resource.
fn check_inline_credentials(p: &str, n: &NodeSpec, e: &mut Errors) {
    if n.uses != "builtin/http" {
        return;
    }
    let headers = n
        .with
        .as_ref()
        .and_then(|w| w.get("headers"))
        .and_then(Value::as_object);
    for name in headers.into_iter().flat_map(|h| h.keys()) {
        if CREDENTIAL_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            e.push(
                format!("{p}.with.headers.{name}"),
                format!(
                    "carries credentials, which never go inline in the resource; \
                     use `headersFrom: {{{name}: {{secretRef: {{name, key}}}}}}`"
                ),
            );
        }
    }
}

fn check_uses(p: &str, uses: &str, e: &mut Errors) {
    match uses.split_once('/') {
        Some(("builtin", name)) if BUILTIN_NODES.contains(&name) => {}
        Some(("builtin", name)) => e.push(
            format!("{p}.uses"),
            format!(
                "unknown builtin {}; known: {}",
                shown(name),
                BUILTIN_NODES.join(", ")
            ),
        ),
        Some(("rust", name)) if is_dns_label(name, MAX_NAME) => {}
        _ => e.push(
            format!("{p}.uses"),
            format!(
                "{} must be builtin/<name> or rust/<name> (a name of at most {MAX_NAME} lowercase letters, digits and '-')",
                shown(uses)
            ),
        ),
    }
}

fn next_targets(p: &str, next: Option<&NextSpec>, e: &mut Errors) -> Vec<String> {
    match next {
        None => vec![],
        Some(NextSpec::One(t)) => vec![t.clone()],
        Some(NextSpec::Routes(routes)) => {
            if routes.is_empty() {
                e.push(
                    format!("{p}.next"),
                    "an empty route list; omit next for a terminal node",
                );
            }
            if routes.len() > MAX_ROUTES {
                e.push(format!("{p}.next"), format!("at most {MAX_ROUTES} routes"));
                return vec![];
            }
            for (j, r) in routes.iter().enumerate() {
                if r.when.is_none() && j + 1 != routes.len() {
                    e.push(
                        format!("{p}.next[{j}]"),
                        "the default route (no `when`) must be the last one",
                    );
                }
                if r.when.as_ref().is_some_and(|w| w.len() > MAX_TAG) {
                    e.push(
                        format!("{p}.next[{j}].when"),
                        format!("at most {MAX_TAG} characters"),
                    );
                }
            }
            routes.iter().map(|r| r.to.clone()).collect()
        }
    }
}

pub(super) fn check_cycles(
    spec: &StreamPipelineSpec,
    nodes: &BTreeMap<String, (String, Vec<String>)>,
    e: &mut Errors,
) {
    // Iterative DFS with colours; reports the first cycle found from each root.
    #[derive(Clone, Copy, PartialEq)]
    enum C {
        White,
        Grey,
        Black,
    }
    let mut colour: BTreeMap<&str, C> = nodes.keys().map(|k| (k.as_str(), C::White)).collect();
    for root in spec.nodes.iter().map(|n| n.name.as_str()) {
        if colour.get(root) != Some(&C::White) {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(root, 0)];
        colour.insert(root, C::Grey);
        while let Some((node, idx)) = stack.pop() {
            let next = nodes.get(node).map(|(_, t)| t.as_slice()).unwrap_or(&[]);
            if let Some(t) = next.get(idx) {
                stack.push((node, idx + 1));
                match colour.get(t.as_str()) {
                    Some(C::White) => {
                        colour.insert(t, C::Grey);
                        stack.push((t, 0));
                    }
                    Some(C::Grey) => {
                        let mut path: Vec<&str> = stack.iter().map(|(n, _)| *n).collect();
                        let start = path.iter().position(|n| *n == t).unwrap_or(0);
                        path.drain(..start);
                        path.push(t);
                        let i = spec.nodes.iter().position(|n| n.name == node).unwrap_or(0);
                        e.push(
                            format!("spec.nodes[{i}].next"),
                            format!("cycle: {}", path.join(" → ")),
                        );
                        return;
                    }
                    _ => {}
                }
            } else {
                colour.insert(node, C::Black);
            }
        }
    }
}
