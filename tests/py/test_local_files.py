"""Local files are never lost and never escape local_dir (Task B regressions).

Each test states what a user relies on; each failed on the code before its fix.
"""
import fcntl
import json
import os
import resource
import shutil
import sqlite3
import threading
import time
import unittest

from helpers import Case, connect, one

SQLITE_LIMIT_LENGTH = 0


class Integrity(Case):
    """An upload sends what was saved, or nothing."""

    def saved(self, data=b"what the user saved"):
        a = self.device("a")
        att = one(a, "SELECT attachment_save(?, 'txt')", data)
        path = os.path.join(self.dir, "files-a", f"{att}.txt")
        return a, att, path

    def assert_refused(self, a, att):
        state, err = a.execute("SELECT state_name, last_error FROM attachment_queue WHERE id = ?", (att,)).fetchone()
        self.assertEqual(state, "QUEUED_UPLOAD")
        self.assertRegex(err or "", r"^(integrity|local)")
        self.assertFalse(os.path.exists(os.path.join(self.remote, f"{att}.txt")), "nothing reaches the remote")

    def test_a_file_replaced_by_a_symlink_outside_local_dir_is_not_uploaded(self):
        a, att, path = self.saved()
        secret = os.path.join(self.dir, "secret.txt")
        with open(secret, "wb") as f:
            f.write(b"what the user saved")  # same bytes: only the symlink gives it away
        os.remove(path)
        os.symlink(secret, path)
        self.sync(a)
        self.assert_refused(a, att)
        # Readers never hand out what a symlink points to.
        self.assertIsNone(one(a, "SELECT attachment_data(?)", att))
        self.assertIsNone(one(a, "SELECT attachment_local_uri(?)", att))

    def test_a_file_whose_content_changed_after_the_save_is_not_uploaded(self):
        a, att, path = self.saved()
        with open(path, "wb") as f:
            f.write(b"something else entirely")
        self.sync(a)
        self.assert_refused(a, att)

    def test_a_big_file_whose_bytes_changed_is_not_uploaded_though_checked_while_sent(self):
        # 9 MiB: checked on a thread of its own while it is copied; the copy never completes.
        for where in (0, 9 * 1024 * 1024 - 1):
            with self.subTest(byte=where):
                data = os.urandom(9 * 1024 * 1024)
                a, att, path = self.saved(data)
                with open(path, "r+b") as f:
                    f.seek(where)
                    f.write(bytes([data[where] ^ 0xFF]))
                self.sync(a)
                self.assert_refused(a, att)
                self.assertEqual([n for n in os.listdir(self.remote) if att in n], [], "no temp file left either")
                a.close()
                shutil.rmtree(os.path.join(self.dir, "files-a"))
                os.remove(os.path.join(self.dir, "a.db"))

    def test_a_file_written_to_while_it_uploads_never_reaches_the_remote(self):
        data = os.urandom(12 * 1024 * 1024)
        a = self.device("a", max_bytes_per_second=4 * 1024 * 1024)
        att = one(a, "SELECT attachment_save(?, 'txt')", data)
        path = os.path.join(self.dir, "files-a", f"{att}.txt")

        def tamper():
            time.sleep(1.0)
            with open(path, "r+b") as f:
                f.seek(10 * 1024 * 1024)
                f.write(b"EVIL")

        t = threading.Thread(target=tamper)
        t.start()
        try:
            self.sync(a)
        finally:
            t.join()
        self.assert_refused(a, att)

    def test_same_size_other_bytes_is_refused_too(self):
        a, att, path = self.saved(b"A" * 100_000)
        with open(path, "r+b") as f:
            f.seek(99_999)
            f.write(b"B")
        self.sync(a)
        self.assert_refused(a, att)


