"""End-to-end encryption: files leave the device sealed and come back opened, on
every remote (file://, nginx WebDAV, s3s-fs, the signing backend). The remote holds
only ciphertext; an altered, cut or foreign object never becomes a SYNCED file; keys
come from the environment, rotate, and never reach the database."""
import hashlib
import json
import os
import tempfile
import unittest

import servers
from helpers import Case, files_in, one

KiB, MiB = 1024, 1024 * 1024
MAGIC = b"SQLATTE\x01"
HEADER = 8 + 8 + 19
CHUNK, TAG = 64 * KiB, 16


def sealed_len(n):
    return HEADER + n + TAG * max(1, -(-n // CHUNK))


def key_id(key_text):
    """The id an object's header names for a key (what a device looks keys up by)."""
    import base64
    return hashlib.sha256(b"sqlite-attachments key id v1\0" + base64.b64decode(key_text)).digest()[:8]


def read_or_none(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


class Keys:
    """Fresh keys in variables named for this test; removed afterwards."""

    def set_keys(self, **named):
        for name, value in named.items():
            self._env_saved.setdefault(name, os.environ.get(name))
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def new_key(self):
        return one(self.keygen, "SELECT attachment_generate_key()")


class EncryptedRemote(Keys):
    """Mixed into one TestCase per remote; subclasses give `remote_config` and `stored_path`."""

    env = {}

    def setUp(self):
        super().setUp()
        self._env_saved = {}
        self.set_keys(**self.env)
        self.keygen = self.plain_device("keygen")
        self.key = self.new_key()
        self.set_keys(ATT_TEST_KEY=self.key)

    def tearDown(self):
        for k, v in self._env_saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        super().tearDown()

    def plain_device(self, name, port=None, **config):
        conn = Case.device(self, name, **{**self.remote_config(port), **config})
        conn.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT)")
        conn.execute("SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''bin'' AS file_extension FROM users')")
        return conn

    def device(self, name, port=None, key_env="ATT_TEST_KEY", **encryption):
        return self.plain_device(name, port, encryption={"key_env": key_env, **encryption})

    def row(self, conn):
        return conn.execute("SELECT state_name, error_class, last_error FROM attachment_queue").fetchone()

    def save(self, conn, data, user=1):
        conn.execute("INSERT INTO users VALUES (?, attachment_save(?, 'bin'))", (user, data))
        return one(conn, "SELECT photo_id FROM users WHERE id = ?", user)

    def stored(self, photo):
        return read_or_none(self.stored_path(photo + ".bin"))

    def test_two_devices_sharing_the_key_round_trip_and_the_remote_holds_only_ciphertext(self):
        a, b = self.device("a"), self.device("b")
        sizes = [200_000, 0, CHUNK, 3]
        datas = [os.urandom(n) for n in sizes]
        photos = [self.save(a, d, user=i) for i, d in enumerate(datas)]
        self.assertEqual(self.sync(a)["uploaded"], len(sizes), self.row(a))
        for photo, data in zip(photos, datas):
            obj = self.stored(photo)
            self.assertEqual(len(obj), sealed_len(len(data)), "Content-Length is the ciphertext's")
            self.assertEqual(obj[:8], MAGIC)
            self.assertEqual(obj[8:16], key_id(self.key), "the header names the key's id")
            self.assertNotIn(self.key.encode(), obj)
            if data:
                self.assertNotIn(data[:32], obj, "no plaintext on the remote")
        # The queue's SHA-256 stays the plaintext's.
        self.assertEqual(one(a, "SELECT sha256 FROM attachments WHERE id = ?", photos[0]), hashlib.sha256(datas[0]).hexdigest())
        for i, photo in enumerate(photos):
            b.execute("INSERT INTO users VALUES (?, ?)", (i, photo))
        self.assertEqual(self.sync(b)["downloaded"], len(sizes), self.row(b))
        for photo, data in zip(photos, datas):
            self.assertEqual(one(b, "SELECT attachment_data(?)", photo), data)
            self.assertEqual(one(b, "SELECT sha256 FROM attachments WHERE id = ?", photo), hashlib.sha256(data).hexdigest())
            with open(one(b, "SELECT attachment_local_uri(?)", photo), "rb") as f:
                self.assertEqual(f.read(), data, "local_dir holds plaintext")

    def test_a_flipped_byte_in_the_remote_object_is_an_integrity_error_never_synced(self):
        a, b = self.device("a"), self.device("b")
        photo = self.save(a, os.urandom(150_000))
        self.sync(a)
        path = self.stored_path(photo + ".bin")
        with open(path, "r+b") as f:
            f.seek(HEADER + CHUNK + 100)
            byte = f.read(1)
            f.seek(HEADER + CHUNK + 100)
            f.write(bytes([byte[0] ^ 1]))
        b.execute("INSERT INTO users VALUES (1, ?)", (photo,))
        summary = self.sync(b)
        state, error_class, error = self.row(b)
        self.assertEqual((summary["downloaded"], state, error_class), (0, "QUEUED_DOWNLOAD", "integrity"), error)
        self.assertIn("does not decrypt", error)
        self.assertIsNone(one(b, "SELECT attachment_local_uri(?)", photo))
        self.assertEqual(files_in(os.path.join(self.dir, "files-b")), [], "nothing published, no temp file left")


class Dir(EncryptedRemote, Case):
    def remote_config(self, port):
        return {"remote": f"file://{self.remote}"}

    def stored_path(self, filename):
        return os.path.join(self.remote, filename)

    def cut(self, photo, length):
        path = self.stored_path(photo + ".bin")
        with open(path, "r+b") as f:
            f.truncate(length)

    def test_an_object_cut_at_a_chunk_boundary_or_inside_one_is_refused(self):
        a = self.device("a")
        photos = [self.save(a, os.urandom(3 * CHUNK + 10), user=i) for i in range(3)]
        self.sync(a)
        self.cut(photos[0], HEADER + 2 * (CHUNK + TAG))  # whole chunks only: the last one is missing
        self.cut(photos[1], sealed_len(3 * CHUNK + 10) - 1)
        self.cut(photos[2], HEADER - 3)
        b = self.device("b")
        for i, p in enumerate(photos):
            b.execute("INSERT INTO users VALUES (?, ?)", (i, p))
        self.assertEqual(self.sync(b)["downloaded"], 0)
        classes = [r[0] for r in b.execute("SELECT error_class FROM attachment_queue")]
        self.assertEqual(classes, ["integrity"] * 3)
        self.assertEqual(one(b, "SELECT count(*) FROM attachments WHERE state = 3"), 0)

    def test_a_device_without_the_key_cannot_upload_or_download(self):
        a = self.device("a")
        photo = self.save(a, b"secret contents")
        self.sync(a)
        # The variable is not set in this process: config error, long backoff, nothing sent.
        nokey = self.device("nokey", key_env="ATT_TEST_UNSET_KEY")
        self.set_keys(ATT_TEST_UNSET_KEY=None)
        nokey.execute("INSERT INTO users VALUES (1, ?)", (photo,))
        nokey.execute("INSERT INTO users VALUES (2, attachment_save(x'0102', 'bin'))")
        summary = self.sync(nokey)
        self.assertEqual((summary["downloaded"], summary["uploaded"]), (0, 0))
        rows = nokey.execute("SELECT state_name, error_class, last_error FROM attachment_queue ORDER BY state").fetchall()
        self.assertEqual([(r[0], r[1]) for r in rows], [("QUEUED_UPLOAD", "config"), ("QUEUED_DOWNLOAD", "config")])
        for r in rows:
            self.assertIn("ATT_TEST_UNSET_KEY", r[2])
        due_in = one(nokey, "SELECT min(next_attempt_at) - CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) FROM attachments")
        self.assertGreater(due_in, 10 * 60 * 1000, "a missing key waits the long backoff")
        self.assertEqual(sorted(os.listdir(self.remote)), [photo + ".bin"])
        # Another key: the object names a key id this device does not hold.
        self.set_keys(ATT_TEST_OTHER=self.new_key())
        other = self.device("other", key_env="ATT_TEST_OTHER")
        other.execute("INSERT INTO users VALUES (1, ?)", (photo,))
        self.sync(other)
        state, error_class, error = self.row(other)
        self.assertEqual((state, error_class), ("QUEUED_DOWNLOAD", "config"), error)
        self.assertIn(key_id(self.key).hex(), error)
        self.assertNotIn(self.key, error)
        self.assertNotIn(os.environ["ATT_TEST_OTHER"], error)
        self.assertEqual(files_in(os.path.join(self.dir, "files-other")), [])

    def test_rotation_old_objects_still_download_and_new_uploads_use_the_new_key(self):
        a = self.device("a")
        old_photo = self.save(a, b"sealed with the old key")
        self.sync(a)
        new_key = self.new_key()
        self.set_keys(ATT_TEST_KEY2=new_key)
        a.execute("SELECT attachment_init(?)", (json.dumps({
            "local_dir": "files-a", "remote": f"file://{self.remote}",
            "encryption": {"key_env": "ATT_TEST_KEY2", "old_key_envs": ["ATT_TEST_KEY"]}}),))
        new_photo = self.save(a, b"sealed with the new key", user=2)
        self.assertEqual(self.sync(a)["uploaded"], 1, self.row(a))
        self.assertEqual(self.stored(old_photo)[8:16], key_id(self.key))
        self.assertEqual(self.stored(new_photo)[8:16], key_id(new_key))
        # A device on the new key that keeps the old one for reading gets both.
        c = self.device("c", key_env="ATT_TEST_KEY2", old_key_envs=["ATT_TEST_KEY"])
        c.execute("INSERT INTO users VALUES (1, ?), (2, ?)", (old_photo, new_photo))
        self.assertEqual(self.sync(c)["downloaded"], 2, self.row(c))
        self.assertEqual(one(c, "SELECT attachment_data(?)", old_photo), b"sealed with the old key")
        self.assertEqual(one(c, "SELECT attachment_data(?)", new_photo), b"sealed with the new key")
        # One with the new key only reads only the new object.
        d = self.device("d", key_env="ATT_TEST_KEY2")
        d.execute("INSERT INTO users VALUES (1, ?), (2, ?)", (old_photo, new_photo))
        self.assertEqual(self.sync(d)["downloaded"], 1)
        self.assertEqual(one(d, "SELECT error_class FROM attachment_queue WHERE id = ?", old_photo), "config")

    def test_objects_without_the_header_are_read_only_with_accept_plaintext(self):
        plain = self.plain_device("plain")
        photo = self.save(plain, b"uploaded before encryption was turned on")
        self.sync(plain)
        self.assertEqual(self.stored(photo), b"uploaded before encryption was turned on")
        strict = self.device("strict")
        strict.execute("INSERT INTO users VALUES (1, ?)", (photo,))
        self.assertEqual(self.sync(strict)["downloaded"], 0)
        state, error_class, error = self.row(strict)
        self.assertEqual((state, error_class), ("QUEUED_DOWNLOAD", "integrity"), error)
        self.assertIn("accept_plaintext", error)
        lenient = self.device("lenient", accept_plaintext=True)
        lenient.execute("INSERT INTO users VALUES (1, ?)", (photo,))
        self.assertEqual(self.sync(lenient)["downloaded"], 1, self.row(lenient))
        self.assertEqual(one(lenient, "SELECT attachment_data(?)", photo), b"uploaded before encryption was turned on")
        # Its own uploads are still sealed.
        mine = self.save(lenient, b"new", user=2)
        self.sync(lenient)
        self.assertEqual(self.stored(mine)[:8], MAGIC)

    def test_accept_plaintext_never_publishes_a_damaged_or_cut_encrypted_object(self):
        a = self.device("a")
        datas = [os.urandom(100_000 + i) for i in range(5)]
        photos = [self.save(a, d, user=i) for i, d in enumerate(datas)]
        self.assertEqual(self.sync(a)["uploaded"], 5, self.row(a))
        sealed = self.stored(photos[0])

        def put(photo, data):
            with open(self.stored_path(photo + ".bin"), "wb") as f:
                f.write(data)

        flipped = bytearray(self.stored(photos[0]))
        flipped[0] ^= 1  # the magic damaged: not plaintext
        put(photos[0], bytes(flipped))
        version = bytearray(self.stored(photos[1]))
        version[7] ^= 2  # another format version byte
        put(photos[1], bytes(version))
        put(photos[2], self.stored(photos[2])[:7])  # cut inside the magic
        put(photos[3], b"")  # emptied
        keyid = bytearray(self.stored(photos[4]))
        keyid[10] ^= 1  # the key id damaged: reads as a key nobody here holds
        put(photos[4], bytes(keyid))
        lenient = self.device("lenient", accept_plaintext=True)
        for i, p in enumerate(photos):
            lenient.execute("INSERT INTO users VALUES (?, ?)", (i, p))
        self.assertEqual(self.sync(lenient)["downloaded"], 0)
        rows = {r[0]: r[1:] for r in lenient.execute("SELECT id, state_name, error_class, last_error FROM attachment_queue")}
        for p in photos[:4]:
            self.assertEqual(rows[p][:2], ("QUEUED_DOWNLOAD", "integrity"), rows[p])
        self.assertEqual(rows[photos[4]][:2], ("QUEUED_DOWNLOAD", "config"), rows[photos[4]])
        self.assertIn("damaged", rows[photos[4]][2])
        self.assertEqual(files_in(os.path.join(self.dir, "files-lenient")), [], "nothing published")
        # attachment_fetch says the same, at once.
        with self.assertRaises(Exception) as raised:
            lenient.execute("SELECT attachment_fetch(?, 5000)", (photos[0],)).fetchone()
        self.assertIn("encryption header is damaged", str(raised.exception))
        # Restored, the same object opens: only its header decided.
        put(photos[0], sealed)
        self.assertIsNotNone(one(lenient, "SELECT attachment_fetch(?, 5000)", photos[0]))
        self.assertEqual(one(lenient, "SELECT attachment_data(?)", photos[0]), datas[0])

    def test_an_empty_object_is_an_empty_plaintext_file_only_when_the_row_says_so(self):
        plain = self.plain_device("plain")
        empty = self.save(plain, b"")
        self.sync(plain)
        self.assertEqual(self.stored(empty), b"")
        lenient = self.device("lenient", accept_plaintext=True)
        lenient.execute("INSERT INTO users VALUES (1, ?)", (empty,))
        self.assertEqual(self.sync(lenient)["downloaded"], 0)
        state, error_class, error = self.row(lenient)
        self.assertEqual((state, error_class), ("QUEUED_DOWNLOAD", "integrity"), error)
        self.assertIn("empty", error)
        # The device that saved it knows its SHA-256: it reads the empty object back.
        plain.execute("SELECT attachment_init(?)", (json.dumps({
            "local_dir": "files-plain", **self.remote_config(None),
            "encryption": {"key_env": "ATT_TEST_KEY", "accept_plaintext": True}}),))
        os.remove(one(plain, "SELECT attachment_local_uri(?)", empty))
        self.assertIsNotNone(one(plain, "SELECT attachment_fetch(?, 5000)", empty))
        self.assertEqual(one(plain, "SELECT attachment_data(?)", empty), b"")

    def test_a_plaintext_object_must_hash_to_the_sha256_the_row_knows(self):
        a = self.device("a", accept_plaintext=True)
        photo = self.save(a, b"the real contents")
        self.assertEqual(self.sync(a)["uploaded"], 1, self.row(a))
        with open(self.stored_path(photo + ".bin"), "wb") as f:
            f.write(b"written in its place")
        os.remove(one(a, "SELECT attachment_local_uri(?)", photo))
        with self.assertRaises(Exception) as raised:
            a.execute("SELECT attachment_fetch(?, 5000)", (photo,)).fetchone()
        self.assertIn("checksum mismatch", str(raised.exception))
        self.assertEqual(files_in(os.path.join(self.dir, "files-a")), [], "nothing published")

    def test_the_key_never_reaches_the_config_or_the_database(self):
        a = self.device("a", old_key_envs=["ATT_TEST_OLD"])
        effective = json.loads(one(a, "SELECT config FROM _attachments_config"))
        self.assertEqual(effective["encryption"], {"key_env": "ATT_TEST_KEY", "old_key_envs": ["ATT_TEST_OLD"], "accept_plaintext": False})
        self.save(a, os.urandom(1000))
        self.sync(a)
        # A key pasted where the variable's name belongs is refused without being repeated.
        with self.assertRaises(Exception) as cm:
            a.execute("SELECT attachment_init(?)", (json.dumps({
                "local_dir": "files-a", "remote": f"file://{self.remote}", "encryption": {"key_env": self.key}}),))
        self.assertIn("encryption", str(cm.exception))
        self.assertNotIn(self.key, str(cm.exception))
        # A malformed key in the variable: a config error naming the variable, not the value.
        self.set_keys(ATT_TEST_BAD="not-a-key-but-secret-anyway")
        bad = self.device("bad", key_env="ATT_TEST_BAD")
        self.save(bad, b"x")
        self.sync(bad)
        state, error_class, error = self.row(bad)
        self.assertEqual((state, error_class), ("QUEUED_UPLOAD", "config"))
        self.assertIn("ATT_TEST_BAD", error)
        self.assertNotIn("not-a-key-but-secret-anyway", error)
        for conn, name in ((a, "a"), (bad, "bad")):
            conn.close()
            for suffix in ("", "-wal"):
                content = read_or_none(os.path.join(self.dir, f"{name}.db{suffix}")) or b""
                self.assertNotIn(self.key.encode(), content)
                self.assertNotIn(b"not-a-key-but-secret-anyway", content)

    def test_a_full_disk_while_opening_a_download_is_local_and_never_gives_up(self):
        """The plaintext is written by the thread that decrypts, the network read on another:
        a failing local write must still be told from a refused or broken object."""
        import subprocess
        mnt = os.path.join(self.dir, "small")
        os.mkdir(mnt)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], capture_output=True)
        if r.returncode != 0:
            self.skipTest(f"cannot mount a 1 MiB tmpfs to fill (needs root): {r.stderr.decode().strip()}")
        try:
            a = self.device("a")
            photo = self.save(a, os.urandom(3 * MiB))
            self.sync(a)
            b = self.plain_device("b", local_dir=os.path.join(mnt, "files"), max_attempts=1,
                                  encryption={"key_env": "ATT_TEST_KEY"})
            b.execute("INSERT INTO users VALUES (1, ?)", (photo,))
            self.sync(b)
            state, error_class, error = self.row(b)
            self.assertEqual((state, error_class), ("QUEUED_DOWNLOAD", "local"), error)
            self.assertEqual(files_in(os.path.join(mnt, "files")), [], "the partial download was left behind")
            b.close()
        finally:
            subprocess.run(["umount", mnt], capture_output=True)

    def test_generated_keys_are_new_32_byte_keys(self):
        import base64
        keys = {self.new_key() for _ in range(5)}
        self.assertEqual(len(keys), 5)
        for k in keys:
            self.assertEqual(len(base64.b64decode(k, validate=True)), 32)
        with self.assertRaisesRegex(Exception, "expected 0 argument"):
            self.keygen.execute("SELECT attachment_generate_key(1)")


