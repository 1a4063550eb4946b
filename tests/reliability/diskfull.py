"""Part 4, disk full: the database and local_dir on a small tmpfs that fills up
mid-save (device A) and mid-download (device B). A full disk must give a clear
error, leave nothing half-written recorded as complete, and everything must
converge once space returns (the tmpfs is remounted larger). Needs root and
mount(8); without them the part prints one SKIP line."""
import json
import os
import subprocess
import time

from common import Failures, Remote, age_files, cleanup, content, file_sha, integrity, rows, sha, temp_files, workdir
from child import connect, one

MiB = 1024 * 1024
SYNCED = 3
FULL = ("space", "full")


def mount(path, size):
    os.makedirs(path, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True, text=True)


def remount(path, size):
    subprocess.run(["mount", "-o", f"remount,size={size}", path], check=True, capture_output=True)


def converge(conn, limit=20):
    for _ in range(limit):
        if json.loads(one(conn, "SELECT attachment_sync()"))["pending"] == 0:
            return True
        conn.execute("UPDATE attachments SET next_attempt_at = 0 WHERE state IN (0, 1, 2)")
    return False


def check_rows(fails, label, db, folder, expected, want_all):
    q = rows(db)
    for id_, want in expected.items():
        r = q.get(id_)
        if r is None or r["state"] != SYNCED:
            if want_all:
                fails.add(f"{label}: {id_} is {r and r['state']} (last_error {r and r['last_error']!r}, "
                          f"claimed_until {r and r['claimed_until'] and (r['claimed_until'] / 1000 - time.time()):.0f} s from now), not SYNCED")
            continue
        if file_sha(os.path.join(folder, r["local_uri"] or "?")) != want:
            fails.add(f"{label}: {id_} is SYNCED but its local file is not the saved bytes", key=(label, id_))
    if want_all and temp_files(folder):
        fails.add(f"{label}: temp files left: {temp_files(folder)[:3]}")
    if integrity(db) != "ok":
        fails.add(f"{label}: integrity_check: {integrity(db)}")


def db_full_sweep(fails, seed, folder, remote, expected_files):
    """Mid-download with only the database full: B's local_dir has room, its database's
    file system has `room` bytes left, swept so that some pass fails after claiming rows
    (the claims are written) and before recording them. Once the space returns, the next
    passes of the same process must download everything."""
    stuck = 0
    for room in range(4096, 40960, 4096):
        small = os.path.join(folder, f"db-{room}")
        if mount(small, "1m").returncode:
            return None
        b = None
        try:
            db = os.path.join(small, "b.db")
            files = os.path.join(folder, f"files-db-{room}")
            b = connect(db)
            b.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": files, "max_attempts": 1000, **remote.config()}),))
            b.execute("CREATE TABLE refs(id TEXT PRIMARY KEY)")
            b.execute("SELECT attachment_watch('refs', 'SELECT id, ''bin'' AS file_extension FROM refs')")
            b.executemany("INSERT INTO refs VALUES (?)", [(i,) for i in expected_files])
            one(b, "SELECT attachment_reconcile()")
            b.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            ballast = os.path.join(small, "ballast")
            fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, bytes(65536))
            except OSError:
                pass
            os.close(fd)
            os.truncate(ballast, max(0, os.path.getsize(ballast) - room))
            try:
                one(b, "SELECT attachment_sync()")
            except Exception as e:
                if not any(w in str(e).lower() for w in FULL):
                    fails.add(f"db full ({room} bytes left): unclear error {e!r}")
            check_rows(fails, f"B, database full ({room} bytes left)", db, files, expected_files, want_all=False)
            os.remove(ballast)
            if not converge(b, limit=5):
                stuck += 1
                q = rows(db)
                held = [r for r in q.values() if r["state"] != SYNCED and r["claimed_until"]]
                fails.add(f"db full ({room} bytes left): once space returned, {len(held) or 'some'} download(s) stayed "
                          f"pending in the same process; {len(held)} still claimed for "
                          f"{max((r['claimed_until'] / 1000 - time.time() for r in held), default=0):.0f} s more "
                          f"by the pass that failed with 'database or disk is full'", key=("db-full-stuck",))
            check_rows(fails, f"B, database full ({room} bytes left), after space returned", db, files, expected_files,
                       want_all=not stuck)
        finally:
            if b is not None:
                b.close()
            subprocess.run(["umount", "-l", small], capture_output=True)
    return stuck


