//! Tables the extension owns. The queue table's name comes from the config;
//! every internal table and trigger starts with `_attachments_`.

use rusqlite::Connection;

use crate::error::Result;

/// Bumped when the layout changes; stored in `_attachments_config`.
pub const SCHEMA_VERSION: i64 = 1;

/// Creates what is missing in `main`. Runs in the caller's transaction.
pub fn ensure(conn: &Connection, table: &str) -> Result<()> {
    let t = quote_ident(table);
    let idx = quote_ident(&format!("_attachments_idx_{table}_due"));
    let claims = quote_ident(&format!("_attachments_idx_{table}_claims"));
    // language=SQLite
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS main._attachments_config(
            id INTEGER PRIMARY KEY CHECK (id = 1),
            config TEXT NOT NULL,
            schema_version INTEGER NOT NULL DEFAULT {SCHEMA_VERSION});
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
            incremental INTEGER NOT NULL DEFAULT 1);
        -- The triggers each watch owns, with the SQL they were created from, so a pass can
        -- notice one that a table migration dropped and create it again.
        CREATE TABLE IF NOT EXISTS main._attachments_trigger(
            name TEXT PRIMARY KEY NOT NULL,
            watch TEXT NOT NULL,
            tbl TEXT NOT NULL,
            sql TEXT NOT NULL);
        -- The ids each watch referenced when it was last run.
        -- filename is NULL when id or extension is unsafe; both it and guessed_type
        -- are computed once, when the reference appears or changes.
        CREATE TABLE IF NOT EXISTS main._attachments_ref(
            watch TEXT NOT NULL,
            id TEXT NOT NULL,
            file_extension TEXT,
            media_type TEXT,
            meta_data TEXT,
            filename TEXT,
            guessed_type TEXT,
            PRIMARY KEY (watch, id)) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS main._attachments_ref_by_id ON _attachments_ref(id);
        -- Ids whose references changed since the last reconciliation.
        CREATE TABLE IF NOT EXISTS main._attachments_delta(id TEXT PRIMARY KEY) WITHOUT ROWID;
        -- One row: what attachment_progress() counts as done since the queue was last empty
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
        INSERT OR IGNORE INTO main._attachments_progress(id) VALUES (1);
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
            bytes_done INTEGER);
        CREATE INDEX IF NOT EXISTS main.{idx} ON {t}(state, next_attempt_at);"
    ))?;
    // Claims are few; every pass looks for those of dead processes, so they get a small
    // index of their own (created after the column exists in tables from earlier builds).
    let claims_index = format!("CREATE INDEX IF NOT EXISTS main.{claims} ON {t}(claimed_by) WHERE claimed_by IS NOT NULL");
    // Columns added after the first layout, for tables created by an earlier build.
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
        // When the transfer in flight started moving bytes (ms), for attachment_queue's rate.
        (table, "started_at", "INTEGER"),
    ];
    for (owner, column, decl) in added {
        let present: bool = conn.query_row(
            "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
            [owner, column],
            |r| r.get(0),
        )?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE main.{} ADD COLUMN {column} {decl}", quote_ident(owner)))?;
        }
    }
    conn.execute_batch(&claims_index)?;
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
    fn quoting_escapes() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
