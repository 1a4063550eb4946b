//! Watch names become part of trigger names and stored rows. The query analysis
//! itself needs a database (it prepares the query under SQLite's authorizer), so
//! this target covers the checks that run without one.
#![no_main]

use attachments::fuzzing::check_watch_name;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|name: &str| {
    match check_watch_name(name) {
        Ok(()) => {
            assert!((1..=64).contains(&name.len()), "{name:?}");
            // Spliced into `_attachments_trg_{name}_{table}_{op}`: nothing to quote.
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{name:?}");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("watch name"), "{msg}");
            assert!(!msg.contains(['\0', '\n', '\r']), "error not escaped: {msg:?}");
        }
    }
});
