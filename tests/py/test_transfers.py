"""Transfers users can steer: resumable downloads on every remote (real nginx WebDAV,
s3s-fs, the signing backend; the fault proxy only cuts answers and counts the bytes it
forwards), the bandwidth cap, pause and resume across processes, and the adaptive
number of transfers in flight."""
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import servers
from helpers import Case, LIB, connect, one

KiB = 1024
MiB = 1024 * KiB
# A download writes its validator (`.partial-meta`) once its partial file holds this much, or
# when it is cut short (src/store.rs PARTIAL_META_THRESHOLD): a crash below it starts over.
VALIDATOR_AFTER = 1 * MiB


def wait_until(predicate, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def size_or_none(path):
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return None


class WithEnv:
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


class ResumeContract(WithEnv):
    """Mixed into one TestCase per network remote. Subclasses start the servers, say how
    a device reaches storage through a port, and how to store an object there."""

    def downloader(self, name, port, **config):
        conn = self.device(name, **{**self.remote_config(port), **config})
        conn.execute("CREATE TABLE refs(id TEXT)")
        conn.execute("SELECT attachment_watch('refs', 'SELECT id, ''bin'' AS file_extension FROM refs')")
        return conn

    def partial(self, name, id):
        return os.path.join(self.dir, f"files-{name}", f".{id}.bin.partial")

    def local(self, name, id):
        with open(os.path.join(self.dir, f"files-{name}", f"{id}.bin"), "rb") as f:
            return f.read()

    def cut_first_get(self, cut_bytes):
        proxy = servers.FaultProxy(self.storage_port, "cut", cut_bytes=cut_bytes)
        self.addCleanup(proxy.stop)
        return proxy

    def test_an_interrupted_download_fetches_only_the_rest(self):
        data = os.urandom(1 * MiB)
        proxy = self.cut_first_get(300_000)
        b = self.downloader("b", proxy.port)
        self.put_object(proxy.port, "r1", data)
        b.execute("INSERT INTO refs VALUES ('r1')")
        first = self.sync(b)
        self.assertEqual(first["downloaded"], 0)
        self.assertEqual(size_or_none(self.partial("b", "r1")), 300_000, "the cut download keeps its bytes")
        self.assertEqual(one(b, "SELECT state_name FROM attachment_queue"), "QUEUED_DOWNLOAD")
        b.execute("SELECT attachment_retry(NULL)")  # skip the backoff
        second = self.sync(b)
        self.assertEqual(second["downloaded"], 1, b.execute("SELECT last_error FROM attachment_queue").fetchall())
        self.assertEqual(self.local("b", "r1"), data)
        self.assertIsNone(size_or_none(self.partial("b", "r1")))
        self.assertEqual(one(b, "SELECT size FROM attachments"), len(data))
        gets = [a for a in proxy.answers() if a[0] == "GET"]
        self.assertEqual(gets[0][3], "-", gets)
        # The second attempt asked for the rest only, and only the rest crossed the wire.
        self.assertEqual(gets[-1], ("GET", 206, len(data) - 300_000, "bytes=300000-"), gets)
        self.assertEqual(len(gets), 2, gets)

    def test_an_object_replaced_between_attempts_is_fetched_again_whole(self):
        old, new = os.urandom(1 * MiB), os.urandom(1 * MiB)  # same length: a mix would not show in it
        proxy = self.cut_first_get(400_000)
        b = self.downloader("b", proxy.port)
        self.put_object(proxy.port, "r2", old)
        b.execute("INSERT INTO refs VALUES ('r2')")
        self.assertEqual(self.sync(b)["downloaded"], 0)
        self.assertEqual(size_or_none(self.partial("b", "r2")), 400_000)
        self.put_object(proxy.port, "r2", new)
        b.execute("SELECT attachment_retry(NULL)")
        self.assertEqual(self.sync(b)["downloaded"], 1, b.execute("SELECT last_error FROM attachment_queue").fetchall())
        self.assertEqual(self.local("b", "r2"), new, "the new object, never a mix of old and new")
        gets = [a for a in proxy.answers() if a[0] == "GET"]
        self.assertEqual(gets[-1][:3], ("GET", 200, len(new)), gets)
        self.assertTrue(any(g[3] == "bytes=400000-" for g in gets), f"the rest was asked for first: {gets}")


class HttpWebDav(ResumeContract, Case):
    env = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-www-")
        cls.nginx = servers.Nginx(cls.root, token=servers.TOKEN)
        cls.storage_port = cls.nginx.port

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()

    def remote_config(self, port):
        return {"remote": f"http://127.0.0.1:{port}/files/"}

    def put_object(self, port, id, data):
        req = urllib.request.Request(f"http://127.0.0.1:{self.storage_port}/files/{id}.bin", data=data, method="PUT",
                                     headers={"Authorization": f"Bearer {servers.TOKEN}"})
        urllib.request.urlopen(req).read()
        # nginx's ETag is the modification time (in seconds) and the length: make a
        # replacement within the same second tell.
        stamp = time.time() + len(data) % 1000 + hash(data[:16]) % 1000
        os.utime(os.path.join(self.root, "files", f"{id}.bin"), (stamp, stamp))

    def test_verify_removes_a_partial_download_once_its_row_is_gone(self):
        proxy = self.cut_first_get(100_000)
        b = self.downloader("b", proxy.port)
        self.put_object(proxy.port, "r3", os.urandom(300_000))
        b.execute("INSERT INTO refs VALUES ('r3')")
        self.sync(b)
        self.assertEqual(size_or_none(self.partial("b", "r3")), 100_000)
        # Still wanted: verify keeps it.
        one(b, "SELECT attachment_verify()")
        self.assertEqual(size_or_none(self.partial("b", "r3")), 100_000)
        b.execute("DELETE FROM refs")
        self.sync(b)  # archived: no download waits for the partial file any more
        b.execute("DELETE FROM attachments")
        report = json.loads(one(b, "SELECT attachment_verify()"))
        self.assertIsNone(size_or_none(self.partial("b", "r3")))
        self.assertIsNone(size_or_none(self.partial("b", "r3") + "-meta"))
        self.assertGreaterEqual(report["temp_removed"], 1, report)

    def test_a_crashed_download_resumes_in_the_next_process(self):
        data = os.urandom(4 * MiB)
        proxy = servers.FaultProxy(self.storage_port, "pass")
        self.addCleanup(proxy.stop)
        b = self.downloader("b", proxy.port, max_bytes_per_second=512 * KiB)
        self.put_object(proxy.port, "r4", data)
        b.execute("INSERT INTO refs VALUES ('r4')")
        child = subprocess.Popen([sys.executable, "-c", SYNC_IN_CHILD, os.path.join(self.dir, "b.db"), LIB])
        try:
            wait_until(lambda: (size_or_none(self.partial("b", "r4")) or 0) > VALIDATOR_AFTER + 100_000, what="a partial file")
        finally:
            child.kill()
            child.wait()
        held = size_or_none(self.partial("b", "r4"))
        self.assertLess(held, len(data))
        b.execute("UPDATE attachments SET claimed_by = NULL, claimed_until = NULL")  # the dead process's claim
        b.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files-b", **self.remote_config(proxy.port)}),))
        self.assertEqual(self.sync(b)["downloaded"], 1, b.execute("SELECT last_error FROM attachment_queue").fetchall())
        self.assertEqual(self.local("b", "r4"), data)
        last = [a for a in proxy.answers() if a[0] == "GET"][-1]
        self.assertEqual(last[:2], ("GET", 206))
        self.assertEqual(last[3], f"bytes={held}-")
        self.assertEqual(last[2], len(data) - held)


    def test_a_crashed_small_download_wrote_no_validator_and_starts_over(self):
        # Below VALIDATOR_AFTER a validator file costs more than fetching the file again.
        data = os.urandom(300_000)
        proxy = servers.FaultProxy(self.storage_port, "pass")
        self.addCleanup(proxy.stop)
        b = self.downloader("b", proxy.port, max_bytes_per_second=100 * KiB)
        self.put_object(proxy.port, "r5", data)
        b.execute("INSERT INTO refs VALUES ('r5')")
        partial = self.partial("b", "r5")
        child = subprocess.Popen([sys.executable, "-c", SYNC_IN_CHILD, os.path.join(self.dir, "b.db"), LIB])
        try:
            wait_until(lambda: (size_or_none(partial) or 0) > 100_000, what="a partial file")
            self.assertIsNone(size_or_none(partial + "-meta"), "no validator while a small download runs")
        finally:
            child.kill()
            child.wait()
        self.assertLess(size_or_none(partial), len(data))
        self.assertIsNone(size_or_none(partial + "-meta"))
        b.execute("UPDATE attachments SET claimed_by = NULL, claimed_until = NULL")  # the dead process's claim
        b.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files-b", **self.remote_config(proxy.port)}),))
        self.assertEqual(self.sync(b)["downloaded"], 1, b.execute("SELECT last_error FROM attachment_queue").fetchall())
        self.assertEqual(self.local("b", "r5"), data)
        self.assertIsNone(size_or_none(partial))
        last = [a for a in proxy.answers() if a[0] == "GET"][-1]
        self.assertEqual(last, ("GET", 200, len(data), "-"), "fetched again from zero")

# One blocking sync in a process of its own (killed by the test).
SYNC_IN_CHILD = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.enable_load_extension(True)
conn.load_extension(sys.argv[2])
conn.execute("SELECT attachment_sync()")
"""


class S3SigV4(ResumeContract, Case):
    env = {"AWS_ACCESS_KEY_ID": servers.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-s3-")
        cls.s3 = servers.S3(cls.root)
        cls.storage_port = cls.s3.port
        # Only to store test objects (presigned PUTs), never used by the device.
        cls.putter = servers.SigningBackend(f"http://127.0.0.1:{cls.s3.port}")

    @classmethod
    def tearDownClass(cls):
        cls.putter.stop()
        cls.s3.stop()

    def remote_config(self, port):
        return {"remote": f"s3://{servers.BUCKET}/app/files", "s3_endpoint": f"http://127.0.0.1:{port}"}

    def put_object(self, port, id, data):
        presigned_put(self.putter, id, f"app/files/{id}.bin", data)


def presigned_put(backend, id, key, data):
    req = urllib.request.Request(f"{backend.url}/upload-url", method="POST",
                                 data=json.dumps({"id": id, "filename": key, "contentType": "application/octet-stream"}).encode(),
                                 headers={"Authorization": f"Bearer {servers.TOKEN}", "Content-Type": "application/json"})
    url = json.loads(urllib.request.urlopen(req).read())["uploadUrl"]
    urllib.request.urlopen(urllib.request.Request(url, data=data, method="PUT")).read()


class SignedUrls(ResumeContract, Case):
    env = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN}
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

    def backend(self, port):
        if port not in self.backends:
            self.backends[port] = servers.SigningBackend(f"http://127.0.0.1:{port}")
        return self.backends[port]

    def remote_config(self, port):
        return {"remote": f"signed+{self.backend(port).url}"}

    def put_object(self, port, id, data):
        # Through the device's own backend, so it knows the id's file name.
        presigned_put(self.backend(port), id, f"{id}.bin", data)


class DirRemoteResume(Case):
    """file://: the remote file's inode, size and modification time stand in for an ETag."""

    def downloader(self, **config):
        b = self.device("b", **config)
        b.execute("CREATE TABLE refs(id TEXT)")
        b.execute("SELECT attachment_watch('refs', 'SELECT id, ''bin'' AS file_extension FROM refs')")
        return b

    def killed_half_way(self, data):
        os.makedirs(self.remote, exist_ok=True)
        with open(os.path.join(self.remote, "d1.bin"), "wb") as f:
            f.write(data)
        b = self.downloader(max_bytes_per_second=512 * KiB)
        b.execute("INSERT INTO refs VALUES ('d1')")
        partial = os.path.join(self.dir, "files-b", ".d1.bin.partial")
        child = subprocess.Popen([sys.executable, "-c", SYNC_IN_CHILD, os.path.join(self.dir, "b.db"), LIB])
        try:
            wait_until(lambda: (size_or_none(partial) or 0) > VALIDATOR_AFTER + 100_000, what="a partial file")
        finally:
            child.kill()
            child.wait()
        b.execute("UPDATE attachments SET claimed_by = NULL, claimed_until = NULL")  # the dead process's claim
        return b, size_or_none(partial)

    def test_a_killed_download_goes_on_from_its_partial_file(self):
        data = os.urandom(2 * MiB)
        b, held = self.killed_half_way(data)
        one(b, "SELECT attachment_start_sync()")
        self.started.append(b)
        # The first progress the resumed transfer shows already counts the bytes it held.
        first = []
        wait_until(lambda: first.append(one(b, "SELECT bytes_done FROM attachment_queue")) or (first[-1] or 0) > 0
                   or one(b, "SELECT state_name FROM attachment_queue") == "SYNCED", what="progress")
        self.assertGreaterEqual(next(n for n in first if n), held)
        wait_until(lambda: one(b, "SELECT state_name FROM attachment_queue") == "SYNCED", what="the download")
        with open(os.path.join(self.dir, "files-b", "d1.bin"), "rb") as f:
            self.assertEqual(f.read(), data)

    def test_a_file_replaced_meanwhile_is_read_again_whole(self):
        old, new = os.urandom(2 * MiB), os.urandom(2 * MiB)
        b, held = self.killed_half_way(old)
        tmp = os.path.join(self.remote, ".new")
        with open(tmp, "wb") as f:
            f.write(new)
        os.rename(tmp, os.path.join(self.remote, "d1.bin"))
        b.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files-b", "remote": f"file://{self.remote}"}),))
        self.assertEqual(self.sync(b)["downloaded"], 1)
        with open(os.path.join(self.dir, "files-b", "d1.bin"), "rb") as f:
            self.assertEqual(f.read(), new)


class Bandwidth(Case):
    def test_a_cap_paces_a_transfer(self):
        a = self.device("a", max_bytes_per_second=256 * KiB)
        a.execute("SELECT attachment_save(randomblob(?), 'bin')", (2 * MiB,))
        started = time.monotonic()
        self.assertEqual(self.sync(a)["uploaded"], 1)
        took = time.monotonic() - started
        # 2 MiB at 256 KiB/s is 8 s, less a quarter second of burst (the upper bound leaves
        # room for a slow machine's first pass; an uncapped upload takes well under 1 s).
        self.assertGreaterEqual(took, 7.0)
        self.assertLessEqual(took, 14.0)

    def test_a_cap_is_checked(self):
        a = self.device("a")
        for bad in (0, 100, -5, "fast", 1.5):
            with self.assertRaisesRegex(Exception, "max_bytes_per_second"):
                a.execute("SELECT attachment_init(?)", (json.dumps(
                    {"local_dir": "files-a", "remote": f"file://{self.remote}", "max_bytes_per_second": bad}),))
        cfg = json.loads(one(a, "SELECT attachment_init(?)", json.dumps(
            {"local_dir": "files-a", "remote": f"file://{self.remote}", "max_bytes_per_second": 65536})))
        self.assertEqual(cfg["max_bytes_per_second"], 65536)
        self.assertEqual(cfg["max_concurrency"], 32, "the default upper bound")

    def test_a_new_cap_reaches_transfers_in_flight(self):
        cfg = {"local_dir": "files-a", "remote": f"file://{self.remote}", "max_bytes_per_second": 32 * KiB}
        a = self.device("a", **{k: v for k, v in cfg.items() if k not in ("local_dir", "remote")})
        a.execute("SELECT attachment_save(randomblob(?), 'bin')", (2 * MiB,))  # a minute at this cap
        one(a, "SELECT attachment_start_sync()")
        self.started.append(a)
        wait_until(lambda: (one(a, "SELECT bytes_done FROM attachment_queue") or 0) > 0, what="the upload to start")
        del cfg["max_bytes_per_second"]
        lifted = time.monotonic()
        a.execute("SELECT attachment_init(?)", (json.dumps(cfg),))
        wait_until(lambda: one(a, "SELECT state_name FROM attachment_queue") == "SYNCED", timeout=10, what="the upload, uncapped")
        self.assertLess(time.monotonic() - lifted, 5)


class BandwidthOverHttp(WithEnv, Case):
    # A minimum rate of 2 MB/s judged over 1 s: a capped transfer at 512 KiB/s would be
    # cut if the time it waits for the cap counted against the server.
    env = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN,
           "SQLITE_ATTACHMENTS_TEST_TIMEOUTS": "min_rate=2000000,min_rate_window=1"}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-www-")
        cls.nginx = servers.Nginx(cls.root, token=servers.TOKEN)

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()

    def test_waiting_for_the_cap_is_not_a_stall(self):
        remote = f"http://127.0.0.1:{self.nginx.port}/cap/"
        a = self.device("a", remote=remote, max_bytes_per_second=512 * KiB)
        a.execute("CREATE TABLE refs(id TEXT)")
        a.execute("INSERT INTO refs VALUES (attachment_save(randomblob(?), 'bin'))", (1 * MiB,))
        self.assertEqual(self.sync(a)["uploaded"], 1, a.execute("SELECT last_error FROM attachment_queue").fetchall())
        b = self.device("b", remote=remote, max_bytes_per_second=512 * KiB)
        b.execute("CREATE TABLE refs(id TEXT)")
        b.execute("INSERT INTO refs SELECT ? ", (one(a, "SELECT id FROM refs"),))
        b.execute("SELECT attachment_watch('refs', 'SELECT id, ''bin'' AS file_extension FROM refs')")
        self.assertEqual(self.sync(b)["downloaded"], 1, b.execute("SELECT last_error FROM attachment_queue").fetchall())


