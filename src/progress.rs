//! What `attachment_progress()` shows: files and bytes queued, in flight and done per
//! direction, over every process's transfers on the database, with a rate and an estimate
//! of the time left.
//!
//! Done counts live in `_attachments_progress` (updated by the transactions that record
//! results, see `QueueTable::count_done`), so every process sees them. The rate needs two
//! observations apart in time: the transactions that renew claims (every second while
//! transfers run) and record results append a sample of the bytes moved so far, at most one
//! a second, and a reader compares what has moved now with a sample a few seconds old.

use crate::connection::{exec_cached, query_row_cached};
use rusqlite::{Connection, OptionalExtension};
use serde_json::{json, Value};

use crate::error::Result;
use crate::queue::now_ms;
use crate::remote::ErrorClass;
use crate::schema::quote_ident;

/// Samples kept (one a second at most).
const SAMPLES: usize = 10;
/// The rate is measured over about this long.
const WINDOW_MS: i64 = 5_000;

/// Moved so far (done plus in flight), at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Moved {
    at: i64,
    upload_bytes: i64,
    download_bytes: i64,
    files: i64,
}

impl Moved {
    fn to_json(self) -> Value {
        json!([self.at, self.upload_bytes, self.download_bytes, self.files])
    }

    fn from_json(v: &Value) -> Option<Moved> {
        let a = v.as_array()?;
        Some(Moved {
            at: a.first()?.as_i64()?,
            upload_bytes: a.get(1)?.as_i64()?,
            download_bytes: a.get(2)?.as_i64()?,
            files: a.get(3)?.as_i64()?,
        })
    }
}

/// The done counters, as stored.
struct Counters {
    upload_files: i64,
    upload_bytes: i64,
    download_files: i64,
    download_bytes: i64,
    drained: bool,
    samples: Vec<Moved>,
    last_error: Option<(String, String, Option<i64>)>,
}

fn counters(conn: &Connection) -> Result<Option<Counters>> {
    // A database whose schema predates the table (no pass of this build yet) counts nothing.
    let exists: bool = query_row_cached(conn, 
        "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = '_attachments_progress')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    Ok(query_row_cached(conn, 
            "SELECT upload_files, upload_bytes, download_files, download_bytes, drained, samples,
                    last_error_id, last_error, last_error_at
             FROM main._attachments_progress WHERE id = 1",
            [],
            |r| {
                let samples: String = r.get(5)?;
                let last_error = match (r.get::<_, Option<String>>(6)?, r.get::<_, Option<String>>(7)?) {
                    (Some(id), Some(e)) => Some((id, e, r.get(8)?)),
                    _ => None,
                };
                Ok(Counters {
                    upload_files: r.get(0)?,
                    upload_bytes: r.get(1)?,
                    download_files: r.get(2)?,
                    download_bytes: r.get(3)?,
                    drained: r.get::<_, i64>(4)? != 0,
                    samples: serde_json::from_str::<Value>(&samples)
                        .ok()
                        .and_then(|v| v.as_array().map(|a| a.iter().filter_map(Moved::from_json).collect()))
                        .unwrap_or_default(),
                    last_error,
                })
            },
        )
        .optional()?)
}

