"""attachment_fetch (one attachment now, ahead of the queue), attachment_progress (a
progress bar over every process's transfers) and errors a person can act on, against
the real servers: nginx WebDAV, s3s-fs (SigV4 checked) and the signing backend."""
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

import servers
from helpers import Case, LIB, connect, files_in, one

WATCH = "SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''bin'' AS file_extension FROM users')"


def wait_until(predicate, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def now_ms():
    return int(time.time() * 1000)


def progress(conn):
    return json.loads(one(conn, "SELECT attachment_progress()"))


class Remote:
    """Mixed into one TestCase per remote: servers, config, and where objects land."""

    env = {}

    @classmethod
    def setUpClass(cls):
        cls._saved_env = {k: os.environ.get(k) for k in cls.env}
        os.environ.update(cls.env)
        cls.start_servers()

    @classmethod
    def tearDownClass(cls):
        cls.stop_servers()
        for k, v in cls._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def app(self, name, port=None, watch=WATCH, **config):
        conn = self.device(name, **{**self.remote_config(port), **config})
        conn.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT)")
        if watch:
            conn.execute(watch)
        return conn

    def uploaded(self, data, port=None):
        """An attachment saved and uploaded by a device of its own; returns its id."""
        up = self.app(f"up{port or ''}", port=port)
        up.execute("INSERT INTO users(photo_id) VALUES (attachment_save(?, 'bin'))", (data,))
        file_id = one(up, "SELECT photo_id FROM users ORDER BY id DESC LIMIT 1")
        self.assertEqual(self.sync(up)["uploaded"], 1)
        return file_id

    def gets(self, proxy, filename):
        return [r for r in proxy.requests() if r.startswith("GET ") and filename in r.split()[1]]


