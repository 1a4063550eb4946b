//! attachment_pin, attachment_unpin and attachment_cache: the SQL surface of the
//! archived cache (the policy is in `crate::cache`).

use super::Context;
use rusqlite::Connection;

use super::{caller, opt_text_arg, scalar, EFFECTFUL};
use crate::config::Config;
use crate::error::Result;
use crate::names;

pub fn register(db: &Connection) -> rusqlite::Result<()> {
    scalar(db, "attachment_pin", "attachment_pin(id TEXT)", 1..=1, EFFECTFUL, pin)?;
    scalar(db, "attachment_unpin", "attachment_unpin(id TEXT)", 1..=1, EFFECTFUL, unpin)?;
    scalar(db, "attachment_cache", "attachment_cache()", 0..=0, EFFECTFUL, report)?;
    Ok(())
}

/// The id argument: NULL gives None (NULL out, as for the readers); an unsafe id is an error.
fn id_arg(ctx: &Context) -> Result<Option<String>> {
    let Some(id) = opt_text_arg(ctx, 0, "id")? else { return Ok(None) };
    names::check_id(&id)?;
    Ok(Some(id))
}

/// 1 when the attachment is pinned (it has a row, or a watch references it), 0 when there
/// is no such attachment. Writes in the caller's transaction.
fn pin(ctx: &Context) -> Result<Option<i64>> {
    let Some(id) = id_arg(ctx)? else { return Ok(None) };
    let conn = caller(ctx)?;
    let config = Config::load(&conn)?;
    // A database last initialised by an earlier build gets the cache's columns first.
    crate::schema::ensure(&conn, &config.table)?;
    Ok(Some(crate::cache::pin(&conn, &config, &id)? as i64))
}

/// 1 when the row exists (now unpinned), 0 when there is none.
fn unpin(ctx: &Context) -> Result<Option<i64>> {
    let Some(id) = id_arg(ctx)? else { return Ok(None) };
    let conn = caller(ctx)?;
    let config = Config::load(&conn)?;
    // A database last initialised by an earlier build gets the cache's columns first.
    crate::schema::ensure(&conn, &config.table)?;
    Ok(Some(crate::cache::unpin(&conn, &config, &id)? as i64))
}

fn report(ctx: &Context) -> Result<String> {
    let conn = caller(ctx)?;
    let config = Config::load(&conn)?;
    // A database last initialised by an earlier build gets the cache's columns first.
    crate::schema::ensure(&conn, &config.table)?;
    Ok(crate::cache::report(&conn, &config, conn.path().unwrap_or(""))?.to_string())
}
