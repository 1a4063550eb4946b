//! Local files under `local_dir`. Every file appears at its final name only
//! complete and durable: written to a temp name, fsynced, renamed, and the
//! directory fsynced. Names go through `names`, so no path leaves the directory.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, Write},
    os::fd::AsRawFd,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::SystemTime,
};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::names;
use crate::remote::{ErrorClass, ErrorKind, Fetched, Held as RemoteHeld, RemoteError, Sink, Validator};

/// Temp files are `.{filename}.tmp-{random}`; no attachment file starts with a dot.
const TEMP_MARK: &str = ".tmp-";
/// An interrupted download keeps its bytes in `.{filename}.partial`, and what identified
/// the object (ETag, Last-Modified) in `.{filename}.partial-meta`.
const PARTIAL_MARK: &str = ".partial";
const PARTIAL_META_MARK: &str = ".partial-meta";
/// A download's validator file is written only once its partial file holds this many bytes,
/// or when the download is cut short and its partial file kept. Writing one costs a create,
/// a write, an fsync, a rename and, once published, an unlink: most of a small file's cost
/// (about 1.3 s of unlinks alone per 2,000 files). A crash before this point loses at most
/// this much, fetched again from zero.
const PARTIAL_META_THRESHOLD: u64 = 1 << 20;

pub struct LocalStore {
    dir: PathBuf,
}

/// Size and SHA-256 (hex) of a file just written.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
}

/// A complete, checked download under its partial name; see [`LocalStore::publish_refs`].
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    /// Keeps verify off the file until it is published (held, never read).
    #[allow(dead_code)]
    lock: Option<Held>,
    /// A resumable download's validator file, removed once the file is published.
    meta: Option<PathBuf>,
}

impl Staged {
    /// Removes the temp file of a download that will not be published.
    pub fn discard(&self) {
        let _ = fs::remove_file(&self.tmp);
        if let Some(meta) = &self.meta {
            let _ = fs::remove_file(meta);
        }
    }
}

/// A file found in `local_dir`.
pub struct Entry {
    pub name: String,
    /// A temp or partial file: never an attachment, never counted.
    pub is_temp: bool,
    /// For a partial download's files: the attachment file name they belong to.
    pub partial_of: Option<String>,
    pub modified: SystemTime,
}

/// A shared lock on a file just written, held by a save until its INSERT has returned:
/// verify never removes a locked file (see `verify.rs`). Dropping it releases the lock.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] File);

/// A local file opened for upload, with the SHA-256 recorded at save to check it against.
pub struct Checked {
    pub file: File,
    pub len: u64,
    /// Still open after `file` is handed to the remote, to see whether it changed meanwhile.
    watch: File,
    stamp: Stamp,
    /// The SHA-256 recorded at save, checked as the file is sent (`upload_source`); None
    /// for a row of an old build that recorded none.
    expected: Option<String>,
}

/// What changes whenever a file's content does: ctime cannot be set back by its owner.
#[derive(Debug, PartialEq)]
struct Stamp(u64, u64, i64, i64, i64, i64);

fn stamp(meta: &fs::Metadata) -> Stamp {
    Stamp(meta.dev(), meta.ino(), meta.size() as i64, meta.mtime_nsec() + meta.mtime() * 1_000_000_000, meta.ctime(), meta.ctime_nsec())
}

/// Tells whether a file changed after it was opened for upload.
pub struct ChangeWatch {
    file: File,
    stamp: Stamp,
}

impl ChangeWatch {
    pub fn unchanged(&self) -> io::Result<bool> {
        Ok(stamp(&self.file.metadata()?) == self.stamp)
    }
}

impl Checked {
    /// The file to send, its length, the watch to ask once it is sent, and the SHA-256 to
    /// check it against as it is sent.
    pub fn split(self) -> (File, u64, ChangeWatch, Option<String>) {
        (self.file, self.len, ChangeWatch { file: self.watch, stamp: self.stamp }, self.expected)
    }
}

/// How an upload that cannot use its local file fails: `integrity` when the file is not
/// what the save wrote (other bytes, a symlink, not a regular file), retried only rarely
/// since it needs a person; `local` for other local errors (I/O, a vanished `local_dir`).
pub fn upload_refusal(e: Error) -> RemoteError {
    match e {
        // Not the bytes that were saved: retried rarely (someone has to look), never SYNCED.
        Error::Argument(why) => RemoteError::new(ErrorKind::Permanent, why).with_class(ErrorClass::Integrity),
        other => RemoteError::local(other.to_string()),
    }
}

/// Opens without following a symlink and without blocking on a FIFO.
fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)
}

/// `flock` without waiting; false when another holder has a conflicting lock.
fn try_flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    // Safety: a valid open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Checks that `dir` is an existing directory, with errors that name `local_dir`.
fn check_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::config("local_dir", format!("'{}' exists and is not a directory", dir.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::config(
            "local_dir",
            format!("'{}' is missing (moved, deleted or not mounted); nothing was archived or re-created: bring it back, or call attachment_init to create an empty one", dir.display()),
        )),
        Err(e) => Err(Error::config("local_dir", format!("'{}' cannot be used: {e}", dir.display()))),
    }
}

