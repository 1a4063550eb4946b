"""Worker throughput: N small files uploaded, then downloaded by a second
database, with max_concurrency 1 and 4, against the nginx WebDAV test server.
Run: /usr/bin/python3 bench/worker_throughput.py [N] [SIZE]"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import device, drain, series, servers  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
SIZE = int(sys.argv[2]) if len(sys.argv) > 2 else 16 * 1024


def main():
    www = tempfile.mkdtemp(prefix="bench-www-")
    nginx = servers.Nginx(www)
    try:
        print(f"{N} files x {SIZE} bytes, nginx WebDAV on 127.0.0.1, worker (attachment_start_sync)")
        for concurrency in (1, 4):
            work = tempfile.mkdtemp(prefix="bench-")
            remote = f"{nginx.url}/c{concurrency}/"
            a = device(os.path.join(work, "a.db"), "a", remote, concurrency)
            a.execute("BEGIN IMMEDIATE")
            a.execute(f"INSERT INTO items SELECT value, attachment_save(randomblob({SIZE}), 'bin') FROM ({series(N)})")
            a.execute("COMMIT")
            up = drain(a)
            b = device(os.path.join(work, "b.db"), "b", remote, concurrency)
            b.execute("BEGIN IMMEDIATE")
            b.executemany("INSERT INTO items VALUES (?, ?)", a.execute("SELECT id, file_id FROM items").fetchall())
            b.execute("COMMIT")
            down = drain(b)
            print(f"  max_concurrency {concurrency}: upload {N / up:7.0f} files/s ({up:.2f} s), "
                  f"download {N / down:7.0f} files/s ({down:.2f} s)")
    finally:
        nginx.stop()


if __name__ == "__main__":
    main()
