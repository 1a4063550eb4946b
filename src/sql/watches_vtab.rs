//! `attachment_watches`: an eponymous read-only virtual table, one row per watch with
//! its query, options, state (`ok` or `failed`), last error, last run (ms since the
//! epoch) and whether every table it reads carries triggers (`incremental`).

use std::borrow::Cow;
use std::ffi::{c_int, CStr};
use std::marker::PhantomData;

use rusqlite::types::Value;
use rusqlite::vtab::{Context, Filters, IndexInfo, Module, VTab, VTabConfig, VTabConnection, VTabCursor};
use rusqlite::{ffi, Connection};

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
        db.config(VTabConfig::DirectOnly)?;
        let handle = unsafe { db.handle() };
        let sql = std::ffi::CString::new(format!("CREATE TABLE x({})", COLUMNS.join(", ")))
            .map_err(|e| rusqlite::Error::ModuleError(e.to_string()))?;
        Ok((Cow::Owned(sql), WatchesTab { base: ffi::sqlite3_vtab::default(), db: handle }))
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<bool> {
        // Watches are few: always a scan.
        info.set_estimated_cost(100.0);
        Ok(true)
    }

    fn open(&'vtab mut self) -> rusqlite::Result<WatchesCursor<'vtab>> {
        Ok(WatchesCursor { base: ffi::sqlite3_vtab_cursor::default(), db: self.db, rows: Vec::new(), pos: 0, phantom: PhantomData })
    }
}

#[repr(C)]
struct WatchesCursor<'vtab> {
    base: ffi::sqlite3_vtab_cursor,
    db: *mut ffi::sqlite3,
    rows: Vec<Vec<Value>>,
    pos: usize,
    phantom: PhantomData<&'vtab WatchesTab>,
}

impl WatchesCursor<'_> {
    fn load(&mut self) -> crate::error::Result<()> {
        // Safety: SQLite calls xFilter on the connection's own thread; the
        // Connection made here does not own (and will not close) the handle.
        let conn = unsafe { Connection::from_handle(self.db)? };
        self.rows.clear();
        self.pos = 0;
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
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.load())) {
            Ok(result) => result.map_err(|e| e.into_sql("attachment_watches")),
            Err(_) => Err(crate::error::Error::Misuse("internal error".into()).into_sql("attachment_watches")),
        }
    }

    fn next(&mut self) -> rusqlite::Result<()> {
        self.pos += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.pos >= self.rows.len()
    }

    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        match self.rows.get(self.pos).and_then(|r| r.get(i as usize)) {
            Some(v) => ctx.set_result(v),
            None => ctx.set_result(&Value::Null),
        }
    }

    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(self.pos as i64)
    }
}
