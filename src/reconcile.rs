//! Watched ids against queue rows, with set-based SQL (no row-by-row loops).
//! The rules are the contract's; each statement below is one of them.

use rusqlite::{named_params, Connection};

use crate::config::Config;
use crate::queue::table::QueueTable;
use crate::error::{Error, Result};
use crate::queue::now_ms;
use crate::schema::quote_ident;
use crate::watch::Policy;

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
/// drops a table's triggers with it) or was changed ([`crate::watch::TRIGGER_INTACT`]:
/// `RENAME COLUMN` rewrites them). A failed watch's missing triggers do not count:
/// its tables may be gone; it is retried on an explicit sync or its `refresh_ms`.
fn due() -> String {
    // language=SQLite
    format!(
        "(refresh_ms IS NOT NULL AND coalesce(last_run, 0) + max(refresh_ms, 100) <= :now)
    OR (state = 'ok' AND EXISTS (
        SELECT 1 FROM main._attachments_trigger AS t
        WHERE t.watch = _attachments_watch.name AND NOT {}))",
        crate::watch::TRIGGER_INTACT
    )
}

/// Whether [`reconcile`] has anything to do: one read, so a caller can skip the write transaction.
pub fn needed(conn: &Connection, force: bool) -> Result<bool> {
    let (watches, pending, delta, rows): (i64, i64, bool, bool) = conn.query_row(
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE dirty != 0 OR {}),
                    EXISTS (SELECT 1 FROM main._attachments_delta),
                    EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = '_attachments_changed')
             FROM main._attachments_watch",
            due()
        ),
        named_params! {":now": now_ms()},
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    if watches == 0 {
        return Ok(false);
    }
    if pending > 0 || delta || force {
        return Ok(true);
    }
    // Rows noted by a watch's row-level triggers (the table exists once one has them).
    Ok(rows && conn.query_row("SELECT EXISTS (SELECT 1 FROM main._attachments_changed)", [], |r| r.get(0))?)
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
/// only ids that appeared, vanished or changed (their columns or what `policy` decides
/// for them) are written, and they are noted in `_attachments_delta` for the next
/// comparison. A watch with no references yet (new) skips the notes and returns true:
/// everything must be compared anyway.
///
/// With `rows_sql` (the watch is refreshed row by row later), `_attachments_src` is
/// filled from it, row by row; without, the watch's rows there are dropped. Either
/// way the rows noted as changed are done with.
pub fn refresh_watch(conn: &Connection, name: &str, select_sql: &str, rows_sql: Option<&str>, policy: &Policy) -> Result<bool> {
    conn.execute("DELETE FROM main._attachments_changed WHERE watch = ?1", [name])?;
    let src_empty = || -> Result<bool> {
        Ok(conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM main._attachments_src WHERE watch = ?1)", [name], |r| r.get(0))?)
    };
    if let Some(rows_sql) = rows_sql.filter(|_| src_empty().unwrap_or(false)) {
        // Nothing stored yet (a new watch): no difference to take, the rows go straight in.
        conn.execute(&format!("INSERT OR IGNORE INTO main._attachments_src(watch, rid, id) SELECT ?1, rid, id FROM ({rows_sql})"), [name])?;
    } else if let Some(rows_sql) = rows_sql {
        // By difference, like the references: the worker's periodic full re-run of an
        // unchanged table writes nothing here.
        // language=SQLite
        conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS _attachments_fresh_src(rid INTEGER, id TEXT, PRIMARY KEY (rid, id)) WITHOUT ROWID;
             DELETE FROM temp._attachments_fresh_src;",
        )?;
        conn.execute(&format!("INSERT OR IGNORE INTO temp._attachments_fresh_src SELECT rid, id FROM ({rows_sql})"), [])?;
        conn.execute(
            "DELETE FROM main._attachments_src WHERE watch = ?1
               AND NOT EXISTS (SELECT 1 FROM temp._attachments_fresh_src AS f WHERE f.rid = _attachments_src.rid AND f.id = _attachments_src.id)",
            [name],
        )?;
        conn.execute("INSERT OR IGNORE INTO main._attachments_src(watch, rid, id) SELECT ?1, rid, id FROM temp._attachments_fresh_src", [name])?;
        conn.execute("DELETE FROM temp._attachments_fresh_src", [])?;
    } else {
        conn.execute("DELETE FROM main._attachments_src WHERE watch = ?1", [name])?;
    }
    let first_run: bool =
        conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM main._attachments_ref WHERE watch = ?1)", [name], |r| r.get(0))?;
    // The policy, applied to each row of the result.
    // language=SQLite
    let with_policy = format!(
        "SELECT s.*, CASE WHEN :download AND (:max_size IS NULL OR s.size IS NULL OR s.size <= :max_size) THEN 1 ELSE 0 END AS download,
                :priority AS priority
         FROM ({select_sql}) AS s"
    );
    let policy_params = named_params! {
        ":watch": name, ":download": policy.download, ":max_size": policy.max_download_size, ":priority": policy.priority,
    };
    if first_run {
        // Nothing to compare with: the result goes straight into place.
        store_refs(conn, "OR IGNORE", &with_policy, policy_params)?;
        conn.execute("UPDATE main._attachments_watch SET dirty = 0 WHERE name = ?1", [name])?;
        return Ok(true);
    }
    // language=SQLite
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS _attachments_fresh(
             id TEXT PRIMARY KEY, file_extension, media_type, meta_data, size, download, priority) WITHOUT ROWID;
         DELETE FROM temp._attachments_fresh;",
    )?;
    conn.execute(
        &format!("INSERT OR IGNORE INTO temp._attachments_fresh SELECT * FROM ({with_policy})"),
        named_params! {":download": policy.download, ":max_size": policy.max_download_size, ":priority": policy.priority},
    )?;
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
    // New or changed: candidates for a download, a restore or a new priority.
    note_new_or_changed(conn, name)?;
    conn.execute("DELETE FROM temp._attachments_fresh", [])?;
    conn.execute("UPDATE main._attachments_watch SET dirty = 0 WHERE name = ?1", [name])?;
    Ok(false)
}

