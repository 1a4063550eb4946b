"""Worker throughput: N small files uploaded, then downloaded by a second
database, with max_concurrency 1 and 4, against the nginx WebDAV test server.
Run: make bench (or /usr/bin/python3 bench/worker_throughput.py [N] [SIZE])."""
import json
import os
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "py"))
import servers  # noqa: E402
from helpers import LIB  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
SIZE = int(sys.argv[2]) if len(sys.argv) > 2 else 16 * 1024


def open_db(path, remote, local, concurrency):
    c = sqlite3.connect(path, isolation_level=None, timeout=30)
    c.enable_load_extension(True)
    c.load_extension(LIB)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("SELECT attachment_init(?)", (json.dumps(
        {"local_dir": local, "remote": remote, "max_concurrency": concurrency}),))
    c.execute("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, file_id TEXT)")
    c.execute("SELECT attachment_watch('items', 'SELECT file_id AS id, ''bin'' AS file_extension FROM items')")
    return c


def drain(conn, state_wanted):
    t0 = time.perf_counter()
    conn.execute("SELECT attachment_start_sync()")
    while conn.execute("SELECT count(*) FROM attachments WHERE state = ?", (state_wanted,)).fetchone()[0] < N:
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    conn.execute("SELECT attachment_stop_sync()")
    return elapsed


def main():
    www = tempfile.mkdtemp(prefix="bench-www-")
    nginx = servers.Nginx(www)
    try:
        print(f"{N} files x {SIZE} bytes, nginx WebDAV on 127.0.0.1, worker (attachment_start_sync)")
        for concurrency in (1, 4):
            work = tempfile.mkdtemp(prefix="bench-")
            remote = f"{nginx.url}/c{concurrency}/"
            a = open_db(os.path.join(work, "a.db"), remote, "a", concurrency)
            a.execute("BEGIN IMMEDIATE")
            for i in range(N):
                a.execute("INSERT INTO items VALUES (?, attachment_save(randomblob(?), 'bin'))", (i, SIZE))
            a.execute("COMMIT")
            up = drain(a, 3)
            b = open_db(os.path.join(work, "b.db"), remote, "b", concurrency)
            b.execute("BEGIN IMMEDIATE")
            b.executemany("INSERT INTO items VALUES (?, ?)", a.execute("SELECT id, file_id FROM items").fetchall())
            b.execute("COMMIT")
            down = drain(b, 3)
            print(f"  max_concurrency {concurrency}: upload {N / up:7.0f} files/s ({up:.2f} s), "
                  f"download {N / down:7.0f} files/s ({down:.2f} s)")
    finally:
        nginx.stop()


if __name__ == "__main__":
    main()
