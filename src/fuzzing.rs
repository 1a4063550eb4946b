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

/// Seals `plain` as the object of attachment `id`, under `keys`' current key and `nonce`.
pub fn seal_object(keys: &crate::crypt::Keys, nonce: &[u8; crate::crypt::NONCE_PREFIX], id: &str, plain: &[u8]) -> Vec<u8> {
    use std::io::Read;
    struct Mem<'a>(&'a [u8]);
    impl crate::remote::Source for Mem<'_> {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn reader(&self, start: u64, end: u64) -> Box<dyn Read + Send + '_> {
            Box::new(&self.0[start as usize..end as usize])
        }
    }
    let mem = Mem(plain);
    let sealed = crate::crypt::SealedSource::new(&mem, &keys.current, nonce, id);
    let mut out = Vec::new();
    crate::remote::Source::reader(&sealed, 0, crate::remote::Source::len(&sealed))
        .read_to_end(&mut out)
        .expect("sealing from memory");
    out
}

/// Opens `object` (attachment `id`) as a download does, fed in pieces of `step` bytes:
/// what reached the sink, and whether the whole object was accepted.
pub fn open_object(keys: &crate::crypt::Keys, id: &str, object: &[u8], step: usize) -> (Vec<u8>, Result<u64, RemoteError>) {
    use std::io::Write;
    let mut sink = Vec::new();
    let mut opener = crate::crypt::Opener::new(&mut sink, keys, id);
    let mut result = Ok(0);
    for piece in object.chunks(step.max(1)) {
        if opener.write_all(piece).is_err() {
            result = Err(opener.failed.take().unwrap_or_else(|| RemoteError::integrity("refused")));
            break;
        }
    }
    if result.is_ok() {
        result = opener.finish();
    }
    drop(opener);
    (sink, result)
}

pub use crate::crypt::{Keys as EncryptionKeys, NONCE_PREFIX as ENCRYPTION_NONCE_PREFIX};
