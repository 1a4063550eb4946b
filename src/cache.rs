//! The archived cache's policy: which ARCHIVED local copies stay, what counts as a
//! use, pinning, and the report `attachment_cache()` gives.
//!
//! ARCHIVED rows (nothing references them) keep their local file as a cache until
//! `archived_cache_limit` (rows) or `archived_cache_bytes` (bytes of local copies) is
//! exceeded; then the least recently used go first, file and row, until both hold.
//! Pinned rows never count and never go. The remote object is never touched.
//!
//! A use is a read through the extension (`attachment_local_uri`, `attachment_data`,
//! `attachment_fetch`), a save or a download. Reads must stay cheap, so they are not
//! written: [`touch`] notes the id and the time in this process's memory, and the next
//! write transaction that needs them (the pass's cache expiry, `attachment_expire_cache`)
//! writes them first, in the same transaction. Saves and downloads set `last_used`
//! in the statement that records them.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use rusqlite::Connection;
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::error::Result;
use crate::queue::table::QueueTable;
use crate::queue::{now_ms, State};
use crate::schema::quote_ident;
use crate::store::LocalStore;

/// Uses noted and not yet written, by database file, then by id: the time of the last one.
pub type Uses = HashMap<String, i64>;

static PENDING: LazyLock<Mutex<HashMap<String, Uses>>> = LazyLock::new(Default::default);

/// Distinct ids noted per database file between two writes. Beyond it, new ids are not
/// noted until the next write (their recency is a hint, not data worth unbounded memory).
const MAX_PENDING: usize = 100_000;

/// How many ids of the next expiry `attachment_cache()` lists.
const REPORT_IDS: usize = 10;

/// Notes that `id` of the database file `db_file` was used now. A mutex and a hash map
/// insert, no SQL: called on every read. Written by the next pass (or expiry) of this process.
pub fn touch(db_file: &str, id: &str) {
    if db_file.is_empty() {
        return; // an in-memory database has no cache to keep
    }
    let now = now_ms();
    let Ok(mut pending) = PENDING.lock() else { return };
    match pending.get_mut(db_file) {
        Some(uses) => note(uses, id, now),
        None => {
            let mut uses = Uses::new();
            note(&mut uses, id, now);
            pending.insert(db_file.to_string(), uses);
        }
    }
}

fn note(uses: &mut Uses, id: &str, now: i64) {
    if let Some(at) = uses.get_mut(id) {
        *at = (*at).max(now);
    } else if uses.len() < MAX_PENDING {
        uses.insert(id.to_string(), now);
    }
}

/// The last use of `id` noted in memory and not yet written, if any.
pub fn pending_use(db_file: &str, id: &str) -> Option<i64> {
    PENDING.lock().ok()?.get(db_file)?.get(id).copied()
}

/// Whether uses of `db_file` wait to be written.
pub fn uses_pending(db_file: &str) -> bool {
    PENDING.lock().map(|p| p.get(db_file).is_some_and(|u| !u.is_empty())).unwrap_or(false)
}

/// The uses of `db_file` not yet written, as a JSON object `{"id": ms, ...}`; None when none.
fn pending_json(db_file: &str) -> Option<String> {
    let pending = PENDING.lock().ok()?;
    let uses = pending.get(db_file).filter(|u| !u.is_empty())?;
    Some(serde_json::to_string(uses).unwrap_or_else(|_| "{}".into()))
}