class TruncatedCopies(Case):
    def test_verify_downloads_again_a_synced_copy_whose_size_is_wrong(self):
        data = os.urandom(50_000)
        a = self.device("a")
        att = one(a, "SELECT attachment_save(?, 'bin')", data)
        a.execute("CREATE TABLE t(f TEXT)")
        a.execute("INSERT INTO t VALUES (?)", (att,))
        a.execute("SELECT attachment_watch('w', 'SELECT f AS id, ''bin'' AS file_extension FROM t')")
        self.sync(a)
        path = os.path.join(self.dir, "files-a", f"{att}.bin")
        with open(path, "r+b") as f:
            f.truncate(10)
        self.assertEqual(one(a, "SELECT json_extract(attachment_verify(), '$.requeued')"), 1)
        self.assertEqual(one(a, "SELECT state_name FROM attachment_queue WHERE id = ?", att), "QUEUED_DOWNLOAD")
        self.sync(a)
        self.assertEqual(one(a, "SELECT state_name FROM attachment_queue WHERE id = ?", att), "SYNCED")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)


    def test_a_grown_copy_is_never_served_and_verify_says_wrong_size(self):
        data = os.urandom(20_000)
        a = self.device("a")
        att = one(a, "SELECT attachment_save(?, 'bin')", data)
        a.execute("CREATE TABLE t(f TEXT)")
        a.execute("INSERT INTO t VALUES (?)", (att,))
        a.execute("SELECT attachment_watch('w', 'SELECT f AS id, ''bin'' AS file_extension FROM t')")
        self.sync(a)
        path = os.path.join(self.dir, "files-a", f"{att}.bin")
        self.assertEqual(one(a, "SELECT attachment_local_uri(?)", att), path)
        with open(path, "ab") as f:
            f.write(b"EXTRA")
        # The row says 20,000 bytes: a 20,005-byte file is not that attachment.
        self.assertIsNone(one(a, "SELECT attachment_local_uri(?)", att))
        self.assertIsNone(one(a, "SELECT attachment_data(?)", att))
        self.assertEqual(one(a, "SELECT json_extract(attachment_verify(), '$.requeued')"), 1)
        self.assertIn("wrong size", one(a, "SELECT last_error FROM attachment_queue WHERE id = ?", att))
        self.sync(a)
        self.assertEqual(one(a, "SELECT attachment_data(?)", att), data)

class PlantedPartialFiles(Case):
    """A download's partial file names (`.{filename}.partial`, `-meta`) are the extension's:
    whatever else is found there is cleared, never followed, and never blocks the download."""

    def test_a_planted_symlink_or_folder_never_blocks_a_download_nor_touches_a_file_outside(self):
        a = self.device("a")
        a.execute("CREATE TABLE t(f TEXT)")
        a.execute("INSERT INTO t VALUES (attachment_save(?, 'bin'))", (b"the file" * 1000,))
        self.assertEqual(self.sync(a)["uploaded"], 1)
        att = one(a, "SELECT f FROM t")
        b = self.device("b")
        files = os.path.join(self.dir, "files-b")
        canary = os.path.join(self.dir, "canary")
        with open(canary, "wb") as f:
            f.write(b"IMPORTANT")
        os.makedirs(os.path.join(files, f".{att}.bin.partial", "inside"))
        os.symlink(canary, os.path.join(files, f".{att}.bin.partial-meta"))
        b.execute("CREATE TABLE t(f TEXT)")
        b.execute("INSERT INTO t VALUES (?)", (att,))
        b.execute("SELECT attachment_watch('w', 'SELECT f AS id, ''bin'' AS file_extension FROM t')")
        summary = self.sync(b)
        row = b.execute("SELECT state_name, last_error FROM attachment_queue").fetchone()
        self.assertEqual((summary["downloaded"], row[0]), (1, "SYNCED"), row)
        with open(canary, "rb") as f:
            self.assertEqual(f.read(), b"IMPORTANT")
        with open(os.path.join(files, f"{att}.bin"), "rb") as f:
            self.assertEqual(f.read(), b"the file" * 1000)
        # The folder had something in it: moved aside, not deleted.
        moved = [n for n in os.listdir(files) if n.startswith(f".{att}.bin.partial.moved-")]
        self.assertEqual(len(moved), 1, os.listdir(files))
        self.assertTrue(os.path.isdir(os.path.join(files, moved[0], "inside")))


