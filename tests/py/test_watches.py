"""Watches: stored queries that cannot be turned against us, that never go blind,
and whose failures stop nothing else. Given-up downloads stay given up."""
import json
import os
import sqlite3
import time
import unittest

from helpers import Case, connect, one, files_in

# How long a share of the expiring-reference tests lives: long enough that saving, watching
# and the first sync (two fsyncs, verify) fit in it on a slow machine.
EXPIRES = 3.0

POSTS = "CREATE TABLE posts(id INTEGER PRIMARY KEY, data TEXT)"
PHOTOS = ("SELECT attachment_watch('photos', "
          "'SELECT json_extract(data, ''$.photo'') AS id, ''txt'' AS file_extension FROM posts')")


def plain(conn_path):
    """A connection without the extension: what another writer of the file has."""
    return sqlite3.connect(conn_path, isolation_level=None)


class Fixture(Case):
    def db(self, name):
        return os.path.join(self.dir, f"{name}.db")

    def save(self, conn, data=b"x", ext="txt"):
        return one(conn, "SELECT attachment_save(?, ?)", data, ext)

    def state(self, conn, id):
        return one(conn, "SELECT state_name FROM attachment_queue WHERE id = ?", id)

    def watches(self, conn):
        cur = conn.execute("SELECT * FROM attachment_watches ORDER BY name")
        cols = [d[0] for d in cur.description]
        return {r[0]: dict(zip(cols, r)) for r in cur.fetchall()}

    def remote_files(self):
        return sorted(os.listdir(self.remote)) if os.path.isdir(self.remote) else []


class StoredQueriesAreNotTrusted(Fixture):
    def test_a_hand_edited_query_cannot_read_files_outside_local_dir(self):
        a = self.device("a")
        a.execute(POSTS)
        a.execute(PHOTOS)
        secret = os.path.join(self.dir, "secret.txt")
        with open(secret, "w") as f:
            f.write("do not upload me")
        evil = f"SELECT attachment_save_file('{secret}', 'txt') AS id"
        # Another writer (no extension loaded) rewrites the stored watch.
        w = plain(self.db("a"))
        w.execute("UPDATE _attachments_watch SET query = ?, select_sql = ?, dirty = 1",
                  (evil, f"SELECT CAST(w.id AS TEXT) AS id, NULL AS file_extension, NULL AS media_type, "
                         f"NULL AS meta_data FROM ({evil}) AS w"))
        w.close()
        summary = self.sync(a)
        self.assertEqual(summary["uploaded"], 0)
        self.assertEqual(self.remote_files(), [])
        self.assertEqual(one(a, "SELECT count(*) FROM attachments"), 0)
        self.assertEqual(files_in(os.path.join(self.dir, "files-a")), [])
        watch = self.watches(a)["photos"]
        self.assertEqual(watch["state"], "failed")
        self.assertIn("attachment_save_file", watch["last_error"])

    def test_a_hand_edited_query_cannot_delete_or_save(self):
        a = self.device("a")
        a.execute(POSTS)
        kept = self.save(a)
        a.execute("INSERT INTO posts(data) VALUES (json_object('photo', ?))", (kept,))
        a.execute(PHOTOS)
        self.assertEqual(self.sync(a)["uploaded"], 1)
        w = plain(self.db("a"))
        for evil in (f"SELECT attachment_delete('{kept}') AS id",
                     "SELECT attachment_save(x'01', 'txt') AS id"):
            w.execute("UPDATE _attachments_watch SET query = ?, select_sql = ?, dirty = 1",
                      (evil, f"SELECT CAST(w.id AS TEXT) AS id, NULL AS file_extension, NULL AS media_type, "
                             f"NULL AS meta_data FROM ({evil}) AS w"))
            self.sync(a)
        self.assertEqual(one(a, "SELECT count(*) FROM attachments"), 1, "nothing saved")
        self.assertEqual(self.state(a, kept), "SYNCED", "nothing deleted")
        self.assertEqual(self.remote_files(), [f"{kept}.txt"])

    def test_attachment_watch_refuses_functions_that_write_or_read_files(self):
        a = self.device("a")
        a.execute(POSTS)
        for fn in ("attachment_delete(''x'')", "attachment_save(x''01'', ''txt'')",
                   "attachment_save_file(''/etc/hostname'', ''txt'')", "attachment_sync()",
                   "load_extension(''x'')"):
            with self.assertRaisesRegex(sqlite3.Error, "may not call") as e:
                a.execute(f"SELECT attachment_watch('w', 'SELECT {fn} AS id FROM posts')")
            self.assertIn(fn.split("(")[0], str(e.exception))
        self.assertEqual(one(a, "SELECT count(*) FROM _attachments_watch"), 0)
        # The pure helpers are allowed.
        one(a, "SELECT attachment_watch('w', 'SELECT id, attachment_media_type(attachment_filename(id, ''jpg'')) AS media_type FROM posts')")