class HttpWebDav(EncryptedRemote, Case):
    env = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-enc-www-")
        cls.nginx = servers.Nginx(cls.root, token=servers.TOKEN)
        cls.storage_port = cls.nginx.port

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()

    def remote_config(self, port):
        return {"remote": f"http://127.0.0.1:{port or self.storage_port}/files/"}

    def stored_path(self, filename):
        return os.path.join(self.root, "files", filename)

    def test_a_body_cut_short_with_a_matching_length_is_refused(self):
        """The proxy sends half the object with a Content-Length that matches it: only the
        format can tell (the last chunk is missing)."""
        a = self.device("a")
        photo = self.save(a, os.urandom(300_000))
        self.sync(a)
        proxy = servers.FaultProxy(self.storage_port, "short_length")
        try:
            b = self.device("b", port=proxy.port)
            b.execute("INSERT INTO users VALUES (1, ?)", (photo,))
            summary = self.sync(b)
        finally:
            proxy.stop()
        state, error_class, error = self.row(b)
        self.assertEqual((summary["downloaded"], state, error_class), (0, "QUEUED_DOWNLOAD", "integrity"), error)
        self.assertEqual(files_in(os.path.join(self.dir, "files-b")), [])


    def test_an_interrupted_encrypted_download_starts_over_and_completes(self):
        """The first attempt is cut halfway (the store may keep the partial plaintext for a
        resume); the next one asks for the whole object again and the file is exact."""
        a = self.device("a")
        data = os.urandom(600_000)
        photo = self.save(a, data)
        self.sync(a)
        proxy = servers.FaultProxy(self.storage_port, "truncate")
        try:
            b = self.device("b", port=proxy.port)
            b.execute("INSERT INTO users VALUES (1, ?)", (photo,))
            self.assertEqual(self.sync(b)["downloaded"], 0)
        finally:
            proxy.stop()
        self.assertEqual(self.row(b)[0], "QUEUED_DOWNLOAD")
        b.execute("SELECT attachment_init(?)", (json.dumps({
            "local_dir": "files-b", **self.remote_config(None), "encryption": {"key_env": "ATT_TEST_KEY"}}),))
        b.execute("UPDATE attachments SET next_attempt_at = 0")
        self.assertEqual(self.sync(b)["downloaded"], 1, self.row(b))
        self.assertEqual(one(b, "SELECT attachment_data(?)", photo), data)