class VanishedFolder(Case):
    def test_a_pass_without_local_dir_archives_nothing_and_recreates_nothing(self):
        a = self.device("a")
        att = one(a, "SELECT attachment_save(?, 'bin')", b"only copy")
        files, away = os.path.join(self.dir, "files-a"), os.path.join(self.dir, "away")
        os.rename(files, away)  # an unmounted card, a moved folder
        with self.assertRaises(sqlite3.Error) as cm:
            self.sync(a)
        self.assertIn("local_dir", str(cm.exception))
        self.assertFalse(os.path.exists(files), "local_dir must not be silently re-created")
        self.assertEqual(one(a, "SELECT state_name FROM attachment_queue"), "QUEUED_UPLOAD")
        os.rename(away, files)
        self.assertEqual(self.sync(a)["uploaded"], 1)
        self.assertEqual(a.execute("SELECT state_name, has_synced FROM attachment_queue").fetchone(), ("SYNCED", 1))
        with open(os.path.join(self.remote, f"{att}.bin"), "rb") as f:
            self.assertEqual(f.read(), b"only copy")

    def test_init_recreates_a_missing_local_dir(self):
        a = self.device("a")
        shutil.rmtree(os.path.join(self.dir, "files-a"))
        a.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files-a", "remote": f"file://{self.remote}"}),))
        self.assertTrue(os.path.isdir(os.path.join(self.dir, "files-a")))


class Ownership(Case):
    def init(self, conn, **cfg):
        conn.execute("SELECT attachment_init(?)", (json.dumps({"remote": f"file://{self.remote}", **cfg}),))

    def test_local_dir_holding_the_database_is_refused(self):
        other = os.path.join(self.dir, "notes.txt")
        with open(other, "w") as f:
            f.write("mine")
        c = connect(os.path.join(self.dir, "app.db"))
        with self.assertRaises(sqlite3.Error) as cm:
            self.init(c, local_dir=".")
        self.assertIn("local_dir", str(cm.exception))
        # A config stored by an older release with local_dir ".": a later process's
        # first sync must not delete the database or its neighbours.
        self.init(c, local_dir="files")
        c.execute("""UPDATE _attachments_config SET config = json_set(config, '$.local_dir', '.')""")
        c.close()
        old = time.time() - 600
        os.utime(other, (old, old))
        c = connect(os.path.join(self.dir, "app.db"))
        with self.assertRaises(sqlite3.Error) as cm:
            c.execute("SELECT attachment_sync()")
        self.assertIn("local_dir", str(cm.exception))
        self.assertTrue(os.path.exists(os.path.join(self.dir, "app.db")))
        self.assertTrue(os.path.exists(other))

    def test_a_second_database_cannot_take_a_folder_in_use(self):
        a = connect(os.path.join(self.dir, "a.db"))
        self.init(a, local_dir="files")
        att = one(a, "SELECT attachment_save(?, 'bin')", b"not uploaded yet")
        path = os.path.join(self.dir, "files", f"{att}.bin")
        self.age_files(os.path.join(self.dir, "files"))
        b = connect(os.path.join(self.dir, "b.db"))
        with self.assertRaises(sqlite3.Error) as cm:
            self.init(b, local_dir="files")
        self.assertIn("local_dir", str(cm.exception))
        self.assertIn("another database", str(cm.exception))
        self.assertTrue(os.path.exists(path))
        self.assertEqual(self.sync(a)["uploaded"], 1)

    def test_an_unowned_non_empty_folder_is_refused(self):
        os.makedirs(os.path.join(self.dir, "photos"))
        with open(os.path.join(self.dir, "photos", "holiday.jpg"), "wb") as f:
            f.write(b"someone's photo")
        a = connect(os.path.join(self.dir, "a.db"))
        with self.assertRaises(sqlite3.Error) as cm:
            self.init(a, local_dir="photos")
        self.assertIn("not empty", str(cm.exception))
        self.assertTrue(os.path.exists(os.path.join(self.dir, "photos", "holiday.jpg")))

    def test_a_folder_from_before_the_marker_is_adopted(self):
        a = connect(os.path.join(self.dir, "a.db"))
        self.init(a, local_dir="files")
        one(a, "SELECT attachment_save(?, 'bin')", b"x")
        folder = os.path.join(self.dir, "files")
        for name in os.listdir(folder):
            if name.startswith("."):
                os.remove(os.path.join(folder, name))  # as an older release left it
        self.init(a, local_dir="files")
        self.assertEqual(self.sync(a)["uploaded"], 1)

    def test_a_moved_database_keeps_its_folder(self):
        a = connect(os.path.join(self.dir, "a.db"))
        self.init(a, local_dir="files")
        one(a, "SELECT attachment_save(?, 'bin')", b"x")
        a.close()
        moved = os.path.join(self.dir, "moved")
        os.makedirs(moved)
        os.rename(os.path.join(self.dir, "a.db"), os.path.join(moved, "a.db"))
        os.rename(os.path.join(self.dir, "files"), os.path.join(moved, "files"))
        a = connect(os.path.join(moved, "a.db"))
        self.init(a, local_dir="files")
        self.assertEqual(self.sync(a)["uploaded"], 1)

    def test_changing_table_with_live_rows_is_refused_and_keeps_the_files(self):
        a = connect(os.path.join(self.dir, "a.db"))
        self.init(a, local_dir="files")
        att = one(a, "SELECT attachment_save(?, 'bin')", b"pending")
        self.age_files(os.path.join(self.dir, "files"))
        with self.assertRaises(sqlite3.Error) as cm:
            self.init(a, local_dir="files", table="other_queue")
        self.assertIn("'table'", str(cm.exception))
        self.assertIn("RENAME", str(cm.exception))
        self.assertTrue(os.path.exists(os.path.join(self.dir, "files", f"{att}.bin")))
        # Carried over as the message says: the rows and files follow.
        a.execute('ALTER TABLE attachments RENAME TO other_queue')
        self.init(a, local_dir="files", table="other_queue")
        self.assertEqual(self.sync(a)["uploaded"], 1)

    def test_changing_local_dir_with_live_files_is_refused(self):
        a = connect(os.path.join(self.dir, "a.db"))
        self.init(a, local_dir="files")
        att = one(a, "SELECT attachment_save(?, 'bin')", b"pending")
        with self.assertRaises(sqlite3.Error) as cm:
            self.init(a, local_dir="elsewhere")
        self.assertIn("'local_dir'", str(cm.exception))
        os.rename(os.path.join(self.dir, "files"), os.path.join(self.dir, "elsewhere"))
        self.init(a, local_dir="elsewhere")
        self.assertEqual(self.sync(a)["uploaded"], 1)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "elsewhere", f"{att}.bin")))

    def test_verify_leaves_names_it_could_not_have_written(self):
        a = self.device("a")
        folder = os.path.join(self.dir, "files-a")
        for name in ("notes.txt-backup", "README", ".hidden.tmp-x", "a b.jpg"):
            with open(os.path.join(folder, name), "w") as f:
                f.write("not ours")
        self.age_files(folder)
        a.execute("SELECT attachment_verify()")
        for name in ("notes.txt-backup", "a b.jpg", ".hidden.tmp-x"):
            self.assertTrue(os.path.exists(os.path.join(folder, name)), name)


