//! `attachment_fetch(id [, timeout_ms])`: this attachment now, ahead of the queue.
//!
//! Runs on the extension's own connection and the calling thread (plus one transfer
//! thread), so it is one transfer beyond `max_concurrency` and works with or without the
//! worker. The row is claimed like any transfer (the process's claim identity, noted in
//! the pass's `HELD` set so no pass of this process takes it for stale): two fetches of one
//! id, in one process or several, make one transfer, the later one waiting for the
//! earlier (or for a worker's transfer of it) to finish. No transaction is open while
//! bytes move.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension};

use crate::config::Config;
use crate::connection::{immediate, open_connection, DbTarget};
use crate::error::{Error, Result};
use crate::names;
use crate::owner;
use crate::queue::table::{Job, QueueTable};
use crate::queue::{now_ms, State};
use crate::reconcile;
use crate::schema::quote_ident;
use crate::sync::{self, InFlight, Outcome, Summary, Syncer, CLAIMING};

/// The default of `timeout_ms`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a fetch looks at a transfer it waits for (its own, or another's).
const TICK: Duration = Duration::from_millis(20);
/// Claims of the fetch's own transfer are renewed (and its progress published) this often.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// A wait for the write lock lasts this long at a time; between slices a fetch looks at
/// its deadline and at the caller's interrupt.
const BUSY_SLICE: Duration = Duration::from_millis(50);
/// A fetch whose partial file another transfer still holds tries again this often.
const HELD_RETRY: Duration = Duration::from_millis(100);
/// After a timeout, the row's release waits at most this long for the write lock (else
/// the claim's lease ends it).
const RELEASE_GRACE: Duration = Duration::from_millis(200);

/// A fetch's deadline and interrupt, kept by every wait for the write lock.
struct Patience<'a> {
    id: &'a str,
    deadline: Instant,
    timeout: Duration,
    interrupted: &'a dyn Fn() -> bool,
}

impl Patience<'_> {
    /// Runs `f` (one statement or one short transaction) until it is not busy, slice by
    /// slice; gives up when the deadline passes or the caller interrupts.
    fn run<T>(&self, f: impl FnMut() -> Result<T>) -> Result<T> {
        crate::connection::retry_busy(f, |_busy| {
            if (self.interrupted)() {
                return Err(interrupted_error());
            }
            if Instant::now() >= self.deadline {
                return Err(Error::Unavailable(format!(
                    "timeout: '{}' was not downloaded within {} ms: the database stayed locked by another connection",
                    self.id,
                    self.timeout.as_millis()
                )));
            }
            Ok(())
        })
    }

    fn over(&self) -> bool {
        (self.interrupted)() || Instant::now() >= self.deadline
    }
}

/// The row as a fetch sees it.
struct Seen {
    state: i64,
    filename: String,
    local_uri: Option<String>,
    media_type: Option<String>,
    sha256: Option<String>,
    attempts: i64,
    claimed_by: Option<String>,
    claimed_until: Option<i64>,
    resume: Option<String>,
    /// The size the row records for its file (a synced or archived copy's).
    size: Option<i64>,
}

