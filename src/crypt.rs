//! End-to-end encryption of stored objects: the format, the keys, and the two
//! streaming adapters (a sealed upload source, an opening download sink).
//!
//! No cryptography is written here: every chunk is sealed and opened by RustCrypto's
//! XChaCha20-Poly1305 in the STREAM construction (`aead::stream::StreamBE32`, the
//! "online authenticated encryption" of Hoang, Reyhanitabar, Rogaway and Vizár), used
//! through its positional primitive so any chunk can be sealed on its own (S3 parts are
//! read concurrently, from any offset).
//!
//! An object is `header || chunk_0 || ... || chunk_{n-1}`:
//! - header (35 bytes): `MAGIC` (8) || key id (8) || nonce prefix (19, random per object);
//! - chunk i: 64 KiB of plaintext (the last one shorter, possibly empty) sealed at
//!   position i, the last one flagged as last, each followed by its 16-byte tag.
//!
//! The associated data of every chunk is the header and the attachment's id, so a
//! flipped byte, a cut at any point (chunk boundaries included), reordered or repeated
//! chunks, a changed header or an object moved to another id all fail to open.
//! Each object gets a fresh random 152-bit nonce prefix; the only reuse is a resumed
//! S3 multipart upload of the same plaintext (same SHA-256) under the same key, which
//! reproduces the same ciphertext byte for byte (see `remote::encrypted`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use base64::Engine;
use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::XChaCha20Poly1305;
use sha2::{Digest, Sha256};

use crate::config::Encryption;
use crate::remote::{RemoteError, Source};

/// The first bytes of every encrypted object (format version 1).
pub const MAGIC: &[u8; 8] = b"SQLATTE\x01";
/// SHA-256 of the empty file.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
/// Poly1305 tag after each chunk.
pub const TAG: usize = 16;
/// Random per object: XChaCha20's 24-byte nonce less STREAM's 5 (counter and last flag).
pub const NONCE_PREFIX: usize = 19;
pub const KEY_ID: usize = 8;
pub const HEADER_LEN: usize = MAGIC.len() + KEY_ID + NONCE_PREFIX;
const SEALED_CHUNK: usize = CHUNK + TAG;

type Stream = StreamBE32<XChaCha20Poly1305>;

/// A 256-bit key, and its public id. Never printed.
pub struct Key {
    bytes: [u8; 32],
    pub id: [u8; KEY_ID],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(id {})", hex::encode(self.id))
    }
}

impl Key {
    /// Parses the text form (base64 of 32 bytes, standard or URL-safe, padding optional).
    /// The error never repeats the text.
    pub fn parse(text: &str) -> std::result::Result<Key, &'static str> {
        let text = text.trim();
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let decoded = engines.iter().find_map(|e| e.decode(text).ok()).ok_or("is not base64")?;
        let bytes: [u8; 32] = decoded.try_into().map_err(|_| "is not 32 bytes of base64 (make one with attachment_generate_key())")?;
        Ok(Key::from_bytes(bytes))
    }

    fn from_bytes(bytes: [u8; 32]) -> Key {
        // Domain-separated, so the id is of no use for anything but telling keys apart.
        let digest = Sha256::new().chain_update(b"sqlite-attachments key id v1\0").chain_update(bytes).finalize();
        let mut id = [0u8; KEY_ID];
        id.copy_from_slice(&digest[..KEY_ID]);
        Key { bytes, id }
    }

    /// A new random key in its text form.
    pub fn generate() -> io::Result<String> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    fn stream(&self, nonce: &[u8; NONCE_PREFIX]) -> Stream {
        let aead = XChaCha20Poly1305::new((&self.bytes).into());
        Stream::from_aead(aead, nonce.into())
    }
}

/// The keys of this process: the current one (seals and opens) and older ones (open only).
#[derive(Debug)]
pub struct Keys {
    pub current: Key,
    old: Vec<Key>,
    accept_plaintext: bool,
    names: String,
}

