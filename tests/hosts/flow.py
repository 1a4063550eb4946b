"""The host flow, run inside a fresh virtual environment where sqlite_attachments
was installed from dist/: python flow.py sqlite3|apsw|sqlean WORKDIR"""
import json
import os
import sys
import time

import sqlite_attachments

driver, work = sys.argv[1], sys.argv[2]
if driver == "apsw":
    import apsw

    def connect(path):
        return apsw.Connection(path)
elif driver == "sqlean":
    import sqlean

    def connect(path):
        return sqlean.connect(path, isolation_level=None)
else:
    import sqlite3

    def connect(path):
        return sqlite3.connect(path, isolation_level=None)


def one(conn, sql, *args):
    return conn.execute(sql, args).fetchone()[0]


def device(name):
    conn = connect(os.path.join(work, f"{name}.db"))
    # As an app would: wait for the worker's short writes instead of failing at once
    # (apsw, unlike the sqlite3 module, sets no busy timeout of its own).
    conn.execute("PRAGMA busy_timeout = 5000")
    sqlite_attachments.load(conn)
    one(conn, "SELECT attachment_init(?)", json.dumps({"local_dir": f"files-{name}", "remote": f"file://{work}/remote"}))
    conn.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT)")
    one(conn, "SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''jpg'' AS file_extension FROM users')")
    return conn


a, b = device("a"), device("b")
# Save in the app's own transaction; a rollback leaves nothing behind.
a.execute("BEGIN IMMEDIATE")
a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'jpg'))", (b"rolled back",))
a.execute("ROLLBACK")
assert one(a, "SELECT count(*) FROM attachments") == 0, "rollback must leave no row"
a.execute("BEGIN IMMEDIATE")
a.execute("INSERT INTO users VALUES (1, attachment_save(?, 'jpg'))", (b"photo bytes",))
a.execute("COMMIT")
assert json.loads(one(a, "SELECT attachment_sync()"))["uploaded"] == 1
# The second database downloads through its reference.
b.execute("INSERT INTO users VALUES (1, ?)", (one(a, "SELECT photo_id FROM users"),))
assert json.loads(one(b, "SELECT attachment_sync()"))["downloaded"] == 1
with open(one(b, "SELECT attachment_local_uri(photo_id) FROM users"), "rb") as f:
    assert f.read() == b"photo bytes"
# The background worker moves a file by itself.
assert one(a, "SELECT attachment_start_sync()") == 1
a.execute("INSERT INTO users VALUES (2, attachment_save(?, 'jpg'))", (b"second photo",))
deadline = time.time() + 30
while one(a, "SELECT state FROM attachments WHERE id = (SELECT photo_id FROM users WHERE id = 2)") != 3:
    assert time.time() < deadline, "the worker did not upload the file"
    time.sleep(0.05)
# A progress bar fed by attachment_progress() while the worker moves three files.
import io  # noqa: E402
# They are saved in one transaction: done counts restart whenever the queue drains, and the
# worker may finish one file before a separate save of the next commits.
a.execute("BEGIN IMMEDIATE")
for i in range(3):
    a.execute("INSERT INTO users VALUES (?, attachment_save(?, 'jpg'))", (10 + i, os.urandom(300_000)))
a.execute("COMMIT")
shown = io.StringIO()
last = sqlite_attachments.progress_bar(a, interval=0.05, file=shown, timeout=30)
assert not last["active"] and last["upload"]["files_queued"] == 0, last
assert last["upload"]["files_done"] >= 3 and last["upload"]["bytes_done"] >= 900_000, last
assert shown.getvalue().rstrip().split("\r")[-1].startswith("[########################] 100%"), shown.getvalue()
one(a, "SELECT attachment_stop_sync()")
print(f"ok   python/{driver}: load, save in a transaction, rollback, sync, second device, worker, progress bar")