/// Takes the uses of `db_file` for writing, runs `f` with them (it writes them in its
/// transaction with [`record_uses`]), and puts them back if `f` fails, so a busy database
/// loses none.
pub fn with_uses<T>(db_file: &str, f: impl FnOnce(&Uses) -> Result<T>) -> Result<T> {
    let taken = PENDING.lock().ok().and_then(|mut p| p.remove(db_file)).unwrap_or_default();
    let result = f(&taken);
    if result.is_err() && !taken.is_empty() {
        if let Ok(mut pending) = PENDING.lock() {
            let uses = pending.entry(db_file.to_string()).or_default();
            for (id, at) in taken {
                let slot = uses.entry(id).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
    }
    result
}

/// Writes `uses` into `last_used`, in the caller's transaction.
pub fn record_uses(conn: &Connection, table: &str, uses: &Uses) -> Result<()> {
    let queue = QueueTable::unclaimed(conn, table);
    for (id, at) in uses {
        queue.record_use(id, *at)?;
    }
    Ok(())
}

/// Whether the rows that count toward the cache exceed either limit.
pub fn expiry_needed(conn: &Connection, config: &Config) -> Result<bool> {
    let (rows, bytes) = QueueTable::unclaimed(conn, &config.table).evictable_totals()?;
    Ok(rows > config.archived_cache_limit || config.archived_cache_bytes.is_some_and(|limit| bytes > limit))
}

/// Removes the ARCHIVED rows beyond `archived_cache_limit` or `archived_cache_bytes`,
/// least recently used first, with their local files. Remote objects stay: other
/// devices may still reference them. Write pending uses first ([`with_uses`]). Runs in
/// the caller's transaction; returns the number of rows removed.
pub fn expire(conn: &Connection, config: &Config, store: &LocalStore) -> Result<usize> {
    let queue = QueueTable::unclaimed(conn, &config.table);
    let victims = queue.eviction_victims(config.archived_cache_limit, config.archived_cache_bytes, None)?;
    let mut expired = 0;
    for victim in &victims {
        if let Some(file) = &victim.local_uri {
            // A file that cannot be removed keeps its row, so verify can try again.
            if let Err(e) = store.remove(file) {
                log::warn!("cache expiry could not remove {file}: {e}");
                continue;
            }
        }
        if queue.expire(&victim.id)? {
            expired += 1;
        }
    }
    Ok(expired)
}

/// `attachment_pin`: marks `id` pinned. A pinned ARCHIVED row without its local copy is
/// queued for download; an id with no row that a watch references (one whose policy does
/// not download it) gets a pinned QUEUED_DOWNLOAD row. False when there is no row and no
/// watch references the id: there is nothing to keep, and no file name to fetch it by.
/// Runs in the caller's transaction.
pub fn pin(conn: &Connection, config: &Config, id: &str) -> Result<bool> {
    let queue = QueueTable::unclaimed(conn, &config.table);
    let found = queue.set_pinned(id, true)?
        || queue.insert_pinned_download(&crate::reconcile::referenced("AND id = ?1"), id)?;
    if found {
        queue.download_pinned(Some(id))?;
    }
    Ok(found)
}

/// `attachment_unpin`: false when there is no row. The row counts toward the cache again;
/// a download queued only because of the pin is archived by the next reconciliation if
/// nothing references the id. Runs in the caller's transaction.
pub fn unpin(conn: &Connection, config: &Config, id: &str) -> Result<bool> {
    let found = QueueTable::unclaimed(conn, &config.table).set_pinned(id, false)?;
    if found {
        crate::reconcile::note_changed(conn, id)?;
    }
    Ok(found)
}

/// `attachment_cache()`: rows, local files and their bytes by state; pinned; what counts
/// toward the limits; the limits; what the next expiry would remove (uses noted in this
/// process and not yet written included). A read on the caller's connection.
pub fn report(conn: &Connection, config: &Config, db_file: &str) -> Result<Value> {
    let t = quote_ident(&config.table);
    let bytes = QueueTable::BYTES;
    let mut states = Map::new();
    for s in State::ALL {
        states.insert(s.as_str().into(), json!({"rows": 0, "files": 0, "bytes": 0}));
    }
    let (mut files, mut total_bytes) = (0i64, 0i64);
    // language=SQLite
    let mut stmt = conn.prepare(&format!(
        "SELECT state, count(*), count(local_uri), coalesce(sum({bytes}), 0) FROM main.{t} AS q GROUP BY state"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (rows_n, files_n, bytes_n): (i64, i64, i64) = (r.get(1)?, r.get(2)?, r.get(3)?);
        files += files_n;
        total_bytes += bytes_n;
        // Hand-edited states are left out of the breakdown, not the totals.
        let Some(state) = r.get::<_, Option<i64>>(0).ok().flatten().and_then(State::from_code) else { continue };
        states.insert(state.as_str().into(), json!({"rows": rows_n, "files": files_n, "bytes": bytes_n}));
    }
    let pinned: (i64, i64, i64) = conn.query_row(
        &format!("SELECT count(*), count(local_uri), coalesce(sum({bytes}), 0) FROM main.{t} AS q WHERE pinned = 1"),
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let queue = QueueTable::unclaimed(conn, &config.table);
    let (counted_rows, counted_bytes) = queue.evictable_totals()?;
    let pending = pending_json(db_file);
    let victims = queue.eviction_victims(config.archived_cache_limit, config.archived_cache_bytes, pending.as_deref())?;
    Ok(json!({
        "states": states,
        "local": {"files": files, "bytes": total_bytes},
        "pinned": {"rows": pinned.0, "files": pinned.1, "bytes": pinned.2},
        "archived_counted": {"rows": counted_rows, "bytes": counted_bytes},
        "limits": {"archived_cache_limit": config.archived_cache_limit, "archived_cache_bytes": config.archived_cache_bytes},
        "next_expiry": {
            "count": victims.len(),
            "bytes": victims.iter().map(|v| v.bytes).sum::<i64>(),
            "ids": victims.iter().take(REPORT_IDS).map(|v| v.id.as_str()).collect::<Vec<_>>(),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_are_kept_per_database_until_written() {
        let db = "/tmp/cache-unit-test-a.db";
        touch(db, "x");
        touch(db, "y");
        touch("", "z"); // in-memory: nothing noted
        assert!(uses_pending(db));
        assert!(!uses_pending("/tmp/cache-unit-test-b.db"));
        let json: Value = serde_json::from_str(&pending_json(db).unwrap()).unwrap();
        assert_eq!(json.as_object().unwrap().len(), 2);
        // A failed write puts them back; a successful one drops them.
        let failed: Result<()> = with_uses(db, |uses| {
            assert_eq!(uses.len(), 2);
            Err(crate::error::Error::Misuse("busy".into()))
        });
        assert!(failed.is_err() && uses_pending(db));
        with_uses(db, |uses| {
            assert!(uses.contains_key("x") && uses.contains_key("y"));
            Ok(())
        })
        .unwrap();
        assert!(!uses_pending(db) && pending_json(db).is_none());
    }
}
