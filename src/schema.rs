//! Tables the extension owns, and the numbered migrations that bring a database
//! written by an earlier release up to this build's layout. The queue table's name
//! comes from the config; every internal table and trigger starts with `_attachments_`.
//!
//! `_attachments_config.schema_version` records the layout a database has. It is read
//! back by [`ensure`] (at `attachment_init` and the first pass of each process) and by
//! [`check_not_newer`] (every function that loads the config): a database written by a
//! newer release is refused rather than half-understood.
//!
//! ## Adding a migration (a new column, table or index)
//! 1. Append a [`Migration`] to [`MIGRATIONS`] with the next number, whose `run` brings
//!    a database of the previous version there. Make it idempotent (use [`add_column`],
//!    `CREATE TABLE/INDEX IF NOT EXISTS`): a new database, or a new queue table after
//!    `table` changed, gets [`create_tables`] and then every migration in order, so a
//!    migration may find its change made already.
//! 2. Optionally write the column into [`create_tables`] too, for readers of the layout;
//!    the migration must still add it to older tables.
//! 3. [`SCHEMA_VERSION`] follows by itself (the last migration's number); add a line to
//!    CHANGELOG.md. Never edit, reorder or renumber a migration that was released.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};

/// One step of the layout's history: brings a database at `version - 1` to `version`.
pub struct Migration {
    pub version: i64,
    pub what: &'static str,
    /// Runs in the transaction that migrates; `table` is the queue table's name.
    pub run: fn(&Connection, &str) -> Result<()>,
}

/// Every migration, in order. Migration 1 is the layout of release 0.1.0.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, what: "the tables of release 0.1.0", run: create_tables },
    Migration { version: 2, what: "columns added to the first layout before schema_version was read", run: added_before_0_2 },
    Migration { version: 3, what: "per-watch policies and row-by-row refresh of watches", run: policies_and_rows },
    Migration { version: 4, what: "the archived cache's last use and pinning (last_used, pinned)", run: cache_columns },
    Migration { version: 5, what: "the pause flag and the adaptive concurrency level", run: steering },
    Migration { version: 6, what: "the progress feed: _attachments_progress and the queue's started_at", run: progress_feed },
    Migration { version: 7, what: "an index of queued rows in claim order", run: claim_order_index },
];

/// Rows of a watched table changed since the watch last ran (see `_attachments_src`);
/// also created before row-level triggers that write it are. Append-only, without a
/// key or constraint: the cheapest insert for the app's writes (a row changed twice is
/// noted twice), and none that could conflict under the app's own `OR ROLLBACK`.
// language=SQLite
pub const CHANGED_DDL: &str = "CREATE TABLE IF NOT EXISTS main._attachments_changed(watch TEXT, rid INTEGER);";

/// The tables of the row-by-row refresh: for watches refreshed row by row
/// (`incremental`), which ids each row of the one table such a watch reads gave at its
/// last run (rid is the row's rowid), and the rows changed since (written by the
/// watch's triggers). Also made sure of by reconciliation and unwatch.
// language=SQLite
pub const ROWS_DDL: &str = "CREATE TABLE IF NOT EXISTS main._attachments_src(
            watch TEXT NOT NULL,
            rid INTEGER NOT NULL,
            id TEXT NOT NULL,
            PRIMARY KEY (watch, rid, id)) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS main._attachments_src_by_id ON _attachments_src(watch, id);
        CREATE TABLE IF NOT EXISTS main._attachments_changed(watch TEXT, rid INTEGER);";

