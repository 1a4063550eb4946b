//! Takes credentials out of any text before it is stored, logged or returned.
//! Servers' error bodies may repeat the request (a presigned URL's signature,
//! an Authorization header), so every error text and log line passes through
//! [`redact`]: the values of credential-bearing query parameters and headers
//! are replaced, and so is every occurrence of a secret the process holds in
//! its environment, whatever surrounds it.

/// What a redacted value becomes.
pub const REDACTED: &str = "REDACTED";

/// The environment variables whose values are secrets wherever they appear.
const SECRET_VARS: [&str; 4] = ["ATTACHMENTS_HTTP_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

/// Names (lowercase, as in `name=value` or `name: value`) whose values are credentials:
/// SigV4 and SigV2 query authentication, GCS and Azure SAS signatures, common token parameters.
const SECRET_NAMES: [&str; 16] = [
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "signature",
    "awsaccesskeyid",
    "sig",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "password",
    "secret",
    "x-api-key",
    "cookie",
];

/// Header lines whose whole value is a credential (`Authorization: AWS4-HMAC-SHA256 Credential=…`).
const SECRET_HEADERS: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "set-cookie"];

/// `text` with every credential replaced by `REDACTED`.
pub fn redact(text: &str) -> String {
    let mut out = redact_headers(text);
    out = redact_pairs(&out);
    out = redact_scheme(&out, "bearer ");
    out = redact_scheme(&out, "basic ");
    out = redact_userinfo(&out);
    for var in SECRET_VARS {
        if let Ok(secret) = std::env::var(var) {
            // Very short values would blank ordinary words; real credentials are longer.
            if secret.len() >= 4 {
                out = out.replace(&secret, REDACTED);
            }
        }
    }
    out
}

/// The credentials a request carries, to recognise them if a server sends one back
/// (say, as an ETag that would be stored): the values of credential-bearing query
/// parameters (as sent and decoded), and of credential headers (with and without their
/// scheme, as in `Bearer TOKEN`). Values shorter than 4 characters are left out.
pub fn request_secrets(url: &str, headers: &[(&str, String)]) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(parsed) = url::Url::parse(url) {
        for (name, value) in parsed.query_pairs() {
            if SECRET_NAMES.contains(&name.to_ascii_lowercase().as_str()) {
                out.push(value.into_owned());
            }
        }
        for pair in parsed.query().unwrap_or("").split('&') {
            if let Some((name, value)) = pair.split_once('=') {
                if SECRET_NAMES.contains(&name.to_ascii_lowercase().as_str()) {
                    out.push(value.to_string());
                }
            }
        }
    }
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if SECRET_HEADERS.contains(&lower.as_str()) || SECRET_NAMES.contains(&lower.as_str()) {
            out.push(value.trim().to_string());
            if let Some((_, rest)) = value.trim().split_once(' ') {
                out.push(rest.trim().to_string());
            }
        }
    }
    out.retain(|s| s.len() >= 4);
    out
}

/// True when `value` holds a credential: one of `known` (see [`request_secrets`]), one
/// the process holds in its environment, or anything [`redact`] would take out.
pub fn holds_secret(value: &str, known: &[String]) -> bool {
    known.iter().any(|s| value.contains(s.as_str())) || redact(value) != value
}

/// Cuts `text` to at most `max` characters (on a character boundary), marking the cut.
pub fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn is_value_char(c: char) -> bool {
    !(c.is_whitespace() || matches!(c, '&' | ';' | ',' | '"' | '\'' | '<' | '>' | ')' | ']' | '}'))
}

