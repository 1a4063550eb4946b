"""Per-watch policies: download, priority, max_download_size. An id several watches
reference takes the most generous policy; `download_attachments: false` overrides all.
Real files through the file:// remote."""
import json
import os
import unittest

from helpers import Case, one


class Policies(Case):
    def publish(self, name, data=b"x"):
        """A file another device uploaded: in remote storage, not here."""
        os.makedirs(self.remote, exist_ok=True)
        with open(os.path.join(self.remote, name), "wb") as f:
            f.write(data)

    def reconcile(self, conn):
        return json.loads(one(conn, "SELECT attachment_reconcile()"))

    def rows(self, conn):
        return dict(conn.execute("SELECT id, state_name FROM attachment_queue ORDER BY id").fetchall())

    def test_photos_before_videos(self):
        a = self.device("a", max_concurrency=1)
        a.execute("CREATE TABLE media(id TEXT, kind TEXT)")
        # The videos' ids sort first and they are queued first: priority alone puts photos ahead.
        videos = [f"a-video-{i}" for i in range(4)]
        photos = [f"z-photo-{i}" for i in range(4)]
        for v in videos:
            self.publish(f"{v}.bin", b"v" * 1000)
            a.execute("INSERT INTO media VALUES (?, 'video')", (v,))
        a.execute("SELECT attachment_watch('videos', 'SELECT id, ''bin'' AS file_extension FROM media WHERE kind = ''video''')")
        self.assertEqual(self.reconcile(a)["queued_downloads"], 4)
        for p in photos:
            self.publish(f"{p}.bin", b"p" * 10)
            a.execute("INSERT INTO media VALUES (?, 'photo')", (p,))
        a.execute("""SELECT attachment_watch('photos', 'SELECT id, ''bin'' AS file_extension FROM media WHERE kind = ''photo''',
                                             '{"priority": 10}')""")
        self.assertEqual(self.reconcile(a)["queued_downloads"], 4)
        self.assertEqual(dict(a.execute("SELECT id, priority FROM attachment_queue").fetchall()),
                         {**{v: 0 for v in videos}, **{p: 10 for p in photos}})
        self.assertEqual(self.sync(a)["downloaded"], 8)
        folder = os.path.join(self.dir, "files-a")
        done = sorted(photos + videos, key=lambda i: os.stat(os.path.join(folder, f"{i}.bin")).st_mtime_ns)
        self.assertEqual(sorted(done[:4]), photos, f"download order: {done}")

    def test_an_id_takes_the_highest_priority_of_its_watches_and_loses_it_with_them(self):
        a = self.device("a")
        a.execute("CREATE TABLE low(id TEXT)")
        a.execute("CREATE TABLE high(id TEXT)")
        a.execute("INSERT INTO low VALUES ('both-1'), ('low-1')")
        a.execute("INSERT INTO high VALUES ('both-1')")
        a.execute("""SELECT attachment_watch('low', 'SELECT id FROM low', '{"priority": -5}')""")
        a.execute("""SELECT attachment_watch('high', 'SELECT id FROM high', '{"priority": 7}')""")
        self.reconcile(a)
        prio = lambda: dict(a.execute("SELECT id, priority FROM attachment_queue").fetchall())
        self.assertEqual(prio(), {"both-1": 7, "low-1": -5})
        # A metadata-only watch still lends its priority to rows that exist (an upload here).
        a.execute("DELETE FROM high")
        self.reconcile(a)
        self.assertEqual(prio(), {"both-1": -5, "low-1": -5})
        a.execute("SELECT attachment_unwatch('low')")
        self.reconcile(a)
        self.assertEqual(prio()["low-1"], 0)

    def test_files_above_max_download_size_get_no_row_unless_another_watch_allows_them(self):
        a = self.device("a")
        a.execute("CREATE TABLE files(id TEXT, bytes INTEGER, shared INTEGER DEFAULT 0)")
        for id, size in (("small-1", 100), ("big-1", 5000), ("unknown-1", None)):
            self.publish(f"{id}.txt", b"s" * (size or 10))
            a.execute("INSERT INTO files(id, bytes) VALUES (?, ?)", (id, size))
        a.execute("""SELECT attachment_watch('files', 'SELECT id, ''txt'' AS file_extension, bytes AS size FROM files',
                                             '{"max_download_size": 1000}')""")
        s = self.sync(a)
        self.assertEqual(s["downloaded"], 2, s)
        # A size the query does not know is not held back.
        self.assertEqual(self.rows(a), {"small-1": "SYNCED", "unknown-1": "SYNCED"})
        # A second watch with a larger limit is more generous: it wins for the ids it references.
        a.execute("""SELECT attachment_watch('shared', 'SELECT id, ''txt'' AS file_extension, bytes AS size FROM files
                                                        WHERE shared', '{"max_download_size": 10000}')""")
        self.assertEqual(self.sync(a)["downloaded"], 0)
        a.execute("UPDATE files SET shared = 1 WHERE id = 'big-1'")
        self.assertEqual(self.sync(a)["downloaded"], 1)
        self.assertEqual(self.rows(a)["big-1"], "SYNCED")
        # Still referenced by the stricter watch: the row stays (it is not archived).
        a.execute("UPDATE files SET shared = 0 WHERE id = 'big-1'")
        self.sync(a)
        self.assertEqual(self.rows(a)["big-1"], "SYNCED")
        a.execute("DELETE FROM files WHERE id = 'big-1'")
        self.sync(a)
        self.assertEqual(self.rows(a)["big-1"], "ARCHIVED")

    def test_changed_options_apply_to_what_the_watch_already_references(self):
        a = self.device("a")
        a.execute("CREATE TABLE files(id TEXT, bytes INTEGER)")
        self.publish("big-1.txt", b"b" * 5000)
        a.execute("INSERT INTO files VALUES ('big-1', 5000)")
        q = "SELECT id, 'txt' AS file_extension, bytes AS size FROM files"
        a.execute("SELECT attachment_watch('files', ?, '{\"max_download_size\": 1000}')", (q,))
        self.assertEqual(self.reconcile(a)["queued_downloads"], 0)
        a.execute("SELECT attachment_watch('files', ?, '{\"max_download_size\": 1000000, \"priority\": 3}')", (q,))
        self.assertEqual(self.reconcile(a)["queued_downloads"], 1)
        self.assertEqual(a.execute("SELECT state_name, priority FROM attachment_queue").fetchone(), ("QUEUED_DOWNLOAD", 3))

    def test_a_metadata_only_watch_keeps_existing_rows_and_adds_none(self):
        a = self.device("a")
        a.execute("CREATE TABLE refs(id TEXT)")
        mine = one(a, "SELECT attachment_save(x'01', 'txt')")
        self.publish("theirs-1.txt")
        a.execute("INSERT INTO refs VALUES (?), ('theirs-1')", (mine,))
        a.execute("""SELECT attachment_watch('refs', 'SELECT id, ''txt'' AS file_extension FROM refs', '{"download": false}')""")
        self.sync(a)
        self.sync(a)
        # A row that exists (an upload here, or one attachment_fetch made) is kept while referenced.
        self.assertEqual(self.rows(a), {mine: "SYNCED"})

    def test_download_attachments_false_overrides_every_watch(self):
        a = self.device("a", download_attachments=False)
        a.execute("CREATE TABLE refs(id TEXT)")
        self.publish("theirs-1.txt")
        a.execute("INSERT INTO refs VALUES ('theirs-1')")
        a.execute("""SELECT attachment_watch('refs', 'SELECT id, ''txt'' AS file_extension FROM refs',
                                             '{"download": true, "priority": 9}')""")
        self.assertEqual(self.sync(a)["downloaded"], 0)
        self.assertEqual(self.rows(a), {})

    def test_watches_list_their_options_and_state(self):
        a = self.device("a")
        a.execute("CREATE TABLE refs(id TEXT)")
        a.execute("""SELECT attachment_watch('refs', 'SELECT id FROM refs', '{"priority": 2, "max_download_size": 10}')""")
        self.sync(a)
        cur = a.execute("SELECT name, options, state, last_error, last_run IS NOT NULL, incremental FROM attachment_watches")
        name, options, state, error, ran, incremental = cur.fetchone()
        self.assertEqual((name, json.loads(options), state, error, ran), ("refs", {"priority": 2, "max_download_size": 10}, "ok", None, 1))
        self.assertIn(incremental, (0, 1))


if __name__ == "__main__":
    unittest.main()
