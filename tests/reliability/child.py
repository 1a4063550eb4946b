"""The processes the reliability suite starts (and kills). Each uses the
extension the way an app does: Debian's /usr/bin/python3, stdlib sqlite3.

  child.py init-a|init-b DB CONFIG_JSON
  child.py cycle  DB_A DB_B SEED FIRST_SEQ SAVES LARGE JOURNAL   (killed at a random instant)
  child.py recover DB_A DB_B SEED                                 (the restart after a kill)
  child.py worker DB STOP_FILE                                    (attachment_start_sync until STOP_FILE exists)
  child.py writer DB SEED FIRST_SEQ TXNS PER_TXN HOLD_S GAP_S JOURNAL  (long write transactions that save files)
"""
import json
import os
import random
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LIB, content  # noqa: E402

SMALL = (1, 300_000)


def connect(db):
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    conn.enable_load_extension(True)
    conn.load_extension(LIB)
    conn.enable_load_extension(False)
    return conn


def one(conn, sql, *args):
    return conn.execute(sql, args).fetchone()[0]


class Journal:
    """Append-only notes the checker reads after the kill (page cache survives SIGKILL)."""

    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def note(self, *parts):
        self.f.write(" ".join(str(p) for p in parts) + "\n")

    def phase(self, name):
        self.note("phase", name, f"{time.time():.4f}")


def size_for(seed, seq, large):
    rng = random.Random(f"{seed}/size/{seq}")
    return 17 * 1024 * 1024 + rng.randrange(4096) if large else rng.randrange(*SMALL)


def sync_until_done(conn, max_passes=40):
    """attachment_sync() until nothing is pending. A row still pending after a pass
    waits on its backoff: move its time forward ("time passes") and go again."""
    passes = 0
    while passes < max_passes:
        passes += 1
        summary = json.loads(one(conn, "SELECT attachment_sync()"))
        if summary["pending"] == 0:
            return passes, summary
        conn.execute("UPDATE attachments SET next_attempt_at = 0 WHERE state IN (0, 1, 2)")
    errors = conn.execute("SELECT id, state, last_error FROM attachments WHERE state IN (0,1,2) LIMIT 5").fetchall()
    raise SystemExit(f"still pending after {max_passes} passes: {errors}")


def init(db, config, role):
    conn = connect(db)
    conn.execute("SELECT attachment_init(?)", (config,))
    if role == "a":
        conn.execute("CREATE TABLE IF NOT EXISTS photos(seq INTEGER PRIMARY KEY, id TEXT, keep INTEGER)")
        conn.execute("SELECT attachment_watch('photos', 'SELECT id, ''bin'' AS file_extension FROM photos WHERE keep = 1')")
    else:
        conn.execute("CREATE TABLE IF NOT EXISTS refs(id TEXT PRIMARY KEY)")
        conn.execute("SELECT attachment_watch('refs', 'SELECT id, ''bin'' AS file_extension FROM refs')")


def save(conn, journal, seed, seq, large=False):
    size = size_for(seed, seq, large)
    journal.note("begin", seq, size)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO photos VALUES (?, attachment_save(?, 'bin'), 1)", (seq, content(seed, seq, size)))
    conn.execute("COMMIT")
    journal.note("commit", seq)


def b_references(a, b):
    """Device B references what A saved (never the ids A may delete: seq % 5 == 0)."""
    ids = [r[0] for r in a.execute("SELECT id FROM photos WHERE seq % 5 != 0")]
    b.execute("BEGIN IMMEDIATE")
    b.executemany("INSERT OR IGNORE INTO refs VALUES (?)", [(i,) for i in ids])
    b.execute("COMMIT")


