//! The background worker: one thread per database file per process, with its
//! own connection. It runs a sync pass when the database changes (another
//! connection committed: a save, a delete, a watched table), when woken by
//! `attachment_sync()`, when a retry falls due, and every `sync_interval_ms`;
//! otherwise it sleeps (a read of `PRAGMA data_version` every 50 ms).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rusqlite::Connection;

use crate::config::Config;
use crate::connection::{open_connection, DbTarget};
use crate::error::Result;
use crate::queue::now_ms;
use crate::reconcile;
use crate::sync::Syncer;

/// How often the worker looks for commits by other connections (`PRAGMA data_version`,
/// a read of a counter SQLite keeps in shared memory or the file header).
const POLL: Duration = Duration::from_millis(50);
/// After a failed pass (database busy, config broken), wait this long before the next.
const ERROR_PAUSE: Duration = Duration::from_secs(5);
/// `attachment_stop_sync()` waits this long for the worker to finish; a worker still
/// busy after that (a slow SQL statement) ends on its own, its transfers released.
const STOP_WAIT: Duration = Duration::from_millis(800);

struct Handle {
    stop: Arc<AtomicBool>,
    wake: Sender<()>,
    /// Closed (disconnected) when the worker thread ends.
    finished: Receiver<()>,
}

impl Handle {
    fn is_running(&self) -> bool {
        matches!(self.finished.try_recv(), Err(crossbeam_channel::TryRecvError::Empty))
    }
}

/// The workers of this process, by database file, with the process id they were
/// started in: after `fork()` the child has none of its parent's threads.
static WORKERS: LazyLock<Mutex<(u32, HashMap<String, Handle>)>> = LazyLock::new(Default::default);

fn workers() -> std::sync::MutexGuard<'static, (u32, HashMap<String, Handle>)> {
    let mut guard = WORKERS.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if guard.0 != pid {
        // A forked child (or the first use): the threads in the map are not ours. Their
        // handles are leaked, not dropped: a lock inside them may have been held at fork.
        std::mem::forget(std::mem::take(&mut guard.1));
        guard.0 = pid;
    }
    guard
}

/// Starts the worker for `target`'s file unless one runs; then wakes it.
pub fn start(target: &DbTarget) -> Result<()> {
    let db_file = target.path.as_str();
    let mut workers = workers();
    if let Some(h) = workers.1.get(db_file) {
        if h.is_running() && !h.stop.load(Ordering::Relaxed) {
            let _ = h.wake.send(());
            return Ok(());
        }
        workers.1.remove(db_file);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (wake, woken) = crossbeam_channel::unbounded();
    let (finished_tx, finished) = crossbeam_channel::bounded::<()>(0);
    let (target, flag) = (target.clone(), stop.clone());
    std::thread::Builder::new()
        .name("sqlite-attachments".into())
        .spawn(move || {
            let _finished = finished_tx; // dropped when this thread ends, whatever the way
            // A panic must end this thread only, never unwind into the host.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&target, &flag, &woken))).is_err() {
                log::error!("worker for {} stopped after an internal error", target.path);
            }
        })
        .map_err(|e| crate::error::Error::Misuse(format!("cannot start the worker thread: {e}")))?;
    workers.1.insert(db_file.to_string(), Handle { stop, wake, finished });
    Ok(())
}

/// Stops the worker for `db_file`: transfers in flight are cancelled and their rows
/// released. Returns within [`STOP_WAIT`] whatever the network does.
pub fn stop(db_file: &str) -> bool {
    let handle = workers().1.remove(db_file);
    let Some(h) = handle else { return false };
    h.stop.store(true, Ordering::Relaxed);
    let _ = h.wake.send(());
    let _ = h.finished.recv_timeout(STOP_WAIT);
    true
}

/// Wakes the worker for `db_file`, if one runs.
pub fn wake(db_file: &str) {
    if let Some(h) = workers().1.get(db_file) {
        let _ = h.wake.send(());
    }
}

