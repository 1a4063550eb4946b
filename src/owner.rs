//! Who holds a claim: this process's identity in `claimed_by`, and whether the
//! process behind another identity is still alive.
//!
//! A PID says little: every container's first process is PID 1, and PIDs are
//! reused. So liveness is an advisory lock. Each process takes a slot in
//! `{database}-attachments-owners` by holding an open-file-description lock on
//! one byte of it, and writes its random token beside that byte. A claim names
//! the slot and the token; its owner is alive while the byte is locked and the
//! token is still there. The kernel drops the lock when the process dies, in
//! whatever PID namespace it ran. Where no lock can be taken (another OS, a
//! read-only folder), claims fall back to their lease alone.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{LazyLock, Mutex};

/// Slots tried before giving up on a lock of our own (processes syncing one file at once).
#[cfg(target_os = "linux")]
const SLOTS: u64 = 4096;
/// Bytes of the file per slot: the token is written at the start of its slot.
#[cfg(target_os = "linux")]
const SLOT_BYTES: u64 = 16;

/// This process's identity for one database file.
struct Identity {
    pid: u32,
    id: String,
    /// Holds the slot's lock for as long as the process lives (closing it would drop the lock).
    _lock: Option<File>,
}

static IDENTITIES: LazyLock<Mutex<HashMap<String, Identity>>> = LazyLock::new(Default::default);

/// The `claimed_by` value of this process for `db_file`. After a `fork()` the child
/// gets an identity of its own: it shares nothing of the parent's claims.
pub fn current(db_file: &str) -> String {
    let pid = std::process::id();
    let mut ids = IDENTITIES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = ids.get(db_file).filter(|i| i.pid == pid) {
        return found.id.clone();
    }
    // In a forked child the parent's entry is stale. Closing our copy of its lock file
    // leaves the parent's lock in place (it holds the same open file description).
    ids.remove(db_file);
    let token = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let identity = match take_slot(db_file, &token) {
        Some((slot, file)) => Identity { pid, id: format!("pid:{pid}:{token}:slot:{slot}"), _lock: Some(file) },
        None => Identity { pid, id: format!("pid:{pid}:{token}"), _lock: None },
    };
    let id = identity.id.clone();
    ids.insert(db_file.to_string(), identity);
    id
}

/// Whether the owner named `claimed_by` is known to be gone. False when it cannot be
/// told (an identity without a slot, or no lock file): the claim's lease decides then.
pub fn is_dead(db_file: &str, claimed_by: &str) -> bool {
    let Some((token, slot)) = parse(claimed_by) else { return false };
    slot_is_free_of(db_file, slot, token)
}

/// `pid:{pid}:{token}:slot:{slot}` → (token, slot).
fn parse(claimed_by: &str) -> Option<(&str, u64)> {
    let rest = claimed_by.strip_prefix("pid:")?;
    let mut parts = rest.split(':');
    let (_pid, token, word, slot) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (word == "slot" && parts.next().is_none()).then_some(())?;
    Some((token, slot.parse().ok()?))
}

#[cfg(target_os = "linux")]
fn lock_path(db_file: &str) -> String {
    format!("{db_file}-attachments-owners")
}

#[cfg(target_os = "linux")]
fn open_lock_file(db_file: &str) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Never truncated: it holds the tokens of the live owners.
    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o644).open(lock_path(db_file)).ok()
}

#[cfg(target_os = "linux")]
fn ofd_lock(file: &File, slot: u64, cmd: libc::c_int, kind: libc::c_short) -> Option<libc::flock> {
    use std::os::fd::AsRawFd;
    // Safety: a zeroed flock is a valid value; fcntl reads and writes only this struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = (slot * SLOT_BYTES) as libc::off_t;
    fl.l_len = 1;
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
    (rc == 0).then_some(fl)
}

#[cfg(target_os = "linux")]
fn take_slot(db_file: &str, token: &str) -> Option<(u64, File)> {
    use std::os::unix::fs::FileExt;
    let file = open_lock_file(db_file)?;
    for slot in 0..SLOTS {
        if ofd_lock(&file, slot, libc::F_OFD_SETLK, libc::F_WRLCK as libc::c_short).is_some() {
            // Lock first, token second: a reader that sees the old token meanwhile thinks the
            // old owner alive and waits for its lease, which is the safe mistake.
            file.write_all_at(token.as_bytes(), slot * SLOT_BYTES).ok()?;
            return Some((slot, file));
        }
    }
    None
}

#[cfg(target_os = "linux")]
fn slot_is_free_of(db_file: &str, slot: u64, token: &str) -> bool {
    use std::os::unix::fs::FileExt;
    if slot >= SLOTS {
        return false;
    }
    let Some(file) = open_lock_file(db_file) else { return false };
    let Some(probe) = ofd_lock(&file, slot, libc::F_OFD_GETLK, libc::F_WRLCK as libc::c_short) else { return false };
    if probe.l_type == libc::F_UNLCK as libc::c_short {
        return true;
    }
    // Locked: by the same owner only if its token is still there (slots are reused).
    let mut held = vec![0u8; token.len()];
    match file.read_exact_at(&mut held, slot * SLOT_BYTES) {
        Ok(()) => held != token.as_bytes(),
        Err(_) => false,
    }
}

#[cfg(not(target_os = "linux"))]
fn take_slot(_db_file: &str, _token: &str) -> Option<(u64, File)> {
    None
}

#[cfg(not(target_os = "linux"))]
fn slot_is_free_of(_db_file: &str, _slot: u64, _token: &str) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_parse_and_liveness_follows_the_lock() {
        let db = std::env::temp_dir().join(format!("att-owner-{}.db", uuid::Uuid::new_v4().simple()));
        let db = db.to_str().unwrap();
        let me = current(db);
        assert_eq!(current(db), me, "stable within a process");
        let (token, slot) = parse(&me).expect("a slot was taken");
        assert!(!is_dead(db, &me), "our own slot is held");
        // Same slot, another token: the slot was reused, so that owner is gone.
        assert!(is_dead(db, &format!("pid:1:{}:slot:{slot}", "x".repeat(token.len()))));
        // A slot nobody holds.
        assert!(is_dead(db, &format!("pid:1:{token}:slot:{}", slot + 7)));
        // Identities this process cannot judge are left to their lease.
        assert!(!is_dead(db, "pid:123:abcdef12"));
        assert!(!is_dead(db, "something else"));
        let _ = std::fs::remove_file(lock_path(db));
    }
}
