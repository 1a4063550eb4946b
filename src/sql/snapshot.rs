//! What the extension's read-only virtual tables share: declaring their columns, and
//! a cursor over the rows read when SQLite starts a scan (xFilter).

use std::borrow::Cow;
use std::ffi::{c_int, CStr, CString};

use rusqlite::types::Value;
use rusqlite::vtab::{Context, VTabConfig, VTabConnection};
use rusqlite::ffi;

use crate::error::{Error, Result};

/// Declares a direct-only table with `columns`; returns the declaration and the
/// connection's handle, which the cursors read through.
pub fn declare(db: &mut VTabConnection, columns: &[&str]) -> rusqlite::Result<(Cow<'static, CStr>, *mut ffi::sqlite3)> {
    db.config(VTabConfig::DirectOnly)?;
    let handle = unsafe { db.handle() };
    let sql = CString::new(format!("CREATE TABLE x({})", columns.join(", ")))
        .map_err(|e| rusqlite::Error::ModuleError(e.to_string()))?;
    Ok((Cow::Owned(sql), handle))
}

/// Runs a cursor's load; its errors are prefixed with the table's name, and a panic
/// becomes an error instead of unwinding into SQLite.
pub fn load(table: &str, f: impl FnOnce() -> Result<()>) -> rusqlite::Result<()> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(|e| e.into_sql(table)),
        Err(_) => Err(Error::Misuse("internal error".into()).into_sql(table)),
    }
}

/// The rows of one scan, and the position in them.
#[derive(Default)]
pub struct Rows {
    rows: Vec<Vec<Value>>,
    pos: usize,
}

impl Rows {
    pub fn clear(&mut self) {
        self.rows.clear();
        self.pos = 0;
    }

    pub fn push(&mut self, row: Vec<Value>) {
        self.rows.push(row);
    }

    pub fn next(&mut self) -> rusqlite::Result<()> {
        self.pos += 1;
        Ok(())
    }

    pub fn eof(&self) -> bool {
        self.pos >= self.rows.len()
    }

    pub fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        match self.rows.get(self.pos).and_then(|r| r.get(i as usize)) {
            Some(v) => ctx.set_result(v),
            None => ctx.set_result(&Value::Null),
        }
    }

    pub fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(self.pos as i64)
    }
}
