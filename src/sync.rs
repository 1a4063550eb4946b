//! One sync pass: reconcile, then claim due rows and transfer them, then expire
//! the cache. Runs on a connection of its own, so each state change is a short
//! transaction and none is held across network I/O.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, OptionalExtension};
use serde_json::{json, Value};

use crate::cache;
use crate::concurrency::Adaptive;
use crate::config::Config;
use crate::connection::immediate;
use crate::error::{Error, Result};
use crate::names;
use crate::owner;
pub use crate::queue::table::Job;
use crate::queue::retry::{self, Next, Op};
use crate::queue::table::QueueTable;
use crate::queue::{now_ms, State};
use crate::upload_source::{Refusal, UploadSource};
use crate::reconcile::{self, Reconciled};
use crate::remote::{self, ErrorClass, ErrorKind, Object, RemoteError, RemoteStorage};
use crate::publish::Publisher;
use crate::throttle;
use crate::store::{LocalStore, Staged};
use crate::verify::{self, Verified};

/// A claim not renewed within this long is free for another worker to take.
pub const CLAIM_LEASE: Duration = Duration::from_secs(2 * 60);

/// The lease, shortened by `SQLITE_ATTACHMENTS_TEST_CLAIM_LEASE_MS` in tests only.
pub(crate) fn claim_lease() -> Duration {
    std::env::var("SQLITE_ATTACHMENTS_TEST_CLAIM_LEASE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(CLAIM_LEASE)
}
/// Claims of transfers in flight are renewed (and their progress published) this often.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// After a result arrives, others finishing within this long join its batch.
const GATHER: Duration = Duration::from_millis(2);
/// How often a pass looks at its stop condition while it waits for transfers.
const STOP_CHECK: Duration = Duration::from_millis(50);
/// A pause waits this long for the transfers in flight to hand back what they can resume.
const PAUSE_GRACE: Duration = Duration::from_secs(2);
/// A write waits for the lock this long at a time; between slices the pass can stop.
const BUSY_SLICE: Duration = Duration::from_millis(200);
/// Writes the pass cannot do without (reconcile, verify, expiry) wait at most this long in all.
const BUSY_LIMIT: Duration = Duration::from_secs(60);

/// A transfer whose local file another transfer still holds is tried again after this long.
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// Transfers in flight in this process, by (database file, id): bytes moved so far, and
/// when the transfer started (ms since the epoch).
static PROGRESS: LazyLock<Mutex<HashMap<(String, String), (u64, i64)>>> = LazyLock::new(Default::default);

/// Database files whose schema this process has brought up to date.
static SCHEMA_CHECKED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);

fn schema_checked(db_file: &str) -> bool {
    SCHEMA_CHECKED.lock().map(|s| s.contains(db_file)).unwrap_or(false)
}

fn mark_schema_checked(db_file: &str) {
    if let Ok(mut s) = SCHEMA_CHECKED.lock() {
        s.insert(db_file.to_string());
    }
}

/// Transfers this process keeps in flight for `db_file` now (see [`crate::concurrency`]);
/// other processes read `_attachments_config.concurrency`, which passes keep up to date.
/// For `attachment_progress()`.
#[allow(dead_code)]
pub fn current_concurrency(db_file: &str) -> usize {
    crate::concurrency::current(db_file)
}

