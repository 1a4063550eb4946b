//! The queue table's transfer transitions: claiming a row, renewing and dropping
//! the claim, and recording what its transfer ended in. Each is one guarded
//! statement: it changes a row only in the state it expects and only while this
//! process still holds the claim, so a result that arrives late (a lapsed lease
//! another worker took over, a row the app deleted meanwhile) changes nothing.
//! The other transitions (save, delete, retry, reconciliation, verify, expiry) are
//! here too, so these statements are the only ones that change a row's state.
//! Every method runs in the caller's transaction.

use crate::connection::{exec_cached, query_row_cached};
use rusqlite::{named_params, params, Connection};

use super::{now_ms, State};
use crate::error::Result;
use crate::schema::quote_ident;

// State codes spelled once, for the SQL below; nothing outside this file writes a state.
const UPLOAD: i64 = State::QueuedUpload as i64;
const DOWNLOAD: i64 = State::QueuedDownload as i64;
const DELETE: i64 = State::QueuedDelete as i64;
const SYNCED: i64 = State::Synced as i64;
const ARCHIVED: i64 = State::Archived as i64;
/// The queue states a transfer starts from.
const QUEUED: &str = "(0, 1, 2)";
const _: () = assert!(UPLOAD == 0 && DOWNLOAD == 1 && DELETE == 2, "QUEUED spells these codes");

/// A claimed row: what its transfer needs.
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

/// An ARCHIVED row the cache is to evict.
#[derive(Debug, Clone, PartialEq)]
pub struct Victim {
    pub id: String,
    pub local_uri: Option<String>,
    /// What its local copy takes (0 without one).
    pub bytes: i64,
}

/// The queue table of one config, seen by one claim owner.
pub struct QueueTable<'c> {
    conn: &'c Connection,
    /// Quoted table name.
    t: String,
    /// The table's name as configured (index names derive from it).
    table: String,
    owner: &'c str,
}

/// Columns cleared when a claim ends.
const UNCLAIM: &str = "claimed_by = NULL, claimed_until = NULL, bytes_done = NULL, started_at = NULL";
/// Columns reset when a transfer succeeds.
const SUCCESS: &str = "attempts = 0, next_attempt_at = 0, last_error = NULL";

