//! `signed+http(s)://backend/base`: the signed-URL pattern. The app's backend
//! hands out short-lived URLs; the bytes then go straight to storage.
//!   POST {base}/upload-url {"id","filename","contentType"} -> {"uploadUrl"}, then PUT
//!   GET  {base}/{id}/download-url -> {"downloadUrl"}, then GET
//!   DELETE {base}/{id}
//! The bearer token (ATTACHMENTS_HTTP_TOKEN) goes to the backend only, never to storage.

use serde_json::json;

use super::http::bearer_from_env;
use super::transport::{Conditional, Transport};
use super::{ErrorClass, ErrorKind, Fetched, Object, Progress, RemoteError, RemoteStorage, Sink, Source};

pub struct SignedRemote {
    base: String,
    auth: Vec<(&'static str, String)>,
    transport: Transport,
}

impl SignedRemote {
    pub fn new(base: String) -> SignedRemote {
        SignedRemote { base, auth: bearer_from_env(), transport: Transport::new() }
    }
}

fn url_field(answer: &serde_json::Value, field: &str) -> Result<String, RemoteError> {
    match answer.get(field).and_then(|v| v.as_str()) {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => Ok(u.to_string()),
        _ => Err(RemoteError::new(ErrorKind::Permanent, format!("the signing backend's answer has no usable \"{field}\"")).with_class(ErrorClass::Server)),
    }
}

impl RemoteStorage for SignedRemote {
    fn upload(&self, obj: &Object, source: &dyn Source, progress: Progress) -> Result<(), RemoteError> {
        let body = json!({"id": obj.id, "filename": obj.filename, "contentType": obj.media_type});
        let answer = self.transport.post_json(&format!("{}/upload-url", self.base), &self.auth, &body)?;
        let url = url_field(&answer, "uploadUrl")?;
        self.transport.put_file(&url, &[("Content-Type", obj.media_type.to_string())], source, progress).map(|_| ())
    }

    fn download(&self, obj: &Object, out: &mut dyn Sink, progress: Progress) -> Result<Fetched, RemoteError> {
        let answer = self.transport.get_json(&format!("{}/{}/download-url", self.base, obj.id), &self.auth)?;
        let url = url_field(&answer, "downloadUrl")?;
        // Storage behind a backend may be S3, which documents If-Match rather than If-Range:
        // If-Range is sent, and the answer's own ETag is compared, so a changed object never mixes.
        self.transport.get_to(&url, &[], obj.media_type, out, progress, Conditional::IfRange)
    }

    fn delete(&self, obj: &Object) -> Result<(), RemoteError> {
        self.transport.delete(&format!("{}/{}", self.base, obj.id), &self.auth)
    }
}
