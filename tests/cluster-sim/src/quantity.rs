//! Resource quantities as the API server stores them: parsed, checked and
//! written back in canonical form (apimachinery's `resource.Quantity`).
//!
//! A client that sends `storage: 1024Mi` reads back `1Gi`, `cpu: 0.5` reads
//! back `500m`, `memory: 1.5Gi` reads back `1536Mi`. A client comparing what
//! it sent with what it reads as strings sees a change on every pass; the
//! stand-in must show that, or such a client's tests prove nothing.
//!
//! Canonical form, as upstream: the suffix family of the input is kept
//! (binary `Ki…Ei`, decimal `n u m k M G T P E`, or exponent `e3`); no
//! precision is lost, no fractional digit is written, and the suffix is the
//! largest that keeps the number an integer. Binary values below 1024 are
//! written in decimal (`0.5Ki` → `512`). Precision finer than nano units is
//! rounded up, as upstream.
//!
//! Only the quantity fields of the built-in kinds this stand-in serves are
//! canonicalized (container resources in pod templates, volume claim
//! templates, PVCs, `emptyDir.sizeLimit`, pod `overhead`, the divisors of
//! `env[].valueFrom.resourceFieldRef`); custom resources
//! are stored as written, as upstream.

use serde_json::Value;

use crate::error::Cause;
use crate::resources::ResourceType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    BinarySi,
    DecimalSi,
    DecimalExponent,
}

/// A parsed quantity: its value in nano units, and the family of its suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quantity {
    nanos: i128,
    format: Format,
}

const NANO: i128 = 1_000_000_000;
/// Upstream refuses values past 2^63-1 in magnitude.
const MAX_UNITS: i128 = i64::MAX as i128;

const BINARY: [(&str, u32); 6] = [
    ("Ki", 1),
    ("Mi", 2),
    ("Gi", 3),
    ("Ti", 4),
    ("Pi", 5),
    ("Ei", 6),
];
const DECIMAL: [(&str, i32); 10] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("", 0),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];

fn parse(s: &str) -> Option<Quantity> {
    let s = s.trim();
    let (sign, rest) = match s.as_bytes().first()? {
        b'-' => (-1, &s[1..]),
        b'+' => (1, &s[1..]),
        _ => (1, s),
    };
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(num_end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    // Digits as an integer with a decimal exponent; long inputs are refused
    // rather than overflowing (upstream caps the value at 2^63-1 anyway).
    if int.len() + frac.len() > 30 {
        return None;
    }
    let digits: i128 = format!("{int}{frac}").parse().ok()?;
    let mut exp10 = -(frac.len() as i32);
    let mut binary_pow = 0u32;
    let format = if let Some((_, p)) = BINARY.iter().find(|(x, _)| *x == suffix) {
        binary_pow = *p;
        Format::BinarySi
    } else if let Some((_, e)) = DECIMAL.iter().find(|(x, _)| *x == suffix) {
        exp10 += e;
        Format::DecimalSi
    } else if let Some(e) = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E'))
    {
        let e: i32 = e.parse().ok()?;
        if !(-30..=30).contains(&e) {
            return None;
        }
        exp10 += e;
        Format::DecimalExponent
    } else {
        return None;
    };
    // value = digits · 10^exp10 · 1024^binary_pow, in nano units (rounded up).
    let mut nanos = digits.checked_mul(1024i128.checked_pow(binary_pow)?)?;
    let shift = exp10 + 9;
    if shift >= 0 {
        nanos = nanos.checked_mul(10i128.checked_pow(shift.unsigned_abs())?)?;
    } else {
        let div = 10i128.checked_pow(shift.unsigned_abs())?;
        nanos = nanos / div + i128::from(nanos % div != 0);
    }
    if nanos / NANO > MAX_UNITS {
        return None;
    }
    Some(Quantity {
        nanos: sign * nanos,
        format,
    })
}

/// The value of a quantity in nano units, for comparisons.
pub(crate) fn bytes(s: &str) -> Option<i128> {
    parse(s).map(|q| q.nanos)
}

fn canonical(q: Quantity) -> String {
    let small = q.nanos.abs() < 1024 * NANO;
    if q.format == Format::BinarySi && !small && q.nanos % NANO == 0 {
        let units = q.nanos / NANO;
        for (suffix, p) in BINARY.iter().rev() {
            let m = 1024i128.pow(*p);
            if units % m == 0 {
                return format!("{}{suffix}", units / m);
            }
        }
        return units.to_string();
    }
    if q.nanos == 0 {
        return "0".to_string();
    }
    for (suffix, e) in DECIMAL.iter().rev() {
        let m = 10i128.pow((e + 9).unsigned_abs());
        if q.nanos % m == 0 {
            let n = q.nanos / m;
            return match q.format {
                Format::DecimalExponent if *e != 0 => format!("{n}e{e}"),
                Format::DecimalExponent => n.to_string(),
                _ => format!("{n}{suffix}"),
            };
        }
    }
    // Unreachable: every value in nano units is a multiple of 10^0.
    q.nanos.to_string()
}

/// Where the pod spec of an object of type `rt` is (JSON pointer), if it
/// holds one.
pub(crate) fn pod_spec_path(rt: &ResourceType) -> Option<&'static str> {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => Some("/spec"),
        ("apps", "deployments" | "statefulsets" | "daemonsets" | "replicasets")
        | ("batch", "jobs") => Some("/spec/template/spec"),
        _ => None,
    }
}

