//! attachment_local_uri, attachment_data, and the pure helpers
//! attachment_filename and attachment_media_type.

use std::io::Read;

use super::Context;
use rusqlite::{Connection, OptionalExtension};

use super::{caller, opt_text_arg, scalar, EFFECTFUL, PURE};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::names;
use crate::queue::State;
use crate::schema::quote_ident;
use crate::store::LocalStore;

pub fn register(db: &Connection) -> rusqlite::Result<()> {
    scalar(db, "attachment_local_uri", "attachment_local_uri(id TEXT)", 1..=1, EFFECTFUL, local_uri)?;
    scalar(db, "attachment_data", "attachment_data(id TEXT)", 1..=1, EFFECTFUL, data)?;
    scalar(db, "attachment_filename", "attachment_filename(id TEXT, ext TEXT)", 2..=2, PURE, filename)?;
    scalar(db, "attachment_media_type", "attachment_media_type(filename TEXT)", 1..=1, PURE, media_type)?;
    Ok(())
}

/// The store, the name of the local copy of `id` (if the row names one) and the size that
/// copy must have to be complete (None for an upload's own file, or when the row records
/// none). Asking for it is a use of the file: noted in memory for the cache (see
/// cache.rs), never written here.
fn complete_local_path(ctx: &Context) -> Result<Option<(LocalStore, String, Option<u64>)>> {
    // NULL in, NULL out: `SELECT attachment_local_uri(photo_id) FROM users` works for users without a photo.
    let Some(id) = opt_text_arg(ctx, 0, "id")? else { return Ok(None) };
    let conn = caller(ctx)?;
    let config = Config::load(&conn)?;
    // A synced or cached copy whose size is not the row's was damaged (truncated, grown):
    // not served, as attachment_fetch does not serve it (it downloads it again).
    let row: Option<(Option<String>, Option<u64>)> = conn
        .query_row(
            &format!(
                "SELECT local_uri, CASE WHEN state <> {} AND typeof(size) = 'integer' AND size >= 0 THEN size END
                 FROM main.{} WHERE id = ?1",
                State::QueuedUpload as i64,
                quote_ident(&config.table)
            ),
            [&id],
            |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<i64>>(1)?.map(|n| n as u64))),
        )
        .optional()?;
    let Some((Some(local_uri), size)) = row else { return Ok(None) };
    crate::cache::touch(conn.path().unwrap_or(""), &id);
    Ok(Some((LocalStore::open(config.local_dir_for(conn.path())?)?, local_uri, size)))
}

/// The path of the local copy; never a symlink (it could point anywhere), never a copy of
/// the wrong size.
fn local_uri(ctx: &Context) -> Result<Option<String>> {
    let Some((store, name, size)) = complete_local_path(ctx)? else { return Ok(None) };
    let path = store.existing(&name)?.filter(|p| crate::fetch::size_matches(p, size.map(|n| n as i64)));
    Ok(path.map(|p| p.to_string_lossy().into_owned()))
}

/// The local copy's bytes. Opened without following a symlink; a file above SQLite's
/// blob limit is refused before a byte is read (it could not be returned anyway).
fn data(ctx: &Context) -> Result<Option<Vec<u8>>> {
    let Some((store, name, size)) = complete_local_path(ctx)? else { return Ok(None) };
    let opened = match store.open_file(&name) {
        Ok(opened) => opened,
        Err(Error::Argument(_)) => None, // a symlink or special file: not ours to read
        Err(e) => return Err(e),
    };
    let Some((file, len)) = opened.filter(|(_, len)| size.is_none_or(|n| n == *len)) else { return Ok(None) };
    // Safety: the caller's open connection; with -1, sqlite3_limit only reads the limit.
    let limit = unsafe { rusqlite::ffi::sqlite3_limit(caller(ctx)?.handle(), rusqlite::ffi::SQLITE_LIMIT_LENGTH, -1) };
    let limit = limit.max(0) as u64;
    if len > limit {
        return Err(Error::Argument(format!(
            "the local file of {name} is too big to return as a blob ({len} bytes; SQLite's limit is {limit}): read it from attachment_local_uri instead"
        )));
    }
    let mut out = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut out).map_err(|e| Error::io(store.dir().join(&name), e))?;
    if out.len() as u64 > limit {
        return Err(Error::Argument(format!("the local file of {name} grew too big to return as a blob while it was read")));
    }
    Ok(Some(out))
}

/// Argument `i` as borrowed text, without copying; None for anything but valid UTF-8 text.
fn borrowed_text<'a>(ctx: &'a Context, i: usize) -> Option<&'a str> {
    match ctx.get_raw(i) {
        rusqlite::types::ValueRef::Text(t) => std::str::from_utf8(t).ok(),
        _ => None,
    }
}

/// `{id}.{ext}` when both are safe, else NULL (reconciliation skips such references).
/// Called once per new reference, so it borrows its arguments rather than copying them.
fn filename(ctx: &Context) -> Result<Option<String>> {
    let (Some(id), Some(ext)) = (borrowed_text(ctx, 0), borrowed_text(ctx, 1)) else { return Ok(None) };
    Ok(names::filename(id, ext).ok())
}

fn media_type(ctx: &Context) -> Result<Option<String>> {
    let Some(name) = borrowed_text(ctx, 0) else { return Ok(None) };
    Ok(Some(names::guess_media_type(names::ext_of(name))))
}
