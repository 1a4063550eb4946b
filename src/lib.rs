//! sqlite-attachments: offline-first file attachments as a SQLite loadable extension.
//!
//! `.load ./dist/attachments` registers the SQL functions and the
//! `attachment_queue` virtual table; see the README.

mod cache;
mod cancel;
mod concurrency;
mod config;
mod connection;
mod crypt;
mod error;
mod fetch;
mod logging;
mod names;
mod owner;
mod ownership;
mod progress;
mod publish;
mod queue;
mod reconcile;
mod redact;
mod remote;
mod schema;
mod sql;
mod store;
mod sync;
mod throttle;
mod upload_source;
mod verify;
mod watch;
mod worker;

// Entry points for the cargo-fuzz targets in fuzz/; not part of the extension.
#[doc(hidden)]
pub mod fuzzing;

use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicPtr, Ordering};

use rusqlite::{ffi, Connection};

/// The API routines of the SQLite this library serves. rusqlite keeps them in one
/// global, so a second, different SQLite in the same process (apsw's beside the
/// stdlib's, say) would replace the first one's under its running code.
static HOST_SQLITE: AtomicPtr<ffi::sqlite3_api_routines> = AtomicPtr::new(std::ptr::null_mut());

/// Whether the host's SQLite has the progress callback (better-sqlite3's is built with
/// SQLITE_OMIT_PROGRESS_CALLBACK): calling it where it is missing would panic.
pub(crate) fn host_has_progress_handler() -> bool {
    let api = HOST_SQLITE.load(Ordering::SeqCst);
    // Safety: a pointer SQLite gave us at load time, valid for the life of the process.
    !api.is_null() && unsafe { (*api).progress_handler.is_some() }
}

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
    if p_api.is_null() {
        return ffi::SQLITE_ERROR;
    }
    // Each SQLite library has one table of routines, the same for all its connections.
    if let Err(first) = HOST_SQLITE.compare_exchange(std::ptr::null_mut(), p_api, Ordering::SeqCst, Ordering::SeqCst) {
        if first != p_api {
            refuse(pz_err_msg, p_api, "sqlite-attachments: one SQLite per process: already loaded into another SQLite library in this process (two copies of SQLite in one process keep separate file locks and can corrupt databases); load it only through the SQLite it was first loaded into");
            return ffi::SQLITE_ERROR;
        }
    }
    Connection::extension_init2(db, pz_err_msg, p_api, init)
}

/// Hands `message` to the refused library's loader, allocated with that library's
/// own `sqlite3_malloc` (it frees the message with its own `sqlite3_free`).
unsafe fn refuse(pz_err_msg: *mut *mut c_char, p_api: *mut ffi::sqlite3_api_routines, message: &str) {
    if pz_err_msg.is_null() {
        return;
    }
    let Some(malloc) = (*p_api).malloc else { return };
    let bytes = message.as_bytes();
    let Ok(size) = c_int::try_from(bytes.len() + 1) else { return };
    let out = malloc(size).cast::<u8>();
    if out.is_null() {
        return;
    }
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), out, bytes.len());
    *out.add(bytes.len()) = 0;
    *pz_err_msg = out.cast::<c_char>();
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
