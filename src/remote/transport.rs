//! Blocking HTTP shared by the network remotes: one `ureq` agent (keep-alive
//! connections are reused), streaming bodies, and the mapping from HTTP
//! outcomes to the retry policy's error kinds and the contract's classes.
//! Error text never includes a URL, since signed URLs carry credentials in
//! their query string.
//!
//! Redirects are never followed by ureq. A write (PUT, POST, DELETE) answered
//! with one is a `config` error: the endpoint is wrong or behind a login, and
//! following it as a GET (what clients do with 301/302/303) would count a login
//! page's 200 as the upload. A GET follows 301, 302, 307 and 308 (they keep the
//! method and name the same resource) up to MAX_REDIRECTS times, never to
//! plain http from https, and drops the Authorization header when the redirect
//! leaves the origin. A 303 names another resource: not followed. A download
//! that was redirected and ends in an HTML page while the attachment is not
//! HTML is refused as a login page (`config`).
//!
//! A download succeeds only as `200` with a body whose end can be told from a
//! cut connection (Content-Length or chunked), that many bytes, and no
//! Content-Encoding (we never ask for one, so a gzip body is not the file).

use std::io::Read;
use std::time::SystemTime;

use ureq::http::{HeaderMap, Response, StatusCode};
use ureq::unversioned::transport::Connector;
use ureq::{Agent, Body, SendBody};

use super::limits::{Limits, Pace, RateReader};
use super::{copy_with_progress, retry_after, ErrorClass, ErrorKind, Fetched, Held, Progress, ProgressReader, RemoteError, Sink, Source, Validator};

/// How a resumed download makes sure the rest belongs to the same object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    /// `If-Range` (RFC 9110): a changed object comes back whole, as a 200.
    IfRange,
    /// `If-Match` (S3 documents this one for GetObject): a changed object gets a 412.
    IfMatch,
}

/// What one ranged GET ended in.
enum Ranged {
    Done(Fetched),
    /// The held bytes cannot be used: ask again for the whole object.
    StartOver,
}