impl LocalStore {
    /// Opens an existing `local_dir`. A missing folder is an error (an unmounted card, a moved
    /// folder): re-creating it here would make every file look lost. Only `attachment_init` creates it.
    pub fn open(dir: PathBuf) -> Result<LocalStore> {
        check_dir(&dir)?;
        Ok(LocalStore { dir })
    }

    /// Opens `dir`, creating it if missing (for `attachment_init`).
    pub fn create(dir: PathBuf) -> Result<LocalStore> {
        if let Ok(m) = fs::symlink_metadata(&dir) {
            if !m.is_dir() && !fs::metadata(&dir).map(|m| m.is_dir()).unwrap_or(false) {
                return Err(Error::config("local_dir", format!("'{}' exists and is not a directory", dir.display())));
            }
        }
        fs::create_dir_all(&dir).map_err(|e| Error::config("local_dir", format!("cannot create '{}': {e}", dir.display())))?;
        LocalStore::open(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Turns "not found" into None while the folder itself is there; any other error, or a
    /// vanished folder, stays an error (it does not mean the file is gone).
    fn not_found<T>(&self, path: PathBuf, e: io::Error) -> Result<Option<T>> {
        if e.kind() == io::ErrorKind::NotFound {
            check_dir(&self.dir)?;
            Ok(None)
        } else {
            Err(Error::io(path, e))
        }
    }

    /// Opens `filename` for reading: never through a symlink, never a FIFO or device.
    /// None when there is no such file (and the folder is there).
    pub fn open_file(&self, filename: &str) -> Result<Option<(File, u64)>> {
        let path = self.path(filename)?;
        let file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(Error::Argument(format!("local file {} is a symlink; it is not read", path.display())))
            }
            Err(e) => return self.not_found(path, e),
        };
        let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
        if !meta.is_file() {
            return Err(Error::Argument(format!("local file {} is not a regular file", path.display())));
        }
        Ok(Some((file, meta.len())))
    }

    /// Opens `filename` for upload (never through a symlink), handing it over with the
    /// `sha256` recorded at save, which `upload_source` checks as the file is sent. None when
    /// the file is gone (and the folder is there).
    pub fn open_checked(&self, filename: &str, sha256: Option<&str>) -> Result<Option<Checked>> {
        let Some((file, _)) = self.open_file(filename)? else { return Ok(None) };
        let path = self.path(filename)?;
        let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
        let watch = file.try_clone().map_err(|e| Error::io(&path, e))?;
        Ok(Some(Checked { file, len: meta.len(), watch, stamp: stamp(&meta), expected: sha256.map(str::to_string) }))
    }

    /// The path of `filename` inside the directory; the name is checked first.
    pub fn path(&self, filename: &str) -> Result<PathBuf> {
        Ok(self.dir.join(names::check_filename(filename)?))
    }

    /// Writes `filename` atomically with what `fill` writes, hashing as it goes.
    /// On any failure the temp file is removed and the final name is untouched.
    /// `fill` returns what the source claims (length, SHA-256); a mismatch fails the write,
    /// so a truncated or corrupt download never reaches its final name.
    pub fn write_with(&self, filename: &str, fill: impl FnOnce(&mut dyn Write) -> Result<Fetched>) -> Result<(Written, Held)> {
        let (staged, file, written) = self.write_temp(filename, fill)?;
        let result = (|| {
            file.sync_all().map_err(|e| Error::io(&staged.tmp, e))?;
            fs::rename(&staged.tmp, &staged.dest).map_err(|e| Error::io(&staged.dest, e))?;
            self.sync()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&staged.tmp);
        }
        result.map(|()| (written, Held(file)))
    }

    /// Makes staged files durable, then gives them their final names, then makes the
    /// renames durable: data first, names second, so a final name never holds an
    /// incomplete file. On Linux one `syncfs` covers the batch instead of an fsync per file.
    /// On failure every staged file is removed.
    pub fn publish_refs(&self, staged: &[&Staged]) -> Result<()> {
        let result = (|| {
            self.flush_data(staged)?;
            for s in staged {
                fs::rename(&s.tmp, &s.dest).map_err(|e| Error::io(&s.dest, e))?;
            }
            self.sync()
        })();
        if result.is_err() {
            for s in staged {
                s.discard();
            }
        } else {
            // A validator left by a crash here is removed by verify (its row is not a download any more).
            for meta in staged.iter().filter_map(|s| s.meta.as_ref()) {
                let _ = fs::remove_file(meta);
            }
        }
        result
    }

