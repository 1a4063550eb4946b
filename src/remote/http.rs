//! `http(s)://host/prefix/`: plain `PUT`/`GET`/`DELETE` of `{prefix}{filename}`
//! (nginx WebDAV, or any presigning proxy). Optional bearer token from
//! `ATTACHMENTS_HTTP_TOKEN`, read from the environment, never stored.

use super::transport::{Conditional, Transport};
use super::{Fetched, Object, Progress, RemoteError, RemoteStorage, Sink, Source};

pub struct HttpRemote {
    base: String,
    auth: Vec<(&'static str, String)>,
    transport: Transport,
}

impl HttpRemote {
    pub fn new(base: String) -> HttpRemote {
        HttpRemote { base, auth: bearer_from_env(), transport: Transport::new() }
    }

    fn url(&self, obj: &Object) -> String {
        // File names are checked ASCII (letters, digits, '-', '_', '.'): nothing to escape.
        format!("{}{}", self.base, obj.filename)
    }
}

/// `Authorization: Bearer …` when `ATTACHMENTS_HTTP_TOKEN` is set.
pub fn bearer_from_env() -> Vec<(&'static str, String)> {
    match std::env::var("ATTACHMENTS_HTTP_TOKEN") {
        Ok(token) if !token.is_empty() => vec![("Authorization", format!("Bearer {token}"))],
        _ => Vec::new(),
    }
}

impl RemoteStorage for HttpRemote {
    fn upload(&self, obj: &Object, source: &dyn Source, progress: Progress) -> Result<(), RemoteError> {
        let mut headers = self.auth.clone();
        headers.push(("Content-Type", obj.media_type.to_string()));
        self.transport.put_file(&self.url(obj), &headers, source, progress).map(|_| ())
    }

    fn download(&self, obj: &Object, out: &mut dyn Sink, progress: Progress) -> Result<Fetched, RemoteError> {
        self.transport.get_to(&self.url(obj), &self.auth, obj.media_type, out, progress, Conditional::IfRange)
    }

    fn delete(&self, obj: &Object) -> Result<(), RemoteError> {
        self.transport.delete(&self.url(obj), &self.auth)
    }
}
