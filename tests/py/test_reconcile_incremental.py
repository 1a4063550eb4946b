"""Reconciliation row by row: a watch over one table is refreshed from the rows that
changed only, and must end exactly where a full re-run ends. A seeded property test
drives random edits into two identical databases, refreshes one row by row and the
other in full, and compares the queues and the references (ATTACHMENTS_SEED=N to replay)."""
import os
import random
import sqlite3
import time
import unittest

from helpers import Case, one

SCHEMA = """
CREATE TABLE items(id INTEGER PRIMARY KEY, file_id TEXT, kind TEXT, hidden INTEGER NOT NULL DEFAULT 0);
CREATE TABLE tags(item INTEGER, tag TEXT);
CREATE TABLE docs(key TEXT PRIMARY KEY, file_id TEXT, slug TEXT UNIQUE);
"""
WATCHES = [
    ("photos", "SELECT file_id AS id, 'jpg' AS file_extension FROM items WHERE kind = 'photo' AND NOT hidden", '{"priority": 5}'),
    ("hidden", "SELECT DISTINCT file_id AS id FROM items WHERE hidden", '{"download": false}'),
    ("sized", "SELECT file_id AS id, length(file_id) * 20 AS size FROM items WHERE kind != 'photo'", '{"max_download_size": 50}'),
    ("tagged", "SELECT i.file_id AS id FROM items AS i JOIN tags AS t ON t.item = i.id WHERE t.tag = 'keep'", None),
    ("mixed", "SELECT file_id AS id FROM items WHERE kind = 'video' UNION ALL SELECT tag AS id FROM tags WHERE tag LIKE 'f%'", None),
    ("docs", "SELECT file_id AS id FROM docs WHERE slug IS NOT NULL", None),
]
INCREMENTAL = {"photos": 1, "hidden": 1, "sized": 1, "tagged": 0, "mixed": 0, "docs": 1}
POOL = [f"f{i}" for i in range(12)]
KINDS = ["photo", "video", "doc", "voicememo"]


def plain(path):
    """A writer without the extension loaded, as another process of the app."""
    return sqlite3.connect(path, isolation_level=None)


