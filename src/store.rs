//! Local files under `local_dir`. Every file appears at its final name only
//! complete and durable: written to a temp name, fsynced, renamed, and the
//! directory fsynced. Names go through `names`, so no path leaves the directory.

use std::{
    fs::{self, File},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::names;
use crate::remote::{Fetched, RemoteError};

/// Temp files are `.{filename}.tmp-{random}`; no attachment file starts with a dot.
const TEMP_MARK: &str = ".tmp-";

pub struct LocalStore {
    dir: PathBuf,
}

/// Size and SHA-256 (hex) of a file just written.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
}

/// A complete, checked file under its temp name; see [`LocalStore::publish_refs`].
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
}

/// A file found in `local_dir`.
pub struct Entry {
    pub name: String,
    pub is_temp: bool,
    pub modified: SystemTime,
}

impl LocalStore {
    /// Opens `dir`, creating it if missing.
    pub fn open(dir: PathBuf) -> Result<LocalStore> {
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(LocalStore { dir })
    }

    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `filename` inside the directory; the name is checked first.
    pub fn path(&self, filename: &str) -> Result<PathBuf> {
        Ok(self.dir.join(names::check_filename(filename)?))
    }

    /// Writes `filename` atomically with what `fill` writes, hashing as it goes.
    /// On any failure the temp file is removed and the final name is untouched.
    /// `fill` returns what the source claims (length, SHA-256); a mismatch fails the write,
    /// so a truncated or corrupt download never reaches its final name.
    pub fn write_with(&self, filename: &str, fill: impl FnOnce(&mut dyn Write) -> Result<Fetched>) -> Result<Written> {
        let (staged, file, written) = self.write_temp(filename, fill)?;
        let result = (|| {
            file.sync_all().map_err(|e| Error::io(&staged.tmp, e))?;
            fs::rename(&staged.tmp, &staged.dest).map_err(|e| Error::io(&staged.dest, e))?;
            self.sync()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&staged.tmp);
        }
        result.map(|()| written)
    }

    /// Writes and checks `filename` under its temp name only. It becomes durable and
    /// visible in [`LocalStore::publish_refs`], which does that for a whole batch at once.
    pub fn stage(&self, filename: &str, fill: impl FnOnce(&mut dyn Write) -> Result<Fetched>) -> Result<(Staged, Written)> {
        self.write_temp(filename, fill).map(|(staged, _, written)| (staged, written))
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
                let _ = fs::remove_file(&s.tmp);
            }
        }
        result
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
            let mut out = HashingWriter { inner: io::BufWriter::with_capacity(64 * 1024, file), hasher: Sha256::new(), size: 0 };
            let claimed = fill(&mut out)?;
            let sha256 = hex::encode(out.hasher.clone().finalize());
            check_claims(&claimed, out.size, &sha256)?;
            let file = out.inner.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
            Ok((file, Written { size: out.size, sha256 }))
        })();
        match result {
            Ok((file, written)) => Ok((Staged { tmp, dest }, file, written)),
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

    /// Writes `filename` from a reader (a blob or another file), streaming.
    pub fn write_from(&self, filename: &str, from: &mut dyn Read) -> Result<Written> {
        self.write_with(filename, |out| {
            io::copy(from, out).map_err(|e| Error::io(self.dir.join(filename), e))?;
            Ok(Fetched::default())
        })
    }

    /// The path of `filename` when the file exists.
    pub fn existing(&self, filename: &str) -> Option<PathBuf> {
        let path = self.path(filename).ok()?;
        path.is_file().then_some(path)
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

    /// Removes a file found by [`LocalStore::entries`] (temp files included).
    pub fn remove_entry(&self, entry: &Entry) -> Result<()> {
        let path = self.dir.join(&entry.name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(path, e)),
            _ => Ok(()),
        }
    }

    /// Regular files in the directory (subdirectories and odd names are left alone).
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let item = item.map_err(|e| Error::io(&self.dir, e))?;
            let Ok(meta) = item.metadata() else { continue };
            let Ok(name) = item.file_name().into_string() else { continue };
            if !meta.is_file() {
                continue;
            }
            let is_temp = name.starts_with('.') && name.contains(TEMP_MARK);
            if !is_temp && names::check_filename(&name).is_err() {
                continue;
            }
            out.push(Entry { name, is_temp, modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) });
        }
        Ok(out)
    }
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

/// Open handles of directories we fsync, so each fsync does not pay for an open.
static DIR_HANDLES: LazyLock<Mutex<HashMap<PathBuf, File>>> = LazyLock::new(Default::default);

/// fsyncs a directory so a rename in it survives a crash. The handle is reused
/// while it still refers to the directory at `dir` (same device and inode).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let now = fs::metadata(dir)?;
    let mut handles = DIR_HANDLES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = handles.get(dir) {
        let held = handle.metadata()?;
        if (held.dev(), held.ino()) == (now.dev(), now.ino()) {
            return handle.sync_all();
        }
    }
    let handle = File::open(dir)?;
    handle.sync_all()?;
    handles.insert(dir.to_path_buf(), handle);
    Ok(())
}

/// SHA-256 and length of an existing file, streaming.
pub fn hash_file(path: &Path) -> Result<Written> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = HashingWriter { inner: io::sink(), hasher: Sha256::new(), size: 0 };
    io::copy(&mut file, &mut out).map_err(|e| Error::io(path, e))?;
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
        LocalStore::open(dir).unwrap()
    }

    #[test]
    fn writes_are_complete_and_hashed() {
        let s = temp_store();
        let w = s.write_from("a.txt", &mut &b"hello"[..]).unwrap();
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
        assert!(s.existing("c.bin").is_none());
        assert!(s.existing("b.bin").is_none());
        assert!(s.entries().unwrap().is_empty(), "temp file must be removed");
    }

    #[test]
    fn paths_never_leave_the_directory() {
        let s = temp_store();
        for bad in ["../x", "/etc/passwd", "a/b", "..", ".hidden", "x\0y"] {
            assert!(s.path(bad).is_err(), "{bad:?}");
            assert!(s.write_from(bad, &mut &b"x"[..]).is_err(), "{bad:?}");
        }
    }
}
