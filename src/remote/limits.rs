//! How long the network may take: timeouts for silence, and a minimum rate for
//! transfers that move but too slowly to ever finish (like curl's
//! `--speed-limit`/`--speed-time`). A trickling server would otherwise hold a
//! transfer slot for ever. Only the server's time is judged: time we spend
//! ourselves (reading the file, the progress callback, a bandwidth limit) is
//! left out.
//!
//! For tests only, `SQLITE_ATTACHMENTS_TEST_TIMEOUTS` overrides the constants,
//! e.g. `connect=2,response=3,stall=3,min_rate=1024,min_rate_window=1`
//! (seconds; `min_rate` in bytes per second). It is read when a remote is opened.

use std::io::{self, Read};
use std::time::{Duration, Instant};

/// Connecting may take this long (DNS included).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A response must start within this long after the request was sent.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// A stalled body (no byte read or written) fails after this long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A body moving slower than this (bytes per second) over MIN_RATE_WINDOW is cut.
pub const MIN_RATE: u64 = 1024;
/// The window over which MIN_RATE is judged.
pub const MIN_RATE_WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub connect: Duration,
    pub response: Duration,
    pub stall: Duration,
    pub min_rate: u64,
    pub min_rate_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect: CONNECT_TIMEOUT,
            response: RESPONSE_TIMEOUT,
            stall: STALL_TIMEOUT,
            min_rate: MIN_RATE,
            min_rate_window: MIN_RATE_WINDOW,
        }
    }
}

impl Limits {
    /// The defaults, with the test-only overrides from the environment.
    pub fn from_env() -> Limits {
        let spec = std::env::var("SQLITE_ATTACHMENTS_TEST_TIMEOUTS").unwrap_or_default();
        Limits::parse(&spec)
    }

    /// Applies `key=value` overrides; unknown keys and bad values are ignored
    /// (this is a test hook, not a setting).
    fn parse(spec: &str) -> Limits {
        let mut l = Limits::default();
        for (key, value) in spec.split(',').filter_map(|kv| kv.split_once('=')) {
            let Ok(n) = value.trim().parse::<f64>() else { continue };
            if !(n.is_finite() && n >= 0.0) {
                continue;
            }
            let secs = Duration::from_secs_f64(n.min(86_400.0));
            match key.trim() {
                "connect" => l.connect = secs,
                "response" => l.response = secs,
                "stall" => l.stall = secs,
                "min_rate" => l.min_rate = n as u64,
                "min_rate_window" => l.min_rate_window = secs,
                _ => {}
            }
        }
        l
    }
}

/// Judges the pace of one body: after each window of the server's time, the
/// bytes moved in it must reach `min_rate` per second, or the transfer is cut.
pub struct RateWatch {
    min_rate: u64,
    window: Duration,
    /// Server time and bytes moved when the current window began.
    window_began: Duration,
    at_start: u64,
}

impl RateWatch {
    pub fn new(limits: &Limits) -> RateWatch {
        RateWatch { min_rate: limits.min_rate, window: limits.min_rate_window, window_began: Duration::ZERO, at_start: 0 }
    }

    /// Called each time bytes move, with the total so far and the time the server
    /// has had so far (our own waits, such as a bandwidth limit, left out).
    pub fn check(&mut self, total: u64, server_time: Duration) -> io::Result<()> {
        let elapsed = server_time.saturating_sub(self.window_began);
        if self.min_rate == 0 || elapsed < self.window {
            return Ok(());
        }
        let moved = total.saturating_sub(self.at_start);
        let needed = (self.min_rate as f64 * elapsed.as_secs_f64()) as u64;
        if moved < needed {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "too slow: {moved} bytes in {:.1} s, under the minimum of {} bytes/s",
                    elapsed.as_secs_f64(),
                    self.min_rate
                ),
            ));
        }
        self.window_began = server_time;
        self.at_start = total;
        Ok(())
    }
}

/// Whose time a [`RateReader`] counts as the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// A download: the time spent inside reads of the response body.
    InsideReads,
    /// An upload: the time between reads of the file, when ureq is writing to the
    /// socket (the file read itself, and the progress callback, are ours).
    BetweenReads,
}

/// A reader whose pace is judged by a [`RateWatch`] (both directions: ureq pulls
/// an upload's body through it as the socket accepts bytes).
pub struct RateReader<R> {
    inner: R,
    watch: RateWatch,
    pace: Pace,
    total: u64,
    server_time: Duration,
    last_return: Instant,
}

impl<R> RateReader<R> {
    pub fn new(inner: R, limits: &Limits, pace: Pace) -> RateReader<R> {
        RateReader { inner, watch: RateWatch::new(limits), pace, total: 0, server_time: Duration::ZERO, last_return: Instant::now() }
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

impl<R: Read> Read for RateReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let before = Instant::now();
        let n = self.inner.read(buf)?;
        let after = Instant::now();
        self.server_time += match self.pace {
            Pace::InsideReads => after - before,
            Pace::BetweenReads => before - self.last_return,
        };
        self.last_return = after;
        self.total += n as u64;
        if n > 0 {
            self.watch.check(self.total, self.server_time)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_bad_values_are_ignored() {
        let l = Limits::parse("connect=2, stall=0.5,min_rate=10,bogus=1,response=x");
        assert_eq!(l.connect, Duration::from_secs(2));
        assert_eq!(l.stall, Duration::from_millis(500));
        assert_eq!(l.min_rate, 10);
        assert_eq!(l.response, RESPONSE_TIMEOUT);
        assert_eq!(Limits::parse(""), Limits::default());
    }

    #[test]
    fn a_trickle_is_cut_after_the_window_and_a_steady_flow_is_not() {
        let limits = Limits { min_rate: 1000, min_rate_window: Duration::from_secs(30), ..Limits::default() };
        let mut w = RateWatch::new(&limits);
        let secs = Duration::from_secs;
        assert!(w.check(1, secs(29)).is_ok(), "nothing is judged before the window ends");
        assert!(w.check(40_000, secs(31)).is_ok(), "40 KB in 31 s is fast enough");
        assert!(w.check(60_000, secs(50)).is_ok(), "the next window is still open");
        let e = w.check(60_001, secs(62)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("too slow"));
    }

    #[test]
    fn only_the_servers_time_counts() {
        struct Slow;
        impl Read for Slow {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_millis(100));
                buf[0] = 0;
                Ok(1)
            }
        }
        // The window leaves room for the test thread being descheduled between two reads
        // (counted against an upload's server) on a loaded machine.
        let limits = Limits { min_rate: 1000, min_rate_window: Duration::from_millis(300), ..Limits::default() };
        let mut buf = [0u8; 8];
        // A download whose server sends a byte per 100 ms is cut...
        let mut down = RateReader::new(Slow, &limits, Pace::InsideReads);
        assert!((0..10).map(|_| down.read(&mut buf)).any(|r| r.is_err()));
        // ...while an upload whose own file reads are slow (our time, not the server's) is not.
        let mut up = RateReader::new(Slow, &limits, Pace::BetweenReads);
        assert!((0..10).all(|_| up.read(&mut buf).is_ok()));
    }
}
