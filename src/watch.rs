//! Watches: a named query whose `id` column lists referenced attachments.
//!
//! A watch query is untrusted: `_attachments_watch` is a table any writer of the file
//! can change. So it is never run as stored: each run re-analyses `query` and prepares
//! it under a [`Guard`], an authorizer that denies every function that writes, reads
//! files or moves data, and it runs only on the extension's own connection (so the
//! host's authorizer is never replaced). The tables it reads (seen by the same
//! authorizer) get triggers that mark the watch dirty; trigger bodies are plain SQL,
//! so a writer without the extension loaded still succeeds.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::time::{Duration, Instant};

use rusqlite::{ffi, params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::schema::{quote_ident, quote_literal};

/// Tables (in `main`) a query reads, each with the columns it reads.
type Reads = BTreeMap<String, Vec<String>>;

/// Functions a watch query may not call: they write, read files, or move data.
/// Everything of ours is denied except the two pure helpers.
fn forbidden_function(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if let Some(rest) = name.strip_prefix("attachment_") {
        return !matches!(rest, "filename" | "media_type");
    }
    matches!(
        name.as_str(),
        "readfile" | "writefile" | "edit" | "lsdir" | "load_extension" | "fts3_tokenizer" | "sqlar_compress"
            | "sqlar_uncompress" | "shell_add_schema" | "shell_escape_crnl" | "shell_putsnl" | "sqlite_dbpage"
    )
}

/// Table-valued functions that list or read files (the CLI's), denied like the functions.
fn forbidden_table(name: &str) -> bool {
    matches!(name.to_ascii_lowercase().as_str(), "fsdir" | "zipfile" | "sqlar" | "sqlite_dbpage")
}

/// What the authorizer saw while statements were prepared under it.
#[derive(Default)]
struct Seen {
    /// Collect reads (only while the watch query itself is prepared).
    collect: bool,
    reads: Reads,
    /// Reads without a schema: CTEs, or tables of `main` read without a column.
    unqualified: Vec<String>,
    other_schema: Option<String>,
    denied: Option<String>,
    /// Statements prepared under the guard are stopped past this (see [`time_limit`]).
    deadline: Option<Instant>,
    timed_out: bool,
}

/// How long one watch run may take before it is stopped: a query that never ends (a
/// recursive CTE without a stop condition) would otherwise hold the write lock of
/// every pass for ever. Generous, since a legitimate watch over a million rows takes
/// seconds; `SQLITE_ATTACHMENTS_WATCH_TIME_LIMIT_MS` overrides it (for tests).
fn time_limit() -> Duration {
    std::env::var("SQLITE_ATTACHMENTS_WATCH_TIME_LIMIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(60))
}

unsafe extern "C" fn on_progress(data: *mut c_void) -> c_int {
    std::panic::catch_unwind(|| {
        let seen = &mut *(data as *mut Seen);
        if seen.deadline.is_some_and(|d| Instant::now() > d) {
            seen.timed_out = true;
            return 1;
        }
        // The pass is stopping (attachment_stop_sync, Ctrl-C): end the query now.
        if crate::cancel::requested() {
            return 1;
        }
        0
    })
    .unwrap_or(1)
}

unsafe extern "C" fn on_authorize(
    data: *mut c_void,
    action: c_int,
    arg1: *const c_char,
    arg2: *const c_char,
    schema: *const c_char,
    _trigger: *const c_char,
) -> c_int {
    // Never unwind into SQLite; an internal error denies.
    std::panic::catch_unwind(|| {
        let seen = &mut *(data as *mut Seen);
        let text = |p: *const c_char| if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() };
        match action {
            ffi::SQLITE_FUNCTION => {
                let name = text(arg2);
                if forbidden_function(&name) {
                    seen.denied.get_or_insert(format!("{name}()"));
                    return ffi::SQLITE_DENY;
                }
            }
            ffi::SQLITE_ATTACH | ffi::SQLITE_DETACH => {
                seen.denied.get_or_insert("ATTACH".into());
                return ffi::SQLITE_DENY;
            }
            ffi::SQLITE_READ if !arg1.is_null() => {
                let (table, column, schema) = (text(arg1), text(arg2), text(schema));
                if forbidden_table(&table) {
                    seen.denied.get_or_insert(format!("{table}()"));
                    return ffi::SQLITE_DENY;
                }
                if !seen.collect {
                    return ffi::SQLITE_OK;
                }
                if schema.is_empty() {
                    if !seen.unqualified.contains(&table) {
                        seen.unqualified.push(table);
                    }
                } else if schema != "main" {
                    if !table.starts_with("sqlite_") {
                        seen.other_schema.get_or_insert(format!("{schema}.{table}"));
                    }
                } else {
                    let cols = seen.reads.entry(table).or_default();
                    if !column.is_empty() && !cols.contains(&column) {
                        cols.push(column);
                    }
                }
            }
            _ => {}
        }
        ffi::SQLITE_OK
    })
    .unwrap_or(ffi::SQLITE_DENY)
}

/// The authorizer installed on a connection of our own for as long as this lives:
/// everything prepared meanwhile cannot call a forbidden function. Dropping it removes
/// the authorizer again. Never install it on the host's connection: SQLite cannot
/// give back an authorizer it replaced.
pub struct Guard<'c> {
    conn: &'c Connection,
    seen: *mut Seen,
}

