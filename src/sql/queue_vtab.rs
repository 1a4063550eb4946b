//! `attachment_queue`: an eponymous read-only virtual table with every queue
//! column plus state_name, bytes_done, attempts, next_attempt_at, last_error,
//! error_class (the class `last_error` starts with: auth, not_found, network,
//! server, local, config, integrity), pinned, last_used (including reads this
//! process noted and has not written yet, see cache.rs), priority, given_up, and rate
//! (bytes per second of a transfer in flight, since it started).

use std::borrow::Cow;
use std::ffi::{c_int, CStr};
use std::marker::PhantomData;

use rusqlite::types::Value;
use rusqlite::vtab::{
    Context, Filters, IndexConstraintOp, IndexInfo, Module, VTab, VTabConnection, VTabCursor,
};
use rusqlite::{ffi, Connection};

use super::snapshot::{self, Rows};

use crate::config::Config;
use crate::queue::State;
use crate::remote::ErrorClass;
use crate::schema::quote_ident;

const COLUMNS: [&str; 21] = [
    "id", "filename", "local_uri", "timestamp", "size", "media_type", "state", "has_synced", "meta_data",
    "state_name", "bytes_done", "attempts", "next_attempt_at", "last_error", "sha256", "error_class",
    "pinned", "last_used", "priority", "given_up", "rate",
];
const COL_STATE: usize = 6;
const COL_STATE_NAME: usize = 9;
const COL_BYTES_DONE: usize = 10;
const COL_LAST_ERROR: usize = 13;
const COL_ERROR_CLASS: usize = 15;
const COL_LAST_USED: usize = 17;
const COL_RATE: usize = 20;

pub fn register(db: &Connection) -> rusqlite::Result<()> {
    const MODULE: Module<QueueTab> = Module::eponymous_only_module();
    db.create_module(c"attachment_queue", &MODULE, None)
}

#[repr(C)]
struct QueueTab {
    base: ffi::sqlite3_vtab,
    db: *mut ffi::sqlite3,
}

unsafe impl<'vtab> VTab<'vtab> for QueueTab {
    type Aux = ();
    type Cursor = QueueCursor<'vtab>;