class QueriesThatNeverEnd(Fixture):
    def setUp(self):
        super().setUp()
        os.environ["SQLITE_ATTACHMENTS_WATCH_TIME_LIMIT_MS"] = "1000"

    def tearDown(self):
        del os.environ["SQLITE_ATTACHMENTS_WATCH_TIME_LIMIT_MS"]
        super().tearDown()

    def test_an_endless_recursive_cte_is_stopped(self):
        a = self.device("a")
        a.execute(POSTS)
        endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n AS id FROM r"
        started = time.monotonic()
        with self.assertRaisesRegex(sqlite3.Error, "stop condition"):
            a.execute("SELECT attachment_watch('w', ?)", (endless,))
        # Stored by another writer: the pass stops it, marks it failed, and moves the rest.
        a.execute(PHOTOS)
        w = plain(self.db("a"))
        w.execute("UPDATE _attachments_watch SET query = ?, dirty = 1", (endless,))
        w.close()
        self.save(a)
        self.assertEqual(self.sync(a)["uploaded"], 1)
        self.assertIn("stop condition", self.watches(a)["photos"]["last_error"])
        self.assertLess(time.monotonic() - started, 20)


class HostConnectionIsLeftAlone(Fixture):
    def test_the_host_authorizer_still_fires_after_attachment_watch(self):
        a = self.device("a")
        a.execute(POSTS)
        seen = []

        def authorizer(action, arg1, arg2, dbname, source):
            seen.append((action, arg1))
            return sqlite3.SQLITE_OK

        a.set_authorizer(authorizer)
        a.execute(PHOTOS)
        seen.clear()
        a.execute("SELECT count(*) FROM posts").fetchone()
        self.assertIn((sqlite3.SQLITE_READ, "posts"), seen)

    def test_a_table_created_in_the_open_transaction_gets_a_clear_error(self):
        a = self.device("a")
        a.execute("BEGIN")
        a.execute(POSTS)
        with self.assertRaisesRegex(sqlite3.Error, "commit"):
            a.execute(PHOTOS)
        a.execute("ROLLBACK")

    def test_in_memory_databases_cannot_watch(self):
        conn = connect(":memory:")
        conn.execute("SELECT attachment_init(?)",
                     (json.dumps({"local_dir": f"{self.dir}/m", "remote": f"file://{self.remote}"}),))
        conn.execute(POSTS)
        with self.assertRaisesRegex(sqlite3.Error, "needs a database file"):
            conn.execute(PHOTOS)


