//! attachment_watch and attachment_unwatch.

use super::Context;
use rusqlite::Connection;

use super::{caller, scalar, text_arg, EFFECTFUL};
use crate::config::Config;
use crate::error::Result;

pub fn register(db: &Connection) -> rusqlite::Result<()> {
    scalar(db, "attachment_watch", "attachment_watch(name TEXT, query TEXT)", 2..=2, EFFECTFUL, watch)?;
    scalar(db, "attachment_unwatch", "attachment_unwatch(name TEXT)", 1..=1, EFFECTFUL, unwatch)?;
    Ok(())
}

fn watch(ctx: &Context) -> Result<i64> {
    let name = text_arg(ctx, 0, "name")?;
    let query = text_arg(ctx, 1, "query")?;
    let conn = caller(ctx)?;
    let config = Config::load(&conn)?;
    Ok(crate::watch::watch(&conn, &config, &name, &query)? as i64)
}

fn unwatch(ctx: &Context) -> Result<i64> {
    let name = text_arg(ctx, 0, "name")?;
    let conn = caller(ctx)?;
    Config::load(&conn)?;
    Ok(crate::watch::unwatch(&conn, &name)? as i64)
}
