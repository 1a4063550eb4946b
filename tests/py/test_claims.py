"""Claims, liveness and stopping: one transfer per file whatever the timing, and a
worker that always lets go (stop, Ctrl-C, dead owners, fork)."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

import servers
from helpers import Case, LIB, connect, one


def wait_until(predicate, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class SilentServer:
    """Accepts connections and then says nothing and reads nothing: a server that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            self.accepted.set()

    def stop(self):
        self.sock.close()
        for c in self.conns:
            c.close()


class ClaimCase(Case):
    def row(self, conn, id_, *cols):
        return conn.execute(f"SELECT {', '.join(cols)} FROM attachments WHERE id = ?", (id_,)).fetchone()


class StoppingNeverHangs(ClaimCase):
    def setUp(self):
        super().setUp()
        self.silent = SilentServer()
        self.addCleanup(self.silent.stop)

    def test_stop_returns_within_a_second_while_the_server_is_silent(self):
        a = self.device("a", remote=f"http://127.0.0.1:{self.silent.port}/x/")
        id_ = one(a, "SELECT attachment_save(?, 'bin')", os.urandom(200_000))
        a.execute("SELECT attachment_start_sync()")
        self.started.append(a)
        self.assertTrue(self.silent.accepted.wait(20), "the upload never started")
        wait_until(lambda: self.row(a, id_, "claimed_by")[0] is not None, what="the claim")
        t0 = time.monotonic()
        a.execute("SELECT attachment_stop_sync()")
        took = time.monotonic() - t0
        self.assertLess(took, 1.5, f"attachment_stop_sync() took {took:.1f}s")
        # The row is released as it was: still queued, no attempt counted, no claim.
        self.assertEqual(self.row(a, id_, "state", "attempts", "claimed_by"), (0, 0, None))

    def test_interrupt_ends_a_blocking_sync_and_releases_the_row(self):
        self.device("a", remote=f"http://127.0.0.1:{self.silent.port}/x/")
        import sqlite3
        a = sqlite3.connect(os.path.join(self.dir, "a.db"), isolation_level=None, check_same_thread=False)
        a.enable_load_extension(True)
        a.load_extension(LIB)
        id_ = one(a, "SELECT attachment_save(?, 'bin')", os.urandom(200_000))
        outcome = {}

        def run():
            t0 = time.monotonic()
            try:
                a.execute("SELECT attachment_sync()")
                outcome["result"] = "returned"
            except sqlite3_error() as e:
                outcome["result"] = e
            outcome["took"] = time.monotonic() - t0

        worker = threading.Thread(target=run)
        worker.start()
        self.assertTrue(self.silent.accepted.wait(20), "the upload never started")
        time.sleep(0.3)
        t0 = time.monotonic()
        a.interrupt()  # what the sqlite3 CLI does on Ctrl-C
        worker.join(10)
        self.assertFalse(worker.is_alive(), "attachment_sync() ignored the interrupt")
        self.assertLess(time.monotonic() - t0, 1.5)
        self.assertIn("interrupted", str(outcome["result"]))
        self.assertEqual(getattr(outcome["result"], "sqlite_errorname", None), "SQLITE_INTERRUPT")
        self.assertEqual(self.row(a, id_, "state", "attempts", "claimed_by"), (0, 0, None))


RUNAWAY = ("SELECT attachment_watch('w', 'WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r "
           "WHERE n < (SELECT lim FROM cfg)) SELECT ''x'' || n AS id FROM r WHERE n < 0')")