class FailingWatchesStopNothingElse(Fixture):
    def test_a_poison_row_fails_only_its_watch(self):
        a = self.device("a")
        a.execute(POSTS)
        a.execute("CREATE TABLE docs(file TEXT)")
        photo, doc = self.save(a), self.save(a)
        a.execute("INSERT INTO posts(data) VALUES (json_object('photo', ?))", (photo,))
        a.execute("INSERT INTO docs VALUES (?)", (doc,))
        a.execute(PHOTOS)
        a.execute("SELECT attachment_watch('docs', 'SELECT file AS id, ''txt'' AS file_extension FROM docs')")
        self.assertEqual(self.sync(a)["uploaded"], 2)
        a.execute("INSERT INTO posts(data) VALUES ('{not json')")
        unrelated = self.save(a)
        a.execute("DELETE FROM docs")
        summary = self.sync(a)
        self.assertEqual(summary["uploaded"], 1, "unrelated uploads go on")
        self.assertEqual(self.state(a, unrelated), "ARCHIVED", "uploaded, and referenced by no watch")
        self.assertEqual(self.state(a, doc), "ARCHIVED", "the other watch goes on")
        self.assertEqual(self.state(a, photo), "SYNCED", "the failed watch keeps its last good ids")
        w = self.watches(a)
        self.assertEqual((w["photos"]["state"], w["docs"]["state"]), ("failed", "ok"))
        self.assertIn("JSON", w["photos"]["last_error"])
        self.assertIsNotNone(w["photos"]["last_run"])
        # Fixing the row brings the watch back.
        a.execute("DELETE FROM posts WHERE data = '{not json'")
        self.sync(a)
        w = self.watches(a)
        self.assertEqual((w["photos"]["state"], w["photos"]["last_error"]), ("ok", None))

    def test_attachment_watch_refuses_a_query_that_fails_when_it_runs(self):
        a = self.device("a")
        a.execute(POSTS)
        a.execute("INSERT INTO posts(data) VALUES ('{not json')")
        with self.assertRaisesRegex(sqlite3.Error, "fails when it runs.*JSON"):
            a.execute(PHOTOS)
        self.assertEqual(one(a, "SELECT count(*) FROM _attachments_watch"), 0)

    def test_a_blob_media_type_does_not_stop_transfers(self):
        a, b = self.device("a"), self.device("b")
        photo = self.save(a, b"hello")
        self.sync(a)
        b.execute("CREATE TABLE refs(id TEXT)")
        b.execute("INSERT INTO refs VALUES (?)", (photo,))
        b.execute("SELECT attachment_watch('w', 'SELECT id, ''txt'' AS file_extension, "
                  "CAST(''text/plain'' AS BLOB) AS media_type, CAST(''{}'' AS BLOB) AS meta_data FROM refs')")
        summary = self.sync(b)
        self.assertEqual((summary["downloaded"], summary["failed"]), (1, 0))
        self.assertEqual(one(b, "SELECT typeof(media_type) || typeof(meta_data) FROM attachments"), "texttext")