/// Downloads `id` now unless its local copy is complete, and returns the local copy's
/// absolute path. Gives up after `timeout` (a transfer of its own is then cancelled and
/// the row released, untouched, to the queue), or when `interrupted` turns true.
pub fn fetch(target: &DbTarget, config: Config, id: &str, timeout: Duration, interrupted: &dyn Fn() -> bool) -> Result<String> {
    names::check_id(id)?;
    let deadline = Instant::now() + timeout;
    let db_file = target.path.as_str();
    let syncer = Arc::new(Syncer::new(db_file, config)?);
    let conn = open_connection(target)?;
    // Every wait for the lock is sliced, so the deadline and the interrupt are kept.
    conn.busy_timeout(BUSY_SLICE)?;
    let wait = Patience { id, deadline, timeout, interrupted };
    let always = || true;
    wait.run(|| sync::ensure_schema(&conn, db_file, &syncer.config.table, &always))?;
    // A pause holds every transfer, a fetch's too (its first read would fail): said when
    // the fetch needs the network (a complete local copy is returned all the same).
    let paused: bool = wait.run(|| Ok(conn.query_row("SELECT paused FROM main._attachments_config WHERE id = 1", [], |r| r.get(0))?))?;
    let refuse_paused = || Error::Unavailable("paused: transfers are paused (attachment_pause()); call attachment_resume() first".into());
    let owner = owner::current(db_file);
    let queue = QueueTable::new(&conn, &syncer.config.table, &owner);
    let mut reconciled = false;
    let mut waited_for: Option<String> = None;
    loop {
        if interrupted() {
            return Err(interrupted_error());
        }
        if Instant::now() >= deadline {
            return Err(timed_out(id, timeout, waited_for.as_deref()));
        }
        let Some(row) = wait.run(|| read_row(&conn, &syncer.config.table, id))? else {
            // No row: the watches may reference it (a policy that does not download it, or a
            // reference reconciliation has not seen yet), which gives its file name.
            if let Some((filename, media_type, meta_data)) = wait.run(|| referenced(&conn, id))? {
                if paused {
                    return Err(refuse_paused());
                }
                let until = now_ms() + sync::claim_lease().as_millis() as i64;
                let mut held = InFlight::new(db_file);
                let claimed = {
                    let _claiming = CLAIMING.lock().unwrap_or_else(|e| e.into_inner());
                    let ok = wait.run(|| immediate(&conn, || queue.insert_fetched(id, &filename, media_type.as_deref(), meta_data.as_deref(), until)))?;
                    if ok {
                        held.insert(id.to_string());
                    }
                    ok
                };
                if claimed {
                    let job = Job {
                        id: id.to_string(),
                        filename,
                        local_uri: None,
                        state: State::QueuedDownload,
                        media_type: media_type.unwrap_or_default(),
                        sha256: None,
                        attempts: 0,
                        resume: None,
                    };
                    match transfer(&syncer, &conn, &queue, job, held, &wait)? {
                        Some(path) => return Ok(path),
                        None => {
                            waited_for = Some(String::new());
                            std::thread::sleep(HELD_RETRY);
                            continue;
                        }
                    }
                }
                continue; // a row appeared meanwhile: look again
            }
            if !reconciled && wait.run(|| reconcile::needed(&conn, false))? {
                let now = now_ms();
                wait.run(|| immediate(&conn, || reconcile::reconcile(&conn, &syncer.config, now, false)))?;
                reconciled = true;
                continue;
            }
            // A reference reconciliation refused (its id or extension would leave local_dir).
            if let Some((watch, ext)) = wait.run(|| rejected(&conn, id))? {
                let ext = ext.map_or_else(|| "none".to_string(), |e| format!("'{}'", e.escape_debug()));
                return Err(Error::Unavailable(format!(
                    "'{id}': watch '{}' references it, but the reference was rejected: its id or file_extension ({ext}) is unsafe \
                     (a file name must stay inside local_dir), so it is never downloaded",
                    watch.escape_debug()
                )));
            }
            return Err(Error::Unavailable(format!(
                "unknown id '{id}': no row has it and no watch references it, so its file name is unknown; \
                 reference it from a watched table first (or save it on the device that has the file)"
            )));
        };
        let state = State::from_code(row.state);
        // A complete local copy: at once (an upload's own file, a synced or cached one). A
        // synced or cached copy whose size is not the row's was damaged (truncated, grown):
        // it is downloaded again.
        if let (Some(name), Some(State::QueuedUpload | State::Synced | State::Archived)) = (&row.local_uri, state) {
            if let Some(path) = syncer.store.existing(name)? {
                let whole = state == Some(State::QueuedUpload) || size_matches(&path, row.size);
                if whole {
                    return Ok(path.to_string_lossy().into_owned());
                }
            }
        }
        match state {
            Some(State::QueuedDelete) => {
                return Err(Error::Unavailable(format!("'{id}' is queued for deletion: there is nothing to fetch")));
            }
            Some(State::QueuedUpload) => {
                return Err(Error::Unavailable(format!(
                    "'{id}' is waiting to be uploaded from this device but its local file is missing; verify will archive it"
                )));
            }
            None => return Err(Error::Unavailable(format!("'{id}': the row was edited by hand (unknown state {}); it is left alone", row.state))),
            _ => {}
        }
        if paused {
            return Err(refuse_paused());
        }
        // A transfer of it in flight elsewhere (another connection's fetch, a worker here or in
        // another process): wait for it, then look again.
        if state == Some(State::QueuedDownload) && claim_is_live(db_file, &owner, id, &row) {
            waited_for = row.claimed_by.clone();
            std::thread::sleep(TICK);
            continue;
        }
        let until = now_ms() + sync::claim_lease().as_millis() as i64;
        let mut held = InFlight::new(db_file);
        let claimed = {
            let _claiming = CLAIMING.lock().unwrap_or_else(|e| e.into_inner());
            // Looked at again under the lock: a pass of this process may have just claimed it.
            if row.claimed_by.as_deref() == Some(owner.as_str()) && InFlight::is_held(db_file, id) {
                false
            } else {
                let ok = wait.run(|| immediate(&conn, || queue.claim_for_fetch(id, row.state, row.claimed_by.as_deref(), until)))?;
                if ok {
                    held.insert(id.to_string());
                }
                ok
            }
        };
        if !claimed {
            std::thread::sleep(TICK);
            continue; // the row changed meanwhile: look again
        }
        let job = Job {
            id: id.to_string(),
            filename: row.filename,
            local_uri: None,
            state: State::QueuedDownload,
            media_type: row.media_type.unwrap_or_default(),
            sha256: row.sha256,
            attempts: if state == Some(State::QueuedDownload) { row.attempts } else { 0 },
            // What the queue's claim would hand the transfer too.
            resume: row.resume,
        };
        match transfer(&syncer, &conn, &queue, job, held, &wait)? {
            Some(path) => return Ok(path),
            // An earlier transfer of it (one a timed-out fetch left running) still holds its
            // partial file: wait for it, up to the deadline, recording nothing.
            None => {
                waited_for = Some(String::new());
                std::thread::sleep(HELD_RETRY);
            }
        }
    }
}

