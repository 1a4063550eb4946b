"""The extension's own connection, SQLite result codes, and values checked at the door.

- The worker and attachment_sync() open the database with the host's VFS
  (unix, unix-excl, unix-dotfile) and refuse any other with a clear error.
- One SQLite per process: a second, different SQLite library is refused, never crashes.
- Errors keep SQLite's result codes: busy is SQLITE_BUSY, bad arguments SQLITE_MISUSE,
  local I/O failures SQLITE_IOERR.
- attachment_init refuses values that can never work, naming the key, never repeating credentials.
"""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import unittest

from helpers import LIB, Case, one

APSW_VENV = os.path.expanduser("~/.cache/sqlite-attachments/apsw-venv")


def open_uri(uri, timeout=5.0):
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout, check_same_thread=False)
    conn.enable_load_extension(True)
    conn.load_extension(LIB)
    conn.enable_load_extension(False)
    return conn


class Vfs(Case):
    def init(self, conn, **extra):
        cfg = {"local_dir": os.path.join(self.dir, "files"), "remote": f"file://{self.remote}", **extra}
        return json.loads(one(conn, "SELECT attachment_init(?)", json.dumps(cfg)))

    def test_unix_dotfile_worker_and_host_writing_concurrently(self):
        path = os.path.join(self.dir, "app.db")
        conn = open_uri(f"file:{path}?vfs=unix-dotfile", timeout=20)
        self.init(conn, sync_interval_ms=50)
        conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        one(conn, "SELECT attachment_start_sync()")
        errors, saved = [], []
        deadline = time.monotonic() + 3
        try:
            while time.monotonic() < deadline:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    saved.append(one(conn, "SELECT attachment_save(randomblob(2000), 'bin')"))
                    conn.execute("INSERT INTO notes(body) VALUES (hex(randomblob(500)))")
                    conn.execute("COMMIT")
                except sqlite3.Error as e:
                    errors.append(f"{e.sqlite_errorname}: {e}")
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            # Let the worker drain what is queued, still running while we read.
            until = time.monotonic() + 20
            while time.monotonic() < until:
                left = one(conn, "SELECT count(*) FROM attachment_queue WHERE state_name = 'QUEUED_UPLOAD'")
                if left == 0:
                    break
                time.sleep(0.1)
        finally:
            one(conn, "SELECT attachment_stop_sync()")
        self.assertEqual(errors, [])
        self.assertGreater(len(saved), 10)
        self.assertEqual(one(conn, "PRAGMA integrity_check"), "ok")
        self.assertEqual(one(conn, "SELECT count(*) FROM attachment_queue WHERE state_name = 'QUEUED_UPLOAD'"), 0)
        self.assertEqual(len(os.listdir(self.remote)), len(saved))

    def test_unix_excl_sync_and_worker(self):
        path = os.path.join(self.dir, "app.db")
        conn = open_uri(f"file:{path}?vfs=unix-excl")
        conn.execute("PRAGMA journal_mode=WAL")
        self.init(conn)
        one(conn, "SELECT attachment_save(x'0102', 'bin')")
        self.assertEqual(json.loads(one(conn, "SELECT attachment_sync()"))["uploaded"], 1)
        one(conn, "SELECT attachment_save(x'0304', 'bin')")
        one(conn, "SELECT attachment_start_sync()")
        try:
            until = time.monotonic() + 15
            while time.monotonic() < until and len(os.listdir(self.remote)) < 2:
                time.sleep(0.05)
        finally:
            one(conn, "SELECT attachment_stop_sync()")
        self.assertEqual(len(os.listdir(self.remote)), 2)
        self.assertEqual(one(conn, "PRAGMA integrity_check"), "ok")

    def test_readonly_uri_parameters_are_not_copied(self):
        # A host reading with mode=ro can still run a pass: our connection writes.
        path = os.path.join(self.dir, "app.db")
        writer = open_uri(path)
        self.init(writer)
        one(writer, "SELECT attachment_save(x'01', 'bin')")
        reader = open_uri(f"file:{path}?vfs=unix&mode=ro")
        self.assertEqual(json.loads(one(reader, "SELECT attachment_sync()"))["uploaded"], 1)
        self.assertEqual(one(writer, "SELECT state_name FROM attachment_queue"), "SYNCED")

    def test_other_vfs_is_refused_clearly(self):
        path = os.path.join(self.dir, "app.db")
        for vfs in ("unix-none", "memdb"):
            with self.subTest(vfs=vfs):
                conn = open_uri(f"file:{path}-{vfs}?vfs={vfs}")
                for sql in ("SELECT attachment_init(?)",):
                    cfg = {"local_dir": os.path.join(self.dir, "files"), "remote": f"file://{self.remote}"}
                    with self.assertRaises(sqlite3.Error) as cm:
                        conn.execute(sql, (json.dumps(cfg),)).fetchone()
                    msg = str(cm.exception)
                    self.assertIn(f"VFS '{vfs}", msg)
                    self.assertIn("unix, unix-excl or unix-dotfile", msg)
                    self.assertEqual(cm.exception.sqlite_errorname, "SQLITE_MISUSE")

    def test_other_vfs_refused_by_sync_and_start_sync(self):
        # A database initialised under the default VFS, then opened with unix-none.
        path = os.path.join(self.dir, "app.db")
        self.init(open_uri(path))
        conn = open_uri(f"file:{path}?vfs=unix-none")
        for fn in ("attachment_sync", "attachment_start_sync", "attachment_reconcile"):
            with self.subTest(fn=fn):
                with self.assertRaises(sqlite3.Error) as cm:
                    one(conn, f"SELECT {fn}()")
                self.assertIn("'unix-none'", str(cm.exception))
                self.assertIn(fn, str(cm.exception))


