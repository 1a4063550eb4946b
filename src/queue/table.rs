//! The queue table's transfer transitions: claiming a row, renewing and dropping
//! the claim, and recording what its transfer ended in. Each is one guarded
//! statement: it changes a row only in the state it expects and only while this
//! process still holds the claim, so a result that arrives late (a lapsed lease
//! another worker took over, a row the app deleted meanwhile) changes nothing.
//! Every method runs in the caller's transaction.

use rusqlite::{params, Connection};

use super::{now_ms, State};
use crate::error::Result;
use crate::schema::quote_ident;

/// The queue states a transfer starts from.
const QUEUED: &str = "(0, 1, 2)";

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

/// The queue table of one config, seen by one claim owner.
pub struct QueueTable<'c> {
    conn: &'c Connection,
    /// Quoted table name.
    t: String,
    owner: &'c str,
}

/// Columns cleared when a claim ends.
const UNCLAIM: &str = "claimed_by = NULL, claimed_until = NULL, bytes_done = NULL";
/// Columns reset when a transfer succeeds.
const SUCCESS: &str = "attempts = 0, next_attempt_at = 0, last_error = NULL";

impl<'c> QueueTable<'c> {
    pub fn new(conn: &'c Connection, table: &str, owner: &'c str) -> QueueTable<'c> {
        QueueTable { conn, t: quote_ident(table), owner }
    }

    /// Rows a pass may claim now: queued, due, present when the pass began (`?1` is the
    /// largest rowid then, so a stream of new saves cannot keep one pass going for ever;
    /// a rowid, not a time, so a clock that steps back delays nothing), and not held by
    /// a live claim. Rows this process holds are never taken
    /// again, even when their lease has lapsed (a renewal may be late; the transfer is
    /// still ours).
    fn claimable(&self) -> String {
        format!(
            "state IN {QUEUED} AND next_attempt_at <= ?2 AND rowid <= ?1
             AND (claimed_until IS NULL OR claimed_until < ?2) AND claimed_by IS NOT ?3"
        )
    }

    /// The largest rowid now: rows up to it are this pass's to claim.
    pub fn last_rowid(&self) -> Result<i64> {
        let t = &self.t;
        Ok(self.conn.query_row(&format!("SELECT coalesce(max(rowid), 0) FROM main.{t}"), [], |r| r.get(0))?)
    }

    /// Whether any row is claimable: a read, so an idle pass takes no write lock.
    pub fn any_claimable(&self, last_rowid: i64) -> Result<bool> {
        let t = &self.t;
        Ok(self.conn.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM main.{t} WHERE {})", self.claimable()),
            params![last_rowid, now_ms(), self.owner],
            |r| r.get(0),
        )?)
    }

    /// Claims up to `limit` rows for `lease_ms`: uploads first (their files exist nowhere
    /// else), then downloads, then deletes, oldest first.
    pub fn claim(&self, last_rowid: i64, limit: usize, lease_ms: i64) -> Result<Vec<Job>> {
        let t = &self.t;
        let now = now_ms();
        // language=SQLite
        let jobs: Vec<Job> = self
            .conn
            .prepare(&format!(
                "SELECT id, filename, local_uri, state, media_type, sha256, attempts, upload_resume FROM main.{t}
                 WHERE {} ORDER BY state, timestamp LIMIT ?4",
                self.claimable()
            ))?
            .query_map(params![last_rowid, now, self.owner, limit as i64], |r| {
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
        let mut mark = self.conn.prepare(&format!(
            "UPDATE main.{t} SET claimed_by = ?2, claimed_until = ?3 WHERE id = ?1 AND state IN {QUEUED}"
        ))?;
        for job in &jobs {
            mark.execute(params![job.id, self.owner, now + lease_ms])?;
        }
        Ok(jobs)
    }

    /// Extends this owner's claim on `id` and publishes its progress.
    pub fn renew(&self, id: &str, until: i64, bytes_done: Option<i64>) -> Result<bool> {
        let t = &self.t;
        let n = self.conn.execute(
            &format!("UPDATE main.{t} SET claimed_until = ?2, bytes_done = ?3 WHERE id = ?1 AND claimed_by = ?4"),
            params![id, until, bytes_done, self.owner],
        )?;
        Ok(n > 0)
    }

    /// Drops this owner's claim on `id`, leaving the row as it is (a cancelled transfer).
    pub fn release(&self, id: &str) -> Result<()> {
        let t = &self.t;
        self.conn.execute(&format!("UPDATE main.{t} SET {UNCLAIM} WHERE id = ?1 AND claimed_by = ?2"), params![id, self.owner])?;
        Ok(())
    }

    /// Frees every claim of `owner`, a process known to be gone.
    pub fn release_owner(&self, owner: &str) -> Result<usize> {
        let t = &self.t;
        Ok(self.conn.execute(&format!("UPDATE main.{t} SET {UNCLAIM} WHERE claimed_by = ?1"), [owner])?)
    }

    /// The distinct owners holding claims.
    pub fn claim_owners(&self) -> Result<Vec<String>> {
        let t = &self.t;
        Ok(self
            .conn
            .prepare(&format!("SELECT DISTINCT claimed_by FROM main.{t} WHERE claimed_by IS NOT NULL"))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// QUEUED_UPLOAD → SYNCED: the remote holds the complete file. An upload of a row
    /// the app marked for deletion meanwhile keeps QUEUED_DELETE (only has_synced changes).
    pub fn uploaded(&self, id: &str) -> Result<bool> {
        let t = &self.t;
        let n = self.conn.execute(
            &format!(
                "UPDATE main.{t} SET state = CASE WHEN state = 0 THEN 3 ELSE state END,
                     has_synced = 1, timestamp = ?2, upload_resume = NULL, {SUCCESS}, {UNCLAIM}
                 WHERE id = ?1 AND state IN (0, 2) AND claimed_by = ?3"
            ),
            params![id, now_ms(), self.owner],
        )?;
        Ok(n > 0)
    }

    /// QUEUED_DOWNLOAD → SYNCED: the complete, checked file is in place locally.
    /// False when the row is no longer ours to finish (its file then has no owner).
    pub fn downloaded(&self, id: &str, size: u64, sha256: &str) -> Result<bool> {
        let t = &self.t;
        let n = self.conn.execute(
            &format!(
                "UPDATE main.{t} SET state = 3, local_uri = filename, size = ?2, sha256 = ?3, has_synced = 1,
                     timestamp = ?4, {SUCCESS}, {UNCLAIM}
                 WHERE id = ?1 AND state = 1 AND claimed_by = ?5"
            ),
            params![id, size as i64, sha256, now_ms(), self.owner],
        )?;
        Ok(n > 0)
    }

    /// Whether the row still accounts for a file at its final name: it names it as its
    /// local copy, or a download of it (another worker's, after our lease lapsed) is queued.
    pub fn holds_local_copy(&self, id: &str) -> Result<bool> {
        let t = &self.t;
        Ok(self.conn.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM main.{t} WHERE id = ?1 AND (local_uri = filename OR state = 1))"),
            [id],
            |r| r.get(0),
        )?)
    }

    /// QUEUED_DELETE → gone: the remote object is deleted. True when the row was removed.
    pub fn deleted(&self, id: &str) -> Result<bool> {
        let t = &self.t;
        let n = self
            .conn
            .execute(&format!("DELETE FROM main.{t} WHERE id = ?1 AND state = 2 AND claimed_by = ?2"), params![id, self.owner])?;
        Ok(n > 0)
    }

    /// QUEUED_UPLOAD → ARCHIVED: the local file is gone (not found), so there is nothing to send.
    pub fn upload_source_missing(&self, id: &str) -> Result<bool> {
        let t = &self.t;
        let n = self.conn.execute(
            &format!(
                "UPDATE main.{t} SET state = 4, local_uri = NULL, timestamp = ?2,
                     last_error = 'local file missing: nothing to upload', {UNCLAIM}
                 WHERE id = ?1 AND state = 0 AND claimed_by = ?3"
            ),
            params![id, now_ms(), self.owner],
        )?;
        Ok(n > 0)
    }

    /// A failed attempt: the row stays in `state`, due again at `retry_at`.
    pub fn failed(&self, job: &Job, attempts: i64, retry_at: i64, message: &str, resume: Option<&str>) -> Result<bool> {
        let t = &self.t;
        let n = self.conn.execute(
            &format!(
                "UPDATE main.{t} SET attempts = ?2, next_attempt_at = ?3, last_error = ?4, upload_resume = ?6, {UNCLAIM}
                 WHERE id = ?1 AND state = ?5 AND claimed_by = ?7"
            ),
            params![job.id, attempts, retry_at, message, job.state as i64, resume, self.owner],
        )?;
        Ok(n > 0)
    }

    /// QUEUED_DOWNLOAD → ARCHIVED: the download is given up (404, 410, `max_attempts`).
    /// `given_up` keeps reconciliation from bringing it back until `attachment_retry`.
    pub fn give_up_download(&self, id: &str, attempts: i64, message: &str) -> Result<bool> {
        let t = &self.t;
        let n = self.conn.execute(
            &format!(
                "UPDATE main.{t} SET state = 4, given_up = 1, attempts = ?2, last_error = ?3, timestamp = ?4, {UNCLAIM}
                 WHERE id = ?1 AND state = 1 AND claimed_by = ?5"
            ),
            params![id, attempts, message, now_ms(), self.owner],
        )?;
        Ok(n > 0)
    }

    /// Rows still waiting for a transfer.
    pub fn pending(&self) -> Result<usize> {
        let t = &self.t;
        Ok(self.conn.query_row(&format!("SELECT count(*) FROM main.{t} WHERE state IN {QUEUED}"), [], |r| r.get::<_, i64>(0))? as usize)
    }

    /// When the next row becomes claimable by this owner (ms since the epoch): its retry
    /// time, or the end of another owner's lease, whichever is later. Rows this owner
    /// holds are not counted: their results wake the pass.
    pub fn next_due(&self) -> Result<Option<i64>> {
        let t = &self.t;
        Ok(self.conn.query_row(
            &format!(
                "SELECT min(max(next_attempt_at, coalesce(claimed_until, 0))) FROM main.{t}
                 WHERE state IN {QUEUED} AND claimed_by IS NOT ?1"
            ),
            [self.owner],
            |r| r.get(0),
        )?)
    }
}
