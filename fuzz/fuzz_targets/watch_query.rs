//! A watch query is untrusted (any writer of the file can change the stored one):
//! it is analysed by preparing it under an authorizer written in unsafe Rust. Any
//! SQL text at all: no panic, no memory error (AddressSanitizer), reads reported
//! only for tables of `main`, and the authorizer gone afterwards.
//!
//! This target links the system's libsqlite3 (the extension itself never does) and
//! loads the extension into it as an auto-extension, the way a host would.
#![no_main]

use std::ffi::{c_char, c_int, CString};
use std::sync::OnceLock;

use attachments::fuzzing::watch_analyze;
use libfuzzer_sys::fuzz_target;

type Db = attachments::fuzzing::Sqlite3;

#[link(name = "sqlite3")]
extern "C" {
    fn sqlite3_auto_extension(entry: Option<unsafe extern "C" fn()>) -> c_int;
    fn sqlite3_open(path: *const c_char, db: *mut *mut Db) -> c_int;
    fn sqlite3_exec(db: *mut Db, sql: *const c_char, cb: *const (), arg: *const (), err: *mut *mut c_char) -> c_int;
    fn sqlite3_prepare_v2(db: *mut Db, sql: *const c_char, n: c_int, stmt: *mut *mut (), tail: *mut *const c_char) -> c_int;
    fn sqlite3_finalize(stmt: *mut ()) -> c_int;
}

/// One database for the whole run, with tables in main and in an attached schema.
struct Shared(*mut Db);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

fn db() -> *mut Db {
    static DB: OnceLock<Shared> = OnceLock::new();
    DB.get_or_init(|| unsafe {
        let entry: unsafe extern "C" fn() = std::mem::transmute(attachments::sqlite3_attachments_init as *const ());
        assert_eq!(sqlite3_auto_extension(Some(entry)), 0);
        let mut db = std::ptr::null_mut();
        let path = CString::new(":memory:").unwrap();
        assert_eq!(sqlite3_open(path.as_ptr(), &mut db), 0, "open");
        let schema = CString::new(
            "CREATE TABLE t(id TEXT PRIMARY KEY, x, file_extension);
             CREATE TABLE u(a, b);
             CREATE VIEW v AS SELECT id, x FROM t;
             ATTACH ':memory:' AS aux;
             CREATE TABLE aux.s(id);",
        )
        .unwrap();
        assert_eq!(sqlite3_exec(db, schema.as_ptr(), std::ptr::null(), std::ptr::null(), std::ptr::null_mut()), 0, "schema");
        // The harness reaches the real analysis: a plain query passes, the rest is refused.
        let (reads, _) = watch_analyze(db, "SELECT id FROM t").expect("a plain watch query");
        assert_eq!(reads, ["t"]);
        assert!(watch_analyze(db, "SELECT id FROM aux.s").is_err());
        assert!(watch_analyze(db, "SELECT load_extension('x') AS id").unwrap_err().contains("may not call"));
        Shared(db)
    })
    .0
}

/// Whether `sql` prepares on `db` (nothing is run).
fn prepares(db: *mut Db, sql: &str) -> bool {
    let sql = CString::new(sql).unwrap();
    let mut stmt = std::ptr::null_mut();
    let rc = unsafe { sqlite3_prepare_v2(db, sql.as_ptr(), -1, &mut stmt, std::ptr::null_mut()) };
    unsafe { sqlite3_finalize(stmt) };
    rc == 0
}

fuzz_target!(|query: &str| {
    let db = db();
    match unsafe { watch_analyze(db, query) } {
        Ok((reads, select_sql)) => {
            for table in &reads {
                let t = table.to_ascii_lowercase();
                assert!(["t", "u", "v"].contains(&t.as_str()) || t.starts_with("sqlite_"), "{query:?} reads {table:?}, not a table of main");
            }
            assert!(select_sql.contains(query.trim().trim_end_matches(';').trim()));
        }
        Err(e) => assert!(!e.is_empty()),
    }
    // The guard is gone: what it denies prepares again.
    assert!(prepares(db, "SELECT load_extension('x')"), "the watch guard was left installed");
});
