//! attachment_init, attachment_sync, attachment_verify, attachment_expire_cache,
//! attachment_start_sync, attachment_stop_sync and attachment_version.

use super::Context;
use rusqlite::Connection;

use super::{caller, scalar, text_arg, EFFECTFUL, PURE};
use crate::config::Config;
use crate::connection::DbTarget;
use crate::error::{Error, Result};
use crate::ownership;
use crate::queue::table::QueueTable;
use crate::reconcile;
use crate::schema;
use crate::store::LocalStore;
use crate::sync::Syncer;
use crate::verify;
use crate::worker;
use std::sync::Arc;

pub fn register(db: &Connection) -> rusqlite::Result<()> {
    scalar(db, "attachment_init", "attachment_init(config_json TEXT)", 1..=1, EFFECTFUL, init)?;
    scalar(db, "attachment_sync", "attachment_sync()", 0..=0, EFFECTFUL, sync_now)?;
    scalar(db, "attachment_verify", "attachment_verify()", 0..=0, EFFECTFUL, verify_now)?;
    scalar(db, "attachment_reconcile", "attachment_reconcile()", 0..=0, EFFECTFUL, reconcile_now)?;
    scalar(db, "attachment_expire_cache", "attachment_expire_cache()", 0..=0, EFFECTFUL, expire_cache)?;
    scalar(db, "attachment_start_sync", "attachment_start_sync()", 0..=0, EFFECTFUL, start_sync)?;
    scalar(db, "attachment_stop_sync", "attachment_stop_sync()", 0..=0, EFFECTFUL, stop_sync)?;
    scalar(db, "attachment_pause", "attachment_pause()", 0..=0, EFFECTFUL, pause)?;
    scalar(db, "attachment_resume", "attachment_resume()", 0..=0, EFFECTFUL, resume)?;
    scalar(db, "attachment_version", "attachment_version()", 0..=0, PURE, version)?;
    Ok(())
}

/// Checks and stores the config, creates the tables and `local_dir` (the only place that
/// creates it) and claims the folder for this database (see `ownership`). Returns the
/// effective config. Verify is not run here: it needs the write lock on a connection of
/// its own, which this caller's statement holds; the first pass of the process runs it.
fn init(ctx: &Context) -> Result<String> {
    let config = Config::parse(&text_arg(ctx, 0, "config_json")?)?;
    let conn = caller(ctx)?;
    let db_file = conn.path().filter(|p| !p.is_empty());
    if db_file.is_some() {
        DbTarget::of(&conn, "attachment_init()")?; // refuse a VFS our own connection cannot share
    }
    let dir = config.local_dir_for(db_file)?;
    ownership::check_remote_apart(&config.remote, &dir)?;
    // Everything that can refuse is checked before anything is written: a failing
    // function does not undo the writes it made on the caller's connection.
    let old = match Config::load(&conn) {
        Ok(old) => {
            ownership::check_change(&conn, &old, &config, db_file)?;
            Some(old)
        }
        Err(Error::NotInitialized) => None,
        Err(e) => return Err(e),
    };
    schema::check_queue_name(&conn, &config.table)?;
    ownership::check_claim(&conn, db_file, &dir, &config.table)?;
    let store = LocalStore::create(dir)?;
    schema::ensure(&conn, &config.table)?;
    config.store(&conn)?;
    // What was uploaded to the old remote is not in the new one: it goes up again.
    if old.is_some_and(|old| old.remote != config.remote) {
        QueueTable::unclaimed(&conn, &config.table).remote_changed()?;
    }
    ownership::claim(&conn, db_file, store.dir(), &config.table)?;
    crate::remote::prepare(&config);
    // Transfers in flight in this process take the new cap at their next read; other
    // processes' passes read it from the stored config within a second.
    if let Some(f) = db_file {
        crate::throttle::of(f).set_rate(config.max_bytes_per_second.map(|r| r as u64));
    }
    Ok(config.to_json().to_string())
}

/// Functions that commit on their own connection cannot wait inside the caller's transaction.
/// Nor inside a statement that reads or writes tables (`SELECT attachment_sync() FROM t`):
/// that statement holds a lock the extension's own connection would wait on for ever.
pub(super) fn outside_transaction(conn: &Connection, what: &str) -> Result<()> {
    if !conn.is_autocommit() {
        return Err(Error::Misuse(format!("call {what} outside BEGIN ... COMMIT: it commits its own short transactions")));
    }
    // Safety: a valid handle and a NUL-terminated schema name.
    let state = unsafe { rusqlite::ffi::sqlite3_txn_state(conn.handle(), c"main".as_ptr()) };
    if state != rusqlite::ffi::SQLITE_TXN_NONE {
        return Err(Error::Misuse(format!(
            "call {what} in a statement of its own (SELECT {what};), not in one that reads or writes tables: \
             it commits on its own connection, which would wait for the lock this statement holds"
        )));
    }
    Ok(())
}

/// The database file of the caller, required by everything that opens its own connection.
fn db_file<'a>(conn: &'a Connection, what: &str) -> Result<&'a str> {
    conn.path()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| Error::Misuse(format!("{what} needs a database file; an in-memory or temporary database cannot sync")))
}

