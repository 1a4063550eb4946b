//! The SQL surface: thin wrappers that check arguments, call the logic
//! elsewhere, and turn errors into SQL errors prefixed with the function name.

mod control;
mod queue_vtab;
mod read;
mod retry;
mod save;
mod watch;
mod watches_vtab;

use std::ops::RangeInclusive;

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::{ToSql, ValueRef};
use rusqlite::Connection;

use crate::error::{Error, Result};

/// Registers every function and virtual table on `db`.
pub fn register(db: &Connection) -> rusqlite::Result<()> {
    save::register(db)?;
    read::register(db)?;
    watch::register(db)?;
    control::register(db)?;
    queue_vtab::register(db)?;
    retry::register(db)?;
    watches_vtab::register(db)?;
    Ok(())
}

/// Functions that read or write the queue: never deterministic, never from triggers or views.
pub const EFFECTFUL: FunctionFlags = FunctionFlags::SQLITE_UTF8.union(FunctionFlags::SQLITE_DIRECTONLY);
/// Pure helpers, safe anywhere.
pub const PURE: FunctionFlags = FunctionFlags::SQLITE_UTF8
    .union(FunctionFlags::SQLITE_DETERMINISTIC)
    .union(FunctionFlags::SQLITE_INNOCUOUS);

/// Registers `name` taking `arity` arguments. Any other count is an error that
/// shows `signature`; errors from `f` are prefixed with `name`.
pub fn scalar<T: ToSql + 'static>(
    db: &Connection,
    name: &'static str,
    signature: &'static str,
    arity: RangeInclusive<usize>,
    flags: FunctionFlags,
    f: fn(&Context) -> Result<T>,
) -> rusqlite::Result<()> {
    db.create_scalar_function(name, -1, flags, move |ctx| {
        if !arity.contains(&ctx.len()) {
            let expected = if arity.start() == arity.end() {
                format!("{}", arity.start())
            } else {
                format!("{} to {}", arity.start(), arity.end())
            };
            let got = ctx.len();
            return Err(Error::Argument(format!("expected {expected} argument(s): {signature}; got {got}")).into_sql(name));
        }
        f(ctx).map_err(|e| e.into_sql(name))
    })
}

/// The connection that called the function.
pub fn caller<'a>(ctx: &'a Context<'_>) -> Result<rusqlite::functions::ConnectionRef<'a>> {
    // Safety: the reference lives only for this call, on the calling thread.
    Ok(unsafe { ctx.get_connection()? })
}

fn type_name(v: &ValueRef) -> &'static str {
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "INTEGER",
        ValueRef::Real(_) => "REAL",
        ValueRef::Text(_) => "TEXT",
        ValueRef::Blob(_) => "BLOB",
    }
}

/// Argument `i` as text; `what` names it in the error.
pub fn text_arg(ctx: &Context, i: usize, what: &str) -> Result<String> {
    match ctx.get_raw(i) {
        ValueRef::Text(t) => String::from_utf8(t.to_vec()).map_err(|_| Error::Argument(format!("{what} is not valid UTF-8"))),
        other => Err(Error::Argument(format!("{what} must be TEXT, got {}", type_name(&other)))),
    }
}

/// Optional text argument: absent or NULL gives None.
pub fn opt_text_arg(ctx: &Context, i: usize, what: &str) -> Result<Option<String>> {
    if i >= ctx.len() || matches!(ctx.get_raw(i), ValueRef::Null) {
        return Ok(None);
    }
    text_arg(ctx, i, what).map(Some)
}

/// Argument `i` as bytes: a BLOB, or TEXT taken as its UTF-8 bytes.
pub fn bytes_arg<'a>(ctx: &'a Context, i: usize, what: &str) -> Result<&'a [u8]> {
    match ctx.get_raw(i) {
        ValueRef::Blob(b) | ValueRef::Text(b) => Ok(b),
        other => Err(Error::Argument(format!("{what} must be a BLOB, got {}", type_name(&other)))),
    }
}
