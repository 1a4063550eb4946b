"""Hostile and broken servers: redirects, truncated or re-encoded bodies,
Retry-After abuse, silence, trickles, error bodies that echo credentials, and
abandoned S3 multipart uploads. Real servers (nginx WebDAV, s3s-fs, the signing
backend) sit behind tests/py/fault_proxy.py, which injects each fault.

Nothing truncated, redirected or re-encoded may ever become SYNCED, every
failure carries its class, and no pass waits longer than the transport's
timeouts (shortened here by SQLITE_ATTACHMENTS_TEST_TIMEOUTS)."""
import email.utils
import fcntl
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import servers
from helpers import Case, LIB, connect, one, files_in

MiB = 1024 * 1024
# Short transport timeouts for these tests only (see src/remote/transport.rs).
TEST_TIMEOUTS = "connect=2,response=3,stall=3,min_rate=1024,min_rate_window=1"
CLASSES = {"auth", "not_found", "network", "server", "local", "config", "integrity"}


def now_ms():
    return int(time.time() * 1000)


class Hostile(Case):
    """A device whose remote goes through a fault proxy in front of a real server."""

    env = {}

    def setUp(self):
        super().setUp()
        env = {"SQLITE_ATTACHMENTS_TEST_TIMEOUTS": TEST_TIMEOUTS, **self.env}
        self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        self.proxies = []

    def tearDown(self):
        for p in self.proxies:
            p.stop()
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        super().tearDown()

    def proxy(self, mode, **options):
        p = servers.FaultProxy(self.storage_port, mode, **options)
        self.proxies.append(p)
        return p

    def device(self, name, port=None, **config):
        conn = super().device(name, **{**self.remote_config(port), **config})
        conn.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT)")
        conn.execute("SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''bin'' AS file_extension FROM users')")
        return conn

    def row(self, conn):
        return conn.execute(
            "SELECT state_name, has_synced, error_class, last_error FROM attachment_queue").fetchone()

    def uploaded(self, data=b"hello", name="a"):
        """A file uploaded straight to the server (no proxy); returns (device, id)."""
        a = self.device(name)
        a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'bin'))", (data,))
        self.assertEqual(self.sync(a)["uploaded"], 1, self.row(a))
        return a, one(a, "SELECT photo_id FROM users")

    def downloader(self, name, port, photo, **config):
        b = self.device(name, port=port, **config)
        b.execute("INSERT INTO users VALUES (1, ?)", (photo,))
        return b

    def local_files(self, name):
        """Files in a device's local_dir, without a partial download kept for the next
        attempt (`.{filename}.partial` and its `-meta`: never at the file's own name)."""
        folder = os.path.join(self.dir, f"files-{name}")
        if not os.path.isdir(folder):
            return []
        return sorted(n for n in files_in(folder) if not (n.startswith(".") and n.endswith((".partial", ".partial-meta"))))

    def partial_download(self, name):
        """The bytes an interrupted download kept, or None."""
        folder = os.path.join(self.dir, f"files-{name}")
        found = [n for n in os.listdir(folder) if n.endswith(".partial")]
        if not found:
            return None
        with open(os.path.join(folder, found[0]), "rb") as f:
            return f.read()

    def assert_failed_cleanly(self, conn, state, error_class, pattern=None, has_synced=0):
        got_state, got_synced, got_class, error = self.row(conn)
        self.assertEqual((got_state, got_synced, got_class), (state, has_synced, error_class), error)
        self.assertTrue(error.startswith(error_class + ": "), f"the class is visible in last_error: {error}")
        if pattern:
            self.assertRegex(error, pattern)
        return error

    def sync_in_subprocess(self, db, timeout, env=None):
        """Runs attachment_sync() in a sqlite3 CLI of its own, so a pass that never
        returns fails the test instead of hanging it. Returns (seconds, stdout, stderr)."""
        started = time.monotonic()
        proc = subprocess.run(
            ["sqlite3", db, f".load {LIB}", "SELECT attachment_sync();"],
            capture_output=True, text=True, timeout=timeout, env=env or dict(os.environ))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return time.monotonic() - started, proc.stdout, proc.stderr