impl Keys {
    /// Reads the keys the config names from the environment. A missing or malformed
    /// current key is a `config` error naming the variable (never its value); a missing
    /// old key only matters to objects sealed with it.
    pub fn from_env(enc: &Encryption) -> std::result::Result<Keys, RemoteError> {
        let read = |name: &str| -> std::result::Result<Option<Key>, RemoteError> {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => Key::parse(&v).map(Some).map_err(|why| {
                    RemoteError::config(format!("encryption key: the environment variable {name} {why}"))
                }),
                _ => Ok(None),
            }
        };
        let current = read(&enc.key_env)?.ok_or_else(|| {
            RemoteError::config(format!(
                "encryption key missing: the environment variable {} (encryption.key_env) is not set in the syncing process",
                enc.key_env
            ))
        })?;
        let mut old = Vec::new();
        for name in &enc.old_key_envs {
            if let Some(k) = read(name)? {
                old.push(k);
            }
        }
        let mut names = enc.key_env.clone();
        if !enc.old_key_envs.is_empty() {
            names.push_str(&format!(" or {}", enc.old_key_envs.join(", ")));
        }
        Ok(Keys { current, old, accept_plaintext: enc.accept_plaintext, names })
    }

    /// Keys from bytes, for the fuzz target (see `crate::fuzzing`).
    #[doc(hidden)]
    pub fn from_bytes(current: [u8; 32], accept_plaintext: bool) -> Keys {
        Keys { current: Key::from_bytes(current), old: Vec::new(), accept_plaintext, names: "the fuzz key".into() }
    }

    fn find(&self, id: &[u8]) -> Option<&Key> {
        std::iter::once(&self.current).chain(&self.old).find(|k| k.id == id)
    }
}

/// Chunks in an object of `plain` plaintext bytes (an empty file still has its last chunk).
fn chunks(plain: u64) -> u64 {
    plain.div_ceil(CHUNK as u64).max(1)
}

/// Length of the object holding `plain` bytes of plaintext.
pub fn sealed_len(plain: u64) -> u64 {
    HEADER_LEN as u64 + plain + TAG as u64 * chunks(plain)
}

/// A fresh random nonce prefix for a new object.
pub fn new_nonce() -> io::Result<[u8; NONCE_PREFIX]> {
    let mut n = [0u8; NONCE_PREFIX];
    getrandom::getrandom(&mut n).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(n)
}

fn header(key_id: &[u8; KEY_ID], nonce: &[u8; NONCE_PREFIX]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(key_id);
    h[16..].copy_from_slice(nonce);
    h
}

fn associated_data(header: &[u8], id: &str) -> Vec<u8> {
    let mut ad = header.to_vec();
    ad.extend_from_slice(id.as_bytes());
    ad
}

/// The sealed form of a plaintext source: `sealed_len(len)` bytes, readable from any offset.
pub struct SealedSource<'a> {
    plain: &'a dyn Source,
    stream: Stream,
    header: [u8; HEADER_LEN],
    ad: Vec<u8>,
}

impl<'a> SealedSource<'a> {
    pub fn new(plain: &'a dyn Source, key: &Key, nonce: &[u8; NONCE_PREFIX], id: &str) -> SealedSource<'a> {
        let header = header(&key.id, nonce);
        SealedSource { plain, stream: key.stream(nonce), ad: associated_data(&header, id), header }
    }

    /// Seals chunk `i` into `buf`.
    fn seal(&self, i: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let len = self.plain.len();
        let start = i * CHUNK as u64;
        let n = (len - start).min(CHUNK as u64) as usize;
        buf.clear();
        buf.resize(n, 0);
        let mut r = self.plain.reader(start, start + n as u64);
        r.read_exact(buf)?;
        let position = u32::try_from(i).map_err(|_| io::Error::other("file too large to encrypt"))?;
        self.stream
            .encrypt_in_place(position, i + 1 == chunks(len), &self.ad, buf)
            .map_err(|_| io::Error::other("encryption failed"))
    }
}

impl Source for SealedSource<'_> {
    fn len(&self) -> u64 {
        sealed_len(self.plain.len())
    }

    fn reader(&self, start: u64, end: u64) -> Box<dyn Read + Send + '_> {
        Box::new(SealedReader::new(self, start, end))
    }
}

/// Sealed chunks a pipelined reader's helper thread may hold ready (memory stays flat:
/// about this many 64 KiB chunks per reader, plus the one being sealed and the one read).
const AHEAD: usize = 4;

/// What a helper thread hands its reader: chunk `i` sealed, or why it could not be.
type Sealed = io::Result<(u64, Vec<u8>)>;

/// A sealed source whose readers seal the chunks ahead of the one being read on a helper
/// thread of `scope`, in order, so sealing overlaps the send instead of adding to it
/// (one sending thread, as for HTTP, would otherwise seal and send in series). The bytes
/// are those of [`SealedSource`]'s readers. A helper stops when its reader is dropped
/// (its next hand-over fails); the scope joins it.
pub struct Pipelined<'scope, 'env> {
    sealed: &'env SealedSource<'env>,
    scope: &'scope std::thread::Scope<'scope, 'env>,
}

