//! Repairs after crashes and outside meddling: rows whose local file is gone,
//! files no row owns, stray temp files, `local_uri` that does not match the file.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection};
use serde_json::{json, Value};

use crate::config::Config;
use crate::error::Result;
use crate::queue::{now_ms, State};
use crate::schema::quote_ident;
use crate::store::{hash_file, LocalStore};

/// Files younger than this are left alone: they may belong to a save whose
/// transaction has not committed yet on another connection, or to a download in flight.
pub const GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone, Copy)]
pub struct Verified {
    /// SYNCED rows whose local copy vanished, queued for download again.
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
}

/// Runs in the caller's transaction; touches only local files.
pub fn verify(conn: &Connection, config: &Config, store: &LocalStore) -> Result<Verified> {
    let t = quote_ident(&config.table);
    let now = now_ms();
    let mut out = Verified::default();
    let rows: Vec<Row> = conn
        .prepare(&format!("SELECT id, filename, local_uri, state FROM main.{t}"))?
        .query_map([], |r| Ok(Row { id: r.get(0)?, filename: r.get(1)?, local_uri: r.get(2)?, state: r.get(3)? }))?
        .collect::<rusqlite::Result<_>>()?;
    let entries = store.entries()?;
    let on_disk: HashSet<&str> = entries.iter().filter(|e| !e.is_temp).map(|e| e.name.as_str()).collect();

    let mut set_uri = conn.prepare(&format!("UPDATE main.{t} SET local_uri = ?2, timestamp = ?3 WHERE id = ?1"))?;
    let mut requeue = conn.prepare(&format!(
        "UPDATE main.{t} SET state = 1, local_uri = NULL, timestamp = ?2, attempts = 0, next_attempt_at = 0,
             last_error = 'local file missing: downloading again' WHERE id = ?1"
    ))?;
    let mut archive = conn.prepare(&format!(
        "UPDATE main.{t} SET state = 4, local_uri = NULL, timestamp = ?2,
             last_error = 'local file missing: nothing to upload' WHERE id = ?1"
    ))?;
    let mut finish_download = conn.prepare(&format!(
        "UPDATE main.{t} SET state = 3, local_uri = ?2, size = ?3, sha256 = ?4, has_synced = 1, timestamp = ?5,
             attempts = 0, next_attempt_at = 0, last_error = NULL WHERE id = ?1 AND state = 1"
    ))?;
    for row in &rows {
        let present = on_disk.contains(row.filename.as_str());
        let state = State::from_code(row.state);
        match (present, &row.local_uri, state) {
            // A download renamed into place but not recorded before a crash: the
            // file is complete (only complete files are renamed), so record it.
            (true, None, Some(State::QueuedDownload)) => {
                if let Some(w) = store.existing(&row.filename).and_then(|p| hash_file(&p).ok()) {
                    finish_download.execute(params![row.id, row.filename, w.size as i64, w.sha256, now])?;
                    out.repaired += 1;
                }
            }
            (true, uri, Some(State::QueuedUpload | State::Synced | State::Archived | State::QueuedDelete))
                if uri.as_deref() != Some(row.filename.as_str()) =>
            {
                set_uri.execute(params![row.id, row.filename, now])?;
                out.repaired += 1;
            }
            (false, Some(_), Some(State::Synced)) => {
                requeue.execute(params![row.id, now])?;
                out.requeued += 1;
            }
            (false, _, Some(State::QueuedUpload)) => {
                archive.execute(params![row.id, now])?;
                out.archived += 1;
            }
            (false, Some(_), _) => {
                set_uri.execute(params![row.id, Option::<String>::None, now])?;
                out.repaired += 1;
            }
            _ => {}
        }
    }

    let owned: HashSet<&str> = rows.iter().map(|r| r.filename.as_str()).collect();
    let old_enough = |m: SystemTime| SystemTime::now().duration_since(m).map(|age| age >= GRACE).unwrap_or(false);
    for entry in &entries {
        if !old_enough(entry.modified) {
            continue;
        }
        if entry.is_temp {
            store.remove_entry(entry)?;
            out.temp_removed += 1;
        } else if !owned.contains(entry.name.as_str()) {
            store.remove_entry(entry)?;
            out.orphans_removed += 1;
        }
    }
    Ok(out)
}
