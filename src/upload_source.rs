//! The bytes an upload sends are the bytes the save wrote: a file saved with a SHA-256 is
//! checked against it before its upload can complete.
//!
//! A reader of the whole file (an HTTP or S3 `PUT`, the `file://` copy) hashes the very
//! bytes it hands over and holds back the last of them until that hash matches, so a
//! remote never receives a complete body that is not the saved file, even when the file
//! is written to while it is sent (an HTTP `PUT` or a copy cut short is discarded by the
//! other side). Big files are hashed on a thread of their own, fed a copy of each piece,
//! so hashing overlaps the sending instead of taking a pass of its own before it (for
//! 1 GiB that pass was 40 % of the upload's CPU, and all of its time before the first
//! byte left). A reader of a part (S3 multipart, the chunks of encryption) waits before its
//! first byte for a hash of the whole file read on its own, as the check before sending
//! always did; stored parts are resumed by later attempts and must never hold bytes that
//! failed it. A change made while parts are sent is seen by the size-and-times comparison
//! after the upload (the row is not marked SYNCED), not by a hash of the parts sent.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use sha2::{Digest, Sha256};

use crate::crypt::FileSource;
use crate::remote::Source;

/// Whole-file readers of at least this many bytes hash on a thread of their own.
pub const HASH_ON_A_THREAD: u64 = 8 * 1024 * 1024;
/// Pieces handed to the hashing thread and not yet hashed, at most (memory stays flat).
const PIECES_IN_FLIGHT: usize = 8;

/// An upload's file, with the check of its bytes against the SHA-256 recorded at save.
pub struct UploadSource {
    plain: FileSource,
    check: Option<Check>,
}

struct Check {
    want: String,
    name: String,
    /// What a hash of the whole file, read on its own, found (for readers of parts).
    whole: Mutex<Option<Result<(), Refusal>>>,
    /// The first refusal a reader met.
    refused: Mutex<Option<Refusal>>,
    /// A whole-file reader handed over every byte, and they hashed to the saved SHA-256.
    sent_whole: AtomicBool,
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

impl UploadSource {
    /// A file saved without a SHA-256: sent as it is.
    pub fn unchecked(file: File, len: u64) -> UploadSource {
        UploadSource { plain: FileSource { file, len }, check: None }
    }

    /// A file to check against `want` as it is sent; `name` is for messages.
    pub fn checking(file: File, len: u64, want: &str, name: &str) -> UploadSource {
        let check = Check {
            want: want.to_ascii_lowercase(),
            name: name.to_string(),
            whole: Mutex::new(None),
            refused: Mutex::new(None),
            sent_whole: AtomicBool::new(false),
        };
        UploadSource { plain: FileSource { file, len }, check: Some(check) }
    }

    /// Whether what was sent is the saved file: yes when a whole-file reader sent it all
    /// and it checked out; otherwise the hash of the whole file read on its own (what
    /// readers of parts went by). `Ok` without a check.
    pub fn verdict(&self) -> Result<(), Refusal> {
        let Some(check) = &self.check else { return Ok(()) };
        if let Some(why) = self.refused() {
            return Err(why);
        }
        if check.sent_whole.load(Ordering::Acquire) {
            return Ok(());
        }
        check.whole(&self.plain.file)
    }