/// The validators an answer carries: a strong ETag (a weak one cannot validate a range)
/// and Last-Modified. A value holding one of the request's credentials (`secrets`, see
/// [`crate::redact::request_secrets`]) or the process's is dropped: validators are
/// stored in `local_dir` for the next attempt, and a server echoing a token there would
/// leave it on disk in plaintext. Without a validator the download cannot resume.
fn validator_of(h: &HeaderMap, secrets: &[String]) -> Validator {
    let clean = |v: &str| {
        let bad = crate::redact::holds_secret(v, secrets);
        if bad {
            log::warn!("download: the server sent a validator holding a credential; it is not kept (no resume)");
        }
        !bad
    };
    let etag = header(h, "etag").map(str::trim).filter(|e| e.starts_with('"') && e.len() <= 200).filter(|e| clean(e)).map(str::to_string);
    let last_modified =
        header(h, "last-modified").map(str::trim).filter(|d| !d.is_empty() && d.len() <= 100).filter(|d| clean(d)).map(str::to_string);
    Validator { etag, last_modified, length: None }
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`): the start and, if given, the total.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok().filter(|t| *t > end)?),
    };
    Some((start, total))
}

/// Redirects a GET follows at most.
const MAX_REDIRECTS: usize = 5;
/// The longest excerpt of a server's error body kept in an error.
const MAX_REASON: usize = 120;

pub struct Transport {
    agent: Agent,
    limits: Limits,
}

impl Default for Transport {
    fn default() -> Self {
        Transport::new()
    }
}

impl Transport {
    pub fn new() -> Transport {
        let limits = Limits::from_env();
        let config = Agent::config_builder()
            .http_status_as_error(false)
            // Redirects are ours to judge (see the module comment).
            .max_redirects(0)
            .timeout_connect(Some(limits.connect))
            .timeout_recv_response(Some(limits.response))
            .timeout_per_read(Some(limits.stall))
            .timeout_per_write(Some(limits.stall))
            .max_idle_connections_per_host(16)
            .user_agent(concat!("sqlite-attachments/", env!("CARGO_PKG_VERSION")))
            .build();
        // Reads of a cancelled transfer stop within moments, even while the server is
        // silent (see stoppable.rs).
        let connector = ureq::unversioned::transport::DefaultConnector::default().chain(super::stoppable::StoppableConnector);
        let agent = Agent::with_parts(config, connector, ureq::unversioned::resolver::DefaultResolver::default());
        Transport { agent, limits }
    }

    /// `PUT`s all of `source`, streaming. Returns the response headers.
    pub fn put_file(
        &self,
        url: &str,
        headers: &[(&str, String)],
        source: &dyn Source,
        progress: Progress,
    ) -> Result<HeaderMap, RemoteError> {
        let len = source.len();
        // No bigger than the file: the buffer is zeroed before its first read, and 256 KiB
        // zeroed for every small file cost more than sending it.
        let capacity = (len as usize).clamp(8 * 1024, 256 * 1024);
        self.put_reader(url, headers, &mut std::io::BufReader::with_capacity(capacity, source.reader(0, len)), len, progress)
    }

    /// `PUT`s exactly `len` bytes from `body`, streaming. A body the server takes
    /// below the minimum rate is cut (ureq pulls it as the socket accepts bytes).
    pub fn put_reader(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: &mut dyn Read,
        len: u64,
        progress: Progress,
    ) -> Result<HeaderMap, RemoteError> {
        let mut req = self.agent.put(url).header("Content-Length", len.to_string());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        // The progress callback runs inside the rate reader's reads: time spent
        // there (ours, e.g. a bandwidth limit) is not held against the server.
        let mut reader = RateReader::new(ProgressReader::new(body, progress), &self.limits, Pace::BetweenReads);
        let resp = req.send(SendBody::from_reader(&mut reader)).map_err(|e| transport_error("upload", e))?;
        expect_success(refuse_redirect(resp, "upload")?, "upload").map(|r| r.headers().clone())
    }

    /// `GET`s into `out`, streaming; reports the length and checksum the server claims.
    /// `media_type` is the attachment's, to tell a login page from the file.
    ///
    /// When `out` holds the start of the object from an interrupted attempt, only the rest
    /// is asked for (`Range: bytes=N-`, conditional on the validator seen first, as
    /// `cond` says). A `206` is used only when its `Content-Range` starts at N and its own
    /// validator is the one seen first; a `200` (a server ignoring Range, or `If-Range`
    /// finding a changed object) starts over from zero in the same answer; a `416` or a
    /// `412` (`If-Match` on a changed object) asks again for the whole object.
    pub fn get_to(
        &self,
        url: &str,
        headers: &[(&str, String)],
        media_type: &str,
        out: &mut dyn Sink,
        progress: Progress,
        cond: Conditional,
    ) -> Result<Fetched, RemoteError> {
        let held = out.held().filter(|h| h.offset > 0 && !h.validator.is_empty());
        match self.get_range(url, headers, media_type, out, progress, held.as_ref(), cond)? {
            Ranged::Done(fetched) => Ok(fetched),
            Ranged::StartOver => match self.get_range(url, headers, media_type, out, progress, None, cond)? {
                Ranged::Done(fetched) => Ok(fetched),
                Ranged::StartOver => Err(RemoteError::new(ErrorKind::Transient, "download failed: the server refused the whole object").with_class(ErrorClass::Server)),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn get_range(
        &self,
        url: &str,
        headers: &[(&str, String)],
        media_type: &str,
        out: &mut dyn Sink,
        progress: Progress,
        held: Option<&Held>,
        cond: Conditional,
    ) -> Result<Ranged, RemoteError> {
        let mut headers = headers.to_vec();
        if let Some(h) = held {
            headers.push(("Range", format!("bytes={}-", h.offset)));
            match (cond, &h.validator.etag, &h.validator.last_modified) {
                (Conditional::IfMatch, Some(etag), _) => headers.push(("If-Match", etag.clone())),
                (Conditional::IfMatch, None, Some(date)) => headers.push(("If-Unmodified-Since", date.clone())),
                (Conditional::IfRange, Some(etag), _) => headers.push(("If-Range", etag.clone())),
                (Conditional::IfRange, None, Some(date)) => headers.push(("If-Range", date.clone())),
                (_, None, None) => {}
            }
        }
        let (resp, redirected) = self.get_following(url, &headers, "download")?;
        let status = resp.status().as_u16();
        if held.is_some() && matches!(status, 412 | 416) {
            log::debug!("download: HTTP {status} to a resumed range: starting over");
            return Ok(Ranged::StartOver);
        }
        let mut resp = expect_success(resp, "download")?;
        let partial = held.is_some() && resp.status() == StatusCode::PARTIAL_CONTENT;
        if resp.status() != StatusCode::OK && !partial {
            return Err(status_error(&resp, ErrorKind::Transient, ErrorClass::Server, "download failed: expected 200 with the file"));
        }
        let h = resp.headers();
        if let Some(enc) = header(h, "content-encoding").filter(|e| !e.trim().eq_ignore_ascii_case("identity")) {
            return Err(RemoteError::integrity(format!(
                "download refused: the body came {}-encoded, which was never asked for",
                crate::redact::shorten(enc.trim(), 20)
            )));
        }
        if redirected && is_html(header(h, "content-type")) && !is_html(Some(media_type)) {
            return Err(RemoteError::config(
                "download refused: a redirect led to an HTML page, not the file (a login page?); the endpoint is wrong or behind a login",
            ));
        }
        let length: Option<u64> = header(h, "content-length").and_then(|v| v.trim().parse().ok());
        let chunked = header(h, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if length.is_none() && !chunked {
            return Err(RemoteError::integrity(
                "download refused: the answer has neither Content-Length nor chunked encoding, so a cut connection could not be told from the end of the file",
            ));
        }
        let mut validator = validator_of(h, &crate::redact::request_secrets(url, &headers));
        // Where this body starts in the object, and the object's whole length if known.
        let (offset, total) = match held.filter(|_| partial) {
            Some(held) => {
                let range = header(h, "content-range").and_then(parse_content_range);
                // The whole length this answer claims; it must be the one first announced
                // (a server lying about it would otherwise get a short file published).
                let whole = range.and_then(|(start, total)| total.or(length.map(|l| l + start)));
                match range {
                    Some((start, _))
                        if start == held.offset && held.validator.same_object(&validator) && held.validator.same_length(whole) =>
                    {
                        (start, whole.or(held.validator.length))
                    }
                    _ => {
                        log::debug!("download: a 206 for another range, another object or another length: starting over");
                        return Ok(Ranged::StartOver);
                    }
                }
            }
            None => (0, length),
        };
        validator.length = total;
        // S3 returns the SHA-256 it stored, base64-encoded, when asked for it: the whole object's.
        let sha256 = header(h, "x-amz-checksum-sha256").and_then(base64_to_hex);
        out.begin(offset, &validator).map_err(|e| RemoteError::local(format!("preparing the local file: {e}")))?;
        progress(0).map_err(|e| RemoteError::new(ErrorKind::Transient, format!("download interrupted: {e}")))?;
        let mut body = RateReader::new(resp.body_mut().as_reader(), &self.limits, Pace::InsideReads);
        let copied = copy_with_progress(&mut body, out, progress).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => RemoteError::truncated(match length {
                Some(len) => format!("the body ended after {} of {len} bytes", body.total()),
                None => format!("the chunked body ended after {} bytes, before its last chunk", body.total()),
            }),
            _ => RemoteError::new(ErrorKind::Transient, format!("download interrupted: {e}")),
        })?;
        if let Some(len) = length.filter(|len| *len != copied) {
            return Err(RemoteError::truncated(format!("got {copied} of {len} bytes")));
        }
        let length = total.or(length.map(|l| l + offset)).or(if offset == 0 { None } else { Some(offset + copied) });
        Ok(Ranged::Done(Fetched { length, sha256 }))
    }

    /// A GET, following the redirects that keep its meaning (see the module comment).
    /// Returns the final answer and whether any redirect was followed.
    fn get_following(&self, url: &str, headers: &[(&str, String)], what: &str) -> Result<(Response<Body>, bool), RemoteError> {
        let mut current = url::Url::parse(url).map_err(|_| RemoteError::config(format!("{what} failed: invalid URL")))?;
        let origin = current.origin();
        for hop in 0..=MAX_REDIRECTS {
            // The first request goes to the URL exactly as given (a presigned URL's encoding is signed).
            let mut req = self.agent.get(if hop == 0 { url } else { current.as_str() });
            for (k, v) in headers {
                // Credentials stay with the origin they were meant for.
                if current.origin() != origin && k.eq_ignore_ascii_case("authorization") {
                    continue;
                }
                req = req.header(*k, v);
            }
            let resp = req.call().map_err(|e| transport_error(what, e))?;
            let status = resp.status().as_u16();
            if !matches!(status, 301 | 302 | 307 | 308) {
                return Ok((refuse_redirect(resp, what)?, hop > 0));
            }
            let next = header(resp.headers(), "location").and_then(|l| current.join(l.trim()).ok());
            let Some(next) = next else {
                return Err(status_error(&resp, ErrorKind::Permanent, ErrorClass::Config, &format!("{what} failed: a redirect without a usable Location")));
            };
            if current.scheme() == "https" && next.scheme() != "https" {
                return Err(status_error(&resp, ErrorKind::Permanent, ErrorClass::Config, &format!("{what} failed: a redirect from https to plain http is not followed")));
            }
            if !matches!(next.scheme(), "http" | "https") {
                return Err(status_error(&resp, ErrorKind::Permanent, ErrorClass::Config, &format!("{what} failed: a redirect to a non-HTTP address is not followed")));
            }
            log::debug!("{what}: following HTTP {status} redirect");
            current = next;
        }
        Err(RemoteError::config(format!("{what} failed: more than {MAX_REDIRECTS} redirects")))
    }

    /// `DELETE`; a 404 or 410 counts as done.
    pub fn delete(&self, url: &str, headers: &[(&str, String)]) -> Result<(), RemoteError> {
        let mut req = self.agent.delete(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.call().map_err(|e| transport_error("delete", e))?;
        match expect_success(refuse_redirect(resp, "delete")?, "delete") {
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// `POST`s a JSON body and parses a JSON answer (small control messages only).
    pub fn post_json(&self, url: &str, headers: &[(&str, String)], body: &serde_json::Value) -> Result<serde_json::Value, RemoteError> {
        let mut req = self.agent.post(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send_json(body).map_err(|e| transport_error("request", e))?;
        read_json(expect_success(refuse_redirect(resp, "request")?, "request")?)
    }

    /// `GET`s a JSON answer (small control messages only).
    pub fn get_json(&self, url: &str, headers: &[(&str, String)]) -> Result<serde_json::Value, RemoteError> {
        let (resp, _) = self.get_following(url, headers, "request")?;
        read_json(expect_success(resp, "request")?)
    }

    /// Sends a request with a small in-memory body (S3 control calls) and returns the body text.
    pub fn call_text(&self, method: &str, url: &str, headers: &[(&str, String)], body: &str) -> Result<String, RemoteError> {
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(body.to_string()).map_err(|_| RemoteError::config("could not build the request"))?;
        let resp = self.agent.run(req).map_err(|e| transport_error("request", e))?;
        let mut resp = expect_success(refuse_redirect(resp, "request")?, "request")?;
        resp.body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| transport_error("request", e))
    }
}

/// A redirect answered to a request we do not follow (every write; a 303 to a GET).
fn refuse_redirect(resp: Response<Body>, what: &str) -> Result<Response<Body>, RemoteError> {
    if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
        return Ok(resp);
    }
    Err(status_error(
        &resp,
        ErrorKind::Permanent,
        ErrorClass::Config,
        &format!("{what} failed: the server answered with a redirect, which is not followed; the endpoint is wrong or behind a login"),
    ))
}

fn status_error(resp: &Response<Body>, kind: ErrorKind, class: ErrorClass, message: &str) -> RemoteError {
    let mut e = RemoteError::new(kind, message).with_class(class);
    e.status = Some(resp.status().as_u16());
    e
}

fn is_html(media_type: Option<&str>) -> bool {
    media_type.is_some_and(|t| {
        let t = t.trim().to_ascii_lowercase();
        t.starts_with("text/html") || t.starts_with("application/xhtml")
    })
}

fn read_json(mut resp: Response<Body>) -> Result<serde_json::Value, RemoteError> {
    resp.body_mut()
        .with_config()
        .limit(1024 * 1024)
        .read_json()
        .map_err(|_| RemoteError::new(ErrorKind::Permanent, "the answer is not the expected JSON").with_class(ErrorClass::Server))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Longest reason from a body shown in `last_error`, in characters.
const MAX_SHOWN_REASON: usize = 120;

/// A reason as `last_error` shows it, whatever the body held: one line without control
/// characters, cut short, and left out when it holds a URL or a query string (a server
/// echoing a presigned request would show its signature).
fn shown_reason(reason: &str) -> String {
    let line = reason.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ");
    if line.contains("://") || (line.contains('?') && line.contains('=')) {
        return String::new();
    }
    match line.char_indices().nth(MAX_SHOWN_REASON) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

pub(super) fn base64_to_hex(b64: &str) -> Option<String> {
    use base64::Engine;
    // Multipart objects carry a composite checksum ("...-N"); only a whole-object one is comparable.
    if b64.contains('-') {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(b64).ok().map(hex::encode)
}

/// Turns a non-2xx answer into a classified error, keeping the status and a short reason.
pub(super) fn expect_success(mut resp: Response<Body>, what: &str) -> Result<Response<Body>, RemoteError> {
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let retry_after = header(resp.headers(), "retry-after").and_then(|v| retry_after::parse(v, SystemTime::now()));
    // The body usually explains (S3's <Code>); keep a short, single-line excerpt.
    let detail = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .ok()
        .map(|b| shown_reason(&reason_from_body(&b)))
        .unwrap_or_default();
    let (kind, class) = match status {
        408 | 429 | 500..=599 => (ErrorKind::Transient, ErrorClass::Server),
        401 | 403 => (ErrorKind::Auth, ErrorClass::Auth),
        404 | 410 => (ErrorKind::NotFound, ErrorClass::NotFound),
        _ => (ErrorKind::Permanent, ErrorClass::Server),
    };
    let reason = resp.status().canonical_reason().unwrap_or("error");
    let message = if detail.is_empty() { format!("{what} failed: {reason}") } else { format!("{what} failed: {reason} ({detail})") };
    Err(RemoteError { kind, class, status: Some(status), message, retry_after, resume: None })
}

/// S3 error bodies are XML with `<Code>`; others are free text. Either way: short,
/// one line, no URLs, credentials redacted (servers may echo the request).
fn reason_from_body(body: &str) -> String {
    if let (Some(a), Some(b)) = (body.find("<Code>"), body.find("</Code>")) {
        if a + 6 <= b {
            return crate::redact::shorten(&crate::redact::redact(&body[a + 6..b]), 40);
        }
    }
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    // A URL, or what looks like a query string, may carry a signature under a name we do not know.
    if line.starts_with('<') || line.contains("http") || (line.contains('?') && line.contains('=')) {
        return String::new();
    }
    crate::redact::shorten(&crate::redact::redact(&line), MAX_REASON)
}

/// A failure before any HTTP status or while moving a body: network, timeout, too slow, TLS. Transient.
fn transport_error(what: &str, e: ureq::Error) -> RemoteError {
    let why = match &e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        ureq::Error::Io(io) => format!("network error: {io}"),
        ureq::Error::Tls(t) => format!("TLS error: {t}"),
        ureq::Error::Rustls(_) => "TLS error".to_string(),
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
            return RemoteError::config(format!("{what} failed: invalid URL"));
        }
        ureq::Error::BodyExceedsLimit(n) => format!("answer larger than {n} bytes"),
        _ => "protocol error".to_string(),
    };
    RemoteError::new(ErrorKind::Transient, format!("{what} failed: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn s3_error_codes_are_kept_and_urls_dropped() {
        assert_eq!(reason_from_body("<Error><Code>SignatureDoesNotMatch</Code><Message>..</Message></Error>"), "SignatureDoesNotMatch");
        assert_eq!(reason_from_body("see https://x/?X-Amz-Signature=abc"), "");
        assert_eq!(reason_from_body("  slow\n down  "), "slow down");
        assert_eq!(reason_from_body("PUT /k?X-Amz-Signature=abc HTTP/1.1"), "");
        assert_eq!(reason_from_body("bad request Authorization: Bearer abc"), "bad request Authorization: REDACTED");
        assert_eq!(reason_from_body(&"x".repeat(500)).chars().count(), MAX_REASON + 1);
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("bytes 0-9/9"), None);
        assert_eq!(parse_content_range("items 0-9/10"), None);
    }

    #[test]
    fn validators_must_agree() {
        let v = |e: Option<&str>, d: Option<&str>| Validator { etag: e.map(Into::into), last_modified: d.map(Into::into), length: None };
        assert!(v(Some("\"a\""), None).same_object(&v(Some("\"a\""), Some("x"))));
        assert!(!v(Some("\"a\""), None).same_object(&v(Some("\"b\""), None)));
        assert!(!v(Some("\"a\""), Some("d1")).same_object(&v(Some("\"a\""), Some("d2"))));
        assert!(!v(Some("\"a\""), None).same_object(&v(None, Some("d1"))), "nothing shared: not proven the same");
    }

    #[test]
    fn checksums_convert_from_base64() {
        assert_eq!(
            base64_to_hex("LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=").as_deref(),
            Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        assert_eq!(base64_to_hex("abc-3"), None);
    }

    /// The error a request gets for this answer.
    fn failure(status: u16, body: &str) -> RemoteError {
        let resp = Response::builder().status(status).body(Body::builder().data(body.as_bytes().to_vec())).unwrap();
        expect_success(resp, "upload").unwrap_err()
    }

    // Found by the s3_response fuzz target: reasons that kept a request line's
    // signature, a NUL, or a whole <Code> however long or whatever it held.
    #[test]
    fn shown_reasons_are_one_short_line_without_urls() {
        let e = failure(505, "PUT /b/k?X-Amz-Signature=f00d&x=1 HTTP/1.1");
        assert!(!e.message.contains("f00d"), "{}", e.message);
        assert_eq!(failure(500, "\0").message, "upload failed: Internal Server Error");
        assert_eq!(failure(503, "slow\x1b[31m down").message, "upload failed: Service Unavailable (slow [31m down)");
        let e = failure(403, "<Error><Code>https://h/k?sig=f00d</Code></Error>");
        assert_eq!(e.message, "upload failed: Forbidden");
        let e = failure(400, &format!("<Code>{}</Code>", "x".repeat(5000)));
        assert!(e.message.chars().count() <= 200, "{} chars", e.message.chars().count());
        let e = failure(400, "<Code>Slow\nDown</Code>");
        assert_eq!(e.message, "upload failed: Bad Request (Slow Down)");
        assert_eq!(failure(403, "<Error><Code>SignatureDoesNotMatch</Code></Error>").message, "upload failed: Forbidden (SignatureDoesNotMatch)");
    }

    /// A server answering each connection with the next scripted answer (then closing);
    /// returns its address and the requests it saw.
    fn scripted(answers: Vec<Vec<u8>>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for answer in answers {
                let Ok((mut conn, _)) = listener.accept() else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    request.push_str(&line);
                }
                log.lock().unwrap().push(request);
                let _ = conn.write_all(&answer);
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        });
        (addr, seen)
    }

    fn answer(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn temp_store() -> crate::store::LocalStore {
        let dir = std::env::temp_dir().join(format!("att-transport-{}", uuid::Uuid::new_v4().simple()));
        crate::store::LocalStore::create(dir).unwrap()
    }

    /// One resumable download attempt of `o.bin` into `store`.
    fn attempt(store: &crate::store::LocalStore, url: &str, headers: &[(&str, String)]) -> crate::error::Result<u64> {
        let t = Transport::new();
        let progress = |_: u64| Ok(());
        store
            .stage_resumable("o.bin", |out| Ok(t.get_to(url, headers, "application/octet-stream", out, &progress, Conditional::IfRange)?))
            .map(|(staged, w)| {
                store.publish_refs(&[&staged]).unwrap();
                w.size
            })
    }

    #[test]
    fn a_resumed_answer_announcing_another_total_starts_over() {
        let body: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
        let etag = ("ETag", "\"E1\"".to_string());
        let (url, seen) = scripted(vec![
            // Announces 200 bytes, sends 50, closes.
            answer("200 OK", &[etag.clone(), ("Content-Length", "200".into())], &body[..50]),
            // Lies that the object is 60 bytes long and these 10 bytes are its end.
            answer("206 Partial Content", &[etag.clone(), ("Content-Range", "bytes 50-59/60".into()), ("Content-Length", "10".into())], &body[50..60]),
            answer("200 OK", &[etag.clone(), ("Content-Length", "200".into())], &body),
        ]);
        let store = temp_store();
        let url = format!("{url}/o.bin");
        assert!(attempt(&store, &url, &[]).is_err(), "the first answer is cut");
        assert_eq!(fs::metadata(store.dir().join(".o.bin.partial")).unwrap().len(), 50);
        assert_eq!(attempt(&store, &url, &[]).unwrap(), 200, "a short total is never published");
        assert_eq!(fs::read(store.dir().join("o.bin")).unwrap(), body);
        let seen = seen.lock().unwrap();
        assert!(seen[1].to_ascii_lowercase().contains("range: bytes=50-"), "{}", seen[1]);
        assert!(!seen[2].to_ascii_lowercase().contains("range:"), "started over: {}", seen[2]);
    }

    #[test]
    fn a_validator_echoing_a_credential_is_never_stored() {
        let token = "tok-4f1c9e2a7b";
        let session = "sess/4f1c+9e2a7b";
        let (url, _) = scripted(vec![
            answer(
                "200 OK",
                &[("ETag", format!("\"{token}\"")), ("Last-Modified", format!("x {session} y")), ("Content-Length", "100".into())],
                &[7u8; 20],
            ),
            answer("200 OK", &[("ETag", format!("\"a-{session}\"")), ("Content-Length", "100".into())], &[7u8; 20]),
        ]);
        let store = temp_store();
        let meta = store.dir().join(".o.bin.partial-meta");
        let auth = [("Authorization", format!("Bearer {token}"))];
        let presigned = format!("{url}/o.bin?X-Amz-Security-Token={}&X-Amz-Signature=abcd1234", "sess%2F4f1c%2B9e2a7b");
        assert!(attempt(&store, &presigned, &auth).is_err());
        let kept = fs::read_to_string(&meta).unwrap_or_default();
        assert!(!kept.contains(token) && !kept.contains(session), "{kept}");
        assert!(attempt(&store, &presigned, &[]).is_err());
        let kept = fs::read_to_string(&meta).unwrap_or_default();
        assert!(!kept.contains(session), "{kept}");
    }
}