/// The layout this build writes and understands: the number of the last migration.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Brings the database up to [`SCHEMA_VERSION`] and makes sure the queue table `table`
/// exists. Runs in the caller's transaction (the caller's own at `attachment_init`, a
/// `BEGIN IMMEDIATE` on the extension's connection in a pass), so a migration is all or
/// nothing. Refuses a database of a newer release.
pub fn ensure(conn: &Connection, table: &str) -> Result<()> {
    let stored = stored_version(conn)?;
    check_not_newer(stored)?;
    let queue_exists = table_exists(conn, table)?;
    if stored == Some(SCHEMA_VERSION) && queue_exists {
        return Ok(());
    }
    if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
        // A read-only connection (Datasette, `mode=ro`) cannot migrate: say what to do
        // instead of SQLite's "attempt to write a readonly database".
        return Err(Error::Misuse(format!(
            "this database is at schema {} and this build needs {SCHEMA_VERSION}; a read-only connection cannot \
             upgrade it: open it writable once (attachment_init, or any sync pass) first",
            stored.map_or_else(|| "0".to_string(), |v| v.to_string())
        )));
    }
    // Missing tables are created (a new database; a new queue table after `table`
    // changed), then every migration they have not had, each idempotent.
    create_tables(conn, table)?;
    let from = if queue_exists { stored.unwrap_or(0) } else { 0 };
    for m in MIGRATIONS.iter().filter(|m| m.version > from && m.version > 1) {
        if stored.is_some() && queue_exists {
            log::info!("migrating the database to schema {}: {}", m.version, m.what);
        }
        (m.run)(conn, table)?;
    }
    // No row yet on a new database: `Config::store` inserts it with SCHEMA_VERSION.
    conn.execute("UPDATE main._attachments_config SET schema_version = ?1 WHERE id = 1", [SCHEMA_VERSION])?;
    Ok(())
}

/// Refuses a database whose stored layout is newer than this build's.
pub fn check_not_newer(stored: Option<i64>) -> Result<()> {
    match stored {
        Some(found) if found > SCHEMA_VERSION => Err(Error::NewerSchema { found, known: SCHEMA_VERSION }),
        _ => Ok(()),
    }
}

