"""The background worker, with real processes and a real server (nginx WebDAV)."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

import servers
from helpers import Case, LIB, connect, one


def wait_until(predicate, timeout=60, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class WorkerCase(Case):
    @classmethod
    def setUpClass(cls):
        cls.www = tempfile.mkdtemp(prefix="att-www-")
        cls.nginx = servers.Nginx(cls.www)

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()

    def setUp(self):
        super().setUp()
        self.prefix = f"w{os.getpid()}-{self.id().split('.')[-1][:40]}/"

    def remote_url(self, port=None):
        return f"http://127.0.0.1:{port or self.nginx.port}/{self.prefix}"

    def app(self, name, port=None, start=True, **config):
        conn = self.device(name, remote=self.remote_url(port), **config)
        conn.execute("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, file_id TEXT)")
        conn.execute("SELECT attachment_watch('items', 'SELECT file_id AS id, ''bin'' AS file_extension FROM items')")
        if start:
            self.assertEqual(one(conn, "SELECT attachment_start_sync()"), 1)
            self.started.append(conn)
        return conn

    def count(self, conn, state):
        return one(conn, "SELECT count(*) FROM attachments WHERE state = ?", state)

    def stored(self, filename):
        path = os.path.join(self.www, self.prefix, filename)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    def puts_in_access_log(self):
        with open(os.path.join(self.nginx.dir, "access.log")) as f:
            return [line for line in f if f'"PUT /{self.prefix}' in line]


class Worker(WorkerCase):
    def test_saved_files_upload_by_themselves_and_reach_a_second_device(self):
        a, b = self.app("a"), self.app("b")
        payloads = {}
        for i in range(200):
            data = os.urandom(1000 + i)
            a.execute("INSERT INTO items VALUES (?, attachment_save(?, 'bin'))", (i, data))
            payloads[i] = data
        wait_until(lambda: self.count(a, 3) == 200, what="200 uploads")
        self.assertEqual(one(a, "SELECT count(*) FROM attachments WHERE has_synced = 1"), 200)
        # The references arrive on device B; its worker downloads them.
        b.executemany("INSERT INTO items VALUES (?, ?)", a.execute("SELECT id, file_id FROM items").fetchall())
        wait_until(lambda: self.count(b, 3) == 200, what="200 downloads")
        for i, file_id in b.execute("SELECT id, file_id FROM items"):
            self.assertEqual(one(b, "SELECT attachment_data(?)", file_id), payloads[i])

    def test_start_is_idempotent_and_stop_really_stops(self):
        a = self.app("a")
        self.assertEqual(one(a, "SELECT attachment_start_sync()"), 1)
        a.execute("INSERT INTO items VALUES (1, attachment_save(x'01', 'bin'))")
        wait_until(lambda: self.count(a, 3) == 1, what="upload")
        self.assertEqual(one(a, "SELECT attachment_stop_sync()"), 1)
        self.assertEqual(one(a, "SELECT attachment_stop_sync()"), 1)
        a.execute("INSERT INTO items VALUES (2, attachment_save(x'02', 'bin'))")
        time.sleep(0.5)
        self.assertEqual(self.count(a, 0), 1, "no transfer after stop")
        one(a, "SELECT attachment_start_sync()")
        wait_until(lambda: self.count(a, 3) == 2, what="upload after restart")

    def test_closing_the_app_connection_leaves_the_worker_running_safely(self):
        a = self.app("a")
        self.started.remove(a)
        a.close()
        other = connect(os.path.join(self.dir, "a.db"))
        other.execute("INSERT INTO items VALUES (1, attachment_save(x'0102', 'bin'))")
        wait_until(lambda: self.count(other, 3) == 1, what="upload after the starter closed")
        self.assertEqual(one(other, "SELECT attachment_stop_sync()"), 1)

    def test_transfers_overlap_up_to_max_concurrency(self):
        proxy = servers.FaultProxy(self.nginx.port, "slow", delay=1.0)
        try:
            a = self.app("a", port=proxy.port, max_concurrency=4)
            a.execute("BEGIN IMMEDIATE")  # a write transaction: take the write lock up front
            for i in range(8):
                a.execute("INSERT INTO items VALUES (?, attachment_save(randomblob(5000), 'bin'))", (i,))
            a.execute("COMMIT")
            wait_until(lambda: self.count(a, 3) == 8, what="8 slow uploads")
        finally:
            proxy.stop()
        peak = max(int(re.search(r"inflight=(\d+)", r).group(1)) for r in proxy.requests())
        self.assertGreaterEqual(peak, 4, proxy.requests())

    def test_bytes_done_moves_while_a_transfer_is_in_flight(self):
        proxy = servers.FaultProxy(self.nginx.port, "slow", delay=2.0)
        try:
            a = self.app("a", port=proxy.port)
            a.execute("INSERT INTO items VALUES (1, attachment_save(randomblob(3000000), 'bin'))")
            wait_until(lambda: one(a, "SELECT bytes_done FROM attachment_queue") > 0, what="progress")
            state, done, size = a.execute("SELECT state_name, bytes_done, size FROM attachment_queue").fetchone()
            self.assertEqual(state, "QUEUED_UPLOAD")
            self.assertLessEqual(done, size)
            wait_until(lambda: self.count(a, 3) == 1, what="upload")
            self.assertEqual(one(a, "SELECT bytes_done FROM attachment_queue"), 3000000)
        finally:
            proxy.stop()

    def test_a_flaky_server_still_converges_byte_identical(self):
        proxy = servers.FaultProxy(self.nginx.port, "flaky")  # every 2nd request: 500 or a reset
        try:
            a, b = self.app("a", port=proxy.port), self.app("b", port=proxy.port)
            data = {}
            for i in range(30):
                data[i] = os.urandom(2000)
                a.execute("INSERT INTO items VALUES (?, attachment_save(?, 'bin'))", (i, data[i]))
            wait_until(lambda: self.count(a, 3) == 30, timeout=120, what="uploads through a flaky server")
            self.assertGreater(one(a, "SELECT count(*) FROM items"), 0)
            b.executemany("INSERT INTO items VALUES (?, ?)", a.execute("SELECT id, file_id FROM items").fetchall())
            wait_until(lambda: self.count(b, 3) == 30, timeout=120, what="downloads through a flaky server")
        finally:
            proxy.stop()
        self.assertTrue(any("inflight" in r for r in proxy.requests()))
        for i, file_id in b.execute("SELECT id, file_id FROM items"):
            self.assertEqual(one(b, "SELECT attachment_data(?)", file_id), data[i])
            self.assertEqual(self.stored(file_id + ".bin"), data[i])


class Processes(WorkerCase):
    def spawn(self, body):
        script = textwrap.dedent(f"""
            import os, sqlite3, sys, time
            c = sqlite3.connect({os.path.join(self.dir, 'a.db')!r}, isolation_level=None, timeout=30)
            c.enable_load_extension(True); c.load_extension({LIB!r})
        """) + textwrap.dedent(body)
        return subprocess.Popen([sys.executable, "-c", script], cwd=self.dir)

    def test_a_worker_killed_mid_transfer_resumes_in_a_new_process(self):
        proxy = servers.FaultProxy(self.nginx.port, "slow", delay=30)
        a = self.app("a", port=proxy.port, start=False)
        data = os.urandom(2_000_000)
        a.execute("INSERT INTO items VALUES (1, attachment_save(?, 'bin'))", (data,))
        child = self.spawn("""
            c.execute("SELECT attachment_start_sync()")
            time.sleep(600)
        """)
        try:
            wait_until(lambda: one(a, "SELECT claimed_by IS NOT NULL AND bytes_done > 0 FROM attachments") == 1,
                       what="the child to be mid-upload")
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        finally:
            proxy.stop()
        self.assertEqual(one(a, "SELECT state_name FROM attachment_queue"), "QUEUED_UPLOAD")
        # A new process (here: this one) resumes at once: the dead process's claim is released.
        a.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files-a", "remote": self.remote_url()}),))
        one(a, "SELECT attachment_start_sync()")
        self.started.append(a)
        wait_until(lambda: self.count(a, 3) == 1, timeout=20, what="resumed upload")
        self.assertEqual(one(a, "SELECT claimed_by FROM attachments"), None)
        self.assertEqual(self.stored(one(a, "SELECT filename FROM attachments")), data)

    def test_two_processes_with_workers_transfer_each_file_once(self):
        a = self.app("a", start=False)
        stop_file = os.path.join(self.dir, "stop")
        children = [self.spawn(f"""
            c.execute("SELECT attachment_start_sync()")
            while not os.path.exists({stop_file!r}):
                time.sleep(0.05)
            c.execute("SELECT attachment_stop_sync()")
        """) for _ in range(2)]
        try:
            expected = {}
            for i in range(100):
                data = os.urandom(3000)
                a.execute("INSERT INTO items VALUES (?, attachment_save(?, 'bin'))", (i, data))
                expected[one(a, "SELECT file_id FROM items WHERE id = ?", i)] = data
            wait_until(lambda: self.count(a, 3) == 100, timeout=90, what="100 uploads by two workers")
        finally:
            open(stop_file, "w").close()
            for c in children:
                c.wait(30)
        puts = self.puts_in_access_log()
        self.assertEqual(len(puts), 100, "each file PUT exactly once")
        for file_id, data in expected.items():
            self.assertEqual(self.stored(file_id + ".bin"), data)
        self.assertEqual(one(a, "PRAGMA integrity_check"), "ok")
        self.assertEqual(one(a, "SELECT count(*) FROM attachments WHERE claimed_by IS NOT NULL"), 0)


if __name__ == "__main__":
    unittest.main()