# A worker in a process of its own, until its stdin closes.
WORKER_IN_CHILD = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.enable_load_extension(True)
conn.load_extension(sys.argv[2])
conn.execute("SELECT attachment_start_sync()")
sys.stdin.read()
conn.execute("SELECT attachment_stop_sync()")
"""


class PauseAndResume(WithEnv, Case):
    env = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-www-")
        cls.nginx = servers.Nginx(cls.root, token=servers.TOKEN)

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()

    def test_a_pause_in_one_process_stops_another_processs_download_and_resume_finishes_it(self):
        proxy = servers.FaultProxy(self.nginx.port, "pass")
        self.addCleanup(proxy.stop)
        data = os.urandom(2 * MiB)
        req = urllib.request.Request(f"http://127.0.0.1:{self.nginx.port}/p/p1.bin", data=data, method="PUT",
                                     headers={"Authorization": f"Bearer {servers.TOKEN}"})
        urllib.request.urlopen(req).read()
        b = self.device("b", remote=f"http://127.0.0.1:{proxy.port}/p/", max_bytes_per_second=512 * KiB)
        b.execute("CREATE TABLE refs(id TEXT)")
        b.execute("SELECT attachment_watch('refs', 'SELECT id, ''bin'' AS file_extension FROM refs')")
        b.execute("INSERT INTO refs VALUES ('p1')")
        partial = os.path.join(self.dir, "files-b", ".p1.bin.partial")
        worker = subprocess.Popen([sys.executable, "-c", WORKER_IN_CHILD, os.path.join(self.dir, "b.db"), LIB],
                                  stdin=subprocess.PIPE)
        try:
            wait_until(lambda: (size_or_none(partial) or 0) > 300_000, what="the download to move")
            self.assertEqual(one(b, "SELECT attachment_pause()"), 1)
            # The other process sees the flag at its next claim renewal (about a second),
            # stops the transfer and releases the row; waited for, not slept on.
            wait_until(lambda: one(b, "SELECT claimed_by IS NULL FROM attachments") == 1, timeout=10,
                       what="the other process to release the paused download")
            held = size_or_none(partial)
            time.sleep(1.0)
            self.assertEqual(size_or_none(partial), held, "bytes stopped moving")
            self.assertLess(held, len(data))
            row = b.execute("SELECT q.state_name, q.attempts, a.claimed_by FROM attachment_queue q JOIN attachments a USING (id)").fetchone()
            self.assertEqual(row, ("QUEUED_DOWNLOAD", 0, None), "released, no attempt counted")
            # This process's sync reconciles, moves nothing, and says why.
            summary = self.sync(b)
            self.assertEqual((summary.get("paused"), summary["downloaded"]), (True, 0), summary)
            self.assertEqual(size_or_none(partial), held)
            self.assertEqual(one(b, "SELECT attachment_resume()"), 1)
            wait_until(lambda: one(b, "SELECT state_name FROM attachment_queue") == "SYNCED", timeout=20,
                       what="the download to finish after resume")
        finally:
            worker.stdin.close()
            worker.wait(10)
        with open(os.path.join(self.dir, "files-b", "p1.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        gets = [a for a in proxy.answers() if a[0] == "GET"]
        self.assertEqual(gets[-1][:2], ("GET", 206), gets)
        resumed_at = int(gets[-1][3].split("=")[1].rstrip("-"))
        self.assertGreaterEqual(resumed_at, held)
        self.assertEqual(gets[-1][2], len(data) - resumed_at, "only the rest was fetched")


class PauseS3Multipart(WithEnv, Case):
    env = {"AWS_ACCESS_KEY_ID": servers.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-s3-")
        cls.s3 = servers.S3(cls.root)

    @classmethod
    def tearDownClass(cls):
        cls.s3.stop()

    def test_a_paused_multipart_upload_keeps_its_parts(self):
        proxy = servers.FaultProxy(self.s3.port, "pass")
        self.addCleanup(proxy.stop)
        a = self.device("a", remote=f"s3://{servers.BUCKET}/mp", s3_endpoint=f"http://127.0.0.1:{proxy.port}",
                        max_bytes_per_second=8 * MiB)
        data = os.urandom(20 * MiB)  # parts of 16 and 4 MiB, sent side by side
        a.execute("SELECT attachment_save(?, 'bin')", (data,))
        one(a, "SELECT attachment_start_sync()")
        self.started.append(a)
        # The 4 MiB part is stored after about 8 MiB have moved; the 16 MiB one is still going.
        wait_until(lambda: any(m == "PUT" and st == 200 for m, st, _, _ in proxy.answers()), what="a stored part")
        one(a, "SELECT attachment_pause()")
        wait_until(lambda: one(a, "SELECT claimed_by IS NULL FROM attachments"), timeout=5, what="the upload to stop")
        resume = json.loads(one(a, "SELECT upload_resume FROM attachments"))
        self.assertEqual([n for n, _ in resume["etags"]], [2], "the stored part is kept with its upload id")
        self.assertEqual(one(a, "SELECT state_name || ' ' || attempts FROM attachment_queue"), "QUEUED_UPLOAD 0")
        one(a, "SELECT attachment_resume()")
        wait_until(lambda: one(a, "SELECT state_name FROM attachment_queue") == "SYNCED", timeout=30, what="the upload")
        parts = [r for r in proxy.requests() if r.startswith("PUT")]
        self.assertEqual(len(parts), 3, f"part 1 twice, part 2 once: {parts}")
        with open(os.path.join(self.root, servers.BUCKET, "mp", one(a, "SELECT filename FROM attachments")), "rb") as f:
            self.assertEqual(f.read(), data)


class AdaptiveConcurrency(WithEnv, Case):
    env = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-www-")
        cls.nginx = servers.Nginx(cls.root, token=servers.TOKEN)

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()

    def uploads(self, proxy, n):
        a = self.device("a", remote=f"http://127.0.0.1:{proxy.port}/adapt/")
        a.execute("BEGIN")
        for _ in range(n):
            a.execute("SELECT attachment_save(randomblob(2000), 'bin')")
        a.execute("COMMIT")
        return a

    def test_latency_raises_the_number_in_flight(self):
        proxy = servers.FaultProxy(self.nginx.port, "slow", delay=0.05)
        self.addCleanup(proxy.stop)
        a = self.uploads(proxy, 200)
        self.assertEqual(self.sync(a)["uploaded"], 200)
        level = one(a, "SELECT concurrency FROM _attachments_config")
        self.assertGreater(level, 4, "it starts at 4 and climbs while more in flight means more done")
        self.assertLessEqual(level, 32)
        import re
        peak = max(int(re.search(r"inflight=(\d+)", r).group(1)) for r in proxy.requests())
        self.assertGreater(peak, 4)

    def test_errors_lower_the_number_in_flight(self):
        proxy = servers.FaultProxy(self.nginx.port, "status", status=503, methods="PUT")
        self.addCleanup(proxy.stop)
        a = self.uploads(proxy, 30)
        self.assertEqual(self.sync(a)["uploaded"], 0)
        self.assertLess(one(a, "SELECT concurrency FROM _attachments_config"), 4)


if __name__ == "__main__":
    unittest.main()