/// The stored schema_version; None before the first `attachment_init` (no table or no row).
fn stored_version(conn: &Connection) -> Result<Option<i64>> {
    match conn.query_row("SELECT schema_version FROM main._attachments_config WHERE id = 1", [], |r| r.get(0)).optional() {
        Ok(v) => Ok(v),
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.starts_with("no such table") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn table_exists(conn: &Connection, table: &str) -> Result<bool> {
    // Names are case-insensitive to SQLite: `Attachments` is the table `attachments`.
    Ok(conn.query_row(
        "SELECT count(*) FROM main.sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        [table],
        |r| r.get::<_, i64>(0),
    )? > 0)
}

/// Refuses a queue table name that the app already uses for something else: one of its
/// own tables, a view, an index (in any letter case). Otherwise `attachment_init` would
/// fail half-way on "no such column" or "already exists". A queue table an earlier
/// `attachment_init` made is accepted.
pub fn check_queue_name(conn: &Connection, table: &str) -> Result<()> {
    // A TEMP object of that name (looked at first) would take the unqualified statements
    // that set up the queue.
    // language=SQLite
    let found: Option<(bool, String, String)> = conn
        .query_row(
            "SELECT 1, type, name FROM temp.sqlite_schema WHERE name = ?1 COLLATE NOCASE AND type IN ('table', 'view', 'index')
             UNION ALL
             SELECT 0, type, name FROM main.sqlite_schema WHERE name = ?1 COLLATE NOCASE AND type IN ('table', 'view', 'index')
             ORDER BY 1 DESC LIMIT 1",
            [table],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((temp, kind, existing)) = found else { return Ok(()) };
    if temp {
        return Err(Error::config(
            "table",
            format!(
                "'{table}' names a TEMP {kind} of this connection, which would hide the queue table; \
                 drop it first, or choose another name, like the default 'attachments'"
            ),
        ));
    }
    if kind == "table" {
        // The columns every layout of the queue has had since the first.
        let queue_columns: i64 = conn.query_row(
            "SELECT count(*) FROM main.pragma_table_info(?1) WHERE name IN ('id', 'filename', 'local_uri', 'state', 'has_synced')",
            [&existing],
            |r| r.get(0),
        )?;
        if queue_columns == 5 {
            return Ok(());
        }
    }
    let spelled = if existing != table { format!(" (as '{existing}')") } else { String::new() };
    Err(Error::config(
        "table",
        format!(
            "'{table}' already names a {kind} of this database{spelled}, not an attachments queue table; \
             choose another name, like the default 'attachments'"
        ),
    ))
}

/// Adds `column` to `table` unless it is there.
pub fn add_column(conn: &Connection, table: &str, column: &str, decl: &str) -> Result<()> {
    let present: bool =
        conn.query_row("SELECT count(*) FROM main.pragma_table_info(?1) WHERE name = ?2", [table, column], |r| r.get(0))?;
    if !present {
        conn.execute_batch(&format!("ALTER TABLE main.{} ADD COLUMN {column} {decl}", quote_ident(table)))?;
    }
    Ok(())
}

/// Migration 1, and the newest layout of every table: creates what is missing in `main`.
fn create_tables(conn: &Connection, table: &str) -> Result<()> {
    let t = quote_ident(table);
    let idx = quote_ident(&format!("_attachments_idx_{table}_due"));
    let claims = quote_ident(&format!("_attachments_idx_{table}_claims"));
    // language=SQLite
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS main._attachments_config(
            id INTEGER PRIMARY KEY CHECK (id = 1),
            config TEXT NOT NULL,
            -- The layout this database has (see schema.rs); 1 is the first layout's default.
            schema_version INTEGER NOT NULL DEFAULT 1);
        -- One row per attachment_watch(): its query and options, and how its last run went.
        -- Only `query` is ever run (re-analysed under a guard each time: the table is
        -- writable by anyone); select_sql is what it was last wrapped into, for reading.
        -- `triggers` lists trigger names of earlier builds, dropped on the next run.
        CREATE TABLE IF NOT EXISTS main._attachments_watch(
            name TEXT PRIMARY KEY NOT NULL,
            query TEXT NOT NULL,
            select_sql TEXT NOT NULL,
            triggers TEXT NOT NULL DEFAULT '[]',
            dirty INTEGER NOT NULL DEFAULT 1,
            options TEXT NOT NULL DEFAULT '{{}}',
            refresh_ms INTEGER,
            state TEXT NOT NULL DEFAULT 'ok',
            last_error TEXT,
            last_run INTEGER,
            incremental INTEGER NOT NULL DEFAULT 1,
            rows_sql TEXT,
            rows_schema INTEGER);
        -- The triggers each watch owns, with the SQL they were created from, so a pass can
        -- notice one that a table migration dropped and create it again.
        CREATE TABLE IF NOT EXISTS main._attachments_trigger(
            name TEXT PRIMARY KEY NOT NULL,
            watch TEXT NOT NULL,
            tbl TEXT NOT NULL,
            sql TEXT NOT NULL);
        -- The ids each watch referenced when it was last run.
        -- filename is NULL when id or extension is unsafe; both it and guessed_type
        -- are computed once, when the reference appears or changes. size is the
        -- query's `size` column; download (0 or 1) and priority are the watch's policy
        -- for this id (download is 0 when size is above its max_download_size).
        CREATE TABLE IF NOT EXISTS main._attachments_ref(
            watch TEXT NOT NULL,
            id TEXT NOT NULL,
            file_extension TEXT,
            media_type TEXT,
            meta_data TEXT,
            filename TEXT,
            guessed_type TEXT,
            size INTEGER,
            download INTEGER NOT NULL DEFAULT 1,
            priority INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (watch, id)) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS main._attachments_ref_by_id ON _attachments_ref(id);
        -- Ids whose references changed since the last reconciliation.
        {ROWS_DDL}
        CREATE TABLE IF NOT EXISTS main._attachments_delta(id TEXT PRIMARY KEY) WITHOUT ROWID;
        -- The queue: the contract's nine columns, then bookkeeping.
        CREATE TABLE IF NOT EXISTS main.{t}(
            id TEXT PRIMARY KEY NOT NULL,
            filename TEXT NOT NULL,
            local_uri TEXT,
            timestamp INTEGER NOT NULL,
            size INTEGER,
            media_type TEXT,
            state INTEGER NOT NULL,
            has_synced INTEGER NOT NULL DEFAULT 0,
            meta_data TEXT,
            sha256 TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            claimed_by TEXT,
            claimed_until INTEGER,
            upload_resume TEXT,
            bytes_done INTEGER,
            priority INTEGER NOT NULL DEFAULT 0,
            last_used INTEGER,
            pinned INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX IF NOT EXISTS main.{idx} ON {t}(state, next_attempt_at);"
    ))?;
    // Claims are few; every pass looks for those of dead processes, so they get a small
    // index of their own (created after the column exists in tables from earlier builds).
    let claims_index = format!("CREATE INDEX IF NOT EXISTS main.{claims} ON {t}(claimed_by) WHERE claimed_by IS NOT NULL");
    conn.execute_batch(&claims_index)?;
    Ok(())
}

/// Migration 3: each reference carries its watch's policy (the query's `size`, whether
/// it is downloaded, its priority), queue rows a priority the claims order by, and the
/// tables and bookkeeping of watches refreshed row by row. Every watch runs again, so
/// its options reach the references it stored before.
fn policies_and_rows(conn: &Connection, table: &str) -> Result<()> {
    let added = [
        ("_attachments_ref", "size", "INTEGER"),
        ("_attachments_ref", "download", "INTEGER NOT NULL DEFAULT 1"),
        ("_attachments_ref", "priority", "INTEGER NOT NULL DEFAULT 0"),
        (table, "priority", "INTEGER NOT NULL DEFAULT 0"),
        // The row-attributed query `_attachments_src` was last filled from (NULL: none).
        ("_attachments_watch", "rows_sql", "TEXT"),
        // PRAGMA schema_version then: a later change (a migration, VACUUM, which may
        // renumber rowids) makes the watch's next refresh a full one.
        ("_attachments_watch", "rows_schema", "INTEGER"),
    ];
    for (owner, column, decl) in added {
        add_column(conn, owner, column, decl)?;
    }
    conn.execute_batch(ROWS_DDL)?;
    // Rows with a priority are few; reconciliation looks for them to know whether any needs resetting.
    let priority = quote_ident(&format!("_attachments_idx_{table}_priority"));
    conn.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS main.{priority} ON {}(priority) WHERE priority != 0",
        quote_ident(table)
    ))?;
    conn.execute_batch("UPDATE main._attachments_watch SET dirty = 1")?;
    Ok(())
}

