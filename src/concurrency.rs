//! Adaptive concurrency: how many transfers a pass keeps in flight, below the config's
//! `max_concurrency`. It starts at a few and climbs while the rate of finished files
//! grows (a link with latency needs many in flight): doubling at first, as TCP's slow
//! start does, so a high-latency link reaches its level in a few windows; by half steps
//! once a window showed no growth or an error. It holds when more stops helping,
//! steps down when the rate falls, and halves on transient errors (a server or link
//! that is overloaded). The level is kept per database file for the life of the
//! process, so each pass starts where the last one ended; `current(db_file)` reads it,
//! and passes also store it in `_attachments_config.concurrency`, where other processes
//! (and this one after a restart) start from.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Transfers in flight when nothing is known yet about the link. Measured
/// (300 x 16 KiB through a latency proxy, max 32): from 4, the doubling windows cost
/// RTT 50 ms 0.88x and RTT 150 ms 0.86x of curl at 32; from 16, 1.09x and 1.07x, and
/// loopback no worse. Servers that cannot take 16 at once answer with errors, which halve it.
pub const START: usize = 16;
/// A window of measurement lasts at least this long, and ends once it saw `level`
/// transfers finish (or after MAX_WINDOW).
const MIN_WINDOW: Duration = Duration::from_millis(100);
const MAX_WINDOW: Duration = Duration::from_secs(2);
/// A rate this much above the last window's counts as growth; this much below, as a fall.
const GROWTH: f64 = 1.10;
const FALL: f64 = 0.80;

static LEVELS: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Default::default);

/// The level this process last used for `db_file`, if it moved files of it yet.
fn mine(db_file: &str) -> Option<usize> {
    LEVELS.lock().ok().and_then(|l| l.get(db_file).copied())
}

/// The level this process last used for `db_file` (START before any pass).
pub fn current(db_file: &str) -> usize {
    mine(db_file).unwrap_or(START)
}

fn remember(db_file: &str, level: usize) {
    if let Ok(mut l) = LEVELS.lock() {
        l.insert(db_file.to_string(), level);
    }
}

/// The controller of one pass.
pub struct Adaptive {
    db_file: String,
    max: usize,
    level: usize,
    window_began: Instant,
    done_in_window: usize,
    failed_in_window: usize,
    /// Files per second in the last window, if one was measured at this or a nearby level.
    last_rate: Option<f64>,
    /// Doubling while every window grew; over once one did not (or saw errors).
    slow_start: bool,
}

impl Adaptive {
    /// `stored`: the level the database last recorded (any process), used when this
    /// process has none of its own yet.
    pub fn new(db_file: &str, max: usize, stored: Option<usize>) -> Adaptive {
        let max = max.max(1);
        let level = mine(db_file).or(stored).unwrap_or(START).clamp(1, max);
        Adaptive {
            db_file: db_file.to_string(),
            max,
            level,
            window_began: Instant::now(),
            done_in_window: 0,
            failed_in_window: 0,
            last_rate: None,
            slow_start: true,
        }
    }

    pub fn level(&self) -> usize {
        self.level
    }

    /// One transfer finished; `overloaded` when it failed in a way more parallel requests
    /// make worse (network errors, timeouts, 429, 5xx).
    pub fn finished(&mut self, overloaded: bool) {
        if overloaded {
            self.failed_in_window += 1;
        } else {
            self.done_in_window += 1;
        }
    }