/// Copies the stored pause flag and bandwidth cap (which another process may have just
/// changed) into this process's steering of `db_file`.
fn refresh_steering(conn: &Connection, db_file: &str) -> Result<()> {
    let (config, paused): (String, bool) =
        conn.query_row("SELECT config, paused FROM main._attachments_config WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let rate = serde_json::from_str::<Value>(&config).ok().and_then(|c| c["max_bytes_per_second"].as_u64());
    let steer = throttle::of(db_file);
    steer.set_rate(rate);
    steer.set_paused(paused);
    Ok(())
}

/// Stores the concurrency level for other processes to read, when it changed.
fn publish_concurrency(conn: &Connection, level: usize) -> Result<()> {
    conn.execute("UPDATE main._attachments_config SET concurrency = ?1 WHERE id = 1 AND concurrency IS NOT ?1", [level as i64])?;
    Ok(())
}

/// Lets at most `limit` transfer threads move bytes at once (the adaptive level).
struct Gate {
    limit: AtomicUsize,
    active: Mutex<usize>,
    changed: Condvar,
}

impl Gate {
    fn new(limit: usize) -> Gate {
        Gate { limit: AtomicUsize::new(limit), active: Mutex::new(0), changed: Condvar::new() }
    }

    fn set_limit(&self, limit: usize) {
        if self.limit.swap(limit, Ordering::Relaxed) != limit {
            self.changed.notify_all();
        }
    }

    /// Waits for a free place; false when the pass is cancelled meanwhile.
    fn enter(&self, cancel: &AtomicBool) -> bool {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if cancel.load(Ordering::Relaxed) {
                return false;
            }
            if *active < self.limit.load(Ordering::Relaxed) {
                *active += 1;
                return true;
            }
            active = self.changed.wait_timeout(active, STOP_CHECK).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Transfers moving bytes now.
    fn active(&self) -> usize {
        *self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn leave(&self) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        *active = active.saturating_sub(1);
        self.changed.notify_one();
    }
}

pub fn bytes_done(db_file: &str, id: &str) -> Option<u64> {
    transfer_progress(db_file, id).map(|(n, _)| n)
}

/// Bytes moved and start time (ms) of a transfer of `id` in flight in this process.
pub fn transfer_progress(db_file: &str, id: &str) -> Option<(u64, i64)> {
    PROGRESS.lock().ok()?.get(&(db_file.to_string(), id.to_string())).copied()
}

/// Brings the schema of `db_file` up to date once per process (see `schema::ensure`).
pub(crate) fn ensure_schema(conn: &Connection, db_file: &str, table: &str, should_stop: &dyn Fn() -> bool) -> Result<()> {
    if !schema_checked(db_file) {
        write(conn, should_stop, || crate::schema::ensure(conn, table))?;
        mark_schema_checked(db_file);
    }
    Ok(())
}

/// False when verify is due for `db_file` (first pass of the process, then hourly).
fn verified(db_file: &str) -> bool {
    !verify::due(db_file)
}

/// Runs verify on `conn` (own connection, inside `BEGIN IMMEDIATE`) when it is due.
/// Kept for `run_pass`'s call site; new callers use `verify::run_if_due`.
pub fn verify_once(conn: &Connection, db_file: &str, config: &Config, store: &LocalStore) -> Result<Option<Verified>> {
    verify::run_if_due_locked(conn, db_file, config, store)
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub uploaded: usize,
    pub downloaded: usize,
    /// The bytes of the files `uploaded` and `downloaded` counted, for the done counts of
    /// `attachment_progress()` (recorded once per batch of results).
    pub uploaded_bytes: u64,
    pub downloaded_bytes: u64,
    pub deleted: usize,
    pub archived: usize,
    pub expired: usize,
    pub failed: usize,
    pub pending: usize,
    pub reconciled: Reconciled,
    pub verified: Option<Verified>,
    /// The pass was stopped before it finished.
    pub cancelled: bool,
    /// Transfers are paused (`attachment_pause()`): the pass reconciled and moved nothing,
    /// or stopped the transfers in flight when the pause came.
    pub paused: bool,
}

impl Summary {
    /// Adds the transfer counts of `other`.
    fn add(&mut self, other: &Summary) {
        self.uploaded += other.uploaded;
        self.downloaded += other.downloaded;
        self.uploaded_bytes += other.uploaded_bytes;
        self.downloaded_bytes += other.downloaded_bytes;
        self.deleted += other.deleted;
        self.archived += other.archived;
        self.failed += other.failed;
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "uploaded": self.uploaded,
            "downloaded": self.downloaded,
            "deleted": self.deleted,
            "archived": self.archived,
            "expired": self.expired,
            "failed": self.failed,
            "pending": self.pending,
            "queued_downloads": self.reconciled.queued,
            "restored": self.reconciled.restored,
            "rejected": self.reconciled.rejected,
        });
        if let Some(ver) = self.verified {
            v["verified"] = ver.to_json();
        }
        if self.paused {
            v["paused"] = json!(true);
        }
        v
    }
}

/// What a transfer ended in.
pub enum Outcome {
    /// The remote holds the complete file of `size` bytes.
    Uploaded { size: u64 },
    /// Complete and checked under a temp name; published with its batch.
    Downloaded { size: u64, sha256: String, staged: Staged },
    Deleted,
    /// An upload whose local file is gone: nothing can be sent.
    LocalMissing,
    Failed(RemoteError),
}

/// Everything a pass needs, opened once.
pub struct Syncer {
    pub db_file: String,
    pub config: Config,
    pub store: LocalStore,
    pub remote: Box<dyn RemoteStorage>,
}

impl Syncer {
    pub fn new(db_file: &str, config: Config) -> Result<Syncer> {
        // A missing local_dir fails the pass (only attachment_init creates it); the
        // database's own folder is never used (verify would take its files for orphans).
        let store = LocalStore::open(config.local_dir_for(Some(db_file))?)?;
        crate::ownership::check_not_database_dir(store.dir(), Some(db_file))?;
        let remote = remote::open(&config)?;
        Ok(Syncer { db_file: db_file.to_string(), config, store, remote })
    }

