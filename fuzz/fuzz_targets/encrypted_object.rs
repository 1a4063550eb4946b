//! The encrypted object format as a download meets it: a file sealed here, then damaged
//! in transit or by the store (bytes flipped, cut, inserted, removed), opened in pieces
//! of any size. Accepted only when unchanged, then byte-identical; whatever reached the
//! local file before a refusal is a prefix of the true plaintext (only authenticated
//! chunks are written); never a panic. Plaintext mode passes anything without the header.
#![no_main]

use attachments::fuzzing::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, Vec<(u8, u32, u8)>, u16, bool, u8)| {
    let (plain, damage, step, accept_plaintext, size_class) = input;
    // Stretch some inputs past the 64 KiB chunk, so chunk boundaries are reached.
    let plain: Vec<u8> = match size_class % 4 {
        0 if !plain.is_empty() => plain.iter().cycle().take(64 * 1024 + plain.len()).copied().collect(),
        _ => plain,
    };
    let keys = EncryptionKeys::from_bytes([7; 32], accept_plaintext);
    let object = seal_object(&keys, &[3; ENCRYPTION_NONCE_PREFIX], "fuzz-id", &plain);
    let mut bad = object.clone();
    for (op, at, byte) in damage.iter().take(4) {
        let at = *at as usize % (bad.len() + 1);
        match op % 4 {
            0 if at < bad.len() => bad[at] ^= byte | 1,
            1 => bad.truncate(at),
            2 => bad.insert(at, *byte),
            3 if at < bad.len() => {
                bad.remove(at);
            }
            _ => {}
        }
    }
    let (written, result) = open_object(&keys, "fuzz-id", &bad, usize::from(step) + 1);
    if bad == object {
        assert_eq!(result.as_ref().ok(), Some(&(plain.len() as u64)), "an intact object was refused");
        assert_eq!(written, plain, "an intact object opened to other bytes");
    } else if looks_like_a_header(&bad) || !accept_plaintext {
        assert!(result.is_err(), "a damaged object was accepted");
        assert!(written.len() <= plain.len() && written[..] == plain[..written.len()], "unauthenticated bytes were written");
    } else {
        // Without the header, plaintext mode hands the bytes on as they are.
        assert_eq!(written, bad);
    }
});

/// Starts with the magic with at most a quarter of its bytes changed, is cut inside it, or
/// is empty: never plaintext, even with accept_plaintext.
fn looks_like_a_header(object: &[u8]) -> bool {
    let seen = object.len().min(8);
    let differing = object[..seen].iter().zip(b"SQLATTE\x01").filter(|(a, b)| a != b).count();
    differing <= seen / 4
}
