//! Steering transfers while they run, per database file and process: the bandwidth
//! cap (`max_bytes_per_second`, one token bucket shared by every upload and download)
//! and the pause flag (`attachment_pause()`). Both are read by the transfers' progress
//! callbacks, so a change reaches transfers in flight within one read.
//!
//! The stored values (the config and `_attachments_config.paused`) are the truth; a pass
//! copies them here when it starts and every second while it runs, so a change made by
//! another process is seen within about a second, and one made in this process at once.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The smallest cap accepted: one 256 KiB read then waits 16 s at most, well inside
/// servers' idle timeouts.
pub const MIN_BYTES_PER_SECOND: i64 = 16 * 1024;
/// How long a waiting transfer sleeps at a time: it notices a new rate, a pause or a
/// stop within this long.
const SLICE: Duration = Duration::from_millis(100);

/// The steering of one database file in this process.
#[derive(Default)]
pub struct Steer {
    /// Bytes per second; 0 means unlimited.
    rate: AtomicU64,
    paused: AtomicBool,
    /// Tokens (may go negative: a read larger than the balance is paid off by waiting) and
    /// when they were last topped up.
    bucket: Mutex<Option<(f64, Instant)>>,
}

static STEER: LazyLock<Mutex<HashMap<String, Arc<Steer>>>> = LazyLock::new(Default::default);

/// The steering of `db_file`, created on first use (unlimited, not paused).
pub fn of(db_file: &str) -> Arc<Steer> {
    let mut map = STEER.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(db_file.to_string()).or_default().clone()
}

impl Steer {
    pub fn set_rate(&self, bytes_per_second: Option<u64>) {
        let rate = bytes_per_second.unwrap_or(0);
        if self.rate.swap(rate, Ordering::Relaxed) != rate {
            // A new rate starts from a fresh bucket, so an old debt is not paid at the new price.
            *self.bucket.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Pays for `bytes` just moved: returns at once while under the cap, else waits until
    /// the bucket is out of debt. Fails when `stop` turns true or the transfers are paused
    /// meanwhile. Called outside the timing of [`crate::remote`]'s minimum-rate watch, so
    /// the wait is never held against the server.
    pub fn pay(&self, bytes: u64, stop: &dyn Fn() -> bool) -> io::Result<()> {
        let mut charged = false;
        loop {
            if self.paused() {
                return Err(io::Error::other("paused: attachment_pause() was called"));
            }
            if stop() {
                return Err(io::Error::other("cancelled: the worker is stopping"));
            }
            let rate = self.rate.load(Ordering::Relaxed);
            if rate == 0 {
                return Ok(());
            }
            let wait = {
                let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                // At most a quarter second of burst.
                let burst = rate as f64 / 4.0;
                let (tokens, since) = bucket.get_or_insert((burst, now));
                *tokens = (*tokens + now.duration_since(*since).as_secs_f64() * rate as f64).min(burst);
                *since = now;
                if !charged {
                    *tokens -= bytes as f64;
                    charged = true;
                }
                if *tokens >= 0.0 {
                    return Ok(());
                }
                Duration::from_secs_f64(-*tokens / rate as f64)
            };
            std::thread::sleep(wait.min(SLICE));
        }
    }
}

/// Charges a transfer's progress reports to its database's bucket: the callbacks report
/// totals so far, this turns them into the bytes moved since the last report (a total that
/// goes down is a new answer starting over from there, or parts reporting out of order).
pub struct Meter {
    steer: Arc<Steer>,
    last: AtomicU64,
}

impl Meter {
    pub fn new(steer: Arc<Steer>) -> Meter {
        Meter { steer, last: AtomicU64::new(0) }
    }

    pub fn report(&self, total: u64, stop: &dyn Fn() -> bool) -> io::Result<()> {
        let last = self.last.swap(total, Ordering::Relaxed);
        self.steer.pay(total.saturating_sub(last), stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_bucket_paces_and_an_unlimited_one_does_not() {
        let steer = Steer::default();
        let started = Instant::now();
        for _ in 0..10 {
            steer.pay(1 << 20, &|| false).unwrap();
        }
        // Bounds with room for a loaded machine: the paced part's lower bound is what fails
        // if the cap does nothing.
        assert!(started.elapsed() < Duration::from_millis(1000));
        steer.set_rate(Some(400_000));
        let started = Instant::now();
        // 100 KB of burst, then 200 KB more at 400 KB/s: about half a second.
        for _ in 0..3 {
            steer.pay(100_000, &|| false).unwrap();
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(3000), "{took:?}");
    }

    #[test]
    fn a_pause_or_stop_ends_a_wait() {
        let steer = Arc::new(Steer::default());
        steer.set_rate(Some(MIN_BYTES_PER_SECOND as u64));
        let s = steer.clone();
        let t = std::thread::spawn(move || s.pay(10 << 20, &|| false));
        std::thread::sleep(Duration::from_millis(150));
        steer.set_paused(true);
        let e = t.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("paused"));
        steer.set_paused(false);
        assert!(steer.pay(10 << 20, &|| true).unwrap_err().to_string().contains("cancelled"));
    }

    #[test]
    fn a_meter_charges_what_moved_since_the_last_report() {
        let steer = Arc::new(Steer::default());
        let meter = Meter::new(steer.clone());
        steer.set_rate(Some(1_000_000));
        meter.report(200_000, &|| false).unwrap();
        meter.report(250_000, &|| false).unwrap();
        // 250 KB moved against 250 KB of burst: nothing owed yet.
        let tokens = steer.bucket.lock().unwrap().unwrap().0;
        assert!(tokens.abs() < 1_000.0, "{tokens}");
        meter.report(0, &|| false).unwrap(); // a new answer starts over: nothing moved, nothing owed
        meter.report(10, &|| false).unwrap();
        let tokens = steer.bucket.lock().unwrap().unwrap().0;
        assert!((tokens + 10.0).abs() < 1_000.0, "{tokens}");
    }
}
