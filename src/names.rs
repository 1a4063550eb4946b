//! Ids and extensions arrive from synced data, so they are untrusted. These
//! checks are the only way a name becomes a path: a file name built here never
//! contains a separator, never starts with a dot and is never absurdly long,
//! so nothing can be written outside `local_dir`.

use crate::error::{Error, Result};

pub const MAX_ID_LEN: usize = 128;
pub const MAX_EXT_LEN: usize = 16;

/// Checks an attachment id: 1 to 128 ASCII letters, digits, `-` or `_`,
/// starting with a letter or digit. UUIDs pass.
pub fn check_id(id: &str) -> Result<&str> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(id)
    } else {
        Err(Error::UnsafeName(format!(
            "invalid attachment id {}: expected 1 to {MAX_ID_LEN} ASCII letters, digits, '-' or '_', starting with a letter or digit",
            quote(id)
        )))
    }
}

/// Normalises an extension: one leading dot is dropped (`.jpg` means `jpg`);
/// the rest must be dot-separated runs of ASCII letters and digits, 16 bytes at most.
/// An empty extension is allowed and gives a file name without a dot.
pub fn check_ext(ext: &str) -> Result<String> {
    let e = ext.strip_prefix('.').unwrap_or(ext);
    let ok = e.len() <= MAX_EXT_LEN
        && (e.is_empty()
            || e.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric())));
    if ok {
        Ok(e.to_ascii_lowercase())
    } else {
        Err(Error::UnsafeName(format!(
            "invalid file extension {}: expected up to {MAX_EXT_LEN} ASCII letters and digits, optionally dot-separated (like 'jpg' or 'tar.gz')",
            quote(ext)
        )))
    }
}

/// The file name of an attachment, `{id}.{ext}` (or `{id}` without an extension).
pub fn filename(id: &str, ext: &str) -> Result<String> {
    let id = check_id(id)?;
    let ext = check_ext(ext)?;
    Ok(if ext.is_empty() { id.to_string() } else { format!("{id}.{ext}") })
}

/// Checks a file name read back from the queue table (it may have been edited by hand).
pub fn check_filename(name: &str) -> Result<&str> {
    let (id, ext) = name.split_once('.').unwrap_or((name, ""));
    // Name the whole file name: the split alone ("../x" gives id "") would mislead.
    filename(id, ext).map_err(|e| Error::UnsafeName(format!("invalid filename {}: {e}", quote(name))))?;
    Ok(name)
}

/// The extension part of a file name, without the dot.
pub fn ext_of(filename: &str) -> &str {
    filename.split_once('.').map(|(_, e)| e).unwrap_or("")
}

/// Longest media type accepted; real ones are far shorter.
pub const MAX_MEDIA_TYPE_LEN: usize = 255;

/// Checks a media type given to a save: `type/subtype[; params]` in printable ASCII, of sane
/// length. It is sent as Content-Type on every upload, so a bad one would fail them forever.
pub fn check_media_type(media_type: &str) -> Result<&str> {
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    let essence = media_type.split(';').next().unwrap_or("");
    let ok = media_type.len() <= MAX_MEDIA_TYPE_LEN
        && media_type.bytes().all(|b| (0x20..0x7f).contains(&b))
        && essence.split_once('/').is_some_and(|(t, s)| token(t) && token(s));
    if ok {
        Ok(media_type)
    } else {
        Err(Error::Argument(format!(
            "invalid media_type {}: expected type/subtype[; parameters] in printable ASCII, at most {MAX_MEDIA_TYPE_LEN} bytes (like 'image/jpeg')",
            quote(media_type)
        )))
    }
}

/// MIME type guessed from an extension; `application/octet-stream` when unknown.
pub fn guess_media_type(ext: &str) -> String {
    let last = ext.rsplit('.').next().unwrap_or("");
    mime_guess::from_ext(last).first_or_octet_stream().essence_str().to_string()
}

/// Quotes untrusted text for an error message: escaped, and cut short when absurdly long.
fn quote(s: &str) -> String {
    let shown: String = s.chars().take(40).collect();
    let more = if s.chars().count() > 40 { format!("... ({} bytes)", s.len()) } else { String::new() };
    format!("'{}'{more}", shown.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_simple_ids_pass() {
        assert!(check_id("3f1c2a9e-8d4b-4c1e-9a57-0b7f2e6d1a33").is_ok());
        assert!(check_id("photo_1").is_ok());
        assert_eq!(filename("abc", "jpg").unwrap(), "abc.jpg");
        assert_eq!(filename("abc", ".JPG").unwrap(), "abc.jpg");
        assert_eq!(filename("abc", "tar.gz").unwrap(), "abc.tar.gz");
        assert_eq!(filename("abc", "").unwrap(), "abc");
    }

    #[test]
    fn hostile_ids_are_refused() {
        for id in ["", "..", "../etc/passwd", "/abs", "a/b", "a\\b", "a\0b", ".hidden", "-x", "a.b", "é", "a b"] {
            assert!(check_id(id).is_err(), "{id:?} must be refused");
        }
        assert!(check_id(&"a".repeat(MAX_ID_LEN)).is_ok());
        assert!(check_id(&"a".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn hostile_extensions_are_refused() {
        for ext in ["/jpg", "../x", "a/b", "..", "a..b", "jpg.", "\0", "j\0pg", "j pg", "x".repeat(17).as_str()] {
            assert!(check_ext(ext).is_err(), "{ext:?} must be refused");
        }
    }

    #[test]
    fn filenames_from_the_table_are_rechecked() {
        assert!(check_filename("abc.jpg").is_ok());
        assert!(check_filename("../abc.jpg").is_err());
        assert!(check_filename("abc/../../x").is_err());
        assert_eq!(ext_of("abc.tar.gz"), "tar.gz");
    }

    #[test]
    fn error_messages_escape_and_shorten_input() {
        let msg = check_id(&format!("a\0{}", "b".repeat(5000))).unwrap_err().to_string();
        assert!(msg.contains("\\0"), "{msg}");
        assert!(msg.len() < 300, "{msg}");
    }

    #[test]
    fn media_types_are_checked() {
        for ok in ["image/jpeg", "text/plain; charset=utf-8", "application/vnd.api+json"] {
            assert!(check_media_type(ok).is_ok(), "{ok}");
        }
        let long = format!("a/{}", "b".repeat(300));
        for bad in ["", "plain", "text/", "/x", "text/plain\r\nX: 1", "text/pl ain", "a\0/b", long.as_str(), "t\u{e9}xt/plain"] {
            assert!(check_media_type(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn media_types_are_guessed() {
        assert_eq!(guess_media_type("jpg"), "image/jpeg");
        assert_eq!(guess_media_type("pdf"), "application/pdf");
        assert_eq!(guess_media_type("tar.gz"), "application/gzip");
        assert_eq!(guess_media_type("zzz"), "application/octet-stream");
    }
}
