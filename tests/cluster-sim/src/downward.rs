//! The downward API's resource fields (`env[].valueFrom.resourceFieldRef`)
//! checked as upstream's `validateContainerResourceFieldSelector` does: the
//! resource must be one a container's env may read, and a divisor, when
//! given, one of those its resource allows (compared in canonical form, so
//! after `quantity::canonicalize`). An object breaking either is refused
//! with 422 naming the field.
//!
//! Checked here because the operator passes its users' sidecars' env
//! through to the Deployments it applies: a resource or divisor the API
//! server refuses fails that apply on a real cluster, and must here too.

use serde_json::Value;

use crate::error::Cause;
use crate::quantity::pod_spec_path;
use crate::resources::ResourceType;

/// The resources a container's env may read (`validContainerResourceFieldPathExpressions`).
const RESOURCES: [&str; 6] = [
    "limits.cpu",
    "limits.ephemeral-storage",
    "limits.memory",
    "requests.cpu",
    "requests.ephemeral-storage",
    "requests.memory",
];

/// Prefixes of the huge-page resources, allowed too (`DownwardAPIHugePages`, on since 1.22).
const PREFIXES: [&str; 2] = ["limits.hugepages-", "requests.hugepages-"];

const CPU_DIVISORS: [&str; 2] = ["1m", "1"];
const BYTE_DIVISORS: [&str; 13] = [
    "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei",
];

/// What is wrong with the resource fields of `obj`'s containers' env.
pub(crate) fn check(rt: &ResourceType, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(at) = pod_spec_path(rt) else {
        return causes;
    };
    let Some(spec) = obj.pointer(at) else {
        return causes;
    };
    let at = at.trim_start_matches('/').replace('/', ".");
    for containers in ["initContainers", "containers"] {
        for (i, c) in spec[containers]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            for (j, e) in c["env"].as_array().into_iter().flatten().enumerate() {
                if let Some(r) = e.pointer("/valueFrom/resourceFieldRef") {
                    let path =
                        format!("{at}.{containers}[{i}].env[{j}].valueFrom.resourceFieldRef");
                    selector(r, &path, &mut causes);
                }
            }
        }
    }
    causes
}

fn selector(r: &Value, path: &str, causes: &mut Vec<Cause>) {
    let resource = r["resource"].as_str().unwrap_or_default();
    if resource.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired".into(),
            message: "Required value".into(),
            field: format!("{path}.resource"),
        });
    } else if !RESOURCES.contains(&resource) && !PREFIXES.iter().any(|p| resource.starts_with(p)) {
        let supported: Vec<String> = RESOURCES.iter().map(|r| format!("{r:?}")).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: {resource:?}: supported values: {}",
                supported.join(", ")
            ),
            field: format!("{path}.resource"),
        });
    }
    // An unset divisor, or a zero one, is not checked (upstream compares
    // it with the zero quantity).
    let divisor = match &r["divisor"] {
        Value::String(d) if d != "0" => d.as_str(),
        _ => return,
    };
    let (allowed, message): (&[&str], &str) = match resource {
        "limits.cpu" | "requests.cpu" => (
            &CPU_DIVISORS,
            "only divisor's values 1m and 1 are supported with the cpu resource",
        ),
        "limits.memory" | "requests.memory" => (
            &BYTE_DIVISORS,
            "only divisor's values 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei are supported with the memory resource",
        ),
        "limits.ephemeral-storage" | "requests.ephemeral-storage" => (
            &BYTE_DIVISORS,
            "only divisor's values 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei are supported with the local ephemeral storage resource",
        ),
        r if PREFIXES.iter().any(|p| r.starts_with(p)) => (
            &BYTE_DIVISORS,
            "only divisor's values 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei are supported with the hugepages resource",
        ),
        _ => return,
    };
    if !allowed.contains(&divisor) {
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {resource:?}: {message}"),
            field: format!("{path}.divisor"),
        });
    }
}
