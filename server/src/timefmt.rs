//! RFC 3339 UTC timestamps for the admin API.

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `2026-11-21T12:00:00.123Z`: UTC, millisecond precision.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    let at = OffsetDateTime::from(at);
    let at = at.replace_millisecond(at.millisecond()).unwrap_or(at);
    at.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_utc_with_milliseconds() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123) + Duration::from_nanos(456);
        assert_eq!(super::rfc3339(at), "2023-11-14T22:13:20.123Z");
    }
}