/// Bytes of transfers in flight as published in the rows (uploads, downloads).
fn published_in_flight(conn: &Connection, table: &str) -> Result<(i64, i64)> {
    let t = quote_ident(table);
    Ok(query_row_cached(conn, 
        &format!(
            "SELECT coalesce(sum(bytes_done) FILTER (WHERE state = 0), 0), coalesce(sum(bytes_done) FILTER (WHERE state = 1), 0)
             FROM main.{t} WHERE claimed_by IS NOT NULL AND state IN (0, 1)"
        ),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// Appends a sample of what has moved so far, unless one was taken within the last second.
/// Runs in the caller's write transaction (a renewal or a recording).
pub fn sample(conn: &Connection, table: &str, now: i64) -> Result<()> {
    let Some(mut c) = counters(conn)? else { return Ok(()) };
    if c.drained {
        // The queue was seen empty and holds work again (a transfer of it is being renewed):
        // a new round starts now, not at its first result, so its first file has a rate too.
        let t = quote_ident(table);
        let busy: bool = query_row_cached(conn, &format!("SELECT EXISTS (SELECT 1 FROM main.{t} WHERE state IN (0, 1, 2))"), [], |r| r.get(0))?;
        if !busy {
            return Ok(());
        }
        exec_cached(conn, 
            "UPDATE main._attachments_progress SET upload_files = 0, upload_bytes = 0, download_files = 0,
                 download_bytes = 0, samples = '[]', since = ?1, drained = 0 WHERE id = 1",
            [now],
        )?;
        c = Counters { upload_files: 0, upload_bytes: 0, download_files: 0, download_bytes: 0, drained: false, samples: Vec::new(), ..c };
    }
    if c.samples.last().is_some_and(|s| now - s.at < 1_000 && now >= s.at) {
        return Ok(());
    }
    let (up, down) = published_in_flight(conn, table)?;
    let mut samples = c.samples;
    samples.push(Moved {
        at: now,
        upload_bytes: c.upload_bytes + up,
        download_bytes: c.download_bytes + down,
        files: c.upload_files + c.download_files,
    });
    let keep = samples.len().saturating_sub(SAMPLES);
    let text = Value::Array(samples[keep..].iter().map(|s| s.to_json()).collect()).to_string();
    exec_cached(conn, "UPDATE main._attachments_progress SET samples = ?1 WHERE id = 1", [text])?;
    Ok(())
}

/// Why a whole pass failed, in `last_error`'s form (`class: reason`), when it is something a
/// person can act on; None for a busy database (it passes by itself) or an interruption.
pub fn pass_error_text(e: &crate::error::Error) -> Option<String> {
    use crate::error::Error;
    let class = match e {
        Error::Remote(r) => return Some(r.to_string()),
        _ if e.is_busy() => return None,
        Error::Sqlite(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::OperationInterrupted => return None,
        Error::Unavailable(_) => return None,
        Error::Config { key, .. } if key == "local_dir" => "local",
        Error::Io { .. } | Error::Sqlite(_) => "local",
        _ => "config",
    };
    Some(crate::redact::redact(&format!("{class}: {e}")))
}

/// Records how a pass ended (on the extension's own connection, outside any transaction):
/// the error of a failed pass for `attachment_progress()`'s `pass_error`, cleared by the
/// next pass that works. Writes only when that changes something.
pub fn record_pass<T>(conn: &Connection, outcome: &Result<T>) {
    let stored: Option<String> = match conn.query_row("SELECT pass_error FROM main._attachments_progress WHERE id = 1", [], |r| r.get(0)) {
        Ok(v) => v,
        Err(_) => return, // no table yet (before the first pass of this build)
    };
    let new = match outcome {
        Ok(_) => None,
        Err(e) => match pass_error_text(e) {
            Some(text) => Some(text),
            None => return,
        },
    };
    if new != stored {
        let _ = conn.execute(
            "UPDATE main._attachments_progress SET pass_error = ?1, pass_error_at = CASE WHEN ?1 IS NULL THEN NULL ELSE ?2 END WHERE id = 1",
            rusqlite::params![new, now_ms()],
        );
    }
}

/// One direction's rows that still need a transfer.
#[derive(Default)]
struct Pending {
    queued_files: i64,
    queued_bytes: i64,
    /// Files whose size is not known yet (a download before it completes).
    unknown_size: i64,
    in_flight_files: i64,
    in_flight_bytes: i64,
    in_flight_done: i64,
}

/// The progress feed of the database `conn` is open on; `db_file` finds this process's
/// transfers in flight, whose progress is live (others' is published about once a second).
pub fn feed(conn: &Connection, db_file: &str, table: &str) -> Result<Value> {
    let now = now_ms();
    let t = quote_ident(table);
    let mut up = Pending::default();
    let mut down = Pending::default();
    let mut deletes = 0i64;
    let mut failing = 0i64;
    // Rows that still need a transfer: few columns, read through the (state, ...) index.
    // language=SQLite
    let mut stmt = conn.prepare(&format!(
        "SELECT id, state, size, claimed_by IS NOT NULL AND claimed_until >= ?1, bytes_done, attempts, claimed_by
         FROM main.{t} WHERE state IN (0, 1, 2)"
    ))?;
    let mut rows = stmt.query([now])?;
    // Whether each claim's owner is known to be dead (looked up once per owner): its
    // transfer is not in flight, whatever its lease says.
    let mut dead: std::collections::HashMap<String, bool> = Default::default();
    while let Some(r) = rows.next()? {
        let state: i64 = r.get(1)?;
        if r.get::<_, i64>(5)? > 0 {
            failing += 1;
        }
        if state == 2 {
            deletes += 1;
            continue;
        }
        let p = if state == 0 { &mut up } else { &mut down };
        let size: Option<i64> = r.get(2)?;
        let mut claimed: bool = r.get::<_, Option<bool>>(3)?.unwrap_or(false);
        if claimed {
            if let Ok(Some(by)) = r.get_ref(6)?.as_str_or_null() {
                claimed = !*dead.entry(by.to_string()).or_insert_with(|| crate::owner::is_dead(db_file, by));
            }
        }
        let published: Option<i64> = r.get(4)?;
        // A claim is in flight once its transfer started moving bytes (claims taken ahead
        // of the transfer threads wait like any queued row).
        let live = match r.get_ref(0)?.as_str() {
            Ok(id) if claimed => crate::sync::bytes_done(db_file, id).map(|n| n as i64),
            _ => None,
        };
        match (claimed, live.or(published)) {
            (true, Some(done)) => {
                let done = done.max(published.unwrap_or(0));
                p.in_flight_files += 1;
                p.in_flight_done += done;
                p.in_flight_bytes += size.unwrap_or(done).max(done);
                if size.is_none() {
                    p.unknown_size += 1;
                }
            }
            _ => {
                p.queued_files += 1;
                match size {
                    Some(n) => p.queued_bytes += n,
                    None => p.unknown_size += 1,
                }
            }
        }
    }
    drop(rows);
    drop(stmt);
    let active = up.queued_files + up.in_flight_files + down.queued_files + down.in_flight_files + deletes > 0;
    let c = counters(conn)?;
    // After the queue was seen empty, new work starts from zero done (the next result resets
    // the stored counts); while it stays empty, the last batch stays complete.
    let fresh = c.as_ref().map(|c| c.drained && active).unwrap_or(true);
    let done = |files: fn(&Counters) -> i64| if fresh { 0 } else { c.as_ref().map(files).unwrap_or(0) };
    let (up_done_files, up_done_bytes) = (done(|c| c.upload_files), done(|c| c.upload_bytes));
    let (down_done_files, down_done_bytes) = (done(|c| c.download_files), done(|c| c.download_bytes));
    let moved_now = Moved {
        at: now,
        upload_bytes: up_done_bytes + up.in_flight_done,
        download_bytes: down_done_bytes + down.in_flight_done,
        files: up_done_files + down_done_files,
    };
    let samples: &[Moved] = if fresh { &[] } else { c.as_ref().map(|c| &c.samples[..]).unwrap_or(&[]) };
    // Nothing queued and nothing moved within the window: no rate (null), not 0.0.
    let rate = rate(samples, moved_now).filter(|r| active || r.upload + r.download + r.files > 0.0);
    let in_flight = up.in_flight_files + down.in_flight_files;
    // The files rate counts both directions: a direction's estimate by files uses it when
    // the other direction has nothing left (then it is that direction's), like the total's.
    let files_rate = rate.map(|r| r.files);
    let direction = |p: &Pending, other: &Pending, done_files: i64, done_bytes: i64, rate: Option<f64>| {
        let remaining = p.queued_bytes + (p.in_flight_bytes - p.in_flight_done);
        let alone = other.queued_files + other.in_flight_files == 0;
        let eta = eta(remaining, p.queued_files + p.in_flight_files, p.unknown_size, rate, files_rate.filter(|_| alone));
        json!({
            "files_queued": p.queued_files,
            "bytes_queued": p.queued_bytes,
            "files_size_unknown": p.unknown_size,
            "files_in_flight": p.in_flight_files,
            "bytes_in_flight": p.in_flight_bytes,
            "bytes_in_flight_done": p.in_flight_done,
            "files_done": done_files,
            "bytes_done": done_bytes,
            "files_total": done_files + p.in_flight_files + p.queued_files,
            "bytes_total": done_bytes + p.in_flight_bytes + p.queued_bytes,
            "bytes_moved": done_bytes + p.in_flight_done,
            "rate": rate.map(round1),
            "eta_seconds": eta.map(round1),
        })
    };
    let (up_rate, down_rate) = (rate.map(|r| r.upload), rate.map(|r| r.download));
    let upload = direction(&up, &down, up_done_files, up_done_bytes, up_rate);
    let download = direction(&down, &up, down_done_files, down_done_bytes, down_rate);
    let total_rate = up_rate.zip(down_rate).map(|(a, b)| a + b);
    let remaining_bytes = up.queued_bytes + up.in_flight_bytes - up.in_flight_done + down.queued_bytes + down.in_flight_bytes
        - down.in_flight_done;
    let remaining_files = up.queued_files + up.in_flight_files + down.queued_files + down.in_flight_files;
    let eta = eta(remaining_bytes, remaining_files, up.unknown_size + down.unknown_size, total_rate, files_rate);
    let failed: Vec<String> = conn
        .prepare("SELECT name FROM main._attachments_watch WHERE state = 'failed' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .unwrap_or_default();
    let last_error = c.as_ref().and_then(|c| c.last_error.clone()).map(|(id, error, at)| {
        json!({"id": id, "class": ErrorClass::of_message(&error).map(|c| c.as_str()), "error": error, "at": at})
    });
    let pass_error = conn
        .query_row("SELECT pass_error, pass_error_at FROM main._attachments_progress WHERE id = 1 AND pass_error IS NOT NULL", [], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
        })
        .optional()
        .unwrap_or(None)
        .map(|(error, at)| json!({"class": ErrorClass::of_message(&error).map(|c| c.as_str()), "error": error, "at": at}));
    Ok(json!({
        "upload": upload,
        "download": download,
        "deletes_queued": deletes,
        "files_failing": failing,
        "rate": total_rate.map(round1),
        "eta_seconds": eta.map(round1),
        // Transfers in flight now (over every process). At merge with adaptive concurrency,
        // this process's current level can sit beside it.
        "concurrency": in_flight,
        // The adaptive number of transfers a worker keeps in flight, as the last pass of any
        // process left it (null before one ran), within 1..max_concurrency: a pass that moved
        // nothing since max_concurrency was lowered has not stored a new level yet.
        "concurrency_level": conn
            .query_row(
                "SELECT max(1, min(concurrency, coalesce(json_extract(config, '$.max_concurrency'), 32)))
                 FROM main._attachments_config WHERE id = 1 AND typeof(concurrency) = 'integer'",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
            .unwrap_or(None),
        "paused": paused(conn),
        "active": active,
        "since": if fresh { None } else { c.as_ref().and_then(|_| since(conn)) },
        "failed_watches": {"count": failed.len(), "names": failed},
        "last_error": last_error,
        "pass_error": pass_error,
    }))
}

/// Whether transfers are paused (`attachment_pause()`), where this build has the flag.
fn paused(conn: &Connection) -> bool {
    let has_flag: bool = conn
        .query_row("SELECT EXISTS (SELECT 1 FROM pragma_table_info('_attachments_config') WHERE name = 'paused')", [], |r| r.get(0))
        .unwrap_or(false);
    has_flag
        && conn
            .query_row("SELECT paused FROM main._attachments_config WHERE id = 1", [], |r| r.get::<_, Option<bool>>(0))
            .ok()
            .flatten()
            .unwrap_or(false)
}

fn since(conn: &Connection) -> Option<i64> {
    conn.query_row("SELECT since FROM main._attachments_progress WHERE id = 1", [], |r| r.get(0)).ok().flatten()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Bytes and files per second, by direction.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rate {
    upload: f64,
    download: f64,
    files: f64,
}

/// The rate between the oldest sample of the last few seconds ([`WINDOW_MS`], at least half
/// a second old) and `now`; None when no sample is recent enough to tell (samples are taken
/// while transfers run, so a queue that went quiet has none).
fn rate(samples: &[Moved], now: Moved) -> Option<Rate> {
    let base = samples.iter().find(|s| now.at - s.at >= 500 && now.at - s.at <= WINDOW_MS)?;
    let secs = (now.at - base.at) as f64 / 1000.0;
    // Bytes of a transfer that failed leave the in-flight sum: never a negative rate.
    let per_sec = |a: i64, b: i64| ((a - b).max(0) as f64) / secs;
    Some(Rate {
        upload: per_sec(now.upload_bytes, base.upload_bytes),
        download: per_sec(now.download_bytes, base.download_bytes),
        files: per_sec(now.files, base.files),
    })
}

/// Seconds left: by bytes when every remaining size is known, else by files; 0 when nothing
/// remains; None while the rate is unknown or zero.
fn eta(bytes: i64, files: i64, unknown: i64, bytes_rate: Option<f64>, files_rate: Option<f64>) -> Option<f64> {
    if files == 0 {
        return Some(0.0);
    }
    match (unknown, bytes_rate, files_rate) {
        (0, Some(r), _) if r > 0.0 => Some(bytes.max(0) as f64 / r),
        (_, _, Some(f)) if f > 0.0 => Some(files as f64 / f),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(at: i64, up: i64, down: i64, files: i64) -> Moved {
        Moved { at, upload_bytes: up, download_bytes: down, files }
    }

    #[test]
    fn rate_uses_a_sample_of_the_last_few_seconds() {
        let samples = [m(1_000, 0, 0, 0), m(6_000, 100, 0, 1), m(9_000, 400, 1000, 2), m(10_800, 500, 1500, 3)];
        // At 11,000: the oldest sample within 5 s is the one at 6,000.
        let r = rate(&samples, m(11_000, 600, 2000, 4)).unwrap();
        assert_eq!(r, Rate { upload: 100.0, download: 400.0, files: 0.6 });
        // Nothing usable: all too fresh or too old.
        assert_eq!(rate(&[m(10_900, 0, 0, 0)], m(11_000, 1, 1, 1)), None);
        assert_eq!(rate(&[m(1_000, 0, 0, 0)], m(100_000, 1, 1, 1)), None);
        // A sample older than the window says nothing about the last few seconds: the rate
        // of a queue that went quiet is unknown, not a slowly decaying average.
        assert_eq!(rate(&[m(1_000, 0, 0, 0)], m(11_000, 1000, 0, 0)), None);
        assert_eq!(rate(&[m(1_000, 0, 0, 0)], m(6_001, 1000, 0, 0)), None);
        // Bytes that went away (a failed transfer) never make it negative.
        assert_eq!(rate(&[m(0, 500, 0, 0)], m(1_000, 100, 0, 0)).unwrap().upload, 0.0);
    }

    #[test]
    fn eta_by_bytes_when_sizes_are_known_else_by_files() {
        assert_eq!(eta(1000, 2, 0, Some(100.0), Some(1.0)), Some(10.0));
        assert_eq!(eta(1000, 2, 1, Some(100.0), Some(0.5)), Some(4.0));
        assert_eq!(eta(0, 0, 0, None, None), Some(0.0));
        assert_eq!(eta(1000, 2, 0, Some(0.0), None), None);
        assert_eq!(eta(1000, 2, 0, None, None), None);
    }
}
