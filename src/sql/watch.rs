//! attachment_watch and attachment_unwatch.

use super::Context;
use rusqlite::Connection;

use super::{caller, opt_text_arg, scalar, text_arg, EFFECTFUL};
use crate::config::Config;
use crate::connection::DbTarget;
use crate::error::{Error, Result};
use crate::watch::Options;

pub fn register(db: &Connection) -> rusqlite::Result<()> {
    scalar(db, "attachment_watch", "attachment_watch(name TEXT, query TEXT [, options TEXT])", 2..=3, EFFECTFUL, watch)?;
    scalar(db, "attachment_unwatch", "attachment_unwatch(name TEXT)", 1..=1, EFFECTFUL, unwatch)?;
    Ok(())
}

fn watch(ctx: &Context) -> Result<i64> {
    let name = text_arg(ctx, 0, "name")?;
    let query = text_arg(ctx, 1, "query")?;
    let options = Options::parse(opt_text_arg(ctx, 2, "options")?.as_deref())?;
    let conn = caller(ctx)?;
    let config = Config::load(&conn)?;
    // The query is analysed and tried on a connection of our own (see watch::watch).
    if conn.path().is_none_or(|p| p.is_empty()) {
        return Err(Error::Misuse(
            "attachment_watch needs a database file: watch queries run on the extension's own connection, \
             which an in-memory or temporary database cannot have"
                .into(),
        ));
    }
    let target = DbTarget::of(&conn, "attachment_watch()")?;
    Ok(crate::watch::watch(&conn, &target, &config, &name, &query, &options)? as i64)
}

fn unwatch(ctx: &Context) -> Result<i64> {
    let name = text_arg(ctx, 0, "name")?;
    let conn = caller(ctx)?;
    Config::load(&conn)?;
    Ok(crate::watch::unwatch(&conn, &name)? as i64)
}
