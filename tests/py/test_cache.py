"""The archived cache: limits by rows (archived_cache_limit) and by bytes
(archived_cache_bytes), least recently used first, where a read through the
extension is a use recorded lazily; pinning; attachment_cache(). Eviction never
touches a row that is not ARCHIVED, nor the remote object."""
import json
import os
import sqlite3
import tempfile
import time
import unittest
import urllib.error
import urllib.request

from helpers import Case, connect, files_in, one

WATCH = "SELECT attachment_watch('docs', 'SELECT file_id AS id, ''bin'' AS file_extension FROM docs')"


class CacheCase(Case):
    def app(self, name="a", **config):
        conn = self.device(name, **config)
        conn.execute("CREATE TABLE docs(name TEXT PRIMARY KEY, file_id TEXT)")
        conn.execute(WATCH)
        return conn

    def save(self, conn, name, size):
        """Saves a file of `size` bytes referenced as docs.`name`; returns its id."""
        conn.execute("INSERT INTO docs VALUES (?, attachment_save(?, 'bin'))", (name, os.urandom(size)))
        time.sleep(0.005)  # uses a few milliseconds apart: the order is well defined
        return one(conn, "SELECT file_id FROM docs WHERE name = ?", name)

    def archive(self, conn, *names):
        """Drops the references to `names` and syncs: their rows become ARCHIVED, files kept."""
        conn.executemany("DELETE FROM docs WHERE name = ?", [(n,) for n in names])
        self.sync(conn)

    def limits(self, conn, **limits):
        cfg = {"local_dir": "files-a", "remote": f"file://{self.remote}", **limits}
        conn.execute("SELECT attachment_init(?)", (json.dumps(cfg),))

    def states(self, conn):
        return dict(conn.execute("SELECT id, state_name FROM attachment_queue").fetchall())

    def archived(self, conn):
        return {r[0] for r in conn.execute("SELECT id FROM attachment_queue WHERE state_name = 'ARCHIVED'")}

    def read(self, conn, file_id):
        self.assertIsNotNone(one(conn, "SELECT attachment_local_uri(?)", file_id))
        time.sleep(0.005)

    def remote_names(self):
        return set(os.listdir(self.remote))


