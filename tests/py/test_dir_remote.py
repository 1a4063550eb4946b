"""The file:// remote and downloads against an attacker or a broken mount:
a missing (unmounted) remote folder, FIFOs and devices in the remote folder,
a server whose bytes change after upload, a full local disk."""
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

from helpers import Case, files_in, one

MiB = 1024 * 1024


def row(conn, id_):
    return conn.execute(
        "SELECT state_name, error_class, last_error, sha256 FROM attachment_queue WHERE id = ?", (id_,)
    ).fetchone()


def dir_bytes(folder):
    total = 0
    for name in os.listdir(folder):
        try:
            total += os.lstat(os.path.join(folder, name)).st_size
        except FileNotFoundError:
            pass
    return total


class MissingRoot(Case):
    """A remote on a NAS that is not mounted: its folder is not there."""

    def test_init_creates_the_remote_folder_only_when_its_parent_exists(self):
        self.device("a")  # remote is <tmp>/remote: its parent exists
        self.assertTrue(os.path.isdir(self.remote))
        nas = os.path.join(self.dir, "mnt", "nas", "attachments")
        self.device("b", remote=f"file://{nas}")
        self.assertFalse(os.path.exists(os.path.join(self.dir, "mnt")), "init must not create parents (mkdir -p)")

    def test_an_upload_to_a_missing_remote_folder_fails_and_never_creates_it(self):
        nas = os.path.join(self.dir, "mnt", "nas", "attachments")
        a = self.device("a", remote=f"file://{nas}")
        id_ = one(a, "SELECT attachment_save(x'0102', 'bin')")
        summary = self.sync(a)
        self.assertEqual(summary["uploaded"], 0)
        state, cls, err, _ = row(a, id_)
        self.assertEqual(state, "QUEUED_UPLOAD")
        self.assertEqual(cls, "network")
        self.assertIn("does not exist", err)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "mnt")), "the upload created the remote folder")

    def test_a_download_from_a_missing_remote_folder_is_not_a_missing_file(self):
        nas = os.path.join(self.dir, "mnt", "nas", "attachments")
        a = self.device("a", remote=f"file://{nas}")
        a.execute("CREATE TABLE t(id TEXT)")
        a.execute("INSERT INTO t VALUES ('dl1')")
        a.execute("SELECT attachment_watch('w', 'SELECT id, ''bin'' AS file_extension FROM t')")
        self.sync(a)
        state, cls, err, _ = row(a, "dl1")
        self.assertEqual((state, cls), ("QUEUED_DOWNLOAD", "network"), err)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "mnt")))

    def test_a_delete_while_the_remote_folder_is_missing_is_not_done(self):
        a = self.device("a")
        id_ = one(a, "SELECT attachment_save(x'0102', 'bin')")
        self.sync(a)
        os.rename(self.remote, self.remote + ".unmounted")
        a.execute("SELECT attachment_delete(?)", (id_,))
        self.sync(a)
        self.assertIsNotNone(row(a, id_), "the delete counted as done while the remote folder was not there")
        state, cls, err, _ = row(a, id_)
        self.assertEqual((state, cls), ("QUEUED_DELETE", "network"), err)