    fn connect(
        db: &mut VTabConnection,
        _aux: Option<&()>,
        _module_name: &[u8],
        _database_name: &[u8],
        _table_name: &[u8],
        _args: &[&[u8]],
    ) -> rusqlite::Result<(Cow<'static, CStr>, Self)> {
        let (sql, handle) = snapshot::declare(db, &COLUMNS)?;
        Ok((sql, QueueTab { base: ffi::sqlite3_vtab::default(), db: handle }))
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<bool> {
        // `WHERE id = ?` is answered by the primary key instead of a scan.
        let mut by_id = None;
        for (i, c) in info.constraints().enumerate() {
            if c.is_usable() && c.column() == 0 && c.operator() == IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ {
                by_id = Some(i);
            }
        }
        if let Some(i) = by_id {
            let mut usage = info.constraint_usage(i);
            usage.set_argv_index(1);
            usage.set_omit(true);
            info.set_idx_num(1);
            info.set_estimated_cost(1.0);
            info.set_estimated_rows(1);
        } else {
            info.set_idx_num(0);
            info.set_estimated_cost(1_000_000.0);
        }
        Ok(true)
    }

    fn open(&'vtab mut self) -> rusqlite::Result<QueueCursor<'vtab>> {
        Ok(QueueCursor { base: ffi::sqlite3_vtab_cursor::default(), db: self.db, rows: Rows::default(), db_file: String::new(), phantom: PhantomData })
    }
}

#[repr(C)]
struct QueueCursor<'vtab> {
    base: ffi::sqlite3_vtab_cursor,
    db: *mut ffi::sqlite3,
    rows: Rows,
    db_file: String,
    phantom: PhantomData<&'vtab QueueTab>,
}

impl QueueCursor<'_> {
    fn load(&mut self, id: Option<String>) -> crate::error::Result<()> {
        // Safety: SQLite calls xFilter on the connection's own thread; the
        // Connection made here does not own (and will not close) the handle.
        let conn = unsafe { Connection::from_handle(self.db)? };
        let config = Config::load(&conn)?;
        self.db_file = conn.path().unwrap_or("").to_string();
        let filter = if id.is_some() { "WHERE id = ?1" } else { "" };
        // Columns of later layouts read as their defaults until the database is migrated
        // (its first attachment_init, sync pass, or a function that writes them): a read cannot.
        let present: std::collections::HashSet<String> = conn
            .prepare("SELECT name FROM main.pragma_table_info(?1)")?
            .query_map([&config.table], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let column = |name: &str, default: &str| if present.contains(name) { name.to_string() } else { default.to_string() };
        let (given_up, started_at) = (column("given_up", "NULL"), column("started_at", "NULL"));
        // language=SQLite
        let sql = format!(
            "SELECT id, filename, local_uri, timestamp, size, media_type, state, has_synced, meta_data,
                    NULL, {}, attempts, next_attempt_at, last_error, {}, NULL, {}, {}, {},
                    {given_up}, {started_at}, {}, {}
             FROM main.{} {filter} ORDER BY rowid",
            column("bytes_done", "NULL"),
            column("sha256", "NULL"),
            column("pinned", "0"),
            column("last_used", "NULL"),
            column("priority", "0"),
            column("claimed_by", "NULL"),
            column("claimed_until", "NULL"),
            quote_ident(&config.table)
        );
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = match &id {
            Some(id) => stmt.query([id])?,
            None => stmt.query([])?,
        };
        self.rows.clear();
        let now = crate::queue::now_ms();
        // Whether each claim's owner is known to be dead (looked up once per owner).
        let mut dead: std::collections::HashMap<String, bool> = Default::default();
        while let Some(r) = rows.next()? {
            let mut row: Vec<Value> = (0..COLUMNS.len()).map(|i| r.get(i)).collect::<rusqlite::Result<_>>()?;
            // A claim whose lease is over or whose owner died (a killed worker) is not in
            // flight: the bytes and start it published are not shown (as in attachment_progress).
            let claimed_by = r.get::<_, Option<String>>(COLUMNS.len()).ok().flatten();
            let claimed_until = r.get::<_, Option<i64>>(COLUMNS.len() + 1).ok().flatten();
            let live_claim = match (claimed_by, claimed_until) {
                (Some(by), Some(until)) if until >= now => {
                    !*dead.entry(by.clone()).or_insert_with(|| crate::owner::is_dead(&self.db_file, &by))
                }
                _ => false,
            };
            let state = match row[COL_STATE] {
                Value::Integer(s) => State::from_code(s),
                _ => None,
            };
            row[COL_STATE_NAME] = state.map(|s| Value::Text(s.as_str().into())).unwrap_or(Value::Null);
            row[COL_ERROR_CLASS] = match &row[COL_LAST_ERROR] {
                Value::Text(e) => ErrorClass::of_message(e).map(|c| Value::Text(c.as_str().into())).unwrap_or(Value::Null),
                _ => Value::Null,
            };
            // Progress of a transfer in this process is live; another process's is
            // published in the row about once a second.
            let stored = match row[COL_BYTES_DONE] {
                Value::Integer(n) if live_claim => n,
                _ => 0,
            };
            let mut started = match row[COL_RATE] {
                Value::Integer(at) if live_claim => Some(at),
                _ => None,
            };
            let done = match (&row[0], state) {
                (Value::Text(id), Some(s)) if s.is_queued() => match crate::sync::transfer_progress(&self.db_file, id) {
                    Some((live, at)) => {
                        started = Some(at);
                        stored.max(live as i64)
                    }
                    None => stored,
                },
                (_, Some(State::Synced)) => match row[4] {
                    Value::Integer(size) => size,
                    _ => 0,
                },
                _ => 0,
            };
            row[COL_BYTES_DONE] = Value::Integer(done);
            // Average since the transfer started moving bytes; NULL for rows not in flight.
            row[COL_RATE] = match (state, started) {
                (Some(s), Some(at)) if s.is_queued() => {
                    let secs = (crate::queue::now_ms() - at).max(1) as f64 / 1000.0;
                    Value::Real((done as f64 / secs).round())
                }
                _ => Value::Null,
            };
            // Reads are written lazily (cache.rs); this process's are shown at once.
            if let Value::Text(id) = &row[0] {
                if let Some(noted) = crate::cache::pending_use(&self.db_file, id) {
                    row[COL_LAST_USED] = match row[COL_LAST_USED] {
                        Value::Integer(written) if written >= noted => Value::Integer(written),
                        _ => Value::Integer(noted),
                    };
                }
            }
            self.rows.push(row);
        }
        Ok(())
    }
}

unsafe impl VTabCursor for QueueCursor<'_> {
    fn filter(&mut self, idx_num: c_int, _idx_str: Option<&str>, args: &Filters<'_>) -> rusqlite::Result<()> {
        let id: Option<String> = if idx_num == 1 { args.get::<Option<String>>(0)? } else { None };
        if idx_num == 1 && id.is_none() {
            self.rows.clear();
            return Ok(());
        }
        snapshot::load("attachment_queue", || self.load(id))
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
