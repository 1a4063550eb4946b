//! sqlite-attachments: offline-first file attachments as a SQLite loadable extension.
//!
//! `.load ./dist/attachments` registers the SQL functions and the
//! `attachment_queue` virtual table; see the README and `../shared/SQL-API.md`.

mod config;
mod connection;
mod error;
mod logging;
mod names;
mod queue;
mod reconcile;
mod redact;
mod remote;
mod schema;
mod sql;
mod store;
mod sync;
mod verify;
mod watch;
mod worker;

use std::os::raw::{c_char, c_int};

use rusqlite::{ffi, Connection};

/// Entry point; SQLite derives its name from the file name `attachments.so`.
///
/// # Safety
/// Called by SQLite's extension loader with valid pointers.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_attachments_init(
    db: *mut ffi::sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut ffi::sqlite3_api_routines,
) -> c_int {
    Connection::extension_init2(db, pz_err_msg, p_api, init)
}

fn init(db: Connection) -> rusqlite::Result<bool> {
    logging::init();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sql::register(&db))) {
        Ok(result) => result?,
        Err(_) => return Err(rusqlite::Error::ModuleError("sqlite-attachments: panic while registering functions".into())),
    }
    // Stay loaded for the life of the process: worker threads run this library's code.
    Ok(true)
}
