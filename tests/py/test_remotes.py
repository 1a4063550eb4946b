"""The network remotes against real servers on 127.0.0.1: nginx WebDAV for
http://, s3s-fs (real SigV4 checking) for s3://, and a signing backend in
front of s3s-fs for signed+http://. Each remote passes the same contract."""
import hashlib
import json
import os
import re
import subprocess
import tempfile
import textwrap
import threading
import time
import unittest

import servers
from helpers import Case, LIB, files_in, one

MiB = 1024 * 1024


class RemoteContract:
    """Mixed into one TestCase per remote. Subclasses start the servers and say
    where an object lands (`stored`) and how to reach storage through a port."""

    env = {}

    def setUp(self):
        super().setUp()
        self._saved_env = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)

    def tearDown(self):
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        super().tearDown()

    def device(self, name, port=None, **config):
        conn = super().device(name, **{**self.remote_config(port), **config})
        conn.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT)")
        conn.execute("SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''bin'' AS file_extension FROM users')")
        return conn

    def row(self, conn):
        return conn.execute("SELECT state_name, attempts, last_error FROM attachment_queue").fetchone()

    def test_two_devices_share_a_file(self):
        a, b = self.device("a"), self.device("b")
        data = os.urandom(200_000)
        a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'bin'))", (data,))
        photo = one(a, "SELECT photo_id FROM users")
        self.assertEqual(self.sync(a)["uploaded"], 1, self.row(a))
        self.assertEqual(self.stored(photo + ".bin"), data)
        b.execute("INSERT INTO users VALUES (1, ?)", (photo,))
        self.assertEqual(self.sync(b)["downloaded"], 1, self.row(b))
        self.assertEqual(one(b, "SELECT attachment_data(?)", photo), data)
        self.assertEqual(one(b, "SELECT sha256 FROM attachments"), hashlib.sha256(data).hexdigest())

    def test_a_big_file_changed_after_saving_is_never_stored_and_goes_up_once_restored(self):
        # Big files are checked while they are sent: their last bytes wait for the check
        # (one PUT cut short), or every part does (S3 multipart above 16 MiB).
        a = self.device("a")
        data = bytearray(os.urandom(20 * MiB))
        a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'bin'))", (bytes(data),))
        photo, path = a.execute("SELECT photo_id, attachment_local_uri(photo_id) FROM users").fetchone()
        with open(path, "r+b") as f:
            f.seek(len(data) - 1)
            f.write(bytes([data[-1] ^ 1]))  # same size, the last byte differs
        self.assertEqual(self.sync(a)["uploaded"], 0)
        state, attempts, error = self.row(a)
        self.assertEqual(state, "QUEUED_UPLOAD")
        self.assertRegex(error, "^integrity: .*changed after it was saved")
        self.assertIsNone(self.stored(photo + ".bin"), "nothing of it is stored")
        self.assertIsNone(one(a, "SELECT upload_resume FROM attachments"), "nothing to resume from")
        # The user puts the saved bytes back: the next attempt sends them, whole.
        with open(path, "r+b") as f:
            f.seek(len(data) - 1)
            f.write(bytes([data[-1]]))
        a.execute("UPDATE attachments SET next_attempt_at = 0")  # skip the long integrity backoff
        self.assertEqual(self.sync(a)["uploaded"], 1, self.row(a))
        self.assertEqual(self.stored(photo + ".bin"), bytes(data))

    def test_a_file_written_to_while_it_uploads_is_never_stored(self):
        # The bytes handed to the remote are hashed, not a second read of the file: a byte
        # changed (and put back) mid-upload is caught before the body completes.
        a = self.device("a", max_bytes_per_second=4 * MiB)
        data = os.urandom(12 * MiB)  # one PUT on every remote here; 3 s at the cap
        a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'bin'))", (data,))
        photo, path = a.execute("SELECT photo_id, attachment_local_uri(photo_id) FROM users").fetchone()

        def tamper():
            # At 4 MiB/s the upload reads offset 6 MiB about 1.5 s in: changed well before,
            # put back well after.
            time.sleep(0.3)
            with open(path, "r+b") as f:
                f.seek(6 * MiB)
                f.write(b"EVIL")
                f.flush()
                time.sleep(2.5)
                f.seek(6 * MiB)
                f.write(data[6 * MiB:6 * MiB + 4])  # put back

        t = threading.Thread(target=tamper)
        t.start()
        try:
            self.assertEqual(self.sync(a)["uploaded"], 0, self.row(a))
        finally:
            t.join()
        state, attempts, error = self.row(a)
        self.assertEqual(state, "QUEUED_UPLOAD")
        self.assertRegex(error, "^integrity")
        self.assertIsNone(self.stored(photo + ".bin"), "no remote holds the changed bytes")

    def test_delete_removes_the_remote_object(self):
        a = self.device("a")
        a.execute("INSERT INTO users VALUES (1, attachment_save(x'0102', 'bin'))")
        photo = one(a, "SELECT photo_id FROM users")
        self.sync(a)
        self.assertIsNotNone(self.stored(photo + ".bin"))
        a.execute("SELECT attachment_delete(photo_id) FROM users")
        a.execute("UPDATE users SET photo_id = NULL")
        self.assertEqual(self.sync(a)["deleted"], 1, self.row(a))
        self.assertIsNone(self.stored(photo + ".bin"))
        self.assertEqual(one(a, "SELECT count(*) FROM attachments"), 0)

    def test_a_missing_object_archives_the_download(self):
        b = self.device("b")
        b.execute("INSERT INTO users VALUES (1, 'never-uploaded')")
        self.sync(b)
        state, attempts, error = self.row(b)
        self.assertEqual(state, "ARCHIVED")
        self.assertIn("404", error)

    def test_wrong_credentials_keep_the_row_queued_with_a_clear_error(self):
        a = self.device("a")
        a.execute("INSERT INTO users VALUES (1, attachment_save(x'01', 'bin'))")
        good = dict(os.environ)
        os.environ.update(self.bad_credentials)
        try:
            summary = self.sync(a)
        finally:
            os.environ.clear()
            os.environ.update(good)
        state, attempts, error = self.row(a)
        self.assertEqual((state, attempts, summary["pending"]), ("QUEUED_UPLOAD", 1, 1))
        self.assertRegex(error, r"HTTP 40[13]")
        due_in = one(a, "SELECT next_attempt_at - CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) FROM attachments")
        self.assertGreater(due_in, 5 * 60 * 1000, "401/403 back off long")
        # Nothing secret reached the database file.
        a.close()
        with open(os.path.join(self.dir, "a.db"), "rb") as f:
            content = f.read()
        for secret in self.bad_credentials.values():
            self.assertNotIn(secret.encode(), content)
        self.assertNotIn(servers.SECRET_KEY.encode(), content)

    def test_a_server_that_is_down_keeps_the_row_queued(self):
        a = self.device("a", port=servers.free_port())
        a.execute("INSERT INTO users VALUES (1, attachment_save(x'01', 'bin'))")
        self.sync(a)
        state, attempts, error = self.row(a)
        self.assertEqual((state, attempts), ("QUEUED_UPLOAD", 1))
        self.assertRegex(error, "failed: .*(Connection refused|connection failed)")

    def test_a_truncated_download_never_becomes_synced(self):
        # Both devices go through the proxy (it passes uploads untouched), so the
        # signed-URL backend hands out URLs of the proxy to both.
        proxy = servers.FaultProxy(self.storage_port, "truncate")
        try:
            a, b = self.device("a", port=proxy.port), self.device("b", port=proxy.port)
            data = os.urandom(100_000)
            a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'bin'))", (data,))
            self.sync(a)
            b.execute("INSERT INTO users SELECT * FROM (SELECT 1, ?)", (one(a, "SELECT photo_id FROM users"),))
            summary = self.sync(b)
        finally:
            proxy.stop()
        state, attempts, error = self.row(b)
        self.assertEqual((summary["downloaded"], state, attempts), (0, "QUEUED_DOWNLOAD", 1))
        self.assertRegex(error, "incomplete|interrupted")
        folder = os.path.join(self.dir, "files-b")
        filename = one(b, "SELECT filename FROM attachments")
        # Nothing at the file's name, no temp file: only the start of the file, kept for
        # the next attempt to ask for the rest (and its validator).
        self.assertEqual(sorted(files_in(folder)), [f".{filename}.partial", f".{filename}.partial-meta"])
        with open(os.path.join(folder, f".{filename}.partial"), "rb") as f:
            kept = f.read()
        self.assertEqual(kept, data[: len(kept)])
        self.assertGreater(len(kept), 0)

    def test_a_100_mib_round_trip_streams_in_flat_memory(self):
        """Peak RSS of a sqlite3 CLI process moving 100 MiB, against the same process moving 1 KiB."""
        peaks = {}
        for size in (1024, 100 * MiB):
            src = os.path.join(self.dir, f"src-{size}.bin")
            with open(src, "wb") as f:
                for _ in range(max(1, size // MiB)):
                    f.write(os.urandom(min(size, MiB)))
            cfg = json.dumps({"local_dir": f"up-{size}", **self.remote_config(None)})
            cfg_b = json.dumps({"local_dir": f"down-{size}", **self.remote_config(None)})
            out, up_peak = self.cli(f"up-{size}.db", f"""
                SELECT attachment_init('{cfg}') IS NOT NULL;
                CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT);
                INSERT INTO users VALUES (1, attachment_save_file('{src}', 'bin'));
                SELECT attachment_sync();
                SELECT photo_id FROM users;""")
            self.assertIn('"uploaded":1', out)
            photo = out.strip().splitlines()[-1]
            out, down_peak = self.cli(f"down-{size}.db", f"""
                SELECT attachment_init('{cfg_b}') IS NOT NULL;
                CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT);
                SELECT attachment_watch('p', 'SELECT photo_id AS id, ''bin'' AS file_extension FROM users');
                INSERT INTO users VALUES (1, '{photo}');
                SELECT attachment_sync();
                SELECT attachment_local_uri('{photo}');""")
            self.assertIn('"downloaded":1', out)
            self.assertEqual(file_sha256(out.strip().splitlines()[-1]), file_sha256(src))
            peaks[size] = (up_peak, down_peak)
        small, big = peaks[1024], peaks[100 * MiB]
        growth = [b - s for s, b in zip(small, big)]
        print(f"\n  {type(self).__name__}: sqlite3 CLI peak RSS (VmHWM) moving 1 KiB: up {small[0]:.1f} MiB, "
              f"down {small[1]:.1f} MiB; moving 100 MiB: up {big[0]:.1f} MiB, down {big[1]:.1f} MiB; "
              f"growth {growth[0]:+.1f} / {growth[1]:+.1f} MiB", flush=True)
        for g in growth:
            self.assertLess(g, 32, "memory must stay flat as files grow")

    def cli(self, db, sql):
        """Runs sql in a sqlite3 CLI process; returns its output and its own peak RSS in MiB."""
        script = f".open {db}\n.load {LIB}\n{textwrap.dedent(sql)}\n.shell grep VmHWM /proc/$PPID/status\n"
        out = subprocess.run(["sqlite3", "-batch"], input=script.encode(), capture_output=True,
                             cwd=self.dir, check=True).stdout.decode()
        # `.shell` runs sh as a child of the CLI: $PPID is the sqlite3 process itself.
        body, status = out.split("VmHWM:", 1)
        hwm_kib = int(re.match(r"\s+(\d+) kB", status).group(1))
        return body, hwm_kib / 1024


def read_or_none(path):
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return f.read()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    return h.hexdigest()


class HttpWebDav(RemoteContract, Case):
    env = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN}
    bad_credentials = {"ATTACHMENTS_HTTP_TOKEN": "wrong-token-value"}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-www-")
        cls.nginx = servers.Nginx(cls.root, token=servers.TOKEN)
        cls.storage_port = cls.nginx.port

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()

    def remote_config(self, port):
        return {"remote": f"http://127.0.0.1:{port or self.storage_port}/files/"}

    def stored(self, filename):
        path = os.path.join(self.root, "files", filename)
        return read_or_none(path)


class S3SigV4(RemoteContract, Case):
    env = {"AWS_ACCESS_KEY_ID": servers.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY}
    bad_credentials = {"AWS_SECRET_ACCESS_KEY": "wrong-secret-value"}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-s3-")
        cls.s3 = servers.S3(cls.root)
        cls.storage_port = cls.s3.port

    @classmethod
    def tearDownClass(cls):
        cls.s3.stop()

    def remote_config(self, port):
        return {"remote": f"s3://{servers.BUCKET}/app/files", "s3_endpoint": f"http://127.0.0.1:{port or self.storage_port}"}

    def stored(self, filename):
        path = os.path.join(self.root, servers.BUCKET, "app", "files", filename)
        return read_or_none(path)

    def test_a_local_file_corrupted_after_saving_is_refused_by_the_store(self):
        a = self.device("a")
        a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'bin'))", (b"original bytes",))
        with open(one(a, "SELECT attachment_local_uri(photo_id) FROM users"), "r+b") as f:
            f.write(b"CORRUPTED")  # same length, different bytes
        self.assertEqual(self.sync(a)["uploaded"], 0)
        state, attempts, error = self.row(a)
        self.assertEqual(state, "QUEUED_UPLOAD")
        # Refused on the device now (the bytes do not hash to what was saved); the store's
        # own SHA-256 check (HTTP 400) stays the second line of defence.
        self.assertRegex(error, "^integrity|HTTP 400")
        # (s3s-fs keeps the rejected object on disk; AWS S3 does not. Either way the row
        # is not SYNCED, so no device is told the bad bytes are the file.)

    def test_a_failed_multipart_upload_resends_only_the_missing_parts(self):
        proxy = servers.FaultProxy(self.storage_port, "fail_put", fail_put_number=2)
        try:
            a = self.device("a", port=proxy.port)
            data = os.urandom(40 * MiB)  # three 16 MiB parts
            a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'bin'))", (data,))
            first = self.sync(a)
            self.assertEqual(first["uploaded"], 0)
            self.assertIsNotNone(one(a, "SELECT upload_resume FROM attachments"), "the upload id is kept")
            a.execute("UPDATE attachments SET next_attempt_at = 0")  # skip the backoff
            second = self.sync(a)
            self.assertEqual(second["uploaded"], 1, self.row(a))
        finally:
            proxy.stop()
        puts = [r for r in proxy.requests() if r.startswith("PUT")]
        self.assertEqual(len(puts), 4, f"part 1 once, part 2 twice, part 3 once: {puts}")
        self.assertEqual(self.stored(one(a, "SELECT filename FROM attachments")), data)
        self.assertIsNone(one(a, "SELECT upload_resume FROM attachments"))


class SignedUrls(RemoteContract, Case):
    env = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN}
    bad_credentials = {"ATTACHMENTS_HTTP_TOKEN": "wrong-token-value"}
    backends = {}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-signed-")
        cls.s3 = servers.S3(cls.root)
        cls.storage_port = cls.s3.port

    @classmethod
    def tearDownClass(cls):
        for b in cls.backends.values():
            b.stop()
        cls.backends.clear()
        cls.s3.stop()

    def remote_config(self, port):
        port = port or self.storage_port
        if port not in self.backends:
            self.backends[port] = servers.SigningBackend(f"http://127.0.0.1:{port}")
        return {"remote": f"signed+{self.backends[port].url}"}

    def stored(self, filename):
        path = os.path.join(self.root, servers.BUCKET, filename)
        return read_or_none(path)


if __name__ == "__main__":
    unittest.main()
