//! Watched ids against queue rows, with set-based SQL (no row-by-row loops).
//! The rules are the contract's; each statement below is one of them.

use rusqlite::{named_params, Connection};

use crate::config::Config;
use crate::queue::table::QueueTable;
use crate::error::Result;
use crate::queue::now_ms;
use crate::schema::quote_ident;

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Reconciled {
    /// New QUEUED_DOWNLOAD rows.
    pub queued: usize,
    /// ARCHIVED rows brought back.
    pub restored: usize,
    /// Rows archived because nothing references them any more.
    pub archived: usize,
    /// Referenced ids skipped because their id or extension is unsafe.
    pub rejected: usize,
}

/// Watches due to re-run although none of their tables changed: a `refresh_ms` has
/// passed since the last run, or one of their triggers is missing (a table migration
/// drops a table's triggers with it). A failed watch's missing triggers do not count:
/// its tables may be gone; it is retried on an explicit sync or its `refresh_ms`.
// language=SQLite
const DUE: &str = "(refresh_ms IS NOT NULL AND coalesce(last_run, 0) + max(refresh_ms, 100) <= :now)
    OR (state = 'ok' AND EXISTS (
        SELECT 1 FROM main._attachments_trigger AS t
        WHERE t.watch = _attachments_watch.name
          AND NOT EXISTS (SELECT 1 FROM main.sqlite_schema AS s WHERE s.type = 'trigger' AND s.name = t.name)))";

/// Whether [`reconcile`] has anything to do: one read, so a caller can skip the write transaction.
pub fn needed(conn: &Connection, force: bool) -> Result<bool> {
    let (watches, pending, delta): (i64, i64, bool) = conn.query_row(
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE dirty != 0 OR {DUE}),
                    EXISTS (SELECT 1 FROM main._attachments_delta)
             FROM main._attachments_watch"
        ),
        named_params! {":now": now_ms()},
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(watches > 0 && (pending > 0 || delta || force))
}

/// When the earliest `refresh_ms` of a watch falls due (ms since the epoch), for the
/// worker to wake then; None when no watch sets one.
pub fn next_refresh_due(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn.query_row(
        "SELECT min(coalesce(last_run, 0) + max(refresh_ms, 100)) FROM main._attachments_watch WHERE refresh_ms IS NOT NULL",
        [],
        |r| r.get(0),
    )?)
}

/// Re-runs one watch's query and brings `_attachments_ref` up to date by difference:
/// only ids that appeared, vanished or changed are written, and they are noted in
/// `_attachments_delta` for the next comparison. A watch with no references yet (new)
/// skips the notes and returns true: everything must be compared anyway.
pub fn refresh_watch(conn: &Connection, name: &str, select_sql: &str) -> Result<bool> {
    let first_run: bool =
        conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM main._attachments_ref WHERE watch = ?1)", [name], |r| r.get(0))?;
    if first_run {
        // Nothing to compare with: the result goes straight into place.
        store_refs(conn, name, "OR IGNORE", &format!("SELECT * FROM ({select_sql})"))?;
        conn.execute("UPDATE main._attachments_watch SET dirty = 0 WHERE name = ?1", [name])?;
        return Ok(true);
    }
    // language=SQLite
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS _attachments_fresh(
             id TEXT PRIMARY KEY, file_extension, media_type, meta_data) WITHOUT ROWID;
         DELETE FROM temp._attachments_fresh;",
    )?;
    conn.execute(&format!("INSERT OR IGNORE INTO temp._attachments_fresh SELECT * FROM ({select_sql})"), [])?;
    // Vanished from the result: candidates for archiving.
    // language=SQLite
    conn.execute(
        "INSERT OR IGNORE INTO main._attachments_delta(id)
         SELECT r.id FROM main._attachments_ref AS r
         WHERE r.watch = ?1 AND NOT EXISTS (SELECT 1 FROM temp._attachments_fresh AS f WHERE f.id = r.id)",
        [name],
    )?;
    conn.execute(
        "DELETE FROM main._attachments_ref WHERE watch = ?1 AND id NOT IN (SELECT id FROM temp._attachments_fresh)",
        [name],
    )?;
    // New or changed: candidates for a download or a restore.
    // language=SQLite
    conn.execute(
        "INSERT OR IGNORE INTO main._attachments_delta(id)
         SELECT f.id FROM temp._attachments_fresh AS f
         WHERE NOT EXISTS (SELECT 1 FROM main._attachments_ref AS r
                           WHERE r.watch = ?1 AND r.id = f.id AND r.file_extension IS f.file_extension
                             AND r.media_type IS f.media_type AND r.meta_data IS f.meta_data)",
        [name],
    )?;
    // language=SQLite
    store_refs(
        conn,
        name,
        "OR REPLACE",
        "SELECT * FROM temp._attachments_fresh WHERE id IN (SELECT id FROM main._attachments_delta)",
    )?;
    conn.execute("DELETE FROM temp._attachments_fresh", [])?;
    conn.execute("UPDATE main._attachments_watch SET dirty = 0 WHERE name = ?1", [name])?;
    Ok(false)
}

