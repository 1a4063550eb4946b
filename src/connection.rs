//! The extension's own connection to a database file: opened through the host's
//! SQLite, used by syncing, reconciliation and verify so that none of them holds
//! the app's connection or a write transaction across network I/O.

use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::Result;

/// How long the extension's own connection waits for a lock held by another.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection of our own to `db_file`, through the host's SQLite.
pub fn open_connection(db_file: &str) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        db_file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // In WAL mode, this connection's commits skip the per-commit fsync (an app crash
    // still loses nothing; a power cut may undo its last state changes). What it
    // records is bookkeeping whose every step is idempotent and repaired by verify:
    // the files themselves were fsynced before any row says they exist.
    // Reconciliation compares whole watch results with the queue: a 32 MiB page
    // cache and in-memory temp tables keep that off the disk.
    conn.execute_batch("PRAGMA cache_size = -32768; PRAGMA temp_store = MEMORY;")?;
    let wal: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if wal.eq_ignore_ascii_case("wal") {
        conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    }
    crate::sql::register(&conn)?;
    Ok(conn)
}

/// Runs `f` inside `BEGIN IMMEDIATE … COMMIT`, rolling back on error.
pub fn immediate<T>(conn: &Connection, f: impl FnOnce() -> Result<T>) -> Result<T> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match f() {
        Ok(v) => match conn.execute_batch("COMMIT") {
            Ok(()) => Ok(v),
            // A COMMIT that could not take its lock leaves the transaction open: end it.
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e.into())
            }
        },
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}