    /// One pass; `conn` is a connection of our own (see [`crate::connection::open_connection`]).
    /// This thread claims rows and records results in short transactions; transfers
    /// run on up to `max_concurrency` threads started only when there is work. Claims
    /// of transfers in flight are renewed on a timer. With `force`, reconciliation
    /// compares every row. When `should_stop` turns true (the worker stopping, the host
    /// interrupting `attachment_sync()`), the pass releases the rows in flight and
    /// returns at once, whatever the network does: transfers still blocked in I/O
    /// finish on their own threads and their results are thrown away.
    pub fn run_pass(self: &Arc<Self>, conn: &Connection, force: bool, should_stop: &dyn Fn() -> bool) -> Result<Summary> {
        let mut summary = Summary::default();
        let owner = owner::current(&self.db_file);
        let queue = QueueTable::new(conn, &self.config.table, &owner);
        let _slices = BusySlices::install(conn)?;
        let _stop_scope = crate::cancel::Scope::enter(should_stop);
        // A database last opened by an earlier build gets its missing tables and columns
        // on the first pass of this process, not only at the next attachment_init.
        ensure_schema(conn, &self.db_file, &self.config.table, should_stop)?;
        if !verified(&self.db_file) {
            summary.verified = write(conn, should_stop, || verify_once(conn, &self.db_file, &self.config, &self.store))?;
        }
        let started = now_ms();
        // Write transactions only when there is work: the app's writers are not held up
        // by a worker that wakes on every commit.
        if reconcile::needed(conn, force)? {
            summary.reconciled = write(conn, should_stop, || reconcile::reconcile(conn, &self.config, started, force))?;
        }
        summary.archived += summary.reconciled.archived;
        self.release_dead_claims(conn, &queue)?;
        self.release_stale_own_claims(conn, &queue)?;
        let last_rowid = queue.last_rowid()?;
        let max_threads = self.config.max_concurrency.max(1) as usize;
        let steer = throttle::of(&self.db_file);
        refresh_steering(conn, &self.db_file)?;
        // A process's first pass starts from the level the database last recorded (the
        // link this device was on a moment ago is the best guess for the link it is on).
        let stored: Option<i64> = conn
            // Only an integer counts: a hand edit to text or a blob must not stop every pass.
            .query_row(
                "SELECT CASE WHEN typeof(concurrency) = 'integer' THEN concurrency END FROM main._attachments_config WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let mut adapt = Adaptive::new(&self.db_file, max_threads, stored.filter(|&n| n > 0).map(|n| n as usize));
        let gate = Arc::new(Gate::new(adapt.level()));
        let mut published_level = None;
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<(Job, Outcome)>();
        // Tells this pass's transfers to stop moving bytes; shared with their threads.
        let cancel = Arc::new(AtomicBool::new(false));
        // However the pass ends (an error included), its threads start nothing more.
        let _cancel_on_exit = CancelOnExit(cancel.clone());
        let mut threads = 0usize;
        // Downloaded files are flushed on a thread of their own while the next ones download.
        let mut publisher = Publisher::start(self)?;
        let flushed_rx = publisher.flushed().clone();
        let mut in_flight = InFlight::new(&self.db_file);
        // Results whose recording waits for the write lock (an app holding a long transaction).
        let mut unrecorded: Vec<(Job, Outcome)> = Vec::new();
        let lease = claim_lease();
        // Renewals come at least three times per lease, so one late renewal loses nothing.
        let renew_every = RENEW_EVERY.min(lease / 3);
        let mut next_renewal = Instant::now() + renew_every;
        // A paused database reconciles and moves nothing.
        let mut claiming = !steer.paused();
        summary.paused = steer.paused();
        loop {
            let pausing = steer.paused() && !in_flight.is_empty();
            if should_stop() || pausing {
                cancel.store(true, Ordering::Relaxed);
                if pausing && !should_stop() {
                    summary.paused = true;
                    // Transfers stop at their next read; their results carry what can resume
                    // (an S3 multipart upload's id and stored parts), so they are waited for
                    // a moment. A stop does not wait: it must return at once.
                    let give_up = Instant::now() + PAUSE_GRACE;
                    while gate.active() > 0 && Instant::now() < give_up && !should_stop() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                } else {
                    summary.cancelled = true;
                }
                // What finished is recorded if the lock is free now; the rest is released.
                // Downloads just finished are published first: a row never says SYNCED for a
                // file still under its temp name.
                let fresh = publisher.send(done_rx.try_iter().collect());
                let flushed = publisher.finish();
                let done: Vec<_> = std::mem::take(&mut unrecorded).into_iter().chain(fresh).chain(flushed).collect();
                for (job, _) in &done {
                    in_flight.remove(&job.id);
                }
                let _ = self.record_batch(conn, &queue, done, true, &mut summary);
                let _ = immediate(conn, || in_flight.iter().try_for_each(|id| queue.release(id)));
                in_flight.clear();
                break;
            }
            if steer.paused() {
                claiming = false;
                summary.paused = true;
            }
            gate.set_limit(adapt.tick(in_flight.len()));
            let level = adapt.level();
            // Claimed ahead of the threads, so none idles while results are flushed and
            // recorded. Counted over transfers not yet finished: results waiting for their
            // flush or their transaction hold no thread.
            let capacity = (level * 8).max(32);
            let unfinished = in_flight.len().saturating_sub(publisher.pending() + unrecorded.len());
            if claiming && unfinished <= level * 2 && unrecorded.is_empty() {
                // Claimed and noted as held in one step, so another pass of this process
                // never takes these rows for stale in between (see release_stale_own_claims).
                let claiming_lock = CLAIMING.lock().unwrap_or_else(|e| e.into_inner());
                let jobs = match queue.any_claimable(last_rowid, started)? {
                    true => try_write(conn, || queue.claim(last_rowid, started, capacity - unfinished, lease.as_millis() as i64))?,
                    false => Some(Vec::new()),
                };
                for job in jobs.iter().flatten() {
                    in_flight.insert(job.id.clone());
                }
                drop(claiming_lock);
                match jobs {
                    Some(jobs) if jobs.is_empty() => claiming = false,
                    Some(jobs) => {
                        for job in jobs {
                            let _ = job_tx.send(job);
                        }
                        // Threads only for work that exists, never more than the limit.
                        while threads < max_threads.min(in_flight.len()) {
                            self.spawn_transfer_thread(&job_rx, &done_tx, &cancel, &gate)?;
                            threads += 1;
                        }
                    }
                    None => {} // busy: try again on the next turn
                }
            }
            if in_flight.is_empty() && unrecorded.is_empty() && !claiming {
                break;
            }
            // Wake for a result, a flushed batch, the next renewal, or a look at `should_stop`.
            let wait = next_renewal.saturating_duration_since(Instant::now()).min(STOP_CHECK);
            crossbeam_channel::select! {
                recv(done_rx) -> first => if let Ok(first) = first {
                    let mut batch = vec![first];
                    let running = in_flight.len().saturating_sub(publisher.pending() + unrecorded.len());
                    // Gather what finishes in the next moment too: one transaction then
                    // records several results.
                    let gather_until = Instant::now() + GATHER;
                    while batch.len() < running {
                        match done_rx.recv_deadline(gather_until) {
                            Ok(more) => batch.push(more),
                            Err(_) => break,
                        }
                    }
                    for (_, outcome) in &batch {
                        adapt.finished(matches!(outcome, Outcome::Failed(e)
                            if e.kind == ErrorKind::Transient && matches!(e.class, ErrorClass::Network | ErrorClass::Server)));
                    }
                    unrecorded.extend(publisher.send(batch));
                },
                recv(flushed_rx) -> flushed => match flushed {
                    Ok(flushed) => {
                        publisher.taken(&flushed);
                        unrecorded.extend(flushed);
                    }
                    // The flushing thread is gone (it could not be kept alive): end the pass
                    // instead of waiting for results that will not come.
                    Err(_) => {
                        cancel.store(true, Ordering::Relaxed);
                        let _ = immediate(conn, || in_flight.iter().try_for_each(|id| queue.release(id)));
                        return Err(Error::Misuse("the thread flushing downloaded files stopped".into()));
                    }
                },
                default(wait) => {},
            }
            for flushed in flushed_rx.try_iter() {
                publisher.taken(&flushed);
                unrecorded.extend(flushed);
            }
            if !unrecorded.is_empty() {
                let batch = std::mem::take(&mut unrecorded);
                let ids: Vec<String> = batch.iter().map(|(job, _)| job.id.clone()).collect();
                // A transfer that a pause stopped before this loop saw the pause is released, not failed.
                let stopped = cancel.load(Ordering::Relaxed) || steer.paused();
                match self.record_batch(conn, &queue, batch, stopped, &mut summary) {
                    Ok(None) => ids.iter().for_each(|id| {
                        in_flight.remove(id);
                    }),
                    Ok(Some(kept)) => unrecorded = kept,
                    Err(e) => {
                        cancel.store(true, Ordering::Relaxed);
                        let _ = immediate(conn, || in_flight.iter().try_for_each(|id| queue.release(id)));
                        return Err(e);
                    }
                }
            }
            if Instant::now() >= next_renewal {
                // Renewals wait for nothing: a busy database is tried again next time.
                let level = adapt.level();
                let renewed = try_write(conn, || {
                    self.renew_claims(conn, &queue, in_flight.iter(), lease)?;
                    if published_level != Some(level) {
                        publish_concurrency(conn, level)?;
                    }
                    Ok(())
                });
                if matches!(renewed, Ok(Some(()))) {
                    published_level = Some(level);
                }
                // A pause or a new cap from another process reaches the transfers in flight.
                if let Err(e) = refresh_steering(conn, &self.db_file) {
                    log::debug!("could not read the pause flag and bandwidth cap: {e}");
                }
                next_renewal = Instant::now() + renew_every;
            }
        }
        drop(job_tx);
        if published_level != Some(adapt.level()) && (summary.uploaded + summary.downloaded + summary.deleted + summary.failed) > 0 {
            let _ = try_write(conn, || publish_concurrency(conn, adapt.level()));
        }
        if summary.cancelled {
            return Ok(summary);
        }
        // Uploads just finished that nothing references are archived by this pass, not the next.
        if summary.uploaded > 0 && reconcile::needed(conn, false)? {
            let again = write(conn, should_stop, || reconcile::reconcile(conn, &self.config, now_ms(), false))?;
            summary.archived += again.archived;
            summary.reconciled.queued += again.queued;
            summary.reconciled.restored += again.restored;
            summary.reconciled.rejected += again.rejected;
        }
        // Uses noted by reads since the last pass are written first, in the expiry's own
        // transaction (or one of their own when nothing is to be expired).
        let expiry_needed = cache::expiry_needed(conn, &self.config)?;
        if expiry_needed || cache::uses_pending(&self.db_file) {
            summary.expired = cache::with_uses(&self.db_file, |uses| {
                write(conn, should_stop, || {
                    cache::record_uses(conn, &self.config.table, uses)?;
                    if expiry_needed { cache::expire(conn, &self.config, &self.store) } else { Ok(0) }
                })
            })?;
        }
        summary.pending = queue.pending()?;
        if summary.pending == 0 {
            // The queue may have emptied without a result (a download archived by
            // reconciliation): attachment_progress() starts its done counts again.
            let _ = try_write(conn, || queue.note_if_drained());
        }
        Ok(summary)
    }

    /// Starts one transfer thread. It takes jobs until the pass drops the sender; its
    /// results go to `done`. A result nobody waits for any more (the pass was cancelled)
    /// is thrown away, a downloaded temp file with it.
    fn spawn_transfer_thread(
        self: &Arc<Self>,
        jobs: &Receiver<Job>,
        done: &Sender<(Job, Outcome)>,
        cancel: &Arc<AtomicBool>,
        gate: &Arc<Gate>,
    ) -> Result<()> {
        let (me, jobs, done, cancel, gate) = (self.clone(), jobs.clone(), done.clone(), cancel.clone(), gate.clone());
        std::thread::Builder::new()
            .name("attachments-transfer".into())
            .spawn(move || {
                for job in jobs {
                    if cancel.load(Ordering::Relaxed) || !gate.enter(&cancel) {
                        break;
                    }
                    let outcome = me.perform(&job, &cancel);
                    // Left after the result is sent: a pass that waits for the gate to empty
                    // then finds every result in the channel.
                    let sent = done.send((job, outcome));
                    gate.leave();
                    if let Err(crossbeam_channel::SendError((_, outcome))) = sent {
                        if let Outcome::Downloaded { staged, .. } = outcome {
                            staged.discard();
                        }
                        break;
                    }
                }
            })
            .map(|_| ())
            .map_err(|e| Error::Misuse(format!("cannot start a transfer thread: {e}")))
    }

    /// Records a batch of results in one transaction. `Ok(Some(batch))` hands the batch
    /// back untouched when the database is busy, to be tried again.
    pub(crate) fn record_batch(
        &self,
        conn: &Connection,
        queue: &QueueTable,
        batch: Vec<(Job, Outcome)>,
        cancelled: bool,
        summary: &mut Summary,
    ) -> Result<Option<Vec<(Job, Outcome)>>> {
        if batch.is_empty() {
            return Ok(None);
        }
        let mut counted = Summary::default();
        let mut remove = Vec::new();
        let recorded = try_write(conn, || {
            (counted, remove) = (Summary::default(), Vec::new());
            for (job, outcome) in &batch {
                remove.extend(self.record(queue, job, outcome, cancelled, &mut counted)?);
                // An upload now SYNCED may be referenced by nothing: reconciliation left it
                // alone while it was queued, so it is compared again at the end of the pass.
                if matches!(outcome, Outcome::Uploaded { .. }) && !cancelled {
                    reconcile::note_uploaded(conn, &job.id)?;
                }
            }
            queue.count_done(&counted)?;
            queue.note_if_drained()?;
            crate::progress::sample(conn, &self.config.table, now_ms())
        })?;
        if recorded.is_none() {
            return Ok(Some(batch));
        }
        summary.add(&counted);
        for file in remove {
            if let Err(e) = self.store.remove(&file) {
                log::warn!("could not remove {file}: {e}");
            }
        }
        Ok(None)
    }

    /// Makes the batch's downloaded files durable and visible in one step (see
    /// [`LocalStore::publish_refs`]) before any of them is recorded as SYNCED.
    pub(crate) fn publish_downloads(&self, batch: Vec<(Job, Outcome)>) -> Vec<(Job, Outcome)> {
        let staged: Vec<&Staged> = batch
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::Downloaded { staged, .. } => Some(staged),
                _ => None,
            })
            .collect();
        if staged.is_empty() {
            return batch;
        }
        let Err(e) = self.store.publish_refs(&staged) else { return batch };
        let message = e.to_string();
        batch
            .into_iter()
            .map(|(job, o)| match o {
                Outcome::Downloaded { .. } => (job, Outcome::Failed(RemoteError::local(message.clone()))),
                other => (job, other),
            })
            .collect()
    }

    /// Extends the claims of transfers in flight and publishes their progress, so
    /// other processes neither take them over nor see them stall.
    pub(crate) fn renew_claims<'a>(&self, conn: &Connection, queue: &QueueTable, ids: impl Iterator<Item = &'a String>, lease: Duration) -> Result<()> {
        let now = now_ms();
        let until = now + lease.as_millis() as i64;
        for id in ids {
            let progress = transfer_progress(&self.db_file, id);
            queue.renew(id, until, progress.map(|(n, _)| n as i64), progress.map(|(_, at)| at))?;
        }
        crate::progress::sample(conn, &self.config.table, now)
    }

    /// The earliest time a queued row becomes claimable by this process (ms), if any.
    pub fn next_due(&self, conn: &Connection) -> Result<Option<i64>> {
        let owner = owner::current(&self.db_file);
        QueueTable::new(conn, &self.config.table, &owner).next_due()
    }

    /// Frees claims whose process is gone (a crash or SIGKILL), without waiting for the lease.
    fn release_dead_claims(&self, conn: &Connection, queue: &QueueTable) -> Result<()> {
        for other in queue.claim_owners()? {
            if owner::is_dead(&self.db_file, &other) {
                log::info!("releasing the claims of {other}, a process that is gone");
                try_write(conn, || queue.release_owner(&other).map(|_| ()))?;
            }
        }
        Ok(())
    }

    /// Frees this process's claims that no pass of it holds any more: left by a pass that
    /// failed (a full disk, a broken config) before it could record or release them.
    /// Without this they would wait for their lease, since a pass never takes rows its
    /// own process holds.
    fn release_stale_own_claims(&self, conn: &Connection, queue: &QueueTable) -> Result<()> {
        let _claiming = CLAIMING.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<String> = queue.held_by_owner()?.into_iter().filter(|id| !InFlight::is_held(&self.db_file, id)).collect();
        if !stale.is_empty() {
            try_write(conn, || stale.iter().try_for_each(|id| queue.release(id)))?;
        }
        Ok(())
    }

    /// Moves the bytes of one job. No transaction is open here.
    pub fn perform(&self, job: &Job, stop: &AtomicBool) -> Outcome {
        // A read waiting for the server looks at `stop` too (the progress callback below
        // only runs when bytes arrive).
        let _stop_reads = crate::remote::stoppable::Scope::enter(stop);
        let key = (self.db_file.clone(), job.id.clone());
        let started = now_ms();
        // Noted before the first byte: a transfer started is in flight, not waiting.
        if let Ok(mut p) = PROGRESS.lock() {
            p.insert(key.clone(), (0, started));
        }
        // Bytes an interrupted download already held (set when the remote sends the rest).
        let base = AtomicU64::new(0);
        let meter = throttle::Meter::new(throttle::of(&self.db_file));
        let stopping = || stop.load(Ordering::Relaxed);
        let progress = |n: u64| {
            if stopping() {
                return Err(std::io::Error::other("cancelled: the worker is stopping"));
            }
            if let Ok(mut p) = PROGRESS.lock() {
                p.insert(key.clone(), (base.load(Ordering::Relaxed) + n, started));
            }
            // Waits here (for the bandwidth cap) are outside the remote's rate watch.
            meter.report(n, &stopping)
        };
        let obj = Object {
            id: &job.id,
            filename: &job.filename,
            media_type: &job.media_type,
            sha256: job.sha256.as_deref(),
            resume: job.resume.as_deref(),
        };
        let result = match names::check_filename(&job.filename) {
            Err(e) => Err(RemoteError::new(ErrorKind::Permanent, e.to_string())),
            Ok(_) => match job.state {
                State::QueuedUpload => self.upload(job, &obj, &progress),
                State::QueuedDownload => self.download(&obj, &progress, &base),
                State::QueuedDelete => self.remote.delete(&obj).map(|()| Outcome::Deleted),
                // Never claimed (see QueueTable::claim); nothing to move, and never a delete.
                State::Synced | State::Archived => Err(RemoteError::new(ErrorKind::Permanent, "not a queued row")),
            },
        };
        if let Ok(mut p) = PROGRESS.lock() {
            p.remove(&key);
        }
        result.unwrap_or_else(Outcome::Failed)
    }

    /// Uploads the file the save wrote, or nothing: it is opened without following a symlink,
    /// its bytes must hash to the SHA-256 recorded at save, and it must not change meanwhile.
    /// Only "not found" in a folder that is there counts as missing.
    fn upload(&self, job: &Job, obj: &Object, progress: remote::Progress) -> Result<Outcome, RemoteError> {
        let name = job.local_uri.as_deref().unwrap_or(&job.filename);
        let checked = match self.store.open_checked(name, job.sha256.as_deref()) {
            Ok(Some(checked)) => checked,
            Ok(None) => return Ok(Outcome::LocalMissing),
            Err(e) => return Err(crate::store::upload_refusal(e)),
        };
        let (file, len, watch, expected) = checked.split();
        let source = match expected {
            Some(want) => UploadSource::checking(file, len, &want, name),
            None => UploadSource::unchecked(file, len),
        };
        let sent = self.remote.upload(obj, &source, progress);
        // A file that did not check out was never sent whole; parts stored of it (S3) are
        // dropped, never resumed.
        let refusal = |why: Refusal| match why {
            Refusal::Changed(why) => crate::store::upload_refusal(Error::Argument(why)),
            Refusal::Unreadable(why) => RemoteError::local(why),
        };
        if let Some(why) = source.refused() {
            if let Err(e) = &sent {
                if let Some(resume) = e.resume.as_deref() {
                    self.remote.abandon(&Object { resume: Some(resume), ..obj.clone() });
                }
            }
            return Err(refusal(why));
        }
        sent?;
        // Sent whole, so checked whole (the last bytes waited for it); asked again in case a
        // remote sent the file without reading it to its end.
        source.verdict().map_err(refusal)?;
        match watch.unchanged() {
            Ok(true) => Ok(Outcome::Uploaded { size: len }),
            Ok(false) => Err(crate::store::upload_refusal(Error::Argument(format!(
                "local file {name} changed while it was uploaded; the upload does not count"
            )))),
            Err(e) => Err(RemoteError::new(ErrorKind::Transient, format!("local: {name}: {e}"))),
        }
    }

    /// Downloads into a staged file. A SHA-256 the row already has (an upload from here, or
    /// an earlier download) is what the bytes must hash to; a failing local write (a full
    /// disk) is class `local`, not the network's.
    fn download(&self, obj: &Object, progress: remote::Progress, base: &AtomicU64) -> Result<Outcome, RemoteError> {
        let written = self.store.stage_resumable(obj.filename, |out| {
            let mut out = LocalWriter { inner: out, failed: None, base };
            let mut fetched = match self.remote.download(obj, &mut out, progress) {
                Ok(fetched) => fetched,
                Err(e) => match out.failed {
                    Some(local) => return Err(RemoteError::local(format!("writing the download to the local folder: {local}")).into()),
                    None => return Err(e.into()),
                },
            };
            if let Some(known) = obj.sha256 {
                match fetched.sha256.as_deref() {
                    Some(claimed) if !claimed.eq_ignore_ascii_case(known) => {
                        return Err(RemoteError::integrity(format!(
                            "checksum mismatch: the row has sha256 {known}, the remote claims {claimed}"
                        ))
                        .into())
                    }
                    // The store checks the bytes against it and discards the staged file if they differ.
                    _ => fetched.sha256 = Some(known.to_owned()),
                }
            }
            Ok(fetched)
        });
        match written {
            Ok((staged, w)) => Ok(Outcome::Downloaded { size: w.size, sha256: w.sha256, staged }),
            Err(Error::Remote(e)) => Err(e),
            Err(e) => Err(RemoteError::local(e.to_string())),
        }
    }

    /// Records a job's outcome; the caller holds the transaction. A failure while
    /// `cancelled` is the worker stopping: the row is released without counting an attempt.
    /// Records a job's outcome through the queue's guarded transitions; the caller holds
    /// the transaction. Returns a local file to remove once the transaction commits (a
    /// download or a delete whose row is gone). A failure of a cancelled transfer is the
    /// pass stopping: the row is released without counting an attempt.
    pub(crate) fn record(&self, queue: &QueueTable, job: &Job, outcome: &Outcome, cancelled: bool, summary: &mut Summary) -> Result<Option<String>> {
        let mut remove = None;
        match outcome {
            // Stopped or paused: released without an attempt, keeping what a multipart upload stored.
            Outcome::Failed(e) if cancelled => queue.release_keeping(&job.id, e.resume.as_deref())?,
            // Another transfer of this file (one a stopped pass left running) still holds it:
            // tried again soon, without counting an attempt.
            Outcome::Failed(e) if e.is_busy() => {
                log::info!("{} is busy: {e}; tried again in {} ms", job.id, BUSY_RETRY.as_millis());
                queue.failed(job, job.attempts, now_ms() + BUSY_RETRY.as_millis() as i64, &e.to_string(), e.resume.as_deref())?;
            }
            Outcome::Uploaded { size } => {
                if queue.uploaded(&job.id)? {
                    summary.uploaded += 1;
                    summary.uploaded_bytes += size;
                }
            }
            Outcome::Downloaded { size, sha256, .. } => {
                if queue.downloaded(&job.id, *size, sha256)? {
                    summary.downloaded += 1;
                    summary.downloaded_bytes += size;
                } else if !queue.holds_local_copy(&job.id)? {
                    // The row went away or changed while we downloaded: the file is nobody's.
                    remove = Some(job.filename.clone());
                }
            }
            Outcome::Deleted => {
                if queue.deleted(&job.id)? {
                    remove = Some(job.local_uri.clone().unwrap_or_else(|| job.filename.clone()));
                    summary.deleted += 1;
                }
            }
            Outcome::LocalMissing => {
                if queue.upload_source_missing(&job.id)? {
                    summary.failed += 1;
                    summary.archived += 1;
                }
            }
            Outcome::Failed(err) => {
                let op = match job.state {
                    State::QueuedUpload => Op::Upload,
                    State::QueuedDownload => Op::Download,
                    _ => Op::Delete,
                };
                let attempts = job.attempts + 1;
                log::info!("{} {} failed (attempt {attempts}): {err}", op_name(op), job.id);
                let message = err.to_string();
                match retry::after_failure(op, err, attempts, self.config.max_attempts, now_ms(), fastrand::f64()) {
                    Next::RetryAt(at) => {
                        queue.failed(job, attempts, at, &message, err.resume.as_deref())?;
                    }
                    Next::Archive => {
                        if queue.give_up_download(&job.id, attempts, &message)? {
                            summary.archived += 1;
                        }
                    }
                }
                summary.failed += 1;
            }
        }
        Ok(remove)
    }
}

