//! The extension's own connection to a database file: opened through the host's
//! SQLite, used by syncing, reconciliation and verify so that none of them holds
//! the app's connection or a write transaction across network I/O.

use std::ffi::CStr;
use std::os::raw::{c_char, c_void};
use std::time::Duration;

use rusqlite::{ffi, Connection, OpenFlags};

use crate::error::{Error, Result};

/// How long the extension's own connection waits for a lock held by another.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The VFSes our own connection may share a database with. They lock the file the
/// same way for every connection in the process; another VFS (memdb, unix-none,
/// a custom one) either has no file we could open or locks differently, and two
/// locking schemes on one file corrupt it.
const SUPPORTED_VFS: [&str; 3] = ["unix", "unix-excl", "unix-dotfile"];

/// What our own connection opens: the host's database file, through the host's VFS.
/// Nothing else is copied from the host's URI (never `mode=ro` or `immutable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbTarget {
    pub path: String,
    pub vfs: String,
}

impl DbTarget {
    /// The main database of the host connection `conn`; `what` names the caller in errors.
    pub fn of(conn: &Connection, what: &str) -> Result<DbTarget> {
        let path = conn.path().filter(|p| !p.is_empty()).ok_or_else(|| {
            Error::Misuse(format!("{what} needs a database file; an in-memory or temporary database cannot sync"))
        })?;
        let vfs = host_vfs(conn)?;
        if !SUPPORTED_VFS.contains(&vfs.as_str()) {
            return Err(Error::Misuse(format!(
                "the database is open with the VFS '{vfs}', which the extension's own connection cannot share \
                 safely; open it with the VFS unix, unix-excl or unix-dotfile (the default on Unix is unix)"
            )));
        }
        Ok(DbTarget { path: path.to_string(), vfs })
    }
}

/// The name of the VFS the host opened `main` with (a `/`-separated stack if shims are layered).
fn host_vfs(conn: &Connection) -> Result<String> {
    let mut name: *mut c_char = std::ptr::null_mut();
    // Safety: SQLITE_FCNTL_VFSNAME writes a string from sqlite3_mprintf, freed below.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_VFSNAME,
            (&mut name as *mut *mut c_char).cast::<c_void>(),
        )
    };
    if rc != ffi::SQLITE_OK || name.is_null() {
        return Err(Error::Misuse("cannot tell which VFS the database is open with".into()));
    }
    // Safety: `name` is a NUL-terminated string SQLite allocated for us.
    let vfs = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
    unsafe { ffi::sqlite3_free(name.cast()) };
    Ok(vfs)
}

/// Opens a connection of our own to `target`, through the host's SQLite and VFS.
pub fn open_connection(target: &DbTarget) -> Result<Connection> {
    // No SQLITE_OPEN_URI: the path is a plain file name, and only the VFS is carried over.
    let conn = Connection::open_with_flags_and_vfs(
        &target.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        target.vfs.as_str(),
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Room for every statement a pass repeats (see `exec_cached`).
    conn.set_prepared_statement_cache_capacity(64);
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

/// Runs `f` again while it fails with SQLITE_BUSY (each try waits one busy-timeout slice
/// of `conn`), until `give_up`, handed the busy error, answers the error to end with
/// (`Ok(())` tries again). Callers keep their deadline and stop condition between slices.
pub fn retry_busy<T>(mut f: impl FnMut() -> Result<T>, mut give_up: impl FnMut(Error) -> Result<()>) -> Result<T> {
    loop {
        match f() {
            Err(e) if e.is_busy() => give_up(e)?,
            other => return other,
        }
    }
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

/// Runs a statement through the connection's statement cache. The worker records every
/// result with the same few statements; compiling them each time cost more than running
/// them (`bench/PROFILES.md`).
pub(crate) fn exec_cached<P: rusqlite::Params>(conn: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// [`exec_cached`] for a statement that returns one row.
pub(crate) fn query_row_cached<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}
