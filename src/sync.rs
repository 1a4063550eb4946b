//! One sync pass: reconcile, then claim due rows and transfer them, then expire
//! the cache. Runs on a connection of its own, so each state change is a short
//! transaction and none is held across network I/O.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection};
use serde_json::{json, Value};

use crate::config::Config;
use crate::connection::immediate;
use crate::error::{Error, Result};
use crate::names;
use crate::queue::retry::{self, Next, Op};
use crate::queue::{now_ms, State};
use crate::reconcile::{self, Reconciled};
use crate::remote::{self, ErrorKind, Object, RemoteError, RemoteStorage};
use crate::schema::quote_ident;
use crate::store::{LocalStore, Staged};
use crate::verify::{self, Verified};

/// A claim not renewed within this long is free for another worker to take.
pub const CLAIM_LEASE: Duration = Duration::from_secs(2 * 60);
/// Claims of transfers in flight are renewed (and their progress published) this often.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// After a result arrives, others finishing within this long join its batch.
const GATHER: Duration = Duration::from_millis(10);

/// Identifies this process in `claimed_by`: `pid:<pid>:<random>`.
pub static OWNER: LazyLock<String> =
    LazyLock::new(|| format!("pid:{}:{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]));

/// Bytes moved so far by transfers in flight in this process, by (database file, id).
static PROGRESS: LazyLock<Mutex<HashMap<(String, String), u64>>> = LazyLock::new(Default::default);

/// Database files verified by this process (verify runs once per process and file).
static VERIFIED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);

pub fn bytes_done(db_file: &str, id: &str) -> Option<u64> {
    PROGRESS.lock().ok()?.get(&(db_file.to_string(), id.to_string())).copied()
}

fn verified(db_file: &str) -> bool {
    VERIFIED.lock().map(|v| v.contains(db_file)).unwrap_or(false)
}

/// Runs verify on `conn` unless this process already did for `db_file`.
pub fn verify_once(conn: &Connection, db_file: &str, config: &Config, store: &LocalStore) -> Result<Option<Verified>> {
    if verified(db_file) {
        return Ok(None);
    }
    let v = verify::verify(conn, config, store)?;
    if let Ok(mut set) = VERIFIED.lock() {
        set.insert(db_file.to_string());
    }
    Ok(Some(v))
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub uploaded: usize,
    pub downloaded: usize,
    pub deleted: usize,
    pub archived: usize,
    pub expired: usize,
    pub failed: usize,
    pub pending: usize,
    pub reconciled: Reconciled,
    pub verified: Option<Verified>,
}

impl Summary {
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
        v
    }
}

/// A claimed row.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub filename: String,
    pub local_uri: Option<String>,
    pub state: State,
    pub media_type: String,
    pub sha256: Option<String>,
    pub attempts: i64,
    pub resume: Option<String>,
}

