//! Who a `local_dir` belongs to. Verify deletes files no row names, so a folder shared
//! with anything else (the database's own folder, another database, another table)
//! would lose files that were not verify's to delete. A marker file in the folder names
//! an owner id that is stored in the database (not the path: a moved database keeps its
//! folder); anyone else is refused.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::schema::quote_ident;
use crate::store::sync_dir;

/// The marker's name; no attachment file starts with a dot.
pub const MARKER: &str = ".attachments-owner";

/// Refuses a `local_dir` that is the folder holding the database file: verify would
/// take the database, its journal and every neighbour for orphans.
pub fn check_not_database_dir(dir: &Path, db_file: Option<&str>) -> Result<()> {
    let Some(db_dir) = db_file.filter(|f| !f.is_empty()).and_then(|f| Path::new(f).parent()) else { return Ok(()) };
    let same = match (fs::canonicalize(dir), fs::canonicalize(if db_dir.as_os_str().is_empty() { Path::new(".") } else { db_dir })) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(Error::config(
            "local_dir",
            format!("'{}' is the folder of the database file itself; use a folder of its own, like 'files'", dir.display()),
        ));
    }
    Ok(())
}

/// The stored owner id; None before the first init (no table, or a table from an
/// earlier build without the column).
fn stored_owner(conn: &Connection) -> Result<Option<String>> {
    match conn
        .query_row("SELECT local_dir_owner FROM main._attachments_config WHERE id = 1", [], |r| r.get::<_, Option<String>>(0))
        .optional()
    {
        Ok(v) => Ok(v.flatten()),
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.starts_with("no such") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The owner id this database gives its `local_dir`, created (in the caller's transaction) on first use.
fn owner_id(conn: &Connection) -> Result<String> {
    if let Some(id) = stored_owner(conn)? {
        return Ok(id);
    }
    let id = uuid::Uuid::new_v4().to_string();
    conn.execute("UPDATE main._attachments_config SET local_dir_owner = ?1 WHERE id = 1", [&id])?;
    Ok(id)
}

fn read_marker(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(MARKER);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(serde_json::from_str::<Value>(&text).ok().and_then(|v| v["owner"].as_str().map(str::to_string))
            .or(Some(String::new()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Written as every file here: temp name, fsync, rename, fsync the folder.
fn write_marker(dir: &Path, owner: &str, table: &str) -> Result<()> {
    let path = dir.join(MARKER);
    let tmp = dir.join(format!("{MARKER}.new-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| -> io::Result<()> {
        let mut f = fs::File::create_new(&tmp)?;
        f.write_all(json!({"owner": owner, "table": table}).to_string().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| Error::io(path, e))
}

/// Names in `dir` other than the marker (everything: hidden files, folders, symlinks).
fn other_names(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let name = item.map_err(|e| Error::io(dir, e))?.file_name().to_string_lossy().into_owned();
        if name != MARKER {
            out.push(name);
        }
    }
    Ok(out)
}

/// Makes `dir` this database's `local_dir`, or refuses. Runs in a write transaction
/// (the caller's in `attachment_init`, the extension's own in verify): it may store the owner id.
/// An unowned folder is adopted only when it is empty or every file in it is named by a row
/// of `table` (upgrades from releases before the marker).
pub fn claim(conn: &Connection, db_file: Option<&str>, dir: &Path, table: &str) -> Result<()> {
    if check_claim(conn, db_file, dir, table)? {
        let id = owner_id(conn)?;
        write_marker(dir, &id, table)?;
    }
    Ok(())
}

/// What [`claim`] decides, without writing anything: an error when `dir` is not this
/// database's to use; Ok(true) when the marker is still to be written. A missing folder is
/// fine here (only `attachment_init` gets this far without one, and it creates it).
pub fn check_claim(conn: &Connection, db_file: Option<&str>, dir: &Path, table: &str) -> Result<bool> {
    check_not_database_dir(dir, db_file)?;
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        _ if !dir.is_dir() => {
            return Err(Error::config("local_dir", format!("'{}' exists and is not a directory", dir.display())))
        }
        _ => {}
    }
    let id = stored_owner(conn)?;
    let names = other_names(dir)?;
    match read_marker(dir)? {
        Some(owner) if Some(&owner) == id.as_ref() => return Ok(false),
        // A marker whose owner was never committed (an init rolled back) guards nothing.
        Some(_) if names.is_empty() => {}
        Some(_) => {
            return Err(Error::config(
                "local_dir",
                format!("'{}' belongs to another database (see its {MARKER} file); give each database a local_dir of its own", dir.display()),
            ))
        }
        None if names.is_empty() => {}
        None => {
            let named: HashSet<String> = match conn
                .prepare(&format!("SELECT filename FROM main.{}", quote_ident(table)))
            {
                Ok(mut stmt) => stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?,
                Err(_) => HashSet::new(), // no queue table yet: no rows name anything
            };
            // This extension's own temp files (of an interrupted write) are no reason to refuse.
            if let Some(stranger) = names.iter().find(|n| !named.contains(*n) && !crate::store::is_temp_name(n)) {
                return Err(Error::config(
                    "local_dir",
                    format!(
                        "'{}' is not empty and not owned by this database (it holds '{}', which no row names); use an empty or new folder, or move out what no row names",
                        dir.display(),
                        stranger.escape_debug()
                    ),
                ));
            }
        }
    }
    Ok(true)
}

/// Refuses a new `table` or `local_dir` while the old one still has rows or files that
/// would be left behind (and later taken for orphans), saying how to carry them over.
pub fn check_change(conn: &Connection, old: &crate::config::Config, new: &crate::config::Config, db_file: Option<&str>) -> Result<()> {
    if old.table != new.table {
        let rows: i64 = conn
            .query_row(&format!("SELECT count(*) FROM main.{}", quote_ident(&old.table)), [], |r| r.get(0))
            .unwrap_or(0);
        if rows > 0 {
            return Err(Error::config(
                "table",
                format!(
                    "the queue table '{0}' still has {rows} rows (queued, synced or archived); carry them over with ALTER TABLE \"{0}\" RENAME TO \"{1}\" and call attachment_init again, or keep table '{0}'",
                    old.table, new.table
                ),
            ));
        }
    }
    let (old_dir, new_dir) = (old.local_dir_for(db_file)?, new.local_dir_for(db_file)?);
    let same = old_dir == new_dir || matches!((fs::canonicalize(&old_dir), fs::canonicalize(&new_dir)), (Ok(a), Ok(b)) if a == b);
    if !same && old_dir.is_dir() {
        let t = quote_ident(&old.table);
        let uris: Vec<String> = match conn.prepare(&format!("SELECT local_uri FROM main.{t} WHERE local_uri IS NOT NULL")) {
            Ok(mut stmt) => stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?,
            Err(_) => Vec::new(),
        };
        let left = uris.iter().filter(|u| !u.contains('/') && fs::symlink_metadata(old_dir.join(u)).is_ok()).count();
        if left > 0 {
            return Err(Error::config(
                "local_dir",
                format!(
                    "{left} files of this database are in '{}'; move that folder to '{}' and call attachment_init again, or keep local_dir '{}'",
                    old_dir.display(),
                    new_dir.display(),
                    old.local_dir
                ),
            ));
        }
    }
    Ok(())
}