class VerifyUnderTheLock(Case):
    def test_a_save_in_a_long_transaction_survives_verify(self):
        a = self.device("a")
        importer = connect(os.path.join(self.dir, "a.db"))
        importer.execute("BEGIN")
        att = one(importer, "SELECT attachment_save(?, 'bin')", b"bulk import")
        folder = os.path.join(self.dir, "files-a")
        self.age_files(folder)  # the import has been running for minutes
        result = {}

        def verify():
            try:
                result["v"] = one(connect(os.path.join(self.dir, "a.db")), "SELECT attachment_verify()")
            except sqlite3.Error as e:
                result["e"] = e

        t = threading.Thread(target=verify)
        t.start()
        time.sleep(0.5)
        importer.execute("COMMIT")
        t.join(30)
        self.assertNotIn("e", result)
        self.assertTrue(os.path.exists(os.path.join(folder, f"{att}.bin")))
        self.assertEqual(one(a, "SELECT state_name FROM attachment_queue"), "QUEUED_UPLOAD")
        self.assertEqual(self.sync(a)["uploaded"], 1)

    def test_a_file_whose_save_has_not_inserted_yet_is_left_alone(self):
        # A save holds a shared lock on its file from writing it until its INSERT returns.
        a = self.device("a")
        folder = os.path.join(self.dir, "files-a")
        path = os.path.join(folder, "0b7f2e6d-8d4b-4c1e-9a57-3f1c2a9e1a33.bin")
        with open(path, "wb") as f:
            f.write(b"being saved")
        self.age_files(folder)
        held = open(path, "rb")
        fcntl.flock(held, fcntl.LOCK_SH)
        a.execute("SELECT attachment_verify()")
        self.assertTrue(os.path.exists(path))
        held.close()
        self.assertEqual(one(a, "SELECT json_extract(attachment_verify(), '$.orphans_removed')"), 1)
        self.assertFalse(os.path.exists(path))

    def test_verify_inside_the_callers_transaction_is_refused(self):
        a = self.device("a")
        a.execute("BEGIN IMMEDIATE")
        with self.assertRaises(sqlite3.Error) as cm:
            a.execute("SELECT attachment_verify()")
        self.assertIn("outside BEGIN", str(cm.exception))
        a.execute("ROLLBACK")