/// Whether another transfer of `id` holds a live claim: another process's that is alive and
/// within its lease, or one of this process (a pass's, another fetch's) still in flight.
fn claim_is_live(db_file: &str, owner: &str, id: &str, row: &Seen) -> bool {
    match row.claimed_by.as_deref() {
        None => false,
        Some(by) if by == owner => InFlight::is_held(db_file, id),
        Some(by) => row.claimed_until.is_some_and(|t| t >= now_ms()) && !owner::is_dead(db_file, by),
    }
}

/// Whether the file at `path` has the size the row records (true when the row records none).
pub(crate) fn size_matches(path: &std::path::Path, size: Option<i64>) -> bool {
    match size {
        Some(n) if n >= 0 => std::fs::metadata(path).map(|m| m.len() == n as u64).unwrap_or(false),
        _ => true,
    }
}

fn read_row(conn: &Connection, table: &str, id: &str) -> Result<Option<Seen>> {
    let t = quote_ident(table);
    Ok(conn
        .query_row(
            &format!(
                "SELECT state, filename, local_uri, media_type, sha256, attempts, claimed_by, claimed_until, upload_resume, size
                 FROM main.{t} WHERE id = ?1 AND typeof(state) = 'integer' AND typeof(filename) = 'text'"
            ),
            [id],
            |r| {
                Ok(Seen {
                    state: r.get(0)?,
                    filename: r.get(1)?,
                    local_uri: r.get(2)?,
                    media_type: r.get(3)?,
                    sha256: r.get(4)?,
                    attempts: r.get(5)?,
                    claimed_by: r.get(6)?,
                    claimed_until: r.get(7)?,
                    resume: r.get(8)?,
                    size: r.get::<_, Option<i64>>(9).ok().flatten(),
                })
            },
        )
        .optional()?)
}

