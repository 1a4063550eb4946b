//! Watches: a named query whose `id` column lists referenced attachments.
//! The tables it reads (found with SQLite's authorizer while preparing it) get
//! triggers that mark the watch dirty. Trigger bodies are plain SQL, so a
//! writer without the extension loaded still succeeds.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};

use rusqlite::{ffi, params, Connection, OptionalExtension};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::schema::{quote_ident, quote_literal};

/// Tables (in `main`) a query reads, each with the columns it reads.
type Reads = BTreeMap<String, Vec<String>>;

struct Collector {
    reads: Reads,
    other_schema: Option<String>,
}

unsafe extern "C" fn on_authorize(
    data: *mut c_void,
    action: c_int,
    table: *const c_char,
    column: *const c_char,
    schema: *const c_char,
    _trigger: *const c_char,
) -> c_int {
    // Never unwind into SQLite.
    let _ = std::panic::catch_unwind(|| {
        if action != ffi::SQLITE_READ || table.is_null() {
            return;
        }
        let c = &mut *(data as *mut Collector);
        let text = |p: *const c_char| if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() };
        let (table, column, schema) = (text(table), text(column), text(schema));
        if schema != "main" {
            if !table.starts_with("sqlite_") {
                c.other_schema.get_or_insert(format!("{schema}.{table}"));
            }
            return;
        }
        let cols = c.reads.entry(table).or_default();
        if !cols.contains(&column) {
            cols.push(column);
        }
    });
    ffi::SQLITE_OK
}

/// What a watch query is: the tables it reads and the SELECT that feeds `_attachments_ref`.
pub struct Analysis {
    pub reads: Reads,
    pub select_sql: String,
}

/// Prepares `query` once with an authorizer installed, to learn what it reads.
/// The authorizer is removed again before returning.
pub fn analyze(conn: &Connection, query: &str) -> Result<Analysis> {
    let query = query.trim().trim_end_matches(';').trim();
    if query.is_empty() {
        return Err(Error::Argument("query is empty".into()));
    }
    let mut collector = Collector { reads: Reads::new(), other_schema: None };
    let db = unsafe { conn.handle() };
    unsafe { ffi::sqlite3_set_authorizer(db, Some(on_authorize), &mut collector as *mut Collector as *mut c_void) };
    let prepared = conn.prepare(query).map(|stmt| {
        let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        (stmt.readonly(), names)
    });
    unsafe { ffi::sqlite3_set_authorizer(db, None, std::ptr::null_mut()) };
    let (readonly, columns) = prepared.map_err(|e| Error::Argument(format!("query does not prepare: {e}")))?;
    if !readonly {
        return Err(Error::Argument("query must be a read-only SELECT".into()));
    }
    if let Some(t) = collector.other_schema {
        return Err(Error::Argument(format!("query reads {t}; watched tables must be in the main schema")));
    }
    let find = |want: &str| columns.iter().find(|c| c.eq_ignore_ascii_case(want)).map(|c| quote_ident(c));
    let Some(id) = find("id") else {
        return Err(Error::Argument(format!(
            "query must return a column named id (it returns: {})",
            if columns.is_empty() { "nothing".to_string() } else { columns.join(", ") }
        )));
    };
    let opt = |name: &str| find(name).map(|c| format!("w.{c}")).unwrap_or_else(|| "NULL".into());
    // language=SQLite
    let select_sql = format!(
        "SELECT CAST(w.{id} AS TEXT) AS id, {} AS file_extension, {} AS media_type, {} AS meta_data
         FROM ({query}) AS w WHERE w.{id} IS NOT NULL",
        opt("file_extension"),
        opt("media_type"),
        opt("meta_data")
    );
    Ok(Analysis { reads: collector.reads, select_sql })
}

/// Checks a watch name: 1 to 64 letters, digits, '_' or '-'.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Argument(format!("watch name '{}' must be 1 to 64 letters, digits, '_' or '-'", name.escape_debug())))
    }
}

/// Registers or replaces watch `name`, creates its triggers, runs it once.
/// Returns the number of distinct referenced ids.
pub fn watch(conn: &Connection, config: &Config, name: &str, query: &str) -> Result<usize> {
    check_name(name)?;
    let analysis = analyze(conn, query)?;
    drop_triggers(conn, name)?;
    let mut triggers = Vec::new();
    for (table, columns) in &analysis.reads {
        let kind: Option<String> = conn
            .query_row("SELECT type FROM main.sqlite_schema WHERE name = ?1 AND type IN ('table', 'view')", [table], |r| r.get(0))
            .optional()?;
        let internal = table.starts_with("sqlite_") || table.starts_with("_attachments_") || table.eq_ignore_ascii_case(&config.table);
        if kind.as_deref() != Some("table") || internal {
            continue;
        }
        let real: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info(?1)")?
            .query_map([table], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let of: Vec<String> = columns.iter().filter(|c| real.contains(c)).map(|c| quote_ident(c)).collect();
        let update = if of.is_empty() { "UPDATE".to_string() } else { format!("UPDATE OF {}", of.join(", ")) };
        for (suffix, event) in [("ins", "INSERT".to_string()), ("upd", update), ("del", "DELETE".to_string())] {
            let trigger = format!("_attachments_trg_{name}_{table}_{suffix}");
            // language=SQLite
            conn.execute_batch(&format!(
                "CREATE TRIGGER IF NOT EXISTS main.{} AFTER {event} ON {} BEGIN
                   UPDATE _attachments_watch SET dirty = 1 WHERE name = {} AND dirty != 1;
                 END",
                quote_ident(&trigger),
                quote_ident(table),
                quote_literal(name)
            ))?;
            triggers.push(trigger);
        }
    }
    conn.execute(
        "INSERT INTO main._attachments_watch(name, query, select_sql, triggers, dirty) VALUES (?1, ?2, ?3, ?4, 1)
         ON CONFLICT(name) DO UPDATE SET query = excluded.query, select_sql = excluded.select_sql,
             triggers = excluded.triggers, dirty = 1",
        params![name, query, analysis.select_sql, serde_json::to_string(&triggers).unwrap_or_default()],
    )?;
    // The references themselves are refreshed by the next reconciliation (dirty = 1),
    // on the extension's own connection; here the query runs once to count them.
    let referenced: i64 =
        conn.query_row(&format!("SELECT count(DISTINCT w.id) FROM ({}) AS w", analysis.select_sql), [], |r| r.get(0))?;
    Ok(referenced as usize)
}

/// Drops watch `name` with its triggers and references; false if there was none.
pub fn unwatch(conn: &Connection, name: &str) -> Result<bool> {
    drop_triggers(conn, name)?;
    // What only this watch referenced may now be archived.
    conn.execute("INSERT OR IGNORE INTO main._attachments_delta(id) SELECT id FROM main._attachments_ref WHERE watch = ?1", [name])?;
    conn.execute("DELETE FROM main._attachments_ref WHERE watch = ?1", [name])?;
    Ok(conn.execute("DELETE FROM main._attachments_watch WHERE name = ?1", [name])? > 0)
}

fn drop_triggers(conn: &Connection, name: &str) -> Result<()> {
    let stored: Option<String> = conn
        .query_row("SELECT triggers FROM main._attachments_watch WHERE name = ?1", [name], |r| r.get(0))
        .optional()?;
    let triggers: Vec<String> = stored.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    for t in triggers {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS main.{}", quote_ident(&t)))?;
    }
    Ok(())
}
