//! attachment_local_uri, attachment_data, and the pure helpers
//! attachment_filename and attachment_media_type.

use super::Context;
use rusqlite::{Connection, OptionalExtension};

use super::{caller, text_arg, scalar, EFFECTFUL, PURE};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::names;
use crate::schema::quote_ident;
use crate::store::LocalStore;

pub fn register(db: &Connection) -> rusqlite::Result<()> {
    scalar(db, "attachment_local_uri", "attachment_local_uri(id TEXT)", 1..=1, EFFECTFUL, local_uri)?;
    scalar(db, "attachment_data", "attachment_data(id TEXT)", 1..=1, EFFECTFUL, data)?;
    scalar(db, "attachment_filename", "attachment_filename(id TEXT, ext TEXT)", 2..=2, PURE, filename)?;
    scalar(db, "attachment_media_type", "attachment_media_type(filename TEXT)", 1..=1, PURE, media_type)?;
    Ok(())
}

/// Absolute path of the complete local copy of `id`, if there is one.
fn complete_local_path(ctx: &Context) -> Result<Option<std::path::PathBuf>> {
    let id = text_arg(ctx, 0, "id")?;
    let conn = caller(ctx)?;
    let config = Config::load(&conn)?;
    let local_uri: Option<String> = conn
        .query_row(
            &format!("SELECT local_uri FROM main.{} WHERE id = ?1", quote_ident(&config.table)),
            [&id],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten();
    let Some(local_uri) = local_uri else { return Ok(None) };
    let store = LocalStore::open(config.local_dir_for(conn.path())?)?;
    Ok(store.existing(&local_uri))
}

fn local_uri(ctx: &Context) -> Result<Option<String>> {
    Ok(complete_local_path(ctx)?.map(|p| p.to_string_lossy().into_owned()))
}

fn data(ctx: &Context) -> Result<Option<Vec<u8>>> {
    let Some(path) = complete_local_path(ctx)? else { return Ok(None) };
    std::fs::read(&path).map(Some).map_err(|e| Error::io(path, e))
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