class WatchesNeverGoBlind(Fixture):
    def test_a_migrated_table_is_watched_again(self):
        a = self.device("a")
        a.execute(POSTS)
        a.execute(PHOTOS)
        self.sync(a)
        # The usual migration: create new, copy, drop, rename (here by a writer without the extension).
        w = plain(self.db("a"))
        w.executescript("""
            BEGIN;
            CREATE TABLE posts_new(id INTEGER PRIMARY KEY, data TEXT, extra TEXT);
            INSERT INTO posts_new(id, data) SELECT id, data FROM posts;
            DROP TABLE posts;
            ALTER TABLE posts_new RENAME TO posts;
            COMMIT;""")
        w.execute("""INSERT INTO posts(data) VALUES ('{"photo":"p-1"}')""")
        w.close()
        self.assertEqual(json.loads(one(a, "SELECT attachment_reconcile()"))["queued_downloads"], 1)
        # Insert, update, delete, and a row moved to a new rowid (the watch is refreshed row by row).
        self.assertEqual(one(a, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'posts'"), 4)
        # And later changes are seen through the re-created triggers.
        a.execute("""INSERT INTO posts(data) VALUES ('{"photo":"p-2"}')""")
        self.assertEqual(json.loads(one(a, "SELECT attachment_reconcile()"))["queued_downloads"], 1)

    def test_trigger_names_of_different_watches_do_not_collide(self):
        a = self.device("a")
        a.execute("CREATE TABLE c(x TEXT)")
        a.execute("CREATE TABLE b_c(x TEXT)")
        a.execute("SELECT attachment_watch('a_b', 'SELECT x AS id FROM c')")
        a.execute("SELECT attachment_watch('a', 'SELECT x AS id FROM b_c')")
        self.assertEqual(one(a, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"), 8)
        a.execute("SELECT attachment_unwatch('a')")
        self.assertEqual(one(a, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"), 4)
        a.execute("INSERT INTO c VALUES ('c-1')")
        self.assertEqual(json.loads(one(a, "SELECT attachment_reconcile()"))["queued_downloads"], 1)
        # SQLite compares trigger names without case, so watch names may not differ only in case.
        with self.assertRaisesRegex(sqlite3.Error, "only in case"):
            a.execute("SELECT attachment_watch('A_B', 'SELECT x AS id FROM c')")

    def test_triggers_of_an_earlier_build_are_replaced(self):
        a = self.device("a")
        a.execute(POSTS)
        a.execute(PHOTOS)
        # As an earlier build left it: old names, listed in the watch row only.
        w = plain(self.db("a"))
        for (name,) in w.execute("SELECT name FROM _attachments_trigger").fetchall():
            w.execute(f'DROP TRIGGER "{name}"')
        w.execute("DELETE FROM _attachments_trigger")
        w.execute("""CREATE TRIGGER _attachments_trg_photos_posts_ins AFTER INSERT ON posts BEGIN
                       UPDATE _attachments_watch SET dirty = 1 WHERE name = 'photos' AND dirty != 1; END""")
        w.execute("""UPDATE _attachments_watch SET triggers = '["_attachments_trg_photos_posts_ins"]'""")
        w.close()
        self.sync(a)
        self.assertEqual(sorted(r[0] for r in a.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger'")),
                         ["_attachments_trg_photos.posts.del", "_attachments_trg_photos.posts.ins",
                          "_attachments_trg_photos.posts.mov", "_attachments_trg_photos.posts.upd"])

    def _expiring(self, a, seconds, options=None):
        """A saved, uploaded file referenced by a row that expires in `seconds`."""
        a.execute("CREATE TABLE shares(file TEXT, expires REAL)")
        file = self.save(a)
        a.execute("INSERT INTO shares VALUES (?, julianday('now') + ? / 86400.0)", (file, seconds))
        args = ["shares", "SELECT file AS id, 'txt' AS file_extension FROM shares WHERE expires > julianday('now')"]
        if options is not None:
            args.append(json.dumps(options))
        a.execute(f"SELECT attachment_watch({', '.join('?' * len(args))})", args)
        self.assertEqual(self.sync(a)["uploaded"], 1)
        return file

    def test_an_explicit_sync_reruns_every_watch(self):
        a = self.device("a")
        file = self._expiring(a, EXPIRES)
        time.sleep(EXPIRES + 0.5)
        self.assertEqual(self.sync(a)["archived"], 1)
        self.assertEqual(self.state(a, file), "ARCHIVED")

    def test_refresh_ms_reruns_a_time_dependent_watch(self):
        a = self.device("a")
        file = self._expiring(a, EXPIRES, {"refresh_ms": 500})
        self.assertEqual(self.watches(a)["shares"]["options"], '{"refresh_ms":500}')
        time.sleep(EXPIRES + 0.5)
        self.assertEqual(json.loads(one(a, "SELECT attachment_reconcile()"))["archived"], 1)
        self.assertEqual(self.state(a, file), "ARCHIVED")

    def test_without_refresh_ms_an_idle_watch_is_not_rerun(self):
        a = self.device("a")
        file = self._expiring(a, EXPIRES)
        run = self.watches(a)["shares"]["last_run"]
        time.sleep(EXPIRES + 0.5)
        self.assertEqual(json.loads(one(a, "SELECT attachment_reconcile()"))["archived"], 0)
        self.assertEqual(self.watches(a)["shares"]["last_run"], run)
        self.assertEqual(self.state(a, file), "SYNCED")

    def test_options_are_checked(self):
        a = self.device("a")
        a.execute(POSTS)
        q = "SELECT json_extract(data, '$.photo') AS id FROM posts"
        for options, error in (("not json", "options"), ('{"colour": 1}', "colour"),
                               ('{"refresh_ms": "soon"}', "refresh_ms"), ('{"refresh_ms": 0}', "refresh_ms"),
                               ('{"download": 1}', "download"), ('{"priority": 1.5}', "priority"),
                               ('{"max_download_size": -1}', "max_download_size"), ("[]", "object")):
            with self.assertRaisesRegex(sqlite3.Error, error):
                a.execute("SELECT attachment_watch('w', ?, ?)", (q, options))
        a.execute("SELECT attachment_watch('w', ?, ?)",
                  (q, '{"download": true, "priority": 2, "max_download_size": 1000, "refresh_ms": 60000}'))
        w = self.watches(a)["w"]
        self.assertEqual(json.loads(w["options"]),
                         {"download": True, "priority": 2, "max_download_size": 1000, "refresh_ms": 60000})
        self.assertEqual((w["state"], w["last_error"], w["incremental"], w["query"]), ("ok", None, 1, q))

    def test_a_watch_with_download_false_references_without_downloading(self):
        a = self.device("a")
        a.execute("CREATE TABLE thumbs(id TEXT)")
        a.execute("CREATE TABLE originals(id TEXT)")
        a.execute("INSERT INTO thumbs VALUES ('x-1'), ('x-2')")
        a.execute("""SELECT attachment_watch('thumbs', 'SELECT id FROM thumbs', '{"download": false}')""")
        a.execute("SELECT attachment_watch('originals', 'SELECT id FROM originals')")
        self.assertEqual(json.loads(one(a, "SELECT attachment_reconcile()"))["queued_downloads"], 0)
        # Another watch that downloads wins for the ids it references.
        a.execute("INSERT INTO originals VALUES ('x-2')")
        self.assertEqual(json.loads(one(a, "SELECT attachment_reconcile()"))["queued_downloads"], 1)
        self.assertEqual(a.execute("SELECT id FROM attachment_queue").fetchall(), [("x-2",)])

    def test_recursive_ctes_are_supported(self):
        a = self.device("a")
        a.execute(POSTS)
        a.execute("INSERT INTO posts(data) VALUES ('p')")
        n = one(a, "SELECT attachment_watch('w', 'WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
                   "SELECT data || n AS id FROM posts, r WHERE EXISTS (SELECT 1 FROM r)')")
        self.assertEqual(n, 3)
        self.assertEqual(json.loads(one(a, "SELECT attachment_reconcile()"))["queued_downloads"], 3)
        # A table read without any column is still watched.
        self.assertEqual(one(a, "SELECT attachment_watch('k', 'SELECT ''k-1'' AS id FROM posts LIMIT 1')"), 1)
        self.assertEqual(one(a, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'posts'"), 6)


class FindingsOfTheFirstReview(Fixture):
    def test_a_new_watch_that_fails_at_once_archives_nothing(self):
        a = self.device("a", archived_cache_limit=0)
        a.execute("CREATE TABLE j(d TEXT)")
        files = [self.save(a), self.save(a)]
        for f in files:
            a.execute("INSERT INTO j VALUES (json_object('f', ?))", (f,))
        self.assertEqual(self.sync(a)["uploaded"], 2)
        a.execute("SELECT attachment_watch('wj', 'SELECT json_extract(d, ''$.f'') AS id, ''txt'' AS file_extension FROM j')")
        a.execute("INSERT INTO j VALUES ('{bad')")
        summary = self.sync(a)
        self.assertEqual(self.watches(a)["wj"]["state"], "failed")
        self.assertEqual(summary["archived"], 0)
        self.assertEqual([self.state(a, f) for f in files], ["SYNCED", "SYNCED"])
        self.assertEqual(len(files_in(os.path.join(self.dir, "files-a"))), 2)
        # Fixed: what it does not reference is archived then, in the same comparison.
        a.execute("DELETE FROM j WHERE d = '{bad' OR json_extract(d, '$.f') = ?", (files[0],))
        self.sync(a)
        self.assertEqual(self.watches(a)["wj"]["state"], "ok")
        self.assertEqual(one(a, "SELECT count(*) FROM attachment_queue WHERE id = ?", files[0]), 0,
                         "archived, then expired by archived_cache_limit 0")
        self.assertEqual(self.state(a, files[1]), "SYNCED")

    def test_an_unreferenced_upload_is_archived_by_the_sync_that_uploads_it(self):
        a = self.device("a")
        a.execute("CREATE TABLE refs(id TEXT)")
        a.execute("SELECT attachment_watch('w', 'SELECT id FROM refs')")
        self.sync(a)
        kept, loose = self.save(a), self.save(a)
        a.execute("INSERT INTO refs VALUES (?)", (kept,))
        summary = self.sync(a)
        self.assertEqual((summary["uploaded"], summary["archived"]), (2, 1))
        self.assertEqual((self.state(a, kept), self.state(a, loose)), ("SYNCED", "ARCHIVED"))

    def test_options_refuse_a_key_given_twice(self):
        a = self.device("a")
        a.execute(POSTS)
        with self.assertRaisesRegex(sqlite3.Error, "priority.*more than once"):
            a.execute("SELECT attachment_watch('w', 'SELECT data AS id FROM posts', '{\"priority\": 1, \"priority\": 2}')")
        self.assertEqual(one(a, "SELECT count(*) FROM _attachments_watch"), 0)

    def test_the_worker_reruns_every_watch_now_and_then(self):
        # What no trigger sees (here: time) is caught by the worker's periodic full re-run,
        # at most every max(sync_interval_ms, 60 s); shortened for the test.
        os.environ["SQLITE_ATTACHMENTS_RECHECK_MS"] = "500"
        try:
            a = self.device("a", sync_interval_ms=200)
            file = self._expiring(a, EXPIRES)
            self.assertEqual(one(a, "SELECT attachment_start_sync()"), 1)
            self.started.append(a)
            deadline = time.time() + 10
            while time.time() < deadline and self.state(a, file) != "ARCHIVED":
                time.sleep(0.1)
            self.assertEqual(self.state(a, file), "ARCHIVED")
        finally:
            del os.environ["SQLITE_ATTACHMENTS_RECHECK_MS"]

    _expiring = WatchesNeverGoBlind._expiring


class GivingUpIsFinal(Fixture):
    def test_a_given_up_download_is_not_fetched_again_until_retried(self):
        a = self.device("a")
        a.execute("CREATE TABLE refs(id TEXT)")
        a.execute("INSERT INTO refs VALUES ('gone-1')")
        a.execute("SELECT attachment_watch('w', 'SELECT id, ''txt'' AS file_extension FROM refs')")
        first = self.sync(a)
        self.assertEqual((first["failed"], self.state(a, "gone-1")), (1, "ARCHIVED"))
        for _ in range(3):
            s = self.sync(a)
            self.assertEqual((s["restored"], s["failed"], s["downloaded"]), (0, 0, 0), s)
        # The file turns up; the app asks again.
        os.makedirs(self.remote, exist_ok=True)
        with open(os.path.join(self.remote, "gone-1.txt"), "wb") as f:
            f.write(b"here now")
        self.assertEqual(one(a, "SELECT attachment_retry('gone-1')"), 1)
        self.assertEqual(a.execute("SELECT state_name, attempts, next_attempt_at FROM attachment_queue").fetchone(),
                         ("QUEUED_DOWNLOAD", 0, 0))
        self.assertEqual(self.sync(a)["downloaded"], 1)
        self.assertEqual(self.state(a, "gone-1"), "SYNCED")

    def test_retry_null_brings_every_failed_row_back_at_once(self):
        blocker = os.path.join(self.dir, "not-a-dir")
        open(blocker, "w").close()
        a = self.device("a", remote=f"file://{blocker}/sub")
        ids = [self.save(a), self.save(a)]
        self.assertEqual(self.sync(a)["failed"], 2)
        self.assertTrue(all(n > 0 for (n,) in a.execute("SELECT next_attempt_at FROM attachment_queue")))
        self.assertEqual(one(a, "SELECT attachment_retry(NULL)"), 2)
        self.assertEqual(a.execute("SELECT DISTINCT attempts, next_attempt_at, state_name FROM attachment_queue").fetchall(),
                         [(0, 0, "QUEUED_UPLOAD")])
        self.assertEqual(one(a, "SELECT attachment_retry('no-such-id')"), 0)
        with self.assertRaisesRegex(sqlite3.Error, "id must be TEXT"):
            a.execute("SELECT attachment_retry(1)")
        self.assertEqual(len(ids), 2)

    def test_a_restored_never_uploaded_row_is_uploaded_not_marked_synced(self):
        a = self.device("a")
        a.execute("CREATE TABLE refs(id TEXT)")
        file = self.save(a)
        # Archived before it was ever uploaded (as an earlier build or a crash could leave it).
        a.execute("UPDATE attachments SET state = 4 WHERE id = ?", (file,))
        a.execute("INSERT INTO refs VALUES (?)", (file,))
        a.execute("SELECT attachment_watch('w', 'SELECT id, ''txt'' AS file_extension FROM refs')")
        json.loads(one(a, "SELECT attachment_reconcile()"))
        self.assertEqual(self.state(a, file), "QUEUED_UPLOAD")
        self.assertEqual(self.sync(a)["uploaded"], 1)
        self.assertEqual(self.remote_files(), [f"{file}.txt"])


if __name__ == "__main__":
    unittest.main()
