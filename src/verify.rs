//! Repairs after crashes and outside meddling: rows whose local file is gone,
//! files no row owns, stray temp files, `local_uri` that does not match the file.
//!
//! Why removing an orphan is exact, not time-based: verify runs on the extension's own
//! connection under `BEGIN IMMEDIATE`, and a save writes its file *before* its INSERT.
//! A save holds a shared `flock` on its file from the moment the file is created until
//! its INSERT has returned; once the INSERT has returned, the save's connection holds the
//! write lock until its transaction ends. So while verify holds the write lock, a file
//! that no committed row names is either locked (a save between "file written" and
//! "INSERT done": skipped) or belongs to no transaction that can still commit (a rolled
//! back or crashed save): removed, under an exclusive `flock` so no writer slips in.
//! Downloads hold the same lock on their temp file until it is published and recorded.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;
use serde_json::{json, Value};

use crate::config::Config;
use crate::connection::immediate;
use crate::error::Result;
use crate::ownership;
use crate::queue::table::QueueTable;
use crate::queue::State;
use crate::schema::quote_ident;
use crate::store::{hash_file, LocalStore};

/// Temp files younger than this are left alone even when unlocked: a writer takes its
/// lock just after creating the file.
pub const GRACE: Duration = Duration::from_secs(60);

/// A long-lived process verifies again this often (files of rolled-back saves, lost copies).
pub const EVERY: Duration = Duration::from_secs(60 * 60);

/// When this process last verified each database file.
static LAST_RUN: LazyLock<Mutex<HashMap<String, Instant>>> = LazyLock::new(Default::default);

/// True when `db_file` has not been verified by this process, or not within [`EVERY`].
pub fn due(db_file: &str) -> bool {
    due_at(LAST_RUN.lock().ok().and_then(|m| m.get(db_file).copied()), Instant::now())
}

fn due_at(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|at| now.saturating_duration_since(at) >= EVERY)
}

fn mark_run(db_file: &str) {
    if let Ok(mut m) = LAST_RUN.lock() {
        m.insert(db_file.to_string(), Instant::now());
    }
}

/// Verifies `db_file` if it is due (first call in this process, then hourly). `own_conn` is
/// the extension's own connection (see [`crate::connection::open_connection`]), outside any
/// transaction: this takes the write lock itself. For the worker's pass.
#[allow(dead_code)] // the lead switches run_pass to this
pub fn run_if_due(own_conn: &Connection, db_file: &str, config: &Config, store: &LocalStore) -> Result<Option<Verified>> {
    if !due(db_file) {
        return Ok(None);
    }
    immediate(own_conn, || run_if_due_locked(own_conn, db_file, config, store))
}

/// As [`run_if_due`], for a caller that already holds `BEGIN IMMEDIATE` on `own_conn`.
pub fn run_if_due_locked(own_conn: &Connection, db_file: &str, config: &Config, store: &LocalStore) -> Result<Option<Verified>> {
    if !due(db_file) {
        return Ok(None);
    }
    let v = verify(own_conn, config, store)?;
    mark_run(db_file);
    Ok(Some(v))
}

