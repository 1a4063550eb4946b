//! Entry points for the cargo-fuzz targets in `fuzz/`: the pure functions that read
//! untrusted input (synced names, configs, watch names, server answers), reachable
//! from outside the crate. Not an API: hidden from the docs and unused by the
//! extension; the targets call the same code the extension runs.

use crate::error::Error;

pub use crate::config::Config;
pub use crate::names::{check_ext, check_filename, check_id, check_media_type, ext_of, filename, MAX_EXT_LEN, MAX_ID_LEN};
pub use crate::queue::retry::{after_failure, Next, Op, AUTH_DELAY, BASE_DELAY, PERMANENT_DELAY, TRANSIENT_CAP};
pub use crate::remote::fuzzing::*;
pub use crate::remote::{ErrorKind, RemoteError};

/// The check `attachment_watch` applies to a watch name.
pub fn check_watch_name(name: &str) -> Result<(), Error> {
    crate::watch::check_name(name)
}

/// The name of the trigger watch `name` puts on `table` for `suffix` (ins, upd, del).
pub fn watch_trigger_name(name: &str, table: &str, suffix: &str) -> String {
    crate::watch::trigger_name(name, table, suffix)
}

pub use crate::watch::Options as WatchOptions;

/// Analyses `query` on `db` as a watch run does (prepared under the guard that denies
/// writes and file access): the tables it reads and the SELECT built from it. The
/// guard is removed again before returning.
///
/// # Safety
/// `db` is an open connection of a SQLite this library was loaded into, used by no
/// other thread meanwhile.
pub unsafe fn watch_analyze(db: *mut rusqlite::ffi::sqlite3, query: &str) -> Result<(Vec<String>, String), String> {
    let conn = rusqlite::Connection::from_handle(db).map_err(|e| e.to_string())?;
    let mut guard = crate::watch::Guard::install(&conn);
    let analysis = crate::watch::analyze(&conn, &mut guard, query);
    drop(guard);
    analysis.map(|a| (a.reads.into_keys().collect(), a.select_sql)).map_err(|e| e.to_string())
}

pub use rusqlite::ffi::sqlite3 as Sqlite3;