/// Writes the rows of `source` (id, file_extension, media_type, meta_data) as watch
/// `name`'s references, with the file name and guessed media type computed once here.
fn store_refs(conn: &Connection, name: &str, conflict: &str, source: &str) -> Result<()> {
    // language=SQLite
    conn.execute(
        &format!(
            "INSERT {conflict} INTO main._attachments_ref(watch, id, file_extension, media_type, meta_data, filename, guessed_type)
             SELECT ?1, id, file_extension, media_type, meta_data, filename, attachment_media_type(filename)
             FROM (SELECT s.*, attachment_filename(s.id, coalesce(s.file_extension, '')) AS filename FROM ({source}) AS s)"
        ),
        [name],
    )?;
    Ok(())
}

/// `_attachments_watch.dirty`: the watch's tables changed (or it is new) since its query last ran.
pub const DIRTY: i64 = 1;

/// Marks dirty every watch due to re-run ([`DUE`]), or every watch with `force`.
fn mark_due(conn: &Connection, now: i64, force: bool) -> Result<()> {
    if force {
        conn.execute("UPDATE main._attachments_watch SET dirty = ?1 WHERE dirty != ?1", [DIRTY])?;
    } else {
        conn.execute(
            &format!("UPDATE main._attachments_watch SET dirty = :dirty WHERE dirty != :dirty AND ({DUE})"),
            named_params! {":dirty": DIRTY, ":now": now},
        )?;
    }
    Ok(())
}

