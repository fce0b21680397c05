//! Resource quantities compared by value, as the API server stores them.
//!
//! The API server rewrites every quantity of a built-in object into its
//! canonical form (`1024Mi` → `1Gi`, `0.5` → `500m`). Compared as text,
//! what the operator applies and what it reads back differ for ever: a
//! re-apply on every reconcile, or — for a StatefulSet's volume claim
//! templates — a recreate loop. So the operator compares quantities by their
//! value, in nano units (the API server's precision).

/// The value of a quantity in nano units; `None` when `s` is not one.
pub fn nanos(s: &str) -> Option<i128> {
    let s = s.trim();
    let (negative, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || int.len() + frac.len() > 30 {
        return None;
    }
    let digits: i128 = format!("{int}{frac}").parse().ok()?;
    let frac_len = i32::try_from(frac.len()).ok()?;
    let (mult, exp10): (i128, i32) = match suffix {
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "" => (1, 0),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        e => {
            let e: i32 = e.strip_prefix(['e', 'E'])?.parse().ok()?;
            if !(-30..=30).contains(&e) {
                return None;
            }
            (1, e)
        }
    };
    let scaled = digits.checked_mul(mult)?;
    // value · 10^9, rounded up past nano precision (as the API server).
    let shift = exp10 - frac_len + 9;
    let v = if shift >= 0 {
        scaled.checked_mul(10i128.checked_pow(shift.unsigned_abs())?)?
    } else {
        let div = 10i128.checked_pow(shift.unsigned_abs())?;
        scaled / div + i128::from(scaled % div != 0)
    };
    Some(if negative { -v } else { v })
}

/// Whether `a` and `b` are the same quantity (or the same text when either
/// is not a quantity).
pub fn same(a: &str, b: &str) -> bool {
    match (nanos(a), nanos(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_value_are_the_same_quantity() {
        assert!(same("1024Mi", "1Gi"));
        assert!(same("0.5", "500m"));
        assert!(same("1.5Gi", "1536Mi"));
        assert!(same("2000", "2k"));
        assert!(same("1e3", "1k"));
        assert!(!same("1Gi", "1G"));
        assert!(!same("1Gi", "2Gi"));
    }

    #[test]
    fn values_order_as_numbers() {
        assert!(nanos("2Gi") > nanos("1536Mi"));
        assert!(nanos("100m") < nanos("1"));
        assert_eq!(nanos("1Gb"), None);
        assert_eq!(nanos(""), None);
        assert_eq!(nanos("1e99"), None);
    }
}
