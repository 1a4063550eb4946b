"""Upgrades: a database written by an earlier release is migrated once, keeping every
row and file; one written by a newer release is refused. The fixture in
tests/fixtures/ was written by the 0.1.0 build (tests/fixtures/make_schema_v1.py)."""
import hashlib
import json
import os
import re
import shutil
import sqlite3
import unittest

from helpers import LIB, ROOT, Case, connect, files_in, one

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SYNCED, ARCHIVED = "e293846e-218d-4f01-ac98-ee130bccc730", "b96ff28d-292b-40c0-b3f2-0692ad455f06"
QUEUED_UPLOAD, QUEUED_DELETE = "46641672-407e-42b8-bc5c-04aab56fd7e9", "18c2d602-fd4c-487c-a1cb-79b5fb530656"
QUEUED_DOWNLOAD = "remote0001"


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)


class Upgrade(Case):
    def setUp(self):
        super().setUp()
        self.db = os.path.join(self.dir, "app.db")
        shutil.copy(os.path.join(FIXTURES, "schema-v1.db"), self.db)
        shutil.copytree(os.path.join(FIXTURES, "schema-v1-files"), os.path.join(self.dir, "schema-v1-files"))
        shutil.copytree(os.path.join(FIXTURES, "schema-v1-remote"), self.remote)
        # The fixture's remote was a folder of the machine that wrote it; point it here
        # (plain SQLite, no extension: the stored config is JSON).
        plain = sqlite3.connect(self.db, isolation_level=None)
        plain.execute("UPDATE _attachments_config SET config = json_set(config, '$.remote', ?)", ("file://" + self.remote,))
        plain.close()
        self.local = os.path.join(self.dir, "schema-v1-files")

    def plain(self, sql, *args):
        conn = sqlite3.connect(self.db, isolation_level=None)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def schema_version(self):
        return self.plain("SELECT schema_version FROM _attachments_config")[0][0]

    def known_schema(self, conn):
        return int(re.search(r"\(schema (\d+)\)", one(conn, "SELECT attachment_version()")).group(1))

    def layout(self, path):
        """Every table's columns (name, type, notnull, default, pk) and every index, by name."""
        conn = sqlite3.connect(path)
        try:
            out = {}
            for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != 'users'"):
                out[name] = sorted(conn.execute("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?)", (name,)).fetchall())
            out["indexes"] = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index' AND name NOT LIKE 'sqlite_%'"))
            return out
        finally:
            conn.close()

    def fresh_layout(self):
        """The layout this build gives a new database with the same config."""
        path = os.path.join(self.dir, "fresh.db")
        conn = connect(path)
        conn.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "fresh-files", "remote": "file://" + self.remote}),))
        conn.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, photo_id TEXT)")
        conn.execute("SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''jpg'' AS file_extension FROM users WHERE photo_id IS NOT NULL')")
        conn.close()
        return self.layout(path)

    def check_migrated(self, conn):
        self.assertEqual(self.schema_version(), self.known_schema(conn))
        self.assertEqual(self.layout(self.db), self.fresh_layout())

    def test_a_sync_migrates_once_and_keeps_every_row_and_file(self):
        self.assertEqual(self.schema_version(), 1)
        before = dict((r[0], r[1:]) for r in self.plain("SELECT id, filename, sha256, size, meta_data, has_synced FROM attachments"))
        conn = connect(self.db)
        summary = self.sync(conn)
        self.check_migrated(conn)
        self.assertEqual((summary["uploaded"], summary["downloaded"], summary["deleted"]), (1, 1, 1), summary)
        states = dict(conn.execute("SELECT id, state_name FROM attachment_queue").fetchall())
        self.assertEqual(states, {SYNCED: "SYNCED", ARCHIVED: "ARCHIVED", QUEUED_UPLOAD: "SYNCED", QUEUED_DOWNLOAD: "SYNCED"})
        after = dict((r[0], r[1:]) for r in self.plain("SELECT id, filename, sha256, size, meta_data, has_synced FROM attachments"))
        for id in (SYNCED, ARCHIVED):
            self.assertEqual(after[id], before[id])
        self.assertEqual(after[SYNCED][3], '{"note":"kept"}')
        # Files: the local copies kept, the upload made, the download arrived, the delete done.
        for id, name in ((SYNCED, SYNCED + ".jpg"), (ARCHIVED, ARCHIVED + ".pdf"), (QUEUED_UPLOAD, QUEUED_UPLOAD + ".jpg")):
            with open(os.path.join(self.local, name), "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), after[id][1])
        with open(os.path.join(self.remote, QUEUED_UPLOAD + ".jpg"), "rb") as f:
            self.assertEqual(f.read(), b"not yet uploaded")
        with open(one(conn, "SELECT attachment_local_uri(?)", QUEUED_DOWNLOAD), "rb") as f:
            self.assertEqual(f.read(), b"from another device")
        self.assertFalse(os.path.exists(os.path.join(self.remote, QUEUED_DELETE + ".jpg")))
        self.assertNotIn(QUEUED_DELETE + ".jpg", files_in(self.local))
        # The watch still works: a new reference is downloaded.
        self.assertEqual(conn.execute("SELECT name, state FROM attachment_watches").fetchall(), [("photos", "ok")])
        conn.execute("UPDATE users SET photo_id = ? WHERE id = 2", (ARCHIVED,))
        self.sync(conn)
        self.assertEqual(one(conn, "SELECT state_name FROM attachment_queue WHERE id = ?", ARCHIVED), "SYNCED")

    def test_b_init_migrates_in_the_callers_transaction(self):
        conn = connect(self.db)
        config = one(conn, "SELECT config FROM _attachments_config")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SELECT attachment_init(?)", (config,))
        conn.execute("ROLLBACK")
        self.assertEqual(self.schema_version(), 1)
        conn.execute("SELECT attachment_init(?)", (config,))
        self.check_migrated(conn)
        self.assertEqual(one(conn, "SELECT count(*) FROM attachments"), 5)

    def test_c_tables_of_builds_before_the_marker_get_their_columns(self):
        # The earliest layouts lacked these columns (SQLite 3.35+ can drop them to make one).
        for table, column in (("attachments", "upload_resume"), ("attachments", "bytes_done"), ("attachments", "given_up"),
                              ("_attachments_ref", "filename"), ("_attachments_ref", "guessed_type"),
                              ("_attachments_watch", "incremental"), ("_attachments_watch", "last_run"),
                              ("_attachments_watch", "last_error"), ("_attachments_watch", "state"),
                              ("_attachments_watch", "refresh_ms"), ("_attachments_watch", "options")):
            self.plain(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn = connect(self.db)
        summary = self.sync(conn)
        self.check_migrated(conn)
        self.assertEqual((summary["uploaded"], summary["downloaded"], summary["deleted"]), (1, 1, 1), summary)
        self.assertEqual(one(conn, "SELECT count(*) FROM attachments"), 4)

    def test_e_cache_functions_and_the_queue_work_before_any_migration(self):
        # A database of an earlier build, opened by this one: no init, no pass yet.
        ids = [r[0] for r in self.plain("SELECT id FROM attachments ORDER BY id")]
        conn = connect(self.db)
        rows = conn.execute("SELECT id, pinned, last_used FROM attachment_queue ORDER BY id").fetchall()
        self.assertEqual([r[0] for r in rows], ids)
        self.assertEqual({r[1] for r in rows}, {0})
        self.assertEqual(self.schema_version(), 1, "a read does not migrate")
        report = json.loads(one(conn, "SELECT attachment_cache()"))
        self.assertIn("next_expiry", report)
        self.check_migrated(conn)
        self.assertEqual(one(conn, "SELECT attachment_pin(?)", ids[0]), 1)
        self.assertEqual(one(conn, "SELECT attachment_unpin(?)", ids[0]), 1)
        for fn in ("attachment_cache()", "attachment_pin(?)", "attachment_unpin(?)", "attachment_expire_cache()",
                   "attachment_save(x'01', 'bin')", "attachment_verify()"):
            with self.subTest(fn=fn):
                fresh = os.path.join(self.dir, "fresh.db")
                shutil.copy(os.path.join(FIXTURES, "schema-v1.db"), fresh)
                c = connect(fresh)
                c.execute(f"SELECT {fn}", (ids[0],) if "?" in fn else ())
                c.close()
                os.remove(fresh)

    def test_f_a_read_only_connection_says_the_database_needs_a_writable_open_first(self):
        # Datasette and `mode=ro` readers of a database an earlier build wrote: functions that
        # would migrate cannot, and say what to do instead of "attempt to write a readonly database".
        ro = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        ro.enable_load_extension(True)
        ro.load_extension(LIB)
        with self.assertRaises(sqlite3.Error) as e:
            ro.execute("SELECT attachment_cache()").fetchone()
        self.assertIn("read-only connection cannot upgrade it", str(e.exception))
        self.assertIn("attachment_init", str(e.exception))
        self.assertEqual(self.schema_version(), 1)

    def test_d_a_newer_schema_is_refused(self):
        self.plain("UPDATE _attachments_config SET schema_version = 999")
        before = self.plain("SELECT * FROM attachments ORDER BY id")
        files = sorted(files_in(self.local))
        conn = connect(self.db)
        known = self.known_schema(conn)
        config = one(conn, "SELECT config FROM _attachments_config")
        calls = [("SELECT attachment_sync()", ()), ("SELECT attachment_init(?)", (config,)),
                 ("SELECT attachment_save(x'00', 'bin')", ()), ("SELECT attachment_start_sync()", ()),
                 ("SELECT attachment_verify()", ()), ("SELECT attachment_local_uri(?)", (SYNCED,))]
        for sql, args in calls:
            with self.subTest(sql=sql):
                with self.assertRaises(sqlite3.OperationalError) as e:
                    conn.execute(sql, args).fetchall()
                self.assertIn(f"created by a newer sqlite-attachments (schema 999, this build knows {known})", str(e.exception))
                self.assertEqual(e.exception.sqlite_errorcode, sqlite3.SQLITE_ERROR)
        self.assertEqual(self.plain("SELECT * FROM attachments ORDER BY id"), before)
        self.assertEqual(sorted(files_in(self.local)), files)
        self.assertEqual(self.schema_version(), 999)


class Version(Case):
    def test_version_names_the_release_and_schema(self):
        conn = connect(":memory:")
        text = one(conn, "SELECT attachment_version()")
        self.assertRegex(text, r"^sqlite-attachments \d+\.\d+\.\d+ \(schema \d+\)$")
        self.assertTrue(text.startswith(f"sqlite-attachments {cargo_version()} "), text)


if __name__ == "__main__":
    unittest.main()
