//! attachment_save, attachment_save_file, attachment_delete: they write in the
//! caller's transaction, so a row appears exactly when the app's change commits.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use super::Context;
use rusqlite::Connection;

use super::{bytes_arg, caller, opt_text_arg, scalar, text_arg, EFFECTFUL};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::names;
use crate::queue::table::QueueTable;
use crate::store::LocalStore;

pub fn register(db: &Connection) -> rusqlite::Result<()> {
    scalar(db, "attachment_save", "attachment_save(data BLOB, ext TEXT [, media_type TEXT [, meta_data TEXT]])", 2..=4, EFFECTFUL, save)?;
    scalar(db, "attachment_save_file", "attachment_save_file(path TEXT, ext TEXT [, media_type TEXT [, meta_data TEXT]])", 2..=4, EFFECTFUL, save_file)?;
    scalar(db, "attachment_delete", "attachment_delete(id TEXT)", 1..=1, EFFECTFUL, delete)?;
    Ok(())
}

fn save(ctx: &Context) -> Result<String> {
    let mut data = bytes_arg(ctx, 0, "data")?;
    save_from(ctx, &mut data)
}

fn save_file(ctx: &Context) -> Result<String> {
    let path = text_arg(ctx, 0, "path")?;
    let unreadable = |e: std::io::Error| Error::Argument(format!("cannot read '{path}': {e}"));
    let not_regular = || Error::Argument(format!("cannot read '{path}': not a regular file"));
    // The type is checked before opening, and the open cannot block: opening a FIFO
    // waits for a writer forever, a device may do anything.
    if !std::fs::metadata(&path).map_err(unreadable)?.is_file() {
        return Err(not_regular());
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .map_err(unreadable)?;
    // Checked again on what was opened: the path may have been swapped in between.
    if !file.metadata().map_err(unreadable)?.is_file() {
        return Err(not_regular());
    }
    save_from(ctx, &mut std::io::BufReader::with_capacity(256 * 1024, file))
}

/// Writes the file durably, then inserts its QUEUED_UPLOAD row in the caller's transaction.
fn save_from(ctx: &Context, data: &mut dyn Read) -> Result<String> {
    let ext = text_arg(ctx, 1, "ext")?;
    let media_type = opt_text_arg(ctx, 2, "media_type")?;
    if let Some(m) = &media_type {
        names::check_media_type(m)?;
    }
    let meta_data = opt_text_arg(ctx, 3, "meta_data")?;
    let conn = caller(ctx)?;
    let config = Config::load(&conn)?;
    // A database last initialised by an earlier build gets the newer columns first (in the
    // caller's transaction, like the INSERT below).
    crate::schema::ensure(&conn, &config.table)?;
    let store = LocalStore::open(config.local_dir_for(conn.path())?)?;
    crate::ownership::check_save(&conn, conn.path(), store.dir(), &config.table)?; // not another database's folder, nor the original's
    let id = uuid::Uuid::new_v4().to_string();
    let filename = names::filename(&id, &ext)?;
    let media_type = media_type.unwrap_or_else(|| names::guess_media_type(names::ext_of(&filename)));
    // `_held` keeps verify off the file until the INSERT below has returned; from then on
    // this connection holds the write lock until its transaction ends (see verify.rs).
    let (written, _held) = store.write_from(&filename, data)?;
    let inserted = QueueTable::unclaimed(&conn, &config.table).insert_upload(
        &id,
        &filename,
        written.size,
        &media_type,
        meta_data.as_deref(),
        &written.sha256,
    );
    if let Err(e) = inserted {
        let _ = store.remove(&filename);
        return Err(e);
    }
    Ok(id)
}

/// Marks a row QUEUED_DELETE; the sync removes the remote object, the file and the row.
/// Returns NULL for an id with no row (already deleted, or never known here).
fn delete(ctx: &Context) -> Result<Option<String>> {
    // NULL in, NULL out, as for the readers: a row without an attachment has nothing to delete.
    let Some(id) = opt_text_arg(ctx, 0, "id")? else { return Ok(None) };
    let conn = caller(ctx)?;
    let config = Config::load(&conn)?;
    let marked = QueueTable::unclaimed(&conn, &config.table).mark_for_delete(&id)?;
    Ok(marked.then_some(id))
}