class Limits(CacheCase):
    def test_limit_by_rows_evicts_the_least_recently_used(self):
        a = self.app()
        ids = {n: self.save(a, n, 100) for n in "abcd"}
        self.assertEqual(self.sync(a)["uploaded"], 4)
        # a and b are archived first, c and d later: by archive time a and b are the oldest...
        self.archive(a, "a", "b")
        time.sleep(0.01)
        self.archive(a, "c", "d")
        # ...but a and b were read since: they are the most recently used.
        self.read(a, ids["b"])
        self.read(a, ids["a"])
        self.limits(a, archived_cache_limit=2)
        self.assertEqual(one(a, "SELECT attachment_expire_cache()"), 2)
        self.assertEqual(self.archived(a), {ids["a"], ids["b"]})
        self.assertEqual(sorted(files_in(os.path.join(self.dir, "files-a"))), sorted(ids[n] + ".bin" for n in "ab"))
        # The remote keeps every object: other devices may reference them.
        self.assertEqual(self.remote_names(), {i + ".bin" for i in ids.values()})

    def test_limit_by_bytes(self):
        a = self.app()
        old_big = self.save(a, "big", 3000)
        mid = self.save(a, "mid", 1000)
        new = self.save(a, "new", 1000)
        kept_synced = self.save(a, "synced", 5000)  # referenced: SYNCED, never counts
        self.sync(a)
        self.archive(a, "big", "mid", "new")
        self.limits(a, archived_cache_bytes=2500)
        self.assertEqual(one(a, "SELECT json_extract(attachment_init(?), '$.archived_cache_bytes')",
                             json.dumps({"local_dir": "files-a", "remote": f"file://{self.remote}",
                                         "archived_cache_bytes": 2500})), 2500)
        self.assertEqual(one(a, "SELECT attachment_expire_cache()"), 1)
        self.assertEqual(self.archived(a), {mid, new})
        self.assertEqual(self.states(a)[kept_synced], "SYNCED")
        self.assertNotIn(old_big, self.states(a))
        self.assertIn(old_big + ".bin", self.remote_names())
        # Lower it: the least recently used of the two goes next.
        self.limits(a, archived_cache_bytes=1500)
        self.assertEqual(one(a, "SELECT attachment_expire_cache()"), 1)
        self.assertEqual(self.archived(a), {new})
        # 0 bytes: no archived copy is kept.
        self.limits(a, archived_cache_bytes=0)
        self.assertEqual(one(a, "SELECT attachment_expire_cache()"), 1)
        self.assertEqual(self.archived(a), set())
        self.assertEqual(self.states(a), {kept_synced: "SYNCED"})

    def test_both_limits_must_hold(self):
        a = self.app()
        ids = [self.save(a, f"f{i}", 1000) for i in range(5)]
        self.sync(a)
        self.archive(a, *[f"f{i}" for i in range(5)])
        # 3 rows allowed but only 2500 bytes: the bytes decide (the two most recent stay).
        self.limits(a, archived_cache_limit=3, archived_cache_bytes=2500)
        self.assertEqual(one(a, "SELECT attachment_expire_cache()"), 3)
        self.assertEqual(self.archived(a), set(ids[3:]))
        # Plenty of bytes but 1 row: the rows decide.
        self.limits(a, archived_cache_limit=1, archived_cache_bytes=10**9)
        self.assertEqual(self.sync(a)["expired"], 1)
        self.assertEqual(self.archived(a), {ids[4]})

    def test_the_pass_applies_the_byte_limit(self):
        a = self.app(archived_cache_bytes=1500)
        ids = [self.save(a, f"f{i}", 1000) for i in range(3)]
        self.sync(a)
        self.assertEqual(self.sync(a)["expired"], 0)  # SYNCED files never count
        a.execute("DELETE FROM docs")
        summary = self.sync(a)
        self.assertEqual((summary["archived"], summary["expired"]), (3, 2))
        self.assertEqual(self.archived(a), {ids[2]})

    def test_config_is_checked(self):
        a = self.app()
        for bad in (-1, 1.5, "1GB", True):
            cfg = {"local_dir": "files-a", "remote": f"file://{self.remote}", "archived_cache_bytes": bad}
            with self.assertRaises(sqlite3.Error) as e:
                a.execute("SELECT attachment_init(?)", (json.dumps(cfg),))
            self.assertIn("'archived_cache_bytes'", str(e.exception))
        cfg = {"local_dir": "files-a", "remote": f"file://{self.remote}"}
        self.assertIsNone(json.loads(one(a, "SELECT attachment_init(?)", json.dumps(cfg)))["archived_cache_bytes"])