/// Migration 2: tables written by builds before 0.2.0 all say schema 1, but the
/// earliest of them lack columns added since; each is added where it is missing.
/// Closed: a column added after this goes into a migration of its own, appended to
/// [`MIGRATIONS`] (see the module comment), never into this list.
fn added_before_0_2(conn: &Connection, table: &str) -> Result<()> {
    let added = [
        (table, "upload_resume", "TEXT"),
        (table, "bytes_done", "INTEGER"),
        ("_attachments_ref", "filename", "TEXT"),
        ("_attachments_ref", "guessed_type", "TEXT"),
        // The id a local_dir's owner marker names (see ownership.rs).
        ("_attachments_config", "local_dir_owner", "TEXT"),
        // A download given up (404/410, max_attempts): reconciliation does not bring it back.
        (table, "given_up", "INTEGER NOT NULL DEFAULT 0"),
        ("_attachments_watch", "options", "TEXT NOT NULL DEFAULT '{}'"),
        ("_attachments_watch", "refresh_ms", "INTEGER"),
        ("_attachments_watch", "state", "TEXT NOT NULL DEFAULT 'ok'"),
        ("_attachments_watch", "last_error", "TEXT"),
        ("_attachments_watch", "last_run", "INTEGER"),
        ("_attachments_watch", "incremental", "INTEGER NOT NULL DEFAULT 1"),
    ];
    for (owner, column, decl) in added {
        add_column(conn, owner, column, decl)?;
    }
    Ok(())
}