class S3SigV4(EncryptedRemote, Case):
    env = {"AWS_ACCESS_KEY_ID": servers.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-enc-s3-")
        cls.s3 = servers.S3(cls.root)
        cls.storage_port = cls.s3.port

    @classmethod
    def tearDownClass(cls):
        cls.s3.stop()

    def remote_config(self, port):
        return {"remote": f"s3://{servers.BUCKET}/enc", "s3_endpoint": f"http://127.0.0.1:{port or self.storage_port}"}

    def stored_path(self, filename):
        return os.path.join(self.root, servers.BUCKET, "enc", filename)

    def test_a_resumed_multipart_upload_reuses_its_nonce_and_the_object_opens(self):
        """Part 2 of 3 fails; the next attempt sends only part 2, sealed exactly as the first
        attempt sealed it, so the assembled object is one valid ciphertext."""
        proxy = servers.FaultProxy(self.storage_port, "fail_put", fail_put_number=2)
        try:
            a = self.device("a", port=proxy.port)
            data = os.urandom(33 * MiB)  # ciphertext just over two 16 MiB parts: three parts
            photo = self.save(a, data)
            self.assertEqual(self.sync(a)["uploaded"], 0)
            resume = json.loads(one(a, "SELECT upload_resume FROM attachments"))
            self.assertIn("nonce", resume["encrypted"])
            self.assertNotIn(self.key, json.dumps(resume))
            a.execute("UPDATE attachments SET next_attempt_at = 0")
            self.assertEqual(self.sync(a)["uploaded"], 1, self.row(a))
        finally:
            proxy.stop()
        puts = [r for r in proxy.requests() if r.startswith("PUT")]
        self.assertEqual(len(puts), 4, f"part 1 once, part 2 twice, part 3 once: {puts}")
        self.assertEqual(len(self.stored(photo)), sealed_len(len(data)))
        b = self.device("b")
        b.execute("INSERT INTO users VALUES (1, ?)", (photo,))
        self.assertEqual(self.sync(b)["downloaded"], 1, self.row(b))
        self.assertEqual(one(b, "SELECT attachment_data(?)", photo), data)


class SignedUrls(EncryptedRemote, Case):
    env = {"ATTACHMENTS_HTTP_TOKEN": servers.TOKEN}

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-enc-signed-")
        cls.s3 = servers.S3(cls.root)
        cls.storage_port = cls.s3.port
        cls.backend = servers.SigningBackend(f"http://127.0.0.1:{cls.storage_port}")

    @classmethod
    def tearDownClass(cls):
        cls.backend.stop()
        cls.s3.stop()

    def remote_config(self, port):
        return {"remote": f"signed+{self.backend.url}"}

    def stored_path(self, filename):
        return os.path.join(self.root, servers.BUCKET, filename)


if __name__ == "__main__":
    unittest.main()