class LeastRecentlyUsed(CacheCase):
    def test_a_read_keeps_an_old_file_and_a_newer_unread_one_goes(self):
        a = self.app()
        old = self.save(a, "old", 100)
        newer = self.save(a, "newer", 100)
        self.sync(a)
        # Archived one after the other: by archive time `newer` is the newest.
        self.archive(a, "old")
        time.sleep(0.01)
        self.archive(a, "newer")
        self.assertEqual(one(a, "SELECT hex(attachment_data(?)) IS NOT NULL", old), 1)  # attachment_data is a use too
        self.limits(a, archived_cache_limit=1)
        self.assertEqual(self.sync(a)["expired"], 1)
        self.assertEqual(self.archived(a), {old})
        self.assertIsNotNone(one(a, "SELECT attachment_local_uri(?)", old))

    def test_a_fetch_is_a_use(self):
        a = self.app()
        old = self.save(a, "old", 100)
        newer = self.save(a, "newer", 100)
        self.sync(a)
        self.archive(a, "old")
        time.sleep(0.01)
        self.archive(a, "newer")
        # The local copy is complete: the fetch returns at once, and counts as a read.
        self.assertTrue(one(a, "SELECT attachment_fetch(?)", old).endswith(".bin"))
        self.limits(a, archived_cache_limit=1)
        self.assertEqual(self.sync(a)["expired"], 1)
        self.assertEqual(self.archived(a), {old})

    def test_reads_are_not_written_one_by_one_but_with_the_next_pass(self):
        a = self.app()
        first = self.save(a, "first", 100)
        self.save(a, "second", 100)
        self.sync(a)
        self.archive(a, "first", "second")
        stored = "SELECT last_used FROM attachments WHERE id = ?"
        before = one(a, stored, first)
        watcher = connect(os.path.join(self.dir, "a.db"), load=False)
        version = one(watcher, "PRAGMA data_version")
        for _ in range(200):
            one(a, "SELECT attachment_local_uri(?)", first)
        # 200 reads, no write: no other connection sees a commit.
        self.assertEqual(one(watcher, "PRAGMA data_version"), version)
        self.assertEqual(one(a, stored, first), before)
        # attachment_queue shows this process's reads at once.
        shown = one(a, "SELECT last_used FROM attachment_queue WHERE id = ?", first)
        self.assertGreater(shown, before)
        self.sync(a)
        self.assertEqual(one(a, stored, first), shown)
        # Written once: a later pass leaves it as it is.
        self.sync(a)
        self.assertEqual(one(a, stored, first), shown)

    def test_the_worker_writes_reads_and_they_decide_after_a_restart(self):
        a = self.app(sync_interval_ms=100)
        old = self.save(a, "old", 100)
        newer = self.save(a, "newer", 100)
        self.sync(a)
        self.archive(a, "old", "newer")
        self.started.append(a)
        one(a, "SELECT attachment_start_sync()")
        self.read(a, old)
        deadline = time.time() + 10
        newer_used = one(a, "SELECT last_used FROM attachments WHERE id = ?", newer)
        while one(a, "SELECT last_used FROM attachments WHERE id = ?", old) <= newer_used:
            self.assertLess(time.time(), deadline, "the worker did not write the read")
            time.sleep(0.05)
        one(a, "SELECT attachment_stop_sync()")
        # Another connection decides by what was written.
        b = connect(os.path.join(self.dir, "a.db"))
        self.limits(b, archived_cache_limit=1)
        self.assertEqual(one(b, "SELECT attachment_expire_cache()"), 1)
        self.assertEqual(self.archived(b), {old})

    def test_a_download_counts_as_a_use(self):
        a = self.app()
        first = self.save(a, "first", 100)
        second = self.save(a, "second", 100)
        self.sync(a)
        b = self.app("b")
        b.execute("INSERT INTO docs VALUES ('second', ?)", (second,))
        self.sync(b)
        time.sleep(0.01)
        b.execute("INSERT INTO docs VALUES ('first', ?)", (first,))
        self.sync(b)
        # Archived in the other order: by archive time `second` is the newest, but `first`
        # arrived last.
        b.execute("DELETE FROM docs WHERE name = 'first'")
        self.sync(b)
        time.sleep(0.01)
        b.execute("DELETE FROM docs WHERE name = 'second'")
        self.sync(b)
        b.execute("SELECT attachment_init(?)", (json.dumps(
            {"local_dir": "files-b", "remote": f"file://{self.remote}", "archived_cache_limit": 1}),))
        self.assertEqual(one(b, "SELECT attachment_expire_cache()"), 1)
        self.assertEqual(self.archived(b), {first})