/// The file name, media type and meta data a watch gives `id`, if any references it with a
/// safe file name.
fn referenced(conn: &Connection, id: &str) -> Result<Option<(String, Option<String>, Option<String>)>> {
    Ok(conn
        .query_row(
            "SELECT filename, coalesce(media_type, guessed_type), meta_data FROM main._attachments_ref
             WHERE id = ?1 AND filename IS NOT NULL ORDER BY watch LIMIT 1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?)
}

/// The watch and extension of a reference of `id` whose file name was refused, if any.
fn rejected(conn: &Connection, id: &str) -> Result<Option<(String, Option<String>)>> {
    Ok(conn
        .query_row(
            "SELECT watch, CAST(file_extension AS TEXT) FROM main._attachments_ref WHERE id = ?1 AND filename IS NULL ORDER BY watch LIMIT 1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// Moves the bytes of the claimed `job` on a thread of its own while this one renews the
/// claim and watches the deadline; then records the outcome like a pass does.
#[allow(clippy::too_many_arguments)]
fn transfer(
    syncer: &Arc<Syncer>,
    conn: &Connection,
    queue: &QueueTable,
    job: Job,
    mut held: InFlight,
    wait: &Patience,
) -> Result<Option<String>> {
    let (deadline, timeout, interrupted) = (wait.deadline, wait.timeout, wait.interrupted);
    let cancel = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = crossbeam_channel::bounded::<(Job, Outcome)>(1);
    {
        let (me, mine, cancel) = (syncer.clone(), job.clone(), cancel.clone());
        let spawned = std::thread::Builder::new().name("attachments-fetch".into()).spawn(move || {
            let outcome = me.perform(&mine, &cancel);
            // Nobody waits any more (a timeout): the staged file is nobody's.
            if let Err(crossbeam_channel::SendError((_, Outcome::Downloaded { staged, .. }))) = done_tx.send((mine, outcome)) {
                staged.discard();
            }
        });
        if let Err(e) = spawned {
            let _ = immediate(conn, || queue.release(&job.id));
            return Err(Error::Misuse(format!("cannot start a transfer thread: {e}")));
        }
    }
    let lease = sync::claim_lease();
    let mut next_renewal = Instant::now() + RENEW_EVERY.min(lease / 3);
    let result = loop {
        match done_rx.recv_timeout(TICK) {
            Ok(result) => break result,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                let _ = sync::write(conn, &|| wait.over(), || queue.release(&job.id));
                return Err(Error::Misuse("the transfer thread ended without a result (a bug: please report it)".into()));
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        let stop = interrupted();
        if stop || Instant::now() >= deadline {
            // The transfer stops moving bytes; the row goes back to the queue untouched.
            cancel.store(true, Ordering::Relaxed);
            drop(done_rx);
            let grace = Instant::now() + RELEASE_GRACE;
            let _ = sync::write(conn, &|| Instant::now() >= grace, || queue.release(&job.id));
            held.remove(&job.id);
            return Err(if stop { interrupted_error() } else { timed_out(&job.id, timeout, None) });
        }
        if Instant::now() >= next_renewal {
            let _ = sync::try_write(conn, || syncer.renew_claims(conn, queue, std::iter::once(&job.id), lease));
            next_renewal = Instant::now() + RENEW_EVERY.min(lease / 3);
        }
    };
    let mut batch = syncer.publish_downloads(vec![result]);
    let (job, outcome) = batch.pop().expect("one result in, one out");
    let failure = match &outcome {
        Outcome::Failed(e) => Some(e.clone()),
        _ => None,
    };
    let id = job.id.clone();
    // Another transfer of this file (one a timed-out fetch left running) still holds its
    // partial file: the row goes back untouched, no error recorded, and the caller waits.
    if matches!(&outcome, Outcome::Failed(e) if e.is_busy()) {
        let grace = Instant::now() + RELEASE_GRACE;
        let _ = sync::write(conn, &|| Instant::now() >= grace, || queue.release(&id));
        held.remove(&id);
        return Ok(None);
    }
    // Paused meanwhile: released without counting an attempt, as a pass does.
    let paused = failure.is_some()
        && (crate::throttle::of(&syncer.db_file).paused()
            || conn.query_row("SELECT paused FROM main._attachments_config WHERE id = 1", [], |r| r.get::<_, bool>(0)).unwrap_or(false));
    let mut remove = None;
    let recorded = sync::write(conn, &|| wait.over(), || {
        let mut summary = Summary::default();
        remove = syncer.record(queue, &job, &outcome, paused, &mut summary)?;
        if matches!(outcome, Outcome::Downloaded { .. }) {
            queue.archive_fetched_if_unreferenced(&id)?;
        }
        queue.count_done(&summary)?;
        queue.note_if_drained()?;
        crate::progress::sample(conn, &syncer.config.table, now_ms())
    });
    if let Err(e) = recorded {
        // Locked out past the deadline: the claim's lease ends and verify records a
        // download that was published.
        return Err(if !e.is_busy() {
            e
        } else if interrupted() {
            interrupted_error()
        } else {
            timed_out(&id, timeout, None)
        });
    }
    held.remove(&id);
    if let Some(file) = remove {
        if let Err(e) = syncer.store.remove(&file) {
            log::warn!("could not remove {file}: {e}");
        }
    }
    if paused {
        return Err(Error::Unavailable(format!("paused: transfers were paused (attachment_pause()) during the download of '{id}'; it stays queued")));
    }
    if let Some(e) = failure {
        return Err(Error::Remote(e));
    }
    // Recorded: the row names its local copy now (unless the app deleted it meanwhile).
    let local: Option<String> = wait.run(|| read_row(conn, &syncer.config.table, &id))?.and_then(|r| r.local_uri);
    match local.map(|name| syncer.store.existing(&name)).transpose()?.flatten() {
        Some(path) => Ok(Some(path.to_string_lossy().into_owned())),
        None => Err(Error::Unavailable(format!("'{id}' was downloaded, but its row changed meanwhile (deleted?)"))),
    }
}

fn timed_out(id: &str, timeout: Duration, waited_for: Option<&str>) -> Error {
    let whose = match waited_for {
        Some(_) => " (another transfer of it is in flight; it goes on)",
        None => "; it stays queued",
    };
    Error::Unavailable(format!("timeout: '{id}' was not downloaded within {} ms{whose}", timeout.as_millis()))
}

fn interrupted_error() -> Error {
    let code = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERRUPT);
    Error::Sqlite(rusqlite::Error::SqliteFailure(code, Some("interrupted; the row stays queued".into())))
}
