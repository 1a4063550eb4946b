//! What the HTTP and S3 backends make of a server's answer: error statuses with any
//! body (S3's XML error, HTML, echoed requests), S3's CreateMultipartUpload answer,
//! the multipart resume state kept in the queue row, and the base64 checksum. Never
//! panics; the reason shown to users is short, on one line, and holds no URL, so a
//! signature echoed by the server never reaches `last_error`.
#![no_main]

use attachments::fuzzing::*;
use libfuzzer_sys::fuzz_target;

/// Longest `last_error` a failed request may produce (the fixed words plus the reason).
const MAX_MESSAGE_CHARS: usize = 200;

/// Stands for the signature of a presigned URL a server echoes back.
const SIGNATURE: &str = "f00dfeedsig";

fn expected_kind(status: u16) -> ErrorKind {
    match status {
        408 | 429 | 500..=599 => ErrorKind::Transient,
        401 | 403 => ErrorKind::Auth,
        404 | 410 => ErrorKind::NotFound,
        _ => ErrorKind::Permanent,
    }
}

fn without_signature(text: &str) -> String {
    let mut text = text.to_string();
    while text.contains(SIGNATURE) {
        text = text.replace(SIGNATURE, "");
    }
    text
}

fn check_failure(status: u16, body: &str) -> RemoteError {
    let Some(e) = http_answer(status, &[("content-type", b"application/xml")], body.as_bytes()) else {
        panic!("HTTP {status} taken for a success");
    };
    assert_eq!(e.status, Some(status));
    assert_eq!(e.kind, expected_kind(status), "HTTP {status}");
    let m = &e.message;
    assert!(m.chars().count() <= MAX_MESSAGE_CHARS, "reason of {} chars: {:?}", m.chars().count(), m.chars().take(200).collect::<String>());
    assert!(!m.contains(|c: char| c.is_control()), "reason not on one line: {m:?}");
    assert!(!m.contains("://"), "URL in the reason: {m:?}");
    e
}

fuzz_target!(|input: (u16, u8, &str, &str)| {
    let (status, mode, body, other) = input;
    let status = 300 + status % 300;

    // A failed request: any status, any body.
    check_failure(status, body);
    // A body that echoes the signed request, as a URL or as the request line
    // (the signature only there: the fuzzer soon learns to write it anywhere).
    let (before, after) = (without_signature(body), without_signature(other));
    let echoed = match mode % 3 {
        0 => format!("{before}https://h/b/k?X-Amz-Signature={SIGNATURE}{after}"),
        1 => format!("{before}PUT /b/k?X-Amz-Signature={SIGNATURE}&x=1 HTTP/1.1{after}"),
        _ => format!("{before}<Code>https://h/k?sig={SIGNATURE}</Code>{after}"),
    };
    let e = check_failure(status, &echoed);
    assert!(!e.message.contains(SIGNATURE), "signature in the reason: {:?}", e.message);

    // CreateMultipartUpload's answer.
    if let Some(id) = multipart_upload_id(body) {
        assert!(id.len() <= body.len(), "upload id longer than the answer");
    }

    // The resume state read back from a queue row is written back unchanged.
    if let Some(state) = multipart_resume(other) {
        assert_eq!(multipart_resume(&state).as_deref(), Some(state.as_str()), "resume state not stable");
    }

    // Checksums: what we send S3 decodes back to our digest, and S3's header to hex.
    if let Some(b64) = hex_to_base64(other) {
        assert_eq!(other.len(), 64);
        assert_eq!(base64_to_hex(&b64), Some(other.to_ascii_lowercase()));
    }
    if let Some(hex) = base64_to_hex(body) {
        assert!(hex.len() % 2 == 0 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        if hex.len() == 64 {
            assert_eq!(hex_to_base64(&hex).as_deref(), Some(body), "checksum does not round-trip");
        }
    }
});