impl<'c> Guard<'c> {
    pub fn install(conn: &'c Connection) -> Guard<'c> {
        let seen = Box::into_raw(Box::new(Seen { deadline: Some(Instant::now() + time_limit()), ..Seen::default() }));
        unsafe {
            ffi::sqlite3_set_authorizer(conn.handle(), Some(on_authorize), seen as *mut c_void);
            // Checked every few thousand virtual machine steps: cheap. A host SQLite built
            // without the progress callback (better-sqlite3) gets no time limit and no stop
            // inside a watch query.
            if crate::host_has_progress_handler() {
                ffi::sqlite3_progress_handler(conn.handle(), 4096, Some(on_progress), seen as *mut c_void);
            }
        }
        Guard { conn, seen }
    }

    // Safety (both): SQLite calls the authorizer only while preparing, on this thread,
    // inside calls made through `conn`; none is in progress while these run.
    fn seen(&self) -> &Seen {
        unsafe { &*self.seen }
    }

    fn seen_mut(&mut self) -> &mut Seen {
        unsafe { &mut *self.seen }
    }

    /// The error for a statement that failed to prepare: a forbidden call if that was it.
    fn explain(&self, e: rusqlite::Error) -> Error {
        if self.seen().timed_out {
            return Error::Argument(format!(
                "query ran for more than {} ms and was stopped: a watch query must finish (does a recursive CTE lack a stop condition?)",
                time_limit().as_millis()
            ));
        }
        match &self.seen().denied {
            Some(f) => Error::Argument(format!(
                "query calls {f}, which a watch may not call: watch queries cannot write, read files or move data"
            )),
            None => e.into(),
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        unsafe {
            ffi::sqlite3_set_authorizer(self.conn.handle(), None, std::ptr::null_mut());
            if crate::host_has_progress_handler() {
                ffi::sqlite3_progress_handler(self.conn.handle(), 0, None, std::ptr::null_mut());
            }
            drop(Box::from_raw(self.seen));
        }
    }
}

/// What a watch query is: the tables it reads and the SELECT that feeds `_attachments_ref`.
pub struct Analysis {
    pub reads: Reads,
    pub select_sql: String,
    /// For a query that can be refreshed row by row: the one table it reads, and the
    /// same SELECT with a first column `rid`, the rowid of the row each result came from.
    pub rows: Option<(String, String)>,
}

/// The words of `query` (upper case), with string literals, quoted identifiers and
/// comments left out, each with the byte offset where it starts.
fn words(query: &str) -> Vec<(usize, String)> {
    let b = query.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let close = match c {
            b'\'' => Some(b'\''),
            b'"' => Some(b'"'),
            b'`' => Some(b'`'),
            b'[' => Some(b']'),
            _ => None,
        };
        if let Some(close) = close {
            i += 1;
            while i < b.len() && b[i] != close {
                i += 1;
            }
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                i += 1;
            }
            i += 2;
        } else if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            out.push((start, query[start..i].to_ascii_uppercase()));
        } else {
            i += 1;
        }
    }
    out
}

/// Words that make a query's result depend on more than each row by itself (or that
/// this simple reading cannot follow): such a watch is re-run in full.
const NOT_ROW_BY_ROW: [&str; 11] =
    ["WITH", "UNION", "INTERSECT", "EXCEPT", "GROUP", "HAVING", "LIMIT", "OFFSET", "OVER", "WINDOW", "VALUES"];

/// `query` with the rowid of its one table as a first column `_attachments_rid`, when
/// its shape allows a refresh row by row: one SELECT (no subquery, compound or CTE),
/// nothing that groups, limits or looks across rows. The caller checks the rest by
/// preparing it (see [`row_by_row`]).
fn with_rowid(query: &str) -> Option<String> {
    let words = words(query);
    let selects: Vec<usize> = words.iter().filter(|(_, w)| w == "SELECT").map(|(i, _)| *i).collect();
    if selects.len() != 1 || words.first().map(|(_, w)| w.as_str()) != Some("SELECT") {
        return None;
    }
    if words.iter().any(|(_, w)| NOT_ROW_BY_ROW.contains(&w.as_str())) {
        return None;
    }
    // After SELECT [DISTINCT | ALL].
    let mut at = selects[0] + "SELECT".len();
    if let Some((i, w)) = words.get(1) {
        if w == "DISTINCT" || w == "ALL" {
            at = i + w.len();
        }
    }
    Some(format!("{} rowid AS _attachments_rid, {}", &query[..at], &query[at..]))
}