class StoppingEndsRunawayWatches(ClaimCase):
    """A watch query that runs away (a recursive CTE whose bound a row raised) is ended
    by stop and by interrupt, not left holding the write lock until its time limit."""

    def setUp(self):
        super().setUp()
        os.environ["SQLITE_ATTACHMENTS_WATCH_TIME_LIMIT_MS"] = "60000"
        self.addCleanup(os.environ.pop, "SQLITE_ATTACHMENTS_WATCH_TIME_LIMIT_MS")

    def runaway(self):
        a = self.device("a")
        a.execute("CREATE TABLE cfg(lim INTEGER)")
        a.execute("INSERT INTO cfg VALUES (1)")
        a.execute(RUNAWAY)
        return a

    def test_stop_ends_a_runaway_watch_and_frees_the_write_lock(self):
        a = self.runaway()
        a.execute("SELECT attachment_start_sync()")
        self.started.append(a)
        time.sleep(0.5)
        a.execute("UPDATE cfg SET lim = 10000000000")
        time.sleep(1.5)  # the worker is inside the watch query now
        t0 = time.monotonic()
        a.execute("SELECT attachment_stop_sync()")
        self.assertLess(time.monotonic() - t0, 1.5)
        writer = connect(os.path.join(self.dir, "a.db"))
        writer.execute("PRAGMA busy_timeout = 20000")
        t0 = time.monotonic()
        writer.execute("INSERT INTO cfg VALUES (2)")
        self.assertLess(time.monotonic() - t0, 2, "the stopped worker still held the write lock")

    def test_interrupt_ends_a_sync_inside_a_runaway_watch(self):
        self.runaway()
        import sqlite3
        a = sqlite3.connect(os.path.join(self.dir, "a.db"), isolation_level=None, check_same_thread=False)
        a.enable_load_extension(True)
        a.load_extension(LIB)
        a.execute("UPDATE cfg SET lim = 10000000000")
        outcome = {}

        def run():
            try:
                a.execute("SELECT attachment_sync()")
                outcome["result"] = "returned"
            except sqlite3.Error as e:
                outcome["result"] = e

        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(1.5)
        t0 = time.monotonic()
        a.interrupt()
        worker.join(20)
        self.assertFalse(worker.is_alive())
        self.assertLess(time.monotonic() - t0, 1.5)
        self.assertEqual(getattr(outcome["result"], "sqlite_errorname", None), "SQLITE_INTERRUPT", outcome)
        # The watch is not blamed for being interrupted.
        self.assertEqual(one(a, "SELECT state FROM _attachments_watch WHERE name = 'w'"), "ok")


def sqlite3_error():
    import sqlite3
    return sqlite3.Error


CHILD = textwrap.dedent("""
    import os, sqlite3, sys, time
    c = sqlite3.connect(sys.argv[1], isolation_level=None)
    c.enable_load_extension(True); c.load_extension(sys.argv[2])
    c.execute("SELECT attachment_start_sync()")
    print("started", flush=True)
    time.sleep(600)
""")


