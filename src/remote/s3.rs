//! `s3://bucket/prefix`: the S3 API with SigV4 request signing by `rusty-s3`
//! (presigned URLs, then plain streaming requests). `s3_endpoint` selects an
//! S3-compatible store with path-style addressing. Credentials come only from
//! AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.
//!
//! Files above MULTIPART_THRESHOLD go up in parts. A failed multipart upload
//! hands its upload id and the ETags of the parts stored so far back
//! (RemoteError::resume); the next attempt sends only the missing parts.
//! Whenever that state is dropped (the row is deleted, S3 no longer knows the
//! upload, the part size changed, the file now goes up in one PUT) the upload
//! is aborted, so no stored parts are left behind to be billed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use rusty_s3::actions::{CreateMultipartUpload, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};

use super::transport::{Conditional, Transport};
use super::{ErrorClass, ErrorKind, Fetched, Object, Progress, RemoteError, RemoteStorage, Sink, Source};
use crate::error::{Error, Result};

/// Presigned URLs are made just before use; this only bounds clock skew and slow starts.
const URL_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Files larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Part size, grown for huge files so they fit S3's 10,000-part limit.
const PART_SIZE: u64 = 16 * 1024 * 1024;
/// ETags of the parts stored by one attempt, and its first failure.
type PartsSent = (Vec<(u64, String)>, Option<RemoteError>);

/// Parts in flight at once for one file.
const PARALLEL_PARTS: usize = 4;

pub struct S3Remote {
    bucket: Bucket,
    prefix: String,
    credentials: Option<Credentials>,
    transport: Transport,
}

impl S3Remote {
    pub fn new(bucket: &str, prefix: &str, endpoint: Option<&str>, region: &str) -> Result<S3Remote> {
        let (url, style) = match endpoint {
            Some(ep) => (ep.to_string(), UrlStyle::Path),
            None => (format!("https://s3.{region}.amazonaws.com"), UrlStyle::VirtualHost),
        };
        let url = url.parse().map_err(|_| Error::config("s3_endpoint", "is not a valid URL"))?;
        let bucket = Bucket::new(url, style, bucket.to_string(), region.to_string())
            .map_err(|e| Error::config("remote", format!("unusable S3 bucket: {e}")))?;
        Ok(S3Remote { bucket, prefix: prefix.to_string(), credentials: credentials_from_env(), transport: Transport::new() })
    }

    fn key(&self, obj: &Object) -> String {
        format!("{}{}", self.prefix, obj.filename)
    }

    fn credentials(&self) -> Result<&Credentials, RemoteError> {
        self.credentials.as_ref().ok_or_else(|| {
            RemoteError::new(
                ErrorKind::Auth,
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment of the syncing process",
            )
        })
    }

    fn put_single(&self, obj: &Object, source: &dyn Source, progress: Progress) -> Result<(), RemoteError> {
        let key = self.key(obj);
        let mut action = self.bucket.put_object(Some(self.credentials()?), &key);
        let mut headers = vec![("Content-Type", obj.media_type.to_string())];
        // The store checks the bytes against our SHA-256 and refuses a mismatch.
        if let Some(b64) = obj.sha256.and_then(hex_to_base64) {
            action.headers_mut().insert("x-amz-checksum-sha256", b64.clone());
            headers.push(("x-amz-checksum-sha256", b64));
        }
        let url = action.sign(URL_LIFETIME);
        self.transport.put_file(url.as_str(), &headers, source, progress).map(|_| ())
    }