/// One blocking pass on a connection of its own.
fn sync_now(ctx: &Context) -> Result<String> {
    let conn = caller(ctx)?;
    outside_transaction(&conn, "attachment_sync()")?;
    let config = Config::load(&conn)?;
    let target = DbTarget::of(&conn, "attachment_sync()")?;
    let own = crate::connection::open_connection(&target)?;
    let outcome = Syncer::new(&target.path, config).and_then(|s| Arc::new(s).run_pass(&own, true, &|| host_interrupted(&conn)));
    // Another process's progress bar can tell why nothing moves (a vanished local_dir).
    crate::progress::record_pass(&own, &outcome);
    let summary = outcome?;
    worker::wake(&target.path);
    if summary.cancelled {
        let code = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERRUPT);
        return Err(rusqlite::Error::SqliteFailure(code, Some("interrupted; transfers in flight were released".into())).into());
    }
    Ok(summary.to_json().to_string())
}

/// Whether the host interrupted the statement that called us (the CLI's Ctrl-C calls
/// `sqlite3_interrupt`). SQLite 3.40 has no `sqlite3_is_interrupted`, but a statement
/// started while an interrupted one still runs fails with SQLITE_INTERRUPT, so a
/// trivial one tells.
pub(super) fn host_interrupted(conn: &Connection) -> bool {
    let probe = conn.query_row("SELECT 1", [], |_| Ok(()));
    matches!(probe, Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::OperationInterrupted)
}

/// Reconciliation alone, as the worker runs it (on a connection of its own, in one
/// short transaction): no network, no files. Only changed references are compared.
fn reconcile_now(ctx: &Context) -> Result<String> {
    let conn = caller(ctx)?;
    outside_transaction(&conn, "attachment_reconcile()")?;
    let config = Config::load(&conn)?;
    let own = crate::connection::open_connection(&DbTarget::of(&conn, "attachment_reconcile()")?)?;
    let r = crate::connection::immediate(&own, || reconcile::reconcile(&own, &config, crate::queue::now_ms(), false))?;
    Ok(serde_json::json!({
        "queued_downloads": r.queued, "restored": r.restored, "archived": r.archived, "rejected": r.rejected,
    })
    .to_string())
}

/// Verify's clean-up, on the extension's own connection under the write lock (see verify.rs).
fn verify_now(ctx: &Context) -> Result<String> {
    let conn = caller(ctx)?;
    outside_transaction(&conn, "attachment_verify()")?;
    let config = Config::load(&conn)?;
    let target = DbTarget::of(&conn, "attachment_verify()")?;
    let db_file = target.path.as_str();
    let store = LocalStore::open(config.local_dir_for(Some(db_file))?)?;
    let own = crate::connection::open_connection(&target)?;
    Ok(verify::run_now(&own, db_file, &config, &store)?.to_json().to_string())
}

/// Cache expiry deletes files: it commits on its own connection, so a rollback of the
/// caller cannot keep a row whose file is gone.
fn expire_cache(ctx: &Context) -> Result<i64> {
    let conn = caller(ctx)?;
    outside_transaction(&conn, "attachment_expire_cache()")?;
    let config = Config::load(&conn)?;
    let target = DbTarget::of(&conn, "attachment_expire_cache()")?;
    let db_file = target.path.as_str();
    let store = LocalStore::open(config.local_dir_for(Some(db_file))?)?;
    let own = crate::connection::open_connection(&target)?;
    // Uses noted by reads in this process are written first: they decide what goes.
    let expired = crate::cache::with_uses(db_file, |uses| {
        crate::connection::immediate(&own, || {
            // A database last initialised by an earlier build gets the cache's columns first.
            schema::ensure(&own, &config.table)?;
            crate::cache::record_uses(&own, &config.table, uses)?;
            crate::cache::expire(&own, &config, &store)
        })
    })?;
    Ok(expired as i64)
}

/// Starts this process's worker for the caller's database file (harmless if it runs).
fn start_sync(ctx: &Context) -> Result<i64> {
    let conn = caller(ctx)?;
    let config = Config::load(&conn)?;
    let target = DbTarget::of(&conn, "attachment_start_sync()")?;
    // Fail here, not silently in the worker, when the config cannot work.
    Syncer::new(&target.path, config)?;
    worker::start(&target)?;
    Ok(1)
}

/// Stops the worker for the caller's database file and waits for it to finish.
fn stop_sync(ctx: &Context) -> Result<i64> {
    let conn = caller(ctx)?;
    worker::stop(db_file(&conn, "attachment_stop_sync()")?);
    Ok(1)
}

/// `attachment_pause()` / `attachment_resume()`: stores the flag in the database, where every
/// process's passes read it (within about a second), and tells this process's transfers at
/// once. Pausing stops transfers in flight (a download keeps its partial file, an S3
/// multipart upload its upload id and parts) and starts none until resumed.
fn set_paused(ctx: &Context, paused: bool) -> Result<i64> {
    let conn = caller(ctx)?;
    let config = Config::load(&conn)?;
    // A database last initialised by an earlier build gets the column first.
    schema::ensure(&conn, &config.table)?;
    conn.execute("UPDATE main._attachments_config SET paused = ?1 WHERE id = 1", [paused])?;
    if let Some(f) = conn.path().filter(|p| !p.is_empty()) {
        crate::throttle::of(f).set_paused(paused);
        worker::wake(f);
    }
    Ok(1)
}

fn pause(ctx: &Context) -> Result<i64> {
    set_paused(ctx, true)
}

fn resume(ctx: &Context) -> Result<i64> {
    set_paused(ctx, false)
}

/// `sqlite-attachments 0.2.0 (schema 7)`: this build's release and the layout it writes.
fn version(_ctx: &Context) -> Result<String> {
    Ok(format!("sqlite-attachments {} (schema {})", env!("CARGO_PKG_VERSION"), schema::SCHEMA_VERSION))
}
