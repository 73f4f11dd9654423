//! Time, injectable: [`Clock`] and its real implementation [`SystemClock`], and the way Go
//! prints times in JSON.

use std::fmt;
use std::time::SystemTime;

/// A source of the current time. kube-netd uses [`SystemClock`]; tests pass a clock they
/// advance by hand, so no test sleeps or reads the wall clock.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Go's zero `time.Time` as `encoding/json` prints it: what kube-proxy reports as
/// `lastUpdated` before its first sync.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A time as Go's `encoding/json` prints a UTC `time.Time` (RFC 3339 with nanoseconds,
/// trailing zeros dropped); `None` is Go's zero time.
pub(crate) fn go_time(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return GO_ZERO_TIME.to_owned();
    };
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => ts.to_string(),
        // Beyond jiff's range (years ±9999), which Go's JSON encoder rejects too.
        Err(_) => GO_ZERO_TIME.to_owned(),
    }
}

/// `serialize_with` adapter for [`go_time`]: `None` is Go's zero time.
pub(crate) fn serialize_go_time<S: serde::Serializer>(
    t: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&go_time(*t))
}

/// `serialize_with` adapter for [`go_time`], for a time that is always set.
pub(crate) fn serialize_go_time_set<S: serde::Serializer>(
    t: &SystemTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&go_time(Some(*t)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn prints_times_like_go_rfc3339_nano() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_168_217);
        assert_eq!(go_time(Some(base)), "2026-11-20T09:50:17Z");
        assert_eq!(
            go_time(Some(base + Duration::from_millis(120))),
            "2026-11-20T09:50:17.12Z"
        );
        assert_eq!(
            go_time(Some(base + Duration::from_nanos(1))),
            "2026-11-20T09:50:17.000000001Z"
        );
        assert_eq!(go_time(None), "0001-01-01T00:00:00Z");
    }
}