    /// Like [`LocalStore::stage`], for a download that can resume: the bytes go to
    /// `.{filename}.partial`, which an earlier interrupted attempt may have left with the
    /// object's start (and its validator beside it, see [`Sink`]). That prefix is hashed
    /// again from disk, the rest is appended, and the whole file's length and SHA-256 are
    /// checked as for any download. A transient failure (the network, a stop, a pause, a
    /// full disk) keeps the partial file, flushed to disk, for the next attempt; anything
    /// else (bytes that do not check out, an object gone) removes it.
    pub fn stage_resumable(&self, filename: &str, fill: impl FnOnce(&mut dyn Sink) -> Result<Fetched>) -> Result<(Staged, Written)> {
        let dest = self.path(filename)?;
        let path = self.dir.join(format!(".{filename}{PARTIAL_MARK}"));
        let meta = self.dir.join(format!(".{filename}{PARTIAL_META_MARK}"));
        // The partial file's names are ours: anything else found there (a symlink, a
        // folder, a FIFO) is cleared away first, or every attempt would fail on it.
        clear_planted(&path)?;
        let meta_on_disk = clear_planted(&meta)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let opened = file.metadata().map_err(|e| Error::io(&path, e))?;
        if !opened.is_file() {
            return Err(Error::Argument(format!("{} is not a regular file", path.display())));
        }
        if opened.nlink() != 1 {
            // Linked between the check above and the open: never written through; the next
            // attempt's check unlinks the name.
            return Err(Error::Argument(format!("{} has other hard links", path.display())));
        }
        // One writer at a time; verify never removes a locked partial file. Another holder
        // is a transfer of this file still running (one a stopped pass left behind): busy,
        // not a failure of this attempt.
        if !try_flock(&file, libc::LOCK_EX).map_err(|e| Error::io(&path, e))? {
            return Err(RemoteError::busy(format!("another download of {filename} holds its partial file")).into());
        }
        let lock = file.try_clone().map_err(|e| Error::io(&path, e))?;
        let mut sink = PartialSink { out: None, hasher: Sha256::new(), size: 0, held: None, meta: meta.clone(), meta_on_disk, pending: None, expect_len: None, kicked: 0 };
        if let Some(validator) = meta_on_disk.then(|| read_validator(&meta)).flatten() {
            // The prefix is hashed again from disk: the final check covers every byte.
            let mut hasher = Sha256::new();
            match io::copy(&mut &file, &mut HashInto(&mut hasher)) {
                Ok(n) if n > 0 => {
                    sink.hasher = hasher;
                    sink.size = n;
                    sink.kicked = n;
                    sink.held = Some(RemoteHeld { offset: n, validator });
                }
                _ => {}
            }
        }
        file.seek(io::SeekFrom::End(0)).map_err(|e| Error::io(&path, e))?;
        sink.out = Some(io::BufWriter::with_capacity(64 * 1024, file));
        let result = fill(&mut sink);
        let flushed = sink.out.take().map(|w| w.into_inner().map_err(|e| e.into_error()));
        let fetched = match (result, flushed) {
            (Ok(claimed), Some(Ok(_))) => Ok(claimed),
            (Ok(_), flushed) => {
                let e = flushed.and_then(|f| f.err()).unwrap_or_else(|| io::Error::other("partial file lost"));
                Err(RemoteError::local(format!("writing {}: {e}", path.display())).into())
            }
            (Err(e), _) => Err(e),
        };
        let claimed = match fetched {
            Ok(claimed) => claimed,
            Err(e) => {
                // Cut by the network, a stop or a pause: the next attempt asks for the rest.
                let empty = lock.metadata().map(|m| m.len() == 0).unwrap_or(false);
                let kept = keeps_partial(&e) && !empty && {
                    let _ = lock.sync_data();
                    // A download below the threshold writes its validator only now, after its
                    // bytes; without one the partial file would be of no use.
                    sink.pending.take().is_none_or(|v| write_validator(&meta, &v).is_ok())
                };
                if !kept {
                    let _ = fs::remove_file(&path);
                    let _ = fs::remove_file(&meta);
                }
                return Err(e);
            }
        };
        let sha256 = hex::encode(sink.hasher.clone().finalize());
        let announced = Fetched { length: sink.expect_len, sha256: None };
        let checked = check_claims(&announced, sink.size, &sha256).and_then(|()| check_claims(&claimed, sink.size, &sha256));
        if let Err(e) = checked {
            // The whole file is not the object: start over next time.
            let _ = fs::remove_file(&path);
            let _ = fs::remove_file(&meta);
            return Err(e);
        }
        // No validator file written (a small download): nothing to remove once published.
        let meta = sink.meta_on_disk.then_some(meta);
        Ok((Staged { tmp: path, dest, lock: Some(Held(lock)), meta }, Written { size: sink.size, sha256 }))
    }