def run(seed):
    fails = Failures("diskfull")
    t0 = time.time()
    folder = workdir("diskfull")
    small_a, small_b = os.path.join(folder, "small-a"), os.path.join(folder, "small-b")
    m = mount(small_a, "8m")
    if m.returncode:
        cleanup(folder)
        return fails, f"diskfull: SKIP (cannot mount a tmpfs here: {m.stderr.strip() or 'mount failed'})"
    mounted = [small_a]
    remote = Remote("file", folder)
    a = b = None
    try:
        if mount(small_b, "8m").returncode == 0:
            mounted.append(small_b)
        db_a, db_b = os.path.join(small_a, "a.db"), os.path.join(small_b, "b.db")
        files_a, files_b = os.path.join(small_a, "files"), os.path.join(small_b, "files")
        cfg = {"local_dir": "files", "max_attempts": 1000, **remote.config()}
        a = connect(db_a)
        a.execute("SELECT attachment_init(?)", (json.dumps(cfg),))
        a.execute("CREATE TABLE photos(seq INTEGER PRIMARY KEY, id TEXT)")
        a.execute("SELECT attachment_watch('photos', 'SELECT id, ''bin'' AS file_extension FROM photos')")
        expected, save_error, saved_before_full = {}, None, 0
        # Mid-save: 1.5 MiB files until the 8 MiB file system is full.
        for seq in range(12):
            data = content(seed, f"full-{seq}", int(1.5 * MiB) + seq)
            try:
                a.execute("BEGIN IMMEDIATE")
                a.execute("INSERT INTO photos VALUES (?, attachment_save(?, 'bin'))", (seq, data))
                a.execute("COMMIT")
            except Exception as e:
                save_error = str(e)
                if a.in_transaction:
                    a.execute("ROLLBACK")
                break
            expected[one(a, "SELECT id FROM photos WHERE seq = ?", seq)] = sha(data)
        saved_before_full = len(expected)
        if save_error is None:
            fails.add("mid-save: 12 saves of 1.5 MiB fit on an 8 MiB file system?")
        elif not any(w in save_error.lower() for w in FULL):
            fails.add(f"mid-save: the error does not say the disk is full: {save_error!r}")
        committed = {r[0] for r in a.execute("SELECT id FROM photos")}
        extra = [i for i in rows(db_a) if i not in committed]
        if extra:
            fails.add(f"mid-save: {len(extra)} queue row(s) for saves that failed: {extra[:3]}")
        check_rows(fails, "A while full", db_a, files_a, expected, want_all=False)
        # Space returns: everything saved so far uploads, more saves work.
        remount(small_a, "64m")
        age_files(files_a)
        one(a, "SELECT attachment_verify()")
        for seq in range(100, 104):
            data = content(seed, f"full-{seq}", int(1.5 * MiB) + seq)
            a.execute("INSERT INTO photos VALUES (?, attachment_save(?, 'bin'))", (seq, data))
            expected[one(a, "SELECT id FROM photos WHERE seq = ?", seq)] = sha(data)
        if not converge(a):
            fails.add("A: uploads did not converge after space returned")
        check_rows(fails, "A after space returned", db_a, files_a, expected, want_all=True)
        for id_, want in expected.items():
            if file_sha(remote.stored(f"{id_}.bin")) != want:
                fails.add(f"A: remote copy of {id_} is not the saved bytes")
        # Mid-download: B needs more than its 8 MiB.
        download_error = None
        if small_b in mounted:
            b = connect(db_b)
            b.execute("SELECT attachment_init(?)", (json.dumps(cfg),))
            b.execute("CREATE TABLE refs(id TEXT PRIMARY KEY)")
            b.execute("SELECT attachment_watch('refs', 'SELECT id, ''bin'' AS file_extension FROM refs')")
            b.executemany("INSERT INTO refs VALUES (?)", [(i,) for i in expected])
            for _ in range(3):
                try:
                    one(b, "SELECT attachment_sync()")
                except Exception as e:
                    download_error = str(e)
                check_rows(fails, "B while full", db_b, files_b, expected, want_all=False)
                try:
                    b.execute("UPDATE attachments SET next_attempt_at = 0 WHERE state IN (0, 1, 2)")
                except Exception:
                    pass
            errors = [r["last_error"] for r in rows(db_b).values() if r["last_error"]]
            recorded = download_error or (errors[0] if errors else None)
            synced_while_full = sum(1 for r in rows(db_b).values() if r["state"] == SYNCED)
            if synced_while_full == len(expected):
                fails.add("mid-download: every download fit; the test did not fill the disk")
            elif not recorded or not any(w in recorded.lower() for w in FULL):
                fails.add(f"mid-download: no clear disk-full error (sync raised {download_error!r}; last_error {errors[:1]})")
            remount(small_b, "64m")
            age_files(files_b)
            one(b, "SELECT attachment_verify()")
            if not converge(b):
                fails.add("B: downloads did not converge after space returned")
            check_rows(fails, "B after space returned", db_b, files_b, expected, want_all=True)
        small_files = {}
        for seq in range(12):
            data = content(seed, f"dbfull-{seq}", 50_000 + seq)
            id_ = one(a, "SELECT attachment_save(?, 'bin')", data)
            small_files[id_] = sha(data)
        if not converge(a):
            fails.add("A: small uploads for the database-full sweep did not converge")
        stuck = db_full_sweep(fails, seed, folder, remote, small_files)
        line = (f"diskfull: {saved_before_full} saves fit before the disk filled, then "
                f"{'error ' + repr(save_error[-90:]) if save_error else 'NO error'}; "
                f"mid-download: {'error ' + repr((download_error or (errors[0] if errors else ''))[:80]) if small_b in mounted else 'not run'}; "
                f"{len(expected)} files {'converged' if not fails else 'checked'} once space returned; "
                f"database-full sweep: {'not run' if stuck is None else f'{stuck} of 9 stuck after space returned'}; "
                f"{time.time() - t0:.0f} s")
        return fails, line
    finally:
        for conn in (a, b):
            if conn is not None:
                conn.close()
        remote.stop()
        for path in mounted:
            subprocess.run(["umount", "-l", path], capture_output=True)
        cleanup(folder)