class RowByRow(Case):
    def setup_db(self, name):
        c = self.device(name)
        c.executescript(SCHEMA)
        for w, q, opts in WATCHES:
            c.execute("SELECT attachment_watch(?, ?, ?)", (w, q, opts))
        one(c, "SELECT attachment_reconcile()")
        return c

    def edit(self, rng):
        """One random edit, as SQL, that both databases get."""
        r = rng.random()
        f, k = rng.choice(POOL), rng.choice(KINDS)
        n = rng.randrange(1, 40)
        if r < 0.25:
            return f"INSERT INTO items(file_id, kind) VALUES ('{f}', '{k}')"
        if r < 0.35:
            return f"DELETE FROM items WHERE id % 40 = {n}"
        if r < 0.5:
            return f"UPDATE items SET file_id = '{f}' WHERE id % 40 = {n}"
        if r < 0.6:
            return f"UPDATE items SET kind = '{k}' WHERE id % 40 = {n}"
        if r < 0.7:
            return f"UPDATE items SET hidden = NOT hidden WHERE id % 40 = {n}"
        if r < 0.75:
            return f"UPDATE items SET id = id + 1000 WHERE id = (SELECT max(id) FROM items)"
        if r < 0.85:
            return f"INSERT INTO tags VALUES ({n}, '{rng.choice(['keep', 'drop', f])}')"
        if r < 0.9:
            return f"DELETE FROM tags WHERE item = {n}"
        if r < 0.93:
            return f"UPDATE items SET file_id = NULL WHERE id % 40 = {n}"
        if r < 0.97:
            # REPLACE by primary key or by the unique slug: deletes without a delete trigger.
            return (f"INSERT OR REPLACE INTO docs VALUES ('k{n % 6}', '{f}', "
                    f"{rng.choice(['NULL', repr('s' + str(n % 4))])})")
        return f"UPDATE items SET file_id = '{f}', kind = '{k}' WHERE id % 7 = {n % 7}"

    def snapshot(self, c):
        queue = c.execute("SELECT id, state, priority FROM attachments ORDER BY id").fetchall()
        refs = c.execute("SELECT watch, id, filename, size, download, priority FROM _attachments_ref ORDER BY watch, id").fetchall()
        return queue, refs

    def expected_refs(self, c):
        """What each watch's query gives now, evaluated directly."""
        out = {}
        for w, q, _ in WATCHES:
            out[w] = sorted({str(r[0]) for r in c.execute(q) if r[0] is not None})
        return out

    def stored_refs(self, c):
        out = {w: [] for w, _, _ in WATCHES}
        for w, id in c.execute("SELECT watch, id FROM _attachments_ref ORDER BY watch, id"):
            out[w].append(id)
        return out

    def test_row_by_row_and_full_refresh_end_in_the_same_state(self):
        seeds = [int(os.environ["ATTACHMENTS_SEED"])] if "ATTACHMENTS_SEED" in os.environ else [1, 2, 3]
        for seed in seeds:
            with self.subTest(seed=seed):
                self.run_seed(seed)

    def run_seed(self, seed):
        rng = random.Random(seed)
        inc, full = self.setup_db(f"inc{seed}"), self.setup_db(f"full{seed}")
        self.assertEqual(dict(inc.execute("SELECT name, incremental FROM attachment_watches")), INCREMENTAL)
        writers = [plain(os.path.join(self.dir, f"inc{seed}.db")), plain(os.path.join(self.dir, f"full{seed}.db"))]
        row_level_runs = 0
        for step in range(int(os.environ.get("ATTACHMENTS_STEPS", "60"))):
            batch = [self.edit(rng) for _ in range(rng.randrange(1, 5))]
            for w in writers:
                w.execute("BEGIN")
                for sql in batch:
                    w.execute(sql)
                w.execute("COMMIT")
            row_level_runs += one(inc, "SELECT count(*) FROM _attachments_changed") > 0
            one(inc, "SELECT attachment_reconcile()")
            # The other database re-runs every watch in full, as before row-level refresh.
            writers[1].execute("UPDATE _attachments_watch SET dirty = 1")
            one(full, "SELECT attachment_reconcile()")
            context = f"seed {seed} step {step}: {batch}"
            self.assertEqual(self.snapshot(inc), self.snapshot(full), context)
            self.assertEqual(self.stored_refs(inc), self.expected_refs(inc), context)
        self.assertGreater(row_level_runs, 30, "the row-by-row path was taken")
        self.assertEqual(one(inc, "SELECT count(*) FROM _attachments_changed"), 0)
        for w in writers:
            w.close()

    def test_shapes_that_cannot_be_refreshed_row_by_row_run_in_full(self):
        a = self.device("a")
        a.executescript(SCHEMA)
        shapes = {
            "SELECT file_id AS id FROM items": 1,
            "SELECT file_id AS id FROM items WHERE kind = 'photo' ORDER BY id": 1,
            "SELECT DISTINCT file_id AS id FROM items": 1,
            "SELECT max(file_id) AS id FROM items": 0,
            "SELECT file_id AS id FROM items GROUP BY file_id HAVING count(*) > 1": 0,
            "SELECT file_id AS id FROM items ORDER BY id LIMIT 5": 0,
            "SELECT a.file_id AS id FROM items AS a, items AS b WHERE a.id = b.id": 0,
            "SELECT file_id AS id FROM items WHERE id > (SELECT avg(id) FROM items)": 0,
            "SELECT file_id AS id, row_number() OVER () AS n FROM items": 0,
            "WITH x AS (SELECT file_id FROM items) SELECT file_id AS id FROM x": 0,
            "SELECT i.file_id AS id FROM items AS i JOIN tags AS t ON t.item = i.id": 0,
            "SELECT file_id AS id FROM items UNION ALL SELECT tag FROM tags": 0,
        }
        for q, incremental in shapes.items():
            a.execute("SELECT attachment_watch('w', ?)", (q,))
            self.assertEqual(one(a, "SELECT incremental FROM attachment_watches WHERE name = 'w'"), incremental, q)

    def test_the_apps_own_conflict_clauses_still_work_with_row_level_triggers(self):
        a = self.device("a")
        a.executescript(SCHEMA)
        a.execute("SELECT attachment_watch('w', 'SELECT file_id AS id FROM items')")
        w = plain(os.path.join(self.dir, "a.db"))
        w.execute("BEGIN")
        w.execute("INSERT INTO items(id, file_id) VALUES (1, 'f1')")
        # The same row changed twice before a refresh: noted once, and no conflict.
        w.execute("UPDATE OR ABORT items SET file_id = 'f2' WHERE id = 1")
        w.execute("UPDATE OR FAIL items SET file_id = 'f3' WHERE id = 1")
        w.execute("INSERT OR REPLACE INTO items(id, file_id) VALUES (1, 'f4')")
        w.execute("INSERT OR ROLLBACK INTO items(id, file_id) VALUES (2, 'f5')")
        w.execute("COMMIT")
        w.close()
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(sorted(r[0] for r in a.execute("SELECT id FROM attachment_queue WHERE state_name = 'QUEUED_DOWNLOAD'")),
                         ["f4", "f5"])

    def test_replace_that_deletes_another_row_is_seen(self):
        a = self.device("a")
        a.execute("CREATE TABLE docs(id TEXT PRIMARY KEY, file_id TEXT, slug TEXT UNIQUE)")
        a.execute("CREATE TABLE odd(id INTEGER PRIMARY KEY, file_id TEXT)")
        a.execute("CREATE UNIQUE INDEX odd_lower ON odd(lower(file_id))")
        a.execute("SELECT attachment_watch('docs', 'SELECT file_id AS id FROM docs')")
        a.execute("SELECT attachment_watch('odd', 'SELECT file_id AS id FROM odd')")
        self.assertEqual(dict(a.execute("SELECT name, incremental FROM attachment_watches")), {"docs": 1, "odd": 0})
        w = plain(os.path.join(self.dir, "a.db"))
        w.execute("INSERT INTO docs VALUES ('d1', 'f1', 's1'), ('d2', 'f2', 's2'), ('d3', 'f3', 's3')")
        one(a, "SELECT attachment_reconcile()")
        # REPLACE deletes the row holding the key (a new rowid for the new row), by primary
        # key, by another unique column, and by an update that takes another row's key.
        w.execute("INSERT OR REPLACE INTO docs VALUES ('d1', 'f4', 's4')")
        w.execute("REPLACE INTO docs VALUES ('d9', 'f5', 's2')")
        w.execute("UPDATE OR REPLACE docs SET slug = 's3' WHERE id = 'd9'")
        w.close()
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(dict(a.execute("SELECT id, state_name FROM attachment_queue")),
                         {"f1": "ARCHIVED", "f2": "ARCHIVED", "f3": "ARCHIVED", "f4": "QUEUED_DOWNLOAD", "f5": "QUEUED_DOWNLOAD"})
        self.assertEqual(sorted(r[0] for r in a.execute("SELECT id FROM _attachments_src WHERE watch = 'docs'")), ["f4", "f5"])

    def test_a_failing_row_by_row_watch_waits_for_the_next_change_and_then_runs_in_full(self):
        a = self.device("a")
        a.execute("CREATE TABLE posts(id INTEGER PRIMARY KEY, data TEXT)")
        a.execute("INSERT INTO posts(data) VALUES ('{\"photo\": \"p-1\"}')")
        a.execute("SELECT attachment_watch('w', 'SELECT json_extract(data, ''$.photo'') AS id FROM posts')")
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(one(a, "SELECT incremental FROM attachment_watches"), 1)
        a.execute("INSERT INTO posts(data) VALUES ('not json')")
        one(a, "SELECT attachment_reconcile()")
        state, run = a.execute("SELECT state, last_run FROM attachment_watches").fetchone()
        self.assertEqual(state, "failed")
        self.assertEqual(one(a, "SELECT count(*) FROM _attachments_changed"), 0)
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(one(a, "SELECT last_run FROM attachment_watches"), run, "not retried without a change")
        # Fixed: the watch runs again, in full, and references what the table gives.
        a.execute("UPDATE posts SET data = '{\"photo\": \"p-2\"}' WHERE data = 'not json'")
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(one(a, "SELECT state FROM attachment_watches"), "ok")
        self.assertEqual(sorted(r[0] for r in a.execute("SELECT id FROM attachment_queue")), ["p-1", "p-2"])

    def test_vacuum_and_migrations_make_the_next_refresh_a_full_one(self):
        a = self.device("a")
        a.execute("CREATE TABLE refs(id TEXT, x INTEGER)")
        a.execute("INSERT INTO refs VALUES ('r-1', 1), ('r-2', 2)")
        a.execute("SELECT attachment_watch('w', 'SELECT id FROM refs')")
        one(a, "SELECT attachment_reconcile()")
        version = lambda: one(a, "PRAGMA schema_version")
        self.assertEqual(one(a, "SELECT rows_schema FROM _attachments_watch"), version())
        a.execute("DELETE FROM refs WHERE id = 'r-1'")
        a.execute("VACUUM")
        self.assertNotEqual(one(a, "SELECT rows_schema FROM _attachments_watch"), version())
        a.execute("INSERT INTO refs VALUES ('r-3', 3)")
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(one(a, "SELECT rows_schema FROM _attachments_watch"), version())
        self.assertEqual(dict(a.execute("SELECT id, state_name FROM attachment_queue")),
                         {"r-1": "ARCHIVED", "r-2": "QUEUED_DOWNLOAD", "r-3": "QUEUED_DOWNLOAD"})
        self.assertEqual(one(a, "SELECT count(*) FROM _attachments_src"), 2)