/// Above this many changed rows, a full run is cheaper than one lookup per row.
const MAX_CHANGED_ROWS: i64 = 20_000;

/// Refreshes watch `name` from the rows of its one table noted in `_attachments_changed`
/// only: their results now (`rows_sql` restricted to those rowids, which SQLite looks
/// up by rowid) against the ids they gave before (`_attachments_src`); an id is still
/// referenced while any row of the watch gives it. The same notes in
/// `_attachments_delta` and `_attachments_ref` as [`refresh_watch`], at a cost that
/// follows the number of changed rows, not the table. None when too many rows changed
/// (the caller runs the watch in full).
pub fn refresh_rows(conn: &Connection, name: &str, rows_sql: &str, policy: &Policy) -> Result<Option<bool>> {
    let changed: i64 = conn.query_row("SELECT count(*) FROM main._attachments_changed WHERE watch = ?1", [name], |r| r.get(0))?;
    if changed > MAX_CHANGED_ROWS {
        return Ok(None);
    }
    // language=SQLite
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS _attachments_rows(
             rid INTEGER, id TEXT, file_extension, media_type, meta_data, size, download, priority);
         CREATE TEMP TABLE IF NOT EXISTS _attachments_cand(id TEXT PRIMARY KEY) WITHOUT ROWID;
         CREATE TEMP TABLE IF NOT EXISTS _attachments_fresh(
             id TEXT PRIMARY KEY, file_extension, media_type, meta_data, size, download, priority) WITHOUT ROWID;
         DELETE FROM temp._attachments_rows; DELETE FROM temp._attachments_cand; DELETE FROM temp._attachments_fresh;",
    )?;
    let changed_rows = "SELECT rid FROM main._attachments_changed WHERE watch = :watch";
    // language=SQLite
    conn.execute(
        &format!(
            "INSERT INTO temp._attachments_rows
             SELECT s.*, CASE WHEN :download AND (:max_size IS NULL OR s.size IS NULL OR s.size <= :max_size) THEN 1 ELSE 0 END,
                    :priority
             FROM ({rows_sql}) AS s WHERE s.rid IN ({changed_rows})"
        ),
        named_params! {
            ":watch": name, ":download": policy.download, ":max_size": policy.max_download_size, ":priority": policy.priority,
        },
    )?;
    let w = named_params! {":watch": name};
    // Every id the changed rows gave before or give now.
    conn.execute(
        &format!("INSERT OR IGNORE INTO temp._attachments_cand SELECT id FROM main._attachments_src WHERE watch = :watch AND rid IN ({changed_rows})"),
        w,
    )?;
    conn.execute("INSERT OR IGNORE INTO temp._attachments_cand SELECT id FROM temp._attachments_rows", [])?;
    conn.execute(&format!("DELETE FROM main._attachments_src WHERE watch = :watch AND rid IN ({changed_rows})"), w)?;
    conn.execute("INSERT OR IGNORE INTO main._attachments_src(watch, rid, id) SELECT :watch, rid, id FROM temp._attachments_rows", w)?;
    // Given by no row any more: candidates for archiving.
    // language=SQLite
    let gone = "SELECT c.id FROM temp._attachments_cand AS c
                WHERE NOT EXISTS (SELECT 1 FROM main._attachments_src AS s WHERE s.watch = :watch AND s.id = c.id)";
    conn.execute(
        &format!(
            "INSERT OR IGNORE INTO main._attachments_delta(id)
             SELECT g.id FROM ({gone}) AS g
             WHERE EXISTS (SELECT 1 FROM main._attachments_ref AS r WHERE r.watch = :watch AND r.id = g.id)"
        ),
        w,
    )?;
    conn.execute(&format!("DELETE FROM main._attachments_ref WHERE watch = :watch AND id IN ({gone})"), w)?;
    // New or changed: the same comparison as a full run, over the changed rows' results.
    conn.execute("INSERT OR IGNORE INTO temp._attachments_fresh SELECT id, file_extension, media_type, meta_data, size, download, priority FROM temp._attachments_rows", [])?;
    note_new_or_changed(conn, name)?;
    conn.execute_batch("DELETE FROM temp._attachments_rows; DELETE FROM temp._attachments_cand; DELETE FROM temp._attachments_fresh;")?;
    conn.execute("DELETE FROM main._attachments_changed WHERE watch = ?1", [name])?;
    conn.execute("UPDATE main._attachments_watch SET dirty = 0 WHERE name = ?1", [name])?;
    Ok(Some(false))
}