/// Whether `rows_sql` (a query of one table `table`, with its rowid) gives each result
/// from one row alone: the table is read once (no self join) and nothing aggregates.
/// Decided from the program SQLite compiles it to.
fn row_by_row(conn: &Connection, table: &str, rows_sql: &str) -> bool {
    let check = || -> rusqlite::Result<bool> {
        let (root, sql): (i64, Option<String>) = conn.query_row(
            "SELECT rootpage, sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            [table],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if sql.is_none_or(|s| s.to_ascii_uppercase().contains("WITHOUT ROWID")) {
            return Ok(false);
        }
        // A column named like the rowid hides it.
        let hidden: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE lower(name) IN ('rowid', 'oid', '_rowid_'))",
            [table],
            |r| r.get(0),
        )?;
        if hidden {
            return Ok(false);
        }
        let mut stmt = conn.prepare(&format!("EXPLAIN {rows_sql}"))?;
        let mut rows = stmt.query([])?;
        let mut opens = 0;
        while let Some(r) = rows.next()? {
            let opcode: String = r.get(1)?;
            if opcode.starts_with("Agg") {
                return Ok(false);
            }
            if (opcode == "OpenRead" || opcode == "ReopenIdx") && r.get::<_, i64>(3)? == root {
                opens += 1;
            }
        }
        Ok(opens <= 1)
    };
    check().unwrap_or(false)
}

/// Prepares `query` under `guard` to learn what it reads, and wraps it into the SELECT
/// that feeds `_attachments_ref` (values cast to TEXT where the queue expects text).
/// The caller keeps `guard` installed while it prepares anything built from the result.
pub fn analyze(conn: &Connection, guard: &mut Guard, query: &str) -> Result<Analysis> {
    let query = query.trim().trim_end_matches(';').trim();
    if query.is_empty() {
        return Err(Error::Argument("query is empty".into()));
    }
    let deadline = guard.seen().deadline;
    *guard.seen_mut() = Seen { collect: true, deadline, ..Seen::default() };
    let prepared = conn.prepare(query).map(|stmt| {
        let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        (stmt.readonly(), names)
    });
    guard.seen_mut().collect = false;
    let (readonly, columns) = match prepared {
        Ok(p) => p,
        Err(e) => {
            return Err(match guard.explain(e) {
                Error::Sqlite(e) => Error::Argument(format!("query does not prepare: {e}")),
                other => other,
            })
        }
    };
    if !readonly {
        return Err(Error::Argument("query must be a read-only SELECT".into()));
    }
    let seen = guard.seen_mut();
    if let Some(t) = seen.other_schema.take() {
        return Err(Error::Argument(format!("query reads {t}; watched tables must be in the main schema")));
    }
    // A read without a schema is a CTE (recursive ones included) or a table of main
    // read without any column; only the latter needs triggers.
    let mut reads = std::mem::take(&mut seen.reads);
    for name in std::mem::take(&mut seen.unqualified) {
        let in_main: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type IN ('table', 'view') AND name = ?1 COLLATE NOCASE)",
            [&name],
            |r| r.get(0),
        )?;
        if in_main {
            reads.entry(name).or_default();
        }
    }
    let find = |want: &str| columns.iter().find(|c| c.eq_ignore_ascii_case(want)).map(|c| quote_ident(c));
    let Some(id) = find("id") else {
        return Err(Error::Argument(format!(
            "query must return a column named id (it returns: {})",
            if columns.is_empty() { "nothing".to_string() } else { columns.join(", ") }
        )));
    };
    let text = |name: &str| find(name).map(|c| format!("CAST(w.{c} AS TEXT)")).unwrap_or_else(|| "NULL".into());
    let size = find("size").map(|c| format!("CAST(w.{c} AS INTEGER)")).unwrap_or_else(|| "NULL".into());
    // The newline ends a trailing `--` comment in the query.
    // language=SQLite
    let wrap = |rid: &str, query: &str| {
        format!(
            "SELECT {rid}CAST(w.{id} AS TEXT) AS id, {} AS file_extension, {} AS media_type, {} AS meta_data, {size} AS size
             FROM ({query}\n) AS w WHERE w.{id} IS NOT NULL",
            text("file_extension"),
            text("media_type"),
            text("meta_data")
        )
    };
    let select_sql = wrap("", query);
    // Row by row only for one table of main (no CTE) whose query keeps each row apart.
    let rows = match (reads.len(), with_rowid(query)) {
        (1, Some(q)) if !columns.iter().any(|c| c.eq_ignore_ascii_case("_attachments_rid")) => {
            let table = reads.keys().next().cloned().unwrap_or_default();
            let rows_sql = wrap("w._attachments_rid AS rid, ", &q);
            row_by_row(conn, &table, &rows_sql).then_some((table, rows_sql))
        }
        _ => None,
    };
    Ok(Analysis { reads, select_sql, rows })
}

