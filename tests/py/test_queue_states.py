"""The queue's state machine, one test per transition (src/queue/table.rs owns them all).

Each test sets a row up, triggers one transition the way a user or the worker would,
and checks the row (state, has_synced, claim, error) and the files on both sides."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import unittest

from helpers import Case, LIB, connect, files_in, one

QUEUED_UPLOAD, QUEUED_DOWNLOAD, QUEUED_DELETE, SYNCED, ARCHIVED = range(5)
WATCH = "SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''bin'' AS file_extension FROM users')"


class Transitions(Case):
    def row(self, conn, id_):
        return conn.execute(
            "SELECT state, has_synced, claimed_by, attempts, last_error, local_uri FROM attachments WHERE id = ?",
            (id_,)).fetchone()

    def app(self, name, **config):
        conn = self.device(name, **config)
        conn.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT)")
        conn.execute(WATCH)
        return conn

    def local(self, name):
        return files_in(os.path.join(self.dir, f"files-{name}"))

    def test_save_inserts_queued_upload_with_its_file(self):
        a = self.device("a")
        id_ = one(a, "SELECT attachment_save(x'0102', 'bin')")
        self.assertEqual(self.row(a, id_)[:2], (QUEUED_UPLOAD, 0))
        self.assertEqual(self.local("a"), [f"{id_}.bin"])

    def test_upload_success_is_synced_and_claim_dropped(self):
        a = self.device("a")
        id_ = one(a, "SELECT attachment_save(x'0102', 'bin')")
        self.sync(a)
        self.assertEqual(self.row(a, id_)[:5], (SYNCED, 1, None, 0, None))
        self.assertEqual(os.listdir(self.remote), [f"{id_}.bin"])

    def test_claims_still_work_when_the_claim_order_index_was_dropped(self):
        # A schema tool or a hand edit may drop our index; claims name it, so it comes back.
        a = self.device("a")
        ids = [one(a, "SELECT attachment_save(x'0102', 'bin')") for _ in range(3)]
        a.execute('DROP INDEX "_attachments_idx_attachments_claim_order"')
        self.assertEqual(self.sync(a)["uploaded"], 3)
        self.assertEqual([self.row(a, i)[0] for i in ids], [SYNCED] * 3)
        self.assertEqual(one(a, "SELECT count(*) FROM sqlite_schema WHERE name = '_attachments_idx_attachments_claim_order'"), 1)

    def test_claims_still_work_when_another_index_took_the_claim_order_index_name(self):
        a = self.device("a")
        ids = [one(a, "SELECT attachment_save(x'0102', 'bin')") for _ in range(3)]
        a.execute('DROP INDEX "_attachments_idx_attachments_claim_order"')
        # Partial on a condition the claim does not imply: SQLite cannot use it as named.
        a.execute('CREATE INDEX "_attachments_idx_attachments_claim_order" ON attachments(id) WHERE size > 100')
        self.assertEqual(self.sync(a)["uploaded"], 3)
        self.assertEqual([self.row(a, i)[0] for i in ids], [SYNCED] * 3)

    def test_a_hand_edited_watch_name_stays_a_value_when_references_are_compared(self):
        # With one watch, reconciliation names it in the SQL it runs: a name edited into
        # the table by hand (quotes, SQL) must stay a value.
        b = self.app("b")
        b.execute("INSERT INTO users VALUES (1, 'aaaaaaaa-0000-4000-8000-000000000001')")
        self.sync(b)
        evil = "x'); DROP TABLE users; --"
        b.execute("UPDATE _attachments_ref SET watch = ?", (evil,))
        b.execute("UPDATE _attachments_watch SET name = ?, dirty = 1", (evil,))
        b.execute("INSERT INTO users VALUES (2, 'aaaaaaaa-0000-4000-8000-000000000002')")
        one(b, "SELECT attachment_reconcile()")
        self.assertEqual(one(b, "SELECT count(*) FROM users"), 2)
        self.assertEqual(one(b, "SELECT count(*) FROM attachments WHERE id LIKE 'aaaaaaaa-%'"), 2)

    def test_references_of_a_watch_that_does_not_exist_count_for_nothing_with_one_watch_or_two(self):
        for watches in (1, 2):
            with self.subTest(watches=watches):
                b = self.app(f"ghost{watches}")
                if watches == 2:
                    b.execute("CREATE TABLE other(x TEXT)")
                    b.execute("SELECT attachment_watch('other', 'SELECT x AS id, ''bin'' AS file_extension FROM other')")
                self.sync(b)
                # A hand edit: a reference of no watch, noted as changed.
                b.execute("INSERT INTO _attachments_ref(watch, id, file_extension, filename, download, priority) "
                          "VALUES ('ghost', 'f7', 'bin', 'f7.bin', 1, 0)")
                b.execute("INSERT INTO _attachments_delta VALUES ('f7')")
                self.assertEqual(json.loads(one(b, "SELECT attachment_reconcile()"))["queued_downloads"], 0)
                self.assertEqual(one(b, "SELECT count(*) FROM attachments WHERE id = 'f7'"), 0)

    def test_the_level_shown_stays_within_a_lowered_max_concurrency(self):
        a = self.device("a")
        for _ in range(3):
            one(a, "SELECT attachment_save(x'01', 'bin')")
        self.sync(a)
        a.execute("UPDATE _attachments_config SET concurrency = 8")  # as a pass under a higher bound left it
        one(a, "SELECT attachment_init(?)", json.dumps({"local_dir": "files-a", "remote": f"file://{self.remote}",
                                                        "max_concurrency": 2}))
        self.assertEqual(json.loads(one(a, "SELECT attachment_progress()"))["concurrency_level"], 2)

    def test_a_process_starts_at_the_level_the_database_recorded(self):
        # What a pass of another process (or of this app before a restart) learnt about the
        # link is where this process's first pass starts, not the blind default.
        a = self.device("a")
        a.execute("UPDATE _attachments_config SET concurrency = 3")
        for _ in range(3):
            one(a, "SELECT attachment_save(x'01', 'bin')")
        self.assertEqual(self.sync(a)["uploaded"], 3)
        self.assertEqual(json.loads(one(a, "SELECT attachment_progress()"))["concurrency_level"], 3)

    def test_a_stored_level_that_is_not_an_integer_is_ignored(self):
        # A hand edit (or a broken tool) must not stop every pass for good.
        for value in ("'abc'", "x'00ff'", "2.5", "1e308"):
            with self.subTest(value):
                a = self.device(f"lv{len(value)}{value[1:3].strip(chr(39))}")
                a.execute(f"UPDATE _attachments_config SET concurrency = {value}")
                one(a, "SELECT attachment_save(x'01', 'bin')")
                self.assertEqual(self.sync(a)["uploaded"], 1)
                level = json.loads(one(a, "SELECT attachment_progress()"))["concurrency_level"]
                self.assertTrue(level is None or 1 <= level <= 32, level)

    def test_upload_failure_stays_queued_with_attempt_error_and_backoff(self):
        a = self.device("a", remote="http://127.0.0.1:9/nothing-listens/")
        id_ = one(a, "SELECT attachment_save(x'0102', 'bin')")
        self.assertEqual(self.sync(a)["failed"], 1)
        state, has_synced, claimed_by, attempts, error, _ = self.row(a, id_)
        self.assertEqual((state, has_synced, claimed_by, attempts), (QUEUED_UPLOAD, 0, None, 1))
        self.assertTrue(error.startswith("network:"), error)
        self.assertGreater(one(a, "SELECT next_attempt_at FROM attachments"), 0)
        # The backoff holds: a pass does not try again before the row is due. (Full jitter
        # may make it due within a millisecond: then there is nothing to assert.)
        if one(a, "SELECT next_attempt_at FROM attachments") > time.time() * 1000 + 100:
            self.assertEqual(self.sync(a)["failed"], 0)

    def test_one_pass_tries_each_row_once_however_short_its_backoff(self):
        # Full jitter makes some first retries due within milliseconds; a pass still takes
        # only rows that were due when it began, so one attachment_sync() is one attempt each.
        a = self.device("a", remote="http://127.0.0.1:9/nothing-listens/")
        a.execute("BEGIN")
        for _ in range(400):
            one(a, "SELECT attachment_save(x'01', 'bin')")
        a.execute("COMMIT")
        self.assertEqual(self.sync(a)["failed"], 400)
        self.assertEqual(a.execute("SELECT min(attempts), max(attempts) FROM attachments").fetchone(), (1, 1))

    def test_upload_whose_file_is_gone_is_archived_never_synced(self):
        a = self.device("a")
        id_ = one(a, "SELECT attachment_save(x'0102', 'bin')")
        os.remove(os.path.join(self.dir, "files-a", f"{id_}.bin"))
        self.sync(a)
        state, has_synced, _, _, error, local_uri = self.row(a, id_)
        self.assertEqual((state, has_synced, local_uri), (ARCHIVED, 0, None))
        self.assertIn("local file missing", error)

    def test_reference_queues_download_then_download_is_synced(self):
        a, b = self.app("a"), self.app("b")
        id_ = one(a, "SELECT attachment_save(x'0102', 'bin')")
        self.sync(a)
        b.execute("INSERT INTO users VALUES (1, ?)", (id_,))
        one(b, "SELECT attachment_reconcile()")
        self.assertEqual(self.row(b, id_)[:2], (QUEUED_DOWNLOAD, 0))
        self.sync(b)
        self.assertEqual(self.row(b, id_)[:3], (SYNCED, 1, None))
        self.assertEqual(one(b, "SELECT attachment_data(?)", id_), b"\x01\x02")

    def test_download_not_found_is_given_up_and_stays_given_up(self):
        b = self.app("b")
        b.execute("INSERT INTO users VALUES (1, 'missing-everywhere')")
        self.sync(b)
        self.assertEqual(self.row(b, "missing-everywhere")[0], ARCHIVED)
        self.assertEqual(one(b, "SELECT given_up FROM attachments"), 1)
        self.assertEqual(self.sync(b)["failed"], 0, "a given-up download is not fetched again")
        self.assertEqual(one(b, "SELECT attachment_retry('missing-everywhere')"), 1)
        self.assertEqual(self.row(b, "missing-everywhere")[0], QUEUED_DOWNLOAD)

    def test_unreferenced_synced_row_is_archived_and_restored_when_referenced_again(self):
        a = self.app("a")
        a.execute("INSERT INTO users VALUES (1, attachment_save(x'01', 'bin'))")
        id_ = one(a, "SELECT photo_id FROM users")
        self.sync(a)
        a.execute("UPDATE users SET photo_id = NULL")
        self.sync(a)
        self.assertEqual(self.row(a, id_)[0], ARCHIVED)
        a.execute("UPDATE users SET photo_id = ?", (id_,))
        self.sync(a)
        self.assertEqual(self.row(a, id_)[:2], (SYNCED, 1))

    def test_restored_row_that_never_reached_the_remote_goes_up_again(self):
        a = self.app("a")
        a.execute("INSERT INTO users VALUES (1, 'never-uploaded')")
        a.execute("INSERT INTO attachments(id, filename, local_uri, timestamp, state, has_synced, sha256, size) "
                  "VALUES ('never-uploaded', 'never-uploaded.bin', 'never-uploaded.bin', 0, ?, 0, ?, 1)",
                  (ARCHIVED, "4bf5122f344554c53bde2ebb8cd2b7e3d1600ad631c385a5d7cce23c7785459a"))
        with open(os.path.join(self.dir, "files-a", "never-uploaded.bin"), "wb") as f:
            f.write(b"\x01")
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(self.row(a, "never-uploaded")[0], QUEUED_UPLOAD)

    def test_expiry_removes_archived_rows_beyond_the_limit_and_their_files_only(self):
        a = self.app("a", archived_cache_limit=0)
        a.execute("INSERT INTO users VALUES (1, attachment_save(x'01', 'bin'))")
        id_ = one(a, "SELECT photo_id FROM users")
        self.sync(a)
        a.execute("DELETE FROM users")
        self.sync(a)
        self.assertIsNone(self.row(a, id_))
        self.assertEqual(self.local("a"), [])
        self.assertEqual(os.listdir(self.remote), [f"{id_}.bin"], "the remote copy stays")

    def test_delete_removes_remote_local_and_row(self):
        a = self.device("a")
        id_ = one(a, "SELECT attachment_save(x'01', 'bin')")
        self.sync(a)
        self.assertEqual(one(a, "SELECT attachment_delete(?)", id_), id_)
        self.assertEqual(self.row(a, id_)[0], QUEUED_DELETE)
        self.assertEqual(self.sync(a)["deleted"], 1)
        self.assertIsNone(self.row(a, id_))
        self.assertEqual((self.local("a"), os.listdir(self.remote)), ([], []))

    def test_verify_requeues_a_synced_row_whose_copy_vanished(self):
        a = self.device("a")
        id_ = one(a, "SELECT attachment_save(x'01', 'bin')")
        self.sync(a)
        os.remove(os.path.join(self.dir, "files-a", f"{id_}.bin"))
        one(a, "SELECT attachment_verify()")
        self.assertEqual(self.row(a, id_)[0], QUEUED_DOWNLOAD)
        self.sync(a)
        self.assertEqual(self.row(a, id_)[0], SYNCED)

    def test_a_new_remote_gets_every_file_again(self):
        a = self.device("a")
        id_ = one(a, "SELECT attachment_save(x'0102', 'bin')")
        self.sync(a)
        other = os.path.join(self.dir, "remote-b")
        a.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files-a", "remote": f"file://{other}"}),))
        # Not SYNCED any more: the new remote does not hold the file yet.
        self.assertEqual(self.row(a, id_)[:2], (QUEUED_UPLOAD, 0))
        self.assertEqual(self.sync(a)["uploaded"], 1)
        self.assertEqual(self.row(a, id_)[:2], (SYNCED, 1))
        self.assertEqual(os.listdir(other), [f"{id_}.bin"])

    def test_a_row_in_an_unknown_state_is_left_alone(self):
        a = self.device("a")
        id_ = one(a, "SELECT attachment_save(x'01', 'bin')")
        a.execute("UPDATE attachments SET state = 9 WHERE id = ?", (id_,))
        self.sync(a)
        one(a, "SELECT attachment_verify()")
        self.assertEqual(self.row(a, id_)[0], 9)
        self.assertEqual(self.local("a"), [f"{id_}.bin"])
        self.assertFalse(os.path.exists(self.remote) and os.listdir(self.remote))

    def test_a_result_is_not_recorded_once_the_claim_is_someone_elses(self):
        # The worker's claim is taken over (as after a lapsed lease) while its upload is
        # on the wire: the late result must not mark the row, the new owner will.
        import servers
        import tempfile
        www = tempfile.mkdtemp(prefix="att-www-")
        nginx = servers.Nginx(www)
        self.addCleanup(nginx.stop)
        proxy = servers.FaultProxy(nginx.port, "slow", DELAY=2)
        self.addCleanup(proxy.stop)
        a = self.device("a", remote=f"http://127.0.0.1:{proxy.port}/late/")
        id_ = one(a, "SELECT attachment_save(x'01', 'bin')")
        a.execute("SELECT attachment_start_sync()")
        self.addCleanup(lambda: a.execute("SELECT attachment_stop_sync()"))
        deadline = time.time() + 20
        while time.time() < deadline and not any(l.startswith("PUT") for l in proxy.requests()):
            time.sleep(0.05)
        a.execute("UPDATE attachments SET claimed_by = 'pid:1:someoneelse' WHERE id = ?", (id_,))
        time.sleep(3)
        self.assertEqual(self.row(a, id_)[:3], (QUEUED_UPLOAD, 0, "pid:1:someoneelse"))


class CallsFromOrdinaryQueries(Case):
    def test_null_ids_give_null_so_a_join_over_rows_without_attachments_works(self):
        a = self.device("a")
        a.execute("CREATE TABLE users(name TEXT, photo_id TEXT)")
        a.execute("INSERT INTO users VALUES ('alice', attachment_save(x'41', 'jpg')), ('bob', NULL)")
        rows = a.execute("SELECT name, attachment_local_uri(photo_id) IS NOT NULL, attachment_data(photo_id), "
                         "attachment_delete(photo_id) IS NOT NULL FROM users ORDER BY name").fetchall()
        self.assertEqual(rows, [("alice", 1, b"A", 1), ("bob", 0, None, 0)])

    def test_sync_inside_a_statement_that_reads_a_table_is_refused_at_once(self):
        import sqlite3
        a = self.device("a")
        a.execute("CREATE TABLE one(x)")
        a.execute("INSERT INTO one VALUES (1)")
        for call in ("attachment_sync()", "attachment_verify()", "attachment_reconcile()", "attachment_expire_cache()"):
            t0 = time.monotonic()
            with self.assertRaises(sqlite3.Error) as cm:
                a.execute(f"SELECT {call} FROM one").fetchall()
            self.assertLess(time.monotonic() - t0, 2, call)
            self.assertEqual(cm.exception.sqlite_errorname, "SQLITE_MISUSE", call)
            self.assertIn("statement of its own", str(cm.exception))
        self.assertIn("uploaded", one(a, "SELECT attachment_sync()"))


if __name__ == "__main__":
    unittest.main()