impl<'env> SealedSource<'env> {
    pub fn pipelined<'scope>(&'env self, scope: &'scope std::thread::Scope<'scope, 'env>) -> Pipelined<'scope, 'env> {
        Pipelined { sealed: self, scope }
    }
}

impl Source for Pipelined<'_, '_> {
    fn len(&self) -> u64 {
        self.sealed.len()
    }

    fn reader(&self, start: u64, end: u64) -> Box<dyn Read + Send + '_> {
        let mut reader = SealedReader::new(self.sealed, start, end);
        let h = HEADER_LEN as u64;
        let (start, end) = (start.max(h), reader.end);
        if end <= start {
            return Box::new(reader);
        }
        let (first, last) = ((start - h) / SEALED_CHUNK as u64, (end - 1 - h) / SEALED_CHUNK as u64);
        if first == last {
            return Box::new(reader);
        }
        let (tx, rx) = crossbeam_channel::bounded::<Sealed>(AHEAD);
        let sealed = self.sealed;
        let helper = move || {
            // A panic stays on this thread: the reader sees the channel closed and seals
            // the rest itself (and the scope has nothing to re-raise).
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for i in first..=last {
                    let mut buf = Vec::with_capacity(SEALED_CHUNK);
                    let sealed = sealed.seal(i, &mut buf).map(|()| (i, buf));
                    let failed = sealed.is_err();
                    // Sent fails once the reader is gone: stop.
                    if tx.send(sealed).is_err() || failed {
                        break;
                    }
                }
            }));
        };
        // Without a thread, the reader seals each chunk itself, as SealedSource's do.
        if std::thread::Builder::new().name("attachments-seal".into()).spawn_scoped(self.scope, helper).is_ok() {
            reader.ahead = Some(rx);
        }
        Box::new(reader)
    }
}

struct SealedReader<'s, 'a> {
    src: &'s SealedSource<'a>,
    pos: u64,
    end: u64,
    /// The sealed chunk in `buf`.
    buf: Vec<u8>,
    chunk: Option<u64>,
    /// Chunks sealed ahead by a helper thread, in order (see [`Pipelined`]).
    ahead: Option<crossbeam_channel::Receiver<Sealed>>,
}

impl<'s, 'a> SealedReader<'s, 'a> {
    fn new(src: &'s SealedSource<'a>, start: u64, end: u64) -> Self {
        SealedReader { src, pos: start, end: end.min(src.len()), buf: Vec::with_capacity(SEALED_CHUNK), chunk: None, ahead: None }
    }

    /// Puts chunk `i` sealed in `buf`: the helper's, when it has it, else sealed here.
    fn load(&mut self, i: u64) -> io::Result<()> {
        match self.ahead.as_ref().map(|rx| rx.recv()) {
            Some(Ok(Ok((j, buf)))) if j == i => {
                self.buf = buf;
                return Ok(());
            }
            Some(Ok(Err(e))) => {
                // The helper stopped at its error; a later read seals here (and retries).
                self.ahead = None;
                return Err(e);
            }
            // No helper, or it stopped or ran out of step: seal here from now on.
            Some(_) => self.ahead = None,
            None => {}
        }
        self.src.seal(i, &mut self.buf)
    }
}

