"""Shared set-up for the Python tests: find a driver that can load extensions."""
import json
import os
import sqlite3
import tempfile
import time
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LIB = os.path.join(ROOT, "dist", "attachments")


def connect(path, load=True):
    """A stdlib sqlite3 connection with the extension loaded (autocommit off: Python's default)."""
    conn = sqlite3.connect(path, isolation_level=None)
    if load:
        conn.enable_load_extension(True)
        conn.load_extension(LIB)
        conn.enable_load_extension(False)
    return conn


def files_in(folder):
    """Names in a local_dir, without the owner marker every local_dir holds."""
    return [n for n in os.listdir(folder) if n != ".attachments-owner"]


def one(conn, sql, *args):
    return conn.execute(sql, args).fetchone()[0]


class Case(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="att-py-")
        self.dir = self._tmp.name
        self.remote = os.path.join(self.dir, "remote")
        # Connections whose worker a test started; stopped before the folder goes.
        self.started = []

    def tearDown(self):
        for conn in self.started:
            try:
                conn.execute("SELECT attachment_stop_sync()")
            except Exception:
                pass
        # A stopped pass's transfer notices the stop within its next read slice (100 ms) and may
        # keep its partial file then: a folder removed at that moment can gain a file meanwhile.
        for attempt in range(20):
            try:
                self._tmp.cleanup()
                return
            except OSError:
                if attempt == 19:
                    raise
                time.sleep(0.1)

    def device(self, name, **config):
        conn = connect(os.path.join(self.dir, f"{name}.db"))
        cfg = {"local_dir": f"files-{name}", "remote": f"file://{self.remote}", **config}
        conn.execute("SELECT attachment_init(?)", (json.dumps(cfg),))
        return conn

    def sync(self, conn):
        return json.loads(one(conn, "SELECT attachment_sync()"))

    def age_files(self, folder, seconds=120):
        old = time.time() - seconds
        for name in os.listdir(folder):
            os.utime(os.path.join(folder, name), (old, old))