class DeadOwners(ClaimCase):
    def test_a_dead_owners_claim_is_released_even_when_its_pid_is_alive_again(self):
        # A container's PID 1 is killed and restarted as PID 1: the PID is alive, the claim is not.
        silent = SilentServer()
        self.addCleanup(silent.stop)
        db = os.path.join(self.dir, "a.db")
        a = self.device("a", remote=f"http://127.0.0.1:{silent.port}/x/")
        id_ = one(a, "SELECT attachment_save(x'0102', 'bin')")
        child = subprocess.Popen([sys.executable, "-c", CHILD, db, LIB], stdout=subprocess.PIPE)
        self.addCleanup(child.kill)
        wait_until(lambda: self.row(a, id_, "claimed_by")[0] is not None, what="the child's claim")
        child.kill()
        child.wait()
        claimed_by = self.row(a, id_, "claimed_by")[0]
        # Same claim, but naming a PID that is alive (ours), as after a restart in a fresh namespace.
        fields = claimed_by.split(":")
        fields[1] = str(os.getpid())
        a.execute("UPDATE attachments SET claimed_by = ? WHERE id = ?", (":".join(fields), id_))
        # Point the queue at a working remote and sync: the upload must not wait for the lease.
        a.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files-a", "remote": f"file://{self.remote}"}),))
        t0 = time.monotonic()
        summary = self.sync(a)
        self.assertEqual(summary["uploaded"], 1, summary)
        self.assertLess(time.monotonic() - t0, 10)
        self.assertEqual(self.row(a, id_, "state")[0], 3)

    def test_a_row_held_by_another_live_process_does_not_keep_the_worker_busy(self):
        # While another process's transfer holds a row (its lease runs two minutes), this
        # worker has nothing due: it wakes only for that process's commits (its claim
        # renewals, one a second), not for a pass every 50 ms poll as it once did.
        silent = SilentServer()
        self.addCleanup(silent.stop)
        db = os.path.join(self.dir, "a.db")
        a = self.device("a", remote=f"http://127.0.0.1:{silent.port}/x/")
        id_ = one(a, "SELECT attachment_save(x'0102', 'bin')")
        holder = subprocess.Popen([sys.executable, "-c", CHILD, db, LIB], stdout=subprocess.PIPE)
        self.addCleanup(holder.kill)
        wait_until(lambda: self.row(a, id_, "claimed_by")[0] is not None, what="the other process's claim")
        watcher = subprocess.run(
            [sys.executable, "-c", textwrap.dedent("""
                import sqlite3, sys, time
                c = sqlite3.connect(sys.argv[1], isolation_level=None)
                c.enable_load_extension(True); c.load_extension(sys.argv[2])
                c.execute("SELECT attachment_start_sync()")
                time.sleep(4)
                c.execute("SELECT attachment_stop_sync()")
            """), db, LIB],
            env=dict(os.environ, SQLITE_ATTACHMENTS_LOG="trace"), capture_output=True, text=True, timeout=60)
        passes = watcher.stderr.count("worker pass for")
        self.assertGreaterEqual(passes, 1, watcher.stderr[-2000:])
        self.assertLessEqual(passes, 8, f"{passes} passes in 4 s with nothing due")

    def test_a_forked_child_runs_its_own_worker(self):
        db = os.path.join(self.dir, "a.db")
        a = self.device("a")
        first = one(a, "SELECT attachment_save(x'01', 'bin')")
        a.execute("SELECT attachment_start_sync()")
        self.started.append(a)
        wait_until(lambda: self.row(a, first, "state")[0] == 3, what="the parent's upload")
        # Forked while the parent's worker runs; the parent then stops it, so only a
        # worker of the child's own can move the child's file.
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                time.sleep(1.5)
                c = connect(db)
                self.assertEqual(one(c, "SELECT attachment_start_sync()"), 1)
                id_ = one(c, "SELECT attachment_save(x'02', 'bin')")
                deadline = time.time() + 20
                while time.time() < deadline:
                    if one(c, "SELECT state = 3 AND claimed_by IS NULL FROM attachments WHERE id = ?", id_):
                        code = 0
                        break
                    time.sleep(0.05)
                c.execute("SELECT attachment_stop_sync()")
            finally:
                os._exit(code)
        a.execute("SELECT attachment_stop_sync()")
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, "the forked child's worker moved nothing")