/// A watch's options (the contract's `attachment_watch` third argument).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Options {
    pub download: Option<bool>,
    pub priority: Option<i64>,
    pub max_download_size: Option<i64>,
    pub refresh_ms: Option<i64>,
}

/// `refresh_ms` below this would keep the worker busy for nothing.
const MIN_REFRESH_MS: i64 = 100;

impl Options {
    /// Parses and checks the JSON options; None or NULL means none.
    pub fn parse(text: Option<&str>) -> Result<Options> {
        let Some(text) = text else { return Ok(Options::default()) };
        let bad = |key: &str, why: &str| Error::Argument(format!("options: '{key}' {why}"));
        let value: Value =
            serde_json::from_str(text).map_err(|e| Error::Argument(format!("options are not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(Error::Argument("options must be a JSON object".into()));
        };
        // serde_json keeps the last of two equal keys without a word; the config refuses them too.
        if let Some(key) = crate::config::duplicate_key(text) {
            return Err(bad(&key, "is given more than once; give each key once"));
        }
        let mut o = Options::default();
        for (key, v) in &obj {
            match key.as_str() {
                "download" => o.download = Some(v.as_bool().ok_or_else(|| bad(key, "must be true or false"))?),
                "priority" => o.priority = Some(v.as_i64().ok_or_else(|| bad(key, "must be an integer"))?),
                "max_download_size" => {
                    o.max_download_size =
                        Some(v.as_i64().filter(|n| *n >= 0).ok_or_else(|| bad(key, "must be a number of bytes, 0 or more"))?)
                }
                "refresh_ms" => {
                    o.refresh_ms = Some(
                        v.as_i64()
                            .filter(|n| *n >= MIN_REFRESH_MS)
                            .ok_or_else(|| bad(key, &format!("must be an integer of at least {MIN_REFRESH_MS} (milliseconds)")))?,
                    )
                }
                _ => {
                    return Err(bad(key, "is not a known option; known options are download, priority, max_download_size, refresh_ms"))
                }
            }
        }
        Ok(o)
    }

    /// The options as stored and shown: only the keys that were given.
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        if let Some(v) = self.download {
            m.insert("download".into(), v.into());
        }
        if let Some(v) = self.priority {
            m.insert("priority".into(), v.into());
        }
        if let Some(v) = self.max_download_size {
            m.insert("max_download_size".into(), v.into());
        }
        if let Some(v) = self.refresh_ms {
            m.insert("refresh_ms".into(), v.into());
        }
        Value::Object(m).to_string()
    }
}

/// What a watch's options decide for each id it references: whether it is downloaded
/// (`download`, and its `size` column against `max_download_size`) and its priority.
/// An id several watches reference takes the most generous policy (see reconcile.rs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub download: bool,
    pub priority: i64,
    pub max_download_size: Option<i64>,
}

impl Options {
    pub fn policy(&self) -> Policy {
        Policy { download: self.download.unwrap_or(true), priority: self.priority.unwrap_or(0), max_download_size: self.max_download_size }
    }
}

/// Aggregates that make a trial run evaluate every column of a watch's result.
const PROBE_COLUMNS: &str =
    "count(*), max(length(id)), max(length(file_extension)), max(length(media_type)), max(length(meta_data)), max(size)";

/// Checks a watch name: 1 to 64 letters, digits, '_' or '-'.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Argument(format!("watch name '{}' must be 1 to 64 letters, digits, '_' or '-'", name.escape_debug())))
    }
}

