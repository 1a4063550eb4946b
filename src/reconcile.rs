//! Watched ids against queue rows, with set-based SQL (no row-by-row loops).
//! The rules are the contract's; each statement below is one of them.

use rusqlite::{named_params, Connection};

use crate::config::Config;
use crate::queue::table::QueueTable;
use crate::error::Result;
use crate::queue::now_ms;
use crate::schema::quote_ident;
use crate::store::LocalStore;
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

/// Whether the cache holds more ARCHIVED rows than the limit allows.
pub fn expiry_needed(conn: &Connection, config: &Config) -> Result<bool> {
    Ok(QueueTable::unclaimed(conn, &config.table).evictable_count()? > config.archived_cache_limit)
}

/// Re-runs one watch's query and brings `_attachments_ref` up to date by difference:
/// only ids that appeared, vanished or changed (their columns or what `policy` decides
/// for them) are written, and they are noted in `_attachments_delta` for the next
/// comparison. A watch with no references yet (new) skips the notes and returns true:
/// everything must be compared anyway.
pub fn refresh_watch(conn: &Connection, name: &str, select_sql: &str, policy: &Policy) -> Result<bool> {
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
    )?;
    conn.execute("DELETE FROM temp._attachments_fresh", [])?;
    conn.execute("UPDATE main._attachments_watch SET dirty = 0 WHERE name = ?1", [name])?;
    Ok(false)
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
    let dirty: Vec<(String, String, String)> = conn
        .prepare("SELECT name, query, options FROM main._attachments_watch WHERE dirty = ?1 ORDER BY name")?
        .query_map([DIRTY], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut full = false;
    for (name, query, options) in &dirty {
        conn.execute_batch("SAVEPOINT _attachments_watch_run")?;
        let outcome = crate::watch::run(conn, config, name, query, options);
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
    // Each reference carries its watch's policy (download or not, priority); an id
    // several watches reference gets the most generous: downloaded if any of them
    // downloads it, at the highest priority.
    let downloadable = |col: &str| {
        format!("AND EXISTS (SELECT 1 FROM main._attachments_ref AS d WHERE d.id = {col} AND d.download = 1)")
    };
    let mut out = Reconciled::default();
    // One row per referenced id in scope (watches that agree on nothing: the smallest
    // file name wins); the file name is NULL when id or extension is unsafe.
    let referenced = format!(
        "SELECT id, min(filename) AS filename, coalesce(max(media_type), min(guessed_type)) AS media_type,
                max(meta_data) AS meta_data, max(download) AS download, max(priority) AS priority
         FROM main._attachments_ref WHERE 1 {} GROUP BY id",
        in_scope("id")
    );
    out.rejected = conn.query_row(&format!("SELECT count(*) FROM ({referenced}) WHERE filename IS NULL"), [], |r| r.get::<_, i64>(0))? as usize;
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
    out.archived = queue.archive_unreferenced(&in_scope("id"), now)?;
    // Every row takes the highest priority of the watches that reference it (0 for none).
    queue.set_priorities(&in_scope("id"))?;
    conn.execute("DELETE FROM main._attachments_delta", [])?;
    Ok(out)
}

/// Removes ARCHIVED rows beyond `archived_cache_limit`, oldest first, with their
/// local files. Remote objects stay: other devices may still reference them.
/// Runs in the caller's transaction; returns the number of rows removed.
pub fn expire_cache(conn: &Connection, config: &Config, store: &LocalStore) -> Result<usize> {
    let queue = QueueTable::unclaimed(conn, &config.table);
    let victims = queue.eviction_victims(config.archived_cache_limit)?;
    let mut expired = 0;
    for (id, local_uri) in &victims {
        if let Some(file) = local_uri {
            // A file that cannot be removed keeps its row, so verify can try again.
            if let Err(e) = store.remove(file) {
                log::warn!("cache expiry could not remove {file}: {e}");
                continue;
            }
        }
        if queue.expire(id)? {
            expired += 1;
        }
    }
    Ok(expired)
}