class HttpServer(Hostile):
    env = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-hostile-www-")
        cls.nginx = servers.Nginx(cls.root, token=servers.TOKEN)
        cls.storage_port = cls.nginx.port

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def remote_config(self, port):
        return {"remote": f"http://127.0.0.1:{port or self.storage_port}/files/"}

    def stored(self, filename):
        path = os.path.join(self.root, "files", filename)
        return open(path, "rb").read() if os.path.exists(path) else None

    # -- redirects --------------------------------------------------------

    def test_a_redirected_put_is_a_config_error_and_never_synced(self):
        for status in (301, 302, 303, 307, 308):
            with self.subTest(status=status):
                p = self.proxy("redirect", status=status, methods="PUT", location="/login")
                a = self.device(f"put{status}", port=p.port)
                a.execute("INSERT INTO users VALUES (1, attachment_save(x'0102', 'bin'))")
                self.assertEqual(self.sync(a)["uploaded"], 0)
                self.assert_failed_cleanly(a, "QUEUED_UPLOAD", "config", f"HTTP {status}.*redirect")
                self.assertIsNone(self.stored(one(a, "SELECT filename FROM attachments")))
                self.assertEqual([r.split()[0] for r in p.requests()], ["PUT"], "the redirect is not followed")

    def test_a_redirected_delete_is_a_config_error_and_the_row_stays(self):
        for status in (301, 302, 303, 307, 308):
            with self.subTest(status=status):
                p = self.proxy("redirect", status=status, methods="DELETE", location="/login")
                a = self.device(f"del{status}", port=p.port)
                a.execute("INSERT INTO users VALUES (1, attachment_save(x'0102', 'bin'))")
                self.assertEqual(self.sync(a)["uploaded"], 1, self.row(a))
                filename = one(a, "SELECT filename FROM attachments")
                a.execute("SELECT attachment_delete(photo_id) FROM users")
                a.execute("UPDATE users SET photo_id = NULL")
                self.assertEqual(self.sync(a)["deleted"], 0)
                self.assert_failed_cleanly(a, "QUEUED_DELETE", "config", f"HTTP {status}.*redirect", has_synced=1)
                self.assertIsNotNone(self.stored(filename), "the object was never deleted")

    def test_a_get_redirected_to_a_login_page_is_refused(self):
        _, photo = self.uploaded(b"\x00binary attachment")
        for status in (301, 302, 303, 307, 308):
            with self.subTest(status=status):
                p = self.proxy("redirect", status=status, methods="GET", location="/login")
                b = self.downloader(f"login{status}", p.port, photo)
                self.assertEqual(self.sync(b)["downloaded"], 0)
                self.assert_failed_cleanly(b, "QUEUED_DOWNLOAD", "config", "redirect")
                self.assertEqual(self.local_files(f"login{status}"), [], "the login page is not kept as the file")

    def test_a_get_redirected_to_the_same_file_converges(self):
        data = os.urandom(50_000)
        _, photo = self.uploaded(data)
        for status in (301, 302, 307, 308):
            with self.subTest(status=status):
                p = self.proxy("redirect", status=status, methods="GET")
                b = self.downloader(f"moved{status}", p.port, photo)
                self.assertEqual(self.sync(b)["downloaded"], 1, self.row(b))
                self.assertEqual(one(b, "SELECT attachment_data(?)", photo), data)
        # 303 See Other names another resource: not the file.
        p = self.proxy("redirect", status=303, methods="GET")
        b = self.downloader("moved303", p.port, photo)
        self.assertEqual(self.sync(b)["downloaded"], 0)
        self.assert_failed_cleanly(b, "QUEUED_DOWNLOAD", "config", "HTTP 303.*redirect")

    def test_a_redirect_to_another_host_never_carries_the_token(self):
        _, photo = self.uploaded(b"x" * 1000)
        p = self.proxy("redirect", status=307, methods="GET")
        # Same proxy, other host name: another origin as far as the client can tell.
        p2 = servers.FaultProxy(self.storage_port, "redirect", status=307, methods="GET",
                                location=f"http://localhost:{p.port}/moved{{path}}")
        self.proxies.append(p2)
        b = self.downloader("other", p2.port, photo)
        self.sync(b)
        moved = [r for r in p.requests() if "/moved/" in r]
        self.assertEqual(len(moved), 1, p.requests())
        self.assertIn("auth=no", moved[0], "the bearer token stayed home")
        self.assertNotEqual(self.row(b)[0], "SYNCED")

    # -- bodies -----------------------------------------------------------

    def test_truncated_bodies_are_never_synced(self):
        data = os.urandom(100_000)
        _, photo = self.uploaded(data)
        for mode in ("truncate", "truncate_close", "truncate_chunked"):
            with self.subTest(mode=mode):
                p = self.proxy(mode)
                b = self.downloader(mode, p.port, photo)
                self.assertEqual(self.sync(b)["downloaded"], 0, self.row(b))
                state, has_synced, error_class, error = self.row(b)
                self.assertEqual((state, has_synced), ("QUEUED_DOWNLOAD", 0), error)
                self.assertEqual(error_class, "integrity", error)
                self.assertIn("incomplete" if mode != "truncate_close" else "neither Content-Length", error)
                self.assertEqual(self.local_files(mode), [], "no file at its name, no temp file left")
                # What arrived of a body cut short is kept for the next attempt to resume from
                # (never a close-delimited one, which cannot be told from a whole file).
                kept = self.partial_download(mode)
                if mode == "truncate_close":
                    self.assertIsNone(kept)
                else:
                    self.assertEqual(kept, data[: len(kept)], "a partial download is the file's start")

    def test_a_gzip_body_nobody_asked_for_is_refused(self):
        _, photo = self.uploaded(b"plain text " * 1000)
        p = self.proxy("gzip")
        b = self.downloader("gz", p.port, photo)
        self.assertEqual(self.sync(b)["downloaded"], 0)
        self.assert_failed_cleanly(b, "QUEUED_DOWNLOAD", "integrity", "gzip")
        self.assertEqual(self.local_files("gz"), [])

    # -- Retry-After --------------------------------------------------------

    def retry_after_upload(self, name, value):
        p = self.proxy("status", status=503, methods="PUT", retry_after=value)
        a = self.device(name, port=p.port)
        a.execute("INSERT INTO users VALUES (1, attachment_save(x'01', 'bin'))")
        a.close()
        seconds, _, _ = self.sync_in_subprocess(os.path.join(self.dir, f"{name}.db"), timeout=30)
        a = connect(os.path.join(self.dir, f"{name}.db"))
        return p, a, seconds

    def test_a_huge_retry_after_returns_at_once_with_the_row_waiting(self):
        p, a, seconds = self.retry_after_upload("huge", "9223372036854775")
        self.assertLess(seconds, 10)
        self.assertEqual(len([r for r in p.requests() if r.startswith("PUT")]), 1, "one attempt per pass")
        self.assert_failed_cleanly(a, "QUEUED_UPLOAD", "server", "HTTP 503")
        wait = one(a, "SELECT next_attempt_at FROM attachment_queue") - now_ms()
        self.assertGreater(wait, 50 * 60 * 1000, "the server asked for a long wait")
        self.assertLessEqual(wait, 60 * 60 * 1000, "capped at the longest backoff")

    def test_retry_after_in_seconds_and_as_an_http_date_is_honoured(self):
        for name, value, want in (("secs", "120", 120), ("date", email.utils.formatdate(time.time() + 600, usegmt=True), 600)):
            with self.subTest(form=name):
                _, a, _ = self.retry_after_upload(name, value)
                wait = one(a, "SELECT next_attempt_at FROM attachment_queue") - now_ms()
                self.assertGreater(wait, (want - 15) * 1000, value)
                self.assertLess(wait, (want + 5) * 1000, value)

    # -- silence and trickles ------------------------------------------------

    def test_a_server_that_never_answers_is_cut_by_the_response_timeout(self):
        p = self.proxy("silent", methods="PUT")
        a = self.device("silent", port=p.port)
        a.execute("INSERT INTO users VALUES (1, attachment_save(x'01', 'bin'))")
        started = time.monotonic()
        self.sync(a)
        self.assertLess(time.monotonic() - started, 20)
        self.assert_failed_cleanly(a, "QUEUED_UPLOAD", "network", "timed out")

    def test_a_put_whose_body_is_never_read_is_cut(self):
        p = self.proxy("never_read")
        a = self.device("never", port=p.port)
        a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'bin'))", (os.urandom(32 * MiB),))
        started = time.monotonic()
        self.sync(a)
        self.assertLess(time.monotonic() - started, 25)
        self.assert_failed_cleanly(a, "QUEUED_UPLOAD", "network", "timed out|too slow")

    def test_a_body_that_stops_half_way_is_cut_by_the_stall_timeout(self):
        _, photo = self.uploaded(os.urandom(100_000))
        p = self.proxy("stall_body")
        b = self.downloader("stall", p.port, photo)
        started = time.monotonic()
        self.sync(b)
        self.assertLess(time.monotonic() - started, 20)
        self.assert_failed_cleanly(b, "QUEUED_DOWNLOAD", "network", "timed out|interrupted")
        self.assertEqual(self.local_files("stall"), [])

    def test_a_download_a_stopped_worker_still_holds_is_busy_not_a_failed_attempt(self):
        _, photo = self.uploaded(os.urandom(100_000))
        p = self.proxy("stall_body")
        b = self.downloader("busy", p.port, photo)
        b.execute("SELECT attachment_start_sync()")
        self.started.append(b)
        deadline = time.monotonic() + 10
        while not any(r.startswith("GET") for r in p.requests()):
            self.assertLess(time.monotonic(), deadline, "the worker's GET never came")
            time.sleep(0.02)
        b.execute("SELECT attachment_stop_sync()")
        # A transfer the stop left running holds the partial file's lock. The stopped
        # thread notices the stop within a read slice (100 ms), keeps or removes its partial
        # file and lets go; for a window that does not depend on the machine's speed, the
        # lock is then held here as such a transfer holds it (flock locks of two open files
        # conflict in one process too): this pass must wait, not fail.
        partial = os.path.join(self.dir, "files-busy", f".{photo}.bin.partial")
        while True:
            held = open(partial, "ab")
            fcntl.flock(held, fcntl.LOCK_EX)  # waits for the stopped thread to let go
            if os.path.exists(partial) and os.stat(partial).st_ino == os.fstat(held.fileno()).st_ino:
                break
            held.close()  # it removed the file we opened: open the name again
        with held:
            self.sync(b)
        attempts, next_at, error = b.execute("SELECT attempts, next_attempt_at, last_error FROM attachment_queue").fetchone()
        self.assertEqual(attempts, 0, error)
        self.assertIn("busy", error)
        self.assertLess(next_at - now_ms(), 5000, "tried again soon")

    def test_a_resumed_answer_lying_about_the_total_length_is_never_published(self):
        data = os.urandom(200_000)
        _, photo = self.uploaded(data)
        p = self.proxy("lying_206", cut_bytes=50_000)
        b = self.downloader("lying", p.port, photo)
        self.sync(b)
        self.assertEqual(len(self.partial_download("lying")), 50_000)
        one(b, "SELECT attachment_retry(NULL)")
        self.sync(b)
        # The 206 claimed the object ends at 50,100 bytes: a different total than the 200,000
        # announced first, so the download started over instead of publishing 50,100 bytes.
        with open(p.log + ".sent") as f:
            self.assertIn("GET 206 100 range=bytes=50000-", f.read())
        self.assertEqual(self.row(b)[0], "SYNCED", self.row(b))
        with open(one(b, "SELECT attachment_local_uri(?)", photo), "rb") as f:
            self.assertEqual(f.read(), data)

    def test_a_whole_answer_shorter_than_first_announced_under_the_same_etag_is_never_published(self):
        data = os.urandom(200_000)
        _, photo = self.uploaded(data)
        p = self.proxy("short_200_tail", cut_bytes=50_000)
        b = self.downloader("tail", p.port, photo)
        self.sync(b)
        self.assertEqual(len(self.partial_download("tail")), 50_000)
        one(b, "SELECT attachment_retry(NULL)")
        self.sync(b)
        # A 200 with the ETag of the first answer (200,000 bytes announced) but 150,000 bytes.
        with open(p.log + ".sent") as f:
            self.assertIn("GET 200 150000 range=bytes=50000-", f.read())
        state, _, error_class, error = self.row(b)
        self.assertEqual((state, error_class), ("QUEUED_DOWNLOAD", "integrity"), error)
        self.assertIn("150000 of 200000", error)
        self.assertIsNone(one(b, "SELECT attachment_local_uri(?)", photo))
        self.assertIsNone(self.partial_download("tail"), "the partial file is dropped")

    def test_trickling_downloads_are_cut_and_free_their_slots(self):
        a = self.device("a")
        photos = []
        for i in range(4):
            a.execute("INSERT INTO users VALUES (?, attachment_save(?, 'bin'))", (i, os.urandom(20_000)))
        self.assertEqual(self.sync(a)["uploaded"], 4)
        photos = [r[0] for r in a.execute("SELECT photo_id FROM users")]
        p = self.proxy("trickle", trickle_bytes=1, trickle_delay=0.2)
        b = self.device("b", port=p.port, max_concurrency=4)
        b.executemany("INSERT INTO users VALUES (?, ?)", enumerate(photos))
        b.close()
        seconds, _, _ = self.sync_in_subprocess(os.path.join(self.dir, "b.db"), timeout=60)
        self.assertLess(seconds, 20, "four trickles at 5 bytes/s are cut, not waited for")
        b = connect(os.path.join(self.dir, "b.db"))
        rows = b.execute("SELECT state_name, error_class, last_error FROM attachment_queue").fetchall()
        self.assertEqual(len(rows), 4)
        for state, error_class, error in rows:
            self.assertEqual((state, error_class), ("QUEUED_DOWNLOAD", "network"), error)
            self.assertIn("too slow", error)

    def test_an_upload_the_server_reads_at_a_trickle_is_cut(self):
        # The server reads 64 KiB every 0.5 s (128 KiB/s); the minimum here is 1 MiB/s.
        os.environ["SQLITE_ATTACHMENTS_TEST_TIMEOUTS"] = "connect=2,response=3,stall=3,min_rate=1048576,min_rate_window=1"
        p = self.proxy("trickle", trickle_bytes=65536, trickle_delay=0.5)
        a = self.device("slowput", port=p.port)
        a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'bin'))", (os.urandom(48 * MiB),))
        a.close()
        seconds, _, _ = self.sync_in_subprocess(os.path.join(self.dir, "slowput.db"), timeout=120)
        self.assertLess(seconds, 40)
        a = connect(os.path.join(self.dir, "slowput.db"))
        self.assert_failed_cleanly(a, "QUEUED_UPLOAD", "network", "too slow|timed out")

    # -- classes -------------------------------------------------------------

    def test_every_failure_has_a_class(self):
        a = self.device("a")
        a.execute("INSERT INTO users VALUES (1, attachment_save(x'01', 'bin'))")
        os.environ["ATTACHMENTS_HTTP_TOKEN"] = "wrong"
        self.sync(a)
        self.assertEqual(self.row(a)[2], "auth")
        os.environ["ATTACHMENTS_HTTP_TOKEN"] = servers.TOKEN
        b = self.downloader("b", None, "never-uploaded")
        self.sync(b)
        self.assertEqual(self.row(b)[2], "not_found")
        c = self.device("c", port=servers.free_port())
        c.execute("INSERT INTO users VALUES (1, attachment_save(x'01', 'bin'))")
        self.sync(c)
        self.assertEqual(self.row(c)[2], "network")
        p = self.proxy("status", status=500, methods="PUT")
        d = self.device("d", port=p.port)
        d.execute("INSERT INTO users VALUES (1, attachment_save(x'01', 'bin'))")
        self.sync(d)
        self.assertEqual(self.row(d)[2], "server")
        # Once the transfer succeeds, the error and its class are gone.
        a.execute("UPDATE attachments SET next_attempt_at = 0")
        self.assertEqual(self.sync(a)["uploaded"], 1)
        self.assertEqual(self.row(a)[2:], (None, None))