/// What a transfer ended in.
pub enum Outcome {
    Uploaded,
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
        let store = LocalStore::open(config.local_dir_for(Some(db_file))?)?;
        let remote = remote::open(&config)?;
        Ok(Syncer { db_file: db_file.to_string(), config, store, remote })
    }

    fn table(&self) -> String {
        quote_ident(&self.config.table)
    }

    /// One pass; `conn` is a connection of our own (see [`open_connection`]).
    /// Transfers run on `max_concurrency` threads; this thread claims rows, records
    /// results in short transactions, and renews the claims of transfers in flight.
    /// With `force`, reconciliation runs even when no watch changed. Setting `stop`
    /// cancels transfers in flight; their rows are released untouched.
    pub fn run_pass(&self, conn: &Connection, force: bool, stop: &AtomicBool) -> Result<Summary> {
        let mut summary = Summary::default();
        if !verified(&self.db_file) {
            summary.verified = immediate(conn, || verify_once(conn, &self.db_file, &self.config, &self.store))?;
        }
        let started = now_ms();
        // Write transactions only when there is work: the app's writers are not held up
        // by a worker that wakes on every commit.
        if reconcile::needed(conn, force)? {
            summary.reconciled = immediate(conn, || reconcile::reconcile(conn, &self.config, started, force))?;
        }
        summary.archived += summary.reconciled.archived;
        self.release_dead_claims(conn)?;
        let threads = self.config.max_concurrency.max(1) as usize;
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<(Job, Outcome)>();
        // Set when this thread fails: the transfer threads then leave the jobs still
        // queued alone (their claims lapse) instead of moving bytes nobody will record.
        let abandoned = AtomicBool::new(false);
        std::thread::scope(|scope| -> Result<()> {
            for _ in 0..threads {
                let (jobs, done, abandoned) = (job_rx.clone(), done_tx.clone(), &abandoned);
                scope.spawn(move || {
                    for job in jobs {
                        if abandoned.load(Ordering::Relaxed) {
                            break;
                        }
                        let outcome = self.perform(&job, stop);
                        if done.send((job, outcome)).is_err() {
                            break;
                        }
                    }
                });
            }
            let mut in_flight: HashSet<String> = HashSet::new();
            // Claimed ahead of the threads, so none idles while results are recorded.
            let capacity = threads * 4;
            let result = (|| {
                loop {
                    if !stop.load(Ordering::Relaxed) && in_flight.len() <= threads {
                        for job in self.claim(conn, started, capacity - in_flight.len())? {
                            in_flight.insert(job.id.clone());
                            let _ = job_tx.send(job);
                        }
                    }
                    if in_flight.is_empty() {
                        return Ok(());
                    }
                    match done_rx.recv_timeout(RENEW_EVERY) {
                        Ok(first) => {
                            // Record every result that is ready in one transaction.
                            let mut batch = vec![first];
                            // Gather what finishes in the next moment too: one transaction (and
                            // one flush of downloaded files) then covers several results.
                            let gather_until = std::time::Instant::now() + GATHER;
                            while batch.len() < in_flight.len() {
                                match done_rx.recv_deadline(gather_until) {
                                    Ok(more) => batch.push(more),
                                    Err(_) => break,
                                }
                            }
                            for (job, _) in &batch {
                                in_flight.remove(&job.id);
                            }
                            let cancelled = stop.load(Ordering::Relaxed);
                            let batch = self.publish_downloads(batch);
                            immediate(conn, || {
                                for (job, outcome) in batch {
                                    self.record(conn, &job, outcome, cancelled, &mut summary)?;
                                }
                                Ok(())
                            })?;
                        }
                        Err(_) => self.renew_claims(conn, in_flight.iter())?,
                    }
                }
            })();
            if result.is_err() {
                abandoned.store(true, Ordering::Relaxed);
            }
            drop(job_tx);
            result
        })?;
        if reconcile::expiry_needed(conn, &self.config)? {
            summary.expired = immediate(conn, || reconcile::expire_cache(conn, &self.config, &self.store))?;
        }
        summary.pending = conn.query_row(
            &format!("SELECT count(*) FROM main.{} WHERE state IN (0, 1, 2)", self.table()),
            [],
            |r| r.get::<_, i64>(0),
        )? as usize;
        Ok(summary)
    }

    /// Makes the batch's downloaded files durable and visible in one step (see
    /// [`LocalStore::publish_refs`]) before any of them is recorded as SYNCED.
    fn publish_downloads(&self, batch: Vec<(Job, Outcome)>) -> Vec<(Job, Outcome)> {
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
    fn renew_claims<'a>(&self, conn: &Connection, ids: impl Iterator<Item = &'a String>) -> Result<()> {
        let t = self.table();
        let until = now_ms() + CLAIM_LEASE.as_millis() as i64;
        immediate(conn, || {
            let mut renew = conn.prepare(&format!(
                "UPDATE main.{t} SET claimed_until = ?2, bytes_done = ?3 WHERE id = ?1 AND claimed_by = ?4"
            ))?;
            for id in ids {
                let done = bytes_done(&self.db_file, id).map(|n| n as i64);
                renew.execute(params![id, until, done, *OWNER])?;
            }
            Ok(())
        })
    }

    /// The earliest time a queued row becomes due (ms), if any is waiting.
    pub fn next_due(&self, conn: &Connection) -> Result<Option<i64>> {
        Ok(conn.query_row(
            &format!("SELECT min(next_attempt_at) FROM main.{} WHERE state IN (0, 1, 2)", self.table()),
            [],
            |r| r.get(0),
        )?)
    }

    /// Claims up to `limit` rows due at `due_by` that no live worker holds.
    pub fn claim(&self, conn: &Connection, due_by: i64, limit: usize) -> Result<Vec<Job>> {
        let t = self.table();
        let claimable = "state IN (0, 1, 2) AND next_attempt_at <= ?1 AND (claimed_until IS NULL OR claimed_until < ?2)";
        let any: bool = conn.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM main.{t} WHERE {claimable})"),
            params![due_by, now_ms()],
            |r| r.get(0),
        )?;
        if !any {
            return Ok(Vec::new());
        }
        immediate(conn, || {
            let now = now_ms();
            // Uploads first (their files exist nowhere else), then downloads, then deletes.
            // language=SQLite
            let jobs: Vec<Job> = conn
                .prepare(&format!(
                    "SELECT id, filename, local_uri, state, media_type, sha256, attempts, upload_resume FROM main.{t}
                     WHERE {claimable} ORDER BY state, timestamp LIMIT ?3"
                ))?
                .query_map(params![due_by, now, limit as i64], |r| {
                    Ok(Job {
                        id: r.get(0)?,
                        filename: r.get(1)?,
                        local_uri: r.get(2)?,
                        state: State::from_code(r.get(3)?).unwrap_or(State::Archived),
                        media_type: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                        sha256: r.get(5)?,
                        attempts: r.get(6)?,
                        resume: r.get(7)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut mark = conn.prepare(&format!("UPDATE main.{t} SET claimed_by = ?2, claimed_until = ?3 WHERE id = ?1"))?;
            for job in &jobs {
                mark.execute(params![job.id, *OWNER, now + CLAIM_LEASE.as_millis() as i64])?;
            }
            Ok(jobs)
        })
    }

    /// Frees claims whose process is gone (a crash or SIGKILL), without waiting for the lease.
    fn release_dead_claims(&self, conn: &Connection) -> Result<()> {
        if !Path::new("/proc/self").exists() {
            return Ok(());
        }
        let t = self.table();
        let owners: Vec<String> = conn
            .prepare(&format!("SELECT DISTINCT claimed_by FROM main.{t} WHERE claimed_by IS NOT NULL"))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for owner in owners {
            let pid = owner.strip_prefix("pid:").and_then(|rest| rest.split(':').next());
            let alive = pid.map(|p| Path::new("/proc").join(p).exists()).unwrap_or(true);
            if !alive {
                conn.execute(
                    &format!("UPDATE main.{t} SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = ?1"),
                    [&owner],
                )?;
            }
        }
        Ok(())
    }

    /// Moves the bytes of one job. No transaction is open here.
    pub fn perform(&self, job: &Job, stop: &AtomicBool) -> Outcome {
        let key = (self.db_file.clone(), job.id.clone());
        let progress = |n: u64| {
            if stop.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("cancelled: the worker is stopping"));
            }
            if let Ok(mut p) = PROGRESS.lock() {
                p.insert(key.clone(), n);
            }
            Ok(())
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
                State::QueuedDownload => self.download(&obj, &progress),
                State::QueuedDelete => self.remote.delete(&obj).map(|()| Outcome::Deleted),
                State::Synced | State::Archived => Ok(Outcome::Deleted),
            },
        };
        if let Ok(mut p) = PROGRESS.lock() {
            p.remove(&key);
        }
        result.unwrap_or_else(Outcome::Failed)
    }

    fn upload(&self, job: &Job, obj: &Object, progress: remote::Progress) -> Result<Outcome, RemoteError> {
        let name = job.local_uri.as_deref().unwrap_or(&job.filename);
        let Some(path) = self.store.existing(name) else {
            return Ok(Outcome::LocalMissing);
        };
        let file = std::fs::File::open(&path).map_err(|e| RemoteError::local_io("opening the local file", &e))?;
        let len = file.metadata().map_err(|e| RemoteError::local_io("reading the local file", &e))?.len();
        self.remote.upload(obj, file, len, progress)?;
        Ok(Outcome::Uploaded)
    }

    fn download(&self, obj: &Object, progress: remote::Progress) -> Result<Outcome, RemoteError> {
        let written = self.store.stage(obj.filename, |out| {
            let fetched = self.remote.download(obj, out, progress)?;
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
    fn record(&self, conn: &Connection, job: &Job, outcome: Outcome, cancelled: bool, summary: &mut Summary) -> Result<()> {
        let t = self.table();
        let now = now_ms();
        let clear = "claimed_by = NULL, claimed_until = NULL, bytes_done = NULL";
        let done = "attempts = 0, next_attempt_at = 0, last_error = NULL";
        {
            match outcome {
                Outcome::Failed(_) if cancelled => {}
                Outcome::Uploaded => {
                    conn.execute(
                        &format!(
                            "UPDATE main.{t} SET state = CASE WHEN state = 0 THEN 3 ELSE state END,
                                 has_synced = 1, timestamp = ?2, upload_resume = NULL, {done}, {clear} WHERE id = ?1"
                        ),
                        params![job.id, now],
                    )?;
                    summary.uploaded += 1;
                }
                Outcome::Downloaded { size, ref sha256, .. } => {
                    let n = conn.execute(
                        &format!(
                            "UPDATE main.{t} SET state = CASE WHEN state = 1 THEN 3 ELSE state END,
                                 local_uri = filename, size = ?2, sha256 = ?3, has_synced = 1, timestamp = ?4,
                                 {done}, {clear} WHERE id = ?1"
                        ),
                        params![job.id, size as i64, sha256, now],
                    )?;
                    if n == 0 {
                        // The row went away while we downloaded; its file has no owner.
                        self.store.remove(&job.filename)?;
                    }
                    summary.downloaded += 1;
                }
                Outcome::Deleted => {
                    self.store.remove(job.local_uri.as_deref().unwrap_or(&job.filename))?;
                    conn.execute(&format!("DELETE FROM main.{t} WHERE id = ?1 AND state = 2"), [&job.id])?;
                    summary.deleted += 1;
                }
                Outcome::LocalMissing => {
                    conn.execute(
                        &format!(
                            "UPDATE main.{t} SET state = 4, local_uri = NULL, timestamp = ?2,
                                 last_error = 'local: local file missing: nothing to upload', {clear}
                             WHERE id = ?1 AND state = 0"
                        ),
                        params![job.id, now],
                    )?;
                    summary.failed += 1;
                    summary.archived += 1;
                }
                Outcome::Failed(ref err) => {
                    let op = match job.state {
                        State::QueuedUpload => Op::Upload,
                        State::QueuedDownload => Op::Download,
                        _ => Op::Delete,
                    };
                    let attempts = job.attempts + 1;
                    log::info!("{} {} failed (attempt {attempts}): {err}", op_name(op), job.id);
                    let message = err.to_string();
                    match retry::after_failure(op, err, attempts, self.config.max_attempts, now, fastrand::f64()) {
                        Next::RetryAt(at) => conn.execute(
                            &format!(
                                "UPDATE main.{t} SET attempts = ?2, next_attempt_at = ?3, last_error = ?4,
                                     upload_resume = ?6, {clear}
                                 WHERE id = ?1 AND state = ?5"
                            ),
                            params![job.id, attempts, at, message, job.state as i64, err.resume],
                        )?,
                        Next::Archive => {
                            summary.archived += 1;
                            conn.execute(
                                &format!(
                                    "UPDATE main.{t} SET state = 4, attempts = ?2, last_error = ?3, timestamp = ?4, {clear}
                                     WHERE id = ?1 AND state = 1"
                                ),
                                params![job.id, attempts, message, now],
                            )?
                        }
                    };
                    summary.failed += 1;
                }
            }
            // Whatever happened above, the claim is ours to drop.
            conn.execute(&format!("UPDATE main.{t} SET {clear} WHERE id = ?1 AND claimed_by = ?2"), params![job.id, *OWNER])?;
            Ok(())
        }
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Upload => "upload",
        Op::Download => "download",
        Op::Delete => "delete",
    }
}