impl Read for SealedReader<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.end || out.is_empty() {
            return Ok(0);
        }
        let want = (self.end - self.pos).min(out.len() as u64) as usize;
        let h = HEADER_LEN as u64;
        let (from, avail): (&[u8], usize) = if self.pos < h {
            let at = self.pos as usize;
            (&self.src.header[at..], HEADER_LEN - at)
        } else {
            let i = (self.pos - h) / SEALED_CHUNK as u64;
            if self.chunk != Some(i) {
                self.chunk = None;
                self.load(i)?;
                self.chunk = Some(i);
            }
            let at = ((self.pos - h) % SEALED_CHUNK as u64) as usize;
            (&self.buf[at..], self.buf.len() - at)
        };
        let n = want.min(avail);
        out[..n].copy_from_slice(&from[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

enum OpenState {
    /// Reading the header.
    Header,
    /// An object without the header, passed through (accept_plaintext).
    Plain,
    Sealed { stream: Stream, ad: Vec<u8>, key_id: String },
    Failed,
}

/// A download sink that opens sealed chunks as they arrive and writes only
/// authenticated plaintext to `inner`. Call [`Opener::finish`] after the last byte.
pub struct Opener<'w, 'k> {
    inner: &'w mut dyn Write,
    keys: &'k Keys,
    id: String,
    state: OpenState,
    buf: Vec<u8>,
    position: u32,
    work: Vec<u8>,
    written: u64,
    /// The row's SHA-256 is that of the empty file: an empty object may be that file.
    empty_expected: bool,
    /// Why the stream was refused, told apart from failures of `inner` or of the network.
    pub failed: Option<RemoteError>,
}

impl<'w, 'k> Opener<'w, 'k> {
    pub fn new(inner: &'w mut dyn Write, keys: &'k Keys, id: &str) -> Self {
        Opener {
            inner,
            keys,
            id: id.to_string(),
            state: OpenState::Header,
            buf: Vec::with_capacity(2 * SEALED_CHUNK),
            position: 0,
            work: Vec::with_capacity(SEALED_CHUNK),
            written: 0,
            empty_expected: false,
            failed: None,
        }
    }

    /// The plaintext's SHA-256 the row already knows, if any (the store checks the bytes
    /// against it; here it only tells whether an empty object may be a plaintext file).
    pub fn expecting(mut self, sha256: Option<&str>) -> Self {
        self.empty_expected = sha256.is_some_and(|s| s.eq_ignore_ascii_case(EMPTY_SHA256));
        self
    }

    fn fail(&mut self, e: RemoteError) -> io::Error {
        let text = e.to_string();
        self.failed = Some(e);
        self.state = OpenState::Failed;
        io::Error::other(text)
    }

    fn refuse_plaintext(&mut self) -> io::Error {
        self.fail(RemoteError::integrity(
            "the remote object is not encrypted (no sqlite-attachments encryption header); \
             it is read only with \"accept_plaintext\": true",
        ))
    }

    /// Reads the header once enough bytes are buffered; `true` when decided.
    ///
    /// Only an object that does not start like the magic is plaintext (with
    /// `accept_plaintext`). One whose first bytes are the magic's with at most a quarter of
    /// them changed is a damaged header, and one that is a strict prefix of the magic was cut
    /// inside it: both are refused (`integrity`), never taken for plaintext, or a flipped bit
    /// would publish the ciphertext (or a stub) as the file. An empty object is an empty
    /// plaintext file only when the row's SHA-256 says the file is empty.
    fn take_header(&mut self, at_end: bool) -> io::Result<bool> {
        let seen = self.buf.len().min(MAGIC.len());
        if seen < MAGIC.len() && !at_end {
            return Ok(false);
        }
        let differing = self.buf[..seen].iter().zip(MAGIC).filter(|(a, b)| a != b).count();
        let intact = seen == MAGIC.len() && differing == 0;
        if intact && self.buf.len() < HEADER_LEN {
            if !at_end {
                return Ok(false);
            }
            return Err(self.fail(RemoteError::integrity("the remote object is cut short inside its encryption header")));
        }
        if !intact {
            if seen > 0 && differing <= seen / 4 {
                let why = if differing == 0 {
                    format!("the remote object ({seen} bytes) is cut short inside its encryption header")
                } else {
                    format!(
                        "the remote object's encryption header is damaged ({differing} of its first {seen} bytes differ from the format's); it is not taken for plaintext"
                    )
                };
                return Err(self.fail(RemoteError::integrity(why)));
            }
            if !self.keys.accept_plaintext {
                return Err(self.refuse_plaintext());
            }
            if seen == 0 && !self.empty_expected {
                return Err(self.fail(RemoteError::integrity(
                    "the remote object is empty: an encrypted object never is, and an empty plaintext object is accepted only when this device knows the file is empty (its SHA-256)",
                )));
            }
            self.state = OpenState::Plain;
            let data = std::mem::take(&mut self.buf);
            self.emit(&data)?;
            return Ok(true);
        }
        let header: [u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().expect("header length");
        let key_id = &header[8..16];
        let Some(key) = self.keys.find(key_id) else {
            let e = RemoteError::config(format!(
                "encryption key: the object was encrypted with key id {}, which none of {} holds; set the variable of that key (old_key_envs) in the syncing process (or, if no such key was ever used, the object's header was damaged)",
                hex::encode(key_id),
                self.keys.names
            ));
            return Err(self.fail(e));
        };
        let nonce: [u8; NONCE_PREFIX] = header[16..].try_into().expect("nonce length");
        self.state = OpenState::Sealed { stream: key.stream(&nonce), ad: associated_data(&header, &self.id), key_id: hex::encode(key_id) };
        self.buf.drain(..HEADER_LEN);
        Ok(true)
    }

    fn emit(&mut self, data: &[u8]) -> io::Result<()> {
        self.inner.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Opens the whole chunks in `buf` that cannot be the last one.
    fn open_ready(&mut self, last: bool) -> io::Result<()> {
        let mut off = 0;
        loop {
            let rest = self.buf.len() - off;
            let is_last = last && rest <= SEALED_CHUNK;
            if !(rest > SEALED_CHUNK || is_last) {
                break;
            }
            let n = rest.min(SEALED_CHUNK);
            let OpenState::Sealed { stream, ad, key_id } = &self.state else { break };
            let mut work = std::mem::take(&mut self.work);
            work.clear();
            work.extend_from_slice(&self.buf[off..off + n]);
            let opened = n >= TAG && stream.decrypt_in_place(self.position, is_last, ad, &mut work).is_ok();
            if !opened {
                let e = RemoteError::integrity(format!(
                    "the remote object does not decrypt (key id {key_id}, chunk {}): it was altered, cut short or reordered",
                    self.position
                ));
                return Err(self.fail(e));
            }
            self.emit(&work)?;
            self.work = work;
            off += n;
            if is_last {
                break;
            }
            self.position = self.position.checked_add(1).ok_or_else(|| io::Error::other("object too large"))?;
        }
        self.buf.drain(..off);
        Ok(())
    }

    /// Ends the stream: the last chunk must open as the last one. Returns the plaintext length.
    pub fn finish(&mut self) -> std::result::Result<u64, RemoteError> {
        let result = (|| {
            if matches!(self.state, OpenState::Header) {
                self.take_header(true)?;
            }
            match self.state {
                OpenState::Sealed { .. } => self.open_ready(true),
                _ => Ok(()),
            }
        })();
        match (result, self.failed.take()) {
            (_, Some(e)) => Err(e),
            (Err(e), None) => Err(RemoteError::local(format!("writing the download to the local folder: {e}"))),
            (Ok(()), None) => {
                self.inner.flush().map_err(|e| RemoteError::local(format!("writing the download to the local folder: {e}")))?;
                Ok(self.written)
            }
        }
    }
}

impl Write for Opener<'_, '_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.state {
            OpenState::Failed => return Err(io::Error::other("the download was refused")),
            OpenState::Plain => {
                self.emit(data)?;
                return Ok(data.len());
            }
            _ => {}
        }
        self.buf.extend_from_slice(data);
        if matches!(self.state, OpenState::Header) && !self.take_header(false)? {
            return Ok(data.len());
        }
        if matches!(self.state, OpenState::Sealed { .. }) {
            self.open_ready(false)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A plain file as an upload source.
pub struct FileSource {
    pub file: File,
    pub len: u64,
}

impl Source for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn reader(&self, start: u64, end: u64) -> Box<dyn Read + Send + '_> {
        Box::new(FileRange { file: &self.file, pos: start, end: end.min(self.len) })
    }
}

/// Reads `file` from `pos` to `end` with positioned reads, so ranges can be read concurrently.
struct FileRange<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.end.saturating_sub(self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the local file is shorter than when it was opened"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u8>);
    impl Source for Mem {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn reader(&self, start: u64, end: u64) -> Box<dyn Read + Send + '_> {
            Box::new(&self.0[start as usize..end as usize])
        }
    }

    fn keys(text: &str, accept_plaintext: bool) -> Keys {
        Keys { current: Key::parse(text).unwrap(), old: Vec::new(), accept_plaintext, names: "K".into() }
    }

    fn seal(data: &[u8], k: &Keys, id: &str) -> Vec<u8> {
        let plain = Mem(data.to_vec());
        let sealed = SealedSource::new(&plain, &k.current, &new_nonce().unwrap(), id);
        let mut out = Vec::new();
        sealed.reader(0, sealed.len()).read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, sealed_len(data.len() as u64));
        out
    }

    /// Feeds `object` in pieces of `step` bytes; returns the plaintext or the error.
    fn open(object: &[u8], k: &Keys, id: &str, step: usize) -> std::result::Result<Vec<u8>, RemoteError> {
        let mut got = Vec::new();
        let mut o = Opener::new(&mut got, k, id);
        for piece in object.chunks(step.max(1)) {
            if o.write_all(piece).is_err() {
                return Err(o.failed.take().unwrap());
            }
        }
        o.finish()?;
        Ok(got)
    }

    #[test]
    fn round_trips_at_every_size_around_chunk_boundaries() {
        let k = keys(&Key::generate().unwrap(), false);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let object = seal(&data, &k, "a1");
            if len > 0 {
                assert_ne!(&object[HEADER_LEN..HEADER_LEN + len.min(32)], &data[..len.min(32)]);
            }
            for step in [1, 1000, SEALED_CHUNK, 256 * 1024] {
                assert_eq!(open(&object, &k, "a1", step).unwrap(), data, "len {len} step {step}");
            }
        }
    }

    #[test]
    fn ranges_read_the_same_bytes_as_one_pass() {
        let k = keys(&Key::generate().unwrap(), false);
        let plain = Mem((0..3 * CHUNK + 5).map(|i| i as u8).collect());
        let sealed = SealedSource::new(&plain, &k.current, &[9; NONCE_PREFIX], "x");
        let mut whole = Vec::new();
        sealed.reader(0, sealed.len()).read_to_end(&mut whole).unwrap();
        let mut pieces = Vec::new();
        let cuts = [0, 7, HEADER_LEN as u64 + 3, 100_000, 100_001, 150_000, sealed.len()];
        for w in cuts.windows(2) {
            sealed.reader(w[0], w[1]).read_to_end(&mut pieces).unwrap();
        }
        assert_eq!(whole, pieces);
    }

    /// Reads every range of `cuts` (consecutive offsets) from `src`, in one buffer.
    fn read_ranges(src: &dyn Source, cuts: &[u64]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for w in cuts.windows(2) {
            src.reader(w[0], w[1]).read_to_end(&mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn pipelined_readers_give_the_same_bytes_as_direct_ones() {
        let k = keys(&Key::generate().unwrap(), false);
        for len in [0, 1, CHUNK, CHUNK + 1, 1024 * 1024 + 3] {
            let plain = Mem((0..len).map(|i| (i * 13 % 251) as u8).collect());
            let sealed = SealedSource::new(&plain, &k.current, &[3; NONCE_PREFIX], "p");
            let total = sealed.len();
            let c = SEALED_CHUNK as u64;
            let h = HEADER_LEN as u64;
            let mut cutsets = vec![vec![0, total], vec![0, 5, total], vec![0, h, total]];
            if total > h + 2 * c {
                cutsets.push(vec![0, h + 10, h + c, h + c + 1, h + 3 * c - 7, total]);
                cutsets.push(vec![0, 1000, h + 5 * c, h + 5 * c + 3, total - 17, total]);
            }
            for cuts in &cutsets {
                let direct = read_ranges(&sealed, cuts).unwrap();
                assert_eq!(direct.len() as u64, total);
                let pipelined = std::thread::scope(|scope| read_ranges(&sealed.pipelined(scope), cuts).unwrap());
                assert!(direct == pipelined, "len {len} cuts {cuts:?}");
            }
            // Small reads too (the sender's buffer need not match the chunks).
            let mut small = Vec::new();
            std::thread::scope(|scope| {
                let p = sealed.pipelined(scope);
                let mut r = p.reader(0, total);
                let mut piece = [0u8; 1000];
                loop {
                    let n = r.read(&mut piece).unwrap();
                    if n == 0 {
                        break;
                    }
                    small.extend_from_slice(&piece[..n]);
                }
            });
            assert!(small == read_ranges(&sealed, &[0, total]).unwrap(), "len {len} in small reads");
        }
    }

    /// A plaintext source that counts the chunk reads and fails the one at `fail_at`.
    struct Counting {
        data: Vec<u8>,
        reads: std::sync::atomic::AtomicUsize,
        fail_at: Option<u64>,
    }
    impl Source for Counting {
        fn len(&self) -> u64 {
            self.data.len() as u64
        }
        fn reader(&self, start: u64, end: u64) -> Box<dyn Read + Send + '_> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.fail_at == Some(start) {
                return Box::new(&self.data[start as usize..(start as usize + 10).min(end as usize)]);
            }
            Box::new(&self.data[start as usize..end as usize])
        }
    }

    #[test]
    fn a_pipelined_reader_seals_ahead_and_its_helper_stops_when_it_is_dropped() {
        let k = keys(&Key::generate().unwrap(), false);
        let plain = Counting { data: vec![1; 100 * CHUNK], reads: 0.into(), fail_at: None };
        let sealed = SealedSource::new(&plain, &k.current, &[4; NONCE_PREFIX], "d");
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        std::thread::scope(|outer| {
            outer.spawn(|| {
                std::thread::scope(|scope| {
                    let p = sealed.pipelined(scope);
                    let mut r = p.reader(0, p.len());
                    let mut first = vec![0u8; HEADER_LEN + 1];
                    r.read_exact(&mut first).unwrap();
                    // The helper seals the next chunks while this reader sends nothing.
                    let t = std::time::Instant::now();
                    while plain.reads.load(std::sync::atomic::Ordering::SeqCst) < 3 && t.elapsed().as_secs() < 10 {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    assert!(plain.reads.load(std::sync::atomic::Ordering::SeqCst) >= 3, "nothing sealed ahead");
                    drop(r);
                });
                let _ = done_tx.send(());
            });
            // The scope ends (the helper stopped) instead of hanging on a full channel.
            assert!(done_rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok(), "the helper did not stop");
        });
        // It stopped soon after the reader was dropped, not after sealing all 100 chunks.
        let reads = plain.reads.load(std::sync::atomic::Ordering::SeqCst);
        assert!(reads <= AHEAD + 3, "{reads} chunks sealed");
    }

    #[test]
    fn a_plaintext_read_error_surfaces_from_a_pipelined_reader_as_from_a_direct_one() {
        let k = keys(&Key::generate().unwrap(), false);
        let plain = Counting { data: vec![2; 6 * CHUNK], reads: 0.into(), fail_at: Some(3 * CHUNK as u64) };
        let sealed = SealedSource::new(&plain, &k.current, &[5; NONCE_PREFIX], "e");
        let mut direct = Vec::new();
        let de = sealed.reader(0, sealed.len()).read_to_end(&mut direct).unwrap_err();
        std::thread::scope(|scope| {
            let p = sealed.pipelined(scope);
            let mut got = Vec::new();
            let mut r = p.reader(0, p.len());
            let pe = r.read_to_end(&mut got).unwrap_err();
            assert_eq!((pe.kind(), pe.to_string()), (de.kind(), de.to_string()));
            assert!(got == direct, "bytes before the error differ");
            // As before, a later read seals the failed chunk again (and fails again here).
            assert_eq!(r.read(&mut [0u8; 10]).unwrap_err().kind(), de.kind());
        });
    }

    #[test]
    fn any_change_cut_or_reordering_is_refused() {
        let k = keys(&Key::generate().unwrap(), false);
        let data = vec![5u8; 2 * CHUNK + 10];
        let object = seal(&data, &k, "a1");
        let integrity = |o: &[u8], id: &str| {
            let e = open(o, &k, id, 4096).unwrap_err();
            assert_eq!(e.class, crate::remote::ErrorClass::Integrity, "{e}");
        };
        for at in [HEADER_LEN, HEADER_LEN + 1, HEADER_LEN + CHUNK + 20, object.len() - 1, 20] {
            let mut bad = object.clone();
            bad[at] ^= 1;
            integrity(&bad, "a1");
        }
        // Cut at a chunk boundary, inside a chunk, inside the header.
        integrity(&object[..HEADER_LEN + SEALED_CHUNK], "a1");
        integrity(&object[..HEADER_LEN + 2 * SEALED_CHUNK], "a1");
        integrity(&object[..object.len() - 1], "a1");
        integrity(&object[..HEADER_LEN + 5], "a1");
        // Chunks swapped.
        let mut swapped = object[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&object[HEADER_LEN + SEALED_CHUNK..HEADER_LEN + 2 * SEALED_CHUNK]);
        swapped.extend_from_slice(&object[HEADER_LEN..HEADER_LEN + SEALED_CHUNK]);
        swapped.extend_from_slice(&object[HEADER_LEN + 2 * SEALED_CHUNK..]);
        integrity(&swapped, "a1");
        // The same object under another id.
        integrity(&object, "a2");
        // Bytes appended.
        let mut longer = object.clone();
        longer.extend_from_slice(&[0; 40]);
        integrity(&longer, "a1");
    }

    /// Random damage of every kind: never accepted, and what reached the sink before the
    /// refusal is always a prefix of the true plaintext (only authenticated bytes leave).
    #[test]
    fn random_damage_is_refused_and_never_emits_garbage() {
        let k = keys(&Key::generate().unwrap(), false);
        let data: Vec<u8> = (0..CHUNK + 300).map(|_| fastrand::u8(..)).collect();
        let object = seal(&data, &k, "r1");
        let mut rng = fastrand::Rng::with_seed(15);
        for round in 0..150 {
            let mut bad = object.clone();
            match round % 4 {
                0 => bad[rng.usize(..object.len())] ^= 1 << rng.u8(0..8),
                1 => bad.truncate(rng.usize(..object.len())),
                2 => bad.insert(rng.usize(..=object.len()), rng.u8(..)),
                _ => {
                    bad.remove(rng.usize(..object.len()));
                }
            }
            let mut got = Vec::new();
            let mut o = Opener::new(&mut got, &k, "r1");
            let accepted = o.write_all(&bad).is_ok() && o.finish().is_ok();
            assert!(!accepted, "round {round}: damaged object accepted");
            assert!(got.len() <= data.len() && got[..] == data[..got.len()], "round {round}: unauthenticated bytes written");
        }
    }

    #[test]
    fn keys_are_chosen_by_id_and_plaintext_only_when_accepted() {
        let (a, b) = (Key::generate().unwrap(), Key::generate().unwrap());
        let object = seal(b"hello", &keys(&a, false), "x");
        // Rotated: b is current, a is old.
        let rotated = Keys { current: Key::parse(&b).unwrap(), old: vec![Key::parse(&a).unwrap()], accept_plaintext: false, names: "B or A".into() };
        assert_eq!(open(&object, &rotated, "x", 3).unwrap(), b"hello");
        let e = open(&object, &keys(&b, false), "x", 3).unwrap_err();
        assert_eq!(e.class, crate::remote::ErrorClass::Config);
        assert!(e.to_string().contains(&hex::encode(Key::parse(&a).unwrap().id)) && !e.to_string().contains(&a), "{e}");
        for plain in [&b"plain text"[..], b"SQL-dump", b"SQ\nxyz", b"hello, world"] {
            assert_eq!(open(plain, &keys(&a, true), "x", 2).unwrap(), plain);
            assert_eq!(open(plain, &keys(&a, false), "x", 2).unwrap_err().class, crate::remote::ErrorClass::Integrity);
        }
        // The magic and then too little for a header: a cut object, not plaintext.
        assert_eq!(open(b"SQLATTE\x01abc", &keys(&a, true), "x", 2).unwrap_err().class, crate::remote::ErrorClass::Integrity);
    }

    /// accept_plaintext takes objects without a header as they are, but never one whose
    /// header was damaged or cut: those would publish ciphertext or a stub as the file.
    #[test]
    fn a_damaged_or_cut_header_is_never_taken_for_plaintext() {
        let a = Key::generate().unwrap();
        let lenient = keys(&a, true);
        let object = seal(&[7u8; 3000], &lenient, "x");
        let integrity = |o: &[u8], what: &str| {
            let mut got = Vec::new();
            let mut op = Opener::new(&mut got, &lenient, "x");
            let r = op.write_all(o).map_err(|_| op.failed.take().unwrap()).and_then(|()| op.finish().map(|_| ()));
            let e = r.expect_err(what);
            assert_eq!(e.class, crate::remote::ErrorClass::Integrity, "{what}: {e}");
            assert!(got.is_empty(), "{what}: bytes written");
        };
        // One or two bytes of the magic changed (the version byte too): a damaged header.
        for at in 0..MAGIC.len() {
            let mut bad = object.clone();
            bad[at] ^= 1;
            integrity(&bad, &format!("flip {at}"));
            bad[(at + 3) % MAGIC.len()] ^= 0x80;
            integrity(&bad, &format!("flip {at} and {}", (at + 3) % MAGIC.len()));
        }
        // Cut inside the magic, or to nothing: an encrypted object is never that short.
        for len in 0..MAGIC.len() {
            integrity(&object[..len], &format!("cut to {len}"));
        }
        // An empty object is an empty plaintext file only when the row says the file is empty.
        let empty_sha = hex::encode(Sha256::digest(b""));
        let mut got = Vec::new();
        let mut op = Opener::new(&mut got, &lenient, "x").expecting(Some(&empty_sha));
        assert_eq!(op.finish().unwrap(), 0);
        // Without accept_plaintext the same objects are refused too.
        let mut bad = object.clone();
        bad[0] ^= 1;
        assert_eq!(open(&bad, &keys(&a, false), "x", 5).unwrap_err().class, crate::remote::ErrorClass::Integrity);
    }

    /// A key id nobody here holds is `config` (what a device lacking the key sees); the
    /// message says a damaged header is the other cause.
    #[test]
    fn an_unknown_key_id_is_config_and_says_the_header_may_be_damaged() {
        let lenient = keys(&Key::generate().unwrap(), true);
        let mut object = seal(b"some bytes", &lenient, "x");
        object[MAGIC.len() + 2] ^= 1;
        let e = open(&object, &lenient, "x", 7).unwrap_err();
        assert_eq!(e.class, crate::remote::ErrorClass::Config, "{e}");
        assert!(e.to_string().contains("damaged"), "{e}");
    }

    #[test]
    fn keys_parse_from_their_text_and_errors_never_show_it() {
        let text = Key::generate().unwrap();
        assert_eq!(text.len(), 44);
        assert_eq!(Key::parse(&text).unwrap().id, Key::parse(&format!(" {text}\n")).unwrap().id);
        assert_ne!(Key::parse(&text).unwrap().id, Key::parse(&Key::generate().unwrap()).unwrap().id);
        assert!(Key::parse("c2hvcnQ=").unwrap_err().contains("32 bytes"));
        assert!(!format!("{:?}", Key::parse(&text).unwrap()).contains(&text));
    }
}