/// Ids of `temp._attachments_fresh` that watch `name` did not reference with these
/// values: noted in `_attachments_delta` and stored as its references.
fn note_new_or_changed(conn: &Connection, name: &str) -> Result<()> {
    // language=SQLite
    conn.execute(
        "INSERT OR IGNORE INTO main._attachments_delta(id)
         SELECT f.id FROM temp._attachments_fresh AS f
         WHERE NOT EXISTS (SELECT 1 FROM main._attachments_ref AS r
                           WHERE r.watch = ?1 AND r.id = f.id AND r.file_extension IS f.file_extension
                             AND r.media_type IS f.media_type AND r.meta_data IS f.meta_data
                             AND r.size IS f.size AND r.download IS f.download AND r.priority IS f.priority)",
        [name],
    )?;
    // language=SQLite
    store_refs(
        conn,
        "OR REPLACE",
        "SELECT * FROM temp._attachments_fresh WHERE id IN (SELECT id FROM main._attachments_delta)",
        named_params! {":watch": name},
    )
}

/// Writes the rows of `source` (id, file_extension, media_type, meta_data, size,
/// download, priority) as watch `:watch`'s references, with the file name and guessed
/// media type computed once here.
fn store_refs(conn: &Connection, conflict: &str, source: &str, params: &[(&str, &dyn rusqlite::ToSql)]) -> Result<()> {
    // language=SQLite
    conn.execute(
        &format!(
            "INSERT {conflict} INTO main._attachments_ref(watch, id, file_extension, media_type, meta_data, filename, guessed_type,
                                                           size, download, priority)
             SELECT :watch, id, file_extension, media_type, meta_data, filename, attachment_media_type(filename), size, download, priority
             FROM (SELECT s.*, attachment_filename(s.id, coalesce(s.file_extension, '')) AS filename FROM ({source}) AS s)"
        ),
        params,
    )?;
    Ok(())
}

/// `_attachments_watch.dirty`: the watch's tables changed (or it is new) since its query last ran.
pub const DIRTY: i64 = 1;


