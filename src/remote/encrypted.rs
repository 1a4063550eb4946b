//! End-to-end encryption around any backend: uploads send the sealed form of the
//! local file, downloads open it while it streams into the staged file (see
//! `crate::crypt` for the format). The backend sees only ciphertext: its length is
//! the Content-Length, and no plaintext checksum is handed to it (S3 gets no
//! `x-amz-checksum-sha256`; the AEAD tags authenticate every chunk instead). The
//! queue's SHA-256 stays the plaintext's and is checked by the store as always.
//!
//! Keys are read from the environment at each transfer, so a key set after the
//! worker started is used by the next attempt; a missing one fails the row with a
//! `config` error, retried with the long backoff.
//!
//! Resuming an S3 multipart upload needs the same ciphertext as the attempt that sent
//! the first parts. The object's nonce is kept with the backend's resume state, next
//! to the key id and the plaintext's SHA-256; it is reused only when both match (the
//! same bytes under the same key give the same ciphertext, so nothing leaks). Any
//! other resume state is abandoned (the multipart upload aborted) and the upload
//! starts over with a fresh nonce.

use std::io::Write;

use serde_json::json;

use super::{Fetched, Object, Progress, RemoteError, RemoteStorage, Sink, Source, Validator};
use crate::config::Encryption;
use crate::crypt::{self, Keys, Opener, SealedSource, NONCE_PREFIX};

/// Pieces of ciphertext (at most 256 KiB each) between the network thread and the opener.
const PIPELINE: usize = 8;

/// Hands what the backend downloads to the thread that opens it.
struct Handover(crossbeam_channel::Sender<Vec<u8>>);

impl Write for Handover {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the download was refused"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink for Handover {}

pub struct EncryptedRemote {
    inner: Box<dyn RemoteStorage>,
    settings: Encryption,
}

impl EncryptedRemote {
    pub fn new(inner: Box<dyn RemoteStorage>, settings: Encryption) -> EncryptedRemote {
        EncryptedRemote { inner, settings }
    }
}

/// What an encrypted upload keeps for its next attempt.
struct Resume {
    key_id: String,
    nonce: [u8; NONCE_PREFIX],
    sha256: String,
    inner: String,
}

impl Resume {
    fn parse(text: &str) -> Option<Resume> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let e = v.get("encrypted")?;
        Some(Resume {
            key_id: e["key_id"].as_str()?.to_string(),
            nonce: hex::decode(e["nonce"].as_str()?).ok()?.try_into().ok()?,
            sha256: e["sha256"].as_str()?.to_string(),
            inner: e["inner"].as_str()?.to_string(),
        })
    }

    fn to_text(&self) -> String {
        json!({"encrypted": {"key_id": self.key_id, "nonce": hex::encode(self.nonce), "sha256": self.sha256, "inner": self.inner}})
            .to_string()
    }
}

/// `obj` as the backend sees it: no plaintext checksum, and its own resume state.
fn inner_object<'a>(obj: &Object<'a>, resume: Option<&'a str>) -> Object<'a> {
    Object { sha256: None, resume, ..obj.clone() }
}

impl RemoteStorage for EncryptedRemote {
    fn upload(&self, obj: &Object, source: &dyn Source, progress: Progress) -> Result<(), RemoteError> {
        let keys = Keys::from_env(&self.settings)?;
        let key_id = hex::encode(keys.current.id);
        let earlier = obj.resume.and_then(Resume::parse);
        let reusable = earlier
            .as_ref()
            .filter(|r| r.key_id == key_id && obj.sha256.is_some_and(|s| s.eq_ignore_ascii_case(&r.sha256)));
        let (nonce, inner_resume) = match reusable {
            Some(r) => (r.nonce, Some(r.inner.as_str())),
            None => {
                // Parts sealed under another nonce (or sent in plaintext) cannot be continued.
                if let Some(old) = obj.resume {
                    let inner = earlier.as_ref().map(|r| r.inner.as_str()).unwrap_or(old);
                    self.inner.abandon(&inner_object(obj, Some(inner)));
                }
                let nonce = crypt::new_nonce().map_err(|e| RemoteError::local(format!("no random nonce: {e}")))?;
                (nonce, None)
            }
        };
        let sealed = SealedSource::new(source, &keys.current, &nonce, obj.id);
        // Chunks are sealed ahead on helper threads of this scope, overlapping the send.
        let sent = std::thread::scope(|scope| self.inner.upload(&inner_object(obj, inner_resume), &sealed.pipelined(scope), progress));
        sent.map_err(|mut e| {
            // Only a plaintext with a known SHA-256 may reuse its nonce.
            e.resume = match (e.resume.take(), obj.sha256) {
                (Some(inner), Some(sha256)) => Some(Resume { key_id, nonce, sha256: sha256.to_string(), inner }.to_text()),
                (Some(inner), None) => {
                    self.inner.abandon(&inner_object(obj, Some(&inner)));
                    None
                }
                (None, _) => None,
            };
            e
        })
    }

    /// The backend reads the network on a thread of its own and hands the ciphertext over
    /// (at most `PIPELINE` pieces in flight, so memory stays flat); this thread opens it and
    /// writes the plaintext, so decryption overlaps the transfer instead of adding to it.
    ///
    /// Encrypted downloads do not resume: whatever an earlier attempt left is dropped and
    /// the whole object is asked for (the backend sees a sink that holds nothing).
    fn download(&self, obj: &Object, out: &mut dyn Sink, progress: Progress) -> Result<Fetched, RemoteError> {
        let keys = Keys::from_env(&self.settings)?;
        out.begin(0, &Validator::default())
            .map_err(|e| RemoteError::local(format!("writing the download to the local folder: {e}")))?;
        let mut opener = Opener::new(out, &keys, obj.id).expecting(obj.sha256);
        let inner_obj = inner_object(obj, None);
        let fetched = std::thread::scope(|scope| {
            let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(PIPELINE);
            let reader = scope.spawn(move || self.inner.download(&inner_obj, &mut Handover(tx), progress));
            for piece in &rx {
                if opener.write_all(&piece).is_err() {
                    // Refused, or the local write failed: stop the transfer (its next send fails).
                    break;
                }
            }
            drop(rx);
            reader.join().unwrap_or_else(|_| Err(RemoteError::local("the download thread failed")))
        });
        match fetched {
            Err(e) => Err(opener.failed.take().unwrap_or(e)),
            // The backend checked the ciphertext's length; the store checks the plaintext
            // against the row's SHA-256 when it has one. A checksum the remote claims is
            // the ciphertext's, so it is not handed on.
            Ok(_) => opener.finish().map(|length| Fetched { length: Some(length), sha256: None }),
        }
    }

    fn delete(&self, obj: &Object) -> Result<(), RemoteError> {
        let earlier = obj.resume.and_then(Resume::parse);
        let inner = earlier.as_ref().map(|r| r.inner.as_str()).or(obj.resume);
        self.inner.delete(&inner_object(obj, inner)).map_err(|mut e| {
            // Keep our wrapping, so a later attempt still finds the nonce it belongs to.
            if let (Some(r), Some(inner)) = (&earlier, e.resume.take()) {
                e.resume = Some(Resume { inner, key_id: r.key_id.clone(), nonce: r.nonce, sha256: r.sha256.clone() }.to_text());
            }
            e
        })
    }

    fn abandon(&self, obj: &Object) {
        let earlier = obj.resume.and_then(Resume::parse);
        let inner = earlier.as_ref().map(|r| r.inner.as_str()).or(obj.resume);
        self.inner.abandon(&inner_object(obj, inner));
    }
}
