//! What a failed transfer does next: the contract's retry rules as a pure function.

use std::time::Duration;

use crate::remote::{ErrorKind, RemoteError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Upload,
    Download,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Stay queued; try again at this time (ms since the epoch).
    RetryAt(i64),
    /// Give the download up: the row becomes ARCHIVED.
    Archive,
}

/// First retry waits up to this long; each attempt doubles it.
pub const BASE_DELAY: Duration = Duration::from_secs(1);
/// Transient failures never wait longer than this.
pub const TRANSIENT_CAP: Duration = Duration::from_secs(5 * 60);
/// 401/403: the credentials are wrong; someone has to fix them.
pub const AUTH_DELAY: Duration = Duration::from_secs(15 * 60);
/// Other 4xx: retried, but rarely.
pub const PERMANENT_DELAY: Duration = Duration::from_secs(60 * 60);

/// Decides what follows a failure. `attempts` counts this one; `jitter` is uniform in [0, 1).
pub fn after_failure(op: Op, err: &RemoteError, attempts: i64, max_attempts: i64, now_ms: i64, jitter: f64) -> Next {
    // IMP: a download answered 404/410 is gone for good: archive, as PowerSync's handler returning false.
    if op == Op::Download && err.kind == ErrorKind::NotFound {
        return Next::Archive;
    }
    // IMP: 401/403 never archive or drop a row, whatever the attempt count (S3 answers 403 for a missing key).
    if op == Op::Download && err.kind != ErrorKind::Auth && attempts >= max_attempts {
        return Next::Archive;
    }
    // IMP: uploads and deletes are never given up.
    let delay = match err.kind {
        ErrorKind::Auth => AUTH_DELAY.mul_f64(0.5 + jitter / 2.0),
        ErrorKind::Permanent => PERMANENT_DELAY.mul_f64(0.5 + jitter / 2.0),
        ErrorKind::Transient | ErrorKind::NotFound => {
            let exp = BASE_DELAY.saturating_mul(1u32 << attempts.clamp(1, 20).saturating_sub(1) as u32);
            // Full jitter: anywhere in [0, min(cap, base * 2^(n-1))].
            let jittered = exp.min(TRANSIENT_CAP).mul_f64(jitter);
            // A server's Retry-After is honoured but capped like our own waits.
            jittered.max(err.retry_after.unwrap_or_default().min(PERMANENT_DELAY))
        }
    };
    // At least 1 ms, so one sync pass never retries the same row twice.
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX).max(1);
    Next::RetryAt(now_ms.saturating_add(delay_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ErrorKind) -> RemoteError {
        RemoteError::new(kind, "x")
    }

    #[test]
    fn missing_downloads_archive_at_once() {
        assert_eq!(after_failure(Op::Download, &err(ErrorKind::NotFound), 1, 10, 0, 0.5), Next::Archive);
    }

    #[test]
    fn downloads_give_up_after_max_attempts_but_not_for_auth() {
        assert!(matches!(after_failure(Op::Download, &err(ErrorKind::Transient), 9, 10, 0, 0.5), Next::RetryAt(_)));
        assert_eq!(after_failure(Op::Download, &err(ErrorKind::Transient), 10, 10, 0, 0.5), Next::Archive);
        assert!(matches!(after_failure(Op::Download, &err(ErrorKind::Auth), 500, 10, 0, 0.5), Next::RetryAt(_)));
    }

    #[test]
    fn uploads_and_deletes_are_never_given_up() {
        for kind in [ErrorKind::Transient, ErrorKind::Auth, ErrorKind::Permanent, ErrorKind::NotFound] {
            assert!(matches!(after_failure(Op::Upload, &err(kind), 1000, 10, 0, 0.9), Next::RetryAt(_)));
            assert!(matches!(after_failure(Op::Delete, &err(kind), 1000, 10, 0, 0.9), Next::RetryAt(_)));
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let at = |n, j| match after_failure(Op::Upload, &err(ErrorKind::Transient), n, 10, 0, j) {
            Next::RetryAt(t) => t,
            Next::Archive => unreachable!(),
        };
        assert_eq!(at(1, 0.999), 999);
        assert_eq!(at(4, 0.999), 7992);
        assert_eq!(at(40, 0.999), 299_700);
        assert_eq!(at(3, 0.0), 1, "full jitter may retry at once, but never in the same pass");
        let auth = match after_failure(Op::Upload, &err(ErrorKind::Auth), 1, 10, 0, 0.0) {
            Next::RetryAt(t) => t,
            Next::Archive => unreachable!(),
        };
        assert!(auth >= 7 * 60 * 1000, "401/403 wait long: {auth}");
    }

    #[test]
    fn a_huge_retry_after_is_capped_and_never_overflows() {
        let mut e = err(ErrorKind::Transient);
        e.retry_after = Some(Duration::from_secs(9_223_372_036_854_775));
        assert_eq!(after_failure(Op::Upload, &e, 1, 10, 1000, 0.1), Next::RetryAt(1000 + PERMANENT_DELAY.as_millis() as i64));
        e.retry_after = Some(Duration::MAX);
        assert_eq!(after_failure(Op::Upload, &e, 1, 10, i64::MAX - 5, 0.1), Next::RetryAt(i64::MAX));
    }

    #[test]
    fn retry_after_is_honoured() {
        let mut e = err(ErrorKind::Transient);
        e.retry_after = Some(Duration::from_secs(30));
        assert_eq!(after_failure(Op::Upload, &e, 1, 10, 1000, 0.1), Next::RetryAt(31_000));
    }
}