class ResultCodes(Case):
    def test_wrong_arguments_are_misuse(self):
        conn = self.device("a")
        for sql in ("SELECT attachment_save()", "SELECT attachment_save(NULL, 'txt')",
                    "SELECT attachment_delete(1)", "SELECT attachment_init('not json')",
                    "SELECT attachment_save(x'00', '../x')"):
            with self.subTest(sql=sql):
                with self.assertRaises(sqlite3.Error) as cm:
                    conn.execute(sql).fetchone()
                self.assertEqual(cm.exception.sqlite_errorname, "SQLITE_MISUSE")
                self.assertTrue(str(cm.exception).startswith("attachment_"), str(cm.exception))

    def test_locked_database_is_busy(self):
        a = self.device("a")
        b = sqlite3.connect(os.path.join(self.dir, "a.db"), isolation_level=None, timeout=0.05)
        b.execute("BEGIN IMMEDIATE")
        try:
            with self.assertRaises(sqlite3.Error) as cm:
                a.execute("SELECT attachment_save(x'00', 'txt')").fetchone()
        finally:
            b.execute("ROLLBACK")
        self.assertEqual(cm.exception.sqlite_errorname, "SQLITE_BUSY")
        self.assertIn("attachment_save", str(cm.exception))
        self.assertIn("locked", str(cm.exception))

    def test_local_io_failure_is_ioerr(self):
        conn = self.device("a")
        folder = os.path.join(self.dir, "files-a")
        shutil.rmtree(folder)
        # A folder where nobody may create files, not even root: the write itself fails.
        os.symlink("/sys/kernel", folder)
        with self.assertRaises(sqlite3.Error) as cm:
            conn.execute("SELECT attachment_save(x'00', 'txt')").fetchone()
        self.assertEqual(cm.exception.sqlite_errorname, "SQLITE_IOERR", str(cm.exception))
        self.assertIn("files-a", str(cm.exception))

    def test_not_initialized_and_inside_transaction_are_misuse(self):
        conn = sqlite3.connect(os.path.join(self.dir, "x.db"), isolation_level=None)
        conn.enable_load_extension(True)
        conn.load_extension(LIB)
        with self.assertRaises(sqlite3.Error) as cm:
            conn.execute("SELECT attachment_save(x'00', 'txt')").fetchone()
        self.assertEqual(cm.exception.sqlite_errorname, "SQLITE_MISUSE")
        dev = self.device("a")
        dev.execute("BEGIN")
        with self.assertRaises(sqlite3.Error) as cm:
            dev.execute("SELECT attachment_sync()").fetchone()
        dev.execute("ROLLBACK")
        self.assertEqual(cm.exception.sqlite_errorname, "SQLITE_MISUSE")


