//! A failed request's Retry-After header, read by the transport, then the retry
//! policy: the next attempt is always after now, never later than the longest
//! backoff, and nothing overflows; only downloads are ever given up.
//!
//! The header goes through the transport's real answer handling
//! (`fuzzing::http_answer`), so a new Retry-After parser there is covered as is.
#![no_main]

use std::time::Duration;

use attachments::fuzzing::*;
use libfuzzer_sys::fuzz_target;

/// Year 9999 in ms since the epoch: any clock this runs under.
const LATEST_NOW_MS: i64 = 253_402_300_799_999;

fuzz_target!(|input: (u16, &[u8], u8, i64, i64, i64, u32)| {
    let (status, value, op, attempts, max_attempts, now_ms, jitter) = input;
    let status = [408, 429, 500, 502, 503, 504, 401, 403, 404, 410, 400, 409][status as usize % 12];
    let Some(err) = http_answer(status, &[("retry-after", value)], b"") else {
        panic!("HTTP {status} taken for a success");
    };

    // A plain number of seconds within our own longest wait is honoured exactly.
    let text = std::str::from_utf8(value).unwrap_or("").trim_matches([' ', '\t']);
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(secs) = text.parse::<u64>() {
            if secs <= PERMANENT_DELAY.as_secs() {
                assert_eq!(err.retry_after, Some(Duration::from_secs(secs)), "Retry-After {text:?}");
            }
        }
    }
    if !value.iter().any(u8::is_ascii_digit) {
        assert_eq!(err.retry_after, None, "Retry-After {value:?} is neither seconds nor a date");
    }

    let op = [Op::Upload, Op::Download, Op::Delete][op as usize % 3];
    let attempts = attempts.checked_abs().unwrap_or(i64::MAX).max(1);
    let max_attempts = max_attempts.rem_euclid(1_000_000) + 1;
    let now_ms = now_ms.rem_euclid(LATEST_NOW_MS + 1);
    let jitter = f64::from(jitter) / 4_294_967_296.0;
    let longest = [PERMANENT_DELAY, AUTH_DELAY, TRANSIENT_CAP].into_iter().max().unwrap();

    match after_failure(op, &err, attempts, max_attempts, now_ms, jitter) {
        Next::RetryAt(at) => {
            assert!(at > now_ms, "retry at {at}, not after now {now_ms}");
            let latest = now_ms + longest.as_millis() as i64;
            assert!(at <= latest, "retry {} s from now, longer than the longest backoff ({:?}); Retry-After {:?}",
                (at - now_ms) / 1000, longest, err.retry_after);
        }
        Next::Archive => {
            assert_eq!(op, Op::Download, "only downloads are ever given up");
            assert!(err.kind == ErrorKind::NotFound || (err.kind != ErrorKind::Auth && attempts >= max_attempts));
        }
    }
});