/// Registers or replaces watch `name` on the caller's connection `conn`. The query is
/// analysed and run once on a connection of our own (`target`), so the host's
/// authorizer stays in place; the watch row and triggers are written in the caller's
/// transaction. Returns the number of distinct referenced ids.
pub fn watch(conn: &Connection, target: &crate::connection::DbTarget, config: &Config, name: &str, query: &str, options: &Options) -> Result<usize> {
    check_name(name)?;
    let in_transaction = !conn.is_autocommit();
    let hint = |e: Error| match e {
        Error::Argument(why) if in_transaction => Error::Argument(format!(
            "{why} (the query is checked on the extension's own connection, which does not see this open transaction: commit the tables it reads first)"
        )),
        other => other,
    };
    let (analysis, referenced) = {
        let own = crate::connection::open_connection(target)?;
        let mut guard = Guard::install(&own);
        let analysis = analyze(&own, &mut guard, query).map_err(hint)?;
        // A query that fails now would fail every pass: refuse it. Every column is used,
        // so none is skipped by the optimizer.
        let referenced: i64 = own
            .query_row(&format!("SELECT {PROBE_COLUMNS}, count(DISTINCT id) FROM ({})", analysis.select_sql), [], |r| r.get(6))
            .map_err(|e| match guard.explain(e) {
                Error::Sqlite(e) => hint(Error::Argument(format!("query fails when it runs: {e}"))),
                other => other,
            })?;
        (analysis, referenced)
    };
    let clash: Option<String> = conn
        .query_row("SELECT name FROM main._attachments_watch WHERE name = ?1 COLLATE NOCASE AND name != ?1", [name], |r| r.get(0))
        .optional()?;
    if let Some(other) = clash {
        return Err(Error::Argument(format!(
            "watch name '{name}' differs from the existing watch '{other}' only in case; trigger names ignore case"
        )));
    }
    conn.execute(
        "INSERT INTO main._attachments_watch(name, query, select_sql, dirty, options, refresh_ms, state, last_error, last_run)
         VALUES (?1, ?2, ?3, 1, ?4, ?5, 'ok', NULL, NULL)
         ON CONFLICT(name) DO UPDATE SET query = excluded.query, select_sql = excluded.select_sql, dirty = 1,
             options = excluded.options, refresh_ms = excluded.refresh_ms, state = 'ok', last_error = NULL",
        params![name, query, analysis.select_sql, options.to_json(), options.refresh_ms],
    )?;
    sync_triggers(conn, config, name, &analysis.reads, analysis.rows.as_ref().map(|(t, _)| t.as_str()))?;
    // The references themselves are refreshed by the next reconciliation (dirty = 1).
    Ok(referenced as usize)
}

/// The trigger watch `name` has on `table` for `suffix`. Watch names cannot contain
/// '.', so no two (watch, table) pairs give one name; watch names that differ only in
/// case are refused, since SQLite compares trigger names without case.
pub(crate) fn trigger_name(name: &str, table: &str, suffix: &str) -> String {
    format!("_attachments_trg_{name}.{table}.{suffix}")
}

/// True for a row `t` of `_attachments_trigger` whose trigger is in the schema as it was
/// made: on the table it was made for (`ALTER TABLE ... RENAME` takes a table's triggers
/// along to its new name) and with the same SQL (`ALTER TABLE ... RENAME COLUMN` rewrites
/// the columns a trigger names: after `RENAME COLUMN f TO f_old` and `ADD COLUMN f`, it
/// would follow `f_old`). SQLite stores `CREATE TRIGGER` with the name as written and
/// without the schema before it; ours are all written `CREATE TRIGGER main.<name>`.
// language=SQLite
pub(crate) const TRIGGER_INTACT: &str = "EXISTS (SELECT 1 FROM main.sqlite_schema AS s
    WHERE s.type = 'trigger' AND s.name = t.name AND s.tbl_name = t.tbl COLLATE NOCASE
      AND t.sql LIKE 'CREATE TRIGGER main.%' AND s.sql = 'CREATE TRIGGER ' || substr(t.sql, 21))";