/// Remembers a failing write, so a download that fails because the local disk did is
/// told from one the remote broke (backends only see an `io::Error` from the copy).
struct LocalWriter<'a> {
    inner: &'a mut dyn remote::Sink,
    failed: Option<String>,
    /// Where the bytes this answer sends start in the file, for `bytes_done`.
    base: &'a AtomicU64,
}

impl remote::Sink for LocalWriter<'_> {
    fn held(&self) -> Option<remote::Held> {
        self.inner.held()
    }

    fn begin(&mut self, offset: u64, validator: &remote::Validator) -> std::io::Result<()> {
        self.base.store(offset, Ordering::Relaxed);
        self.inner.begin(offset, validator).inspect_err(|e| self.failed = Some(e.to_string()))
    }
}

impl std::io::Write for LocalWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf).inspect_err(|e| self.failed = Some(e.to_string()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().inspect_err(|e| self.failed = Some(e.to_string()))
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Upload => "upload",
        Op::Download => "download",
        Op::Delete => "delete",
    }
}

/// Rows claimed by passes of this process and not yet recorded or released, by database
/// file: what this process's claims in the table should be.
static HELD: LazyLock<Mutex<HashSet<(String, String)>>> = LazyLock::new(Default::default);

/// Held while a pass claims rows and notes them in [`HELD`], and while stale claims are
/// looked for: the two never interleave within the process.
pub(crate) static CLAIMING: LazyLock<Mutex<()>> = LazyLock::new(Default::default);