    #[cfg(target_os = "linux")]
    fn flush_data(&self, staged: &[&Staged]) -> Result<()> {
        use std::os::fd::AsRawFd;
        if staged.len() < 2 {
            return staged.iter().try_for_each(|s| fsync_path(&s.tmp));
        }
        let dir = File::open(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        // Safety: a valid open descriptor; syncfs only reads it.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            staged.iter().try_for_each(|s| fsync_path(&s.tmp))
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn flush_data(&self, staged: &[&Staged]) -> Result<()> {
        staged.iter().try_for_each(|s| fsync_path(&s.tmp))
    }

    fn write_temp(&self, filename: &str, fill: impl FnOnce(&mut dyn Write) -> Result<Fetched>) -> Result<(Staged, File, Written)> {
        let dest = self.path(filename)?;
        let tmp = self.dir.join(format!(".{filename}{TEMP_MARK}{}", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let file = File::create_new(&tmp).map_err(|e| Error::io(&tmp, e))?;
            // Held until the file is published and recorded: verify skips locked files.
            try_flock(&file, libc::LOCK_SH).map_err(|e| Error::io(&tmp, e))?;
            let lock = file.try_clone().map_err(|e| Error::io(&tmp, e))?;
            let mut out = HashingWriter { inner: io::BufWriter::with_capacity(64 * 1024, file), hasher: Sha256::new(), size: 0 };
            let claimed = fill(&mut out)?;
            let sha256 = hex::encode(out.hasher.clone().finalize());
            check_claims(&claimed, out.size, &sha256)?;
            out.inner.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
            Ok((lock, Written { size: out.size, sha256 }))
        })();
        match result {
            Ok((file, written)) => Ok((Staged { tmp, dest, lock: None, meta: None }, file, written)),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// fsyncs the directory, making earlier renames in it durable.
    pub fn sync(&self) -> Result<()> {
        sync_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }

    /// Writes `filename` from a reader (a blob or another file), streaming. The returned
    /// lock keeps verify from taking the file for an orphan until the caller's row is in.
    pub fn write_from(&self, filename: &str, from: &mut dyn Read) -> Result<(Written, Held)> {
        self.write_with(filename, |out| {
            io::copy(from, out).map_err(|e| Error::io(self.dir.join(filename), e))?;
            Ok(Fetched::default())
        })
    }

    /// The path of `filename` when it is a regular file (a symlink is not).
    /// Only "not found" means absent; other errors, and a vanished folder, are errors.
    pub fn existing(&self, filename: &str) -> Result<Option<PathBuf>> {
        let path = self.path(filename)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(path)),
            Ok(_) => Ok(None),
            Err(e) => self.not_found(path, e),
        }
    }

    /// True when anything at all (a file, a symlink, a folder) is under `filename`.
    pub fn name_taken(&self, filename: &str) -> Result<bool> {
        let path = self.path(filename)?;
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) => self.not_found::<()>(path, e).map(|_| false),
        }
    }

    /// Removes `filename`; true when a file was there.
    pub fn remove(&self, filename: &str) -> Result<bool> {
        let path = self.path(filename)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Removes a file found by [`LocalStore::entries`] unless a writer holds its lock (a save
    /// whose INSERT has not returned, a download not yet published). True when removed.
    pub fn remove_unlocked(&self, entry: &Entry) -> Result<bool> {
        let path = self.dir.join(&entry.name);
        let file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(path, e)),
        };
        if !try_flock(&file, libc::LOCK_EX).map_err(|e| Error::io(&path, e))? {
            return Ok(false);
        }
        // Removed while we hold the lock: a writer cannot take it in between.
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Regular files in the directory (subdirectories and odd names are left alone).
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let item = item.map_err(|e| Error::io(&self.dir, e))?;
            // Not following symlinks: a symlink is never ours.
            let Ok(meta) = item.metadata() else { continue };
            let Ok(name) = item.file_name().into_string() else { continue };
            if !meta.is_file() {
                continue;
            }
            // Only names this extension could have written: `{id}.{ext}` and its own temp names.
            let is_temp = is_temp_name(&name);
            if !is_temp && names::check_filename(&name).is_err() {
                continue;
            }
            let partial_of = partial_of(&name).map(str::to_string);
            out.push(Entry { name, is_temp, partial_of, modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) });
        }
        Ok(out)
    }
}

/// The attachment file name a partial download's file belongs to:
/// `.{filename}.partial` and `.{filename}.partial-meta`.
pub fn partial_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('.')?;
    let base = rest.strip_suffix(PARTIAL_META_MARK).or_else(|| rest.strip_suffix(PARTIAL_MARK))?;
    names::check_filename(base).ok().map(|_| base)
}

/// Whether a failed download's partial file is worth keeping for the next attempt: after
/// a transient failure of the network or server (a timeout, a reset, a stop, a pause) or a
/// body cut short; not after bytes that are not the object's (re-encoded, too long), an
/// object gone, or a local write failure (a full disk is not kept fuller by us).
fn keeps_partial(e: &Error) -> bool {
    match e {
        Error::Remote(r) => {
            r.kind == ErrorKind::Transient
                && r.class != ErrorClass::Local
                && (r.class != ErrorClass::Integrity || r.is_truncation())
        }
        _ => false,
    }
}

