"""The hostile-input catalogue: one table of cases per way hostile input arrives.

1. SQL arguments to every attachment_* function (run in a child process, so a
   crash is a reported failure, not a dead test run);
2. synced data: hostile ids, extensions, media types and meta_data in a watched table;
3. hand-edited internal tables (a database file arriving from elsewhere);
4. hostile servers (tests/py/fault_proxy.py in front of nginx WebDAV and s3s-fs).

Each case must end in a clear error or a clean refusal (or safe handling), with
nothing read, written or deleted outside local_dir, no pass stuck and no crash.
One summary line is printed at the end."""
import contextlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import servers  # noqa: E402
from helpers import LIB, connect  # noqa: E402

MB = 1024 * 1024
HUGE = "x" * MB
TEST_TIMEOUTS = "connect=1,response=1.5,stall=1.5,min_rate=1024,min_rate_window=1"
WATCH_LIMIT_MS = "2000"
PASS_TIMEOUT = 30  # seconds a pass may take before a case counts as stuck
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}(\.[a-z0-9]+(\.[a-z0-9]+)*)?$")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
SAFE_EXT = re.compile(r"^\.?([A-Za-z0-9]+(\.[A-Za-z0-9]+)*)?$")
TALLY = {"cases": 0, "clean": 0, "escapes": 0, "stuck": 0, "crashes": 0}


def tearDownModule():
    print(f"\nhostile input: {TALLY['cases']} cases, {TALLY['clean']} clear errors or clean refusals, "
          f"{TALLY['escapes']} escapes, {TALLY['stuck']} stuck, {TALLY['crashes']} crashes", flush=True)


class Catalogue(unittest.TestCase):
    maxDiff = 2000

    @contextlib.contextmanager
    def case(self, group, name):
        with self.subTest(case=f"{group}: {name}"):
            TALLY["cases"] += 1
            yield
            TALLY["clean"] += 1

    def escape(self, cond, msg):
        if not cond:
            TALLY["escapes"] += 1
            self.fail(f"escape: {msg}")

    def run_pass(self, db, env=None, sql="SELECT attachment_sync();"):
        """attachment_sync() in a sqlite3 CLI of its own: a pass that never returns
        is a stuck case, a signal a crash. Returns (rc, stdout, stderr)."""
        try:
            proc = subprocess.run(["sqlite3", db, f".load {LIB}", sql], capture_output=True, text=True,
                                  timeout=PASS_TIMEOUT, env=env or os.environ.copy())
        except subprocess.TimeoutExpired:
            TALLY["stuck"] += 1
            self.fail(f"stuck: the pass did not return within {PASS_TIMEOUT} s")
        if proc.returncode < 0 or "internal error" in proc.stderr:
            TALLY["crashes"] += 1
            self.fail(f"crash: rc={proc.returncode} {proc.stderr[-2000:]}")
        if proc.returncode != 0:
            # A pass may refuse (bad config, vanished folder): then it says so, by name.
            self.assertRegex(proc.stderr, r"attachment_sync: \S", "a refusal is a clear error")
        return proc.returncode, proc.stdout, proc.stderr