class SignedBackendRedirect(Hostile):
    """The signed-URL pattern's backend behind a login: its POST and DELETE redirected."""

    env = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-hostile-signed-")
        cls.s3 = servers.S3(cls.root)
        cls.backend = servers.SigningBackend(cls.s3.url)
        cls.storage_port = cls.backend.port

    @classmethod
    def tearDownClass(cls):
        cls.backend.stop()
        cls.s3.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def remote_config(self, port):
        return {"remote": f"signed+http://127.0.0.1:{port or self.storage_port}"}

    def test_a_redirected_post_for_an_upload_url_is_a_config_error(self):
        for status in (301, 302, 303, 307, 308):
            with self.subTest(status=status):
                p = self.proxy("redirect", status=status, methods="POST", location="/login")
                a = self.device(f"post{status}", port=p.port)
                a.execute("INSERT INTO users VALUES (1, attachment_save(x'0102', 'bin'))")
                self.assertEqual(self.sync(a)["uploaded"], 0)
                self.assert_failed_cleanly(a, "QUEUED_UPLOAD", "config", f"HTTP {status}.*redirect")
                self.assertEqual([r.split()[0] for r in p.requests()], ["POST"], "the redirect is not followed")


class Secrets(Hostile):
    """Every credential set, every remote, trace logging, servers echoing the request."""

    TOKEN = "tok-SECRET-bearer-4f2a9c"
    SESSION = "sess-SECRET-token-8c1d77"
    env = {"ATTACHMENTS_HTTP_TOKEN": TOKEN, "AWS_ACCESS_KEY_ID": servers.ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY, "AWS_SESSION_TOKEN": SESSION,
           "SQLITE_ATTACHMENTS_LOG": "trace"}
    secrets = [TOKEN, SESSION, servers.ACCESS_KEY, servers.SECRET_KEY]

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-hostile-secrets-")
        cls.www = os.path.join(cls.root, "www")
        os.makedirs(cls.www)
        cls.nginx = servers.Nginx(cls.www, token=cls.TOKEN)
        cls.s3 = servers.S3(os.path.join(cls.root, "s3"))
        cls.backend = None

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()
        cls.s3.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def remote_config(self, port):
        return self.config

    def check_clean(self, name, texts):
        blobs = [t.encode() if isinstance(t, str) else t for t in texts]
        for path in glob.glob(os.path.join(self.dir, f"{name}.db*")):
            with open(path, "rb") as f:
                blobs.append(f.read())
        for blob in blobs:
            for secret in self.secrets:
                self.assertNotIn(secret.encode(), blob)
            for pattern in (rb"Signature=(?!REDACTED)[0-9a-fA-F]", rb"Credential=(?!REDACTED)\w",
                            rb"Security-Token=(?!REDACTED)\w", rb"Bearer (?!REDACTED)\w"):
                self.assertIsNone(re.search(pattern, blob, re.I), blob[:3000])

    def run_echoed(self, name, config, upload_port=None):
        """An upload, a download and a delete, all answered by echoing servers;
        returns every text the extension produced."""
        self.config = config
        a = self.device(name)
        a.execute("INSERT INTO users VALUES (1, attachment_save(x'0102', 'bin'))")
        a.execute("INSERT INTO users VALUES (2, 'never-uploaded-id')")
        a.execute("INSERT INTO attachments(id, filename, state, timestamp, has_synced) "
                  "VALUES ('gone', 'gone.bin', 2, 0, 1)")
        a.close()
        _, out, err = self.sync_in_subprocess(os.path.join(self.dir, f"{name}.db"), timeout=60)
        a = connect(os.path.join(self.dir, f"{name}.db"))
        errors = [r[0] for r in a.execute("SELECT last_error FROM attachment_queue WHERE last_error IS NOT NULL")]
        a.close()
        self.assertGreaterEqual(len(errors), 2, (errors, err))
        self.assertTrue(err.strip(), "trace logging wrote something")
        return [out, err, *errors]

    def echoed_validator(self, name, direct, proxied):
        """A download cut after its server sent the request's credential as the ETag and
        Last-Modified: what the extension keeps to resume must not hold it."""
        self.config = direct
        a = self.device(name + "-up")
        a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'bin'))", (os.urandom(50_000),))
        self.assertEqual(self.sync(a)["uploaded"], 1)
        photo = one(a, "SELECT photo_id FROM users")
        self.config = proxied
        b = self.device(name)
        b.execute("INSERT INTO users VALUES (1, ?)", (photo,))
        self.sync(b)
        folder = os.path.join(self.dir, f"files-{name}")
        names = os.listdir(folder)
        # The cut kept its bytes, so a validator would have been stored beside them.
        self.assertTrue(any(n.endswith(".partial") for n in names), names)
        blobs = []
        for n in names:
            with open(os.path.join(folder, n), "rb") as f:
                blobs.append(f.read())
        self.check_clean(name, blobs + [self.row(b)[3]])

    def test_a_validator_echoing_the_bearer_token_is_not_kept(self):
        self.storage_port = self.nginx.port
        p = self.proxy("echo_validator", cut_bytes=20_000)
        self.echoed_validator("http-v", {"remote": f"http://127.0.0.1:{self.nginx.port}/files/"},
                              {"remote": f"http://127.0.0.1:{p.port}/files/"})
        self.assertTrue(any(r.startswith("GET") and "auth=yes" in r for r in p.requests()))

    def test_a_validator_echoing_the_session_token_is_not_kept(self):
        self.storage_port = self.s3.port
        p = self.proxy("echo_validator", cut_bytes=20_000)
        self.echoed_validator("s3-v", {"remote": f"s3://{servers.BUCKET}/app", "s3_endpoint": self.s3.url},
                              {"remote": f"s3://{servers.BUCKET}/app", "s3_endpoint": f"http://127.0.0.1:{p.port}"})

    def run_clean(self, name, config):
        """A successful upload with trace logging; returns what it printed."""
        self.config = config
        a = self.device(name)
        a.execute("INSERT INTO users VALUES (1, attachment_save(x'0102', 'bin'))")
        a.close()
        _, out, err = self.sync_in_subprocess(os.path.join(self.dir, f"{name}.db"), timeout=60)
        self.assertEqual(json.loads(out)["uploaded"], 1, err)
        return [out, err]

    def test_http_webdav(self):
        self.storage_port = self.nginx.port
        self.check_clean("http-ok", self.run_clean("http-ok", {"remote": f"http://127.0.0.1:{self.nginx.port}/files/"}))
        p = self.proxy("echo", status=400)
        texts = self.run_echoed("http", {"remote": f"http://127.0.0.1:{p.port}/files/"})
        self.check_clean("http", texts)
        # The echo did reach the server with the token: the test can fail.
        self.assertTrue(any("auth=yes" in r for r in p.requests()))

    def test_s3(self):
        self.storage_port = self.s3.port
        self.check_clean("s3-ok", self.run_clean("s3-ok", {"remote": f"s3://{servers.BUCKET}/app", "s3_endpoint": self.s3.url}))
        p = self.proxy("echo", status=400)
        texts = self.run_echoed("s3", {"remote": f"s3://{servers.BUCKET}/app", "s3_endpoint": f"http://127.0.0.1:{p.port}"})
        self.check_clean("s3", texts)

    def test_signed_urls_storage_and_backend(self):
        self.storage_port = self.s3.port
        storage = self.proxy("echo", status=403)
        backend = servers.SigningBackend(storage.url, token=self.TOKEN)
        try:
            texts = self.run_echoed("signed", {"remote": f"signed+{backend.url}"})
            self.check_clean("signed", texts)
            # The backend itself echoes too (its token in an Authorization header).
            self.storage_port = backend.port
            front = self.proxy("echo", status=500)
            texts = self.run_echoed("signed2", {"remote": f"signed+{front.url}"})
            self.check_clean("signed2", texts)
        finally:
            backend.stop()