/// The validator an interrupted download saw first, if its file is there and readable.
/// Never through a symlink, and at most 64 KiB (it is a few hundred bytes).
fn read_validator(meta: &Path) -> Option<Validator> {
    let file = open_nofollow(meta).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(64 * 1024).read_to_string(&mut text).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let validator = Validator { etag: field("etag"), last_modified: field("last_modified"), length: v.get("length").and_then(|x| x.as_u64()) };
    (!validator.is_empty()).then_some(validator)
}

/// Writes a partial download's validator file: to a temp name created new (never through
/// a symlink), fsynced, then renamed over the old one (a rename replaces a symlink, it
/// does not follow it).
fn write_validator(meta: &Path, validator: &Validator) -> io::Result<()> {
    let text = serde_json::json!({"etag": validator.etag, "last_modified": validator.last_modified, "length": validator.length}).to_string();
    // A temp name of the attachment's own (`.{filename}.tmp-{random}`): verify removes one a crash left.
    let filename = meta.file_name().and_then(|n| n.to_str()).and_then(partial_of).ok_or_else(|| io::Error::other("bad validator file name"))?;
    let tmp = meta.with_file_name(format!(".{filename}{TEMP_MARK}{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, meta)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Clears what is not a regular file from one of a partial download's names (they are
/// ours): a symlink (never its target), a FIFO or socket is removed; a folder is removed
/// when empty, moved aside (`{name}.moved-{random}`) otherwise, never deleted with its content;
/// a regular file with other hard links loses this name only. Tells whether a regular file
/// of our own is there.
fn clear_planted(path: &Path) -> Result<bool> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(path, e)),
    };
    if meta.is_file() && meta.nlink() == 1 {
        return Ok(true);
    }
    if meta.is_file() {
        // A hard link: its content is another name's too (perhaps outside local_dir).
        // Only our name is removed; the download starts again in a file of its own.
        log::warn!("{} has other hard links: unlinked (their content untouched), the download starts from zero", path.display());
        return fs::remove_file(path).map(|()| false).map_err(|e| Error::io(path, e));
    }
    log::warn!("{} is not a regular file: cleared away so the download can proceed", path.display());
    let result = if meta.is_dir() {
        fs::remove_dir(path).or_else(|_| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("partial");
            fs::rename(path, path.with_file_name(format!("{name}.moved-{}", uuid::Uuid::new_v4().simple())))
        })
    } else {
        fs::remove_file(path)
    };
    result.map(|()| false).map_err(|e| Error::io(path, e))
}

/// Writes a partial download's bytes, hashing them (the prefix from disk included).
struct PartialSink {
    out: Option<io::BufWriter<File>>,
    hasher: Sha256,
    size: u64,
    held: Option<RemoteHeld>,
    meta: PathBuf,
    /// Whether a file is at `meta` (found there, or written by this download).
    meta_on_disk: bool,
    /// The validator of a download from zero, not written yet: see [`PARTIAL_META_THRESHOLD`].
    pending: Option<Validator>,
    /// The length a whole answer must have: the one first announced for the held object,
    /// when the server sends that object again from its start (it ignored the range).
    expect_len: Option<u64>,
    /// Where write-back has been started up to (see [`WRITE_BEHIND`]).
    kicked: u64,
}

/// A download asks the kernel to start writing its file back every this many bytes, so
/// the fsync before it is published has little left to do (and dirty pages stay few).
const WRITE_BEHIND: u64 = 8 << 20;

/// Starts write-back of `len` bytes at `offset` of `file` without waiting for it.
#[cfg(target_os = "linux")]
fn start_write_back(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // Safety: a valid open descriptor; the call only schedules I/O. Failure is harmless:
    // the fsync at publish time writes whatever this did not.
    unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_write_back(_file: &File, _offset: u64, _len: u64) {}

impl PartialSink {
    fn out(&mut self) -> io::Result<&mut io::BufWriter<File>> {
        self.out.as_mut().ok_or_else(|| io::Error::other("partial file closed"))
    }
}

impl Write for PartialSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Before the bytes that take the partial file past the threshold: once it is that
        // long on disk, a crash finds the validator beside it.
        if self.pending.is_some() && self.size + buf.len() as u64 >= PARTIAL_META_THRESHOLD {
            if let Some(v) = self.pending.take() {
                write_validator(&self.meta, &v)?;
                self.meta_on_disk = true;
            }
        }
        let n = self.out()?.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        if self.size - self.kicked >= WRITE_BEHIND {
            let (from, len) = (self.kicked, self.size - self.kicked);
            let out = self.out()?;
            out.flush()?;
            start_write_back(out.get_ref(), from, len);
            self.kicked += len;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out()?.flush()
    }
}