/// Canonicalizes the quantity fields of a built-in object in place, or says
/// which are not quantities (upstream answers 422 for them too).
pub(crate) fn canonicalize(rt: &ResourceType, obj: &mut Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut fix = |v: &mut Value, field: &str| {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return,
        };
        match parse(&text) {
            Some(q) => *v = Value::String(canonical(q)),
            None => causes.push(Cause {
                reason: "FieldValueInvalid".into(),
                message: format!(
                    "Invalid value: {text:?}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
                ),
                field: field.into(),
            }),
        }
    };
    if let Some(p) = pod_spec_path(rt) {
        if let Some(spec) = obj.pointer_mut(p) {
            pod_quantities(spec, &p.trim_start_matches('/').replace('/', "."), &mut fix);
        }
    }
    if rt.group == "apps" && rt.plural == "statefulsets" {
        if let Some(Value::Array(ts)) = obj.pointer_mut("/spec/volumeClaimTemplates") {
            for (i, t) in ts.iter_mut().enumerate() {
                if let Some(r) = t.pointer_mut("/spec/resources") {
                    resource_lists(
                        r,
                        &format!("spec.volumeClaimTemplates[{i}].spec.resources"),
                        &mut fix,
                    );
                }
            }
        }
    }
    if rt.group.is_empty() && rt.plural == "persistentvolumeclaims" {
        if let Some(r) = obj.pointer_mut("/spec/resources") {
            resource_lists(r, "spec.resources", &mut fix);
        }
        if let Some(Value::Object(cap)) = obj.pointer_mut("/status/capacity") {
            for (k, v) in cap.iter_mut() {
                fix(v, &format!("status.capacity.{k}"));
            }
        }
    }
    causes
}

fn resource_lists(r: &mut Value, at: &str, fix: &mut impl FnMut(&mut Value, &str)) {
    for list in ["requests", "limits"] {
        if let Some(Value::Object(m)) = r.get_mut(list) {
            for (k, v) in m.iter_mut() {
                fix(v, &format!("{at}.{list}.{k}"));
            }
        }
    }
}

fn pod_quantities(spec: &mut Value, at: &str, fix: &mut impl FnMut(&mut Value, &str)) {
    for containers in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(containers) {
            for (i, c) in cs.iter_mut().enumerate() {
                if let Some(r) = c.get_mut("resources") {
                    resource_lists(r, &format!("{at}.{containers}[{i}].resources"), fix);
                }
                if let Some(Value::Array(env)) = c.get_mut("env") {
                    for (j, e) in env.iter_mut().enumerate() {
                        if let Some(d) = e.pointer_mut("/valueFrom/resourceFieldRef/divisor") {
                            let at = format!(
                                "{at}.{containers}[{i}].env[{j}].valueFrom.resourceFieldRef.divisor"
                            );
                            fix(d, &at);
                        }
                    }
                }
            }
        }
    }
    if let Some(Value::Array(vs)) = spec.get_mut("volumes") {
        for (i, v) in vs.iter_mut().enumerate() {
            if let Some(l) = v.pointer_mut("/emptyDir/sizeLimit") {
                fix(l, &format!("{at}.volumes[{i}].emptyDir.sizeLimit"));
            }
        }
    }
    if let Some(Value::Object(m)) = spec.get_mut("overhead") {
        for (k, v) in m.iter_mut() {
            fix(v, &format!("{at}.overhead.{k}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> String {
        canonical(parse(s).unwrap_or_else(|| panic!("{s} parses")))
    }

    #[test]
    fn binary_quantities_take_the_largest_exact_suffix() {
        assert_eq!(c("1024Mi"), "1Gi");
        assert_eq!(c("1536Mi"), "1536Mi");
        assert_eq!(c("1.5Gi"), "1536Mi");
        assert_eq!(c("2048Ki"), "2Mi");
        assert_eq!(c("1Gi"), "1Gi");
        assert_eq!(c("0.5Ki"), "512");
        assert_eq!(c("1Ki"), "1Ki");
    }

    #[test]
    fn decimal_quantities_lose_no_precision_and_no_fraction_is_written() {
        assert_eq!(c("0.5"), "500m");
        assert_eq!(c("1000m"), "1");
        assert_eq!(c("1500m"), "1500m");
        assert_eq!(c("2000"), "2k");
        assert_eq!(c("1.5k"), "1500");
        assert_eq!(c("100m"), "100m");
        assert_eq!(c("1000000"), "1M");
        assert_eq!(c("0"), "0");
        assert_eq!(c("0.0000000001"), "1n");
        assert_eq!(c("1e3"), "1e3");
        assert_eq!(c("1500e-3"), "1500e-3");
    }

    #[test]
    fn what_is_not_a_quantity_is_refused() {
        for s in ["", "abc", "1Gb", "1..5", "1e99", "99999999999999999999Ei"] {
            assert!(parse(s).is_none(), "{s}");
        }
    }
}