/// Marks dirty every watch due to re-run ([`due`]), or every watch with `force`.
fn mark_due(conn: &Connection, now: i64, force: bool) -> Result<()> {
    if force {
        conn.execute("UPDATE main._attachments_watch SET dirty = ?1 WHERE dirty != ?1", [DIRTY])?;
    } else {
        conn.execute(
            &format!("UPDATE main._attachments_watch SET dirty = :dirty WHERE dirty != :dirty AND ({})", due()),
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
    let dirty: Vec<(String, String, String, i64)> = conn
        .prepare(
            "SELECT name, query, options, dirty FROM main._attachments_watch AS w
             WHERE dirty != 0 OR EXISTS (SELECT 1 FROM main._attachments_changed AS c WHERE c.watch = w.name)
             ORDER BY name",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut full = false;
    for (name, query, options, how) in &dirty {
        conn.execute_batch("SAVEPOINT _attachments_watch_run")?;
        let outcome = crate::watch::run(conn, config, name, query, options, *how);
        if outcome.is_err() {
            // SQLite rolled the whole transaction back (a full disk, an I/O error): there
            // is no savepoint left to return to, and it is not the watch's fault.
            if conn.is_autocommit() {
                return outcome;
            }
            conn.execute_batch("ROLLBACK TO _attachments_watch_run")?;
        }
        conn.execute_batch("RELEASE _attachments_watch_run")?;
        let storage_failed = |e: &Error| {
            matches!(e, Error::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure))
        };
        let error = match outcome {
            Ok(first) => {
                full |= first;
                None
            }
            // Busy, out of space, or interrupted because the pass is stopping: not the watch's fault.
            Err(e) if e.is_busy() || storage_failed(&e) || crate::cancel::requested() => return Err(e),
            Err(e) => {
                log::warn!("watch {name} failed: {e}");
                Some(e.to_string())
            }
        };
        conn.execute(
            "UPDATE main._attachments_watch SET dirty = 0, state = ?2, last_error = ?3, last_run = ?4 WHERE name = ?1",
            rusqlite::params![name, if error.is_some() { "failed" } else { "ok" }, error, now],
        )?;
        if error.is_some() {
            // Its rows noted so far are dropped and its next run is a full one, so a failed
            // watch is not retried on every pass, only when its tables change again.
            conn.execute("DELETE FROM main._attachments_changed WHERE watch = ?1", [name])?;
            conn.execute("UPDATE main._attachments_watch SET rows_sql = NULL WHERE name = ?1", [name])?;
        }
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
    conn.execute_batch(crate::schema::ROWS_DDL)?;
    mark_due(conn, now, force)?;
    let force = refresh_dirty_watches(conn, config, now)? || force;
    let t = quote_ident(&config.table);
    let in_scope = |col: &str| {
        if force { String::new() } else { format!("AND {col} IN (SELECT id FROM main._attachments_delta)") }
    };
    // Each reference carries its watch's policy (download or not, priority); an id
    // several watches reference gets the most generous: downloaded if any of them
    // downloads it, at the highest priority.
    let downloadable = |col: &str| {
        format!("AND EXISTS (SELECT 1 FROM main._attachments_ref AS d WHERE d.id = {col} AND d.download = 1)")
    };
    let mut out = Reconciled::default();
    let referenced = referenced_in(conn, &in_scope("id"))?;
    // Counted only when a reference without a file name exists: the count groups every
    // reference, the check does not.
    let any_unsafe: bool = conn.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM main._attachments_ref WHERE filename IS NULL {})", in_scope("id")),
        [],
        |r| r.get(0),
    )?;
    if any_unsafe {
        out.rejected = conn.query_row(&format!("SELECT count(*) FROM ({referenced}) WHERE filename IS NULL"), [], |r| r.get::<_, i64>(0))? as usize;
    }
    if out.rejected > 0 {
        log::warn!("{} referenced ids skipped: unsafe id or file_extension", out.rejected);
    }
    // Referenced, no row: download it (when downloads are on and a policy downloads it).
    let queue = QueueTable::unclaimed(conn, &config.table);
    if config.download_attachments {
        out.queued = queue.queue_downloads(&referenced, "AND r.download = 1", now)?;
    }
    // Referenced, ARCHIVED: back to SYNCED with its local copy if it was uploaded; a local
    // copy never uploaded goes up again; without one, download again. A download given
    // up (404, 410, max_attempts) stays given up until attachment_retry.
    out.restored =
        queue.restore_referenced(&downloadable(&format!("{t}.id")), &in_scope("id"), now, config.download_attachments)?;
    // Not referenced, SYNCED or QUEUED_DOWNLOAD: archive. Uploads and deletes finish first.
    // Not while a failed watch has no last good set (it failed before it ever ran well):
    // what it references is unknown. Its first good run compares every row.
    if !blind_watch(conn)? {
        out.archived = queue.archive_unreferenced(&in_scope("id"), now)?;
    }
    // Every row takes the highest priority of the watches that reference it (0 for none).
    queue.set_priorities(&in_scope("id"))?;
    conn.execute("DELETE FROM main._attachments_delta", [])?;
    Ok(out)
}

/// The referenced ids in `scope` (an `AND ...` on `id`), one row each: (id, filename,
/// media_type, meta_data, download, priority), from the references of existing watches
/// (a row a hand edit left for another name counts for nothing). Watches that agree on nothing: the
/// smallest file name wins; the file name is NULL when id or extension is unsafe; the
/// most generous policy wins (downloaded if any watch downloads it, highest priority).
pub fn referenced(scope: &str) -> String {
    // language=SQLite
    format!(
        "SELECT id, min(filename) AS filename, coalesce(max(media_type), min(guessed_type)) AS media_type,
                max(meta_data) AS meta_data, max(download) AS download, max(priority) AS priority
         FROM main._attachments_ref WHERE watch IN (SELECT name FROM main._attachments_watch) {scope} GROUP BY id"
    )
}

/// [`referenced`], or with a single watch (the common case) the same rows read straight
/// from that watch's references: each id is there once, so there is nothing to group, and
/// the table is read in its own order instead of through the index by id (a third of a
/// reconciliation from scratch at 100,000 ids).
fn referenced_in(conn: &Connection, scope: &str) -> Result<String> {
    let watches: Vec<String> =
        conn.prepare("SELECT name FROM main._attachments_watch LIMIT 2")?.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    let [watch] = watches.as_slice() else { return Ok(referenced(scope)) };
    // The name as a hex literal: whatever bytes a hand-edited row holds, it stays a value.
    // language=SQLite
    Ok(format!(
        "SELECT id, filename, coalesce(media_type, guessed_type) AS media_type, meta_data, download, priority
         FROM main._attachments_ref WHERE watch = CAST(x'{}' AS TEXT) {scope}",
        hex::encode(watch.as_bytes())
    ))
}

/// Whether a watch is failed without any reference kept from a good run.
fn blind_watch(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM main._attachments_watch AS w
                        WHERE w.state = 'failed' AND NOT EXISTS (SELECT 1 FROM main._attachments_ref AS r WHERE r.watch = w.name))",
        [],
        |r| r.get(0),
    )?)
}