/// Verifies now, taking the write lock on `own_conn` (for `attachment_verify()`).
pub fn run_now(own_conn: &Connection, db_file: &str, config: &Config, store: &LocalStore) -> Result<Verified> {
    // A database last initialised by an earlier build gets the newer columns first.
    let v = immediate(own_conn, || {
        crate::schema::ensure(own_conn, &config.table)?;
        verify(own_conn, config, store)
    })?;
    mark_run(db_file);
    Ok(v)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Verified {
    /// SYNCED rows whose local copy vanished, and pinned ARCHIVED rows without one, queued
    /// for download again.
    pub requeued: usize,
    /// Rows whose file is missing and cannot be recovered (an upload that lost its file).
    pub archived: usize,
    /// `local_uri` corrected to match the file on disk.
    pub repaired: usize,
    /// Files no row owns (e.g. a save rolled back), removed.
    pub orphans_removed: usize,
    /// Temp files of interrupted writes, removed.
    pub temp_removed: usize,
}

impl Verified {
    pub fn to_json(self) -> Value {
        json!({
            "requeued": self.requeued, "archived": self.archived, "repaired": self.repaired,
            "orphans_removed": self.orphans_removed, "temp_removed": self.temp_removed,
        })
    }
}

struct Row {
    id: String,
    filename: String,
    local_uri: Option<String>,
    state: i64,
    /// The size the row records (NULL, or not an integer: unknown).
    size: Option<i64>,
}

/// The clean-up itself. `conn` must be the extension's own connection holding
/// `BEGIN IMMEDIATE` (see the module comment for why that makes it exact).
/// The folder must be this database's (see `ownership`); a vanished folder is an error.
pub fn verify(conn: &Connection, config: &Config, store: &LocalStore) -> Result<Verified> {
    ownership::claim(conn, conn.path(), store.dir(), &config.table)?;
    let t = quote_ident(&config.table);
    let mut out = Verified::default();
    let rows: Vec<Row> = conn
        // Rows edited by hand with wrong types are left alone rather than failing every pass.
        .prepare(&format!(
            "SELECT id, filename, local_uri, state, CASE WHEN typeof(size) = 'integer' THEN size END FROM main.{t}
             WHERE typeof(id) = 'text' AND typeof(filename) = 'text' AND typeof(state) = 'integer'
               AND typeof(local_uri) IN ('text', 'null')"
        ))?
        .query_map([], |r| Ok(Row { id: r.get(0)?, filename: r.get(1)?, local_uri: r.get(2)?, state: r.get(3)?, size: r.get(4)? }))?
        .collect::<rusqlite::Result<_>>()?;
    let entries = store.entries()?;
    let on_disk: HashSet<&str> = entries.iter().filter(|e| !e.is_temp).map(|e| e.name.as_str()).collect();

    let queue = QueueTable::unclaimed(conn, &config.table);
    // Rows the loop below leaves alone say why, once.
    queue.note_hand_edited_rows()?;
    for row in &rows {
        // A file name edited by hand to leave local_dir is that row's error, not the pass's.
        if let Err(e) = crate::names::check_filename(&row.filename) {
            queue.note_error(&row.id, &format!("local: the row's filename is unsafe and is never used: {e}"))?;
            continue;
        }
        // Something under the name that is not a plain file (a symlink) is not "missing":
        // nothing is archived or re-downloaded for it; the upload refuses it instead.
        let mut present = on_disk.contains(row.filename.as_str()) || store.name_taken(&row.filename)?;
        let mut wrong_size = false;
        let state = State::from_code(row.state);
        // A synced or cached copy whose size is not the row's was damaged (truncated,
        // appended to): it counts as lost, and what the remote has is downloaded again.
        if present && row.local_uri.as_deref() == Some(row.filename.as_str()) && matches!(state, Some(State::Synced | State::Archived)) {
            if let Some(path) = store.existing(&row.filename)? {
                if !crate::fetch::size_matches(&path, row.size) {
                    log::warn!("{}: local copy has the wrong size (the row says {:?} bytes): downloading again", row.id, row.size);
                    store.remove(&row.filename)?;
                    present = false;
                    wrong_size = true;
                }
            }
        }
        match (present, &row.local_uri, state) {
            // A download renamed into place but not recorded before a crash: the
            // file is complete (only complete files are renamed), so record it.
            (true, None, Some(State::QueuedDownload)) => {
                if let Some(w) = store.existing(&row.filename)?.and_then(|p| hash_file(&p).ok()) {
                    queue.record_found_download(&row.id, &row.filename, w.size, &w.sha256)?;
                    out.repaired += 1;
                }
            }
            (true, uri, Some(State::QueuedUpload | State::Synced | State::Archived | State::QueuedDelete))
                if uri.as_deref() != Some(row.filename.as_str()) =>
            {
                queue.set_local_uri(&row.id, Some(&row.filename))?;
                out.repaired += 1;
            }
            (false, Some(_), Some(State::Synced)) => {
                queue.requeue_lost_copy(&row.id, wrong_size)?;
                out.requeued += 1;
            }
            (false, _, Some(State::QueuedUpload)) => {
                queue.archive_lost_upload(&row.id)?;
                out.archived += 1;
            }
            (false, Some(_), _) => {
                queue.set_local_uri(&row.id, None)?;
                out.repaired += 1;
            }
            _ => {}
        }
    }

    // A pinned attachment is kept on the device: one whose copy vanished is fetched again.
    out.requeued += queue.download_pinned(None)?;

    // Only names this extension writes reach here (`{id}.{ext}` and its temp names).
    let owned: HashSet<&str> = rows.iter().map(|r| r.filename.as_str()).collect();
    let old_enough = |m: SystemTime| SystemTime::now().duration_since(m).map(|age| age >= GRACE).unwrap_or(false);
    // A partial download is kept while its row still waits for that download.
    let downloading: HashSet<&str> =
        rows.iter().filter(|r| State::from_code(r.state) == Some(State::QueuedDownload)).map(|r| r.filename.as_str()).collect();
    for entry in &entries {
        if let Some(of) = &entry.partial_of {
            if !downloading.contains(of.as_str()) && store.remove_unlocked(entry)? {
                out.temp_removed += 1;
            }
        } else if entry.is_temp {
            if old_enough(entry.modified) && store.remove_unlocked(entry)? {
                out.temp_removed += 1;
            }
        } else if !owned.contains(entry.name.as_str()) && store.remove_unlocked(entry)? {
            out.orphans_removed += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_is_due_first_then_hourly() {
        let now = Instant::now();
        assert!(due_at(None, now));
        assert!(!due_at(Some(now), now + Duration::from_secs(59 * 60)));
        assert!(due_at(Some(now), now + EVERY));
    }
}