    /// Why the upload was refused, once a reader met a failed check.
    pub fn refused(&self) -> Option<Refusal> {
        self.check.as_ref()?.refused.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Check {
    fn refuse(&self, why: Refusal) -> Refusal {
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        r.get_or_insert(why).clone()
    }

    fn compare(&self, got: io::Result<String>) -> Result<(), Refusal> {
        match got {
            Ok(sha256) if sha256 == self.want => Ok(()),
            Ok(sha256) => Err(Refusal::Changed(format!(
                "local file {} changed after it was saved: its SHA-256 is {sha256}, not {}; it is not uploaded",
                self.name, self.want
            ))),
            Err(e) => Err(Refusal::Unreadable(format!("local file {} could not be read to check it: {e}", self.name))),
        }
    }

    /// The whole file read on its own and hashed, once.
    fn whole(&self, file: &File) -> Result<(), Refusal> {
        let mut whole = self.whole.lock().unwrap_or_else(|e| e.into_inner());
        if whole.is_none() {
            *whole = Some(self.compare(hash_all(file)).map_err(|why| self.refuse(why)));
        }
        whole.clone().unwrap_or(Ok(()))
    }
}

/// SHA-256 of the whole file, read by position.
fn hash_all(file: &File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut pos = 0u64;
    loop {
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
        let len = self.plain.len;
        if start == 0 && end >= len {
            let hashing = if len >= HASH_ON_A_THREAD { Hashing::on_a_thread() } else { None };
            return Box::new(HeldBack {
                inner,
                check,
                pos: 0,
                len,
                hashing: hashing.unwrap_or_else(|| Hashing::Inline(Sha256::new())),
                finished: false,
            });
        }
        // A part: nothing of it is sent before the whole file checked out.
        match check.whole(&self.plain.file) {
            Ok(()) => inner,
            Err(why) => Box::new(Refused(why.to_string())),
        }
    }
}

/// Where a whole-file reader's bytes are hashed.
enum Hashing {
    Inline(Sha256),
    /// A thread hashes copies of the pieces, in order, and hands each buffer back.
    Thread { pieces: Option<Sender<Vec<u8>>>, spare: Receiver<Vec<u8>>, made: usize, hasher: Option<JoinHandle<String>> },
}

impl Hashing {
    fn on_a_thread() -> Option<Hashing> {
        let (pieces, todo) = crossbeam_channel::bounded::<Vec<u8>>(PIECES_IN_FLIGHT);
        let (back, spare) = crossbeam_channel::bounded::<Vec<u8>>(PIECES_IN_FLIGHT);
        let hasher = std::thread::Builder::new()
            .name("attachments-hash".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for piece in todo {
                    h.update(&piece);
                    let _ = back.try_send(piece);
                }
                hex::encode(h.finalize())
            })
            .ok()?;
        Some(Hashing::Thread { pieces: Some(pieces), spare, made: 0, hasher: Some(hasher) })
    }

    fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Hashing::Inline(h) => h.update(bytes),
            Hashing::Thread { pieces, spare, made, .. } => {
                let mut piece = match spare.try_recv() {
                    Ok(p) => p,
                    Err(_) if *made < PIECES_IN_FLIGHT => {
                        *made += 1;
                        Vec::with_capacity(bytes.len())
                    }
                    Err(_) => spare.recv().map_err(|_| io::Error::other("the hashing thread ended"))?,
                };
                piece.clear();
                piece.extend_from_slice(bytes);
                pieces.as_ref().and_then(|p| p.send(piece).ok()).ok_or_else(|| io::Error::other("the hashing thread ended"))?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<String> {
        match self {
            Hashing::Inline(h) => Ok(hex::encode(std::mem::take(h).finalize())),
            Hashing::Thread { pieces, hasher, .. } => {
                pieces.take();
                hasher.take().and_then(|h| h.join().ok()).ok_or_else(|| io::Error::other("the hashing thread failed"))
            }
        }
    }
}

/// The whole file, hashed as it is handed over, its last bytes held back until the hash
/// of everything handed over matches.
struct HeldBack<'a> {
    inner: Box<dyn Read + Send + 'a>,
    check: &'a Check,
    pos: u64,
    len: u64,
    hashing: Hashing,
    finished: bool,
}

impl Read for HeldBack<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hashing.feed(&buf[..n])?;
            self.pos += n as u64;
        }
        if self.pos >= self.len {
            self.finished = true;
            let sent = self.check.compare(self.hashing.finish());
            if let Err(why) = sent {
                let why = self.check.refuse(why);
                return Err(io::Error::new(io::ErrorKind::InvalidData, why.to_string()));
            }
            self.check.sent_whole.store(true, Ordering::Release);
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
    use std::os::unix::fs::FileExt as _;

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
        let src = UploadSource::checking(f, data.len() as u64, &sha(&data).to_uppercase(), "f.bin");
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
        let src = UploadSource::checking(f, data.len() as u64, &sha(b"something else"), "f.bin");
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
    fn bytes_changed_while_they_are_read_are_refused_though_the_file_is_restored() {
        // 9 MiB: hashed on a thread. A byte ahead of the reader is changed, read, and put
        // back before the end: the file hashes right again, the bytes handed over do not.
        let data: Vec<u8> = (0..9 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let (d, f) = file_with(&data);
        let path = d.0.join("f.bin");
        let src = UploadSource::checking(f, data.len() as u64, &sha(&data), "f.bin");
        let mut r = src.reader(0, data.len() as u64);
        let mut buf = vec![0u8; 64 * 1024];
        r.read_exact(&mut buf).unwrap();
        let at = 1024 * 1024u64;
        let w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        w.write_all_at(&[data[at as usize] ^ 1], at).unwrap();
        let mut given = buf.len() as u64;
        let err = loop {
            match r.read(&mut buf) {
                Ok(0) => panic!("the whole file was given"),
                Ok(n) => {
                    given += n as u64;
                    if given > 2 * at {
                        w.write_all_at(&[data[at as usize]], at).unwrap(); // restored
                    }
                }
                Err(e) => break e,
            }
        };
        assert!(given < data.len() as u64);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(src.verdict(), Err(Refusal::Changed(_))));
    }

    #[test]
    fn a_big_file_hashed_on_a_thread_is_sent_whole() {
        let data: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i * 13) as u8).collect();
        let (_d, f) = file_with(&data);
        let src = UploadSource::checking(f, data.len() as u64, &sha(&data), "f.bin");
        let mut out = Vec::new();
        src.reader(0, data.len() as u64).read_to_end(&mut out).unwrap();
        assert!(out == data);
        assert_eq!(src.verdict(), Ok(()));
    }

    #[test]
    fn parts_wait_for_the_check_and_then_read_plainly() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
        let (_d, f) = file_with(&data);
        let src = UploadSource::checking(f, data.len() as u64, &sha(&data), "f.bin");
        let mut out = Vec::new();
        src.reader(0, 400_000).read_to_end(&mut out).unwrap();
        src.reader(400_000, 1_000_000).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }
}
