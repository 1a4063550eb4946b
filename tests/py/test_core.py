"""The core flows through Python's stdlib sqlite3 driver (Debian's /usr/bin/python3)."""
import json
import os
import subprocess
import sys
import textwrap
import unittest

from helpers import Case, LIB, connect, files_in, one

APP_SCHEMA = "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, photo_id TEXT)"
WATCH = "SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''jpg'' AS file_extension FROM users')"


class TwoDevices(Case):
    def test_a_saved_file_reaches_the_second_device_byte_identical(self):
        a, b = self.device("a"), self.device("b")
        for conn in (a, b):
            conn.execute(APP_SCHEMA)
            conn.execute(WATCH)
        data = os.urandom(300_000)
        a.execute("BEGIN")
        a.execute("INSERT INTO users(id, name, photo_id) VALUES (1, 'ann', attachment_save(?, 'jpg'))", (data,))
        a.execute("COMMIT")
        self.assertEqual(self.sync(a)["uploaded"], 1)
        photo_id = one(a, "SELECT photo_id FROM users")
        # The app's own data sync delivers the row to device B.
        b.execute("INSERT INTO users VALUES (1, 'ann', ?)", (photo_id,))
        summary = self.sync(b)
        self.assertEqual((summary["downloaded"], summary["pending"]), (1, 0))
        self.assertEqual(one(b, "SELECT state_name FROM attachment_queue WHERE id = ?", photo_id), "SYNCED")
        with open(one(b, "SELECT attachment_local_uri(?)", photo_id), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(one(b, "SELECT attachment_data(?)", photo_id), data)
        self.assertEqual(one(b, "SELECT media_type FROM attachment_queue"), "image/jpeg")

    def test_sync_runs_on_its_own_connection_and_the_host_sees_its_writes(self):
        a = self.device("a")
        a.execute("SELECT attachment_save(x'01', 'bin')")
        self.sync(a)
        # attachment_sync() committed on its own connection; this one sees the result.
        self.assertEqual(one(a, "SELECT state FROM attachments"), 3)
        # One SQLite in the process: the extension brought no copy of its own.
        with open("/proc/self/maps") as maps:
            libs = {line.split()[-1] for line in maps if "libsqlite3" in line}
        self.assertLessEqual(len(libs), 1, libs)

    def test_a_writer_without_the_extension_still_marks_watches(self):
        a = self.device("a")
        a.execute(APP_SCHEMA)
        a.execute(WATCH)
        plain = connect(os.path.join(self.dir, "a.db"), load=False)
        plain.execute("INSERT INTO users VALUES (1, 'bo', 'someone-elses-photo')")
        self.assertEqual(one(a, "SELECT dirty FROM _attachments_watch"), 1)
        summary = self.sync(a)
        self.assertEqual(summary["queued_downloads"], 1)
        self.assertEqual(one(a, "SELECT state_name FROM attachment_queue"), "ARCHIVED")
        self.assertIn("not in the remote", one(a, "SELECT last_error FROM attachment_queue"))


class Durability(Case):
    def test_rollback_leaves_no_row_and_verify_removes_the_orphan(self):
        a = self.device("a")
        a.execute("BEGIN")
        a.execute("SELECT attachment_save(x'0102', 'bin')")
        a.execute("ROLLBACK")
        self.assertEqual(one(a, "SELECT count(*) FROM attachments"), 0)
        files = os.path.join(self.dir, "files-a")
        self.assertEqual(len(files_in(files)), 1)
        self.age_files(files)
        self.assertEqual(one(a, "SELECT json_extract(attachment_verify(), '$.orphans_removed')"), 1)
        self.assertEqual(files_in(files), [])

    def test_a_process_killed_mid_transaction_loses_nothing_committed(self):
        a = self.device("a")
        a.execute("SELECT attachment_save(x'AA', 'bin')")  # committed before the crash
        script = textwrap.dedent(f"""
            import os, sqlite3
            c = sqlite3.connect({os.path.join(self.dir, 'a.db')!r}, isolation_level=None)
            c.enable_load_extension(True); c.load_extension({LIB!r})
            c.execute("BEGIN")
            c.execute("SELECT attachment_save(x'BB', 'bin')")
            os._exit(9)  # crash with the transaction open
        """)
        subprocess.run([sys.executable, "-c", script], check=False)
        self.assertEqual(one(a, "SELECT count(*) FROM attachments"), 1)
        files = os.path.join(self.dir, "files-a")
        self.assertEqual(len(files_in(files)), 2, "the crashed save's file is an orphan")
        self.age_files(files)
        a.execute("SELECT attachment_verify()")
        self.assertEqual(len(files_in(files)), 1)
        self.assertEqual(self.sync(a)["uploaded"], 1)

    def test_a_download_renamed_but_not_recorded_is_recovered_by_verify(self):
        a, b = self.device("a"), self.device("b")
        b.execute(APP_SCHEMA)
        b.execute(WATCH)
        photo = one(a, "SELECT attachment_save(?, 'jpg')", b"x" * 1000)
        self.sync(a)
        b.execute("INSERT INTO users VALUES (1, 'ann', ?)", (photo,))
        self.sync(b)
        # As if the process died after the rename and before its UPDATE committed.
        b.execute("UPDATE attachments SET state = 1, local_uri = NULL, size = NULL, sha256 = NULL")
        self.assertEqual(one(b, "SELECT json_extract(attachment_verify(), '$.repaired')"), 1)
        row = b.execute("SELECT state_name, size, local_uri IS NOT NULL FROM attachment_queue").fetchone()
        self.assertEqual(row, ("SYNCED", 1000, 1))

    def test_a_lost_local_copy_is_downloaded_again(self):
        a = self.device("a")
        a.execute(APP_SCHEMA)
        a.execute(WATCH)
        a.execute("INSERT INTO users VALUES (1, 'ann', attachment_save(?, 'jpg'))", (b"photo" * 100,))
        self.sync(a)
        os.remove(one(a, "SELECT attachment_local_uri(photo_id) FROM users"))
        self.assertIsNone(one(a, "SELECT attachment_local_uri(photo_id) FROM users"))
        self.assertEqual(one(a, "SELECT json_extract(attachment_verify(), '$.requeued')"), 1)
        self.assertEqual(self.sync(a)["downloaded"], 1)
        self.assertEqual(one(a, "SELECT attachment_data(photo_id) FROM users"), b"photo" * 100)

    def test_a_failing_remote_keeps_the_row_queued_with_its_error(self):
        blocker = os.path.join(self.dir, "not-a-dir")
        open(blocker, "w").close()
        a = self.device("a", remote=f"file://{blocker}/sub")
        a.execute("SELECT attachment_save(x'01', 'bin')")
        summary = self.sync(a)
        self.assertEqual((summary["failed"], summary["pending"]), (1, 1))
        state, attempts, error, due = a.execute(
            "SELECT state_name, attempts, last_error, next_attempt_at > 0 FROM attachment_queue").fetchone()
        self.assertEqual((state, attempts, due), ("QUEUED_UPLOAD", 1, 1))
        self.assertIn("remote directory", error)
        # An upload is never given up: after the remote is fixed and the backoff passes, it lands.
        a.execute("SELECT attachment_init(?)", (f'{{"local_dir":"files-a","remote":"file://{self.remote}"}}',))
        a.execute("UPDATE attachments SET next_attempt_at = 0")
        self.assertEqual(self.sync(a)["uploaded"], 1)
        self.assertEqual(one(a, "SELECT last_error FROM attachment_queue"), None)


class Surface(Case):
    def test_registered_functions(self):
        conn = connect(":memory:")
        names = {r[0] for r in conn.execute("SELECT name FROM pragma_function_list WHERE name LIKE 'attachment%'")}
        self.assertEqual(names, {
            "attachment_init", "attachment_save", "attachment_save_file", "attachment_delete",
            "attachment_local_uri", "attachment_data", "attachment_watch", "attachment_unwatch",
            "attachment_sync", "attachment_start_sync", "attachment_stop_sync", "attachment_verify",
            "attachment_expire_cache", "attachment_filename", "attachment_media_type", "attachment_reconcile",
            "attachment_retry", "attachment_version", "attachment_pin", "attachment_unpin", "attachment_cache",
            "attachment_pause", "attachment_resume", "attachment_fetch", "attachment_progress",
            "attachment_generate_key",
        })

    def test_reconcile_alone_queues_and_archives_without_transfers(self):
        a = self.device("a")
        a.execute(APP_SCHEMA)
        a.execute(WATCH)
        a.execute("INSERT INTO users VALUES (1, 'ann', 'photo-1'), (2, 'bo', 'photo-2')")
        self.assertEqual(json.loads(one(a, "SELECT attachment_reconcile()"))["queued_downloads"], 2)
        a.execute("UPDATE users SET photo_id = NULL WHERE id = 2")
        self.assertEqual(json.loads(one(a, "SELECT attachment_reconcile()"))["archived"], 1)
        self.assertEqual(a.execute("SELECT id, state_name FROM attachment_queue ORDER BY id").fetchall(),
                         [("photo-1", "QUEUED_DOWNLOAD"), ("photo-2", "ARCHIVED")])
        # Nothing changed: nothing to do.
        self.assertEqual(json.loads(one(a, "SELECT attachment_reconcile()"))["queued_downloads"], 0)
        # A second watch referencing photo-1 keeps it when the first goes away.
        a.execute("CREATE TABLE albums(cover TEXT)")
        a.execute("INSERT INTO albums VALUES ('photo-1')")
        a.execute("SELECT attachment_watch('covers', 'SELECT cover AS id, ''jpg'' AS file_extension FROM albums')")
        a.execute("SELECT attachment_unwatch('photos')")
        self.assertEqual(json.loads(one(a, "SELECT attachment_reconcile()"))["archived"], 0)
        a.execute("DELETE FROM albums")
        self.assertEqual(json.loads(one(a, "SELECT attachment_reconcile()"))["archived"], 1)

    def test_unwatch_drops_the_triggers(self):
        a = self.device("a")
        a.execute(APP_SCHEMA)
        a.execute(WATCH)
        # Insert, update, delete, and a row moved to a new rowid (refreshed row by row).
        self.assertEqual(one(a, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"), 4)
        self.assertEqual(one(a, "SELECT attachment_unwatch('photos')"), 1)
        self.assertEqual(one(a, "SELECT attachment_unwatch('photos')"), 0)
        self.assertEqual(one(a, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"), 0)

    def test_in_memory_databases_cannot_sync(self):
        conn = connect(":memory:")
        conn.execute("SELECT attachment_init(?)", (f'{{"local_dir":"{self.dir}/m","remote":"file://{self.remote}"}}',))
        with self.assertRaisesRegex(Exception, "needs a database file"):
            conn.execute("SELECT attachment_sync()")

    def test_a_queue_table_name_the_app_already_uses_is_refused_before_anything_is_written(self):
        # A user pointing `table` at one of their own tables (or views), in any letter case,
        # gets told so, and the database is left as it was: no half-made setup.
        for kind, ddl, name in (("table", "CREATE TABLE Photos(id INTEGER PRIMARY KEY, name TEXT)", "photos"),
                                ("view", "CREATE VIEW photos AS SELECT 1 AS id", "photos"),
                                ("index", "CREATE TABLE p2(x); CREATE INDEX photos ON p2(x)", "photos")):
            with self.subTest(kind):
                path = os.path.join(self.dir, f"taken-{kind}.db")
                conn = connect(path)
                conn.executescript(ddl)
                before = conn.execute("SELECT type, name FROM sqlite_schema ORDER BY name").fetchall()
                cfg = {"local_dir": f"files-{kind}", "remote": f"file://{self.remote}", "table": name}
                with self.assertRaisesRegex(Exception, rf"'table'.*'{name}' already names a {kind} of this database.*not an attachments queue table"):
                    conn.execute("SELECT attachment_init(?)", (json.dumps(cfg),))
                self.assertEqual(conn.execute("SELECT type, name FROM sqlite_schema ORDER BY name").fetchall(), before)
                self.assertFalse(os.path.exists(os.path.join(self.dir, f"files-{kind}")))
                # The same name, once free, works; and a queue table made by the extension
                # is of course accepted again (a second init).
                conn.executescript(f"DROP {kind.upper()} photos")
                conn.execute("SELECT attachment_init(?)", (json.dumps(cfg),))
                conn.execute("SELECT attachment_init(?)", (json.dumps(cfg),))
                self.assertEqual(one(conn, "SELECT count(*) FROM photos"), 0)
                conn.close()

    def test_a_temp_table_of_the_queue_name_is_refused_before_anything_is_written(self):
        conn = connect(os.path.join(self.dir, "temp.db"))
        conn.execute("CREATE TEMP TABLE Attachments(id INTEGER PRIMARY KEY, path TEXT)")
        cfg = {"local_dir": "files-temp", "remote": f"file://{self.remote}"}
        with self.assertRaisesRegex(Exception, r"'table'.*names a TEMP table of this connection"):
            conn.execute("SELECT attachment_init(?)", (json.dumps(cfg),))
        self.assertEqual(conn.execute("SELECT name FROM main.sqlite_schema").fetchall(), [])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "files-temp")))
        conn.execute("DROP TABLE temp.attachments")
        conn.execute("SELECT attachment_init(?)", (json.dumps(cfg),))


if __name__ == "__main__":
    unittest.main()