class ConfigAtTheDoor(Case):
    def refused(self, conn, cfg):
        with self.assertRaises(sqlite3.Error) as cm:
            conn.execute("SELECT attachment_init(?)", (json.dumps(cfg),)).fetchone()
        return str(cm.exception)

    def test_values_that_can_never_work_name_the_key(self):
        conn = self.device("a")
        base = {"local_dir": "f", "remote": f"file://{self.remote}"}
        cases = [
            ({"remote": "http://my host/x/"}, "'remote'"),
            ({"remote": "http://hôst.example/x/"}, "'remote'"),
            ({"remote": "https://host:99999/x/"}, "'remote'"),
            ({"remote": "signed+http://bad host/x"}, "'remote'"),
            ({"remote": "s3://bucket/p", "s3_endpoint": "http://my host:9000"}, "'s3_endpoint'"),
            ({"remote": "s3://bucket/p", "s3_endpoint": "http://h:70000"}, "'s3_endpoint'"),
            ({"remote": "s3://bucket/p", "s3_region": "us/east"}, "'s3_region'"),
            ({"remote": "s3://bucket/p", "s3_region": "us#1"}, "'s3_region'"),
            ({"remote": "s3://bucket/p", "s3_region": "a@b"}, "'s3_region'"),
        ]
        for extra, key in cases:
            with self.subTest(extra=extra):
                self.assertIn(key, self.refused(conn, {**base, **extra}))

    def test_reserved_table_names_are_refused(self):
        conn = self.device("a")
        for name in ("attachment_queue", "ATTACHMENT_QUEUE", "attachment_watches", "_attachments_config", "sqlite_x"):
            with self.subTest(name=name):
                msg = self.refused(conn, {"local_dir": "f", "remote": f"file://{self.remote}", "table": name})
                self.assertIn("'table'", msg)
                self.assertIn("reserved", msg)
        # The virtual table still answers.
        self.assertEqual(one(conn, "SELECT count(*) FROM attachment_queue"), 0)

    def test_errors_never_repeat_credentials(self):
        conn = self.device("a")
        for remote in ("https://user:hunter2@host/x/", "https://user:hunter2@host/x/?token=s3cr3t",
                       "http://host/x/?X-Amz-Signature=s3cr3t", "signed+https://u:hunter2@api/x",
                       "s3://user:hunter2@bucket/x"):
            with self.subTest(remote=remote):
                msg = self.refused(conn, {"local_dir": "f", "remote": remote})
                self.assertNotIn("hunter2", msg)
                self.assertNotIn("s3cr3t", msg)
                self.assertIn("'remote'", msg)
        msg = self.refused(conn, {"local_dir": "f", "remote": "s3://b-1/x", "s3_endpoint": "http://ak:hunter2@h:9000"})
        self.assertNotIn("hunter2", msg)

    def test_stored_config_with_duplicate_keys_is_refused(self):
        conn = self.device("a")
        stored = one(conn, "SELECT config FROM _attachments_config")
        edited = stored[:-1] + ', "table": "other"}'
        conn.execute("UPDATE _attachments_config SET config = ?", (edited,))
        with self.assertRaises(sqlite3.Error) as cm:
            conn.execute("SELECT attachment_save(x'00', 'txt')").fetchone()
        self.assertIn("'table'", str(cm.exception))
        self.assertIn("more than once", str(cm.exception))
        with self.assertRaises(sqlite3.Error) as cm:
            conn.execute("""SELECT attachment_init('{"local_dir":"f","remote":"file:///r","local_dir":"g"}')""").fetchone()
        self.assertIn("'local_dir'", str(cm.exception))
        self.assertIn("more than once", str(cm.exception))


# Runs in a subprocess: loads the extension into apsw's SQLite and the stdlib's, in `order`.
TWO_LIBRARIES = textwrap.dedent("""
    import json, os, sqlite3, sys
    import apsw
    lib, folder, order = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = json.dumps({"local_dir": os.path.join(folder, "files"), "remote": "file://" + os.path.join(folder, "remote")})

    def load_std():
        c = sqlite3.connect(os.path.join(folder, "std.db"), isolation_level=None)
        c.enable_load_extension(True)
        c.load_extension(lib)
        return c

    def load_apsw():
        c = apsw.Connection(os.path.join(folder, "apsw.db"))
        c.enable_load_extension(True)
        c.load_extension(lib)
        return c

    first, second = (load_apsw, load_std) if order == "apsw-first" else (load_std, load_apsw)
    a = first()
    a.execute("SELECT attachment_init(?)", (cfg,))
    try:
        second()
        print("SECOND-LOADED")
    except Exception as e:
        print("REFUSED:", e)
    # The first library keeps working: saves and a sync pass.
    for _ in range(3):
        a.execute("SELECT attachment_save(x'0102', 'bin')")
    print("SYNC:", list(a.execute("SELECT attachment_sync()"))[0][0])
""")


class OneSqlitePerProcess(Case):
    @classmethod
    def setUpClass(cls):
        cls.python = os.path.join(APSW_VENV, "bin", "python")
        if not os.path.exists(cls.python) or subprocess.run([cls.python, "-c", "import apsw"]).returncode != 0:
            # Debian's Python (it can load extensions) with apsw, which bundles its own SQLite.
            subprocess.run(["/usr/bin/python3", "-m", "venv", APSW_VENV], check=True)
            if subprocess.run([cls.python, "-m", "pip", "install", "-q", "apsw"]).returncode != 0:
                raise unittest.SkipTest("apsw cannot be installed (offline?)")

    def run_order(self, order):
        folder = os.path.join(self.dir, order)
        os.makedirs(folder, exist_ok=True)
        p = subprocess.run([self.python, "-c", TWO_LIBRARIES, LIB, folder, order],
                           capture_output=True, text=True, timeout=60)
        return p

    def test_both_orders_refuse_the_second_library_and_keep_the_first(self):
        for order in ("apsw-first", "stdlib-first"):
            for run in range(3):
                with self.subTest(order=order, run=run):
                    p = self.run_order(order)
                    self.assertEqual(p.returncode, 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
                    self.assertIn("REFUSED:", p.stdout)
                    self.assertIn("one SQLite per process: already loaded into another SQLite library", p.stdout)
                    summary = json.loads(p.stdout.split("SYNC:", 1)[1])
                    self.assertEqual(summary["uploaded"], 3)


if __name__ == "__main__":
    unittest.main()
