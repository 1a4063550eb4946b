//! Who a `local_dir` belongs to. Verify deletes files no row names, so a folder shared
//! with anything else (the database's own folder, another database, another table)
//! would lose files that were not verify's to delete. A marker file in the folder names
//! an owner id that is stored in the database, and the database file that owns the folder
//! (path, device, inode). The id tells databases apart; the file tells the original from a
//! copy of it (a backup carries the same id). A moved or restored database keeps its folder
//! (the recorded path is gone, or is this very file); anyone else is refused.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
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

/// Refuses a `file://` remote that is `local_dir`, or inside it, or holds it: every
/// upload would then copy a file onto itself or into the folder verify cleans.
pub fn check_remote_apart(remote: &crate::config::Remote, local_dir: &Path) -> Result<()> {
    let crate::config::Remote::Dir(remote_dir) = remote else { return Ok(()) };
    let (r, l) = (resolve(remote_dir), resolve(local_dir));
    let how = if r == l {
        "is local_dir itself"
    } else if r.starts_with(&l) {
        "is inside local_dir"
    } else if l.starts_with(&r) {
        "holds local_dir"
    } else {
        return Ok(());
    };
    Err(Error::config(
        "remote",
        format!("'{}' {how} ('{}'); a file:// remote must be a folder apart from local_dir", r.display(), l.display()),
    ))
}

/// `path` made absolute without `.`/`..`, through the symlinks of its longest existing
/// part (either folder may not exist yet).
fn resolve(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut lexical = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other),
        }
    }
    fn through_links(p: &Path) -> PathBuf {
        if let Ok(c) = fs::canonicalize(p) {
            return c;
        }
        match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) => through_links(parent).join(name),
            _ => p.to_path_buf(),
        }
    }
    through_links(&lexical)
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

/// The database file a marker records as the folder's owner: a copy of the database
/// (a backup in the same folder) carries the same owner id, so the id alone cannot tell
/// the original from its copy; the file's identity can.
#[derive(Debug, Clone, PartialEq)]
struct DbFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl DbFile {
    /// The identity of the file at `path` now; None when nothing is there.
    fn at(path: &Path) -> Option<DbFile> {
        let path = fs::canonicalize(path).ok()?;
        let meta = fs::metadata(&path).ok()?;
        Some(DbFile { path, dev: meta.dev(), ino: meta.ino() })
    }

