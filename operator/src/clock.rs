//! Time at the Kubernetes boundary.
//!
//! API timestamps (`Time`, `MicroTime`) hold jiff `Timestamp`s; the key
//! rotation schedule computes with chrono's `DateTime<Utc>` over the RFC 3339
//! stamps it keeps in annotations. These two functions are the only crossing.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// Now, to whole seconds: what `Time` fields carry on the wire, so a status
/// written twice in one second compares equal.
pub fn now_seconds() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// `t` as an API timestamp; outside jiff's range (years -9999..=9999) it is
/// clamped to the nearest end.
pub fn time_of(t: DateTime<Utc>) -> Time {
    let ts = Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32).unwrap_or(
        if t.timestamp() < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        },
    );
    Time(ts)
}

/// An API timestamp as chrono's time.
pub fn datetime_of(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().unsigned_abs())
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_time_crosses_both_ways_unchanged() {
        let t = Utc.with_ymd_and_hms(2026, 3, 1, 12, 30, 5).unwrap()
            + chrono::TimeDelta::milliseconds(250);
        assert_eq!(datetime_of(&time_of(t)), t);
        assert_eq!(time_of(t).0.to_string(), "2026-03-01T12:30:05.25Z");
    }

    #[test]
    fn now_has_no_fraction_of_a_second() {
        assert_eq!(now_seconds().0.subsec_nanosecond(), 0);
    }
}
