//! attachment_retry: failed or given-up rows back to their queue at once.

use super::Context;
use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::{caller, scalar, text_arg, EFFECTFUL};
use crate::config::Config;
use crate::error::Result;
use crate::queue::table::QueueTable;

pub fn register(db: &Connection) -> rusqlite::Result<()> {
    scalar(db, "attachment_retry", "attachment_retry(id TEXT or NULL)", 1..=1, EFFECTFUL, retry)
}

/// With an id, that row; with NULL, every row. A download that was given up (ARCHIVED
/// after 404, 410 or max_attempts) is queued again; a queued row waiting out a backoff
/// is due at once. Returns the number of rows changed, and wakes this process's worker.
fn retry(ctx: &Context) -> Result<i64> {
    let id = match ctx.get_raw(0) {
        ValueRef::Null => None,
        _ => Some(text_arg(ctx, 0, "id")?),
    };
    let conn = caller(ctx)?;
    let config = Config::load(&conn)?;
    let n = QueueTable::unclaimed(&conn, &config.table).retry(id.as_deref())?;
    if let Some(db_file) = conn.path().filter(|p| !p.is_empty()) {
        if n > 0 {
            crate::worker::wake(db_file);
        }
    }
    Ok(n as i64)
}