def snapshot(root, skip=()):
    """Every path under root (but those under `skip`) with its size and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for n in filenames + dirnames:
            p = os.path.join(dirpath, n)
            if p in skip or re.search(r"\.db(-wal|-shm|-journal|-attachments-owners)?$", n):
                continue
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, os.path.islink(p) and os.readlink(p))
    return out


def files_containing(root, token):
    hits = []
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p) or not os.path.isfile(p) or os.path.getsize(p) > 50 * MB:
                continue
            with open(p, "rb") as f:
                if token in f.read():
                    hits.append(p)
    return hits


# ---------------------------------------------------------------------------
# 1. SQL arguments
# ---------------------------------------------------------------------------

# name: (min args, max args, argument names, valid arguments)
FUNCTIONS = {
    "attachment_init": (1, 1, ["config_json"], None),
    "attachment_sync": (0, 0, [], []),
    "attachment_verify": (0, 0, [], []),
    "attachment_reconcile": (0, 0, [], []),
    "attachment_expire_cache": (0, 0, [], []),
    "attachment_start_sync": (0, 0, [], []),
    "attachment_stop_sync": (0, 0, [], []),
    "attachment_pause": (0, 0, [], []),
    "attachment_resume": (0, 0, [], []),
    "attachment_local_uri": (1, 1, ["id"], ["abc"]),
    "attachment_data": (1, 1, ["id"], ["abc"]),
    "attachment_filename": (2, 2, ["id", "ext"], ["abc", "bin"]),
    "attachment_media_type": (1, 1, ["filename"], ["a.jpg"]),
    "attachment_retry": (1, 1, ["id"], ["abc"]),
    "attachment_fetch": (1, 2, ["id", "timeout_ms"], ["abc", 1000]),
    "attachment_progress": (0, 0, [], []),
    "attachment_save": (2, 4, ["data", "ext", "media_type", "meta_data"], [b"x", "bin", "text/plain", "{}"]),
    "attachment_save_file": (2, 4, ["path", "ext", "media_type", "meta_data"], ["@FILE", "bin", "text/plain", "{}"]),
    "attachment_delete": (1, 1, ["id"], ["abc"]),
    "attachment_watch": (2, 3, ["name", "query", "options"], ["w1", "SELECT id FROM docs", "{}"]),
    "attachment_unwatch": (1, 1, ["name"], ["w1"]),
    "attachment_pin": (1, 1, ["id"], ["abc"]),
    "attachment_unpin": (1, 1, ["id"], ["abc"]),
    "attachment_cache": (0, 0, [], []),
    "attachment_version": (0, 0, [], []),
    "attachment_generate_key": (0, 0, [], []),
}
# The reconciliation's pure helpers answer NULL for anything unsafe (documented: such
# references are skipped), so for them a NULL is the clean refusal.
PURE = {"attachment_filename", "attachment_media_type"}
WRONG = {"NULL": None, "INTEGER": 42, "REAL": 1.5, "BLOB": b"\x00\x01", "TEXT": "text"}
# Arguments where NULL is documented as meaning "none" or "all".
NULL_OK = {("attachment_retry", 0), ("attachment_fetch", 1), ("attachment_local_uri", 0), ("attachment_data", 0), ("attachment_delete", 0), ("attachment_pin", 0), ("attachment_unpin", 0), ("attachment_save", 2), ("attachment_save", 3),
           ("attachment_save_file", 2), ("attachment_save_file", 3), ("attachment_watch", 2)}


def config(**over):
    c = {"local_dir": "files", "remote": "file://@ROOT/remote"}
    c.update(over)
    return json.dumps(c)


def sql_cases():
    """(name, function, args, expect, needle): expect is 'misuse' (SQLITE_MISUSE, message
    '<function>: ... <needle> ...'), 'error' (any clear error naming the function),
    'null_or_misuse', or 'safe' (any clean outcome; the child checks nothing escaped)."""
    cases = []
    for fn, (lo, hi, names, valid) in FUNCTIONS.items():
        cases.append((f"{fn} with {hi + 1} arguments", fn, ["x"] * (hi + 1), "misuse", "argument"))
        if lo > 0:
            cases.append((f"{fn} with no argument", fn, [], "misuse", "argument"))
        valid = valid if valid is not None else ["@CONFIG"]
        for i, arg in enumerate(names):
            right = {"data": "BLOB", "timeout_ms": "INTEGER"}.get(arg, "TEXT")
            for tname, value in WRONG.items():
                if tname == right:
                    continue
                args = list(valid)
                args[i] = value
                if fn in PURE:
                    expect = "null_or_misuse"
                elif arg == "data" and tname == "TEXT":
                    expect = "safe"  # text is saved as its UTF-8 bytes, like SQLite's own blob functions
                elif tname == "NULL" and (fn, i) in NULL_OK:
                    expect = "safe"
                else:
                    expect = "misuse"
                cases.append((f"{fn} {arg} {tname}", fn, args, expect, arg))
    save = lambda *a: ("attachment_save", [b"data", *a])  # noqa: E731
    specials = [
        ("ext ../x", *save("../x"), "misuse", "extension"),
        ("ext /etc/passwd", *save("/etc/passwd"), "misuse", "extension"),
        ("ext a/b", *save("a/b"), "misuse", "extension"),
        ("ext with NUL", *save("jp\x00g"), "misuse", "extension"),
        ("ext fullwidth unicode", *save("ｊｐｇ"), "misuse", "extension"),
        ("ext 1 MB", *save(HUGE), "misuse", "extension"),
        ("ext .tmp marker", *save("tmp-123"), "misuse", "extension"),
        ("media_type CRLF header", *save("bin", "text/plain\r\nX-Injected: 1"), "misuse", "media_type"),
        ("media_type LF", *save("bin", "text/plain\n"), "misuse", "media_type"),
        ("media_type NUL", *save("bin", "text/plain\x00"), "misuse", "media_type"),
        ("media_type unicode", *save("bin", "tëxt/plain"), "misuse", "media_type"),
        ("media_type 1 MB", *save("bin", "text/" + HUGE), "misuse", "media_type"),
        ("media_type no slash", *save("bin", "plain"), "misuse", "media_type"),
        ("meta_data invalid JSON kept untouched", *save("bin", None, "{bad"), "safe", None),
        ("meta_data 1 MB", *save("bin", None, HUGE), "safe", None),
        ("meta_data NUL and unicode", *save("bin", None, "é\x00🙂"), "safe", None),
        ("save_file ../ path that does not exist", "attachment_save_file", ["../../nope/x", "bin"], "error", "nope"),
        ("save_file a directory", "attachment_save_file", ["/", "bin"], "error", "regular file"),
        ("save_file /dev/zero", "attachment_save_file", ["/dev/zero", "bin"], "error", "regular file"),
        ("save_file a FIFO", "attachment_save_file", ["@FIFO", "bin"], "error", "regular file"),
        ("save_file empty path", "attachment_save_file", ["", "bin"], "error", "''"),
        ("save_file path with NUL", "attachment_save_file", ["@FILE\x00/etc/passwd", "bin"], "error", "NUL"),
        ("save_file 1 MB path", "attachment_save_file", ["/" + HUGE, "bin"], "error", "attachment_save_file"),
        ("save_file ext ../x", "attachment_save_file", ["@FILE", "../x"], "misuse", "extension"),
    ]
    for fn in ("attachment_delete", "attachment_local_uri", "attachment_data", "attachment_retry", "attachment_fetch"):
        for label, value in (("../x", "../x"), ("/etc/passwd", "/etc/passwd"), ("NUL", "a\x00b"),
                             ("1 MB", HUGE), ("unicode lookalike", "аbc")):
            specials.append((f"id {label}", fn, [value], "safe", None))
    # Pinning names an id to keep: an unsafe one is refused, never looked up.
    for fn in ("attachment_pin", "attachment_unpin"):
        for label, value in (("../x", "../x"), ("/etc/passwd", "/etc/passwd"), ("NUL", "a\x00b"),
                             ("1 MB", HUGE), ("unicode lookalike", "аbc")):
            specials.append((f"id {label}", fn, [value], "misuse", "id"))
    specials += [
        ("id ../x", "attachment_filename", ["../x", "bin"], "null_or_misuse", None),
        ("ext ../x", "attachment_filename", ["abc", "../bin"], "null_or_misuse", None),
        ("filename ../../etc/passwd", "attachment_media_type", ["../../etc/passwd"], "safe", None),
        ("filename 1 MB", "attachment_media_type", [HUGE], "safe", None),
    ]
    bad_configs = [
        ("truncated JSON", "{", "config"),
        ("JSON array", "[]", "config"),
        ("JSON string", '"x"', "config"),
        ("JSON null", "null", "config"),
        ("empty", "", "config"),
        ("remote missing", json.dumps({"local_dir": "files"}), "remote"),
        ("unknown key", config(colour="red"), "colour"),
        ("duplicate keys", '{"local_dir":"files","local_dir":"/etc","remote":"file:///tmp/x"}', "local_dir"),
        ("local_dir INTEGER", config(local_dir=1), "local_dir"),
        ("local_dir empty", config(local_dir=""), "local_dir"),
        ("local_dir NUL", config(local_dir="fi\x00les"), "local_dir"),
        ("local_dir /", config(local_dir="/"), "local_dir"),
        ("local_dir /etc", config(local_dir="/etc"), "local_dir"),
        ("local_dir a foreign folder with files", config(local_dir="@ROOT/foreign"), "local_dir"),
        ("local_dir 1 MB", config(local_dir=HUGE), "local_dir"),
        ("remote ftp://", config(remote="ftp://host/x"), "remote"),
        ("remote http:// without host", config(remote="http://"), "remote"),
        ("remote file:// relative", config(remote="file://relative/dir"), "remote"),
        ("remote s3:// without bucket", config(remote="s3://"), "remote"),
        ("remote with credentials", config(remote="http://user:pw@host/x/"), "remote"),
        
        ("table attachment_queue", config(table="attachment_queue"), "table"),
        ("table _attachments_config", config(table="_attachments_config"), "table"),
        ("table sqlite_master", config(table="sqlite_master"), "table"),
        ("table attachment_watches", config(table="attachment_watches"), "table"),
        ("table with SQL", config(table='a"; DROP TABLE docs; --'), "table"),
        ("table empty", config(table=""), "table"),
        ("table 1 MB", config(table=HUGE), "table"),
        ("max_concurrency negative", config(max_concurrency=-1), "max_concurrency"),
        ("max_concurrency text", config(max_concurrency="many"), "max_concurrency"),
        ("archived_cache_limit negative", config(archived_cache_limit=-1), "archived_cache_limit"),
        ("sync_interval_ms 1e308", config(sync_interval_ms=1e308), "sync_interval_ms"),
        ("download_attachments text", config(download_attachments="yes"), "download_attachments"),
        ("encryption junk", config(encryption="junk"), "encryption"),
    ]
    for label, value, needle in bad_configs:
        specials.append((f"config {label}", "attachment_init", [value], "misuse", needle))
    # Control characters would be silently dropped by the URL parser (WHATWG rules) or end up in keys.
    for label, remote in (("http:// with CRLF", "http://host/x\r\nX: y/"), ("http:// with a tab", "http://ho\tst/x/"),
                          ("s3:// prefix with CRLF", "s3://bucket/p\r\nX: y"), ("file:// with NUL", "file:///tmp/a\x00b")):
        specials.append((f"config remote {label}", "attachment_init", [config(remote=remote)], "misuse", "remote"))
    # Accepted: a long URL is still a URL.
    specials.append(("config remote 1 MB", "attachment_init", [config(remote="http://h/" + HUGE)], "safe", None))
    watch = lambda q, o="{}": ("attachment_watch", ["w2", q, o])  # noqa: E731
    bad_watches = [
        ("query DELETE", watch("DELETE FROM docs"), "query"),
        ("query two statements", watch("SELECT id FROM docs; DROP TABLE docs"), "query"),
        ("query calls attachment_save", watch("SELECT attachment_save(x'00', 'bin') AS id"), "query"),
        ("query calls attachment_save_file", watch("SELECT attachment_save_file('@CANARY', 'txt') AS id"), "query"),
        ("query calls attachment_delete", watch("SELECT attachment_delete(id) AS id FROM docs"), "query"),
        ("query calls load_extension", watch("SELECT load_extension('/nonexistent') AS id"), "query"),
        ("query ATTACH", watch("ATTACH '@ROOT/evil.db' AS evil"), "query"),
        ("query PRAGMA", watch("PRAGMA writable_schema = 1"), "query"),
        ("query without id", watch("SELECT 1 AS notid"), "id"),
        ("query endless recursive CTE", watch(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x AS id FROM c"), "query"),
        ("query empty", watch(""), "query"),
        ("query NUL", watch("SELECT id FROM docs\x00; DELETE FROM docs"), "query"),
        ("query 1 MB, malformed", watch("SELECT id FROM docs WHERE '" + HUGE + "' != '' +"), "query"),
        ("options invalid JSON", watch("SELECT id FROM docs", "{bad"), "options"),
        ("options array", watch("SELECT id FROM docs", "[]"), "options"),
        ("options download text", watch("SELECT id FROM docs", '{"download":"yes"}'), "download"),
        ("options priority text", watch("SELECT id FROM docs", '{"priority":"high"}'), "priority"),
        ("options max_download_size negative", watch("SELECT id FROM docs", '{"max_download_size":-1}'),
         "max_download_size"),
        ("options refresh_ms negative", watch("SELECT id FROM docs", '{"refresh_ms":-5}'), "refresh_ms"),
        ("options unknown key", watch("SELECT id FROM docs", '{"colour":1}'), "colour"),
        ("options 1 MB", watch("SELECT id FROM docs", HUGE), "options"),
        ("name empty", ("attachment_watch", ["", "SELECT id FROM docs"]), "name"),
        ("name 1 MB", ("attachment_watch", [HUGE, "SELECT id FROM docs"]), "name"),
    ]
    for label, (fn, args), needle in bad_watches:
        specials.append((f"watch {label}", fn, args, "misuse", needle))
    specials += [
        ("name ../x", "attachment_unwatch", ["../x"], "safe", None),
        ("name 1 MB", "attachment_unwatch", [HUGE], "safe", None),
    ]
    for label, fn, args, expect, needle in specials:
        cases.append((f"{fn} {label}", fn, args, expect, needle))
    return cases


def sql_child(root):
    """Runs every SQL case in this process and prints one JSON line per case."""
    import sqlite3
    canary = os.path.join(root, "canary.txt")
    src = os.path.join(root, "src.bin")
    fifo = os.path.join(root, "fifo")
    conn = sqlite3.connect(os.path.join(root, "app", "sql.db"), isolation_level=None)
    conn.enable_load_extension(True)
    conn.load_extension(LIB)
    conn.enable_load_extension(False)
    good = config().replace("@ROOT", root)
    conn.execute("SELECT attachment_init(?)", (good,))
    conn.execute("CREATE TABLE docs(id TEXT)")
    conn.execute("SELECT attachment_watch('w1', 'SELECT id FROM docs')")
    functions = sorted(r[0] for r in conn.execute(
        "SELECT DISTINCT name FROM pragma_function_list WHERE name LIKE 'attachment%'"))
    print(json.dumps({"functions": functions}), flush=True)

    def subst(v):
        if isinstance(v, str):
            return (v.replace("@CONFIG", good).replace("@ROOT", root).replace("@FILE", src)
                    .replace("@FIFO", fifo).replace("@CANARY", canary))
        return v

    for i, (name, fn, args, expect, needle) in enumerate(sql_cases()):
        args = [subst(a) for a in args]
        sql = f"SELECT {fn}({', '.join('?' * len(args))})"
        out = {"i": i}
        try:
            value = conn.execute(sql, args).fetchone()[0]
            out["value"] = (value[:200] if isinstance(value, str) else
                            "BLOB:" + value[:200].hex() if isinstance(value, bytes) else value)
        except sqlite3.Error as e:
            out["code"] = getattr(e, "sqlite_errorname", "?")
            out["error"] = str(e)[:3000]
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        print(json.dumps(out), flush=True)
    conn.execute("SELECT attachment_stop_sync()")


class SqlArguments(Catalogue):
    def test_sql_arguments(self):
        root = tempfile.mkdtemp(prefix="att-hostile-sql-")
        self.addCleanup(shutil.rmtree, root, True)
        os.makedirs(os.path.join(root, "app"))
        token = secrets.token_hex(16)
        canary = os.path.join(root, "canary.txt")
        with open(canary, "w") as f:
            f.write(token)
        with open(os.path.join(root, "src.bin"), "wb") as f:
            f.write(b"a file to save")
        os.mkfifo(os.path.join(root, "fifo"))
        os.makedirs(os.path.join(root, "foreign"))
        with open(os.path.join(root, "foreign", "keep.txt"), "w") as f:
            f.write("not ours")
        skip = {os.path.join(root, "app", "files"), os.path.join(root, "remote")}
        before = snapshot(root, skip=skip)
        env = dict(os.environ, SQLITE_ATTACHMENTS_WATCH_TIME_LIMIT_MS=WATCH_LIMIT_MS)
        try:
            proc = subprocess.run([sys.executable, __file__, "--sql-child", root], capture_output=True,
                                  text=True, timeout=60, env=env)
            stuck = False
        except subprocess.TimeoutExpired as e:
            proc, stuck = e, True
        lines = [json.loads(line) for line in (proc.stdout or "").splitlines() if line.startswith("{")]
        self.assertTrue(lines, (proc.stderr or "")[-3000:])
        functions = lines[0]["functions"]
        self.assertEqual(sorted(FUNCTIONS), functions, "every attachment_* function has its cases")
        results = {r["i"]: r for r in lines[1:]}
        for i, (name, fn, args, expect, needle) in enumerate(sql_cases()):
            with self.case("sql", name):
                r = results.get(i)
                if r is None:
                    TALLY["stuck" if stuck else "crashes"] += 1
                    self.fail(f"{'stuck' if stuck else 'crash'} before this case: {(proc.stderr or '')[-2000:]}")
                error, code = r.get("error"), r.get("code")
                if error is not None:
                    self.assertTrue(error.startswith(f"{fn}: "), f"the error names the function: {error[:300]}")
                    self.assertNotIn("internal error", error)
                    self.assertLess(len(error), 2000, "no echo of a huge argument")
                if expect == "misuse":
                    self.assertEqual(code, "SQLITE_MISUSE", r)
                    self.assertIn(needle, error)
                elif expect == "error":
                    self.assertIsNotNone(error, r)
                    self.assertIn(needle, error)
                elif expect == "null_or_misuse":
                    self.assertTrue(code == "SQLITE_MISUSE" or (error is None and r["value"] is None), r)
                value = r.get("value")
                if isinstance(value, str):
                    self.escape(token not in value and "root:" not in value, f"{name} returned {value[:100]}")
                    if fn == "attachment_local_uri":
                        self.escape(value.startswith(os.path.join(root, "app", "files") + "/"), value)
        with self.case("sql", "nothing written or read outside local_dir"):
            self.escape(files_containing(root, token.encode()) == [canary], "the canary was copied")
            after = snapshot(root, skip=skip)
            self.escape(after == before, set(after.items()) ^ set(before.items()))
            for n in os.listdir(os.path.join(root, "app", "files")):
                self.escape(SAFE_NAME.match(n) or n == ".attachments-owner", n)
        with self.case("sql", "the child process ends cleanly"):
            if stuck:
                TALLY["stuck"] += 1
                self.fail("stuck")
            if proc.returncode != 0:
                TALLY["crashes"] += 1
                self.fail(f"crash: rc={proc.returncode} {proc.stderr[-2000:]}")


# ---------------------------------------------------------------------------
# 2. Synced data
# ---------------------------------------------------------------------------

SYNCED = [
    # (name, id, file_extension, media_type, meta_data)
    ("id ../x", "../x", "bin", None, None),
    ("id /etc/passwd", "/etc/passwd", "bin", None, None),
    ("id a/b", "a/b", "bin", None, None),
    ("id .", ".", "bin", None, None),
    ("id ..", "..", "", None, None),
    ("id .hidden", ".hidden", "bin", None, None),
    ("id with NUL", "ab\x00/../../x", "bin", None, None),
    ("id 10 kB", "a" * 10_000, "bin", None, None),
    ("id unicode lookalike", "аbc", "bin", None, None),
    ("id with backslash", "..\\x", "bin", None, None),
    ("id CON", "CON", "bin", None, None),
    ("id ending in a temp marker", "abc.tmp-123", "", None, None),
    ("id our owner marker", ".attachments-owner", "", None, None),
    ("ids differing only by case", "CaseId", "bin", None, None),
    ("ids differing only by case (lower)", "caseid", "bin", None, None),
    ("id empty", "", "bin", None, None),
    ("id with spaces", "a b", "bin", None, None),
    ("BLOB id", b"\x2e\x2e\x2fx", "bin", None, None),
    ("INTEGER id", 42, "bin", None, None),
    ("REAL id", 1.5, "bin", None, None),
    ("ext ../x", "ok1", "../x", None, None),
    ("ext a/b", "ok2", "a/b", None, None),
    ("ext /etc/passwd", "ok3", "/etc/passwd", None, None),
    ("ext tmp marker", "ok4", "tmp-1", None, None),
    ("ext NUL", "ok5", "b\x00in", None, None),
    ("ext 10 kB", "ok6", "b" * 10_000, None, None),
    ("ext BLOB", "ok7", b"bin", None, None),
    ("media_type CRLF", "ok8", "bin", "text/plain\r\nX-Injected: 1", None),
    ("meta_data invalid JSON", "ok9", "bin", None, "{bad"),
    ("meta_data 1 MB", "ok10", "bin", None, "[" + "1," * (MB // 2) + "1]"),
]


class SyncedData(Catalogue):
    TOKEN = "tok-HOSTILE-" + secrets.token_hex(8)

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-hostile-synced-")
        cls.www = os.path.join(cls.root, "www")
        os.makedirs(os.path.join(cls.www, "files"))
        cls.nginx = servers.Nginx(cls.www, token=cls.TOKEN)
        cls.proxy = servers.FaultProxy(cls.nginx.port, "pass")
        cls.env = dict(os.environ, ATTACHMENTS_HTTP_TOKEN=cls.TOKEN, SQLITE_ATTACHMENTS_TEST_TIMEOUTS=TEST_TIMEOUTS)

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()
        cls.nginx.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_synced_data(self):
        app = os.path.join(self.root, "app")
        os.makedirs(app)
        local = os.path.join(app, "files")
        db = os.path.join(app, "b.db")
        with open(os.path.join(app, "sibling-canary.txt"), "w") as f:
            f.write("sibling")
        os.environ["ATTACHMENTS_HTTP_TOKEN"] = self.TOKEN
        b = connect(db)
        b.execute("SELECT attachment_init(?)", (json.dumps(
            {"local_dir": "files", "remote": f"{self.proxy.url}/files/"}),))
        b.execute("CREATE TABLE docs(rid INTEGER PRIMARY KEY, id ANY, ext ANY, mt TEXT, meta TEXT)")
        b.execute("SELECT attachment_watch('docs', 'SELECT id, ext AS file_extension, mt AS media_type, "
                  "meta AS meta_data FROM docs')")
        # A control file other devices uploaded: it must keep downloading whatever else arrives.
        with open(os.path.join(self.www, "files", "control.bin"), "wb") as f:
            f.write(b"control")
        b.execute("INSERT INTO docs(id, ext) VALUES ('control', 'bin')")
        self.run_pass(db, self.env)
        self.assertEqual(b.execute("SELECT state FROM attachments WHERE id = 'control'").fetchone(), (3,))
        passwd = os.stat("/etc/passwd")
        for name, id_, ext, mt, meta in SYNCED:
            with self.case("synced", name):
                skip = {local, os.path.join(self.www, "files")}
                before = snapshot(self.root, skip=skip)
                seen = len(self.proxy.requests())
                b.execute("DELETE FROM docs WHERE id IS NOT 'control'")
                b.execute("INSERT INTO docs(id, ext, mt, meta) VALUES (?, ?, ?, ?)", (id_, ext, mt, meta))
                rc, out, err = self.run_pass(db, self.env)
                self.assertEqual(rc, 0, err)
                requests = self.proxy.requests()[seen:]
                for r in requests:
                    path = r.split()[1]
                    self.escape(path.startswith("/files/") and SAFE_NAME.match(path[len("/files/"):]),
                                f"a request for an unsafe name: {r}")
                text = lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)  # noqa: E731
                safe = SAFE_ID.match(text(id_)) and SAFE_EXT.match(text(ext)) and len(text(ext)) <= 16
                if not safe:
                    self.escape(requests == [], f"a rejected name reached the server: {requests}")
                for fn, uri in b.execute("SELECT filename, local_uri FROM attachments"):
                    self.escape(SAFE_NAME.match(fn), f"an unsafe filename in the queue: {fn!r}")
                    self.escape(uri in (None, fn), f"local_uri {uri!r}")
                for n in os.listdir(local):
                    self.escape(n == ".attachments-owner" or SAFE_NAME.match(n), f"local file {n!r}")
                for n in os.listdir(os.path.join(self.www, "files")):
                    self.escape(SAFE_NAME.match(n), f"remote file {n!r}")
                after = snapshot(self.root, skip=skip)
                self.escape(after == before, set(after.items()) ^ set(before.items()))
                self.escape(os.stat("/etc/passwd").st_mtime_ns == passwd.st_mtime_ns, "/etc/passwd changed")
                self.assertEqual(b.execute("SELECT state FROM attachments WHERE id = 'control'").fetchone(), (3,),
                                 "one hostile reference does not stop the others")
                state = b.execute("SELECT state, last_error FROM attachment_watches").fetchone()
                self.assertEqual(state[0], "ok", state)
        b.close()


# ---------------------------------------------------------------------------
# 3. Hand-edited internal tables
# ---------------------------------------------------------------------------

def q(sql):
    return lambda c, ctx: c.execute(sql.format(**ctx))


def queue_row(**cols):
    """A hand-inserted queue row (defaults: a QUEUED_UPLOAD of a safe name)."""
    row = {"id": "evil", "filename": "evil.bin", "local_uri": "evil.bin", "timestamp": 0, "state": 0,
           "has_synced": 0, "size": 5}
    row.update(cols)

    def edit(c, ctx):
        vals = {k: (v.replace("{root}", ctx["root"]).replace("{canary}", ctx["canary"]) if isinstance(v, str) else v)
                for k, v in row.items()}
        c.execute(f"INSERT INTO attachments({', '.join(vals)}) VALUES ({', '.join('?' * len(vals))})",
                  list(vals.values()))
    return edit


def set_config(**over):
    def edit(c, ctx):
        cfg = json.loads(c.execute("SELECT config FROM _attachments_config").fetchone()[0])
        cfg.update({k: (v.format(**ctx) if isinstance(v, str) else v) for k, v in over.items()})
        c.execute("UPDATE _attachments_config SET config = ?", (json.dumps(cfg),))
    return edit


def watch_query(query, **cols):
    def edit(c, ctx):
        c.execute("UPDATE _attachments_watch SET query = ?, dirty = 1 WHERE name = 'docs'",
                  (query.format(**ctx),))
        for k, v in cols.items():
            c.execute(f"UPDATE _attachments_watch SET {k} = ? WHERE name = 'docs'", (v,))
    return edit


TABLES = [
    # config
    ("config bad JSON", q("UPDATE _attachments_config SET config = '{{bad'")),
    ("config duplicate keys", q("""UPDATE _attachments_config SET config =
        '{{"local_dir":"files","local_dir":"{root}","remote":"file://{remote}"}}'""")),
    ("config local_dir pointing at a folder with files", set_config(local_dir="{root}/elsewhere")),
    ("config local_dir /", set_config(local_dir="/")),
    ("config local_dir ..", set_config(local_dir="..")),
    ("config remote pointing elsewhere", set_config(remote="file://{root}/remote-elsewhere")),
    ("config table sqlite_master", set_config(table="sqlite_master")),
    ("config table _attachments_watch", set_config(table="_attachments_watch")),
    ("config JSON null", q("UPDATE _attachments_config SET config = 'null'")),
    ("config unknown key", set_config(colour="red")),
    ("config huge", q("UPDATE _attachments_config SET config = '{{\"x\":\"' || hex(zeroblob(500000)) || '\"}}'")),
    # watches
    ("watch query attachment_save_file(canary)",
     watch_query("SELECT attachment_save_file('{canary}', 'txt') AS id")),
    ("watch query readfile(canary)", watch_query("SELECT readfile('{canary}') AS id")),
    ("watch query writefile", watch_query("SELECT writefile('{root}/written.txt', 'x') AS id")),
    ("watch query load_extension", watch_query("SELECT load_extension('{root}/nope.so') AS id")),
    ("watch query attachment_delete", watch_query("SELECT attachment_delete(id) AS id FROM attachments")),
    ("watch query attachment_save", watch_query("SELECT attachment_save(x'00', 'bin') AS id")),
    ("watch query ATTACH", watch_query("ATTACH '{root}/attached.db' AS evil")),
    ("watch query DELETE ... RETURNING", watch_query("DELETE FROM docs RETURNING id")),
    ("watch query two statements", watch_query("SELECT id FROM docs; DELETE FROM docs")),
    ("watch query endless recursive CTE", watch_query(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x AS id FROM c")),
    ("watch query 10^6 rows", watch_query(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) "
        "SELECT 'r' || x AS id FROM c", options='{{"download": false}}'.replace("{{", "{").replace("}}", "}"))),
    ("watch query empty", watch_query("")),
    ("watch options junk", watch_query("SELECT id FROM docs", options="{bad")),
    ("watch refresh_ms negative", watch_query("SELECT id FROM docs", refresh_ms=-1)),
    ("watch refresh_ms huge", watch_query("SELECT id FROM docs", refresh_ms=2 ** 62)),
    ("watch state junk", watch_query("SELECT id FROM docs", state="junk")),
    ("watch legacy triggers naming an app trigger", watch_query("SELECT id FROM docs", triggers='["app_audit"]')),
    ("watch triggers junk", watch_query("SELECT id FROM docs", triggers="{bad")),
    ("_attachments_trigger naming an app trigger",
     q("INSERT INTO _attachments_trigger(name, watch, tbl, sql) VALUES ('app_audit', 'docs', 'docs', 'x')")),
    # the queue
    ("queue filename ../../x", queue_row(filename="../../x.bin", local_uri="../../x.bin")),
    ("queue local_uri absolute canary", queue_row(local_uri="{canary}")),
    ("queue local_uri /etc/passwd", queue_row(local_uri="/etc/passwd")),
    ("queue local_uri ../canary", queue_row(local_uri="../../canary.txt")),
    ("queue local_uri a symlink to the canary", queue_row(local_uri="link.bin", filename="link.bin", id="link")),
    ("queue delete of ../canary", queue_row(state=2, has_synced=1, filename="../../canary.txt",
                                            local_uri="../../canary.txt")),
    ("queue delete with local_uri the canary", queue_row(state=2, has_synced=1, local_uri="{canary}")),
    ("queue download into ../", queue_row(state=1, filename="../../dl.bin", local_uri=None)),
    ("queue synced with local_uri the canary", queue_row(state=3, has_synced=1, local_uri="{canary}")),
    ("queue archived with local_uri the canary, evicted",
     lambda c, ctx: (queue_row(state=4, has_synced=1, local_uri="{canary}")(c, ctx),
                     set_config(archived_cache_limit=0)(c, ctx))),
    ("queue state 9", queue_row(state=9)),
    ("queue state -1", queue_row(state=-1)),
    ("queue state text", queue_row(state="text")),
    ("queue sha256 junk", queue_row(sha256="not-a-hash")),
    ("queue size -1", queue_row(size=-1)),
    ("queue upload_resume junk JSON", queue_row(upload_resume="{bad")),
    ("queue upload_resume huge", queue_row(upload_resume="x" * MB)),
    ("queue upload_resume pointing at another key", queue_row(upload_resume='{"key":"../other","upload_id":"x"}')),
    ("queue claimed_by junk", queue_row(claimed_by="\x00junk", claimed_until=2 ** 62)),
    ("queue next_attempt_at huge", queue_row(next_attempt_at=2 ** 63 - 1)),
    ("queue next_attempt_at negative", queue_row(next_attempt_at=-2 ** 63)),
    ("queue attempts negative", queue_row(attempts=-5)),
    ("queue id BLOB", queue_row(id=b"../x")),
    ("queue id INTEGER", queue_row(id=7)),
    ("queue filename BLOB", queue_row(filename=b"../../x.bin")),
    ("queue local_uri INTEGER", queue_row(local_uri=12)),
    ("queue media_type BLOB", queue_row(media_type=b"text/plain\r\nX: y")),
    ("queue sha256 INTEGER", queue_row(sha256=5)),
    ("queue attempts TEXT", queue_row(attempts="many")),
    ("queue upload_resume BLOB", queue_row(upload_resume=b"\x00\x01")),
    ("queue claimed_by INTEGER", queue_row(claimed_by=5, claimed_until=0)),
    ("queue timestamp TEXT", queue_row(timestamp="yesterday")),
    # references
    ("_attachments_ref with a precomputed unsafe filename", q(
        "INSERT INTO _attachments_ref(watch, id, file_extension, filename) VALUES ('docs', 'refd', 'bin', '../../r.bin');"
        " INSERT OR IGNORE INTO _attachments_delta VALUES ('refd')".split(";")[0])),
    ("_attachments_ref with an unsafe id", q(
        "INSERT INTO _attachments_ref(watch, id, file_extension, filename) VALUES ('docs', '../x', 'bin', '../x.bin')")),
    ("_attachments_ref media_type CRLF", q(
        "INSERT INTO _attachments_ref(watch, id, file_extension, media_type, filename) "
        "VALUES ('docs', 'mt', 'bin', 'a/b\r\nX: y', 'mt.bin')")),
    ("_attachments_delta junk", q("INSERT INTO _attachments_delta VALUES ('../x'), ('/etc/passwd'), ('')")),
    ("_attachments_delta 10 kB id", q("INSERT INTO _attachments_delta VALUES (hex(zeroblob(5000)))")),
]


class InternalTables(Catalogue):
    def test_hand_edited_tables(self):
        root = tempfile.mkdtemp(prefix="att-hostile-tables-")
        self.addCleanup(shutil.rmtree, root, True)
        remote = os.path.join(root, "remote")
        token = ("canary-" + secrets.token_hex(12)).encode()
        canary = os.path.join(root, "canary.txt")
        elsewhere = os.path.join(root, "elsewhere")
        os.makedirs(elsewhere)
        for p in (canary, os.path.join(elsewhere, "canary.bin")):
            with open(p, "wb") as f:
                f.write(token)
        env = dict(os.environ, SQLITE_ATTACHMENTS_WATCH_TIME_LIMIT_MS=WATCH_LIMIT_MS)
        passwd = os.stat("/etc/passwd")
        for n, (name, edit) in enumerate(TABLES):
            with self.case("tables", name):
                app = os.path.join(root, f"case{n}")
                os.makedirs(app)
                local = os.path.join(app, "files")
                db = os.path.join(app, "t.db")
                with open(os.path.join(app, "sibling.txt"), "wb") as f:
                    f.write(token)
                c = connect(db)
                c.execute("SELECT attachment_init(?)", (json.dumps(
                    {"local_dir": "files", "remote": f"file://{remote}"}),))
                c.execute("CREATE TABLE docs(id TEXT)")
                c.execute("CREATE TABLE audit(n)")
                c.execute("CREATE TRIGGER app_audit AFTER INSERT ON docs BEGIN INSERT INTO audit VALUES (1); END")
                c.execute("INSERT INTO docs VALUES ('keep')")
                c.execute("SELECT attachment_watch('docs', 'SELECT id FROM docs')")
                saved = c.execute("SELECT attachment_save(x'0102', 'bin')").fetchone()[0]
                os.symlink(canary, os.path.join(local, "link.bin"))
                c.close()
                # The edit, as another program would make it: no extension loaded.
                raw = connect(db, load=False)
                ctx = {"root": root, "canary": canary, "remote": remote}
                edit(raw, ctx)
                raw.close()
                other = os.path.join(root, "remote-elsewhere")
                before = snapshot(root, skip={local, remote, other})
                started = time.monotonic()
                rc, out, err = self.run_pass(db, env)
                self.assertLess(time.monotonic() - started, PASS_TIMEOUT)
                hits = [p for p in files_containing(root, token)
                        if p not in (canary, os.path.join(elsewhere, "canary.bin")) and not p.endswith("/sibling.txt")]
                self.escape(hits == [], f"the canary's content was copied to {hits}")
                for p in (canary, os.path.join(elsewhere, "canary.bin"), os.path.join(app, "sibling.txt")):
                    self.escape(os.path.exists(p), f"{p} was deleted")
                    with open(p, "rb") as f:
                        self.escape(f.read() == token, f"{p} was changed")
                after = snapshot(root, skip={local, remote, other})
                self.escape(after == before, set(after.items()) ^ set(before.items()))
                self.escape(os.stat("/etc/passwd").st_mtime_ns == passwd.st_mtime_ns, "/etc/passwd changed")
                for fn in [f for d in (remote, other) if os.path.isdir(d) for f in os.listdir(d)]:
                    self.escape(SAFE_NAME.match(fn), f"remote file {fn!r}")
                c = connect(db, load=False)
                self.assertEqual(c.execute("SELECT id FROM docs").fetchall(), [("keep",)], "app data untouched")
                self.assertEqual(c.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'app_audit'").fetchone(),
                                 (1,), "the app's own trigger survives")
                self.assertEqual(c.execute("SELECT count(*) FROM audit").fetchone(), (1,))
                if name.startswith("watch"):
                    self.assertEqual(c.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'evil' OR "
                                               "name LIKE 'attached%'").fetchone(), (0,))
                    self.assertIsNotNone(c.execute("SELECT 1 FROM attachments WHERE id = ?", (saved,)).fetchone(),
                                         "nothing deleted by a watch")
                    ids = {r[0] for r in c.execute("SELECT id FROM attachments")}
                    self.assertLessEqual(ids, {saved, "keep"}, "nothing saved by a watch")
                if name.startswith(("queue", "_attachments_", "watch")):
                    # One bad row or watch is that row's or watch's problem: the pass goes on for the rest.
                    if rc != 0:
                        TALLY["stuck"] += 1
                        self.fail(f"stuck: one hand-edited row fails every pass: {err.strip()[:300]}")
                    # Uploaded: SYNCED, or ARCHIVED by the same pass since no watch references
                    # it (and then evicted where the case sets archived_cache_limit 0).
                    self.assertTrue(os.path.exists(os.path.join(remote, f"{saved}.bin")), "the good upload went through")
                    self.assertIn(c.execute("SELECT state, has_synced FROM attachments WHERE id = ?", (saved,)).fetchone(),
                                  ((3, 1), (4, 1), None), "the good upload went through")
                bad_name = {"queue filename ../../x": "../../x.bin", "queue delete of ../canary": "../../canary.txt",
                            "queue download into ../": "../../dl.bin"}.get(name)
                if bad_name:
                    error = c.execute("SELECT last_error FROM attachments WHERE id = 'evil'").fetchone()
                    self.assertIn(bad_name, error[0] if error and error[0] else "", "the error names the bad filename")
                if name in ("queue state 9", "queue state -1", "queue state text", "queue id BLOB",
                            "queue filename BLOB"):
                    errors = c.execute("SELECT last_error FROM attachments WHERE id IS NOT ? AND id IS NOT 'keep'", (saved,)).fetchall()
                    self.assertTrue(errors and all(e[0] for e in errors), f"the row says what is wrong: {errors}")
                c.close()
                c = connect(db)  # the live view copes with whatever the table holds
                for view in ("attachment_queue", "attachment_watches"):
                    try:
                        c.execute(f"SELECT * FROM {view}").fetchall()
                    except sqlite3.Error as e:  # a bad stored config is refused by name, never a crash
                        self.assertTrue(str(e).startswith(f"{view}: config"), e)
                if os.environ.get("HOSTILE_DEBUG"):
                    print(name, rc, err.strip()[:200], c.execute(
                        "SELECT id, state, last_error FROM attachments WHERE id NOT IN (?, 'keep')", (saved,)).fetchall(),
                        c.execute("SELECT state, last_error FROM _attachments_watch").fetchall(), file=sys.stderr)
                if rc == 0 and "query" in name:
                    st = c.execute("SELECT state, last_error FROM _attachments_watch").fetchone()
                    if st[0] != "ok":
                        self.assertTrue(st[1], "a failed watch says why")
                c.close()


# ---------------------------------------------------------------------------
# 4. Hostile servers
# ---------------------------------------------------------------------------

# (name, mode, options, direction, expected error class or None when any class will do)
SERVER_MODES = [
    *[(f"PUT redirected {s}", "redirect", {"status": s, "methods": "PUT", "location": "/login"}, "up", "config")
      for s in (301, 302, 303, 307, 308)],
    *[(f"DELETE redirected {s}", "redirect", {"status": s, "methods": "DELETE", "location": "/login"}, "delete",
       "config") for s in (301, 302, 303, 307, 308)],
    *[(f"GET redirected {s} to a login page", "redirect", {"status": s, "methods": "GET", "location": "/login"},
       "down", "config") for s in (301, 302, 303, 307, 308)],
    *[(f"GET answered {s} with a Location", "redirect", {"status": s, "methods": "GET"}, "down", None)
      for s in (300, 304, 305)],
    ("GET redirected to another host", "redirect",
     {"status": 307, "methods": "GET", "location": "http://example.invalid/x"}, "down", None),
    ("GET redirected to file://", "redirect", {"status": 302, "methods": "GET", "location": "file:///etc/passwd"},
     "down", None),
    ("truncated body", "truncate", {}, "down", "integrity"),
    ("truncated close-delimited body", "truncate_close", {}, "down", "integrity"),
    ("truncated chunked body", "truncate_chunked", {}, "down", "integrity"),
    ("gzip nobody asked for", "gzip", {}, "down", "integrity"),
    # S3 only: the object's stored SHA-256 tells; a plain http:// server gives nothing to check against.
    ("body cut short with a matching Content-Length", "short_length", {}, "down", "integrity"),
    ("error body echoing the request (GET)", "echo", {"methods": "GET", "status": 400}, "down", None),
    ("error body echoing the request (PUT)", "echo", {"methods": "PUT", "status": 500}, "up", None),
    ("1 byte/s trickle down", "trickle", {"trickle_bytes": 1, "trickle_delay": 1}, "down", "network"),
    ("1 byte/s trickle up", "trickle", {"trickle_bytes": 1, "trickle_delay": 1}, "up", "network"),
    ("silence after a GET", "silent", {"methods": "GET"}, "down", "network"),
    ("silence after a PUT", "silent", {"methods": "PUT"}, "up", "network"),
    ("a PUT body never read", "never_read", {}, "up", "network"),
    ("a body that stalls half way", "stall_body", {}, "down", "network"),
    ("503 with a huge Retry-After", "status", {"status": 503, "methods": "PUT", "retry_after": "9" * 30}, "up",
     "server"),
    ("503 with a junk Retry-After", "status", {"status": 503, "methods": "GET", "retry_after": "\x7fjunk"}, "down",
     None),
]


class HostileServers(Catalogue):
    TOKEN = "tok-HOSTILE-" + secrets.token_hex(8)
    KEY = "AKHOSTILE" + secrets.token_hex(6).upper()
    SECRET = "sk-HOSTILE-" + secrets.token_hex(12)
    SESSION = "sess-HOSTILE-" + secrets.token_hex(8)

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="att-hostile-servers-")
        cls.www = os.path.join(cls.root, "www")
        os.makedirs(os.path.join(cls.www, "files"))
        cls.nginx = servers.Nginx(cls.www, token=cls.TOKEN)
        s3root = os.path.join(cls.root, "s3")
        os.makedirs(os.path.join(s3root, servers.BUCKET))
        port = servers.free_port()
        cls.s3 = servers.Server([servers.S3S_FS, "--host", "127.0.0.1", "--port", str(port), "--access-key", cls.KEY,
                                 "--secret-key", cls.SECRET, s3root], port)
        cls.env = dict(os.environ, ATTACHMENTS_HTTP_TOKEN=cls.TOKEN, AWS_ACCESS_KEY_ID=cls.KEY,
                       AWS_SECRET_ACCESS_KEY=cls.SECRET, AWS_SESSION_TOKEN=cls.SESSION,
                       SQLITE_ATTACHMENTS_TEST_TIMEOUTS=TEST_TIMEOUTS)

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()
        cls.s3.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def remote(self, kind, port):
        if kind == "http":
            return {"remote": f"http://127.0.0.1:{port}/files/"}
        return {"remote": f"s3://{servers.BUCKET}/p", "s3_endpoint": f"http://127.0.0.1:{port}"}

    def device(self, name, config):
        db = os.path.join(self.root, f"{name}.db")
        c = connect(db)
        c.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": f"files-{name}", **config}),))
        c.execute("CREATE TABLE docs(id TEXT)")
        c.execute("SELECT attachment_watch('docs', 'SELECT id, ''bin'' AS file_extension FROM docs')")
        return db, c

    def test_hostile_servers(self):
        # One file per backend, uploaded straight to the server, for the download cases.
        data = os.urandom(8000)
        photos = {}
        for kind, port in (("http", self.nginx.port), ("s3", self.s3.port)):
            db, c = self.device(f"up-{kind}", self.remote(kind, port))
            photos[kind] = c.execute("SELECT attachment_save(?, 'bin')", (data,)).fetchone()[0]
            c.execute("INSERT INTO docs VALUES (?)", (photos[kind],))
            c.close()
            self.run_pass(db, self.env)
            c = connect(db)
            self.assertEqual(c.execute("SELECT state FROM attachments").fetchone(), (3,))
            c.close()
        secrets_ = [self.TOKEN, self.KEY, self.SECRET, self.SESSION]
        for n, (name, mode, options, direction, klass) in enumerate(SERVER_MODES):
            for kind, port in (("http", self.nginx.port), ("s3", self.s3.port)):
                if mode == "short_length" and kind == "http":
                    continue
                with self.case("servers", f"{kind} {name}"):
                    proxy = servers.FaultProxy(port, mode, **options)
                    self.addCleanup(proxy.stop)
                    dev = f"{kind}{n}"
                    db, c = self.device(dev, self.remote(kind, proxy.port))
                    if direction == "down":
                        c.execute("INSERT INTO docs VALUES (?)", (photos[kind],))
                    else:
                        c.execute("INSERT INTO docs VALUES (attachment_save(?, 'bin'))", (data,))
                    c.close()
                    if direction == "delete":
                        self.run_pass(db, self.env)
                        c = connect(db)
                        stored = c.execute("SELECT filename, state FROM attachments").fetchone()
                        self.assertEqual(stored[1], 3, "uploaded before the delete")
                        c.execute("SELECT attachment_delete(id) FROM docs")
                        c.execute("DELETE FROM docs")
                        c.close()
                    started = time.monotonic()
                    rc, out, err = self.run_pass(db, self.env)
                    seconds = time.monotonic() - started
                    proxy.stop()
                    if seconds > 15:
                        TALLY["stuck"] += 1
                        self.fail(f"stuck: the pass took {seconds:.1f} s")
                    self.assertEqual(rc, 0, err)
                    c = connect(db)
                    state, error, error_class, local_uri = c.execute(
                        "SELECT state, last_error, error_class, local_uri FROM attachment_queue").fetchone()
                    c.close()
                    resumed = state == 3 and direction == "down"
                    if resumed:
                        # A download cut short keeps what arrived and may finish within the pass
                        # by asking for the rest (a 206 the proxy passes untouched): then, and
                        # only then, the file must be the object, byte for byte.
                        with open(os.path.join(self.root, f"files-{dev}", local_uri), "rb") as f:
                            self.escape(f.read() == data, "a faulty download became SYNCED with other bytes")
                    else:
                        self.escape(state != 3, f"a faulty transfer became SYNCED ({error})")
                    if direction == "delete":
                        self.assertEqual(state, 2, "the delete stays queued")
                        where = (os.path.join(self.www, "files") if kind == "http"
                                 else os.path.join(self.root, "s3", servers.BUCKET, "p"))
                        self.escape(os.path.exists(os.path.join(where, stored[0])), "a redirected delete deleted")
                    if not resumed:
                        self.assertTrue(error and error_class, "the failure is recorded with its class")
                        if klass:
                            self.assertEqual(error_class, klass, error)
                    blobs = [out.encode(), err.encode(), (error or "").encode()]
                    for p in os.listdir(self.root):
                        if p.startswith(f"{dev}.db"):
                            with open(os.path.join(self.root, p), "rb") as f:
                                blobs.append(f.read())
                    for blob in blobs:
                        for s in secrets_:
                            self.escape(s.encode() not in blob, f"a credential leaked: {blob[:500]!r}")
                    local = os.path.join(self.root, f"files-{dev}")
                    if direction == "down" and not resumed:
                        kept = [x for x in os.listdir(local) if x != ".attachments-owner"]
                        # Only what arrived of the file itself may stay, for the next attempt to
                        # resume from: never a login page, a temp file or anything at the file's name.
                        partial = [x for x in kept if x.endswith(".partial")]
                        self.escape(all(x.startswith(".") and x.endswith((".partial", ".partial-meta")) for x in kept),
                                    f"no login page or temp file kept: {kept}")
                        for x in partial:
                            with open(os.path.join(local, x), "rb") as f:
                                self.escape(data.startswith(f.read()), "a partial download is the file's start")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--sql-child":
        sql_child(sys.argv[2])
    else:
        unittest.main()
