//! Remote storage: where files live besides this device. One trait, one
//! backend per URL scheme; `open` picks it from the config.

mod dir;
mod encrypted;
mod http;
mod limits;
mod retry_after;
mod s3;
mod signed;
pub mod stoppable;
mod transport;

// Entry points for the cargo-fuzz targets in fuzz/ (see crate::fuzzing).
#[doc(hidden)]
pub mod fuzzing;

use std::{fmt, io, io::Read, io::Write, time::Duration};

use crate::config::{Config, Remote as RemoteUrl};
use crate::error::Result;

/// What a backend needs to know about the attachment it moves.
#[derive(Debug, Clone)]
pub struct Object<'a> {
    pub id: &'a str,
    pub filename: &'a str,
    pub media_type: &'a str,
    /// SHA-256 of the content in hex, when known.
    pub sha256: Option<&'a str>,
    /// What an earlier failed upload left to resume (an S3 multipart upload id).
    pub resume: Option<&'a str>,
}

/// What the remote said about a download, checked by the local store after the bytes arrive.
/// `length` is the whole object's, also when only its rest was sent (a resumed download).
#[derive(Debug, Default, Clone)]
pub struct Fetched {
    pub length: Option<u64>,
    pub sha256: Option<String>,
}

/// What identified an object when a download of it began: the next attempt asks for the
/// rest only if the object is still the same (`If-Range`/`If-Match`, and the answer's own
/// validator compared again).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Validator {
    /// A strong ETag, quotes included (weak ones cannot validate a range).
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The whole object's length as first announced (not a validator the server checks:
    /// a resumed answer announcing another total is another object, or a lying server).
    pub length: Option<u64>,
}

impl Validator {
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }

    /// False when this object's length was known and `total` is another one.
    pub fn same_length(&self, total: Option<u64>) -> bool {
        match (self.length, total) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    /// True when `answer` names the same object (every validator both sides have agrees,
    /// and at least one is shared).
    pub fn same_object(&self, answer: &Validator) -> bool {
        let etag = match (&self.etag, &answer.etag) {
            (Some(a), Some(b)) => Some(a == b),
            _ => None,
        };
        let modified = match (&self.last_modified, &answer.last_modified) {
            (Some(a), Some(b)) => Some(a == b),
            _ => None,
        };
        match (etag, modified) {
            (Some(false), _) | (_, Some(false)) => false,
            (None, None) => false,
            _ => true,
        }
    }
}

/// Bytes a download already holds from an interrupted attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub offset: u64,
    pub validator: Validator,
}

/// Where a download's bytes go. A backend that can resume asks `held()` for what an
/// earlier attempt kept, and calls `begin` once before the body's first byte: with
/// `offset` 0 when the whole object follows (whatever is held is dropped: the server
/// ignored the range, or the object changed), or with the held offset when only the rest
/// follows. A sink that cannot resume holds nothing, and `begin(0, ..)` is all it sees.
pub trait Sink: Write {
    fn held(&self) -> Option<Held> {
        None
    }

    fn begin(&mut self, offset: u64, validator: &Validator) -> io::Result<()> {
        let _ = (offset, validator);
        Ok(())
    }
}

impl Sink for Vec<u8> {
    fn begin(&mut self, offset: u64, _validator: &Validator) -> io::Result<()> {
        self.truncate(offset as usize);
        Ok(())
    }
}

/// Reports bytes moved so far (for `bytes_done`); an error cancels the transfer
/// (the worker is stopping).
pub type Progress<'a> = &'a (dyn Fn(u64) -> io::Result<()> + Sync);

/// The bytes an upload sends: `len()` bytes that can be read from any offset, so the
/// parts of one upload can be read at once (the local file, or its encrypted form).
pub trait Source: Send + Sync {
    fn len(&self) -> u64;
    /// Reads bytes `start..end` in order.
    fn reader(&self, start: u64, end: u64) -> Box<dyn Read + Send + '_>;
}

pub trait RemoteStorage: Send + Sync {
    /// Stores `source` as `obj.filename`, streaming it.
    fn upload(&self, obj: &Object, source: &dyn Source, progress: Progress) -> Result<(), RemoteError>;
    /// Streams `obj.filename` into `out`: only the rest, when `out` holds the start of the
    /// same object and the remote can send a range (see [`Sink`]). `progress` counts the
    /// bytes of this answer.
    fn download(&self, obj: &Object, out: &mut dyn Sink, progress: Progress) -> Result<Fetched, RemoteError>;
    /// Removes `obj.filename`; an object that is already gone counts as done.
    fn delete(&self, obj: &Object) -> Result<(), RemoteError>;
    /// Drops what `obj.resume` holds of an earlier attempt that will not be resumed
    /// (S3 aborts the multipart upload); best effort.
    fn abandon(&self, _obj: &Object) {}
}

