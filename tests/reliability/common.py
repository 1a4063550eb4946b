"""Shared pieces of the reliability suite: remotes backed by real servers on
127.0.0.1, deterministic file contents, child processes, and the checks
every part makes (byte-identical copies, no temp files, integrity)."""
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
import servers  # noqa: E402  (tests/py/servers.py)

PYTHON = os.environ.get("PYTHON_WITH_EXTENSIONS", "/usr/bin/python3")
LIB = os.path.join(ROOT, "dist", "attachments")
MiB = 1024 * 1024
ENV = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN,
       "AWS_ACCESS_KEY_ID": servers.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY}
os.environ.update(ENV)


def content(seed, key, size):
    """The bytes of file `key`: reproducible from the seed alone, so a checker
    knows what every save wrote without trusting the database."""
    rng = random.Random(f"{seed}/{key}")
    head = f"seed={seed} key={key} size={size}\n".encode()
    if size <= len(head):
        return head[:size]
    return head + rng.randbytes(size - len(head))


def sha(data):
    return hashlib.sha256(data).hexdigest()


def file_sha(path):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        return None
    return h.hexdigest()


class Remote:
    """One remote kind; `config()` for attachment_init, `stored(filename)` the server's copy path."""

    def __init__(self, kind, workdir, proxy_port=None):
        self.kind, self.server = kind, None
        self.root = os.path.join(workdir, f"remote-{kind}")
        os.makedirs(self.root, exist_ok=True)
        if kind == "webdav":
            self.server = servers.Nginx(self.root, token=servers.TOKEN)
        elif kind == "s3":
            self.server = servers.S3(self.root)

    @property
    def port(self):
        return self.server.port

    def config(self, port=None):
        port = port or (self.server.port if self.server else None)
        if self.kind == "file":
            return {"remote": f"file://{self.root}/files"}
        if self.kind == "webdav":
            return {"remote": f"http://127.0.0.1:{port}/files/"}
        return {"remote": f"s3://{servers.BUCKET}/app/files", "s3_endpoint": f"http://127.0.0.1:{port}"}

    def stored(self, filename):
        if self.kind == "s3":
            return os.path.join(self.root, servers.BUCKET, "app", "files", filename)
        return os.path.join(self.root, "files", filename)

    def access_log(self):
        return os.path.join(self.server.dir, "access.log") if self.kind == "webdav" else None

    def stop(self):
        if self.server:
            self.server.stop()


def run_child(args, timeout=300, env=None):
    """Runs tests/reliability/child.py with Debian's python; returns (rc, stdout, stderr)."""
    p = subprocess.run([PYTHON, os.path.join(HERE, "child.py"), *args], capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, **(env or {})))
    return p.returncode, p.stdout, p.stderr


def rows(db, table="attachments"):
    """The queue as a plain reader sees it (no extension loaded)."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        conn.row_factory = sqlite3.Row
        return {r["id"]: dict(r) for r in conn.execute(f"SELECT * FROM {table}")}
    finally:
        conn.close()


def integrity(db):
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def temp_files(folder):
    if not os.path.isdir(folder):
        return []
    return [n for n in os.listdir(folder) if n.startswith(".") and ".tmp-" in n]


def age_files(folder, seconds=120):
    """Moves every file's mtime back, as if the restart happened later: verify
    leaves files younger than its 60 s grace alone (another connection's save may
    still commit them), so a check right after a kill would otherwise see them."""
    if not os.path.isdir(folder):
        return
    old = time.time() - seconds
    for name in os.listdir(folder):
        try:
            os.utime(os.path.join(folder, name), (old, old))
        except FileNotFoundError:
            pass


class Failures:
    """Collects invariant violations; prints the first few of each kind."""

    def __init__(self, part):
        self.part, self.items, self.keys = part, [], set()
        self.show = int(os.environ.get("RELIABILITY_SHOW", "12"))

    def add(self, what, key=None):
        """Records one violation; the same `key` (e.g. one row seen wrong in several passes) counts once."""
        key = key or what
        if key in self.keys:
            return
        self.keys.add(key)
        self.items.append(what)
        if len(self.items) <= self.show:
            print(f"  FAIL {self.part}: {what}", flush=True)

    def __bool__(self):
        return bool(self.items)


def workdir(name):
    return tempfile.mkdtemp(prefix=f"att-rel-{name}-")


def cleanup(path):
    shutil.rmtree(path, ignore_errors=True)


def dumps(x):
    return json.dumps(x, sort_keys=True)