/// `Authorization: …` up to the end of the line.
fn redact_headers(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while pos < text.len() {
        let next = SECRET_HEADERS
            .iter()
            .filter_map(|h| {
                let mut from = pos;
                while let Some(i) = lower[from..].find(h) {
                    let at = from + i;
                    let after = &lower[at + h.len()..];
                    let boundary = at == 0 || !lower.as_bytes()[at - 1].is_ascii_alphanumeric() && lower.as_bytes()[at - 1] != b'-';
                    if boundary && after.trim_start_matches(' ').starts_with(':') {
                        return Some((at, h.len()));
                    }
                    from = at + h.len();
                }
                None
            })
            .min();
        let Some((at, len)) = next else { break };
        let colon = at + len + lower[at + len..].find(':').unwrap_or(0) + 1;
        let end = text[colon..].find(['\n', '\r']).map(|i| colon + i).unwrap_or(text.len());
        out.push_str(&text[pos..colon]);
        out.push(' ');
        out.push_str(REDACTED);
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
}

/// `name=value` (query strings, SigV4's `Credential=…, Signature=…`) and `"name": "value"`.
fn redact_pairs(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let mut i = 0;
    while i < text.len() {
        if !text.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let starts_name = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || matches!(bytes[i - 1], b'-' | b'_'));
        let found = starts_name
            .then(|| SECRET_NAMES.iter().filter(|n| lower[i..].starts_with(*n)).max_by_key(|n| n.len()))
            .flatten();
        if let Some(name) = found {
            let mut j = i + name.len();
            // JSON's `"name": "value"`: skip the closing quote of the name.
            if text[j..].starts_with('"') {
                j += 1;
            }
            let sep = text[j..].trim_start_matches(' ');
            if sep.starts_with('=') || sep.starts_with(':') {
                let mut k = text.len() - sep.len() + 1;
                k += text[k..].len() - text[k..].trim_start_matches([' ', '"']).len();
                let end = text[k..].find(|c: char| !is_value_char(c)).map(|e| k + e).unwrap_or(text.len());
                if end > k && &text[k..end] != REDACTED {
                    out.push_str(&text[pos..k]);
                    out.push_str(REDACTED);
                    pos = end;
                    i = end;
                    continue;
                }
            }
            i += name.len();
            continue;
        }
        i += 1;
    }
    out.push_str(&text[pos..]);
    out
}

/// `Bearer abc`, `Basic abc`: the word after the scheme.
fn redact_scheme(text: &str, scheme: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let mut from = 0;
    while let Some(i) = lower[from..].find(scheme) {
        let start = from + i + scheme.len();
        let end = text[start..].find(|c: char| !is_value_char(c)).map(|e| start + e).unwrap_or(text.len());
        if end > start && &text[start..end] != REDACTED {
            out.push_str(&text[pos..start]);
            out.push_str(REDACTED);
            pos = end;
        }
        from = end.max(start);
    }
    out.push_str(&text[pos..]);
    out
}

/// `scheme://user:password@host`: the user information.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let mut from = 0;
    while let Some(i) = text[from..].find("://") {
        let start = from + i + 3;
        let authority_end = text[start..].find(|c: char| c == '/' || !is_value_char(c)).map(|e| start + e).unwrap_or(text.len());
        if let Some(at) = text[start..authority_end].rfind('@') {
            out.push_str(&text[pos..start]);
            out.push_str(REDACTED);
            pos = start + at;
        }
        from = authority_end.max(start);
    }
    out.push_str(&text[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_signatures_and_credentials_go() {
        let url = "PUT /b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Security-Token=tok123&X-Amz-Signature=abcdef0123 HTTP/1.1";
        let r = redact(url);
        assert!(!r.contains("AKIDEXAMPLE") && !r.contains("abcdef0123") && !r.contains("tok123"), "{r}");
        assert!(r.contains("X-Amz-Algorithm=AWS4-HMAC-SHA256"), "harmless parameters stay: {r}");
        assert!(r.contains("X-Amz-Signature=REDACTED"), "{r}");
    }

    #[test]
    fn headers_and_schemes_go() {
        let r = redact("Host: x\nAuthorization: AWS4-HMAC-SHA256 Credential=AK/1, SignedHeaders=host, Signature=ff00\nX: y");
        assert_eq!(r, "Host: x\nAuthorization: REDACTED\nX: y");
        assert_eq!(redact("got bearer s3cr3t-t0ken back"), "got bearer REDACTED back");
        assert_eq!(redact(r#"{"token": "abc", "n": 1}"#), r#"{"token": "REDACTED", "n": 1}"#);
        assert_eq!(redact("see https://user:pw@host/x"), "see https://REDACTED@host/x");
    }

    #[test]
    fn ordinary_text_is_untouched() {
        for s in ["upload failed: Service Unavailable", "incomplete transfer: got 5 of 10 bytes", "design=ok tokens"] {
            assert_eq!(redact(s), s);
        }
        assert_eq!(redact("Signature=REDACTED"), "Signature=REDACTED");
    }

    #[test]
    fn shorten_cuts_on_characters() {
        assert_eq!(shorten("héllo", 2), "hé…");
        assert_eq!(shorten("abc", 5), "abc");
    }
}