/// The backend for a config's `remote`.
pub fn open(config: &Config) -> Result<Box<dyn RemoteStorage>> {
    let plain = open_plain(config)?;
    Ok(match &config.encryption {
        Some(enc) => Box::new(encrypted::EncryptedRemote::new(plain, enc.clone())),
        None => plain,
    })
}

fn open_plain(config: &Config) -> Result<Box<dyn RemoteStorage>> {
    match &config.remote {
        RemoteUrl::Dir(path) => Ok(Box::new(dir::DirRemote::new(path.clone()))),
        RemoteUrl::Http(base) => Ok(Box::new(http::HttpRemote::new(base.clone()))),
        RemoteUrl::Signed(base) => Ok(Box::new(signed::SignedRemote::new(base.clone()))),
        RemoteUrl::S3 { bucket, prefix } => Ok(Box::new(s3::S3Remote::new(
            bucket,
            prefix,
            config.s3_endpoint.as_deref(),
            &config.s3_region,
        )?)),
    }
}

/// Prepares the remote at `attachment_init`: a `file://` folder is created when its parent
/// exists (never its parents: see [`dir::create_root_if_parent_exists`]).
pub fn prepare(config: &Config) {
    if let RemoteUrl::Dir(path) = &config.remote {
        dir::create_root_if_parent_exists(path);
    }
}

/// How the retry policy treats a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Network errors, timeouts, 408, 429, 5xx: retry soon.
    Transient,
    /// 401/403: wrong credentials or signing backend; never means "gone".
    Auth,
    /// 404/410: the object does not exist.
    NotFound,
    /// Other 4xx, redirects of writes, a wrong endpoint: retried with the longest backoff.
    Permanent,
}

/// What went wrong, in the contract's words: shown in SQL (`error_class`, and as the
/// prefix of `last_error`) so an app can tell the user what to fix. The retry policy
/// reads [`ErrorKind`], not this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 401/403, missing credentials.
    Auth,
    /// 404/410.
    NotFound,
    /// Unreachable, reset, timed out, too slow.
    Network,
    /// The server answered with an error (5xx, other 4xx) or a malformed answer.
    Server,
    /// The local file or folder.
    Local,
    /// The endpoint is wrong or behind a login (redirects of writes), a bad URL.
    Config,
    /// A body that does not match its length or checksum, or is not the file's bytes.
    Integrity,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 7] = [
        ErrorClass::Auth,
        ErrorClass::NotFound,
        ErrorClass::Network,
        ErrorClass::Server,
        ErrorClass::Local,
        ErrorClass::Config,
        ErrorClass::Integrity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Auth => "auth",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Network => "network",
            ErrorClass::Server => "server",
            ErrorClass::Local => "local",
            ErrorClass::Config => "config",
            ErrorClass::Integrity => "integrity",
        }
    }

    /// The class a `last_error` text starts with (`"network: ..."`), if any.
    pub fn of_message(message: &str) -> Option<ErrorClass> {
        let (prefix, _) = message.split_once(": ")?;
        ErrorClass::ALL.into_iter().find(|c| c.as_str() == prefix)
    }

    /// The usual class of a retry kind, for errors that do not say more.
    fn of_kind(kind: ErrorKind) -> ErrorClass {
        match kind {
            ErrorKind::Transient => ErrorClass::Network,
            ErrorKind::Auth => ErrorClass::Auth,
            ErrorKind::NotFound => ErrorClass::NotFound,
            ErrorKind::Permanent => ErrorClass::Config,
        }
    }
}

/// How [`RemoteError::busy`] messages start.
const BUSY: &str = "busy: ";
/// How a cut body's error begins (see [`RemoteError::truncated`]).
const TRUNCATED: &str = "incomplete transfer: ";

#[derive(Debug, Clone)]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub class: ErrorClass,
    pub status: Option<u16>,
    /// Short reason; never contains credentials or signed URLs (and is redacted
    /// again when shown, in case a server's words carried one).
    pub message: String,
    pub retry_after: Option<Duration>,
    /// Progress to keep for the next attempt (see [`Object::resume`]).
    pub resume: Option<String>,
}