    /// Ends the window when it is due and moves the level. `waiting` is how many claimed
    /// transfers are queued or in flight: the level only rises when there is work for it.
    pub fn tick(&mut self, waiting: usize) -> usize {
        let elapsed = self.window_began.elapsed();
        if self.failed_in_window > 0 {
            // Multiplicative decrease, once per window's worth of errors.
            self.set(self.level - self.level / 2);
            self.last_rate = None;
            self.slow_start = false;
            self.restart();
            return self.level;
        }
        let enough = self.done_in_window >= self.level && elapsed >= MIN_WINDOW;
        if !enough && elapsed < MAX_WINDOW {
            return self.level;
        }
        let rate = self.done_in_window as f64 / elapsed.as_secs_f64().max(1e-3);
        let saturated = waiting >= self.level;
        let step = if self.slow_start { self.level } else { (self.level / 2).max(1) };
        match self.last_rate {
            _ if self.done_in_window == 0 => {}
            None if saturated => self.set(self.level + step),
            Some(last) if saturated && rate >= last * GROWTH => self.set(self.level + step),
            Some(last) if saturated && rate < last * FALL => {
                self.slow_start = false;
                self.set(self.level - (self.level / 4).max(1))
            }
            Some(_) if saturated => self.slow_start = false,
            _ => {}
        }
        if self.done_in_window > 0 {
            self.last_rate = Some(rate);
        }
        self.restart();
        self.level
    }

    fn set(&mut self, level: usize) {
        self.level = level.clamp(1, self.max);
        remember(&self.db_file, self.level);
    }

    fn restart(&mut self) {
        self.window_began = Instant::now();
        self.done_in_window = 0;
        self.failed_in_window = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_window(a: &mut Adaptive, done: usize, failed: usize, waiting: usize) -> usize {
        for _ in 0..done {
            a.finished(false);
        }
        for _ in 0..failed {
            a.finished(true);
        }
        a.window_began -= MIN_WINDOW;
        a.tick(waiting)
    }

    #[test]
    fn climbs_while_the_rate_grows_and_halves_on_errors() {
        let mut a = Adaptive::new("/test/climb.db", 256, None);
        assert_eq!(a.level(), START);
        let l1 = run_window(&mut a, START, 0, 1000);
        assert!(l1 > START);
        // The same rate again: no growth, the level holds.
        let l2 = run_window(&mut a, START, 0, 1000);
        assert_eq!(l2, l1);
        let l3 = run_window(&mut a, 10 * START, 0, 1000);
        assert!(l3 > l2);
        let l4 = run_window(&mut a, 1, 3, 100);
        assert!(l4 < l3 && l4 >= 1);
        assert_eq!(current("/test/climb.db"), l4);
        for _ in 0..10 {
            run_window(&mut a, 0, 1, 100);
        }
        assert_eq!(a.level(), 1, "errors bring it down to one");
    }

    #[test]
    fn doubles_at_first_then_climbs_by_halves_once_growth_stopped() {
        let s = START;
        let mut a = Adaptive::new("/test/slow-start.db", 16 * s, None);
        assert_eq!(run_window(&mut a, s, 0, 1000), 2 * s);
        assert_eq!(run_window(&mut a, 2 * s, 0, 1000), 4 * s);
        assert_eq!(run_window(&mut a, 4 * s, 0, 1000), 8 * s);
        // Twice the files in twice the time: no growth, the level holds and doubling is over.
        a.window_began -= MIN_WINDOW;
        assert_eq!(run_window(&mut a, 8 * s, 0, 1000), 8 * s);
        assert_eq!(run_window(&mut a, 10 * s, 0, 1000), 12 * s);
    }

    #[test]
    fn does_not_climb_without_work_or_past_the_bound() {
        let mut a = Adaptive::new("/test/idle.db", START + 6, None);
        assert_eq!(run_window(&mut a, START, 0, 1), START, "one waiting transfer does not need more");
        for i in 0..10 {
            run_window(&mut a, 10 * START * (i + 1), 0, 1000);
        }
        assert_eq!(a.level(), START + 6);
    }

    #[test]
    fn a_new_process_starts_where_the_database_left_off() {
        // Nothing in this process yet: the stored level, within the bound.
        assert_eq!(Adaptive::new("/test/stored.db", 32, Some(3)).level(), 3);
        assert_eq!(Adaptive::new("/test/stored-high.db", 8, Some(30)).level(), 8);
        assert_eq!(Adaptive::new("/test/none.db", 64, None).level(), START);
        // Once this process has a level of its own, that one.
        let mut a = Adaptive::new("/test/mine.db", 64, None);
        run_window(&mut a, START, 0, 1000);
        assert_eq!(Adaptive::new("/test/mine.db", 64, Some(2)).level(), 2 * START);
    }
}
