//! The remote side's entry points for the fuzz targets: what the backends do with
//! a server's answer, reachable without a network. Each calls the code the
//! backends run; nothing is re-implemented here.

use std::time::Duration;

use rusty_s3::actions::CreateMultipartUpload;
use ureq::http::Response;
use ureq::Body;

use super::{s3, transport, ErrorKind, RemoteError};

/// An HTTP answer as the transport judges it: `None` for a success, else the error
/// every request method returns (kind, status, reason from the body, Retry-After).
/// Headers that `http` itself refuses (bad names or values) are left out, as a
/// client never sees them.
pub fn http_answer(status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Option<RemoteError> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        let valid = ureq::http::HeaderName::from_bytes(name.as_bytes()).is_ok()
            && ureq::http::HeaderValue::from_bytes(value).is_ok();
        if valid {
            builder = builder.header(*name, *value);
        }
    }
    let resp = builder.body(Body::builder().data(body.to_vec())).ok()?;
    transport::expect_success(resp, "request").err()
}

/// The wait a Retry-After header value gives a failed request (a 503), if any.
pub fn retry_after(value: &[u8]) -> Option<Duration> {
    http_answer(503, &[("retry-after", value)], b"").and_then(|e| e.retry_after)
}

/// The upload id S3's CreateMultipartUpload answer gives, parsed as `s3.rs` parses it.
pub fn multipart_upload_id(answer: &str) -> Option<String> {
    CreateMultipartUpload::parse_response(answer).ok().map(|r| r.upload_id().to_string())
}

/// A multipart upload's resume state (`upload_resume`, which may have been edited by
/// hand) read back and written again as a failed attempt would hand it on; `None`
/// when it is not a resume state.
pub fn multipart_resume(text: &str) -> Option<String> {
    let state = s3::Multipart::parse(text)?;
    state.keep_unless_gone(RemoteError::new(ErrorKind::Transient, "fuzz")).resume
}

/// The base64 SHA-256 sent to S3 for a hex digest.
pub fn hex_to_base64(hex_digest: &str) -> Option<String> {
    s3::hex_to_base64(hex_digest)
}

/// The hex SHA-256 read from S3's base64 checksum header.
pub fn base64_to_hex(b64: &str) -> Option<String> {
    transport::base64_to_hex(b64)
}