impl RemoteError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RemoteError {
        RemoteError {
            kind,
            class: ErrorClass::of_kind(kind),
            status: None,
            message: message.into(),
            retry_after: None,
            resume: None,
        }
    }

    /// The same error shown under another class.
    pub fn with_class(mut self, class: ErrorClass) -> RemoteError {
        self.class = class;
        self
    }

    /// A failure of the local file or folder: retried soon.
    pub fn local(message: impl Into<String>) -> RemoteError {
        RemoteError::new(ErrorKind::Transient, message).with_class(ErrorClass::Local)
    }

    /// Bytes that are not the file's (short, long, wrong checksum, re-encoded): retried soon.
    pub fn integrity(message: impl Into<String>) -> RemoteError {
        RemoteError::new(ErrorKind::Transient, message).with_class(ErrorClass::Integrity)
    }

    /// A body cut short: what did arrive is the object's start, and can be resumed.
    pub fn truncated(message: impl Into<String>) -> RemoteError {
        RemoteError::integrity(format!("{TRUNCATED}{}", message.into()))
    }

    /// The local file is held by another transfer of the same file (one a stopped pass left
    /// running): not a failure of this attempt, tried again soon without counting one.
    pub fn busy(message: impl Into<String>) -> RemoteError {
        RemoteError::local(format!("{BUSY}{}", message.into()))
    }

    /// True for [`RemoteError::busy`].
    pub fn is_busy(&self) -> bool {
        self.class == ErrorClass::Local && self.message.starts_with(BUSY)
    }

    /// True for [`RemoteError::truncated`].
    pub fn is_truncation(&self) -> bool {
        self.class == ErrorClass::Integrity && self.message.starts_with(TRUNCATED)
    }

    /// An endpoint that is wrong or behind a login: retried with the longest backoff.
    pub fn config(message: impl Into<String>) -> RemoteError {
        RemoteError::new(ErrorKind::Permanent, message).with_class(ErrorClass::Config)
    }

    /// A local or network I/O error, classified by its kind.
    pub fn from_io(context: &str, e: &io::Error) -> RemoteError {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::Auth,
            _ => ErrorKind::Transient,
        };
        RemoteError::new(kind, format!("{context}: {e}"))
    }
}

/// `class: HTTP status: message`, credentials redacted: the text `last_error` stores.
impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = crate::redact::redact(&self.message);
        match self.status {
            Some(s) => write!(f, "{}: HTTP {s}: {message}", self.class.as_str()),
            None => write!(f, "{}: {message}", self.class.as_str()),
        }
    }
}

/// Counts bytes read and reports them, for upload progress.
pub struct ProgressReader<'a, R> {
    inner: R,
    done: u64,
    progress: Progress<'a>,
}

impl<'a, R> ProgressReader<'a, R> {
    pub fn new(inner: R, progress: Progress<'a>) -> Self {
        ProgressReader { inner, done: 0, progress }
    }
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.progress)(self.done)?;
        Ok(n)
    }
}

const COPY_STEP: usize = 256 * 1024;

thread_local! {
    /// Each transfer thread's copy buffer, kept between transfers: zeroing a fresh 256 KiB
    /// for every small file cost more than the file (`bench/PROFILES.md`).
    static COPY_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Copies `from` into `to` in 256 KiB steps, reporting progress; never buffers the whole stream.
pub fn copy_with_progress(from: &mut dyn Read, to: &mut dyn Write, progress: Progress) -> io::Result<u64> {
    // Taken out while in use, so a copy nested inside `from` or `to` gets a buffer of its own.
    let mut buf = COPY_BUF.take();
    buf.resize(COPY_STEP, 0);
    let copied = copy_through(&mut ProgressReader::new(from, progress), to, &mut buf);
    COPY_BUF.set(buf);
    copied
}

fn copy_through(reader: &mut dyn Read, to: &mut dyn Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_leads_the_message_and_is_read_back() {
        let mut e = RemoteError::config("upload failed: redirected");
        e.status = Some(302);
        assert_eq!(e.to_string(), "config: HTTP 302: upload failed: redirected");
        assert_eq!(ErrorClass::of_message(&e.to_string()), Some(ErrorClass::Config));
        assert_eq!(e.kind, ErrorKind::Permanent, "config waits the longest backoff");
        assert_eq!(RemoteError::integrity("short").kind, ErrorKind::Transient);
        assert_eq!(RemoteError::new(ErrorKind::Auth, "x").class, ErrorClass::Auth);
        assert_eq!(ErrorClass::of_message("local file missing: nothing to upload"), None);
        for c in ErrorClass::ALL {
            assert_eq!(ErrorClass::of_message(&format!("{}: x", c.as_str())), Some(c));
        }
    }

    #[test]
    fn shown_errors_are_redacted() {
        let e = RemoteError::new(ErrorKind::Permanent, "bad request (Authorization: Bearer abc123)");
        assert_eq!(e.to_string(), "config: bad request (Authorization: REDACTED");
    }
}