class AtTheDoor(Case):
    def test_saving_a_fifo_fails_at_once(self):
        a = self.device("a")
        fifo = os.path.join(self.dir, "pipe")
        os.mkfifo(fifo)
        stop = time.time() + 4

        def unblock():  # only an old build blocks in open(); give it a writer eventually
            time.sleep(2)
            while time.time() < stop:
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                    return
                except OSError:
                    time.sleep(0.05)

        threading.Thread(target=unblock, daemon=True).start()
        started = time.time()
        with self.assertRaises(sqlite3.Error) as cm:
            a.execute("SELECT attachment_save_file(?, 'bin')", (fifo,))
        self.assertLess(time.time() - started, 1.5)
        self.assertIn("not a regular file", str(cm.exception))

    def test_a_local_dir_that_is_a_file_says_so(self):
        with open(os.path.join(self.dir, "files"), "w") as f:
            f.write("x")
        c = connect(os.path.join(self.dir, "a.db"))
        with self.assertRaises(sqlite3.Error) as cm:
            c.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files", "remote": f"file://{self.remote}"}),))
        self.assertIn("local_dir", str(cm.exception))
        self.assertNotIn("os error", str(cm.exception))

    def test_attachment_data_refuses_a_file_above_the_blob_limit_before_reading(self):
        a = self.device("a")
        att = one(a, "SELECT attachment_save(x'00', 'bin')")
        path = os.path.join(self.dir, "files-a", f"{att}.bin")
        os.truncate(path, 300 * 1024 * 1024)  # sparse
        a.setlimit(SQLITE_LIMIT_LENGTH, 1_000_000)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with self.assertRaises(sqlite3.Error) as cm:
            one(a, "SELECT attachment_data(?)", att)
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        self.assertIn("too big", str(cm.exception))
        self.assertLess(grown_mib, 50, "the file must not be read into memory")

    def test_bad_media_types_are_refused_naming_the_argument(self):
        a = self.device("a")
        for bad in ("text/plain\r\nX-Evil: 1", "text/plain\0", "a/" + "b" * 65536, "plain", "text/pl ain"):
            with self.assertRaises(sqlite3.Error, msg=repr(bad[:30])) as cm:
                a.execute("SELECT attachment_save(x'01', 'txt', ?)", (bad,))
            self.assertIn("media_type", str(cm.exception))
        self.assertEqual(one(a, "SELECT count(*) FROM attachments"), 0)
        one(a, "SELECT attachment_save(x'01', 'txt', 'text/plain; charset=utf-8')")
        self.assertEqual(self.sync(a)["uploaded"], 1)


class Smaller(Case):
    def test_expire_cache_inside_a_transaction_is_refused(self):
        a = self.device("a")
        a.execute("BEGIN")
        with self.assertRaises(sqlite3.Error) as cm:
            a.execute("SELECT attachment_expire_cache()")
        self.assertIn("outside BEGIN", str(cm.exception))
        a.execute("ROLLBACK")
        self.assertEqual(one(a, "SELECT attachment_expire_cache()"), 0)

    def test_no_handle_on_local_dir_stays_open(self):
        a = self.device("a")
        one(a, "SELECT attachment_save(x'01', 'bin')")
        self.sync(a)
        a.close()
        folder = os.path.realpath(os.path.join(self.dir, "files-a"))
        held = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == folder:
                    held.append(fd)
            except OSError:
                pass
        self.assertEqual(held, [], "an open handle keeps the file system from being unmounted")


