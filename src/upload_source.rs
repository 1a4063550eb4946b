//! The bytes an upload sends are the bytes the save wrote: a file saved with a SHA-256 is
//! checked against it before its upload can complete.
//!
//! Small files are hashed before they are sent ([`crate::store::LocalStore::open_checked`]).
//! A big file is hashed on a thread of its own while it is sent, instead of in a pass of
//! its own before (for 1 GiB that pass was 40 % of the upload's CPU, and all of its time
//! before the first byte left). Nothing incomplete ever counts: a reader of the whole
//! file holds back its last bytes until the hash is known, so a remote never receives a
//! complete body that fails the check (an HTTP PUT or a file copy cut short is discarded
//! by the other side). A reader of a part (S3 multipart, the chunks of encryption) waits
//! for the hash before its first byte, as the check before sending did: stored parts
//! must never hold bytes that did not check out, because a later attempt resumes them.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;
use sha2::{Digest, Sha256};

use crate::crypt::FileSource;
use crate::remote::Source;

/// Uploads at least this big are checked while they are sent.
pub const CHECK_WHILE_SENDING: u64 = 8 * 1024 * 1024;

/// An upload's file, with the check of its bytes against the SHA-256 recorded at save.
pub struct UploadSource {
    plain: FileSource,
    check: Option<Check>,
}

/// The hash of the whole file, computed on a thread of its own, and the verdict.
struct Check {
    want: String,
    name: String,
    digest: Mutex<Option<Receiver<io::Result<String>>>>,
    verdict: Mutex<Option<Result<(), Refusal>>>,
    /// Tells the hashing thread to stop when the upload is over (a cancelled transfer).
    done: Arc<AtomicBool>,
}

impl UploadSource {
    /// A file already checked (or saved without a SHA-256): sent as it is.
    pub fn checked(file: File, len: u64) -> UploadSource {
        UploadSource { plain: FileSource { file, len }, check: None }
    }

    /// A file to check against `want` while it is sent; `name` is for messages.
    pub fn checking(file: File, len: u64, want: &str, name: &str) -> io::Result<UploadSource> {
        let reader = file.try_clone()?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        std::thread::Builder::new()
            .name("attachments-hash".into())
            .spawn(move || {
                let _ = tx.send(hash_all(&reader, &stop));
            })?;
        let check = Check {
            want: want.to_ascii_lowercase(),
            name: name.to_string(),
            digest: Mutex::new(Some(rx)),
            verdict: Mutex::new(None),
            done,
        };
        Ok(UploadSource { plain: FileSource { file, len }, check: Some(check) })
    }

    /// Whether the bytes are the saved ones: waits for the hash when it is still running.
    /// `Ok` without a check.
    pub fn verdict(&self) -> Result<(), Refusal> {
        self.check.as_ref().map_or(Ok(()), Check::verdict)
    }

    /// Why the upload was refused, once the check has failed (None while it has not, or
    /// has not finished).
    pub fn refused(&self) -> Option<Refusal> {
        let check = self.check.as_ref()?;
        check.verdict.lock().ok()?.clone()?.err()
    }
}

impl Drop for UploadSource {
    fn drop(&mut self) {
        if let Some(c) = &self.check {
            c.done.store(true, Ordering::Relaxed);
        }
    }
}

/// Why a checked upload was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The bytes are not the saved ones (`integrity`).
    Changed(String),
    /// The file could not be read to check it (`local`: a disk error, not the file's fault).
    Unreadable(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Changed(why) | Refusal::Unreadable(why) => f.write_str(why),
        }
    }
}

