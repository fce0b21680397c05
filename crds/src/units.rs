//! Durations and sizes as written in a StreamPipeline spec.
//!
//! Durations are Go-style strings (`500ms`, `5s`, `1m30s`, `24h`); sizes are
//! Kubernetes quantities restricted to whole bytes (`1048576`, `64Mi`, `1Gi`,
//! `10M`). Both are kept as strings in the resource, so `kubectl get -o yaml`
//! shows what the user wrote, and parsed here.
//!
//! Both parsers are total: every input gives a value or a reason, never a
//! panic, and the values are bounded ([`MAX_DURATION`], [`MAX_SIZE`]) so
//! that arithmetic on them (a lease times two, a sum of timeouts) cannot
//! overflow. Each field has its own, tighter bounds in [`crate::validate`].

use std::time::Duration;

/// The longest duration any field accepts: 30 days. Every per-field bound
/// is at most this, and twice this fits a `Duration` many times over.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// How [`MAX_DURATION`] is written in messages.
pub const MAX_DURATION_TEXT: &str = "720h";
/// The largest size any field accepts: 64Ti.
pub const MAX_SIZE: u64 = 64 << 40;
/// Longest duration or size text: a bound on what the parsers read, and the
/// `maxLength` of those fields in the CRD.
pub const MAX_UNIT_TEXT: usize = 32;

/// Parses a duration such as `250ms`, `5s`, `1m30s` or `24h`.
///
/// # Errors
/// Empty or overlong input, a missing or unknown unit, or a value over
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.len() > MAX_UNIT_TEXT {
        return Err(format!(
            "a duration is at most {MAX_UNIT_TEXT} characters (found {})",
            s.len()
        ));
    }
    let too_long =
        || format!("`{s}` is longer than {MAX_DURATION_TEXT}, the longest duration accepted");
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "`{s}` is not a duration (expected e.g. 500ms, 5s, 1m30s, 24h)"
            ));
        }
        // All digits: parsing fails only past u64::MAX, far over the bound.
        let n: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => n
                .checked_mul(60)
                .map(Duration::from_secs)
                .ok_or_else(too_long)?,
            "h" => n
                .checked_mul(3600)
                .map(Duration::from_secs)
                .ok_or_else(too_long)?,
            "" => return Err(format!("`{s}`: missing unit (ms, s, m or h)")),
            other => return Err(format!("`{s}`: unknown unit `{other}` (use ms, s, m or h)")),
        };
        total = total
            .checked_add(part)
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(too_long)?;
    }
    Ok(total)
}

/// Parses a byte size: a plain integer or one with a binary (`Ki`, `Mi`,
/// `Gi`, `Ti`) or decimal (`k`, `M`, `G`, `T`) suffix.
///
/// # Errors
/// Anything else, including fractions, negative numbers, overlong input and
/// values over [`MAX_SIZE`].
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.len() > MAX_UNIT_TEXT {
        return Err(format!(
            "a size is at most {MAX_UNIT_TEXT} characters (found {})",
            s.len()
        ));
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "`{s}` is not a size (expected e.g. 1048576, 64Mi, 1Gi)"
        ));
    }
    let too_large = || format!("`{s}` is larger than 64Ti, the largest size accepted");
    // All digits: parsing fails only past u64::MAX, far over the bound.
    let n: u64 = s[..digits].parse().map_err(|_| too_large())?;
    let mult: u64 = match &s[digits..] {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => {
            return Err(format!(
                "`{s}`: unknown suffix `{other}` (use Ki, Mi, Gi, Ti, k, M, G or T)"
            ))
        }
    };
    n.checked_mul(mult)
        .filter(|b| *b <= MAX_SIZE)
        .ok_or_else(too_large)
}

/// The regular expression the CRD schema uses for durations, kept next to
/// the parser it mirrors.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";
/// The regular expression the CRD schema uses for sizes.
pub const SIZE_PATTERN: &str = "^[0-9]+(k|M|G|T|Ki|Mi|Gi|Ti)?$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_every_unit_and_combinations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
    }

    #[test]
    fn bad_durations_are_refused_with_a_reason() {
        for bad in ["", "5", "s", "5x", "1.5s", "-1s", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
        assert!(parse_duration("5").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn durations_past_the_longest_are_refused_not_wrapped() {
        assert_eq!(parse_duration("720h").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("719h60m").unwrap(), MAX_DURATION);
        for long in [
            "721h",
            "720h1ms",
            "18446744073709551615s",
            "18446744073709551615ms",
            "5124095576030431h",
            "360h360h1s",
        ] {
            let e = parse_duration(long).unwrap_err();
            assert!(e.contains("longer than 720h"), "{long}: {e}");
        }
        let e = parse_duration(&"1s".repeat(17)).unwrap_err();
        assert!(e.contains("at most 32 characters"), "{e}");
    }

    #[test]
    fn sizes_past_the_largest_are_refused_not_wrapped() {
        assert_eq!(parse_size("64Ti").unwrap(), MAX_SIZE);
        for big in [
            "65Ti",
            "18446744073709551615",
            "18446744073709551615Ki",
            "70369T",
        ] {
            let e = parse_size(big).unwrap_err();
            assert!(e.contains("larger than 64Ti"), "{big}: {e}");
        }
        assert!(parse_size(&"1".repeat(40))
            .unwrap_err()
            .contains("at most 32"));
    }

    #[test]
    fn sizes_parse_binary_and_decimal_suffixes() {
        assert_eq!(parse_size("1048576").unwrap(), 1_048_576);
        assert_eq!(parse_size("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size("10M").unwrap(), 10_000_000);
        for bad in ["", "Mi", "1.5Gi", "-1", "5XB"] {
            assert!(parse_size(bad).is_err(), "{bad} should be refused");
        }
    }
}
