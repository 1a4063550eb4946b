//! Ids and extensions arrive from synced data and become file names in local_dir:
//! whatever is accepted must be one harmless path component, and `filename` must
//! round-trip through the checks the queue table's names go through again.
#![no_main]

use std::path::{Component, Path};

use attachments::fuzzing::*;
use libfuzzer_sys::fuzz_target;

/// Longest error message: the input is quoted escaped and cut to 40 characters.
const MAX_ERROR_LEN: usize = 700;

fn assert_one_safe_component(name: &str, max_len: usize) {
    assert!(!name.is_empty(), "empty name accepted");
    assert!(name.len() <= max_len, "{name:?} longer than {max_len}");
    assert!(!name.contains(['/', '\\', '\0']), "{name:?} has a separator or NUL");
    assert!(!name.starts_with('.'), "{name:?} starts with a dot");
    assert!(name != "..", "{name:?} is the parent directory");
    let parts: Vec<_> = Path::new(name).components().collect();
    assert!(matches!(parts.as_slice(), [Component::Normal(_)]), "{name:?} is not one path component");
}

fn assert_short_error(e: impl std::fmt::Display) {
    let msg = e.to_string();
    assert!(msg.len() <= MAX_ERROR_LEN, "error of {} bytes", msg.len());
    assert!(!msg.contains(['\0', '\n', '\r']), "error not escaped: {msg:?}");
}

fuzz_target!(|input: (&str, &str, &str)| {
    let (id, ext, other) = input;

    let id_ok = match check_id(id) {
        Ok(same) => {
            assert_eq!(same, id);
            assert_one_safe_component(id, MAX_ID_LEN);
            assert!(!id.contains('.'), "{id:?}: an id with a dot would be read back as an extension");
            true
        }
        Err(e) => {
            assert_short_error(e);
            false
        }
    };

    let ext_norm = match check_ext(ext) {
        Ok(e) => {
            assert!(e.len() <= MAX_EXT_LEN, "{e:?}");
            assert!(e.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'.'), "{e:?}");
            if !e.is_empty() {
                assert_one_safe_component(&e, MAX_EXT_LEN);
            }
            Some(e)
        }
        Err(e) => {
            assert_short_error(e);
            None
        }
    };

    match filename(id, ext) {
        Ok(name) => {
            let ext_norm = ext_norm.expect("filename accepted an extension check_ext refuses");
            assert!(id_ok, "filename accepted an id check_id refuses");
            assert_one_safe_component(&name, MAX_ID_LEN + 1 + MAX_EXT_LEN);
            // What is stored in the queue table is checked again when read back.
            assert_eq!(check_filename(&name).ok(), Some(name.as_str()));
            assert_eq!(ext_of(&name), ext_norm);
            assert_eq!(name.split_once('.').map_or(name.as_str(), |(i, _)| i), id);
            assert_eq!(filename(id, ext_of(&name)).ok().as_deref(), Some(name.as_str()), "not idempotent");
        }
        Err(e) => {
            assert!(!(id_ok && ext_norm.is_some()), "filename refused a valid id and extension");
            assert_short_error(e);
        }
    }

    // A name read back from the table (possibly edited by hand).
    if check_filename(other).is_ok() {
        assert_one_safe_component(other, MAX_ID_LEN + 1 + MAX_EXT_LEN);
    }

    // A media type is sent as a header on every upload: no line breaks, bounded.
    if check_media_type(other).is_ok() {
        assert!(other.len() <= 255 && other.bytes().all(|b| (0x20..0x7f).contains(&b)), "{other:?}");
        assert!(other.contains('/'));
    }
});