    fn put_multipart(&self, obj: &Object, source: &dyn Source, progress: Progress) -> Result<(), RemoteError> {
        let len = source.len();
        let creds = self.credentials()?;
        let key = self.key(obj);
        let part_size = PART_SIZE.max(len.div_ceil(10_000));
        let parts = len.div_ceil(part_size).max(1);
        // Resume the earlier attempt's upload: its id and the parts it stored.
        let mut state = match obj.resume.and_then(Multipart::parse) {
            Some(state) if state.part_size == part_size => state,
            earlier => {
                if let Some(old) = earlier {
                    // Its parts cannot be reused: abort it before starting over.
                    self.abort_quietly(&key, &old.upload_id);
                }
                let url = self.bucket.create_multipart_upload(Some(creds), &key).sign(URL_LIFETIME);
                let headers = [("Content-Type", obj.media_type.to_string())];
                let answer = self.transport.call_text("POST", url.as_str(), &headers, "")?;
                let upload_id = CreateMultipartUpload::parse_response(&answer)
                    .map_err(|_| RemoteError::new(ErrorKind::Transient, "S3 gave no upload id").with_class(ErrorClass::Server))?
                    .upload_id()
                    .to_string();
                Multipart { upload_id, part_size, etags: Vec::new() }
            }
        };
        // Missing parts go up PARALLEL_PARTS at a time, each read straight from its
        // offset in the file (no shared cursor, nothing buffered beyond the socket).
        let part_len = |n: u64| part_size.min(len - (n - 1) * part_size);
        let missing: Vec<u64> = (1..=parts).filter(|n| state.etag(*n).is_none()).collect();
        let sent = AtomicU64::new((1..=parts).filter(|n| state.etag(*n).is_some()).map(part_len).sum());
        let next = AtomicUsize::new(0);
        let outcome: Mutex<PartsSent> = Mutex::new((Vec::new(), None));
        let upload_id = state.upload_id.clone();
        std::thread::scope(|scope| {
            for _ in 0..PARALLEL_PARTS.min(missing.len()) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let failed = outcome.lock().map(|o| o.1.is_some()).unwrap_or(true);
                    let Some(&n) = missing.get(i).filter(|_| !failed) else { break };
                    let offset = (n - 1) * part_size;
                    let mine = AtomicU64::new(0);
                    let part_progress = |done: u64| {
                        let delta = done.saturating_sub(mine.swap(done, Ordering::Relaxed));
                        progress(sent.fetch_add(delta, Ordering::Relaxed) + delta)
                    };
                    let url = self.bucket.upload_part(Some(creds), &key, n as u16, &upload_id).sign(URL_LIFETIME);
                    // A part is big: let the store refuse it (an upload id it no longer knows)
                    // before the body goes, so its answer is read instead of a cut connection.
                    let expect = [("Expect", "100-continue".to_string())];
                    let mut part = source.reader(offset, offset + part_len(n));
                    let result = self
                        .transport
                        .put_reader(url.as_str(), &expect, &mut part, part_len(n), &part_progress)
                        .and_then(|headers| {
                            headers.get("etag").and_then(|v| v.to_str().ok()).map(str::to_string).ok_or_else(|| {
                                RemoteError::new(ErrorKind::Transient, "S3 answered a part without an ETag").with_class(ErrorClass::Server)
                            })
                        });
                    if let Ok(mut o) = outcome.lock() {
                        match result {
                            Ok(etag) => o.0.push((n, etag)),
                            Err(e) => {
                                o.1.get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        let (etags, failure) = outcome.into_inner().unwrap_or_else(|e| e.into_inner());
        state.etags.extend(etags);
        // A failure that drops the state also aborts the upload (S3 may still hold parts).
        let fail = |state: &Multipart, e: RemoteError| {
            let e = state.keep_unless_gone(e);
            if e.resume.is_none() {
                self.abort_quietly(&key, &state.upload_id);
            }
            e
        };
        if let Some(e) = failure {
            return Err(fail(&state, e));
        }
        state.etags.sort();
        let complete = self.bucket.complete_multipart_upload(
            Some(creds),
            &key,
            &state.upload_id,
            state.etags.iter().map(|(_, e)| e.as_str()),
        );
        let url = complete.sign(URL_LIFETIME);
        match self.transport.call_text("POST", url.as_str(), &[], &complete.body()) {
            // S3 may answer 200 and still report an error in the body.
            Ok(answer) if answer.contains("<Error>") => Err(fail(
                &state,
                RemoteError::new(ErrorKind::Transient, "S3 could not complete the multipart upload")
                    .with_class(ErrorClass::Server),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(fail(&state, e)),
        }
    }

    /// AbortMultipartUpload: S3 drops the parts stored so far. An upload it no
    /// longer knows counts as aborted.
    fn abort(&self, key: &str, upload_id: &str) -> Result<(), RemoteError> {
        let url = self.bucket.abort_multipart_upload(Some(self.credentials()?), key, upload_id).sign(URL_LIFETIME);
        self.transport.delete(url.as_str(), &[])
    }

    /// Aborts where nothing is left to retry it; a failure is only logged (S3's
    /// lifecycle rule for incomplete uploads is the backstop).
    fn abort_quietly(&self, key: &str, upload_id: &str) {
        match self.abort(key, upload_id) {
            Ok(()) => log::debug!("aborted an abandoned multipart upload of {key}"),
            Err(e) => log::warn!("could not abort an abandoned multipart upload of {key}: {e}"),
        }
    }

    /// Aborts the multipart upload an earlier attempt left in `obj.resume`, if any.
    /// On failure the resume state is handed back, so the abort is tried again.
    fn abort_resumed(&self, obj: &Object) -> Result<(), RemoteError> {
        let Some(state) = obj.resume.and_then(Multipart::parse) else { return Ok(()) };
        self.abort(&self.key(obj), &state.upload_id).map_err(|mut e| {
            e.resume = obj.resume.map(str::to_string);
            e
        })
    }
}

/// A multipart upload in progress: what the next attempt needs to send only the missing parts.
/// Kept in the row's `upload_resume` as JSON.
pub(super) struct Multipart {
    upload_id: String,
    part_size: u64,
    etags: Vec<(u64, String)>,
}

impl Multipart {
    pub(super) fn parse(text: &str) -> Option<Multipart> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let etags = v["etags"]
            .as_array()?
            .iter()
            .map(|p| Some((p[0].as_u64()?, p[1].as_str()?.to_string())))
            .collect::<Option<Vec<_>>>()?;
        Some(Multipart { upload_id: v["upload_id"].as_str()?.to_string(), part_size: v["part_size"].as_u64()?, etags })
    }

    fn etag(&self, n: u64) -> Option<&str> {
        self.etags.iter().find(|(num, _)| *num == n).map(|(_, e)| e.as_str())
    }

    /// Attaches this state to a failure so the next attempt resumes, unless the
    /// store says the upload no longer exists (then the next attempt starts over).
    pub(super) fn keep_unless_gone(&self, mut e: RemoteError) -> RemoteError {
        if e.kind != ErrorKind::NotFound {
            e.resume = Some(
                serde_json::json!({"upload_id": self.upload_id, "part_size": self.part_size, "etags": self.etags})
                    .to_string(),
            );
        }
        e
    }
}

fn credentials_from_env() -> Option<Credentials> {
    let key = std::env::var("AWS_ACCESS_KEY_ID").ok().filter(|s| !s.is_empty())?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok().filter(|s| !s.is_empty())?;
    Some(match std::env::var("AWS_SESSION_TOKEN").ok().filter(|s| !s.is_empty()) {
        Some(token) => Credentials::new_with_token(key, secret, token),
        None => Credentials::new(key, secret),
    })
}

pub(super) fn hex_to_base64(hex_digest: &str) -> Option<String> {
    hex::decode(hex_digest).ok().filter(|b| b.len() == 32).map(|b| base64::engine::general_purpose::STANDARD.encode(b))
}

impl RemoteStorage for S3Remote {
    fn upload(&self, obj: &Object, source: &dyn Source, progress: Progress) -> Result<(), RemoteError> {
        if source.len() > MULTIPART_THRESHOLD {
            self.put_multipart(obj, source, progress)
        } else {
            // The file shrank below the threshold since an interrupted multipart attempt.
            if let Some(old) = obj.resume.and_then(Multipart::parse) {
                self.abort_quietly(&self.key(obj), &old.upload_id);
            }
            self.put_single(obj, source, progress)
        }
    }

    fn abandon(&self, obj: &Object) {
        if let Some(old) = obj.resume.and_then(Multipart::parse) {
            self.abort_quietly(&self.key(obj), &old.upload_id);
        }
    }

    fn download(&self, obj: &Object, out: &mut dyn Sink, progress: Progress) -> Result<Fetched, RemoteError> {
        let key = self.key(obj);
        let mut action = self.bucket.get_object(Some(self.credentials()?), &key);
        // Ask for the stored SHA-256 so the download can be checked against it.
        action.headers_mut().insert("x-amz-checksum-mode", "ENABLED");
        let url = action.sign(URL_LIFETIME);
        // A resumed download asks for the rest with If-Match (what S3 documents for GetObject).
        self.transport.get_to(url.as_str(), &[("x-amz-checksum-mode", "ENABLED".to_string())], obj.media_type, out, progress, Conditional::IfMatch)
    }

    fn delete(&self, obj: &Object) -> Result<(), RemoteError> {
        // An upload interrupted before the delete leaves parts behind unless aborted.
        self.abort_resumed(obj)?;
        let key = self.key(obj);
        let url = self.bucket.delete_object(Some(self.credentials()?), &key).sign(URL_LIFETIME);
        self.transport.delete(url.as_str(), &[])
    }
}