/// The rows one pass has in flight; they leave [`HELD`] when recorded, released, or
/// when the pass ends in any way.
pub(crate) struct InFlight {
    db_file: String,
    ids: HashSet<String>,
}

impl InFlight {
    pub(crate) fn new(db_file: &str) -> InFlight {
        InFlight { db_file: db_file.to_string(), ids: HashSet::new() }
    }

    pub(crate) fn is_held(db_file: &str, id: &str) -> bool {
        HELD.lock().map(|h| h.contains(&(db_file.to_string(), id.to_string()))).unwrap_or(true)
    }

    pub(crate) fn insert(&mut self, id: String) {
        if let Ok(mut h) = HELD.lock() {
            h.insert((self.db_file.clone(), id.clone()));
        }
        self.ids.insert(id);
    }

    pub(crate) fn remove(&mut self, id: &str) {
        if let Ok(mut h) = HELD.lock() {
            h.remove(&(self.db_file.clone(), id.to_string()));
        }
        self.ids.remove(id);
    }

    fn iter(&self) -> impl Iterator<Item = &String> {
        self.ids.iter()
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Forgets every row (they were released).
    fn clear(&mut self) {
        let ids: Vec<String> = self.ids.iter().cloned().collect();
        for id in ids {
            self.remove(&id);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut h) = HELD.lock() {
            for id in &self.ids {
                h.remove(&(self.db_file.clone(), id.clone()));
            }
        }
    }
}

/// Sets the flag when dropped.
struct CancelOnExit(Arc<AtomicBool>);

impl Drop for CancelOnExit {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sets the connection's busy wait to one slice for the life of a pass, and back after.
struct BusySlices<'c>(&'c Connection);

impl<'c> BusySlices<'c> {
    fn install(conn: &'c Connection) -> Result<BusySlices<'c>> {
        conn.busy_timeout(BUSY_SLICE)?;
        Ok(BusySlices(conn))
    }
}

impl Drop for BusySlices<'_> {
    fn drop(&mut self) {
        let _ = self.0.busy_timeout(crate::connection::BUSY_TIMEOUT);
    }
}

/// One write transaction, or `None` when the database stayed busy for a slice.
pub(crate) fn try_write<T>(conn: &Connection, f: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
    match immediate(conn, f) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_busy() => Ok(None),
        Err(e) => Err(e),
    }
}

/// One write transaction the pass needs, retried slice by slice while the database is
/// busy (up to [`BUSY_LIMIT`]), giving up at once when the pass must stop.
pub(crate) fn write<T>(conn: &Connection, should_stop: &dyn Fn() -> bool, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let give_up = Instant::now() + BUSY_LIMIT;
    crate::connection::retry_busy(
        || immediate(conn, &mut f),
        |busy| if Instant::now() < give_up && !should_stop() { Ok(()) } else { Err(busy) },
    )
}