impl Sink for PartialSink {
    fn held(&self) -> Option<RemoteHeld> {
        self.held.clone()
    }

    fn begin(&mut self, offset: u64, validator: &Validator) -> io::Result<()> {
        if offset > 0 && self.held.as_ref().is_some_and(|h| h.offset == offset) {
            return Ok(());
        }
        if offset > 0 {
            return Err(io::Error::other(format!("asked to resume at {offset}, which is not what is held")));
        }
        // The whole object follows: what was held goes. Named by the validator the held bytes
        // had, it must be as long as first announced (a shorter body is not that object).
        self.expect_len = self.held.as_ref().filter(|h| h.validator.same_object(validator)).and_then(|h| h.validator.length);
        let out = self.out()?;
        out.flush()?;
        let file = out.get_mut();
        file.set_len(0)?;
        file.rewind()?;
        self.hasher = Sha256::new();
        self.size = 0;
        self.kicked = 0;
        self.held = None;
        // A validator found there was for the bytes just dropped.
        if self.meta_on_disk {
            match fs::remove_file(&self.meta) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            self.meta_on_disk = false;
        }
        // Written later, if at all (see `PARTIAL_META_THRESHOLD`). An empty validator leaves
        // nothing to check a later range against: this download cannot resume.
        self.pending = (!validator.is_empty()).then(|| validator.clone());
        Ok(())
    }
}

/// Feeds what is written into a hasher.
struct HashInto<'a>(&'a mut Sha256);

impl Write for HashInto<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `.{filename}.tmp-{32 hex digits}`, exactly as `write_temp` names them, and a partial
/// download's files.
pub fn is_temp_name(name: &str) -> bool {
    if partial_of(name).is_some() {
        return true;
    }
    let Some(rest) = name.strip_prefix('.') else { return false };
    let Some((base, random)) = rest.rsplit_once(TEMP_MARK) else { return false };
    random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit()) && names::check_filename(base).is_ok()
}

fn check_claims(claimed: &Fetched, size: u64, sha256: &str) -> Result<()> {
    if let Some(len) = claimed.length.filter(|len| *len != size) {
        return Err(RemoteError::integrity(format!("incomplete transfer: got {size} of {len} bytes")).into());
    }
    if let Some(want) = claimed.sha256.as_deref().filter(|want| !want.eq_ignore_ascii_case(sha256)) {
        return Err(RemoteError::integrity(format!("checksum mismatch: expected sha256 {want}, got {sha256}")).into());
    }
    Ok(())
}