if __name__ == "__main__":
    unittest.main()


class OwnershipAttacks(Case):
    """Holes an adversarial review found in who may use a local_dir (Task I)."""

    def init(self, conn, **cfg):
        conn.execute("SELECT attachment_init(?)", (json.dumps({"remote": f"file://{self.remote}", **cfg}),))

    def test_a_second_database_cannot_take_an_empty_folder_in_use(self):
        app = connect(os.path.join(self.dir, "app.db"))
        self.init(app, local_dir="files")
        other = connect(os.path.join(self.dir, "other.db"))
        with self.assertRaises(sqlite3.Error) as cm:
            self.init(other, local_dir="files")
        self.assertIn("another database", str(cm.exception))
        other.close()
        att = one(app, "SELECT attachment_save(?, 'bin')", b"not uploaded yet")
        path = os.path.join(self.dir, "files", f"{att}.bin")
        self.age_files(os.path.join(self.dir, "files"))
        # other.db's next process: it has no config, so nothing of app.db's is touched.
        other = connect(os.path.join(self.dir, "other.db"))
        with self.assertRaises(sqlite3.Error):
            other.execute("SELECT attachment_sync()")
        self.assertTrue(os.path.exists(path))
        self.assertEqual(self.sync(app)["uploaded"], 1)

    def test_a_save_into_a_folder_another_database_owns_fails(self):
        app = connect(os.path.join(self.dir, "app.db"))
        self.init(app, local_dir="files")
        other = connect(os.path.join(self.dir, "other.db"))
        self.init(other, local_dir="files-other")
        # other.db took the folder over, as an older build let it: its config names the
        # folder and the folder's marker names it.
        other.execute("""UPDATE _attachments_config SET config = json_set(config, '$.local_dir', 'files')""")
        shutil.copy(os.path.join(self.dir, "files-other", ".attachments-owner"),
                    os.path.join(self.dir, "files", ".attachments-owner"))
        with self.assertRaises(sqlite3.Error) as cm:
            one(app, "SELECT attachment_save(?, 'bin')", b"x")
        self.assertIn("another database", str(cm.exception))
        self.assertEqual(one(app, "SELECT count(*) FROM attachments"), 0)

    def test_a_copy_of_the_database_does_not_delete_the_originals_files(self):
        app = connect(os.path.join(self.dir, "app.db"))
        self.init(app, local_dir="files")
        one(app, "SELECT attachment_save(?, 'bin')", b"saved before the backup")
        app.close()
        shutil.copy(os.path.join(self.dir, "app.db"), os.path.join(self.dir, "backup.db"))
        app = connect(os.path.join(self.dir, "app.db"))
        att = one(app, "SELECT attachment_save(?, 'bin')", b"saved after the backup")
        path = os.path.join(self.dir, "files", f"{att}.bin")
        self.age_files(os.path.join(self.dir, "files"))
        backup = connect(os.path.join(self.dir, "backup.db"))
        with self.assertRaises(sqlite3.Error) as cm:
            backup.execute("SELECT attachment_verify()")
        self.assertIn("copy", str(cm.exception))
        self.assertIn("local_dir", str(cm.exception))
        with self.assertRaises(sqlite3.Error) as cm:
            backup.execute("SELECT attachment_sync()")
        self.assertIn("copy", str(cm.exception))
        with self.assertRaises(sqlite3.Error) as cm:
            one(backup, "SELECT attachment_save(?, 'bin')", b"into the original's folder")
        self.assertIn("copy", str(cm.exception))
        with self.assertRaises(sqlite3.Error) as cm:
            self.init(backup, local_dir="files")
        self.assertIn("copy", str(cm.exception))
        self.assertTrue(os.path.exists(path))
        # The copy works once it has a folder of its own; the original is untouched.
        self.init(backup, local_dir="files-backup")
        self.assertEqual(self.sync(app)["uploaded"], 2)
        self.assertTrue(os.path.exists(path))

    def test_a_copy_with_a_copy_of_the_folder_gets_that_folder(self):
        app = connect(os.path.join(self.dir, "app.db"))
        self.init(app, local_dir="files")
        att = one(app, "SELECT attachment_save(?, 'bin')", b"in both")
        app.close()
        # A whole backup: the database and its folder (marker included), side by side.
        shutil.copy(os.path.join(self.dir, "app.db"), os.path.join(self.dir, "backup.db"))
        shutil.copytree(os.path.join(self.dir, "files"), os.path.join(self.dir, "files-backup"))
        backup = connect(os.path.join(self.dir, "backup.db"))
        self.init(backup, local_dir="files-backup")
        self.assertEqual(self.sync(backup)["uploaded"], 1)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "files-backup", f"{att}.bin")))
        app = connect(os.path.join(self.dir, "app.db"))
        one(app, "SELECT attachment_save(?, 'bin')", b"after the backup")
        self.assertEqual(one(app, "SELECT count(*) FROM attachments"), 2)

    def test_after_an_upgrade_the_originals_first_save_claims_the_folder_before_a_copy(self):
        app = connect(os.path.join(self.dir, "app.db"))
        self.init(app, local_dir="files")
        marker = os.path.join(self.dir, "files", ".attachments-owner")
        owner = json.load(open(marker))["owner"]
        with open(marker, "w") as f:  # as an earlier build wrote it: no database file recorded
            json.dump({"owner": owner, "table": "attachments"}, f)
        app.close()
        shutil.copy(os.path.join(self.dir, "app.db"), os.path.join(self.dir, "backup.db"))
        app = connect(os.path.join(self.dir, "app.db"))
        att = one(app, "SELECT attachment_save(?, 'bin')", b"saved after the backup")
        self.age_files(os.path.join(self.dir, "files"))
        backup = connect(os.path.join(self.dir, "backup.db"))
        with self.assertRaises(sqlite3.Error) as cm:
            backup.execute("SELECT attachment_verify()")
        self.assertIn("copy", str(cm.exception))
        self.assertTrue(os.path.exists(os.path.join(self.dir, "files", f"{att}.bin")))
        self.assertEqual(self.sync(app)["uploaded"], 1)

    def test_a_restored_or_moved_database_takes_its_folder_back(self):
        app = connect(os.path.join(self.dir, "app.db"))
        self.init(app, local_dir="files")
        one(app, "SELECT attachment_save(?, 'bin')", b"x")
        app.close()
        backup = os.path.join(self.dir, "backup.db")
        shutil.copy(os.path.join(self.dir, "app.db"), backup)
        # Restored with cp over the original: same path, new inode.
        os.remove(os.path.join(self.dir, "app.db"))
        shutil.copy(backup, os.path.join(self.dir, "app.db"))
        os.remove(backup)
        app = connect(os.path.join(self.dir, "app.db"))
        one(app, "SELECT attachment_save(?, 'bin')", b"y")
        self.assertEqual(self.sync(app)["uploaded"], 2)
        app.close()
        # Renamed in place (the old path is gone): the folder follows.
        os.rename(os.path.join(self.dir, "app.db"), os.path.join(self.dir, "renamed.db"))
        app = connect(os.path.join(self.dir, "renamed.db"))
        one(app, "SELECT attachment_save(?, 'bin')", b"z")
        self.assertEqual(self.sync(app)["uploaded"], 1)
        with open(os.path.join(self.dir, "files", ".attachments-owner")) as f:
            self.assertIn("renamed.db", f.read())

    def test_a_file_remote_equal_to_or_nested_with_local_dir_is_refused(self):
        os.makedirs(os.path.join(self.dir, "files", "up"))
        for remote, local_dir in ((os.path.join(self.dir, "files"), "files"),
                                  (os.path.join(self.dir, "files", "up"), "files"),
                                  (self.dir + "/files/../files", "files/up"),
                                  (os.path.join(self.dir, "files"), "files/up")):
            c = connect(os.path.join(self.dir, "app.db"))
            with self.assertRaises(sqlite3.Error, msg=(remote, local_dir)) as cm:
                c.execute("SELECT attachment_init(?)", (json.dumps({"remote": f"file://{remote}", "local_dir": local_dir}),))
            self.assertIn("remote", str(cm.exception))
            c.close()
        c = connect(os.path.join(self.dir, "app.db"))
        self.init(c, local_dir="files-ok")
