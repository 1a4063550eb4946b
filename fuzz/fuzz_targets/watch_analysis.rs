//! The watch checks that run without a database: the name (it becomes part of
//! trigger names and stored rows), the trigger names built from it (they must never
//! collide: one watch would drop another's), and the options JSON (stored as its
//! own `to_json()`, which must read back equal).
#![no_main]

use attachments::fuzzing::{check_watch_name, watch_trigger_name, WatchOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, &str, &str, &str)| {
    let (name, table, other_name, other_table, options) = input;

    let name_ok = match check_watch_name(name) {
        Ok(()) => {
            assert!((1..=64).contains(&name.len()), "{name:?}");
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{name:?}");
            true
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("watch name"), "{msg}");
            assert!(!msg.contains(['\0', '\n', '\r']), "error not escaped: {msg:?}");
            false
        }
    };

    // Two watches, or one watch on two tables, never share a trigger.
    if name_ok && check_watch_name(other_name).is_ok() {
        for suffix in ["ins", "upd", "del"] {
            let a = watch_trigger_name(name, table, suffix);
            let b = watch_trigger_name(other_name, other_table, suffix);
            if (name, table) != (other_name, other_table) {
                assert_ne!(a, b, "({name:?}, {table:?}) and ({other_name:?}, {other_table:?}) collide");
            }
            assert_ne!(a, watch_trigger_name(name, table, if suffix == "ins" { "del" } else { "ins" }));
        }
    }

    match WatchOptions::parse(Some(options)) {
        Ok(o) => {
            let stored = o.to_json();
            assert_eq!(WatchOptions::parse(Some(&stored)).ok(), Some(o), "options stored as {stored}");
        }
        Err(e) => assert!(e.to_string().contains("options"), "{e}"),
    }
});
