//! `attachment_watches`: an eponymous read-only virtual table, one row per watch with
//! its query, options, state (`ok` or `failed`), last error, last run (ms since the
//! epoch) and whether it is refreshed row by row (`incremental`; else re-run in full).

use std::borrow::Cow;
use std::ffi::{c_int, CStr};
use std::marker::PhantomData;

use rusqlite::vtab::{Context, Filters, IndexInfo, Module, VTab, VTabConnection, VTabCursor};
use rusqlite::{ffi, Connection};

use super::snapshot::{self, Rows};

const COLUMNS: [&str; 7] = ["name", "query", "options", "state", "last_error", "last_run", "incremental"];

pub fn register(db: &Connection) -> rusqlite::Result<()> {
    const MODULE: Module<WatchesTab> = Module::eponymous_only_module();
    db.create_module(c"attachment_watches", &MODULE, None)
}

#[repr(C)]
struct WatchesTab {
    base: ffi::sqlite3_vtab,
    db: *mut ffi::sqlite3,
}

unsafe impl<'vtab> VTab<'vtab> for WatchesTab {
    type Aux = ();
    type Cursor = WatchesCursor<'vtab>;

    fn connect(
        db: &mut VTabConnection,
        _aux: Option<&()>,
        _module_name: &[u8],
        _database_name: &[u8],
        _table_name: &[u8],
        _args: &[&[u8]],
    ) -> rusqlite::Result<(Cow<'static, CStr>, Self)> {
        let (sql, handle) = snapshot::declare(db, &COLUMNS)?;
        Ok((sql, WatchesTab { base: ffi::sqlite3_vtab::default(), db: handle }))
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<bool> {
        // Watches are few: always a scan.
        info.set_estimated_cost(100.0);
        Ok(true)
    }

    fn open(&'vtab mut self) -> rusqlite::Result<WatchesCursor<'vtab>> {
        Ok(WatchesCursor { base: ffi::sqlite3_vtab_cursor::default(), db: self.db, rows: Rows::default(), phantom: PhantomData })
    }
}

#[repr(C)]
struct WatchesCursor<'vtab> {
    base: ffi::sqlite3_vtab_cursor,
    db: *mut ffi::sqlite3,
    rows: Rows,
    phantom: PhantomData<&'vtab WatchesTab>,
}

impl WatchesCursor<'_> {
    fn load(&mut self) -> crate::error::Result<()> {
        // Safety: SQLite calls xFilter on the connection's own thread; the
        // Connection made here does not own (and will not close) the handle.
        let conn = unsafe { Connection::from_handle(self.db)? };
        self.rows.clear();
        let exists: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = '_attachments_watch')",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(());
        }
        let mut stmt = conn.prepare(
            "SELECT name, query, options, state, last_error, last_run, incremental FROM main._attachments_watch ORDER BY name",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            self.rows.push((0..COLUMNS.len()).map(|i| r.get(i)).collect::<rusqlite::Result<_>>()?);
        }
        Ok(())
    }
}

unsafe impl VTabCursor for WatchesCursor<'_> {
    fn filter(&mut self, _idx_num: c_int, _idx_str: Option<&str>, _args: &Filters<'_>) -> rusqlite::Result<()> {
        snapshot::load("attachment_watches", || self.load())
    }

    fn next(&mut self) -> rusqlite::Result<()> {
        self.rows.next()
    }

    fn eof(&self) -> bool {
        self.rows.eof()
    }

    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        self.rows.column(ctx, i)
    }

    fn rowid(&self) -> rusqlite::Result<i64> {
        self.rows.rowid()
    }
}