/// Migration 4: the queue's `last_used` (when the file was last read through the extension,
/// saved or downloaded, in ms; written lazily, see cache.rs: the archived cache evicts the
/// least recently used) and `pinned` (`attachment_pin`: kept on the device, never evicted,
/// downloaded whatever the watches say).
fn cache_columns(conn: &Connection, table: &str) -> Result<()> {
    add_column(conn, table, "last_used", "INTEGER")?;
    add_column(conn, table, "pinned", "INTEGER NOT NULL DEFAULT 0")
}

/// Migration 5: `_attachments_config.paused` (`attachment_pause()`: every process's passes
/// stop moving bytes while it is 1) and `_attachments_config.concurrency` (the adaptive
/// number of transfers in flight, as the last pass of any process left it).
fn steering(conn: &Connection, _table: &str) -> Result<()> {
    add_column(conn, "_attachments_config", "paused", "INTEGER NOT NULL DEFAULT 0")?;
    add_column(conn, "_attachments_config", "concurrency", "INTEGER")
}

/// Migration 6: what `attachment_progress()` and `attachment_queue`'s `rate` read.
fn progress_feed(conn: &Connection, table: &str) -> Result<()> {
    // language=SQLite
    conn.execute_batch(
        "-- One row: what attachment_progress() counts as done since the queue was last empty
        -- (updated in the transactions that record results; `drained` = the queue was seen
        -- empty, so the next result starts the counts again), samples of bytes moved for
        -- its rate, the most recent row error, and why the last pass failed as a whole
        -- (a vanished local_dir: no row is tried, so no row can say it).
        CREATE TABLE IF NOT EXISTS main._attachments_progress(
            id INTEGER PRIMARY KEY CHECK (id = 1),
            upload_files INTEGER NOT NULL DEFAULT 0,
            upload_bytes INTEGER NOT NULL DEFAULT 0,
            download_files INTEGER NOT NULL DEFAULT 0,
            download_bytes INTEGER NOT NULL DEFAULT 0,
            drained INTEGER NOT NULL DEFAULT 0,
            since INTEGER,
            samples TEXT NOT NULL DEFAULT '[]',
            last_error_id TEXT,
            last_error TEXT,
            last_error_at INTEGER,
            pass_error TEXT,
            pass_error_at INTEGER);
        INSERT OR IGNORE INTO main._attachments_progress(id) VALUES (1);",
    )?;
    // When the transfer in flight started moving bytes (ms), for attachment_queue's rate.
    add_column(conn, table, "started_at", "INTEGER")
}

/// The quoted name of the index [`claim_order_index`] creates for queue table `table`.
pub fn claim_index(table: &str) -> String {
    quote_ident(&format!("_attachments_idx_{table}_claim_order"))
}

/// Migration 7: queued rows in the order a pass claims them, so a claim reads the first
/// few instead of sorting every queued row while it holds the write lock (6 ms a claim
/// at 20,000 queued rows before, 0.05 ms after). Partial: rows leave it once done.
pub fn claim_order_index(conn: &Connection, table: &str) -> Result<()> {
    // The WHERE is the claim's own `state IN (0, 1, 2)`, which SQLite needs to use it.
    conn.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS main.{} ON {}(priority DESC, state, timestamp) WHERE state IN (0, 1, 2)",
        claim_index(table),
        quote_ident(table)
    ))?;
    Ok(())
}

/// `"name"` with embedded quotes doubled: safe for any identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.what);
        }
        assert_eq!(SCHEMA_VERSION, MIGRATIONS.len() as i64);
        assert!(check_not_newer(Some(SCHEMA_VERSION)).is_ok() && check_not_newer(None).is_ok());
        let e = check_not_newer(Some(SCHEMA_VERSION + 1)).unwrap_err().to_string();
        assert!(e.contains(&format!("created by a newer sqlite-attachments (schema {}, this build knows {SCHEMA_VERSION})", SCHEMA_VERSION + 1)), "{e}");
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