class FetchContract(Remote):
    upload_via_proxy = False
    def test_fetch_downloads_now_without_a_worker_then_returns_at_once(self):
        data = os.urandom(300_000)
        file_id = self.uploaded(data)
        b = self.app("b")
        b.execute("INSERT INTO users VALUES (1, ?)", (file_id,))  # no sync, no worker
        path = one(b, "SELECT attachment_fetch(?)", file_id)
        self.assertTrue(os.path.isabs(path))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(b.execute("SELECT state_name, size, sha256 FROM attachment_queue").fetchone(),
                         ("SYNCED", len(data), hashlib.sha256(data).hexdigest()))
        self.assertEqual(one(b, "SELECT claimed_by FROM attachments"), None)
        self.assertEqual(path, one(b, "SELECT attachment_local_uri(?)", file_id))
        # Complete now: the next fetch needs no server at all.
        self.stop_servers()
        try:
            started = time.monotonic()
            self.assertEqual(one(b, "SELECT attachment_fetch(?, 1000)", file_id), path)
            self.assertLess(time.monotonic() - started, 0.5)
        finally:
            self.start_servers()

    def test_fetch_of_an_id_only_a_non_downloading_watch_references(self):
        file_id = self.uploaded(b"metadata-only watch")
        b = self.app("b", watch="SELECT attachment_watch('meta', 'SELECT photo_id AS id, ''bin'' AS file_extension FROM users', '{\"download\": false}')")
        b.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
        self.sync(b)
        self.assertEqual(one(b, "SELECT count(*) FROM attachments"), 0, "the policy downloads nothing by itself")
        path = one(b, "SELECT attachment_fetch(?)", file_id)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"metadata-only watch")
        # Referenced: it stays SYNCED through the next pass.
        self.sync(b)
        self.assertEqual(one(b, "SELECT state_name FROM attachment_queue"), "SYNCED")

    def test_fetch_of_an_unreferenced_row_ends_archived_with_its_local_copy(self):
        file_id = self.uploaded(b"nobody points at me")
        b = self.app("b")
        b.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
        one(b, "SELECT attachment_reconcile()")
        b.execute("UPDATE users SET photo_id = NULL")
        one(b, "SELECT attachment_reconcile()")
        self.assertEqual(b.execute("SELECT state_name, local_uri FROM attachment_queue").fetchone(), ("ARCHIVED", None))
        path = one(b, "SELECT attachment_fetch(?)", file_id)
        self.assertEqual(b.execute("SELECT state_name, local_uri FROM attachment_queue").fetchone(),
                         ("ARCHIVED", f"{file_id}.bin"), "a cache entry the limit can evict")
        self.assertEqual(one(b, "SELECT attachment_local_uri(?)", file_id), path)
        self.assertEqual(self.sync(b)["downloaded"], 0)

    def test_a_missing_object_says_not_found_and_a_given_up_download_is_retried_by_fetch(self):
        file_id = self.uploaded(b"here now")
        stored = self.stored_path(f"{file_id}.bin")
        os.rename(stored, stored + ".away")
        b = self.app("b")
        b.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
        with self.assertRaises(sqlite3.OperationalError) as cm:
            b.execute("SELECT attachment_fetch(?)", (file_id,))
        self.assertRegex(str(cm.exception), r"^attachment_fetch: not_found: HTTP 404")
        self.assertEqual(cm.exception.sqlite_errorname, "SQLITE_ERROR")
        self.assertEqual(b.execute("SELECT state_name, given_up, error_class FROM attachment_queue").fetchone(),
                         ("ARCHIVED", 1, "not_found"))
        self.assertEqual(self.sync(b)["failed"], 0, "given up: the queue leaves it alone")
        os.rename(stored + ".away", stored)  # the object turns up
        with open(one(b, "SELECT attachment_fetch(?)", file_id), "rb") as f:
            self.assertEqual(f.read(), b"here now")
        self.assertEqual(b.execute("SELECT state_name, given_up, attempts, last_error FROM attachment_queue").fetchone(),
                         ("SYNCED", 0, 0, None))

    def test_wrong_credentials_say_auth(self):
        file_id = self.uploaded(b"secret")
        b = self.app("b")
        b.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
        saved = dict(os.environ)
        os.environ.update(self.bad_credentials)
        try:
            with self.assertRaisesRegex(sqlite3.OperationalError, r"^attachment_fetch: auth: HTTP 40[13]"):
                b.execute("SELECT attachment_fetch(?)", (file_id,))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.assertEqual(b.execute("SELECT state_name, attempts, error_class FROM attachment_queue").fetchone(),
                         ("QUEUED_DOWNLOAD", 1, "auth"))
        self.assertTrue(os.path.exists(one(b, "SELECT attachment_fetch(?)", file_id)), "good credentials: fetched")

    def test_two_fetches_of_one_id_make_one_transfer(self):
        data = os.urandom(200_000)
        proxy = servers.FaultProxy(self.storage_port, "slow", delay=0.6)
        try:
            file_id = self.uploaded(data, port=proxy.port if self.upload_via_proxy else None)
            b = self.app("b", port=proxy.port)
            b.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
            one(b, "SELECT attachment_reconcile()")
            db = os.path.join(self.dir, "b.db")
            # One fetch in another process, two on two connections of this one, at once.
            child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
                import sqlite3
                c = sqlite3.connect({db!r}, isolation_level=None, timeout=30)
                c.enable_load_extension(True); c.load_extension({LIB!r})
                print(c.execute("SELECT attachment_fetch(?)", ({file_id!r},)).fetchone()[0])
            """)], stdout=subprocess.PIPE, env=os.environ)
            paths, errors = [], []

            def fetch():
                try:
                    c = connect(db)
                    paths.append(one(c, "SELECT attachment_fetch(?)", file_id))
                except Exception as e:  # reported below
                    errors.append(e)

            threads = [threading.Thread(target=fetch) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out, _ = child.communicate(timeout=60)
            self.assertEqual(errors, [])
            paths.append(out.decode().strip())
        finally:
            proxy.stop()
        self.assertEqual(len(set(paths)), 1, paths)
        with open(paths[0], "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(len(self.gets(proxy, file_id)), 1, proxy.requests())
        self.assertEqual(one(b, "SELECT count(*) FROM attachments WHERE claimed_by IS NOT NULL"), 0)

    def test_a_fetch_that_times_out_leaves_the_row_queued_and_unclaimed(self):
        proxy = servers.FaultProxy(self.storage_port, "slow", delay=2)
        try:
            file_id = self.uploaded(b"slow one", port=proxy.port if self.upload_via_proxy else None)
            b = self.app("b", port=proxy.port)
            b.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
            started = time.monotonic()
            with self.assertRaisesRegex(sqlite3.OperationalError, r"^attachment_fetch: timeout: .* within 300 ms"):
                b.execute("SELECT attachment_fetch(?, 300)", (file_id,))
            self.assertLess(time.monotonic() - started, 2.0)
        finally:
            proxy.stop()
        self.assertEqual(b.execute("SELECT state_name, attempts FROM attachment_queue").fetchone(), ("QUEUED_DOWNLOAD", 0))
        self.assertEqual(one(b, "SELECT claimed_by FROM attachments"), None)
        # The cancelled transfer ends on its own thread (here: when the proxy goes) and leaves nothing.
        wait_until(lambda: files_in(os.path.join(self.dir, "files-b")) == [], timeout=10, what="no temp file left")


class HttpWebDav(FetchContract, Case):
    env = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN}
    bad_credentials = {"ATTACHMENTS_HTTP_TOKEN": "wrong-token-value"}

    @classmethod
    def start_servers(cls):
        cls.root = getattr(cls, "root", None) or tempfile.mkdtemp(prefix="att-www-")
        cls.nginx = servers.Nginx(cls.root, token=servers.TOKEN)
        cls.storage_port = cls.nginx.port

    @classmethod
    def stop_servers(cls):
        cls.nginx.stop()

    def remote_config(self, port):
        return {"remote": f"http://127.0.0.1:{port or self.storage_port}/files/"}

    def stored_path(self, filename):
        return os.path.join(self.root, "files", filename)

    def test_a_fetch_after_one_that_timed_out_resumes_its_partial_file_and_records_nothing(self):
        proxy = servers.FaultProxy(self.storage_port, "stall_body")
        try:
            data = os.urandom(20_000)
            file_id = self.uploaded(data)
            b = self.app("b", port=proxy.port)
            b.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
            with self.assertRaisesRegex(sqlite3.OperationalError, "timeout"):
                # Long enough on a slow machine for the claim, the proxy's 200 and its half of
                # the body to land: the stall after it makes the timeout certain anyway.
                b.execute("SELECT attachment_fetch(?, 3000)", (file_id,))
            self.assertEqual(b.execute("SELECT attempts, last_error FROM attachments").fetchone(), (0, None))
            # The first transfer, stalled mid-body, stopped when its fetch gave up and kept
            # its half: the next fetch asks for the rest only (the proxy stalls only 200s).
            path = one(b, "SELECT attachment_fetch(?, 10000)", file_id)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), data)
            self.assertEqual([(status, rng) for m, status, n, rng in proxy.answers() if m == "GET"],
                             [(200, "-"), (206, "bytes=10000-")])
        finally:
            proxy.stop()

    def test_a_fetch_that_timed_out_waiting_for_headers_cancels_its_own_transfer(self):
        proxy = servers.FaultProxy(self.storage_port, "silent_first_get")
        try:
            data = os.urandom(20_000)
            file_id = self.uploaded(data)
            b = self.app("b", port=proxy.port)
            b.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
            with self.assertRaisesRegex(sqlite3.OperationalError, "timeout"):
                b.execute("SELECT attachment_fetch(?, 300)", (file_id,))
            # Its transfer, waiting for an answer that never comes, stops within moments:
            # the next fetch downloads at once rather than waiting out the response timeout.
            started = time.monotonic()
            path = one(b, "SELECT attachment_fetch(?, 10000)", file_id)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), data)
            self.assertLess(time.monotonic() - started, 3)
        finally:
            proxy.stop()

    def test_a_pause_during_a_fetch_counts_no_attempt(self):
        proxy = servers.FaultProxy(self.storage_port, "trickle", trickle_bytes=1000, trickle_delay=0.1)
        try:
            file_id = self.uploaded(os.urandom(30_000))
            b = self.app("b", port=proxy.port)
            b.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
            pause = lambda: one(connect(os.path.join(self.dir, "b.db")), "SELECT attachment_pause()")
            threading.Timer(0.7, pause).start()
            with self.assertRaisesRegex(sqlite3.OperationalError, "paused"):
                b.execute("SELECT attachment_fetch(?)", (file_id,))
        finally:
            proxy.stop()
        self.assertEqual(b.execute("SELECT attempts, last_error FROM attachments").fetchone(), (0, None))
        self.assertEqual(progress(b)["files_failing"], 0)


class S3SigV4(FetchContract, Case):
    env = {"AWS_ACCESS_KEY_ID": servers.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY}
    bad_credentials = {"AWS_SECRET_ACCESS_KEY": "wrong-secret-value"}
    prefix = "app/files"

    @classmethod
    def start_servers(cls):
        cls.root = getattr(cls, "root", None) or tempfile.mkdtemp(prefix="att-s3-")
        cls.s3 = servers.S3(cls.root)
        cls.storage_port = cls.s3.port

    @classmethod
    def stop_servers(cls):
        cls.s3.stop()

    def remote_config(self, port):
        return {"remote": f"s3://{servers.BUCKET}/{self.prefix}", "s3_endpoint": f"http://127.0.0.1:{port or self.storage_port}"}

    def stored_path(self, filename):
        return os.path.join(self.root, servers.BUCKET, *self.prefix.split("/"), filename)


class SignedUrls(S3SigV4):
    env = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN}
    bad_credentials = {"ATTACHMENTS_HTTP_TOKEN": "wrong-token-value"}
    prefix = ""
    backends = {}

    @classmethod
    def stop_servers(cls):
        for b in cls.backends.values():
            b.stop()
        cls.backends.clear()
        super().stop_servers()

    def remote_config(self, port):
        port = port or self.storage_port
        if port not in self.backends:
            self.backends[port] = servers.SigningBackend(f"http://127.0.0.1:{port}")
        return {"remote": f"signed+{self.backends[port].url}"}

    def stored_path(self, filename):
        return os.path.join(self.root, servers.BUCKET, filename)

    # The signing backend knows the ids uploaded through it, and there is one backend per storage port.
    upload_via_proxy = True


class FetchArguments(Case):
    """What a fetch refuses, and why, on a file:// remote (no server needed)."""

    def setUp(self):
        super().setUp()
        os.makedirs(self.remote)
        self.a = self.device("a")
        self.a.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT)")
        self.a.execute(WATCH)

    def error(self, sql, *args):
        with self.assertRaises(sqlite3.Error) as cm:
            self.a.execute(sql, args).fetchone()
        return str(cm.exception), cm.exception.sqlite_errorname

    def test_wrong_arguments_are_misuse(self):
        self.assertEqual(self.error("SELECT attachment_fetch('../etc/passwd')")[1], "SQLITE_MISUSE")
        self.assertRegex(self.error("SELECT attachment_fetch('../etc/passwd')")[0], "invalid attachment id")
        self.assertEqual(self.error("SELECT attachment_fetch(1)"), ("attachment_fetch: id must be TEXT, got INTEGER", "SQLITE_MISUSE"))
        self.assertEqual(self.error("SELECT attachment_fetch('x', 'soon')"),
                         ("attachment_fetch: timeout_ms must be an INTEGER (milliseconds)", "SQLITE_MISUSE"))
        self.assertEqual(self.error("SELECT attachment_fetch('x', -5)")[1], "SQLITE_MISUSE")
        self.assertEqual(self.error("SELECT attachment_fetch()")[1], "SQLITE_MISUSE")

    def test_inside_a_write_transaction_it_fails_at_once(self):
        self.a.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        message, code = self.error("SELECT attachment_fetch('x')")
        self.assertLess(time.monotonic() - started, 1)
        self.a.execute("ROLLBACK")
        self.assertEqual(code, "SQLITE_MISUSE")
        self.assertIn("outside a write transaction", message)

    def test_in_a_statement_that_reads_tables_it_works_in_wal_mode(self):
        with open(os.path.join(self.remote, "in-a-query.bin"), "wb") as f:
            f.write(b"via a query")
        self.a.execute("INSERT INTO users VALUES (1, 'in-a-query')")
        # A rollback journal: the statement's read lock would block the fetch's commit.
        message, code = self.error("SELECT attachment_fetch(photo_id) FROM users WHERE id = 1")
        self.assertEqual(code, "SQLITE_MISUSE")
        self.assertIn("in WAL mode that works", message)
        self.assertEqual(one(self.a, "PRAGMA journal_mode = WAL"), "wal")
        path = one(self.a, "SELECT attachment_fetch(photo_id) FROM users WHERE id = 1")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"via a query")

    def test_an_id_nothing_knows_is_unknown(self):
        message, code = self.error("SELECT attachment_fetch('never-heard-of')")
        self.assertEqual(code, "SQLITE_ERROR")
        self.assertIn("unknown id 'never-heard-of'", message)
        self.assertEqual(one(self.a, "SELECT count(*) FROM attachments"), 0)

    def test_a_reference_not_yet_reconciled_is_known(self):
        with open(os.path.join(self.remote, "fresh-ref.bin"), "wb") as f:
            f.write(b"fresh")
        self.a.execute("INSERT INTO users VALUES (1, 'fresh-ref')")  # the watch has not re-run
        self.assertTrue(one(self.a, "SELECT attachment_fetch('fresh-ref')").endswith("/files-a/fresh-ref.bin"))

    def test_an_upload_waiting_here_and_a_deleted_row(self):
        file_id = one(self.a, "SELECT attachment_save(x'0102', 'bin')")
        path = one(self.a, "SELECT attachment_fetch(?)", file_id)
        self.assertEqual(path, one(self.a, "SELECT attachment_local_uri(?)", file_id))
        self.assertEqual(one(self.a, "SELECT state_name FROM attachment_queue"), "QUEUED_UPLOAD")
        one(self.a, "SELECT attachment_delete(?)", file_id)
        message, code = self.error("SELECT attachment_fetch(?)", file_id)
        self.assertEqual(code, "SQLITE_ERROR")
        self.assertIn("queued for deletion", message)

    def test_a_synced_row_whose_file_vanished_is_downloaded_again(self):
        file_id = one(self.a, "SELECT attachment_save(x'0102', 'bin')")
        self.a.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
        self.sync(self.a)
        path = one(self.a, "SELECT attachment_local_uri(?)", file_id)
        os.remove(path)
        self.assertEqual(one(self.a, "SELECT attachment_fetch(?)", file_id), path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"\x01\x02")


    def test_a_synced_row_whose_file_was_truncated_is_downloaded_again(self):
        data = os.urandom(50_000)
        file_id = one(self.a, "SELECT attachment_save(?, 'bin')", data)
        self.a.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
        self.sync(self.a)
        path = one(self.a, "SELECT attachment_local_uri(?)", file_id)
        with open(path, "r+b") as f:
            f.truncate(10)
        self.assertEqual(one(self.a, "SELECT attachment_fetch(?)", file_id), path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)

    def hold_write_lock(self, seconds):
        """Another connection holds the write lock for `seconds` (BEGIN IMMEDIATE, then sleeps)."""
        other = sqlite3.connect(os.path.join(self.dir, "a.db"), isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        timer = threading.Timer(seconds, lambda: other.execute("COMMIT"))
        timer.start()
        self.addCleanup(timer.join)
        self.addCleanup(timer.cancel)

    def test_a_fetch_waiting_for_the_write_lock_keeps_its_timeout(self):
        self.assertEqual(one(self.a, "PRAGMA journal_mode = WAL"), "wal")
        with open(os.path.join(self.remote, "locked-out.bin"), "wb") as f:
            f.write(b"x")
        file_id = one(self.a, "SELECT attachment_save(x'0102', 'bin')")
        self.a.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
        self.sync(self.a)
        os.remove(one(self.a, "SELECT attachment_local_uri(?)", file_id))
        self.a.execute("INSERT INTO users VALUES (2, 'locked-out')")  # a reference not reconciled yet
        self.hold_write_lock(6)
        for fid in (file_id, "locked-out"):
            started = time.monotonic()
            message, _ = self.error("SELECT attachment_fetch(?, 500)", fid)
            self.assertIn("timeout", message)
            self.assertLess(time.monotonic() - started, 1.5, message)

    def test_a_fetch_waiting_for_the_write_lock_can_be_interrupted(self):
        self.assertEqual(one(self.a, "PRAGMA journal_mode = WAL"), "wal")
        file_id = one(self.a, "SELECT attachment_save(x'0102', 'bin')")
        self.a.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
        self.sync(self.a)
        os.remove(one(self.a, "SELECT attachment_local_uri(?)", file_id))
        self.hold_write_lock(6)
        threading.Timer(0.5, self.a.interrupt).start()
        started = time.monotonic()
        message, code = self.error("SELECT attachment_fetch(?)", file_id)
        self.assertEqual(code, "SQLITE_INTERRUPT", message)
        self.assertLess(time.monotonic() - started, 1.5)

    def test_while_paused_a_complete_local_copy_is_returned_and_only_a_download_is_refused(self):
        file_id = one(self.a, "SELECT attachment_save(x'0102', 'bin')")
        self.a.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
        self.sync(self.a)
        path = one(self.a, "SELECT attachment_local_uri(?)", file_id)
        one(self.a, "SELECT attachment_pause()")
        self.assertEqual(one(self.a, "SELECT attachment_fetch(?)", file_id), path)
        os.remove(path)
        message, _ = self.error("SELECT attachment_fetch(?)", file_id)
        self.assertIn("paused", message)

    def test_a_reference_with_an_unsafe_extension_says_it_was_rejected(self):
        self.a.execute("CREATE TABLE docs(id TEXT, ext TEXT)")
        self.a.execute("INSERT INTO docs VALUES ('hostile-ext', '../x')")
        self.a.execute("SELECT attachment_watch('docs', 'SELECT id, ext AS file_extension FROM docs')")
        message, _ = self.error("SELECT attachment_fetch('hostile-ext')")
        self.assertIn("rejected", message)
        self.assertIn("'../x'", message)


class FetchAheadOfTheQueue(Case):
    """2,000 downloads queued, the worker busy with them: a fetch takes about one transfer."""

    @classmethod
    def setUpClass(cls):
        cls.www = tempfile.mkdtemp(prefix="att-www-")
        cls.nginx = servers.Nginx(cls.www)

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()

    def test_fetch_latency_is_one_transfer_not_the_queue(self):
        n, delay = 2000, 0.05
        os.makedirs(os.path.join(self.www, "q"))
        for i in range(n):
            with open(os.path.join(self.www, "q", f"q{i:04d}.bin"), "wb") as f:
                f.write(os.urandom(16 * 1024))
        # Every response waits `delay`: the queue takes about n / 2 * delay = 50 s to drain.
        proxy = servers.FaultProxy(self.nginx.port, "slow", delay=delay)
        try:
            b = self.device("b", remote=f"http://127.0.0.1:{proxy.port}/q/", max_concurrency=2)
            b.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT)")
            with b:  # one transaction, not 2,000
                b.execute("BEGIN")
                b.executemany("INSERT INTO users VALUES (?, ?)", [(i, f"q{i:04d}") for i in range(n)])
            b.execute(WATCH)
            # One transfer with nothing else going on, for comparison (the first fetch also
            # reconciles the new watch's 2,000 references).
            one(b, "SELECT attachment_fetch('q1000')")
            started = time.monotonic()
            one(b, "SELECT attachment_fetch('q1001')")
            alone = time.monotonic() - started
            one(b, "SELECT attachment_start_sync()")
            self.started.append(b)
            wait_until(lambda: one(b, "SELECT count(*) FROM attachments WHERE state = 3") >= 10, what="the worker to be busy")
            latencies = []
            for i in (n - 1, n - 2, n - 3):
                started = time.monotonic()
                path = one(b, "SELECT attachment_fetch(?)", f"q{i:04d}")
                latencies.append(time.monotonic() - started)
                self.assertTrue(os.path.exists(path))
            done, queued = b.execute("SELECT count(*) FILTER (WHERE state = 3), count(*) FILTER (WHERE state = 1) FROM attachments").fetchone()
            time.sleep(1.5)  # samples for the rate
            p = progress(b)
        finally:
            one(b, "SELECT attachment_stop_sync()")
            proxy.stop()
        print(f"\n  fetch with {queued} downloads still queued (worker max_concurrency 2, server delay {delay * 1000:.0f} ms "
              f"per response): {', '.join(f'{x * 1000:.0f} ms' for x in latencies)} (one fetch alone, before: "
              f"{alone * 1000:.0f} ms); {done} synced so far; "
              f"progress: {p['download']['files_done']} done, {p['download']['files_queued']} queued, "
              f"{p['concurrency']} in flight, rate {p['download']['rate']} B/s, eta {p['eta_seconds']} s", flush=True)
        self.assertGreater(queued, n // 2, "the queue was still long")
        self.assertGreater(p["download"]["rate"], 0)
        self.assertGreater(p["eta_seconds"], 1, "by files: the sizes of queued downloads are not known")
        for x in latencies:
            self.assertLess(x, 5.0)


class Progress(Case):
    """attachment_progress() and attachment_queue's progress columns, with nginx."""

    @classmethod
    def setUpClass(cls):
        cls.www = tempfile.mkdtemp(prefix="att-www-")
        cls.nginx = servers.Nginx(cls.www)

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()

    def app(self, name, port=None, **config):
        prefix = f"p-{self.id().split('.')[-1][:40]}"
        conn = self.device(name, remote=f"http://127.0.0.1:{port or self.nginx.port}/{prefix}/", **config)
        conn.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT)")
        conn.execute(WATCH)
        return conn

    def test_uploads_queued_then_done_then_counted_again_from_zero(self):
        a = self.app("a")
        for size in (1000, 2000, 3000):
            a.execute("INSERT INTO users(photo_id) VALUES (attachment_save(randomblob(?), 'bin'))", (size,))
        up = progress(a)["upload"]
        self.assertEqual((up["files_queued"], up["bytes_queued"], up["files_done"], up["files_total"], up["bytes_total"]),
                         (3, 6000, 0, 3, 6000))
        self.assertEqual(self.sync(a)["uploaded"], 3)
        p = progress(a)
        up = p["upload"]
        self.assertEqual((up["files_queued"], up["files_done"], up["bytes_done"], up["bytes_moved"], up["eta_seconds"]),
                         (0, 3, 6000, 6000, 0.0))
        self.assertEqual((p["active"], p["concurrency"], p["eta_seconds"]), (False, 0, 0.0))
        # The queue was empty: new work counts from zero, before and after its first result.
        a.execute("INSERT INTO users(photo_id) VALUES (attachment_save(randomblob(500), 'bin'))")
        up = progress(a)["upload"]
        self.assertEqual((up["files_queued"], up["files_done"], up["bytes_total"]), (1, 0, 500))
        self.sync(a)
        up = progress(a)["upload"]
        self.assertEqual((up["files_done"], up["bytes_done"], up["files_total"]), (1, 500, 1))

    def test_a_transfer_in_another_process_shows_bytes_and_rate(self):
        size = 1_000_000
        a = self.app("a")
        a.execute("INSERT INTO users(photo_id) VALUES (attachment_save(randomblob(?), 'bin'))", (size,))
        self.sync(a)
        file_id = one(a, "SELECT photo_id FROM users")
        # The body goes out 64 KiB every 0.2 s: about 320 KiB/s, so the download takes about 3 s.
        proxy = servers.FaultProxy(self.nginx.port, "trickle", trickle_bytes=65536, trickle_delay=0.2)
        try:
            b = self.app("b", port=proxy.port)
            self.sync(b)  # an empty queue: the download below starts a new round of counts
            b.execute("INSERT INTO users VALUES (1, ?)", (file_id,))
            child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
                import sqlite3
                c = sqlite3.connect({os.path.join(self.dir, 'b.db')!r}, isolation_level=None, timeout=30)
                c.enable_load_extension(True); c.load_extension({LIB!r})
                c.execute("SELECT attachment_sync()")
            """)])
            seen = []
            try:
                deadline = time.time() + 30
                while child.poll() is None and time.time() < deadline:
                    seen.append((progress(b), b.execute("SELECT bytes_done, rate FROM attachment_queue").fetchone()))
                    time.sleep(0.2)
                child.wait(30)
            finally:
                if child.poll() is None:
                    child.kill()
        finally:
            proxy.stop()
        moving = [(p, row) for p, row in seen if p["download"]["files_in_flight"] == 1 and p["download"]["bytes_in_flight_done"] > 0]
        self.assertTrue(moving, seen[:3])
        self.assertEqual(moving[0][0]["download"]["files_size_unknown"], 1, "a download's size is known once it is done")
        rated = [(p, row) for p, row in moving if p["download"]["rate"]]
        self.assertTrue(rated, "a rate within the transfer")
        p, (bytes_done, row_rate) = rated[-1]
        print(f"\n  progress of a 1 MB download trickled at ~320 KiB/s by another process: {len(moving)} readings in flight, "
              f"last: rate {p['download']['rate']} B/s, eta {p['eta_seconds']}, row rate {row_rate} B/s", flush=True)
        self.assertEqual((p["concurrency"], p["active"]), (1, True))
        self.assertTrue(50_000 < p["download"]["rate"] < 2_000_000, p["download"])
        self.assertTrue(0 < bytes_done < size)
        self.assertTrue(50_000 < row_rate < 2_000_000, row_rate)
        done = progress(b)["download"]
        self.assertEqual((done["files_done"], done["bytes_done"], done["files_in_flight"], done["files_total"]), (1, size, 0, 1))

    def test_paused_is_read_from_the_stored_flag(self):
        a = self.app("a")
        self.assertFalse(progress(a)["paused"])
        # The flag attachment_pause() keeps in _attachments_config, as another process would set it.
        if not one(a, "SELECT count(*) FROM pragma_table_info('_attachments_config') WHERE name = 'paused'"):
            a.execute("ALTER TABLE _attachments_config ADD COLUMN paused INTEGER NOT NULL DEFAULT 0")
        a.execute("UPDATE _attachments_config SET paused = 1")
        self.assertTrue(progress(a)["paused"])

    def test_failed_watches_and_the_last_error(self):
        a = self.app("a")
        a.execute("CREATE TABLE docs(meta TEXT)")
        a.execute("INSERT INTO docs VALUES ('{\"id\": \"d1\"}')")
        a.execute("SELECT attachment_watch('docs', 'SELECT json_extract(meta, ''$.id'') AS id FROM docs')")
        a.execute("INSERT INTO docs VALUES ('{not json')")
        a.execute("INSERT INTO users VALUES (1, 'nowhere-to-be-found')")
        before = now_ms()
        self.sync(a)
        p = progress(a)
        self.assertEqual(p["failed_watches"], {"count": 1, "names": ["docs"]})
        err = p["last_error"]
        self.assertIn(err["id"], ("nowhere-to-be-found", "d1"))
        self.assertEqual(err["class"], "not_found")
        self.assertTrue(before <= err["at"] <= now_ms())
        self.assertRegex(err["error"], "^not_found: HTTP 404")


class ProgressOfDeadOwners(Case):
    def test_an_empty_queue_has_no_rate(self):
        os.makedirs(self.remote)
        a = self.device("a")
        p = progress(a)
        self.assertEqual((p["rate"], p["upload"]["rate"], p["download"]["rate"], p["eta_seconds"]), (None, None, None, 0.0), p)

    def test_a_claim_of_a_process_that_died_is_not_in_flight(self):
        os.makedirs(self.remote)
        a = self.device("a")
        self.sync(a)  # this process takes its owner slot: the lock file exists
        file_id = one(a, "SELECT attachment_save(x'010203', 'bin')")
        # A claim of a process that died mid-transfer, its lease not yet over.
        a.execute("UPDATE attachments SET claimed_by = 'pid:1:0123456789ab:slot:4000', claimed_until = ?, bytes_done = 2 "
                  "WHERE id = ?", (now_ms() + 60_000, file_id))
        p = progress(a)
        self.assertEqual((p["upload"]["files_in_flight"], p["upload"]["files_queued"], p["concurrency"]), (0, 1, 0), p)
        self.assertEqual(p["upload"]["bytes_in_flight_done"], 0)


    def test_a_dead_or_expired_claim_shows_no_bytes_nor_rate_in_the_queue(self):
        os.makedirs(self.remote)
        a = self.device("a")
        self.sync(a)  # this process takes its owner slot: the lock file exists
        file_id = one(a, "SELECT attachment_save(randomblob(1000), 'bin')")
        now = now_ms()
        # A worker killed mid-transfer left its claim, its published bytes and its start.
        for claimed_by, until in (("pid:1:0123456789ab:slot:4000", now + 60_000),  # its owner is gone
                                  ("pid:1:0123456789ab", now - 1000)):  # its lease is over
            a.execute("UPDATE attachments SET claimed_by = ?, claimed_until = ?, bytes_done = 600, started_at = ? WHERE id = ?",
                      (claimed_by, until, now - 1000, file_id))
            self.assertEqual(progress(a)["upload"]["files_in_flight"], 0)
            self.assertEqual(a.execute("SELECT bytes_done, rate FROM attachment_queue").fetchone(), (0, None), claimed_by)

class ErrorsPeopleCanActOn(Case):
    """Every row that is not moving says why, when it will be tried again, and comes back at once on retry."""

    @classmethod
    def setUpClass(cls):
        cls.www = tempfile.mkdtemp(prefix="att-www-")
        cls.nginx = servers.Nginx(cls.www, token=servers.TOKEN)

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()

    def test_each_class_is_shown_with_attempts_and_next_attempt(self):
        before = now_ms()
        os.environ["ATTACHMENTS_HTTP_TOKEN"] = "wrong"
        try:
            auth = self.device("auth", remote=f"http://127.0.0.1:{self.nginx.port}/e/")
            auth.execute("SELECT attachment_save(x'01', 'bin')")
            self.sync(auth)
        finally:
            os.environ.pop("ATTACHMENTS_HTTP_TOKEN")
        down = self.device("down", remote=f"http://127.0.0.1:{servers.free_port()}/e/")
        down.execute("SELECT attachment_save(x'01', 'bin')")
        self.sync(down)
        proxy = servers.FaultProxy(self.nginx.port, "status", status=500, methods="PUT")
        try:
            server = self.device("server", remote=f"http://127.0.0.1:{proxy.port}/e/")
            server.execute("SELECT attachment_save(x'01', 'bin')")
            self.sync(server)
        finally:
            proxy.stop()
        for conn, cls in ((auth, "auth"), (down, "network"), (server, "server")):
            state, error_class, attempts, due, error = conn.execute(
                "SELECT state_name, error_class, attempts, next_attempt_at, last_error FROM attachment_queue").fetchone()
            self.assertEqual((state, error_class, attempts), ("QUEUED_UPLOAD", cls, 1), error)
            self.assertTrue(error.startswith(cls + ": "), error)
            self.assertGreater(due, before, "when the next attempt comes")
            self.assertEqual(progress(conn)["last_error"]["class"], cls)
            self.assertEqual(progress(conn)["files_failing"], 1)

    def test_retry_brings_a_row_back_at_once_to_a_worker_in_another_process(self):
        os.environ["ATTACHMENTS_HTTP_TOKEN"] = servers.TOKEN
        try:
            a = self.device("a", remote=f"http://127.0.0.1:{self.nginx.port}/r/")
            a.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT)")
            a.execute(WATCH)
            a.execute("INSERT INTO users VALUES (1, 'late-file')")
            self.sync(a)
            self.assertEqual(a.execute("SELECT state_name, given_up, error_class FROM attachment_queue").fetchone(),
                             ("ARCHIVED", 1, "not_found"))
            stop = os.path.join(self.dir, "stop")
            child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
                import os, sqlite3, time
                c = sqlite3.connect({os.path.join(self.dir, 'a.db')!r}, isolation_level=None, timeout=30)
                c.enable_load_extension(True); c.load_extension({LIB!r})
                c.execute("SELECT attachment_start_sync()")
                print("started", flush=True)
                while not os.path.exists({stop!r}):
                    time.sleep(0.05)
                c.execute("SELECT attachment_stop_sync()")
            """)], env=os.environ, stdout=subprocess.PIPE, text=True)
            try:
                # The child's worker runs (however long the child took to start), and
                # leaves the given-up row alone.
                self.assertEqual(child.stdout.readline().strip(), "started")
                time.sleep(1)
                self.assertEqual(one(a, "SELECT state_name FROM attachment_queue"), "ARCHIVED")
                os.makedirs(os.path.join(self.www, "r"), exist_ok=True)
                with open(os.path.join(self.www, "r", "late-file.bin"), "wb") as f:
                    f.write(b"arrived")
                started = time.monotonic()
                self.assertEqual(one(a, "SELECT attachment_retry('late-file')"), 1)
                wait_until(lambda: one(a, "SELECT state_name FROM attachment_queue") == "SYNCED", timeout=10,
                           what="the other process's worker to download it")
                elapsed = time.monotonic() - started
            finally:
                open(stop, "w").close()
                child.wait(30)
        finally:
            os.environ.pop("ATTACHMENTS_HTTP_TOKEN")
        self.assertLess(elapsed, 5.0, "at once, not at the next period")
        self.assertEqual(a.execute("SELECT attempts, last_error, given_up FROM attachment_queue").fetchone(), (0, None, 0))

    def test_a_pass_that_cannot_run_says_why_in_progress(self):
        os.makedirs(self.remote)
        a = self.device("a")
        one(a, "SELECT attachment_save(x'01', 'bin')")
        files, away = os.path.join(self.dir, "files-a"), os.path.join(self.dir, "away")
        os.rename(files, away)  # an unmounted card: no row is tried, so no row can say why
        with self.assertRaises(sqlite3.Error):
            self.sync(a)
        err = progress(a)["pass_error"]
        self.assertEqual(err["class"], "local")
        self.assertIn("local_dir", err["error"])
        self.assertIn("missing", err["error"])
        self.assertIsNone(one(a, "SELECT last_error FROM attachment_queue"))
        os.rename(away, files)
        self.assertEqual(self.sync(a)["uploaded"], 1)
        self.assertIsNone(progress(a)["pass_error"], "cleared by the next pass that works")

    def test_retry_of_a_failing_delete_makes_it_due_at_once(self):
        os.environ["ATTACHMENTS_HTTP_TOKEN"] = servers.TOKEN
        try:
            proxy = servers.FaultProxy(self.nginx.port, "status", status=503, methods="DELETE", retry_after="3600")
            try:
                a = self.device("a", remote=f"http://127.0.0.1:{proxy.port}/d/")
                file_id = one(a, "SELECT attachment_save(x'01', 'bin')")
                self.assertEqual(self.sync(a)["uploaded"], 1)
                one(a, "SELECT attachment_delete(?)", file_id)
                self.sync(a)
            finally:
                proxy.stop()
            state, cls, due = a.execute("SELECT state_name, error_class, next_attempt_at FROM attachment_queue").fetchone()
            self.assertEqual((state, cls), ("QUEUED_DELETE", "server"))
            self.assertGreater(due, now_ms() + 50 * 60 * 1000, "Retry-After: 1 h")
            self.assertEqual(self.sync(a)["deleted"], 0, "still waiting")
            a.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files-a", "remote": f"http://127.0.0.1:{self.nginx.port}/d/"}),))
            self.assertEqual(one(a, "SELECT attachment_retry(?)", file_id), 1)
            self.assertEqual(self.sync(a)["deleted"], 1)
        finally:
            os.environ.pop("ATTACHMENTS_HTTP_TOKEN")


if __name__ == "__main__":
    unittest.main()
