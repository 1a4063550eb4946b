//! attachment_fetch (this attachment now, ahead of the queue) and attachment_progress
//! (one JSON object for a progress bar).

use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::control::host_interrupted;
use super::{caller, scalar, text_arg, Context, EFFECTFUL};
use crate::config::Config;
use crate::connection::DbTarget;
use crate::error::{Error, Result};

pub fn register(db: &Connection) -> rusqlite::Result<()> {
    scalar(db, "attachment_fetch", "attachment_fetch(id TEXT [, timeout_ms INTEGER])", 1..=2, EFFECTFUL, fetch)?;
    scalar(db, "attachment_progress", "attachment_progress()", 0..=0, EFFECTFUL, progress)?;
    Ok(())
}

/// The local copy's absolute path, downloading it first unless it is complete. Runs on
/// the extension's own connection, so outside the caller's transactions.
fn fetch(ctx: &Context) -> Result<String> {
    let id = text_arg(ctx, 0, "id")?;
    let timeout = match ctx.len() {
        1 => crate::fetch::DEFAULT_TIMEOUT,
        _ => match ctx.get_raw(1) {
            ValueRef::Null => crate::fetch::DEFAULT_TIMEOUT,
            ValueRef::Integer(ms) if ms > 0 => Duration::from_millis(ms as u64),
            ValueRef::Integer(ms) => return Err(Error::Argument(format!("timeout_ms must be a positive number of milliseconds, got {ms}"))),
            _ => return Err(Error::Argument("timeout_ms must be an INTEGER (milliseconds)".into())),
        },
    };
    crate::names::check_id(&id)?;
    let conn = caller(ctx)?;
    no_write_transaction(&conn)?;
    let config = Config::load(&conn)?;
    let target = DbTarget::of(&conn, "attachment_fetch()")?;
    let path = crate::fetch::fetch(&target, config, &id, timeout, &|| host_interrupted(&conn))?;
    // A fetch is a use: the archived cache keeps what was fetched last longest.
    crate::cache::touch(&target.path, &id);
    Ok(path)
}

/// The fetch commits on its own connection: never inside the caller's write transaction
/// (it would wait for itself). A read (`SELECT attachment_fetch(photo_id) FROM users ...`)
/// is fine in WAL mode, where readers do not block a writer's commit; with a rollback
/// journal the reader's lock would hold the fetch's commit until the busy timeout.
fn no_write_transaction(conn: &Connection) -> Result<()> {
    // Safety: a valid handle and a NUL-terminated schema name.
    let state = unsafe { rusqlite::ffi::sqlite3_txn_state(conn.handle(), c"main".as_ptr()) };
    if state == rusqlite::ffi::SQLITE_TXN_WRITE {
        return Err(Error::Misuse(
            "call attachment_fetch() outside a write transaction (BEGIN IMMEDIATE ... COMMIT, or after a write): \
             it commits its own short transactions on its own connection, which would wait for yours"
                .into(),
        ));
    }
    if state == rusqlite::ffi::SQLITE_TXN_READ {
        let mode: String = conn.query_row("PRAGMA main.journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Misuse(format!(
                "call attachment_fetch() in a statement of its own (SELECT attachment_fetch(?);), not in one that \
                 reads tables or inside BEGIN ... COMMIT: with journal_mode={mode} the read lock this statement holds \
                 would keep the fetch from committing (in WAL mode that works)"
            )));
        }
    }
    Ok(())
}

/// The progress feed: read-only, on the caller's connection (it may run anywhere).
fn progress(ctx: &Context) -> Result<String> {
    let conn = caller(ctx)?;
    let config = Config::load(&conn)?;
    let db_file = conn.path().unwrap_or("").to_string();
    Ok(crate::progress::feed(&conn, &db_file, &config.table)?.to_string())
}