/// Notes an upload just recorded as SYNCED for comparison, when there is a watch to
/// compare it with (without one nothing is archived, and the note would stay).
pub fn note_uploaded(conn: &Connection, id: &str) -> Result<()> {
    crate::connection::exec_cached(conn, 
        "INSERT OR IGNORE INTO main._attachments_delta(id) SELECT ?1 WHERE EXISTS (SELECT 1 FROM main._attachments_watch)",
        [id],
    )?;
    Ok(())
}

/// How often the worker re-runs every watch in full although no trigger fired
/// ([`recheck_watches`]): `sync_interval_ms`, but at least a minute.
/// `SQLITE_ATTACHMENTS_RECHECK_MS` overrides it (for tests).
pub fn recheck_every(sync_interval_ms: u64) -> std::time::Duration {
    let ms = std::env::var("SQLITE_ATTACHMENTS_RECHECK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| sync_interval_ms.max(60_000));
    std::time::Duration::from_millis(ms)
}

/// The worker's safety net: marks every watch that last ran well for a full re-run by
/// the next pass, so a change no trigger saw (a shape of table or write they cannot
/// follow, a query that depends on time without `refresh_ms`) is caught within
/// [`recheck_every`]. A full run writes only what differs, and only the ids whose
/// references changed are compared with the queue. Failed watches wait for a change.
pub fn recheck_watches(conn: &Connection) -> Result<usize> {
    Ok(conn.execute("UPDATE main._attachments_watch SET dirty = ?1 WHERE dirty != ?1 AND state = 'ok'", [DIRTY])?)
}

/// Notes that `id` needs comparing again by the next reconciliation (say, it was unpinned).
pub fn note_changed(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("INSERT OR IGNORE INTO main._attachments_delta(id) VALUES (?1)", [id])?;
    Ok(())
}
