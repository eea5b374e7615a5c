//! Time as the store keeps it: unix milliseconds, shown as RFC 3339.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// How long to wait after `failures` failures: `base_ms`, doubled for each
/// earlier failure, capped at `cap_ms`. Every retry loop uses this one.
pub fn backoff_ms(base_ms: i64, failures: i64, cap_ms: i64) -> i64 {
    base_ms
        .saturating_mul(1i64 << failures.clamp(0, 30))
        .min(cap_ms)
}

/// `2026-11-26T17:00:00.123Z` for unix milliseconds.
pub fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// `14:20 UTC` for unix milliseconds: a time of day for one-line texts.
pub fn format_hm(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!("{:02}:{:02} UTC", t.hour(), t.minute())
}

/// (weekday from Monday = 0, minute of the UTC day) of unix milliseconds,
/// as execution windows read it.
pub fn weekday_minute(ms: i64) -> (u8, u16) {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    (
        t.weekday().number_days_from_monday(),
        t.hour() as u16 * 60 + t.minute() as u16,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(1000, 0, 300_000), 1000);
        assert_eq!(backoff_ms(1000, 3, 300_000), 8000);
        assert_eq!(backoff_ms(1000, 30, 300_000), 300_000);
        assert_eq!(backoff_ms(500, 99, 32_000), 32_000);
        assert_eq!(backoff_ms(1000, -1, 300_000), 1000);
    }

    #[test]
    fn formats_and_splits_utc() {
        // 2026-11-26 was a Thursday.
        let ms = 1_795_705_200_000; // 2026-11-26T15:00:00Z
        assert_eq!(format_ms(ms), "2026-11-26T15:00:00Z");
        assert_eq!(format_hm(ms + 20 * 60_000), "15:20 UTC");
        assert_eq!(weekday_minute(ms), (3, 15 * 60));
    }
}
