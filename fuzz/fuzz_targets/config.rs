//! `attachment_init`'s JSON: never panics; what is accepted is stored as its own
//! `to_json()` and must read back equal; an error never repeats a password given
//! in a URL's userinfo.
#![no_main]

use attachments::fuzzing::Config;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

const SECRET: &str = "S3CR3Tpw";

const SCHEMES: [&str; 6] = ["http://", "https://", "signed+http://", "signed+https://", "s3://", "file://"];

fn round_trips(text: &str) -> Option<String> {
    match Config::parse(text) {
        Ok(c) => {
            let stored = c.to_json().to_string();
            match Config::parse(&stored) {
                Ok(again) => assert_eq!(again, c, "stored as {stored}"),
                Err(e) => panic!("the stored config {stored} does not parse: {e}"),
            }
            None
        }
        Err(e) => Some(e.to_string()),
    }
}

fuzz_target!(|input: (u8, &str, &str, &str, &str)| {
    let (mode, a, b, c, d) = input;
    match mode % 3 {
        // Any text at all.
        0 => {
            round_trips(a);
        }
        // A remote, or an s3_endpoint, with a password in its userinfo. The user
        // name holds no delimiter, so the secret really is the userinfo's password.
        m => {
            let user: String = b.chars().filter(|ch| !"/?#@\\".contains(*ch)).collect();
            let rest = c.replace(SECRET, "");
            let scheme = SCHEMES[d.len() % SCHEMES.len()];
            let url = format!("{scheme}{user}:{SECRET}@{rest}");
            let local_dir = a.replace(SECRET, "");
            let config = if m == 1 {
                json!({"local_dir": local_dir, "remote": url})
            } else {
                json!({"local_dir": local_dir, "remote": "s3://bucket/p", "s3_endpoint": url})
            };
            let text = config.to_string();
            match round_trips(&text) {
                Some(err) => assert!(!err.contains(SECRET), "the password is repeated in {err:?}"),
                // Accepted: then the stored config must not hold it either.
                None => {
                    let stored = Config::parse(&text).unwrap().to_json().to_string();
                    assert!(!stored.contains(SECRET), "the password is stored: {stored}");
                }
            }
        }
    }
});