class Pinning(CacheCase):
    def test_pin_and_unpin_answer(self):
        a = self.app()
        f = self.save(a, "f", 10)
        self.assertEqual(one(a, "SELECT attachment_pin(?)", f), 1)
        self.assertEqual(one(a, "SELECT attachment_pin(?)", f), 1)  # already pinned: still 1
        self.assertEqual(one(a, "SELECT pinned FROM attachment_queue WHERE id = ?", f), 1)
        self.assertEqual(one(a, "SELECT attachment_pin('no-such-id')"), 0)
        self.assertIsNone(one(a, "SELECT attachment_pin(NULL)"))
        self.assertEqual(one(a, "SELECT attachment_unpin(?)", f), 1)
        self.assertEqual(one(a, "SELECT pinned FROM attachment_queue WHERE id = ?", f), 0)
        self.assertEqual(one(a, "SELECT attachment_unpin('no-such-id')"), 0)
        self.assertIsNone(one(a, "SELECT attachment_unpin(NULL)"))
        for call in ("attachment_pin", "attachment_unpin"):
            with self.assertRaises(sqlite3.Error) as e:
                a.execute(f"SELECT {call}('../etc/passwd')")
            self.assertIn("invalid attachment id", str(e.exception))
            self.assertEqual(e.exception.sqlite_errorcode, sqlite3.SQLITE_MISUSE)
            with self.assertRaises(sqlite3.Error) as e:
                a.execute(f"SELECT {call}(1)")
            self.assertIn("id must be TEXT", str(e.exception))
        # In the app's transaction: a rollback undoes it.
        a.execute("BEGIN")
        a.execute("SELECT attachment_pin(?)", (f,))
        a.execute("ROLLBACK")
        self.assertEqual(one(a, "SELECT pinned FROM attachment_queue WHERE id = ?", f), 0)

    def test_pinned_rows_survive_and_do_not_count(self):
        a = self.app()
        pinned = [self.save(a, f"p{i}", 1000) for i in range(2)]
        loose = [self.save(a, f"l{i}", 1000) for i in range(3)]
        self.sync(a)
        for p in pinned:
            one(a, "SELECT attachment_pin(?)", p)
        self.archive(a, "p0", "p1", "l0", "l1", "l2")
        # Two pinned (the oldest) and three others; room for two rows, 2000 bytes: only one
        # of the others has to go, the least recently used.
        self.limits(a, archived_cache_limit=2, archived_cache_bytes=2000)
        self.assertEqual(one(a, "SELECT attachment_expire_cache()"), 1)
        self.assertEqual(self.archived(a), set(pinned) | set(loose[1:]))
        # Nothing kept: every unpinned one goes, the pinned stay with their files.
        self.limits(a, archived_cache_limit=0, archived_cache_bytes=0)
        self.assertEqual(self.sync(a)["expired"], 2)
        self.assertEqual(self.archived(a), set(pinned))
        for p in pinned:
            self.assertIsNotNone(one(a, "SELECT attachment_local_uri(?)", p))
        # Unpinned, it counts again.
        one(a, "SELECT attachment_unpin(?)", pinned[0])
        self.assertEqual(one(a, "SELECT attachment_expire_cache()"), 1)
        self.assertEqual(self.archived(a), {pinned[1]})

    def test_pinned_without_a_local_copy_is_downloaded(self):
        a = self.app()
        quiet = self.save(a, "quiet", 300)
        gone = self.save(a, "gone", 400)
        self.sync(a)
        # b references `quiet` through a watch that does not download: no row, no file.
        b = self.device("b")
        b.execute("CREATE TABLE docs(name TEXT PRIMARY KEY, file_id TEXT)")
        b.execute("SELECT attachment_watch('docs', 'SELECT file_id AS id, ''bin'' AS file_extension FROM docs', '{\"download\": false}')")
        b.execute("INSERT INTO docs VALUES ('quiet', ?)", (quiet,))
        self.sync(b)
        self.assertEqual(self.states(b), {})
        self.assertEqual(one(b, "SELECT attachment_pin(?)", quiet), 1)
        self.assertEqual(self.states(b), {quiet: "QUEUED_DOWNLOAD"})
        self.assertEqual(self.sync(b)["downloaded"], 1)
        self.assertEqual(one(b, "SELECT attachment_data(?)", quiet), one(a, "SELECT attachment_data(?)", quiet))
        # Unreferenced, it keeps its copy whatever the limits.
        b.execute("DELETE FROM docs")
        b.execute("SELECT attachment_init(?)", (json.dumps(
            {"local_dir": "files-b", "remote": f"file://{self.remote}", "archived_cache_limit": 0, "archived_cache_bytes": 0}),))
        self.sync(b)
        self.assertEqual(self.states(b), {quiet: "ARCHIVED"})
        self.assertIsNotNone(one(b, "SELECT attachment_local_uri(?)", quiet))
        # An ARCHIVED row without its copy (its download never happened) is fetched when pinned.
        b.execute("INSERT INTO docs VALUES ('gone', ?)", (gone,))
        b.execute("SELECT attachment_watch('all', 'SELECT file_id AS id, ''bin'' AS file_extension FROM docs')")
        one(b, "SELECT attachment_reconcile()")
        b.execute("DELETE FROM docs WHERE name = 'gone'")
        one(b, "SELECT attachment_reconcile()")
        self.assertEqual(self.states(b)[gone], "ARCHIVED")
        self.assertEqual(one(b, "SELECT attachment_pin(?)", gone), 1)
        self.assertEqual(self.sync(b)["downloaded"], 1)
        self.assertIsNotNone(one(b, "SELECT attachment_local_uri(?)", gone))
        # A pinned copy that vanishes from disk is fetched again (verify finds it).
        os.remove(one(b, "SELECT attachment_local_uri(?)", quiet))
        self.assertEqual(json.loads(one(b, "SELECT attachment_verify()"))["requeued"], 1)
        self.sync(b)
        self.assertIsNotNone(one(b, "SELECT attachment_local_uri(?)", quiet))

    def test_an_unpinned_download_nothing_references_is_archived(self):
        a = self.app()
        f = self.save(a, "f", 100)
        self.sync(a)
        b = self.device("b")
        b.execute("CREATE TABLE docs(name TEXT PRIMARY KEY, file_id TEXT)")
        b.execute("SELECT attachment_watch('docs', 'SELECT file_id AS id, ''bin'' AS file_extension FROM docs', '{\"download\": false}')")
        b.execute("INSERT INTO docs VALUES ('f', ?)", (f,))
        one(b, "SELECT attachment_reconcile()")
        one(b, "SELECT attachment_pin(?)", f)
        b.execute("DELETE FROM docs")
        one(b, "SELECT attachment_reconcile()")
        self.assertEqual(self.states(b), {f: "QUEUED_DOWNLOAD"})  # pinned: the download goes on
        one(b, "SELECT attachment_unpin(?)", f)
        one(b, "SELECT attachment_reconcile()")
        self.assertEqual(self.states(b), {f: "ARCHIVED"})