    fn same_file(&self, other: &DbFile) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

struct Marker {
    owner: String,
    /// None in markers of earlier builds, and for in-memory databases.
    db: Option<DbFile>,
}

fn read_marker(dir: &Path) -> Result<Option<Marker>> {
    let path = dir.join(MARKER);
    match fs::read_to_string(&path) {
        Ok(text) => {
            // An unreadable marker names an owner no database has: it guards the folder.
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let db = match (v["db"]["path"].as_str(), v["db"]["dev"].as_u64(), v["db"]["ino"].as_u64()) {
                (Some(p), Some(dev), Some(ino)) => Some(DbFile { path: PathBuf::from(p), dev, ino }),
                _ => None,
            };
            Ok(Some(Marker { owner: v["owner"].as_str().unwrap_or_default().to_string(), db }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Written as every file here: temp name, fsync, rename, fsync the folder.
fn write_marker(dir: &Path, owner: &str, table: &str, db: Option<&DbFile>) -> Result<()> {
    let path = dir.join(MARKER);
    let tmp = dir.join(format!("{MARKER}.new-{}", uuid::Uuid::new_v4().simple()));
    let mut marker = json!({"owner": owner, "table": table});
    if let Some(db) = db {
        marker["db"] = json!({"path": db.path.to_string_lossy(), "dev": db.dev, "ino": db.ino});
    }
    let result = (|| -> io::Result<()> {
        let mut f = fs::File::create_new(&tmp)?;
        f.write_all(marker.to_string().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| Error::io(path, e))
}

/// The owner id stored in another database file and the local_dir its config names,
/// read on a read-only connection of its own.
fn owner_in_file(path: &Path) -> Result<(Option<String>, Option<PathBuf>)> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    let dir = crate::config::Config::load(&conn).ok().and_then(|c| c.local_dir_for(path.to_str()).ok());
    Ok((stored_owner(&conn)?, dir))
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

/// What the marker says about this database and its folder.
#[derive(Debug, PartialEq)]
enum Standing {
    /// The marker names this database file: nothing to do.
    Ours,
    /// Ours, but the marker is to be rewritten (the database moved or was restored, or
    /// the marker predates the database's identity).
    OursToRecord,
    /// No marker, or one whose owner is gone: adopted only when nothing in it is a stranger's.
    Unowned,
}

fn another_database(dir: &Path, owner_file: Option<&Path>) -> Error {
    let whose = owner_file.map(|p| format!(" ('{}')", p.display())).unwrap_or_default();
    Error::config(
        "local_dir",
        format!(
            "'{}' belongs to another database{whose} (see its {MARKER} file); give each database a local_dir of its own",
            dir.display()
        ),
    )
}

/// Reads the marker of `dir` against this database (`db_file`, with owner id `stored`).
/// Errors when the folder is another database's, or this one is a copy of its owner.
fn standing(dir: &Path, db_file: Option<&str>, stored: Option<&str>) -> Result<Standing> {
    let Some(marker) = read_marker(dir)? else { return Ok(Standing::Unowned) };
    let same_owner = stored == Some(marker.owner.as_str());
    let me = db_file.filter(|f| !f.is_empty()).and_then(|f| DbFile::at(Path::new(f)));
    let Some(recorded) = marker.db else {
        // A marker of an earlier build: the id alone decides.
        return match (same_owner, &me) {
            (true, Some(_)) => Ok(Standing::OursToRecord),
            (true, None) => Ok(Standing::Ours),
            (false, _) => Err(another_database(dir, None)),
        };
    };
    let at_path = DbFile::at(&recorded.path);
    if let (Some(me), Some(now)) = (&me, &at_path) {
        if me.same_file(now) {
            // The recorded path is this very file (or a restore copied over it).
            return Ok(match same_owner {
                true if me.same_file(&recorded) && me.path == recorded.path => Standing::Ours,
                true => Standing::OursToRecord,
                // This file does not hold the marker's id (an init that rolled back).
                false => Standing::Unowned,
            });
        }
    }
    let Some(_) = at_path else {
        // The recorded database is gone (moved, renamed or deleted).
        return Ok(if same_owner { Standing::OursToRecord } else { Standing::Unowned });
    };
    // Another file is at the recorded path: does it still own the folder?
    let holds_owner = match owner_in_file(&recorded.path) {
        // It holds the marker's id and still uses this folder (not when this folder is a
        // copy of its folder, made with a copy of the database).
        Ok((id, its_dir)) => {
            id.as_deref() == Some(marker.owner.as_str()) && its_dir.is_none_or(|d| resolve(&d) == resolve(dir))
        }
        // Unreadable (locked, not a database): it may be the owner, so the folder stays its.
        Err(_) => true,
    };
    match (holds_owner, same_owner) {
        (true, true) => Err(Error::config(
            "local_dir",
            format!(
                "'{}' belongs to '{}', of which this database is a copy; give the copy a local_dir of its own (its verify would delete the original's newer files)",
                dir.display(),
                recorded.path.display()
            ),
        )),
        (true, false) => Err(another_database(dir, Some(&recorded.path))),
        (false, true) => Ok(Standing::OursToRecord),
        (false, false) => Ok(Standing::Unowned),
    }
}

/// Makes `dir` this database's `local_dir`, or refuses. Runs in a write transaction
/// (the caller's in `attachment_init`, the extension's own in verify): it may store the owner id.
/// An unowned folder is adopted only when it is empty or every file in it is named by a row
/// of `table` (upgrades from releases before the marker).
pub fn claim(conn: &Connection, db_file: Option<&str>, dir: &Path, table: &str) -> Result<()> {
    if check_claim(conn, db_file, dir, table)? {
        let id = owner_id(conn)?;
        let me = db_file.filter(|f| !f.is_empty()).and_then(|f| DbFile::at(Path::new(f)));
        write_marker(dir, &id, table, me.as_ref())?;
    }
    Ok(())
}

/// Refuses a save into a folder that is not this database's (another database's, or
/// the original's when this database is a copy). Cheap when the folder is ours: one
/// small read and a few stats. A marker still to be re-recorded (an earlier build's, a
/// moved database's) is rewritten now, so the original claims its folder before any copy
/// of it can; an unowned folder is left to init and verify.
pub fn check_save(conn: &Connection, db_file: Option<&str>, dir: &Path, table: &str) -> Result<()> {
    let stored = stored_owner(conn)?;
    if standing(dir, db_file, stored.as_deref())? == Standing::OursToRecord {
        if let Some(id) = &stored {
            let me = db_file.filter(|f| !f.is_empty()).and_then(|f| DbFile::at(Path::new(f)));
            write_marker(dir, id, table, me.as_ref())?;
        }
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
    match standing(dir, db_file, stored_owner(conn)?.as_deref())? {
        Standing::Ours => return Ok(false),
        Standing::OursToRecord => return Ok(true),
        Standing::Unowned => {}
    }
    let names = other_names(dir)?;
    if names.is_empty() {
        return Ok(true);
    }
    let named: HashSet<String> = match conn.prepare(&format!("SELECT filename FROM main.{}", quote_ident(table))) {
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
    // Files in a folder that is not this database's (it is a copy of the folder's owner)
    // are not its to carry over: the copy may move to a folder of its own.
    let ours = || standing(&old_dir, db_file, stored_owner(conn).ok().flatten().as_deref()).is_ok();
    if !same && old_dir.is_dir() && ours() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Remote;

    #[test]
    fn a_file_remote_must_be_apart_from_local_dir() {
        let dir = std::env::temp_dir().join(format!("att-own-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(dir.join("files")).unwrap();
        let refused = |remote: &str, local: &str| {
            check_remote_apart(&Remote::Dir(dir.join(remote)), &dir.join(local)).is_err()
        };
        assert!(refused("files", "files"));
        assert!(refused("files/up", "files"));
        assert!(refused("files", "files/down"));
        assert!(refused("x/../files", "./files"));
        assert!(!refused("files2", "files"));
        assert!(!refused("remote", "files"));
        assert!(check_remote_apart(&Remote::S3 { bucket: "b".into(), prefix: String::new() }, &dir).is_ok());
        let msg = check_remote_apart(&Remote::Dir(dir.join("files")), &dir.join("files")).unwrap_err().to_string();
        assert!(msg.contains("remote"), "{msg}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