class S3Multipart(Hostile):
    env = {"AWS_ACCESS_KEY_ID": servers.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-hostile-s3-")
        cls.s3 = servers.S3(cls.root)
        cls.storage_port = cls.s3.port

    @classmethod
    def tearDownClass(cls):
        cls.s3.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def remote_config(self, port):
        return {"remote": f"s3://{servers.BUCKET}/app", "s3_endpoint": f"http://127.0.0.1:{port or self.storage_port}"}

    def pending_uploads(self):
        """Multipart uploads s3s-fs still holds (it keeps each one's parts under `.upload_id-*`)."""
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            found += [n for n in dirnames + filenames if n.startswith(".upload")]
        return found

    def interrupted_upload(self, name):
        p = self.proxy("fail_put", fail_put_number=2)
        a = self.device(name, port=p.port)
        a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'bin'))", (os.urandom(40 * MiB),))
        self.assertEqual(self.sync(a)["uploaded"], 0)
        self.assertIsNotNone(one(a, "SELECT upload_resume FROM attachments"))
        self.assertNotEqual(self.pending_uploads(), [], "s3s-fs holds the parts sent so far")
        return a

    def test_deleting_an_interrupted_upload_aborts_it(self):
        a = self.interrupted_upload("del")
        a.execute("SELECT attachment_delete(photo_id) FROM users")
        a.execute("UPDATE users SET photo_id = NULL")
        a.execute("UPDATE attachments SET next_attempt_at = 0")
        self.assertEqual(self.sync(a)["deleted"], 1, self.row(a))
        self.assertEqual(self.pending_uploads(), [], "no billed parts left behind")

    def test_an_upload_id_answered_404_is_aborted_and_the_upload_starts_over(self):
        a = self.interrupted_upload("forgot")
        # Every PUT now answered 404, as S3 answers an upload id it no longer knows
        # (s3s-fs itself answers 403 there, which we must not read as "gone").
        p = self.proxy("status", status=404, methods="PUT")
        a.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files-forgot", **self.remote_config(p.port)}),))
        a.execute("UPDATE attachments SET next_attempt_at = 0")
        self.assertEqual(self.sync(a)["uploaded"], 0)
        state, _, error_class, error = self.row(a)
        self.assertEqual((state, error_class), ("QUEUED_UPLOAD", "not_found"), error)
        self.assertIsNone(one(a, "SELECT upload_resume FROM attachments"), "the dead upload id is dropped")
        self.assertEqual(self.pending_uploads(), [], "and aborted, in case the store still holds parts")
        a.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files-forgot", **self.remote_config(None)}),))
        a.execute("UPDATE attachments SET next_attempt_at = 0")
        self.assertEqual(self.sync(a)["uploaded"], 1, self.row(a))
        self.assertEqual(self.pending_uploads(), [])

    def test_a_changed_part_size_aborts_the_old_upload(self):
        a = self.interrupted_upload("size")
        resume = json.loads(one(a, "SELECT upload_resume FROM attachments"))
        resume["part_size"] = 5 * MiB  # as if an older release had chosen another part size
        a.execute("UPDATE attachments SET upload_resume = ?, next_attempt_at = 0", (json.dumps(resume),))
        self.assertEqual(self.sync(a)["uploaded"], 1, self.row(a))
        self.assertEqual(self.pending_uploads(), [])


if __name__ == "__main__":
    unittest.main()
