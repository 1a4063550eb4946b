//! Blocking HTTP shared by the network remotes: one `ureq` agent (keep-alive
//! connections are reused), streaming bodies, and the mapping from HTTP
//! outcomes to the retry policy's error kinds. Error text never includes a URL,
//! since signed URLs carry credentials in their query string.

use std::fs::File;
use std::io::Write;
use std::time::Duration;

use ureq::http::{HeaderMap, Response};
use ureq::{Agent, Body, SendBody};

use super::{copy_with_progress, ErrorKind, Fetched, Progress, ProgressReader, RemoteError};

/// Connecting may take this long (DNS included).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A response must start within this long after the request was sent.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// A stalled body (no byte read or written) fails after this long; a slow but
/// moving transfer of any size is never cut off.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Transport {
    agent: Agent,
}

impl Default for Transport {
    fn default() -> Self {
        Transport::new()
    }
}

impl Transport {
    pub fn new() -> Transport {
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_per_read(Some(STALL_TIMEOUT))
            .timeout_per_write(Some(STALL_TIMEOUT))
            .max_idle_connections_per_host(16)
            .user_agent(concat!("sqlite-attachments/", env!("CARGO_PKG_VERSION")))
            .build();
        Transport { agent: config.into() }
    }

    /// `PUT`s `len` bytes of `file`, streaming. Returns the response headers.
    pub fn put_file(
        &self,
        url: &str,
        headers: &[(&str, String)],
        file: File,
        len: u64,
        progress: Progress,
    ) -> Result<HeaderMap, RemoteError> {
        self.put_reader(url, headers, &mut std::io::BufReader::with_capacity(256 * 1024, file), len, progress)
    }

    /// `PUT`s exactly `len` bytes from `body`, streaming.
    pub fn put_reader(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: &mut dyn std::io::Read,
        len: u64,
        progress: Progress,
    ) -> Result<HeaderMap, RemoteError> {
        let mut req = self.agent.put(url).header("Content-Length", len.to_string());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let mut reader = ProgressReader::new(body, progress);
        let resp = req.send(SendBody::from_reader(&mut reader)).map_err(|e| transport_error("upload", e))?;
        expect_success(resp, "upload").map(|r| r.headers().clone())
    }

    /// `GET`s into `out`, streaming; reports the length and checksum the server claims.
    pub fn get_to(
        &self,
        url: &str,
        headers: &[(&str, String)],
        out: &mut dyn Write,
        progress: Progress,
    ) -> Result<Fetched, RemoteError> {
        let mut req = self.agent.get(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.call().map_err(|e| transport_error("download", e))?;
        let mut resp = expect_success(resp, "download")?;
        let length = header(resp.headers(), "content-length").and_then(|v| v.parse().ok());
        // S3 returns the SHA-256 it stored, base64-encoded, when asked for it.
        let sha256 = header(resp.headers(), "x-amz-checksum-sha256").and_then(base64_to_hex);
        let mut body = resp.body_mut().as_reader();
        copy_with_progress(&mut body, out, progress)
            .map_err(|e| RemoteError::new(ErrorKind::Transient, format!("download interrupted: {e}")))?;
        Ok(Fetched { length, sha256 })
    }

    /// `DELETE`; a 404 or 410 counts as done.
    pub fn delete(&self, url: &str, headers: &[(&str, String)]) -> Result<(), RemoteError> {
        let mut req = self.agent.delete(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.call().map_err(|e| transport_error("delete", e))?;
        match expect_success(resp, "delete") {
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
        read_json(expect_success(resp, "request")?)
    }

    /// `GET`s a JSON answer (small control messages only).
    pub fn get_json(&self, url: &str, headers: &[(&str, String)]) -> Result<serde_json::Value, RemoteError> {
        let mut req = self.agent.get(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.call().map_err(|e| transport_error("request", e))?;
        read_json(expect_success(resp, "request")?)
    }

    /// Sends a request with a small in-memory body (S3 control calls) and returns the body text.
    pub fn call_text(&self, method: &str, url: &str, headers: &[(&str, String)], body: &str) -> Result<String, RemoteError> {
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(body.to_string()).map_err(|_| RemoteError::new(ErrorKind::Permanent, "could not build the request"))?;
        let resp = self.agent.run(req).map_err(|e| transport_error("request", e))?;
        let mut resp = expect_success(resp, "request")?;
        resp.body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| transport_error("request", e))
    }
}

fn read_json(mut resp: Response<Body>) -> Result<serde_json::Value, RemoteError> {
    resp.body_mut()
        .with_config()
        .limit(1024 * 1024)
        .read_json()
        .map_err(|_| RemoteError::new(ErrorKind::Permanent, "the answer is not the expected JSON"))
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
    let retry_after = header(resp.headers(), "retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // The body usually explains (S3's <Code>); keep a short, single-line excerpt.
    let detail = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .ok()
        .map(|b| shown_reason(&reason_from_body(&b)))
        .unwrap_or_default();
    let kind = match status {
        408 | 429 | 500..=599 => ErrorKind::Transient,
        401 | 403 => ErrorKind::Auth,
        404 | 410 => ErrorKind::NotFound,
        _ => ErrorKind::Permanent,
    };
    let reason = resp.status().canonical_reason().unwrap_or("error");
    let message = if detail.is_empty() { format!("{what} failed: {reason}") } else { format!("{what} failed: {reason} ({detail})") };
    Err(RemoteError { kind, status: Some(status), message, retry_after, resume: None })
}

/// S3 error bodies are XML with `<Code>`; others are free text. Either way: short, one line, no URLs.
fn reason_from_body(body: &str) -> String {
    if let (Some(a), Some(b)) = (body.find("<Code>"), body.find("</Code>")) {
        if a + 6 <= b {
            return body[a + 6..b].to_string();
        }
    }
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.starts_with('<') || line.contains("http") {
        return String::new();
    }
    line.chars().take(120).collect()
}

/// A failure before any HTTP status: network, timeout, TLS. Always transient.
fn transport_error(what: &str, e: ureq::Error) -> RemoteError {
    let why = match &e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        ureq::Error::Io(io) => format!("network error: {io}"),
        ureq::Error::Tls(t) => format!("TLS error: {t}"),
        ureq::Error::Rustls(_) => "TLS error".to_string(),
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
            return RemoteError::new(ErrorKind::Permanent, format!("{what} failed: invalid URL"));
        }
        ureq::Error::BodyExceedsLimit(n) => format!("answer larger than {n} bytes"),
        _ => "protocol error".to_string(),
    };
    RemoteError::new(ErrorKind::Transient, format!("{what} failed: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_error_codes_are_kept_and_urls_dropped() {
        assert_eq!(reason_from_body("<Error><Code>SignatureDoesNotMatch</Code><Message>..</Message></Error>"), "SignatureDoesNotMatch");
        assert_eq!(reason_from_body("see https://x/?X-Amz-Signature=abc"), "");
        assert_eq!(reason_from_body("  slow\n down  "), "slow down");
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
}