/// Re-runs every dirty watch; true when one of them was new, so that every row needs
/// comparing. Each runs in a savepoint: a watch whose query fails (a malformed row, a
/// dropped table, a forbidden call) is undone, marked `failed` with its error, and
/// keeps its last good references, so nothing it referenced is archived meanwhile;
/// the others go on. Only a busy or locked database fails the whole pass.
/// Runs on the extension's own connection (it installs an authorizer).
pub fn refresh_dirty_watches(conn: &Connection, config: &Config, now: i64) -> Result<bool> {
    let dirty: Vec<(String, String)> = conn
        .prepare("SELECT name, query FROM main._attachments_watch WHERE dirty = ?1 ORDER BY name")?
        .query_map([DIRTY], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut full = false;
    for (name, query) in &dirty {
        conn.execute_batch("SAVEPOINT _attachments_watch_run")?;
        let outcome = crate::watch::run(conn, config, name, query);
        if outcome.is_err() {
            conn.execute_batch("ROLLBACK TO _attachments_watch_run")?;
        }
        conn.execute_batch("RELEASE _attachments_watch_run")?;
        let error = match outcome {
            Ok(first) => {
                full |= first;
                None
            }
            // Busy, or interrupted because the pass is stopping: not the watch's fault.
            Err(e) if e.is_busy() || crate::cancel::requested() => return Err(e),
            Err(e) => {
                log::warn!("watch {name} failed: {e}");
                Some(e.to_string())
            }
        };
        conn.execute(
            "UPDATE main._attachments_watch SET dirty = 0, state = ?2, last_error = ?3, last_run = ?4 WHERE name = ?1",
            rusqlite::params![name, if error.is_some() { "failed" } else { "ok" }, error, now],
        )?;
    }
    Ok(full)
}

/// Re-runs the watches that need it, then applies the reconciliation rules. Normally
/// only to the ids whose references changed (`_attachments_delta`), so one changed
/// reference costs one query run, not a comparison of every row; with `force` (which
/// also re-runs every watch), to every row. Without any watch there is
/// nothing to compare against, so nothing is archived. Runs in the caller's transaction.
pub fn reconcile(conn: &Connection, config: &Config, now: i64, force: bool) -> Result<Reconciled> {
    if !needed(conn, force)? {
        return Ok(Reconciled::default());
    }
    mark_due(conn, now, force)?;
    let force = refresh_dirty_watches(conn, config, now)? || force;
    let t = quote_ident(&config.table);
    let in_scope = |col: &str| {
        if force { String::new() } else { format!("AND {col} IN (SELECT id FROM main._attachments_delta)") }
    };
    // A watch with `"download": false` references ids without downloading them; an id
    // any other watch references with downloads on is downloaded (the most generous
    // policy wins). Only spelled out when such a watch exists: it costs a lookup per id.
    let quiet: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM main._attachments_watch
                        WHERE CASE WHEN json_valid(options) THEN json_extract(options, '$.download') END = 0)",
        [],
        |r| r.get(0),
    )?;
    let downloadable = |col: &str| {
        if !quiet {
            return String::new();
        }
        format!(
            "AND EXISTS (SELECT 1 FROM main._attachments_ref AS d JOIN main._attachments_watch AS w ON w.name = d.watch
                         WHERE d.id = {col}
                           AND coalesce(CASE WHEN json_valid(w.options) THEN json_extract(w.options, '$.download') END, 1) != 0)"
        )
    };
    let mut out = Reconciled::default();
    let referenced = referenced(&in_scope("id"));
    out.rejected = conn.query_row(&format!("SELECT count(*) FROM ({referenced}) WHERE filename IS NULL"), [], |r| r.get::<_, i64>(0))? as usize;
    if out.rejected > 0 {
        log::warn!("{} referenced ids skipped: unsafe id or file_extension", out.rejected);
    }
    // Referenced, no row: download it (when downloads are on).
    let queue = QueueTable::unclaimed(conn, &config.table);
    if config.download_attachments {
        out.queued = queue.queue_downloads(&referenced, &downloadable("r.id"), now)?;
    }
    // Referenced, ARCHIVED: back to SYNCED with its local copy if it was uploaded; a local
    // copy never uploaded goes up again; without one, download again. A download given
    // up (404, 410, max_attempts) stays given up until attachment_retry.
    out.restored =
        queue.restore_referenced(&downloadable(&format!("{t}.id")), &in_scope("id"), now, config.download_attachments)?;
    // Not referenced, SYNCED or QUEUED_DOWNLOAD: archive. Uploads and deletes finish first.
    out.archived = queue.archive_unreferenced(&in_scope("id"), now)?;
    conn.execute("DELETE FROM main._attachments_delta", [])?;
    Ok(out)
}

/// The referenced ids in `scope` (an `AND ...` on `id`), one row each: (id, filename,
/// media_type, meta_data). Watches that agree on nothing: the smallest file name wins;
/// the file name is NULL when id or extension is unsafe.
pub fn referenced(scope: &str) -> String {
    // language=SQLite
    format!(
        "SELECT id, min(filename) AS filename, coalesce(max(media_type), min(guessed_type)) AS media_type,
                max(meta_data) AS meta_data
         FROM main._attachments_ref WHERE 1 {scope} GROUP BY id"
    )
}

/// Notes that `id` needs comparing again by the next reconciliation (say, it was unpinned).
pub fn note_changed(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("INSERT OR IGNORE INTO main._attachments_delta(id) VALUES (?1)", [id])?;
    Ok(())
}