fn fsync_path(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// fsyncs a directory so a rename in it survives a crash. No handle is kept open:
/// one would keep the folder's file system from being unmounted.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// SHA-256 and length of an existing file (never through a symlink), streaming.
pub fn hash_file(path: &Path) -> Result<Written> {
    let mut file = open_nofollow(path).map_err(|e| Error::io(path, e))?;
    hash_reader(&mut file).map_err(|e| Error::io(path, e))
}

fn hash_reader(from: &mut dyn Read) -> io::Result<Written> {
    let mut out = HashingWriter { inner: io::sink(), hasher: Sha256::new(), size: 0 };
    io::copy(from, &mut out)?;
    Ok(Written { size: out.size, sha256: hex::encode(out.hasher.finalize()) })
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> LocalStore {
        let dir = std::env::temp_dir().join(format!("att-store-{}", uuid::Uuid::new_v4().simple()));
        LocalStore::create(dir).unwrap()
    }

    #[test]
    fn writes_are_complete_and_hashed() {
        let s = temp_store();
        let (w, _) = s.write_from("a.txt", &mut &b"hello"[..]).unwrap();
        assert_eq!(w.size, 5);
        assert_eq!(w.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(fs::read(s.dir().join("a.txt")).unwrap(), b"hello");
        assert_eq!(hash_file(&s.dir().join("a.txt")).unwrap(), w);
        assert!(s.entries().unwrap().iter().all(|e| !e.is_temp));
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let s = temp_store();
        let err = s.write_with("b.bin", |out| {
            out.write_all(b"partial").unwrap();
            Err(Error::Misuse("network dropped".into()))
        });
        assert!(err.is_err());
        let short = s.write_with("c.bin", |out| {
            out.write_all(b"12345").unwrap();
            Ok(Fetched { length: Some(10), sha256: None })
        });
        assert!(short.unwrap_err().to_string().contains("got 5 of 10 bytes"));
        let corrupt = s.write_with("c.bin", |out| {
            out.write_all(b"12345").unwrap();
            Ok(Fetched { length: Some(5), sha256: Some("00".repeat(32)) })
        });
        assert!(corrupt.unwrap_err().to_string().contains("checksum mismatch"));
        assert!(s.existing("c.bin").unwrap().is_none());
        assert!(s.existing("b.bin").unwrap().is_none());
        assert!(s.entries().unwrap().is_empty(), "temp file must be removed");
    }

    #[test]
    fn temp_names_are_recognised_exactly() {
        assert!(is_temp_name(&format!(".a.jpg{TEMP_MARK}{}", "0f".repeat(16))));
        assert!(!is_temp_name(".hidden.tmp-x"));
        assert!(!is_temp_name(&format!(".../x{TEMP_MARK}{}", "0f".repeat(16))));
    }

    #[test]
    fn a_symlink_is_never_opened_and_a_vanished_folder_is_an_error() {
        let s = temp_store();
        let outside = std::env::temp_dir().join(format!("att-outside-{}", uuid::Uuid::new_v4().simple()));
        fs::write(&outside, b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, s.dir().join("x.txt")).unwrap();
        assert!(s.open_file("x.txt").is_err());
        assert!(s.existing("x.txt").unwrap().is_none());
        let (w, _) = s.write_from("y.txt", &mut &b"hello"[..]).unwrap();
        assert!(s.open_checked("y.txt", Some(&w.sha256)).unwrap().is_some());
        // With a recorded SHA-256 the bytes are checked as they are sent (upload_source).
        let expected = s.open_checked("y.txt", Some(&"00".repeat(32))).unwrap().unwrap().split().3;
        assert_eq!(expected, Some("00".repeat(32)));
        fs::remove_dir_all(s.dir()).unwrap();
        assert!(s.existing("y.txt").is_err());
        assert!(s.open_file("y.txt").is_err());
        let _ = fs::remove_file(outside);
    }

    #[test]
    fn a_locked_file_is_not_removed() {
        let s = temp_store();
        let (_, held) = s.write_from("z.bin", &mut &b"z"[..]).unwrap();
        let entry = s.entries().unwrap().into_iter().find(|e| e.name == "z.bin").unwrap();
        assert!(!s.remove_unlocked(&entry).unwrap());
        drop(held);
        assert!(s.remove_unlocked(&entry).unwrap());
    }

    #[test]
    fn paths_never_leave_the_directory() {
        let s = temp_store();
        for bad in ["../x", "/etc/passwd", "a/b", "..", ".hidden", "x\0y"] {
            assert!(s.path(bad).is_err(), "{bad:?}");
            assert!(s.write_from(bad, &mut &b"x"[..]).is_err(), "{bad:?}");
        }
    }

    /// A download cut after `n` bytes that announced `validator` (as a backend does).
    fn cut_download(s: &LocalStore, n: usize) -> Result<(Staged, Written)> {
        s.stage_resumable("o.bin", |out| {
            out.begin(0, &Validator { etag: Some("\"E1\"".into()), last_modified: None, length: Some(1000) }).unwrap();
            out.write_all(&vec![1u8; n]).unwrap();
            Err(RemoteError::truncated("cut").into())
        })
    }

    #[test]
    fn a_validator_is_written_only_for_a_large_or_an_interrupted_download() {
        let s = temp_store();
        let v = Validator { etag: Some("\"E1\"".into()), last_modified: None, length: None };
        let meta_of = |name: &str| s.dir().join(format!(".{name}{PARTIAL_META_MARK}"));
        // A small download that completes never writes one (a crash restarts it from zero).
        let (staged, _) = s
            .stage_resumable("small.bin", |out| {
                out.begin(0, &v).unwrap();
                out.write_all(&[1u8; 1000]).unwrap();
                assert!(!meta_of("small.bin").exists(), "no validator while a small download runs");
                Ok(Fetched::default())
            })
            .unwrap();
        assert!(!meta_of("small.bin").exists());
        s.publish_refs(&[&staged]).unwrap();
        assert_eq!(fs::read(s.dir().join("small.bin")).unwrap(), vec![1u8; 1000]);
        // A large one writes it once its partial file holds the threshold: a crash resumes it.
        let big = PARTIAL_META_THRESHOLD + 1;
        let (staged, _) = s
            .stage_resumable("big.bin", |out| {
                out.begin(0, &v).unwrap();
                out.write_all(&vec![2u8; PARTIAL_META_THRESHOLD as usize - 1]).unwrap();
                assert!(!meta_of("big.bin").exists(), "not below the threshold");
                out.write_all(&[2u8; 2]).unwrap();
                assert_eq!(read_validator(&meta_of("big.bin")).unwrap().etag, v.etag);
                Ok(Fetched { length: Some(big), sha256: None })
            })
            .unwrap();
        s.publish_refs(&[&staged]).unwrap();
        assert!(!meta_of("big.bin").exists(), "removed once published");
        // A small download cut short keeps its validator with its partial file, and resumes.
        assert!(cut_download(&s, 500).is_err());
        assert_eq!(read_validator(&meta_of("o.bin")).unwrap().etag.as_deref(), Some("\"E1\""));
        let held = s.stage_resumable("o.bin", |out| {
            assert_eq!(out.held().map(|h| h.offset), Some(500));
            Err(RemoteError::truncated("cut again").into())
        });
        assert!(held.is_err());
    }

    #[test]
    fn a_planted_validator_symlink_is_replaced_not_followed() {
        let s = temp_store();
        let outside = std::env::temp_dir().join(format!("att-canary-{}", uuid::Uuid::new_v4().simple()));
        fs::write(&outside, b"canary").unwrap();
        std::os::unix::fs::symlink(&outside, s.dir().join(".o.bin.partial-meta")).unwrap();
        assert!(cut_download(&s, 500).is_err());
        assert_eq!(fs::read(&outside).unwrap(), b"canary", "the file outside is untouched");
        let meta = fs::symlink_metadata(s.dir().join(".o.bin.partial-meta")).unwrap();
        assert!(meta.is_file(), "the validator is a file of ours now");
        // And it is read back, with the length first announced.
        let v = read_validator(&s.dir().join(".o.bin.partial-meta")).unwrap();
        assert_eq!(v.length, Some(1000));
        assert!(s.entries().unwrap().iter().all(|e| is_temp_name(&e.name)), "only names verify knows");
        let _ = fs::remove_file(outside);
    }

    #[test]
    fn a_planted_partial_symlink_or_folder_is_cleared_and_the_download_proceeds() {
        let s = temp_store();
        let outside = std::env::temp_dir().join(format!("att-canary-{}", uuid::Uuid::new_v4().simple()));
        fs::write(&outside, b"canary").unwrap();
        let partial = s.dir().join(".o.bin.partial");
        std::os::unix::fs::symlink(&outside, &partial).unwrap();
        assert!(cut_download(&s, 300).is_err());
        assert_eq!(fs::read(&outside).unwrap(), b"canary");
        assert_eq!(fs::symlink_metadata(&partial).unwrap().len(), 300, "the partial file is ours and holds the bytes");
        fs::remove_file(&partial).unwrap();
        fs::create_dir(&partial).unwrap();
        fs::write(partial.join("inside"), b"x").unwrap();
        assert!(cut_download(&s, 200).is_err());
        assert_eq!(fs::symlink_metadata(&partial).unwrap().len(), 200);
        assert!(fs::symlink_metadata(&partial).unwrap().is_file());
        // A folder with content is moved aside, never deleted.
        let moved: Vec<_> = fs::read_dir(s.dir()).unwrap().flatten().filter(|e| e.path().join("inside").exists()).collect();
        assert_eq!(moved.len(), 1);
        let _ = fs::remove_file(outside);
    }

    #[test]
    fn a_hard_linked_partial_file_is_never_appended_to() {
        let s = temp_store();
        assert!(cut_download(&s, 300).is_err());
        let partial = s.dir().join(".o.bin.partial");
        let outside = std::env::temp_dir().join(format!("att-canary-{}", uuid::Uuid::new_v4().simple()));
        fs::copy(&partial, &outside).unwrap();
        fs::remove_file(&partial).unwrap();
        fs::hard_link(&outside, &partial).unwrap();
        assert!(cut_download(&s, 200).is_err());
        assert_eq!(fs::read(&outside).unwrap(), vec![1u8; 300], "the other link's content is untouched");
        let meta = fs::symlink_metadata(&partial).unwrap();
        assert_eq!((meta.len(), meta.nlink()), (200, 1), "the download restarted in a file of its own");
        let _ = fs::remove_file(outside);
    }

    #[test]
    fn a_whole_answer_naming_the_held_object_must_have_its_length() {
        let s = temp_store();
        assert!(cut_download(&s, 300).is_err());
        // The server ignores the range: a 200 with the same ETag, but 600 bytes where the
        // first answer with that ETag announced 1000.
        let r = s.stage_resumable("o.bin", |out| {
            let held = out.held().expect("the cut download's bytes are held");
            assert_eq!(held.validator.length, Some(1000));
            out.begin(0, &Validator { etag: Some("\"E1\"".into()), last_modified: None, length: None }).unwrap();
            out.write_all(&[2u8; 600]).unwrap();
            Ok(Fetched::default())
        });
        match r {
            Err(Error::Remote(e)) => assert!(e.to_string().contains("600 of 1000"), "{e}"),
            other => panic!("expected an integrity error, got {:?}", other.map(|(_, w)| w.size)),
        }
        assert!(!s.dir().join(".o.bin.partial").exists(), "the partial file is dropped");
        assert!(!s.dir().join(".o.bin.partial-meta").exists());
    }

    #[test]
    fn a_partial_file_held_by_another_transfer_is_busy() {
        let s = temp_store();
        assert!(cut_download(&s, 10).is_err());
        let held = File::open(s.dir().join(".o.bin.partial")).unwrap();
        assert!(try_flock(&held, libc::LOCK_EX).unwrap());
        match cut_download(&s, 10) {
            Err(Error::Remote(e)) => assert!(e.is_busy(), "{e}"),
            other => panic!("expected busy, got {other:?}"),
        }
    }
}
