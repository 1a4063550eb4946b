//! One error type for the whole extension. `Display` is the text SQL shows,
//! after the name of the function that failed.

use std::os::raw::c_int;
use std::{fmt, io, path::PathBuf};

use rusqlite::ffi;

use crate::remote::RemoteError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Wrong number or type of arguments to a SQL function.
    Argument(String),
    /// A config key that is missing, unknown, or has a bad value.
    Config { key: String, why: String },
    /// A function that needs the stored config ran before `attachment_init`.
    NotInitialized,
    /// An id or extension that cannot name a file inside `local_dir`.
    UnsafeName(String),
    /// A call made where it cannot work, e.g. `attachment_sync()` inside a transaction.
    Misuse(String),
    /// An error from SQLite; its result code reaches the caller unchanged.
    Sqlite(rusqlite::Error),
    /// A local file operation failed.
    Io { path: PathBuf, err: io::Error },
    /// A transfer to or from remote storage failed.
    Remote(RemoteError),
    /// What was asked for cannot be had now: an id nothing knows, a fetch that timed out.
    Unavailable(String),
    /// The database was written by a release whose layout this build does not know.
    NewerSchema { found: i64, known: i64 },
}

impl Error {
    /// The database is busy or locked: worth trying again later, nobody's fault.
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
    }

    pub fn config(key: &str, why: impl Into<String>) -> Error {
        Error::Config { key: key.to_string(), why: why.into() }
    }

    pub fn io(path: impl Into<PathBuf>, err: io::Error) -> Error {
        Error::Io { path: path.into(), err }
    }

    /// The SQLite result code a host sees for this error (contract, "Errors and
    /// retries"): SQLite's own code unchanged (SQLITE_BUSY stays retryable), calls
    /// that can never work SQLITE_MISUSE, local file failures SQLITE_IOERR.
    pub fn sqlite_code(&self) -> c_int {
        match self {
            Error::Argument(_) | Error::Config { .. } | Error::NotInitialized | Error::UnsafeName(_) | Error::Misuse(_) => {
                ffi::SQLITE_MISUSE
            }
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => e.extended_code,
            Error::Sqlite(_) | Error::Remote(_) | Error::Unavailable(_) | Error::NewerSchema { .. } => ffi::SQLITE_ERROR,
            Error::Io { .. } => ffi::SQLITE_IOERR,
        }
    }

    /// The message a SQL function reports, prefixed with its name.
    /// Messages quote the bad value, which may be megabytes long: the middle is cut.
    pub fn sql_message(&self, function: &str) -> String {
        let message = match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(code, msg)) => {
                let msg = msg.clone().unwrap_or_else(|| code.to_string());
                format!("{function}: {msg}")
            }
            other => format!("{function}: {other}"),
        };
        cut_middle(message, 1000)
    }

    /// Converts to a rusqlite error (for the virtual table), prefixed with the function name.
    pub fn into_sql(self, function: &str) -> rusqlite::Error {
        let message = self.sql_message(function);
        rusqlite::Error::SqliteFailure(ffi::Error::new(self.sqlite_code()), Some(message))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Argument(why) => f.write_str(why),
            Error::Config { key, why } => write!(f, "config key '{key}': {why}"),
            Error::NotInitialized => {
                f.write_str("not initialized: call attachment_init(config_json) on this database first")
            }
            Error::UnsafeName(why) => f.write_str(why),
            Error::Misuse(why) => f.write_str(why),
            Error::Sqlite(e) => write!(f, "{e}"),
            Error::Io { path, err } => write!(f, "{}: {err}", path.display()),
            Error::Remote(e) => write!(f, "{e}"),
            Error::Unavailable(why) => f.write_str(why),
            Error::NewerSchema { found, known } => write!(
                f,
                "this database was created by a newer sqlite-attachments (schema {found}, this build knows {known}); \
                 load that release or a later one (there is no downgrade)"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::Sqlite(e)
    }
}

impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Error {
        Error::Remote(e)
    }
}

/// `s` itself when at most `max` bytes, else its head and tail around a note of what was cut.
fn cut_middle(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let boundary = |mut i: usize| {
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let head = boundary(max * 2 / 3);
    let tail = boundary(s.len() - max / 4);
    format!("{} ...({} bytes cut)... {}", &s[..head], tail - head, &s[tail..])
}

#[cfg(test)]
mod cut_tests {
    #[test]
    fn long_messages_keep_head_and_tail() {
        let s = format!("f: bad 'é{}' here", "x".repeat(5000));
        let cut = super::cut_middle(s, 1000);
        assert!(cut.len() < 1100 && cut.starts_with("f: bad 'é") && cut.ends_with("' here"), "{cut}");
        assert_eq!(super::cut_middle("short".into(), 1000), "short");
    }
}