class ShapesTriggersCannotFollow(Case):
    """Writes a row-level trigger cannot see by the columns it names: each must still
    be seen, by the next attachment_reconcile() (what a worker pass runs)."""

    def queue(self, c):
        return dict(c.execute("SELECT id, state_name FROM attachment_queue"))

    def test_an_update_of_the_base_of_a_generated_column_is_seen(self):
        a = self.device("a")
        a.execute("CREATE TABLE g(id INTEGER PRIMARY KEY, x TEXT, y TEXT, fid TEXT GENERATED ALWAYS AS ('f' || x))")
        a.execute("INSERT INTO g(x) VALUES ('1'), ('2')")
        a.execute("SELECT attachment_watch('w', 'SELECT fid AS id, ''bin'' AS file_extension FROM g')")
        # Reading the generated column and another column: UPDATE OF y would miss x too.
        a.execute("SELECT attachment_watch('v', 'SELECT fid AS id FROM g WHERE y IS NULL UNION SELECT fid FROM g')")
        one(a, "SELECT attachment_reconcile()")
        w = plain(os.path.join(self.dir, "a.db"))
        w.execute("UPDATE g SET x = '3' WHERE id = 1")
        w.close()
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(self.queue(a), {"f1": "ARCHIVED", "f2": "QUEUED_DOWNLOAD", "f3": "QUEUED_DOWNLOAD"})

    def test_a_renamed_table_replaced_by_a_new_one_is_watched(self):
        a = self.device("a")
        a.execute("CREATE TABLE p(id INTEGER PRIMARY KEY, fid TEXT)")
        a.execute("INSERT INTO p(fid) VALUES ('f1')")
        a.execute("SELECT attachment_watch('w', 'SELECT fid AS id FROM p')")
        a.execute("CREATE TABLE q(fid TEXT)")
        a.execute("SELECT attachment_watch('s', 'SELECT fid AS id FROM q UNION SELECT fid FROM q')")
        one(a, "SELECT attachment_reconcile()")
        w = plain(os.path.join(self.dir, "a.db"))
        w.executescript("""ALTER TABLE p RENAME TO p_old; CREATE TABLE p(id INTEGER PRIMARY KEY, fid TEXT);
                           INSERT INTO p(fid) VALUES ('f2');
                           ALTER TABLE q RENAME TO q_old; CREATE TABLE q(fid TEXT); INSERT INTO q VALUES ('s1');""")
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(self.queue(a), {"f1": "ARCHIVED", "f2": "QUEUED_DOWNLOAD", "s1": "QUEUED_DOWNLOAD"})
        # And the triggers now follow the new tables: later writes are seen too.
        w.executescript("INSERT INTO p(fid) VALUES ('f3'); INSERT INTO q VALUES ('s2');")
        w.close()
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(self.queue(a)["f3"], "QUEUED_DOWNLOAD")
        self.assertEqual(self.queue(a)["s2"], "QUEUED_DOWNLOAD")
        self.assertEqual(one(a, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name IN ('p_old', 'q_old')"), 0)

    def test_a_renamed_column_replaced_by_a_new_one_is_watched_row_by_row(self):
        a = self.device("a")
        a.executescript("""CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, f TEXT);
                           INSERT INTO t(k, f) VALUES ('a', 'f1');""")
        a.execute("SELECT attachment_watch('w', 'SELECT f AS id, ''bin'' AS file_extension FROM t WHERE f IS NOT NULL')")
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(one(a, "SELECT incremental FROM attachment_watches"), 1)
        # SQLite rewrites the triggers to read the renamed column: they must be made again.
        w = plain(os.path.join(self.dir, "a.db"))
        w.executescript("ALTER TABLE t RENAME COLUMN f TO f_old; ALTER TABLE t ADD COLUMN f TEXT;")
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(self.queue(a), {"f1": "ARCHIVED"})
        w.execute("UPDATE t SET f = 'f2'")
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(self.queue(a), {"f1": "ARCHIVED", "f2": "QUEUED_DOWNLOAD"})
        w.execute("UPDATE t SET f = 'f3'")
        w.close()
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(self.queue(a), {"f1": "ARCHIVED", "f2": "ARCHIVED", "f3": "QUEUED_DOWNLOAD"})
        self.assertEqual(one(a, "SELECT incremental FROM attachment_watches"), 1)
        # Made again once: a pass without a change runs nothing.
        version, run = one(a, "PRAGMA schema_version"), one(a, "SELECT last_run FROM attachment_watches")
        time.sleep(0.01)
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual((one(a, "PRAGMA schema_version"), one(a, "SELECT last_run FROM attachment_watches")), (version, run))

    def test_a_column_a_row_by_row_watch_reads_can_be_dropped(self):
        a = self.device("a")
        a.executescript("""CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, z INTEGER, f TEXT);
                           INSERT INTO t(n, f) VALUES (1, 'f1');""")
        a.execute("SELECT attachment_watch('w', 'SELECT f AS id FROM t WHERE n > 0')")
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(one(a, "SELECT incremental FROM attachment_watches"), 1)
        # The app's migration is not blocked by the watch's triggers.
        w = plain(os.path.join(self.dir, "a.db"))
        w.execute("ALTER TABLE t DROP COLUMN n")
        a.execute("SELECT attachment_watch('w', 'SELECT f AS id FROM t')")
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(one(a, "SELECT incremental FROM attachment_watches"), 1)
        w.execute("UPDATE t SET f = 'f2'")
        w.execute("ALTER TABLE t DROP COLUMN z")
        w.close()
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(self.queue(a), {"f1": "ARCHIVED", "f2": "QUEUED_DOWNLOAD"})

    def test_replace_through_a_unique_index_with_its_own_collation_is_seen(self):
        a = self.device("a")
        a.executescript("""CREATE TABLE p(id INTEGER PRIMARY KEY, k TEXT, fid TEXT);
                           CREATE UNIQUE INDEX p_k ON p(k COLLATE NOCASE);
                           INSERT INTO p(k, fid) VALUES ('k1', 'f1'), ('k2', 'f2');""")
        a.execute("SELECT attachment_watch('w', 'SELECT fid AS id FROM p')")
        one(a, "SELECT attachment_reconcile()")
        w = plain(os.path.join(self.dir, "a.db"))
        w.execute("INSERT OR REPLACE INTO p(k, fid) VALUES ('K1', 'f3')")
        w.execute("INSERT INTO p(k, fid) VALUES ('k4', 'f4')")
        w.execute("UPDATE OR REPLACE p SET k = 'K2' WHERE fid = 'f4'")
        w.close()
        one(a, "SELECT attachment_reconcile()")
        self.assertEqual(self.queue(a), {"f1": "ARCHIVED", "f2": "ARCHIVED", "f3": "QUEUED_DOWNLOAD", "f4": "QUEUED_DOWNLOAD"})


if __name__ == "__main__":
    unittest.main()
