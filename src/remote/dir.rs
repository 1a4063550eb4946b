//! `file:///dir`: a directory as remote storage (a network mount, or the
//! stand-in for a server in demos and tests). Writes are atomic like local ones.
//!
//! The folder is treated as hostile and possibly absent: transfers never create it
//! (an unmounted NAS would otherwise be "uploaded to" on the local disk and the rows
//! marked SYNCED), and a download reads only a regular file, exactly its length.

use std::{
    fs,
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use super::{copy_with_progress, ErrorClass, ErrorKind, Fetched, Object, Progress, RemoteError, RemoteStorage, Sink, Source, Validator};
use crate::store::sync_dir;

pub struct DirRemote {
    root: PathBuf,
}

impl DirRemote {
    pub fn new(root: PathBuf) -> DirRemote {
        DirRemote { root }
    }

    /// A missing root means the remote is not there (a NAS not mounted), never that a file
    /// is missing: a transient failure, so nothing is marked synced, archived or given up.
    fn missing_root(&self) -> RemoteError {
        RemoteError::new(
            ErrorKind::Transient,
            format!("remote directory {} does not exist (not mounted?)", self.root.display()),
        )
        .with_class(ErrorClass::Network)
    }

    fn check_root(&self) -> Result<(), RemoteError> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(RemoteError::new(
                ErrorKind::Transient,
                format!("remote directory {} is not a directory", self.root.display()),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.missing_root()),
            Err(e) => Err(io_err("checking the remote directory", e)),
        }
    }
}

/// Creates the remote folder itself, never its parents (like `mkdir` without `-p`): the
/// parent of a mount point exists even when nothing is mounted, so only a folder whose
/// parent is there is created. Best effort: a transfer reports a folder that is missing.
pub fn create_root_if_parent_exists(root: &Path) {
    if root.parent().is_some_and(Path::is_dir) {
        let _ = fs::create_dir(root);
    }
}

fn io_err(what: &str, e: std::io::Error) -> RemoteError {
    RemoteError::from_io(what, &e)
}

impl RemoteStorage for DirRemote {
    fn upload(&self, obj: &Object, source: &dyn Source, progress: Progress) -> Result<(), RemoteError> {
        self.check_root()?;
        let tmp = self.root.join(format!(".{}.tmp-{}", obj.filename, uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut out = File::create_new(&tmp)?;
            copy_with_progress(&mut source.reader(0, source.len()), &mut out, progress)?;
            out.sync_all()?;
            fs::rename(&tmp, self.root.join(obj.filename))?;
            sync_dir(&self.root)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| match e.kind() {
            // The folder went away (unmounted) during the upload.
            std::io::ErrorKind::NotFound => self.missing_root(),
            _ => io_err("writing to the remote directory", e),
        })
    }

    fn download(&self, obj: &Object, out: &mut dyn Sink, progress: Progress) -> Result<Fetched, RemoteError> {
        self.check_root()?;
        // O_NONBLOCK: opening a FIFO must not wait for a writer that never comes.
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(self.root.join(obj.filename))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => RemoteError::new(ErrorKind::NotFound, "not in the remote directory"),
                _ => io_err("opening the remote file", e),
            })?;
        // fstat of what was opened, not of the name: a device, FIFO or socket (directly or
        // through a symlink) would block or never end.
        let meta = file.metadata().map_err(|e| io_err("reading the remote file", e))?;
        if !meta.is_file() {
            return Err(RemoteError::new(
                ErrorKind::Permanent,
                format!("{} in the remote directory is not a regular file", obj.filename),
            )
            .with_class(ErrorClass::Server));
        }
        let length = meta.len();
        // The file's identity and version stand in for an ETag: a replaced or rewritten file
        // (another inode, size or modification time) is read again from the start.
        let validator = Validator {
            etag: Some(format!("\"{:x}-{:x}-{:x}\"", meta.ino(), length, meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128)),
            last_modified: None,
            length: Some(length),
        };
        let offset = match out.held() {
            Some(h) if h.offset <= length && h.validator.same_object(&validator) && h.validator.same_length(Some(length)) => h.offset,
            _ => 0,
        };
        let mut file = file;
        file.seek(SeekFrom::Start(offset)).map_err(|e| io_err("reading the remote file", e))?;
        out.begin(offset, &validator).map_err(|e| RemoteError::local(format!("preparing the local file: {e}")))?;
        // Exactly the length fstat gave: a file that grows while read is not read forever;
        // one that shrinks is caught by the store's length check.
        let mut limited = file.take(length - offset);
        copy_with_progress(&mut limited, out, progress).map_err(|e| io_err("reading the remote file", e))?;
        Ok(Fetched { length: Some(length), sha256: None })
    }

    fn delete(&self, obj: &Object) -> Result<(), RemoteError> {
        match fs::remove_file(self.root.join(obj.filename)) {
            Ok(()) => sync_dir(&self.root).map_err(|e| io_err("deleting from the remote directory", e)),
            // A missing root is not "already deleted": the object may be on the unmounted NAS.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.check_root(),
            Err(e) => Err(io_err("deleting from the remote directory", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A writer that appends to the remote file every time it is given bytes: the file
    /// grows exactly as fast as it is read. Fails past `cap` so a broken reader ends.
    struct Grower {
        remote: File,
        got: u64,
        cap: u64,
    }

    impl Sink for Grower {}

    impl Write for Grower {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.got += buf.len() as u64;
            if self.got > self.cap {
                return Err(std::io::Error::other("read past the length the file had when opened"));
            }
            self.remote.write_all(buf)?;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_file_growing_while_read_is_read_to_its_opening_length_only() {
        let root = std::env::temp_dir().join(format!("att-dir-grow-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir(&root).unwrap();
        fs::write(root.join("g1.bin"), vec![7u8; 1024 * 1024]).unwrap();
        let remote = fs::OpenOptions::new().append(true).open(root.join("g1.bin")).unwrap();
        let mut out = Grower { remote, got: 0, cap: 4 * 1024 * 1024 };
        let obj = Object { id: "g1", filename: "g1.bin", media_type: "application/octet-stream", sha256: None, resume: None };
        let fetched = DirRemote::new(root.clone()).download(&obj, &mut out, &|_| Ok(()));
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(fetched.unwrap().length, Some(1024 * 1024));
        assert_eq!(out.got, 1024 * 1024);
    }
}