/// Makes watch `name`'s triggers those its `reads` need: creates missing ones (a table
/// migration drops them with the table), re-creates changed ones, drops the rest.
/// With `row_table`, the triggers on that table note each changed row in
/// `_attachments_changed` (the watch is refreshed row by row); the others mark the
/// whole watch dirty. Sets and returns `incremental`: whether the watch is refreshed
/// row by row (false too when `row_table` cannot carry triggers: a view's base tables
/// are seen instead; virtual and internal tables are not).
pub fn sync_triggers(conn: &Connection, config: &Config, name: &str, reads: &Reads, row_table: Option<&str>) -> Result<bool> {
    // Triggers of earlier builds, named in the `triggers` column.
    let legacy: Option<String> =
        conn.query_row("SELECT triggers FROM main._attachments_watch WHERE name = ?1", [name], |r| r.get(0)).optional()?;
    let legacy: Vec<String> = legacy.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    if !legacy.is_empty() {
        // Only our own names: the column may have been edited by hand to name the app's triggers.
        for t in legacy.iter().filter(|t| t.starts_with("_attachments_")) {
            conn.execute_batch(&format!("DROP TRIGGER IF EXISTS main.{}", quote_ident(t)))?;
        }
        conn.execute("UPDATE main._attachments_watch SET triggers = '[]' WHERE name = ?1", [name])?;
    }
    let mut wanted: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut incremental = row_table.is_some();
    for (table, columns) in reads {
        let kind: Option<String> = conn
            .query_row("SELECT type FROM main.sqlite_schema WHERE name = ?1 COLLATE NOCASE AND type IN ('table', 'view')", [table], |r| r.get(0))
            .optional()?;
        let internal = table.starts_with("sqlite_") || table.starts_with("_attachments_") || table.eq_ignore_ascii_case(&config.table);
        let sql: Option<String> = conn
            .query_row("SELECT sql FROM main.sqlite_schema WHERE name = ?1 COLLATE NOCASE AND type = 'table'", [table], |r| r.get(0))
            .optional()?
            .flatten();
        let virtual_table = sql.is_some_and(|s| s.trim_start().to_ascii_uppercase().starts_with("CREATE VIRTUAL"));
        match kind.as_deref() {
            Some("table") if !internal && !virtual_table => {}
            Some("view") => continue,
            _ => {
                incremental = false;
                continue;
            }
        }
        // Every column, generated ones included (hidden 2 and 3), with whether it is generated.
        let real: Vec<(String, bool)> = conn
            .prepare("SELECT name, hidden IN (2, 3) FROM pragma_table_xinfo(?1)")?
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let generated = |c: &String| real.iter().any(|(name, g)| *g && name.eq_ignore_ascii_case(c));
        // A generated column changes when the columns it is computed from do, which an
        // UPDATE OF naming it does not see, nor a comparison of OLD and NEW in a BEFORE
        // trigger: a table with one is watched by any update of any column, not row by row.
        let has_generated = real.iter().any(|(_, g)| *g);
        let reads_generated = columns.iter().any(generated);
        let of: Vec<String> = columns
            .iter()
            .filter(|c| real.iter().any(|(name, _)| name == *c))
            .map(|c| quote_ident(c))
            .collect();
        let update = if of.is_empty() || reads_generated { "UPDATE".to_string() } else { format!("UPDATE OF {}", of.join(", ")) };
        let row_level = incremental && !has_generated && row_table.is_some_and(|t| t.eq_ignore_ascii_case(table));
        if has_generated && row_table.is_some_and(|t| t.eq_ignore_ascii_case(table)) {
            incremental = false;
        }
        let keys = if row_level { unique_keys(conn, table)? } else { Some(Vec::new()) };
        let Some(keys) = keys else {
            // A unique index on an expression: REPLACE may delete rows no trigger can name.
            return sync_triggers(conn, config, name, reads, None);
        };
        if row_level {
            conn.execute_batch(crate::schema::CHANGED_DDL)?;
        }
        let w = quote_literal(name);
        let on = |event: &str| format!("{event} ON {}", quote_ident(table));
        let mut events = vec![("ins", on("INSERT")), ("del", on("DELETE"))];
        if !row_level {
            events.push(("upd", on(&update)));
        } else {
            // Any update that sets a column the query reads. Named in `UPDATE OF` only, not
            // compared in a `WHEN` (OLD.c IS NOT NEW.c): SQLite refuses `ALTER TABLE ...
            // DROP COLUMN` of a column a trigger's body or `WHEN` names, not of one its
            // `UPDATE OF` names, and an app's migration must not fail on our triggers.
            if !of.is_empty() {
                events.push(("upd", on(&format!("UPDATE OF {}", of.join(", ")))));
            }
            // A row that moved (a new rowid) no longer gives what it gave under the old
            // one, and gives something under the new one. A trigger of its own, so the
            // common update runs one statement, not two.
            events.push(("mov", format!("UPDATE ON {} WHEN OLD.rowid != NEW.rowid", quote_ident(table))));
        }
        // REPLACE (`INSERT OR REPLACE`, `UPDATE OR REPLACE`) deletes the rows that hold a
        // unique key the new values take, and fires no delete trigger for them (unless
        // recursive_triggers is on): before the write, the rows holding those keys are noted.
        let mut replaced = Vec::new();
        if row_level && !keys.is_empty() {
            let w = quote_literal(name);
            let note = |other: &str| -> String {
                keys.iter()
                    .map(|key| {
                        // Compared as the index compares them: with its collation, which
                        // may differ from the column's (`CREATE UNIQUE INDEX ... (k COLLATE NOCASE)`).
                        let same: Vec<String> =
                            key.iter().map(|(c, coll)| format!("{c} = NEW.{c} COLLATE {coll}")).collect();
                        format!(
                            "INSERT INTO _attachments_changed(watch, rid) SELECT {w}, rowid FROM {} WHERE {}{other};",
                            quote_ident(table),
                            same.join(" AND ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let mut key_columns: Vec<String> = keys.concat().into_iter().map(|(c, _)| c).collect();
            key_columns.sort();
            key_columns.dedup();
            replaced.push(("rpi", format!("BEFORE INSERT ON {}", quote_ident(table)), note("")));
            replaced.push((
                "rpu",
                format!("BEFORE UPDATE OF {} ON {}", key_columns.join(", "), quote_ident(table)),
                note(" AND rowid != OLD.rowid"),
            ));
        }
        for (suffix, event, body) in replaced {
            let trigger = trigger_name(name, table, suffix);
            let sql = format!("CREATE TRIGGER main.{} {event} BEGIN\n{body}\nEND", quote_ident(&trigger));
            wanted.insert(trigger, (table.clone(), sql));
        }
        for (suffix, event) in events {
            let trigger = trigger_name(name, table, suffix);
            // Row level: the rows changed are noted (an append, nothing that can conflict);
            // a note is what marks the watch.
            // language=SQLite
            let body = if row_level {
                let note = |row: &str| format!("INSERT INTO _attachments_changed(watch, rid) VALUES ({w}, {row}.rowid);");
                match suffix {
                    "del" => note("OLD"),
                    "mov" => format!("{}\n{}", note("OLD"), note("NEW")),
                    _ => note("NEW"),
                }
            } else {
                format!("UPDATE _attachments_watch SET dirty = 1 WHERE name = {w} AND dirty != 1;")
            };
            let sql = format!(
                "CREATE TRIGGER main.{} AFTER {event} BEGIN
                   {body}
                 END",
                quote_ident(&trigger),
            );
            wanted.insert(trigger, (table.clone(), sql));
        }
    }
    let have: Vec<(String, String, bool)> = conn
        .prepare(&format!("SELECT t.name, t.sql, {TRIGGER_INTACT} FROM main._attachments_trigger AS t WHERE t.watch = ?1"))?
        .query_map([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (trigger, sql, present) in &have {
        let keep = *present && wanted.get(trigger).is_some_and(|(_, want)| want == sql);
        if keep {
            wanted.remove(trigger);
        } else {
            if trigger.starts_with("_attachments_") {
                conn.execute_batch(&format!("DROP TRIGGER IF EXISTS main.{}", quote_ident(trigger)))?;
            }
            conn.execute("DELETE FROM main._attachments_trigger WHERE name = ?1", [trigger])?;
        }
    }
    for (trigger, (table, sql)) in &wanted {
        // One left by a failed run of an earlier build, or by hand: ours to replace.
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS main.{}", quote_ident(trigger)))?;
        conn.execute_batch(sql)?;
        conn.execute(
            "INSERT OR REPLACE INTO main._attachments_trigger(name, watch, tbl, sql) VALUES (?1, ?2, ?3, ?4)",
            params![trigger, name, table, sql],
        )?;
    }
    conn.execute("UPDATE main._attachments_watch SET incremental = ?2 WHERE name = ?1", params![name, incremental])?;
    Ok(incremental)
}

/// The unique keys of `table` besides its rowid (primary key and unique indexes), each
/// as its quoted columns with the quoted collation the index compares them with; None
/// when one is on an expression.
fn unique_keys(conn: &Connection, table: &str) -> Result<Option<Vec<Vec<(String, String)>>>> {
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM pragma_index_list(?1) WHERE \"unique\"")?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut keys = Vec::new();
    for index in indexes {
        let columns: Vec<(i64, Option<String>, Option<String>)> = conn
            .prepare("SELECT cid, name, coll FROM pragma_index_xinfo(?1) WHERE key ORDER BY seqno")?
            .query_map([&index], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut key = Vec::new();
        for (cid, column, coll) in columns {
            match column {
                Some(c) if cid >= 0 => key.push((quote_ident(&c), quote_ident(coll.as_deref().unwrap_or("BINARY")))),
                _ => return Ok(None),
            }
        }
        keys.push(key);
    }
    Ok(Some(keys))
}

/// Drops watch `name` with its triggers and references; false if there was none.
pub fn unwatch(conn: &Connection, name: &str) -> Result<bool> {
    sync_triggers_drop_all(conn, name)?;
    conn.execute_batch(crate::schema::ROWS_DDL)?;
    conn.execute("DELETE FROM main._attachments_src WHERE watch = ?1", [name])?;
    conn.execute("DELETE FROM main._attachments_changed WHERE watch = ?1", [name])?;
    // What only this watch referenced may now be archived.
    conn.execute("INSERT OR IGNORE INTO main._attachments_delta(id) SELECT id FROM main._attachments_ref WHERE watch = ?1", [name])?;
    conn.execute("DELETE FROM main._attachments_ref WHERE watch = ?1", [name])?;
    Ok(conn.execute("DELETE FROM main._attachments_watch WHERE name = ?1", [name])? > 0)
}

fn sync_triggers_drop_all(conn: &Connection, name: &str) -> Result<()> {
    let stored: Option<String> = conn
        .query_row("SELECT triggers FROM main._attachments_watch WHERE name = ?1", [name], |r| r.get(0))
        .optional()?;
    let mut triggers: Vec<String> = stored.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    let owned: Vec<String> = conn
        .prepare("SELECT name FROM main._attachments_trigger WHERE watch = ?1")?
        .query_map([name], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    triggers.extend(owned);
    // Only our own names: both lists may have been edited by hand to name the app's triggers.
    for t in triggers.into_iter().filter(|t| t.starts_with("_attachments_")) {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS main.{}", quote_ident(&t)))?;
    }
    conn.execute("DELETE FROM main._attachments_trigger WHERE watch = ?1", [name])?;
    Ok(())
}

/// Runs on the extension's own connection, in the caller's transaction: re-analyses
/// watch `name`'s stored query under a guard, brings its triggers up to date, and
/// refreshes its references: only the rows noted as changed when `dirty` is not
/// [`crate::reconcile::DIRTY`] and the watch is refreshed row by row from the same
/// query as before, else in full. Anything it does is undone if it fails. True when every row then needs comparing.
pub fn run(conn: &Connection, config: &Config, name: &str, query: &str, options: &str, dirty: i64) -> Result<bool> {
    // Stored options are checked again: the table is writable by anyone.
    let policy = Options::parse(Some(options))?.policy();
    // Read before this run changes any trigger: a change by anyone else (a migration,
    // VACUUM, which may renumber rowids) means the rowids noted so far cannot be trusted.
    let schema_version = |conn: &Connection| conn.query_row("PRAGMA main.schema_version", [], |r| r.get::<_, i64>(0));
    let schema_before = schema_version(conn)?;
    let mut guard = Guard::install(conn);
    let analysis = analyze(conn, &mut guard, query)?;
    let row_table = analysis.rows.as_ref().map(|(t, _)| t.as_str());
    let rows_sql = analysis.rows.as_ref().map(|(_, q)| q.as_str());
    let (was_incremental, last_rows_sql, last_schema): (bool, Option<String>, Option<i64>) = conn.query_row(
        "SELECT incremental, rows_sql, rows_schema FROM main._attachments_watch WHERE name = ?1",
        [name],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let incremental = sync_triggers(conn, config, name, &analysis.reads, row_table)?;
    let rows_sql = rows_sql.filter(|_| incremental);
    conn.execute("UPDATE main._attachments_watch SET select_sql = ?2 WHERE name = ?1 AND select_sql != ?2", params![name, analysis.select_sql])?;
    let explain = |e: Error| match e {
        Error::Sqlite(e) => guard.explain(e),
        other => other,
    };
    let remember = |conn: &Connection, rows_sql: Option<&str>| -> Result<()> {
        conn.execute(
            "UPDATE main._attachments_watch SET rows_sql = ?2, rows_schema = ?3 WHERE name = ?1",
            params![name, rows_sql, schema_version(conn)?],
        )?;
        Ok(())
    };
    if let Some(rows_sql) = rows_sql {
        let same = was_incremental && last_rows_sql.as_deref() == Some(rows_sql) && last_schema == Some(schema_before);
        if dirty != crate::reconcile::DIRTY && same {
            if let Some(full) = crate::reconcile::refresh_rows(conn, name, rows_sql, &policy).map_err(explain)? {
                remember(conn, Some(rows_sql))?;
                return Ok(full);
            }
        }
    }
    // In full. First a read-only run under the time limit: stopping a write statement
    // (the INSERT … SELECT that stores the result) would roll back the whole transaction,
    // stopping a read-only one does not. Every column is used, so none is skipped.
    conn.query_row(&format!("SELECT {PROBE_COLUMNS} FROM ({})", analysis.select_sql), [], |_| Ok(()))
        .map_err(|e| guard.explain(e))?;
    // Within one transaction the same query over the same data takes as long again.
    guard.seen_mut().deadline = None;
    let full = crate::reconcile::refresh_watch(conn, name, &analysis.select_sql, rows_sql, &policy).map_err(|e| match e {
        Error::Sqlite(e) => guard.explain(e),
        other => other,
    })?;
    remember(conn, rows_sql)?;
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pure_helpers_of_ours_are_allowed() {
        for f in ["attachment_save", "ATTACHMENT_SAVE_FILE", "attachment_delete", "attachment_sync", "attachment_retry", "readfile", "load_extension", "writefile", "edit"] {
            assert!(forbidden_function(f), "{f}");
        }
        for f in ["attachment_filename", "attachment_media_type", "json_extract", "lower", "unixepoch"] {
            assert!(!forbidden_function(f), "{f}");
        }
    }

    #[test]
    fn options_are_checked() {
        assert_eq!(Options::parse(None).unwrap(), Options::default());
        let o = Options::parse(Some(r#"{"refresh_ms": 500, "download": false}"#)).unwrap();
        assert_eq!((o.refresh_ms, o.download), (Some(500), Some(false)));
        assert_eq!(o.to_json(), r#"{"download":false,"refresh_ms":500}"#);
        for bad in ["[]", "x", r#"{"refresh_ms": 10}"#, r#"{"priority": 1, "priority": 2}"#, r#"{"priority": "high"}"#, r#"{"other": 1}"#] {
            assert!(Options::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn trigger_names_cannot_collide() {
        assert_ne!(trigger_name("a_b", "c", "ins"), trigger_name("a", "b_c", "ins"));
    }
}