def cycle(db_a, db_b, seed, first, saves, large, journal_path):
    j = Journal(journal_path)
    rng = random.Random(f"{seed}/cycle/{first}")
    a, b = connect(db_a), connect(db_b)
    j.phase("save")
    for k in range(saves):
        save(a, j, seed, first + k)
    if large:
        j.phase("save-large")
        save(a, j, seed, first + saves, large=True)
    j.phase("upload")
    one(a, "SELECT attachment_sync()")
    j.phase("download")
    b_references(a, b)
    one(b, "SELECT attachment_sync()")
    j.phase("delete")
    old = [r for r in a.execute("SELECT seq, id FROM photos WHERE seq < ? AND seq % 5 = 0", (first,))]
    if old:
        seq, id_ = rng.choice(old)
        j.note("delete", seq, id_)
        a.execute("BEGIN IMMEDIATE")
        a.execute("SELECT attachment_delete(id) FROM photos WHERE seq = ?", (seq,))
        a.execute("DELETE FROM photos WHERE seq = ?", (seq,))
        a.execute("COMMIT")
        one(a, "SELECT attachment_sync()")
    j.phase("expire")
    kept = [r[0] for r in a.execute("SELECT seq FROM photos WHERE seq < ? AND seq % 5 = 1 AND keep = 1", (first,))]
    if kept:
        a.execute("UPDATE photos SET keep = 0 WHERE seq = ?", (rng.choice(kept),))
        one(a, "SELECT attachment_sync()")
        one(a, "SELECT attachment_expire_cache()")
    j.phase("worker")
    # The background worker moves two more saves by itself (a kill here lands in its thread).
    one(a, "SELECT attachment_start_sync()")
    for k in range(2):
        save(a, j, seed, first + 50 + k)
    deadline = time.time() + 20
    while time.time() < deadline and one(a, "SELECT count(*) FROM attachments WHERE state IN (0, 1, 2)"):
        time.sleep(0.01)
    one(a, "SELECT attachment_stop_sync()")
    j.phase("verify")
    one(a, "SELECT attachment_verify()")
    one(b, "SELECT attachment_verify()")
    j.phase("done")


def recover(db_a, db_b):
    a = connect(db_a)
    out = {"verify_a": json.loads(one(a, "SELECT attachment_verify()"))}
    out["passes_a"], _ = sync_until_done(a)
    b = connect(db_b)
    out["verify_b"] = json.loads(one(b, "SELECT attachment_verify()"))
    b_references(a, b)
    out["passes_b"], _ = sync_until_done(b)
    print(json.dumps(out))


def worker(db, stop_file):
    conn = connect(db)
    one(conn, "SELECT attachment_start_sync()")
    while not os.path.exists(stop_file):
        # The app keeps reading while the worker runs; any error here reaches the app.
        conn.execute("SELECT count(*) FROM attachment_queue WHERE state_name = 'SYNCED'").fetchone()
        time.sleep(0.2)
    one(conn, "SELECT attachment_stop_sync()")
    print("worker stopped cleanly")


def writer(db, seed, first, txns, per_txn, hold, gap, journal_path):
    j = Journal(journal_path)
    conn = connect(db)
    seq = first
    for _ in range(txns):
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(per_txn):
            size = size_for(seed, seq, False)
            j.note("begin", seq, size)
            conn.execute("INSERT INTO photos VALUES (?, attachment_save(?, 'bin'), 1)", (seq, content(seed, seq, size)))
            seq += 1
        time.sleep(hold)  # a long write transaction, as a slow app holds one
        conn.execute("COMMIT")
        time.sleep(gap)  # then the next one soon after: a busy app leaves the lock free only briefly
    print("writer done")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd in ("init-a", "init-b"):
        init(args[0], args[1], cmd[-1])
    elif cmd == "cycle":
        cycle(args[0], args[1], args[2], int(args[3]), int(args[4]), args[5] == "1", args[6])
    elif cmd == "recover":
        recover(args[0], args[1])
    elif cmd == "worker":
        worker(args[0], args[1])
    elif cmd == "writer":
        writer(args[0], args[1], int(args[2]), int(args[3]), int(args[4]), float(args[5]), float(args[6]), args[7])
    else:
        raise SystemExit(f"unknown command {cmd}")