class NeverBeyondArchived(CacheCase):
    def test_only_archived_rows_are_evicted(self):
        a = self.app()
        synced = self.save(a, "synced", 500)
        deleting = self.save(a, "deleting", 500)
        self.sync(a)
        one(a, "SELECT attachment_delete(?)", deleting)
        upload = self.save(a, "upload", 500)  # not synced yet
        unreferenced_upload = self.save(a, "unreferenced", 500)
        a.execute("DELETE FROM docs WHERE name = 'unreferenced'")
        a.execute("INSERT INTO docs VALUES ('remote-only', 'not-here-yet')")
        one(a, "SELECT attachment_reconcile()")
        before = self.states(a)
        self.assertEqual(before, {synced: "SYNCED", deleting: "QUEUED_DELETE", upload: "QUEUED_UPLOAD",
                                  unreferenced_upload: "QUEUED_UPLOAD", "not-here-yet": "QUEUED_DOWNLOAD"})
        self.limits(a, archived_cache_limit=0, archived_cache_bytes=0)
        self.assertEqual(one(a, "SELECT attachment_expire_cache()"), 0)
        self.assertEqual(self.states(a), before)
        for f in (synced, deleting, upload, unreferenced_upload):
            self.assertTrue(os.path.exists(os.path.join(self.dir, "files-a", f + ".bin")), f)

    def test_a_local_copy_the_remote_lacks_is_never_evicted(self):
        a = self.app()
        kept = self.save(a, "kept", 700)
        self.sync(a)
        self.archive(a, "kept")
        self.assertEqual(self.states(a), {kept: "ARCHIVED"})
        # Another remote: it has none of the files, so this copy may be the only one left.
        other = os.path.join(self.dir, "remote2")
        os.makedirs(other)
        cfg = {"local_dir": "files-a", "remote": f"file://{other}", "archived_cache_limit": 0, "archived_cache_bytes": 0}
        a.execute("SELECT attachment_init(?)", (json.dumps(cfg),))
        self.assertEqual(one(a, "SELECT attachment_expire_cache()"), 0)
        self.sync(a)
        self.assertEqual(self.states(a), {kept: "ARCHIVED"})
        self.assertTrue(os.path.exists(os.path.join(self.dir, "files-a", kept + ".bin")))
        self.assertEqual(json.loads(one(a, "SELECT attachment_cache()"))["next_expiry"]["count"], 0)
        # Referenced again, it goes up to the new remote.
        a.execute("INSERT INTO docs VALUES ('kept', ?)", (kept,))
        self.sync(a)
        self.assertEqual(self.states(a), {kept: "SYNCED"})
        self.assertEqual(os.listdir(other), [kept + ".bin"])