impl Check {
    fn verdict(&self) -> Result<(), Refusal> {
        let mut verdict = self.verdict.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = verdict.as_ref() {
            return v.clone();
        }
        let rx = self.digest.lock().unwrap_or_else(|e| e.into_inner()).take();
        let got = match rx.map(|rx| rx.recv()) {
            Some(Ok(got)) => got,
            _ => Err(io::Error::other("the hashing thread ended without an answer")),
        };
        let v = match got {
            Ok(sha256) if sha256 == self.want => Ok(()),
            Ok(sha256) => Err(Refusal::Changed(format!(
                "local file {} changed after it was saved: its SHA-256 is {sha256}, not {}; it is not uploaded",
                self.name, self.want
            ))),
            Err(e) => Err(Refusal::Unreadable(format!("local file {} could not be read to check it: {e}", self.name))),
        };
        *verdict = Some(v.clone());
        v
    }
}

/// SHA-256 of the whole file, read by position (the sender reads the same file meanwhile).
fn hash_all(file: &File, stop: &AtomicBool) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut pos = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("the upload ended"));
        }
        let n = file.read_at(&mut buf, pos)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
}

impl Source for UploadSource {
    fn len(&self) -> u64 {
        self.plain.len
    }

    fn reader(&self, start: u64, end: u64) -> Box<dyn Read + Send + '_> {
        let inner = self.plain.reader(start, end);
        let Some(check) = &self.check else { return inner };
        if start == 0 && end >= self.plain.len {
            return Box::new(HeldBack { inner, check, pos: 0, len: self.plain.len });
        }
        // A part: nothing of it is sent before the whole file checked out.
        match check.verdict() {
            Ok(()) => inner,
            Err(why) => Box::new(Refused(why.to_string())),
        }
    }
}

/// The whole file, with its last bytes held back until the check passed.
struct HeldBack<'a> {
    inner: Box<dyn Read + Send + 'a>,
    check: &'a Check,
    pos: u64,
    len: u64,
}

impl Read for HeldBack<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        if n > 0 && self.pos >= self.len {
            self.check.verdict().map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why.to_string()))?;
        }
        Ok(n)
    }
}

/// A part of a file that did not check out.
struct Refused(String);

impl Read for Refused {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::InvalidData, self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile_path::Dir, File) {
        let dir = tempfile_path::Dir::new();
        let path = dir.0.join("f.bin");
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let f = File::open(&path).unwrap();
        (dir, f)
    }

    /// A folder removed on drop (the crate has no tempfile dependency).
    mod tempfile_path {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!("att-upload-source-{}", uuid::Uuid::new_v4().simple()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn the_whole_file_is_sent_when_it_checks_out() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let (_d, f) = file_with(&data);
        let src = UploadSource::checking(f, data.len() as u64, &sha(&data).to_uppercase(), "f.bin").unwrap();
        let mut out = Vec::new();
        src.reader(0, data.len() as u64).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(src.verdict(), Ok(()));
        assert_eq!(src.refused(), None);
    }

    #[test]
    fn a_file_that_does_not_check_out_never_gives_its_last_bytes() {
        let data = vec![7u8; 2_000_000];
        let (_d, f) = file_with(&data);
        let src = UploadSource::checking(f, data.len() as u64, &sha(b"something else"), "f.bin").unwrap();
        let mut r = src.reader(0, data.len() as u64);
        let mut buf = vec![0u8; 64 * 1024];
        let mut given = 0usize;
        let err = loop {
            match r.read(&mut buf) {
                Ok(0) => panic!("the whole file was given"),
                Ok(n) => given += n,
                Err(e) => break e,
            }
        };
        assert!(given < data.len(), "{given}");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(src.refused(), Some(Refusal::Changed(why)) if why.contains("changed after it was saved")));
        // A part waits for the verdict before its first byte.
        assert!(src.reader(0, 1000).read(&mut buf).is_err());
    }

    #[test]
    fn parts_wait_for_the_check_and_then_read_plainly() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
        let (_d, f) = file_with(&data);
        let src = UploadSource::checking(f, data.len() as u64, &sha(&data), "f.bin").unwrap();
        let mut out = Vec::new();
        src.reader(0, 400_000).read_to_end(&mut out).unwrap();
        src.reader(400_000, 1_000_000).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }
}