class OneTransferPerFile(ClaimCase):
    @classmethod
    def setUpClass(cls):
        cls.www = tempfile.mkdtemp(prefix="att-www-")
        cls.nginx = servers.Nginx(cls.www)

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()

    def puts(self, proxy, filename):
        return sum(1 for line in proxy.requests() if line.startswith("PUT") and filename in line)

    def test_a_long_transfer_keeps_its_claim_under_a_stream_of_small_ones(self):
        # Leases of 1.5 s: the slow upload takes longer than that and must be renewed, not re-sent.
        os.environ["SQLITE_ATTACHMENTS_TEST_CLAIM_LEASE_MS"] = "1500"
        self.addCleanup(os.environ.pop, "SQLITE_ATTACHMENTS_TEST_CLAIM_LEASE_MS")
        proxy = servers.FaultProxy(self.nginx.port, "slow_big", DELAY=4, BIG=100_000)
        self.addCleanup(proxy.stop)
        a = self.device("a", remote=f"http://127.0.0.1:{proxy.port}/lease/", max_concurrency=2)
        big = one(a, "SELECT attachment_save(?, 'bin')", os.urandom(300_000))
        stream_done = threading.Event()

        def saver():
            w = connect(os.path.join(self.dir, "a.db"))
            while not stream_done.is_set():
                w.execute("SELECT attachment_save(x'00', 'bin')")
                time.sleep(0.1)

        t = threading.Thread(target=saver)
        t.start()
        try:
            deadline = time.time() + 30
            while time.time() < deadline and self.row(a, big, "state")[0] != 3:
                self.sync(a)
        finally:
            stream_done.set()
            t.join()
        self.assertEqual(self.row(a, big, "state")[0], 3)
        self.assertEqual(self.puts(proxy, big), 1, proxy.requests())

    def test_a_pass_ends_while_saves_keep_arriving(self):
        # A bulk import keeps saving faster than the link uploads; one attachment_sync()
        # takes what was there when it began and returns, so reconciliation and cache
        # expiry are not kept waiting behind the import.
        proxy = servers.FaultProxy(self.nginx.port, "slow", DELAY=0.2)
        self.addCleanup(proxy.stop)
        db = os.path.join(self.dir, "a.db")
        a = self.device("a", remote=f"http://127.0.0.1:{proxy.port}/bounded/", max_concurrency=1)
        for _ in range(5):
            a.execute("SELECT attachment_save(x'00', 'bin')")
        importing = threading.Event()
        importing.set()

        def importer():
            w = connect(db)
            deadline = time.time() + 30
            while importing.is_set() and time.time() < deadline:
                w.execute("SELECT attachment_save(x'01', 'bin')")
                time.sleep(0.02)

        t = threading.Thread(target=importer)
        t.start()
        try:
            t0 = time.monotonic()
            summary = self.sync(a)
            took = time.monotonic() - t0
            # The pass returned while the import still ran (a pass that kept taking new
            # saves would have run until the import ended), however slow this machine is
            # to take the pass's first snapshot.
            importing_still = t.is_alive()
        finally:
            importing.clear()
            t.join()
        self.assertTrue(importing_still, f"attachment_sync() kept going for {took:.1f}s, until the import ended")
        self.assertLess(took, 20, f"attachment_sync() kept going for {took:.1f}s while saves arrived")
        self.assertGreaterEqual(summary["uploaded"], 5)
        self.assertGreater(summary["pending"], 0, "saves made during the pass wait for the next one")

    def test_a_finished_upload_waits_for_a_long_app_transaction_and_goes_up_once(self):
        proxy = servers.FaultProxy(self.nginx.port, "slow", DELAY=2)
        self.addCleanup(proxy.stop)
        db = os.path.join(self.dir, "a.db")
        a = self.device("a", remote=f"http://127.0.0.1:{proxy.port}/busy/")
        id_ = one(a, "SELECT attachment_save(?, 'bin')", os.urandom(1000))
        app = connect(db)
        a.execute("SELECT attachment_start_sync()")
        self.started.append(a)
        # While the upload is on the wire, the app takes the write lock and keeps it for
        # longer than SQLite's busy wait: the result must wait for the lock, not be lost.
        wait_until(lambda: self.puts(proxy, id_) >= 1, what="the upload")
        app.execute("BEGIN IMMEDIATE")
        time.sleep(12)
        self.assertEqual(one(app, "SELECT state FROM attachments WHERE id = ?", id_), 0)
        app.execute("COMMIT")
        wait_until(lambda: self.row(a, id_, "state")[0] == 3, timeout=10, what="SYNCED after the lock")
        time.sleep(0.5)
        self.assertEqual(self.puts(proxy, id_), 1, proxy.requests())


if __name__ == "__main__":
    unittest.main()