fn data_version(conn: &Connection) -> i64 {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0)).unwrap_or(-1)
}

fn run(target: &DbTarget, stop: &AtomicBool, woken: &Receiver<()>) {
    let db_file = target.path.as_str();
    let conn = match open_connection(target) {
        Ok(c) => c,
        Err(e) => {
            log::error!("worker for {db_file} cannot open the database: {e}");
            return;
        }
    };
    log::info!("worker started for {db_file}");
    let mut syncer: Option<(Config, Arc<Syncer>)> = None;
    let mut seen_version = i64::MIN;
    let mut next_full = Instant::now();
    let mut next_due: Option<i64> = None;
    let mut wake_now = true;
    while !stop.load(Ordering::Relaxed) {
        let version = data_version(&conn);
        let full = Instant::now() >= next_full;
        let due = next_due.is_some_and(|t| t <= now_ms());
        if wake_now || full || due || version != seen_version {
            wake_now = false;
            // Read before the pass, so commits made during it bring another pass.
            // (Our own commits do not change data_version for this connection.)
            let changed = version != seen_version;
            seen_version = version;
            // Only an explicit attachment_sync() re-runs every watch; the worker's periodic
            // pass re-runs those whose tables changed or whose refresh_ms is due.
            log::trace!("worker pass for {db_file} (database changed: {changed}, periodic: {full}, due: {due})");
            let outcome = pass(&conn, db_file, &mut syncer, false, stop);
            if !stop.load(Ordering::Relaxed) {
                crate::progress::record_pass(&conn, &outcome);
            }
            match outcome {
                Ok(Some(s)) => {
                    next_full = Instant::now() + Duration::from_millis(s.config.sync_interval_ms as u64);
                    // The next retry, lease end or watch refresh, whichever comes first.
                    let retry = s.next_due(&conn).unwrap_or(None);
                    let refresh = reconcile::next_refresh_due(&conn).unwrap_or(None);
                    next_due = [retry, refresh].into_iter().flatten().min();
                    // While paused, rows due do not wake it: attachment_resume() does (a commit).
                    if crate::throttle::of(db_file).paused() {
                        next_due = refresh;
                    }
                }
                Ok(None) => {
                    next_full = Instant::now() + ERROR_PAUSE;
                    next_due = None;
                }
                Err(e) => {
                    log::warn!("sync pass for {db_file} failed: {e}");
                    // Nothing is due before the pause ends: a failing pass is not retried in a loop.
                    next_full = Instant::now() + ERROR_PAUSE;
                    next_due = None;
                    seen_version = data_version(&conn);
                }
            }
        }
        match woken.recv_timeout(POLL) {
            Ok(()) => wake_now = true,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    log::info!("worker stopped for {db_file}");
}

/// Runs one pass with the current config, rebuilding the syncer when the config
/// changed. Returns the syncer used, or None before `attachment_init`.
fn pass<'a>(
    conn: &Connection,
    db_file: &str,
    current: &'a mut Option<(Config, Arc<Syncer>)>,
    force: bool,
    stop: &AtomicBool,
) -> Result<Option<&'a Arc<Syncer>>> {
    let config = match Config::load(conn) {
        Ok(c) => c,
        Err(crate::error::Error::NotInitialized) => return Ok(None),
        Err(e) => return Err(e),
    };
    if current.as_ref().map(|(c, _)| c != &config).unwrap_or(true) {
        *current = Some((config.clone(), Arc::new(Syncer::new(db_file, config)?)));
    }
    let Some((_, syncer)) = current.as_ref() else { return Ok(None) };
    let summary = syncer.run_pass(conn, force, &|| stop.load(Ordering::Relaxed))?;
    if summary.uploaded + summary.downloaded + summary.deleted + summary.failed + summary.archived > 0 {
        log::debug!("{db_file}: {}", summary.to_json());
    }
    Ok(Some(syncer))
}