class Report(CacheCase):
    def test_attachment_cache_reports_states_limits_and_the_next_expiry(self):
        a = self.app(archived_cache_bytes=10_000)
        ids = [self.save(a, f"f{i}", 100 * (i + 1)) for i in range(4)]
        self.sync(a)
        one(a, "SELECT attachment_pin(?)", ids[3])
        self.archive(a, "f0", "f1", "f3")
        report = json.loads(one(a, "SELECT attachment_cache()"))
        self.assertEqual(report["states"]["ARCHIVED"], {"rows": 3, "files": 3, "bytes": 100 + 200 + 400})
        self.assertEqual(report["states"]["SYNCED"], {"rows": 1, "files": 1, "bytes": 300})
        self.assertEqual(report["states"]["QUEUED_UPLOAD"], {"rows": 0, "files": 0, "bytes": 0})
        self.assertEqual(report["local"], {"files": 4, "bytes": 1000})
        self.assertEqual(report["pinned"], {"rows": 1, "files": 1, "bytes": 400})
        self.assertEqual(report["archived_counted"], {"rows": 2, "bytes": 300})
        self.assertEqual(report["limits"], {"archived_cache_limit": 100, "archived_cache_bytes": 10_000})
        self.assertEqual(report["next_expiry"], {"count": 0, "bytes": 0, "ids": []})
        # With one row allowed, the least recently used goes: f0, unless it was just read.
        self.limits(a, archived_cache_limit=1, archived_cache_bytes=10_000)
        self.assertEqual(json.loads(one(a, "SELECT attachment_cache()"))["next_expiry"],
                         {"count": 1, "bytes": 100, "ids": [ids[0]]})
        self.read(a, ids[0])  # noted in memory only, and already counted
        self.assertEqual(json.loads(one(a, "SELECT attachment_cache()"))["next_expiry"],
                         {"count": 1, "bytes": 200, "ids": [ids[1]]})
        # And the expiry removes exactly that.
        self.assertEqual(one(a, "SELECT attachment_expire_cache()"), 1)
        self.assertNotIn(ids[1], self.states(a))
        self.assertEqual(json.loads(one(a, "SELECT attachment_cache()"))["next_expiry"]["count"], 0)


@unittest.skipUnless(os.path.exists("/usr/sbin/nginx"), "nginx not installed (tests/install-deps.sh)")
class RemoteUntouched(CacheCase):
    """Over WebDAV: expiry removes local copies and rows, never a remote object."""

    def test_expiry_leaves_the_remote_objects(self):
        import servers
        www = tempfile.mkdtemp(prefix="att-www-")
        nginx = servers.Nginx(www)
        self.addCleanup(nginx.stop)
        a = self.app(remote=f"{nginx.url}/cache/")
        ids = [self.save(a, f"f{i}", 1000) for i in range(3)]
        self.assertEqual(self.sync(a)["uploaded"], 3)
        a.execute("DELETE FROM docs")
        self.sync(a)
        a.execute("SELECT attachment_init(?)", (json.dumps(
            {"local_dir": "files-a", "remote": f"{nginx.url}/cache/", "archived_cache_bytes": 0}),))
        self.assertEqual(one(a, "SELECT attachment_expire_cache()"), 3)
        self.assertEqual(self.states(a), {})
        self.assertEqual(files_in(os.path.join(self.dir, "files-a")), [])
        for i in ids:
            with urllib.request.urlopen(f"{nginx.url}/cache/{i}.bin") as r:
                self.assertEqual((r.status, len(r.read())), (200, 1000))
        # Another device still gets them.
        b = self.app("b", remote=f"{nginx.url}/cache/")
        b.execute("INSERT INTO docs VALUES ('f0', ?)", (ids[0],))
        self.assertEqual(self.sync(b)["downloaded"], 1)


if __name__ == "__main__":
    unittest.main()
