"""attachment_fetch latency with N downloads queued ahead of it and the worker busy with
them (max_concurrency 2), against the nginx WebDAV test server: a fetch takes about one
transfer, not the queue. Run: /usr/bin/python3 bench/fetch_latency.py [N] [SIZE]"""
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
import servers  # noqa: E402
from helpers import connect, one  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
SIZE = int(sys.argv[2]) if len(sys.argv) > 2 else 16 * 1024


def main():
    www, work = tempfile.mkdtemp(prefix="bench-www-"), tempfile.mkdtemp(prefix="bench-")
    os.makedirs(os.path.join(www, "q"))
    for i in range(N):
        with open(os.path.join(www, "q", f"q{i:05d}.bin"), "wb") as f:
            f.write(os.urandom(SIZE))
    nginx = servers.Nginx(www)
    try:
        b = connect(os.path.join(work, "b.db"))
        b.execute("PRAGMA journal_mode = WAL")
        b.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files", "remote": f"{nginx.url}/q/", "max_concurrency": 2}),))
        b.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, file_id TEXT)")
        b.execute("BEGIN")
        b.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"q{i:05d}") for i in range(N)])
        b.execute("COMMIT")
        b.execute("SELECT attachment_watch('items', 'SELECT file_id AS id, ''bin'' AS file_extension FROM items')")
        one(b, "SELECT attachment_reconcile()")
        alone = []
        for i in range(5):  # nothing else moving
            t = time.monotonic()
            one(b, "SELECT attachment_fetch(?)", f"q{i:05d}")
            alone.append(time.monotonic() - t)
        one(b, "SELECT attachment_start_sync()")
        started = time.monotonic()
        while one(b, "SELECT count(*) FROM attachments WHERE state = 3") < 50:
            time.sleep(0.01)
        busy, queued = [], []
        for i in range(N - 1, N - 11, -1):  # the end of the queue
            queued.append(one(b, "SELECT count(*) FROM attachments WHERE state = 1"))
            t = time.monotonic()
            one(b, "SELECT attachment_fetch(?)", f"q{i:05d}")
            busy.append(time.monotonic() - t)
        while one(b, "SELECT count(*) FROM attachments WHERE state = 1") > 0:
            time.sleep(0.05)
        drained = time.monotonic() - started
        one(b, "SELECT attachment_stop_sync()")
    finally:
        nginx.stop()
    ms = lambda xs: f"median {statistics.median(xs) * 1000:.1f} ms, max {max(xs) * 1000:.1f} ms"  # noqa: E731
    print(f"{N} files x {SIZE} bytes, nginx WebDAV on 127.0.0.1, worker max_concurrency 2")
    print(f"attachment_fetch alone: {ms(alone)}")
    print(f"attachment_fetch with {min(queued)}-{max(queued)} downloads queued and the worker busy: {ms(busy)}")
    print(f"the worker drained the whole queue in {drained:.1f} s")


if __name__ == "__main__":
    main()