class HostileFiles(Case):
    """Things in the remote folder that are not regular files."""

    def watch(self, conn, id_):
        conn.execute("CREATE TABLE t(id TEXT)")
        conn.execute("INSERT INTO t VALUES (?)", (id_,))
        conn.execute("SELECT attachment_watch('w', 'SELECT id, ''bin'' AS file_extension FROM t')")

    def sync_guarded(self, conn, local, unblock=lambda: None, limit_s=10, limit_bytes=16 * MiB):
        """Runs attachment_sync(); a watchdog interrupts it (and calls `unblock`) if it runs
        longer than limit_s or stages more than limit_bytes. Returns what went wrong, if anything."""
        done = threading.Event()
        tripped = []

        def watchdog():
            start = time.monotonic()
            while not done.wait(0.05):
                size = dir_bytes(local) if os.path.isdir(local) else 0
                if size > limit_bytes or time.monotonic() - start > limit_s:
                    tripped.append(f"ran {time.monotonic() - start:.1f} s, staged {size} bytes")
                    conn.interrupt()
                    unblock()
                    return

        t = threading.Thread(target=watchdog)
        t.start()
        try:
            self.sync(conn)
        except Exception as e:  # the interrupt
            tripped.append(f"sync raised {e}")
        finally:
            done.set()
            t.join()
        return tripped

    def test_a_fifo_in_the_remote_folder_fails_at_once(self):
        a = self.device("a")
        os.makedirs(self.remote, exist_ok=True)
        os.mkfifo(os.path.join(self.remote, "ff1.bin"))

        def unblock():
            # Opening the writer end lets a reader blocked in open() go on; closing gives it EOF.
            try:
                os.close(os.open(os.path.join(self.remote, "ff1.bin"), os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

        self.watch(a, "ff1")
        tripped = self.sync_guarded(a, os.path.join(self.dir, "files-a"), unblock=unblock)
        self.assertEqual(tripped, [], "attachment_sync() hung on a FIFO")
        state, cls, err, _ = row(a, "ff1")
        self.assertEqual(state, "QUEUED_DOWNLOAD")
        self.assertIn("not a regular file", err)
        self.assertEqual(files_in(os.path.join(self.dir, "files-a")), [], "a temp file was left behind")

    def test_a_symlink_to_dev_zero_is_not_read_forever(self):
        a = self.device("a")
        os.makedirs(self.remote, exist_ok=True)
        os.symlink("/dev/zero", os.path.join(self.remote, "zz1.bin"))
        self.watch(a, "zz1")
        local = os.path.join(self.dir, "files-a")
        tripped = self.sync_guarded(a, local)
        self.assertEqual(tripped, [], "attachment_sync() kept reading /dev/zero")
        state, cls, err, _ = row(a, "zz1")
        self.assertEqual(state, "QUEUED_DOWNLOAD")
        self.assertIn("not a regular file", err)
        self.assertEqual(files_in(local), [])


class KnownChecksum(Case):
    def test_a_redownload_with_other_bytes_is_refused(self):
        a = self.device("a")
        a.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT)")
        a.execute("SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''jpg'' AS file_extension FROM users')")
        a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'jpg'))", (b"photo" * 100,))
        id_ = one(a, "SELECT photo_id FROM users")
        self.sync(a)
        sha = row(a, id_)[3]
        self.assertEqual(row(a, id_)[0], "SYNCED")
        os.remove(one(a, "SELECT attachment_local_uri(?)", id_))
        self.assertEqual(one(a, "SELECT json_extract(attachment_verify(), '$.requeued')"), 1)
        # The server now answers other bytes for the same name.
        with open(os.path.join(self.remote, f"{id_}.jpg"), "wb") as f:
            f.write(b"evil" * 100)
        self.assertEqual(self.sync(a)["downloaded"], 0)
        state, cls, err, sha_after = row(a, id_)
        self.assertEqual(state, "QUEUED_DOWNLOAD")
        self.assertEqual(cls, "integrity", err)
        self.assertEqual(sha_after, sha, "the known SHA-256 was overwritten")
        self.assertIsNone(one(a, "SELECT attachment_local_uri(?)", id_))
        self.assertEqual(files_in(os.path.join(self.dir, "files-a")), [], "the staged file was kept")


class FullDisk(Case):
    def setUp(self):
        super().setUp()
        self.mnt = os.path.join(self.dir, "small")
        os.mkdir(self.mnt)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", self.mnt], capture_output=True)
        if r.returncode != 0:
            self.skipTest(f"cannot mount a 1 MiB tmpfs to fill (needs root): {r.stderr.decode().strip()}")

    def tearDown(self):
        subprocess.run(["umount", self.mnt], capture_output=True)
        super().tearDown()

    def test_a_full_disk_during_a_download_is_local_and_never_gives_up(self):
        local = os.path.join(self.mnt, "files")
        a = self.device("a", local_dir=local, max_attempts=1)
        os.makedirs(self.remote, exist_ok=True)
        with open(os.path.join(self.remote, "big1.bin"), "wb") as f:
            f.write(os.urandom(4 * MiB))
        a.execute("CREATE TABLE t(id TEXT)")
        a.execute("INSERT INTO t VALUES ('big1')")
        a.execute("SELECT attachment_watch('w', 'SELECT id, ''bin'' AS file_extension FROM t')")
        self.sync(a)
        state, cls, err, _ = row(a, "big1")
        self.assertEqual(cls, "local", err)
        self.assertEqual(state, "QUEUED_DOWNLOAD", "a full disk gave the download up")
        self.assertEqual(files_in(local), [], "the partial download was left behind")


if __name__ == "__main__":
    unittest.main()