impl<'c> QueueTable<'c> {
    /// The queue as seen by claim owner `owner` (a pass).
    pub fn new(conn: &'c Connection, table: &str, owner: &'c str) -> QueueTable<'c> {
        QueueTable { conn, t: quote_ident(table), table: table.to_string(), owner }
    }

    /// The queue for transitions that involve no claim (save, delete, reconciliation,
    /// verify, expiry). Its claim methods match no row: the empty owner holds nothing.
    pub fn unclaimed(conn: &'c Connection, table: &str) -> QueueTable<'c> {
        QueueTable::new(conn, table, "")
    }

    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        exec_cached(self.conn, sql, params)
    }

    fn query_row<T, P: rusqlite::Params>(&self, sql: &str, params: P, f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        query_row_cached(self.conn, sql, params, f)
    }

    /// `attachment_init` with another `remote`: the new remote holds none of the files.
    /// SYNCED rows with their local copy → QUEUED_UPLOAD; other rows forget they were
    /// uploaded (an ARCHIVED copy restored later goes up again) and any half-done multipart
    /// upload, which belonged to the old remote. Rows without a local copy cannot be moved:
    /// their downloads will find what the new remote has.
    pub fn remote_changed(&self) -> Result<usize> {
        let t = &self.t;
        let moved = self.exec(
            &format!(
                "UPDATE main.{t} SET state = {UPLOAD}, has_synced = 0, timestamp = ?1, upload_resume = NULL, {SUCCESS}
                 WHERE state = {SYNCED} AND local_uri IS NOT NULL"
            ),
            [now_ms()],
        )?;
        self.exec(&format!("UPDATE main.{t} SET has_synced = 0, upload_resume = NULL WHERE has_synced = 1 OR upload_resume IS NOT NULL"), [])?;
        Ok(moved)
    }

    /// → QUEUED_UPLOAD: a file saved here, complete and durable in `local_dir`.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_upload(&self, id: &str, filename: &str, size: u64, media_type: &str, meta_data: Option<&str>, sha256: &str) -> Result<()> {
        let t = &self.t;
        self.exec(
            &format!(
                "INSERT INTO main.{t}(id, filename, local_uri, timestamp, size, media_type, state, has_synced, meta_data, sha256, last_used)
                 VALUES (?1, ?2, ?2, ?3, ?4, ?5, {UPLOAD}, 0, ?6, ?7, ?3)"
            ),
            params![id, filename, now_ms(), size as i64, media_type, meta_data, sha256],
        )?;
        Ok(())
    }

    /// Any state → QUEUED_DELETE (`attachment_delete`). False when there is no such row.
    pub fn mark_for_delete(&self, id: &str) -> Result<bool> {
        let t = &self.t;
        let n = self.exec(
            &format!(
                "UPDATE main.{t} SET state = {DELETE}, timestamp = ?2, {SUCCESS} WHERE id = ?1"
            ),
            params![id, now_ms()],
        )?;
        Ok(n > 0)
    }

    /// `attachment_retry`: a given-up download (ARCHIVED) → QUEUED_DOWNLOAD, and a queued row
    /// waiting out a backoff → due now. `id` None means every such row.
    pub fn retry(&self, id: Option<&str>) -> Result<usize> {
        let t = &self.t;
        Ok(self.exec(
            &format!(
                "UPDATE main.{t} SET state = CASE WHEN state = {ARCHIVED} THEN {DOWNLOAD} ELSE state END, given_up = 0,
                     attempts = 0, next_attempt_at = 0
                 WHERE (?1 IS NULL OR id = ?1)
                   AND ((state = {ARCHIVED} AND given_up = 1) OR (state IN {QUEUED} AND (attempts > 0 OR next_attempt_at > 0)))"
            ),
            [id],
        )?)
    }

    /// `state` as reconciliation's statements test it: with a scope (a few changed ids),
    /// `+state`, so SQLite looks the ids up by key instead of walking every row of a
    /// state through the state index (which made one change cost a pass over the queue).
    fn state_column(scope: &str) -> &'static str {
        if scope.is_empty() {
            "state"
        } else {
            "+state"
        }
    }

    /// Reconciliation, referenced and no row → QUEUED_DOWNLOAD. `referenced` is a query of
    /// (id, filename, media_type, meta_data, download, priority); `filter` an extra `AND ...` on `r`.
    pub fn queue_downloads(&self, referenced: &str, filter: &str, now: i64) -> Result<usize> {
        let t = &self.t;
        Ok(self.exec(
            &format!(
                "INSERT INTO main.{t}(id, filename, local_uri, timestamp, size, media_type, state, has_synced, meta_data, priority)
                 SELECT r.id, r.filename, NULL, ?1, NULL, r.media_type, {DOWNLOAD}, 0, r.meta_data, r.priority
                 FROM ({referenced}) AS r
                 WHERE r.filename IS NOT NULL AND NOT EXISTS (SELECT 1 FROM main.{t} AS q WHERE q.id = r.id) {filter}"
            ),
            [now],
        )?)
    }

    /// Reconciliation, referenced and ARCHIVED → SYNCED if its local copy is there and it
    /// was uploaded; QUEUED_UPLOAD if its local copy never reached remote storage;
    /// QUEUED_DOWNLOAD without a local copy (only when `download`). Given-up downloads stay.
    /// `filter` applies to `{t}.id` (download policy), `scope` to `id` (changed ids).
    pub fn restore_referenced(&self, filter: &str, scope: &str, now: i64, download: bool) -> Result<usize> {
        let t = &self.t;
        let state = Self::state_column(scope);
        Ok(self.exec(
            &format!(
                "UPDATE main.{t} SET state = CASE WHEN local_uri IS NULL THEN {DOWNLOAD} WHEN has_synced = 1 THEN {SYNCED} ELSE {UPLOAD} END,
                     timestamp = ?1, {SUCCESS}
                 WHERE {state} = {ARCHIVED} AND given_up = 0 AND (local_uri IS NOT NULL OR (?2 {filter})) {scope}
                   AND EXISTS (SELECT 1 FROM main._attachments_ref AS r WHERE r.id = {t}.id)"
            ),
            params![now, download],
        )?)
    }

    /// Reconciliation, not referenced, SYNCED or QUEUED_DOWNLOAD → ARCHIVED. Uploads and
    /// deletes finish first; so does the download of a pinned attachment (a pinned
    /// SYNCED row is archived like any other, and keeps its file: see `evictable`).
    /// `scope` applies to `id`.
    pub fn archive_unreferenced(&self, scope: &str, now: i64) -> Result<usize> {
        let t = &self.t;
        let state = Self::state_column(scope);
        Ok(self.exec(
            &format!(
                "UPDATE main.{t} SET state = {ARCHIVED}, given_up = 0, timestamp = ?1
                 WHERE {state} IN ({DOWNLOAD}, {SYNCED}) AND NOT (state = {DOWNLOAD} AND pinned != 0) {scope}
                   AND NOT EXISTS (SELECT 1 FROM main._attachments_ref AS r WHERE r.id = {t}.id)"
            ),
            [now],
        )?)
    }

    /// Reconciliation: each row in `scope` (applied to `id`) takes the highest priority of
    /// the watches referencing it, 0 when none does (no state change). Skipped when no
    /// watch sets a priority and no row has one: the common case costs nothing per row.
    pub fn set_priorities(&self, scope: &str) -> Result<usize> {
        let t = &self.t;
        let any: bool = self.query_row(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM main._attachments_watch
                                WHERE CASE WHEN json_valid(options) THEN json_extract(options, '$.priority') END != 0)
                     OR EXISTS (SELECT 1 FROM main.{t} WHERE priority != 0)"
            ),
            [],
            |r| r.get(0),
        )?;
        if !any {
            return Ok(0);
        }
        Ok(self.exec(
            &format!(
                "UPDATE main.{t} SET priority = {best} WHERE 1 {scope} AND priority != {best}",
                best = format!("coalesce((SELECT max(r.priority) FROM main._attachments_ref AS r WHERE r.id = {t}.id), 0)")
            ),
            [],
        )?)
    }

    /// ARCHIVED rows (`q`) the cache may evict, and so count toward its limits: not pinned,
    /// not a given-up download something still references, and not a local copy the
    /// remote does not have (`has_synced = 0`: saved here and never uploaded, or uploaded
    /// only to a remote that was replaced): that copy may be the only one anywhere.
    fn evictable() -> String {
        format!(
            "state = {ARCHIVED} AND pinned = 0
             AND NOT (local_uri IS NOT NULL AND has_synced = 0)
             AND NOT (given_up = 1 AND EXISTS (SELECT 1 FROM main._attachments_ref AS r WHERE r.id = q.id))"
        )
    }

    /// The bytes a row's local copy takes (its recorded size; nothing without a copy).
    pub const BYTES: &'static str = "CASE WHEN q.local_uri IS NOT NULL THEN max(coalesce(q.size, 0), 0) ELSE 0 END";

    /// The rows that count toward the cache limits: (rows, bytes of their local copies).
    pub fn evictable_totals(&self) -> Result<(i64, i64)> {
        let t = &self.t;
        Ok(self.query_row(
            &format!("SELECT count(*), coalesce(sum({}), 0) FROM main.{t} AS q WHERE {}", Self::BYTES, Self::evictable()),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    /// The evictable rows that do not fit the limits, least recently used first: the
    /// most recently used are kept while at most `keep_rows` of them hold at most
    /// `keep_bytes` (None: no limit) together, the rest go. Last use is `last_used`
    /// (the row's `timestamp` for rows from before it was kept), or the later time in
    /// `pending`, a JSON object of uses not yet written (`{"id": ms, ...}`).
    pub fn eviction_victims(&self, keep_rows: i64, keep_bytes: Option<i64>, pending: Option<&str>) -> Result<Vec<Victim>> {
        let t = &self.t;
        let (join, used) = match pending {
            Some(_) => (
                "LEFT JOIN (SELECT key, value FROM json_each(?3)) AS p ON p.key = q.id",
                "max(coalesce(q.last_used, q.timestamp), coalesce(p.value, 0))",
            ),
            None => ("", "coalesce(q.last_used, q.timestamp)"),
        };
        // language=SQLite
        let sql = format!(
            "SELECT id, local_uri, bytes FROM (
                 SELECT id, local_uri, bytes, used,
                        row_number() OVER newest AS n, sum(bytes) OVER newest AS kept_bytes
                 FROM (SELECT q.id, q.local_uri, {bytes} AS bytes, {used} AS used
                       FROM main.{t} AS q {join} WHERE {evictable})
                 WINDOW newest AS (ORDER BY used DESC, id DESC ROWS UNBOUNDED PRECEDING))
             WHERE n > ?1 OR (?2 IS NOT NULL AND kept_bytes > ?2)
             ORDER BY used, id",
            bytes = Self::BYTES,
            evictable = Self::evictable(),
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = match pending {
            Some(p) => stmt.query(params![keep_rows, keep_bytes, p])?,
            None => stmt.query(params![keep_rows, keep_bytes])?,
        };
        Ok(rows
            .mapped(|r| Ok(Victim { id: r.get(0)?, local_uri: r.get(1)?, bytes: r.get(2)? }))
            .collect::<rusqlite::Result<_>>()?)
    }

    /// ARCHIVED → gone (cache expiry; its local file was removed first). Never a pinned row.
    pub fn expire(&self, id: &str) -> Result<bool> {
        let t = &self.t;
        Ok(self.exec(
            &format!("DELETE FROM main.{t} WHERE id = ?1 AND state = {ARCHIVED} AND pinned = 0 AND NOT (local_uri IS NOT NULL AND has_synced = 0)"),
            [id],
        )? > 0)
    }

    /// Records that `id` was used (read or saved) at `at`; an earlier time never
    /// replaces a later one. No state change.
    pub fn record_use(&self, id: &str, at: i64) -> Result<()> {
        let t = &self.t;
        self.exec(
            &format!("UPDATE main.{t} SET last_used = ?2 WHERE id = ?1 AND (last_used IS NULL OR last_used < ?2)"),
            params![id, at],
        )?;
        Ok(())
    }

    /// `attachment_pin` / `attachment_unpin`: true when the row exists. No state change
    /// (a pinned ARCHIVED row without its copy is queued by [`Self::download_pinned`]).
    pub fn set_pinned(&self, id: &str, pinned: bool) -> Result<bool> {
        let t = &self.t;
        Ok(self.exec(&format!("UPDATE main.{t} SET pinned = ?2 WHERE id = ?1"), params![id, pinned])? > 0)
    }

    /// `attachment_pin` of an id with no row that a watch references but whose policy does
    /// not download it: a pinned QUEUED_DOWNLOAD row. `referenced` is reconciliation's query
    /// of (id, filename, media_type, meta_data), restricted to this id. True when inserted.
    pub fn insert_pinned_download(&self, referenced: &str, id: &str) -> Result<bool> {
        let t = &self.t;
        Ok(self.exec(
            &format!(
                "INSERT INTO main.{t}(id, filename, local_uri, timestamp, size, media_type, state, has_synced, meta_data, pinned)
                 SELECT r.id, r.filename, NULL, ?2, NULL, r.media_type, {DOWNLOAD}, 0, r.meta_data, 1
                 FROM ({referenced}) AS r
                 WHERE r.id = ?1 AND r.filename IS NOT NULL AND NOT EXISTS (SELECT 1 FROM main.{t} AS q WHERE q.id = r.id)"
            ),
            params![id, now_ms()],
        )? > 0)
    }

    /// Pinned ARCHIVED rows without a local copy → QUEUED_DOWNLOAD: a pinned attachment is
    /// kept on the device. A given-up download stays given up until `attachment_retry`.
    /// `id` None means every such row.
    pub fn download_pinned(&self, id: Option<&str>) -> Result<usize> {
        let t = &self.t;
        Ok(self.exec(
            &format!(
                "UPDATE main.{t} SET state = {DOWNLOAD}, timestamp = ?2, {SUCCESS}
                 WHERE (?1 IS NULL OR id = ?1) AND state = {ARCHIVED} AND pinned = 1 AND local_uri IS NULL AND given_up = 0"
            ),
            params![id, now_ms()],
        )?)
    }

    /// Verify: SYNCED whose local copy vanished (or had the wrong size, and was removed)
    /// → QUEUED_DOWNLOAD.
    pub fn requeue_lost_copy(&self, id: &str, wrong_size: bool) -> Result<()> {
        let t = &self.t;
        let why = if wrong_size { "local: local file has the wrong size: downloading again" } else { "local: local file missing: downloading again" };
        self.exec(
            &format!(
                "UPDATE main.{t} SET state = {DOWNLOAD}, local_uri = NULL, timestamp = ?2, attempts = 0, next_attempt_at = 0,
                     last_error = ?3 WHERE id = ?1 AND state = {SYNCED}"
            ),
            params![id, now_ms(), why],
        )?;
        Ok(())
    }

    /// Verify: QUEUED_UPLOAD whose file is gone (not found) → ARCHIVED; nothing can be sent.
    pub fn archive_lost_upload(&self, id: &str) -> Result<()> {
        let t = &self.t;
        self.exec(
            &format!(
                "UPDATE main.{t} SET state = {ARCHIVED}, local_uri = NULL, timestamp = ?2,
                     last_error = 'local: local file missing: nothing to upload' WHERE id = ?1 AND state = {UPLOAD}"
            ),
            params![id, now_ms()],
        )?;
        self.remember_error(id, "local: local file missing: nothing to upload")?;
        Ok(())
    }

    /// Verify: a QUEUED_DOWNLOAD whose complete file was renamed into place before a crash
    /// kept it from being recorded → SYNCED.
    pub fn record_found_download(&self, id: &str, filename: &str, size: u64, sha256: &str) -> Result<()> {
        let t = &self.t;
        self.exec(
            &format!(
                "UPDATE main.{t} SET state = {SYNCED}, local_uri = ?2, size = ?3, sha256 = ?4, has_synced = 1, timestamp = ?5,
                     {SUCCESS} WHERE id = ?1 AND state = {DOWNLOAD}"
            ),
            params![id, filename, size as i64, sha256, now_ms()],
        )?;
        Ok(())
    }

    /// Verify: rows edited by hand into something no transition handles (an id or filename
    /// that is not TEXT, an unknown state) get an error saying they are left alone.
    pub fn note_hand_edited_rows(&self) -> Result<()> {
        let t = &self.t;
        self.exec(
            &format!(
                "UPDATE main.{t} SET last_error = ?1
                 WHERE (typeof(id) != 'text' OR typeof(filename) != 'text' OR typeof(state) != 'integer'
                        OR state NOT BETWEEN {UPLOAD} AND {ARCHIVED}) AND last_error IS NOT ?1"
            ),
            ["local: the row was edited by hand and is left alone: id and filename must be TEXT, state 0 to 4"],
        )?;
        Ok(())
    }

    /// Records why a row is left alone (no state change), once.
    pub fn note_error(&self, id: &str, message: &str) -> Result<()> {
        let t = &self.t;
        self.exec(&format!("UPDATE main.{t} SET last_error = ?2 WHERE id = ?1 AND last_error IS NOT ?2"), params![id, message])?;
        Ok(())
    }

    /// Verify: `local_uri` made to match what is on disk (no state change).
    pub fn set_local_uri(&self, id: &str, local_uri: Option<&str>) -> Result<()> {
        let t = &self.t;
        self.exec(&format!("UPDATE main.{t} SET local_uri = ?2, timestamp = ?3 WHERE id = ?1"), params![id, local_uri, now_ms()])?;
        Ok(())
    }

    /// Rows a pass may claim now: queued, due, present when the pass began (`?1` is the
    /// largest rowid then, so a stream of new saves cannot keep one pass going for ever;
    /// a rowid, not a time, so a clock that steps back delays nothing), and not held by
    /// a live claim. Rows this process holds are never taken
    /// again, even when their lease has lapsed (a renewal may be late; the transfer is
    /// still ours). Rows whose id or filename is not TEXT (edited by hand) are never
    /// claimed: they cannot name a file, and reading them would fail the whole pass.
    /// Rows due by `:due_by` (the pass's start: a row that fails during a pass waits for
    /// the next one, however short its backoff) whose claims, if any, lapsed by `:now`.
    fn claimable(&self) -> String {
        format!(
            "state IN {QUEUED} AND next_attempt_at <= :due_by AND rowid <= :last_rowid
             AND (claimed_until IS NULL OR claimed_until < :now) AND claimed_by IS NOT :owner
             AND typeof(id) = 'text' AND typeof(filename) = 'text'"
        )
    }

    /// The largest rowid now: rows up to it are this pass's to claim.
    pub fn last_rowid(&self) -> Result<i64> {
        let t = &self.t;
        Ok(self.query_row(&format!("SELECT coalesce(max(rowid), 0) FROM main.{t}"), [], |r| r.get(0))?)
    }

    /// Whether any row is claimable: a read, so an idle pass takes no write lock.
    pub fn any_claimable(&self, last_rowid: i64, due_by: i64) -> Result<bool> {
        let t = &self.t;
        Ok(self.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM main.{t} WHERE {})", self.claimable()),
            named_params! {":last_rowid": last_rowid, ":now": now_ms(), ":owner": self.owner, ":due_by": due_by},
            |r| r.get(0),
        )?)
    }

    /// Claims up to `limit` rows for `lease_ms`: the highest priority first (the most
    /// generous watch referencing the row), then uploads (their files exist nowhere
    /// else), then downloads, then deletes, oldest first.
    pub fn claim(&self, last_rowid: i64, due_by: i64, limit: usize, lease_ms: i64) -> Result<Vec<Job>> {
        let t = &self.t;
        let now = now_ms();
        // language=SQLite
        let sql = format!(
            "SELECT id, filename, local_uri, state, media_type, sha256, attempts, upload_resume
             FROM main.{t} INDEXED BY {}
             WHERE {} ORDER BY priority DESC, state, timestamp LIMIT :limit",
            crate::schema::claim_index(&self.table),
            self.claimable()
        );
        // Named, because SQLite's planner prefers the index by state and then sorts every
        // queued row. Made again if someone dropped it or put another index under its name
        // (a schema tool, a hand edit): the `_attachments_` names are ours.
        let mut select = match self.conn.prepare_cached(&sql) {
            Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.starts_with("no such index") || msg.starts_with("no query solution") => {
                log::warn!("the queue's claim-order index was missing or not ours ({msg}): created again");
                self.conn.execute_batch(&format!("DROP INDEX IF EXISTS main.{}", crate::schema::claim_index(&self.table)))?;
                crate::schema::claim_order_index(self.conn, &self.table)?;
                self.conn.prepare_cached(&sql)?
            }
            other => other?,
        };
        let jobs: Vec<Job> = select
            .query_map(named_params! {":last_rowid": last_rowid, ":now": now, ":owner": self.owner, ":due_by": due_by, ":limit": limit as i64}, |r| {
                Ok((
                    r.get::<_, i64>(3)?,
                    Job {
                        id: r.get(0)?,
                        filename: r.get(1)?,
                        local_uri: r.get(2)?,
                        state: State::QueuedUpload,
                        media_type: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                        sha256: r.get(5)?,
                        attempts: r.get(6)?,
                        resume: r.get(7)?,
                    },
                ))
            })?
            .filter_map(|row| match row {
                // The query selects queued states only; anything else is never a job.
                Ok((code, job)) => State::from_code(code).filter(|s| s.is_queued()).map(|state| Ok(Job { state, ..job })),
                Err(e) => Some(Err(e)),
            })
            .collect::<rusqlite::Result<_>>()?;
        let mut mark = self.conn.prepare_cached(&format!(
            "UPDATE main.{t} SET claimed_by = ?2, claimed_until = ?3 WHERE id = ?1 AND state IN {QUEUED}"
        ))?;
        for job in &jobs {
            mark.execute(params![job.id, self.owner, now + lease_ms])?;
        }
        Ok(jobs)
    }

    /// Extends this owner's claim on `id` and publishes its progress: bytes moved, and when
    /// the transfer started moving them (ms; None while it waits for a transfer thread).
    pub fn renew(&self, id: &str, until: i64, bytes_done: Option<i64>, started_at: Option<i64>) -> Result<bool> {
        let t = &self.t;
        let n = self.exec(
            &format!("UPDATE main.{t} SET claimed_until = ?2, bytes_done = ?3, started_at = ?5 WHERE id = ?1 AND claimed_by = ?4"),
            params![id, until, bytes_done, self.owner, started_at],
        )?;
        Ok(n > 0)
    }

    /// Drops this owner's claim on `id`, leaving the row as it is (a cancelled transfer).
    pub fn release(&self, id: &str) -> Result<()> {
        let t = &self.t;
        self.exec(&format!("UPDATE main.{t} SET {UNCLAIM} WHERE id = ?1 AND claimed_by = ?2"), params![id, self.owner])?;
        Ok(())
    }

    /// Drops the claim of a transfer that was stopped (a stop or a pause), keeping the
    /// resume state it handed back (an S3 multipart upload's id and parts), if any.
    pub fn release_keeping(&self, id: &str, resume: Option<&str>) -> Result<()> {
        let t = &self.t;
        self.exec(
            &format!("UPDATE main.{t} SET upload_resume = coalesce(?3, upload_resume), {UNCLAIM} WHERE id = ?1 AND claimed_by = ?2"),
            params![id, self.owner, resume],
        )?;
        Ok(())
    }

    /// Frees every claim of `owner`, a process known to be gone.
    pub fn release_owner(&self, owner: &str) -> Result<usize> {
        let t = &self.t;
        Ok(self.exec(&format!("UPDATE main.{t} SET {UNCLAIM} WHERE claimed_by = ?1"), [owner])?)
    }

    /// Rows this owner holds claims on.
    pub fn held_by_owner(&self) -> Result<Vec<String>> {
        let t = &self.t;
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT id FROM main.{t} WHERE claimed_by = ?1"))?
            .query_map([self.owner], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// The distinct owners holding claims.
    pub fn claim_owners(&self) -> Result<Vec<String>> {
        let t = &self.t;
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT DISTINCT claimed_by FROM main.{t} WHERE claimed_by IS NOT NULL"))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// QUEUED_UPLOAD → SYNCED: the remote holds the complete file. An upload of a row
    /// the app marked for deletion meanwhile keeps QUEUED_DELETE (only has_synced changes).
    pub fn uploaded(&self, id: &str) -> Result<bool> {
        let t = &self.t;
        let n = self.exec(
            &format!(
                "UPDATE main.{t} SET state = CASE WHEN state = {UPLOAD} THEN {SYNCED} ELSE state END,
                     has_synced = 1, timestamp = ?2, upload_resume = NULL, {SUCCESS}, {UNCLAIM}
                 WHERE id = ?1 AND state IN ({UPLOAD}, {DELETE}) AND claimed_by = ?3"
            ),
            params![id, now_ms(), self.owner],
        )?;
        Ok(n > 0)
    }

    /// QUEUED_DOWNLOAD → SYNCED: the complete, checked file is in place locally.
    /// False when the row is no longer ours to finish (its file then has no owner).
    pub fn downloaded(&self, id: &str, size: u64, sha256: &str) -> Result<bool> {
        let t = &self.t;
        let n = self.exec(
            &format!(
                "UPDATE main.{t} SET state = {SYNCED}, local_uri = filename, size = ?2, sha256 = ?3, has_synced = 1,
                     timestamp = ?4, last_used = max(coalesce(last_used, 0), ?4), {SUCCESS}, {UNCLAIM}
                 WHERE id = ?1 AND state = {DOWNLOAD} AND claimed_by = ?5"
            ),
            params![id, size as i64, sha256, now_ms(), self.owner],
        )?;
        Ok(n > 0)
    }

    /// Whether the row still accounts for a file at its final name: it names it as its
    /// local copy, or a download of it (another worker's, after our lease lapsed) is queued.
    pub fn holds_local_copy(&self, id: &str) -> Result<bool> {
        let t = &self.t;
        Ok(self.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM main.{t} WHERE id = ?1 AND (local_uri = filename OR state = {DOWNLOAD}))"),
            [id],
            |r| r.get(0),
        )?)
    }

    /// QUEUED_DELETE → gone: the remote object is deleted. True when the row was removed.
    pub fn deleted(&self, id: &str) -> Result<bool> {
        let t = &self.t;
        let n = self
            .conn
            .execute(&format!("DELETE FROM main.{t} WHERE id = ?1 AND state = {DELETE} AND claimed_by = ?2"), params![id, self.owner])?;
        Ok(n > 0)
    }

    /// QUEUED_UPLOAD → ARCHIVED: the local file is gone (not found), so there is nothing to send.
    pub fn upload_source_missing(&self, id: &str) -> Result<bool> {
        let t = &self.t;
        let n = self.exec(
            &format!(
                "UPDATE main.{t} SET state = {ARCHIVED}, local_uri = NULL, timestamp = ?2,
                     last_error = 'local: local file missing: nothing to upload', {UNCLAIM}
                 WHERE id = ?1 AND state = {UPLOAD} AND claimed_by = ?3"
            ),
            params![id, now_ms(), self.owner],
        )?;
        if n > 0 {
            self.remember_error(id, "local: local file missing: nothing to upload")?;
        }
        Ok(n > 0)
    }

    /// A failed attempt: the row stays in `state`, due again at `retry_at`.
    pub fn failed(&self, job: &Job, attempts: i64, retry_at: i64, message: &str, resume: Option<&str>) -> Result<bool> {
        let t = &self.t;
        let n = self.exec(
            &format!(
                "UPDATE main.{t} SET attempts = ?2, next_attempt_at = ?3, last_error = ?4, upload_resume = ?6, {UNCLAIM}
                 WHERE id = ?1 AND state = ?5 AND claimed_by = ?7"
            ),
            params![job.id, attempts, retry_at, message, job.state as i64, resume, self.owner],
        )?;
        if n > 0 {
            self.remember_error(&job.id, message)?;
        }
        Ok(n > 0)
    }

    /// QUEUED_DOWNLOAD → ARCHIVED: the download is given up (404, 410, `max_attempts`).
    /// `given_up` keeps reconciliation from bringing it back until `attachment_retry`.
    pub fn give_up_download(&self, id: &str, attempts: i64, message: &str) -> Result<bool> {
        let t = &self.t;
        let n = self.exec(
            &format!(
                "UPDATE main.{t} SET state = {ARCHIVED}, given_up = 1, attempts = ?2, last_error = ?3, timestamp = ?4, {UNCLAIM}
                 WHERE id = ?1 AND state = {DOWNLOAD} AND claimed_by = ?5"
            ),
            params![id, attempts, message, now_ms(), self.owner],
        )?;
        if n > 0 {
            self.remember_error(id, message)?;
        }
        Ok(n > 0)
    }

    /// Rows still waiting for a transfer.
    pub fn pending(&self) -> Result<usize> {
        let t = &self.t;
        Ok(self.query_row(&format!("SELECT count(*) FROM main.{t} WHERE state IN {QUEUED}"), [], |r| r.get::<_, i64>(0))? as usize)
    }

    /// When the next row becomes claimable by this owner (ms since the epoch): its retry
    /// time, or the end of another owner's lease, whichever is later. Rows this owner
    /// holds are not counted: their results wake the pass.
    pub fn next_due(&self) -> Result<Option<i64>> {
        let t = &self.t;
        Ok(self.query_row(
            &format!(
                "SELECT min(max(next_attempt_at, coalesce(claimed_until, 0))) FROM main.{t}
                 WHERE state IN {QUEUED} AND claimed_by IS NOT ?1"
            ),
            [self.owner],
            |r| r.get(0),
        )?)
    }

    /// Counts the transfers a batch of results finished toward what `attachment_progress()`
    /// shows as done, in the transaction that records them: one statement per batch. The
    /// first result after the queue was seen empty starts the counts again.
    pub fn count_done(&self, done: &crate::sync::Summary) -> Result<()> {
        if done.uploaded + done.downloaded == 0 {
            return Ok(());
        }
        // language=SQLite
        self.exec(
            "UPDATE main._attachments_progress SET
                 upload_files = CASE WHEN drained = 1 THEN 0 ELSE upload_files END + ?1,
                 upload_bytes = CASE WHEN drained = 1 THEN 0 ELSE upload_bytes END + ?2,
                 download_files = CASE WHEN drained = 1 THEN 0 ELSE download_files END + ?3,
                 download_bytes = CASE WHEN drained = 1 THEN 0 ELSE download_bytes END + ?4,
                 samples = CASE WHEN drained = 1 THEN '[]' ELSE samples END,
                 since = CASE WHEN drained = 1 OR since IS NULL THEN ?5 ELSE since END,
                 drained = 0
             WHERE id = 1",
            params![done.uploaded as i64, done.uploaded_bytes as i64, done.downloaded as i64, done.downloaded_bytes as i64, now_ms()],
        )?;
        Ok(())
    }

    /// Notes that the queue is empty, when it is: the next result starts the done counts again.
    pub fn note_if_drained(&self) -> Result<()> {
        let t = &self.t;
        self.exec(
            &format!(
                "UPDATE main._attachments_progress SET drained = 1
                 WHERE id = 1 AND drained = 0 AND NOT EXISTS (SELECT 1 FROM main.{t} WHERE state IN {QUEUED})"
            ),
            [],
        )?;
        Ok(())
    }

    /// Keeps `message` as the most recent row error, for `attachment_progress()`.
    fn remember_error(&self, id: &str, message: &str) -> Result<()> {
        self.exec(
            "UPDATE main._attachments_progress SET last_error_id = ?1, last_error = ?2, last_error_at = ?3 WHERE id = 1",
            params![id, message, now_ms()],
        )?;
        Ok(())
    }

    /// attachment_fetch, referenced and no row → QUEUED_DOWNLOAD, claimed by this owner
    /// until `until` in the same step. False when a row appeared meanwhile.
    pub fn insert_fetched(&self, id: &str, filename: &str, media_type: Option<&str>, meta_data: Option<&str>, until: i64) -> Result<bool> {
        let t = &self.t;
        let n = self.exec(
            &format!(
                "INSERT INTO main.{t}(id, filename, local_uri, timestamp, size, media_type, state, has_synced, meta_data,
                                      claimed_by, claimed_until)
                 SELECT ?1, ?2, NULL, ?3, NULL, ?4, {DOWNLOAD}, 0, ?5, ?6, ?7
                 WHERE NOT EXISTS (SELECT 1 FROM main.{t} WHERE id = ?1)"
            ),
            params![id, filename, now_ms(), media_type, meta_data, self.owner, until],
        )?;
        Ok(n > 0)
    }

    /// attachment_fetch takes `id` for a download of its own, ahead of the queue and its
    /// backoff: a QUEUED_DOWNLOAD whose claim is still `seen_claim` (free, lapsed, or a dead
    /// process's), or a SYNCED or ARCHIVED row without its local copy (a given-up download
    /// included: fetch retries it) → QUEUED_DOWNLOAD claimed by this owner until `until`.
    /// False when the row changed since it was read.
    pub fn claim_for_fetch(&self, id: &str, seen_state: i64, seen_claim: Option<&str>, until: i64) -> Result<bool> {
        let t = &self.t;
        let n = self.exec(
            &format!(
                "UPDATE main.{t} SET
                     attempts = CASE WHEN state = {DOWNLOAD} THEN attempts ELSE 0 END,
                     timestamp = CASE WHEN state = {DOWNLOAD} THEN timestamp ELSE ?5 END,
                     state = {DOWNLOAD}, local_uri = NULL, given_up = 0, next_attempt_at = 0,
                     claimed_by = ?4, claimed_until = ?3, bytes_done = NULL, started_at = NULL
                 WHERE id = ?1 AND state = ?2 AND state IN ({DOWNLOAD}, {SYNCED}, {ARCHIVED}) AND claimed_by IS ?6"
            ),
            params![id, seen_state, until, self.owner, now_ms(), seen_claim],
        )?;
        Ok(n > 0)
    }

    /// After attachment_fetch downloaded `id`: a row no watch references ends ARCHIVED with
    /// its local copy, so the cache limit can evict it later (as reconciliation would do on
    /// its next pass). With no watch at all, nothing counts as unreferenced.
    pub fn archive_fetched_if_unreferenced(&self, id: &str) -> Result<bool> {
        let t = &self.t;
        let n = self.exec(
            &format!(
                "UPDATE main.{t} SET state = {ARCHIVED}, given_up = 0, timestamp = ?2
                 WHERE id = ?1 AND state = {SYNCED} AND EXISTS (SELECT 1 FROM main._attachments_watch)
                   AND NOT EXISTS (SELECT 1 FROM main._attachments_ref AS r WHERE r.id = {t}.id)"
            ),
            params![id, now_ms()],
        )?;
        Ok(n > 0)
    }
}
