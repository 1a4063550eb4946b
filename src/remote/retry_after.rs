//! `Retry-After` (RFC 9110 §10.2.3): seconds, or an HTTP date. A server's wish,
//! never a command: every wait is capped, so a huge or hostile value cannot
//! overflow the retry time or park a row for ever.

use std::time::{Duration, SystemTime};

use crate::queue::retry::PERMANENT_DELAY;

/// The longest wait a server may ask for: the longest backoff we use ourselves.
pub const MAX_RETRY_AFTER: Duration = PERMANENT_DELAY;

/// The wait a `Retry-After` value asks for, capped; `None` when it is not one.
pub fn parse(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Any run of digits is a number of seconds; too many to count is "very long".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX).min(MAX_RETRY_AFTER.as_secs()))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_dates_are_read_and_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse("9223372036854775", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse("99999999999999999999999999", now), Some(MAX_RETRY_AFTER));
        let in_10_min = httpdate::fmt_http_date(now + Duration::from_secs(600));
        assert_eq!(parse(&in_10_min, now), Some(Duration::from_secs(600)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(600));
        assert_eq!(parse(&past, now), Some(Duration::ZERO));
        assert_eq!(parse("Fri, 31 Dec 9999 23:59:59 GMT", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse("-5", now), None);
        assert_eq!(parse("soon", now), None);
        assert_eq!(parse("", now), None);
    }
}
