"""make bench: each case against its baseline, measured side by side in one run.
Prints a table, writes bench/results.md and bench/ratios.svg. Never part of make test.

Environment: BENCH_REPEAT (default 3), BENCH_BIG_SIZES (MiB, default "64,256,1024"),
BENCH_IDLE_SECONDS (default 60), BENCH_QUICK=1 (small sizes, for trying the harness),
BENCH_ONLY=<comma list of row groups> runs only those groups (GROUPS below) and prints them
(results.md is left alone); BENCH_RTTS (ms, default "50,150"), BENCH_LINK_MBIT (a bandwidth
cap for the real-link rows, default none), BENCH_TMP (where big files go). The steering rows
(bandwidth cap and resume) are sized by BENCH_CAP_SECONDS (default 30) and BENCH_RESUME_MIB
(default 1024); the encryption rows (a big file up and down with and without end-to-end
encryption) by BENCH_ENCRYPTION_MIB (default 1024).

Peers (bench/install-peers.sh installs them): rclone and the AWS CLI; a row whose peer is missing
says "not measured" instead of failing the run.
"""
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import resource
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
import servers  # noqa: E402

LIB = os.path.join(ROOT, "dist", "attachments")
QUICK = os.environ.get("BENCH_QUICK") == "1"
REPEAT = int(os.environ.get("BENCH_REPEAT", "1" if QUICK else "3"))
BIG = [int(x) for x in os.environ.get("BENCH_BIG_SIZES", "8,16" if QUICK else "64,256,1024").split(",")]
IDLE_SECONDS = int(os.environ.get("BENCH_IDLE_SECONDS", "5" if QUICK else "60"))
SMALL_N = 200 if QUICK else 2000
SAVE_N = 1000 if QUICK else 10000
RECONCILE_N = 10000 if QUICK else 100000
LINK_N = 24 if QUICK else 300
PEER_N = 100 if QUICK else 2000
LINK_MIB = 8 if QUICK else 64
RTTS = [int(x) for x in os.environ.get("BENCH_RTTS", "50,150").split(",")]
LINK_MBIT = os.environ.get("BENCH_LINK_MBIT", "0")
PEER_NS = (4,) if QUICK else (4, 16, 32)  # rclone rows on the plain servers
LINK_NS = (4, 32) if QUICK else (4, 16, 32)  # curl and rclone rows on the real links
RESPONSIVE_N = 300 if QUICK else 2000
GROUPS = ["small", "saves", "reconcile", "reconcile_one_change", "big", "encryption", "idle", "steering", "peers", "links",
          "responsive", "powersync"]
ONLY = [g for g in os.environ.get("BENCH_ONLY", "").split(",") if g]
AWS = os.environ.get("BENCH_AWS", os.path.expanduser("~/.cache/sqlite-attachments/awscli-venv/bin/aws"))
RCLONE = shutil.which("rclone")
# The peers read no config of this machine: no rclone.conf, no AWS profile, no CA bundle override.
PEER_ENV = {k: v for k, v in os.environ.items() if k not in ("AWS_CA_BUNDLE", "AWS_PROFILE")}
PEER_ENV.update(AWS_ACCESS_KEY_ID=servers.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=servers.SECRET_KEY,
                AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                RCLONE_CONFIG="/dev/null")
MiB = 1024 * 1024
results = []  # rows of the results table
figures = {}  # our figures that the PowerSync comparison reuses


# Folders of many small files are removed at the end of the run, not between rows: on a file
# system without a journal, ext4 skips inodes freed in the last ~35 s when it allocates one
# (fs/ext4/ialloc.c, recently_deleted), so thousands of files deleted just before a row
# slow whichever tool runs next (see bench/PROFILES.md).
TO_REMOVE = []


def remove_later(path):
    TO_REMOVE.append(path)


def record(case, ours, baseline, unit, target, better="higher", note=""):
    """ratio > 1 means we are better than the baseline."""
    if baseline:
        ratio = ours / baseline if better == "higher" else baseline / ours
    else:
        ratio = None
    results.append(dict(case=case, ours=ours, baseline=baseline, unit=unit, ratio=ratio, target=target, note=note))
    b = f"{baseline:,.1f}" if baseline else "—"
    r = f"{ratio:.2f}x" if ratio else "—"
    print(f"  {case:<58} ours {ours:>12,.1f} {unit:<8} baseline {b:>12} {r:>7}  target {target}", flush=True)


def median(fn, n=REPEAT):
    return statistics.median(fn() for _ in range(n))


def connect(path, **config):
    c = sqlite3.connect(path, isolation_level=None, timeout=60)
    c.enable_load_extension(True)
    c.load_extension(LIB)
    c.execute("PRAGMA journal_mode=WAL")
    if config:
        c.execute("SELECT attachment_init(?)", (json.dumps(config),))
    return c


def one(c, sql, *args):
    return c.execute(sql, args).fetchone()[0]


def series(n):
    """1..n as rows of `value` (Python's SQLite build has no generate_series)."""
    return f"WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < {n}) SELECT value FROM s"


def wait_synced(c, n):
    while one(c, "SELECT count(*) FROM attachments WHERE state = 3") < n:
        time.sleep(0.002)


def run(args, **kw):
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


def run_cpu(args, **kw):
    """(seconds, CPU seconds of the child and its children) of one command."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    secs = run(args, **kw)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return secs, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime


def cpu_self():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rclone(*args):
    """Seconds rclone takes for one command (on-the-fly remotes, no config file)."""
    return run([RCLONE, "--config", "/dev/null", "-q", *args], env=PEER_ENV)


def rclone_webdav(url):
    return f":webdav,url='{url}/':"


def rclone_s3(port, path):
    """An rclone S3 remote for path ("bucket" or "bucket/key"). A folder is always a bucket of its own:
    for "bucket/prefix" rclone first HEADs the key "prefix", which s3s-fs answers (500) only after ~40 s
    when that prefix is a folder on its disk."""
    return (f":s3,provider=Other,access_key_id={servers.ACCESS_KEY},secret_access_key={servers.SECRET_KEY},"
            f"endpoint='http://127.0.0.1:{port}':{path}")


def aws(*args, port):
    return run([AWS, "--endpoint-url", f"http://127.0.0.1:{port}", "s3", *args, "--only-show-errors"], env=PEER_ENV)


def not_measured(case, why):
    print(f"  {case}: not measured: {why}")
    results.append(dict(case=case, ours=0, baseline=None, unit="", ratio=None, target="—", note=f"not measured: {why}"))


def device(path, local, remote, concurrency=4, **config):
    """A database with a watched `items` table, on `remote`, with `concurrency` transfer threads
    (None: the default, adaptive where the worker adapts)."""
    if concurrency is not None:
        config["max_concurrency"] = concurrency
    c = connect(path, local_dir=local, remote=remote, **config)
    c.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, file_id TEXT)")
    c.execute("SELECT attachment_watch('items', 'SELECT file_id AS id, ''bin'' AS file_extension FROM items')")
    return c


def drain(c):
    """Seconds the worker takes to bring every row of `items` to SYNCED."""
    n = one(c, "SELECT count(*) FROM items")
    t0 = time.perf_counter()
    c.execute("SELECT attachment_start_sync()")
    wait_synced(c, n)
    elapsed = time.perf_counter() - t0
    c.execute("SELECT attachment_stop_sync()")
    return elapsed


def ours_small(work, n, size, remote, concurrency=4, **config):
    """n x size bytes saved in database a, uploaded by its worker, then downloaded by database b.
    Returns files/s both ways, our process's CPU seconds for each, and the folder of a's files."""
    a = device(os.path.join(work, "a.db"), "a", remote, concurrency, **config)
    a.execute("BEGIN IMMEDIATE")
    a.execute(f"INSERT INTO items SELECT value, attachment_save(randomblob({size}), 'bin') FROM ({series(n)})")
    a.execute("COMMIT")
    c0 = cpu_self()
    up = n / drain(a)
    up_cpu = cpu_self() - c0
    b = device(os.path.join(work, "b.db"), "b", remote, concurrency, **config)
    b.execute("BEGIN IMMEDIATE")
    b.executemany("INSERT INTO items VALUES (?, ?)", a.execute("SELECT id, file_id FROM items").fetchall())
    b.execute("COMMIT")
    c0 = cpu_self()
    down = n / drain(b)
    down_cpu = cpu_self() - c0
    a.close()
    b.close()
    return dict(up=up, down=down, up_cpu=up_cpu, down_cpu=down_cpu, files=os.path.join(work, "a"))


def curl_small(work, files, url, parallel, tag, auth=()):
    """The same files PUT to url/tag/ and fetched back by curl with `parallel` transfers at once.
    Returns files/s up, down, down followed by one sync of the target folder, and curl's CPU seconds."""
    names = sorted(os.listdir(files))
    up_cfg, down_cfg = os.path.join(work, f"up-{tag}.cfg"), os.path.join(work, f"down-{tag}.cfg")
    out = os.path.join(work, f"curl-{tag}")
    os.makedirs(out)
    with open(up_cfg, "w") as u, open(down_cfg, "w") as d:
        for name in names:
            u.write(f'upload-file = "{os.path.join(files, name)}"\nurl = "{url}/{tag}/{name}"\n')
            d.write(f'url = "{url}/{tag}/{name}"\noutput = "{out}/{name}"\n')
    args = ["curl", "-s", "-f", "--parallel", "--parallel-max", str(parallel), *auth]
    # No `Expect: 100-continue` (curl's default for a PUT): it would cost curl a round trip per file.
    up, up_cpu = run_cpu(args + ["-H", "Expect:", "-K", up_cfg])
    down, down_cpu = run_cpu(args + ["-K", down_cfg])
    synced = down + run(["sync", "-f", out])
    n = len(names)
    return dict(up=n / up, down=n / down, down_sync=n / synced, up_cpu=up_cpu, down_cpu=down_cpu)


def rclone_small(work, files, remote, transfers, tag):
    """rclone copy of the folder to remote (a folder of its own) and back into a new folder, `transfers` at once."""
    n = len(os.listdir(files))
    flags = ["--transfers", str(transfers), "--checkers", str(transfers)]
    up = rclone("copy", files, remote, *flags)
    down = rclone("copy", remote, os.path.join(work, f"rclone-{tag}"), *flags)
    return dict(up=n / up, down=n / down)


def small_files(nginx):
    """2,000 x 16 KiB: the worker with max_concurrency 4 against curl --parallel-max 4."""
    size = 16 * 1024
    ours, curl = [], []
    for rep in range(REPEAT):
        work = tempfile.mkdtemp(prefix="bench-small-")
        ours.append(ours_small(work, SMALL_N, size, f"{nginx.url}/small{rep}/"))
        curl.append(curl_small(work, ours[-1]["files"], nginx.url, 4, f"curl{rep}"))
        remove_later(work)
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    figures["small_up"], figures["small_down"] = med(ours, "up"), med(ours, "down")
    record(f"{SMALL_N:,} x 16 KiB uploads, worker, max_concurrency 4", med(ours, "up"), med(curl, "up"),
           "files/s", ">= 0.9x curl --parallel-max 4")
    record(f"{SMALL_N:,} x 16 KiB downloads by a second database", med(ours, "down"), med(curl, "down_sync"),
           "files/s", ">= 0.8x curl --parallel-max 4 + sync -f",
           note=f"raw curl (no sync): {med(curl, 'down'):,.0f} files/s, ours {med(ours, 'down') / med(curl, 'down'):.2f}x")
    per_k = 1000 * 1000 / SMALL_N  # CPU milliseconds per 1,000 files
    record("CPU time per 1,000 uploads (our process / curl)", med(ours, "up_cpu") * per_k, med(curl, "up_cpu") * per_k,
           "CPU ms", ">= 0.67x curl (<= 1.5x its CPU)", better="lower",
           note="ours: the whole benchmark process (app polling included); curl: its process; servers excluded")
    record("CPU time per 1,000 downloads (our process / curl)", med(ours, "down_cpu") * per_k,
           med(curl, "down_cpu") * per_k, "CPU ms", ">= 0.67x curl (<= 1.5x its CPU)", better="lower",
           note="ours: the whole benchmark process (app polling included); curl: its process; servers excluded")


RCLONE_NOTES = {
    ("WebDAV", "up"): "rclone defaults: MKCOL + PUT + PROPFIND per file, its WebDAV pacer spaces calls 10 ms apart",
    ("WebDAV", "down"): "rclone: one PROPFIND listing, then GETs; no fsync",
    ("S3", "up"): "rclone: PUT + MD5 per file",
    ("S3", "down"): "rclone: one listing, then GETs, MD5 checked; no fsync",
}


def peers(nginx, s3_port, s3root):
    """PEER_N (2,000) x 16 KiB against rclone on WebDAV (nginx) and S3 (s3s-fs), at equal concurrency,
    and the default (adaptive) worker against the best of rclone's fixed levels. Our `max_concurrency N`
    is an upper bound (the worker adapts from 4 up to N; at N <= 4 it stays at N), rclone's --transfers
    N a fixed level: short runs favour rclone at N > 4."""
    if not RCLONE:
        return not_measured("rclone small files", "rclone is not installed (bench/install-peers.sh)")
    size = 16 * 1024
    s3cfg = dict(s3_endpoint=f"http://127.0.0.1:{s3_port}")
    for label in ("WebDAV", "S3"):
        best = {"up": 0, "down": 0}
        for n in list(PEER_NS) + [None]:
            work = tempfile.mkdtemp(prefix="bench-peers-")
            tag = f"p{n or 'default'}"
            if label == "WebDAV":
                mine = ours_small(work, PEER_N, size, f"{nginx.url}/ours-{tag}/", n)
            else:
                mine = ours_small(work, PEER_N, size, f"s3://{servers.BUCKET}/ours-{tag}", n, **s3cfg)
            if label == "WebDAV":
                remote = rclone_webdav(nginx.url) + f"rclone-{tag}"
            else:
                os.makedirs(os.path.join(s3root, f"rclone-{tag}"))
                remote = rclone_s3(s3_port, f"rclone-{tag}")
            if n is not None:
                theirs = rclone_small(work, mine["files"], remote, n, f"rclone-{tag}")
                best = {k: max(best[k], theirs[k]) for k in best}
                for way, word in (("up", "uploads"), ("down", "downloads")):
                    record(f"{label} {PEER_N:,} x 16 KiB {word}, max_concurrency {n}, vs rclone", mine[way], theirs[way],
                           "files/s", ">= 1.0x rclone --transfers N", note=RCLONE_NOTES[label, way])
            else:
                for way, word in (("up", "uploads"), ("down", "downloads")):
                    record(f"{label} {PEER_N:,} x 16 KiB {word}, default config, vs best rclone", mine[way], best[way],
                           "files/s", f">= 1.0x best rclone of {'/'.join(map(str, PEER_NS))}")
            remove_later(work)


def cli(work, db, sql):
    """Runs sql in a sqlite3 CLI process; returns (output, seconds of the timed statement, peak RSS MiB)."""
    script = f".open {db}\n.load {LIB}\n{textwrap.dedent(sql)}\n.shell grep VmHWM /proc/$PPID/status\n"
    out = subprocess.run(["sqlite3", "-batch"], input=script.encode(), capture_output=True, cwd=work,
                         check=True, env=os.environ).stdout.decode()
    times = [float(x) for x in re.findall(r"Run Time: real ([\d.]+)", out)]
    hwm = int(re.search(r"VmHWM:\s+(\d+) kB", out).group(1)) / 1024
    return out, (times[-1] if times else None), hwm


def big_files(nginx, s3_port):
    """One big file up and down per remote: MB/s against curl, and peak RSS as size grows."""
    os.environ.update(AWS_ACCESS_KEY_ID=servers.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=servers.SECRET_KEY)
    remotes = {
        "HTTP": {"remote": f"{nginx.url}/big/"},
        "S3": {"remote": f"s3://{servers.BUCKET}/big", "s3_endpoint": f"http://127.0.0.1:{s3_port}"},
    }
    for label, remote in remotes.items():
        idle = None
        for mib in [0] + BIG:
            work = tempfile.mkdtemp(prefix="bench-big-", dir=os.environ.get("BENCH_TMP"))
            src = os.path.join(work, "src.bin")
            with open(src, "wb") as f:
                chunk = os.urandom(MiB)
                for _ in range(mib):
                    f.write(chunk)
                if mib == 0:
                    f.write(b"x" * 1024)
            size = os.path.getsize(src)
            cfg_a = json.dumps({"local_dir": "a", **remote})
            cfg_b = json.dumps({"local_dir": "b", **remote})
            out, up_s, up_rss = cli(work, "a.db", f"""
                SELECT attachment_init('{cfg_a}') IS NOT NULL;
                CREATE TABLE items(id INTEGER PRIMARY KEY, file_id TEXT);
                INSERT INTO items VALUES (1, attachment_save_file('{src}', 'bin'));
                .timer on
                SELECT attachment_sync();
                .timer off
                SELECT 'ID ' || file_id FROM items;""")
            assert '"uploaded":1' in out, out
            file_id = re.search(r"ID (\S+)", out).group(1)
            out, down_s, down_rss = cli(work, "b.db", f"""
                SELECT attachment_init('{cfg_b}') IS NOT NULL;
                CREATE TABLE items(id INTEGER PRIMARY KEY, file_id TEXT);
                SELECT attachment_watch('w', 'SELECT file_id AS id, ''bin'' AS file_extension FROM items');
                INSERT INTO items VALUES (1, '{file_id}');
                .timer on
                SELECT attachment_sync();
                .timer off""")
            assert '"downloaded":1' in out, out
            if mib == 0:
                idle = (up_rss, down_rss)
                shutil.rmtree(work)
                continue
            up_growth, down_growth = up_rss - idle[0], down_rss - idle[1]
            record(f"{label} {mib} MiB peak RSS above idle, upload", up_growth, None, "MiB",
                   "<= 32 MiB, flat", better="lower", note=f"idle {idle[0]:.1f} MiB, peak {up_rss:.1f} MiB")
            record(f"{label} {mib} MiB peak RSS above idle, download", down_growth, None, "MiB",
                   "<= 32 MiB, flat", better="lower", note=f"idle {idle[1]:.1f} MiB, peak {down_rss:.1f} MiB")
            if mib == max(BIG):
                if label == "HTTP":
                    url = f"{nginx.url}/curl-big/src.bin"
                    auth = []
                else:
                    url = f"http://127.0.0.1:{s3_port}/{servers.BUCKET}/curl-big.bin"
                    auth = ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{servers.ACCESS_KEY}:{servers.SECRET_KEY}",
                            "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]
                curl_up = run(["curl", "-s", "-f", *auth, "-T", src, url])
                curl_file = os.path.join(work, "curl-down.bin")
                curl_down = run(["curl", "-s", "-f", *auth, "-o", curl_file, url])
                curl_down_sync = curl_down + run(["sync", curl_file])
                os.unlink(curl_file)
                up_mibs, down_mibs = size / MiB / up_s, size / MiB / down_s
                record(f"{label} {mib} MiB upload", up_mibs, size / MiB / curl_up, "MiB/s",
                       ">= 0.9x curl -T", note="ours: attachment_sync() incl. SHA-256 check by the store" if label == "S3" else "")
                record(f"{label} {mib} MiB download", down_mibs, size / MiB / curl_down_sync, "MiB/s",
                       ">= 0.9x curl -o + fsync", note=f"ours: + SHA-256 + fsync before rename; raw curl (no fsync) "
                       f"{size / MiB / curl_down:,.0f} MiB/s, ours {curl_down / down_s:.2f}x")
                big_peers(label, work, src, size, mib, up_mibs, down_mibs, nginx, s3_port)
            shutil.rmtree(work)


def big_peers(label, work, src, size, mib, up_mibs, down_mibs, nginx, s3_port):
    """The same big file with rclone (and, on S3, the AWS CLI), against our figures of the same run."""
    if RCLONE:
        remote = rclone_webdav(nginx.url) if label == "HTTP" else rclone_s3(s3_port, servers.BUCKET + "/")
        up = rclone("copyto", src, remote + "rclone-big.bin")
        down = rclone("copyto", remote + "rclone-big.bin", os.path.join(work, "rclone-down.bin"))
        os.unlink(os.path.join(work, "rclone-down.bin"))
        record(f"{label} {mib} MiB upload vs rclone", up_mibs, size / MiB / up, "MiB/s", ">= 1.0x rclone copyto")
        record(f"{label} {mib} MiB download vs rclone", down_mibs, size / MiB / down, "MiB/s", ">= 1.0x rclone copyto",
               note="rclone: no fsync")
    else:
        not_measured(f"{label} {mib} MiB vs rclone", "rclone is not installed (bench/install-peers.sh)")
    if label != "S3":
        return
    if not os.path.exists(AWS):
        return not_measured(f"S3 {mib} MiB vs aws s3 cp", f"no AWS CLI at {AWS} (bench/install-peers.sh)")
    up = aws("cp", src, f"s3://{servers.BUCKET}/aws-big.bin", port=s3_port)
    down = aws("cp", f"s3://{servers.BUCKET}/aws-big.bin", os.path.join(work, "aws-down.bin"), port=s3_port)
    os.unlink(os.path.join(work, "aws-down.bin"))
    record(f"S3 {mib} MiB upload vs aws s3 cp", up_mibs, size / MiB / up, "MiB/s", ">= 1.0x aws s3 cp",
           note="aws: multipart, 10 threads (its default)")
    record(f"S3 {mib} MiB download vs aws s3 cp", down_mibs, size / MiB / down, "MiB/s", ">= 1.0x aws s3 cp",
           note="aws: ranged GETs on 10 threads, no fsync")


def saves():
    """10,000 x 4 KiB attachment_save in one transaction against a direct Rust program."""
    baseline_bin = os.path.join(HERE, "baseline-save", "target", "release", "baseline-save")
    if not os.path.exists(baseline_bin):
        return not_measured(f"{SAVE_N:,} x 4 KiB attachment_save", "bench/baseline-save is not built (make bench builds it)")
    mine, base = [], []
    for _ in range(REPEAT):
        work = tempfile.mkdtemp(prefix="bench-save-")
        out, secs, _ = cli(work, "a.db", f"""
            PRAGMA journal_mode=WAL;
            SELECT attachment_init('{{"local_dir":"files","remote":"file://{work}/remote"}}') IS NOT NULL;
            .timer on
            BEGIN; SELECT count(attachment_save(randomblob(4096), 'bin')) FROM generate_series(1, {SAVE_N}); COMMIT;
            .timer off""")
        # .timer reports BEGIN, the SELECT and COMMIT separately: add them.
        times = [float(x) for x in re.findall(r"Run Time: real ([\d.]+)", out)]
        mine.append(SAVE_N / sum(times))
        out = subprocess.run([baseline_bin, os.path.join(work, "base.db"), os.path.join(work, "base"), str(SAVE_N), "4096"],
                             capture_output=True, check=True).stdout.decode()
        base.append(SAVE_N / float(out))
        remove_later(work)
    record(f"{SAVE_N:,} x 4 KiB attachment_save, one transaction", statistics.median(mine), statistics.median(base),
           "saves/s", ">= 0.9x direct Rust (write+fsync+rename+insert)")


def reconcile():
    """100,000 referenced ids from scratch, then one changed reference; against INSERT ... SELECT."""
    mine, base, change = [], [], []
    for _ in range(REPEAT):
        work = tempfile.mkdtemp(prefix="bench-rec-")
        c = connect(os.path.join(work, "a.db"), local_dir="files", remote=f"file://{work}/remote")
        c.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, file_id TEXT)")
        c.execute(f"INSERT INTO docs SELECT value, lower(hex(randomblob(16))) FROM ({series(RECONCILE_N)})")
        # The baseline's table exists before the watch first runs: a schema change makes the
        # next refresh of a row-by-row watch a full one (see the README), which is not the
        # one change measured below.
        c.execute("CREATE TABLE plain(id TEXT PRIMARY KEY, filename TEXT, state INTEGER)")
        # As the worker does it: attachment_reconcile() runs on the extension's own connection.
        t0 = time.perf_counter()
        c.execute("SELECT attachment_watch('docs', 'SELECT file_id AS id, ''pdf'' AS file_extension FROM docs')")
        queued = json.loads(one(c, "SELECT attachment_reconcile()"))["queued_downloads"]
        mine.append(time.perf_counter() - t0)
        assert queued == RECONCILE_N, queued
        t0 = time.perf_counter()
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO plain SELECT file_id, file_id || '.pdf', 1 FROM docs")
        c.execute("COMMIT")
        base.append(time.perf_counter() - t0)
        c.execute("UPDATE docs SET file_id = 'changed-one' WHERE id = 1")
        t0 = time.perf_counter()
        r = json.loads(one(c, "SELECT attachment_reconcile()"))
        change.append(time.perf_counter() - t0)
        assert r["queued_downloads"] == 1 and r["archived"] == 1, r
        c.close()
        remove_later(work)
    figures["reconcile_ms"], figures["reconcile_change_ms"] = statistics.median(mine) * 1000, statistics.median(change) * 1000
    record(f"reconcile {RECONCILE_N:,} referenced ids from scratch", figures["reconcile_ms"],
           statistics.median(base) * 1000, "ms", "<= 1 s and <= 3x INSERT ... SELECT", better="lower")
    record(f"reconcile after one changed reference ({RECONCILE_N:,} ids)", figures["reconcile_change_ms"], None, "ms",
           "<= 10 ms", better="lower")


class LatencyProxy(servers.Server):
    """bench/latency_proxy.py in front of 127.0.0.1:upstream_port: delay_ms each way."""

    def __init__(self, upstream_port, delay_ms, mbit=LINK_MBIT):
        port = servers.free_port()
        env = dict(os.environ, UPSTREAM_PORT=str(upstream_port), PORT=str(port), DELAY_MS=str(delay_ms), MBIT=str(mbit))
        super().__init__([sys.executable, os.path.join(HERE, "latency_proxy.py")], port, env=env)


def links(nginx):
    """Real links: nginx behind bench/latency_proxy.py at each RTT. LINK_N x 16 KiB and one LINK_MIB file,
    ours against curl and rclone at 4/16/32 at once, the default worker against the best of them, and PowerSync."""
    import powersync_baseline  # noqa: E402
    size = 16 * 1024
    for rtt in RTTS:
        proxy = LatencyProxy(nginx.port, rtt / 2)
        url = proxy.url
        link = f"RTT {rtt} ms" + (f", {LINK_MBIT} Mbit/s" if LINK_MBIT not in ("", "0") else "")
        try:
            best = {"curl": {"up": 0, "down": 0}, "rclone": {"up": 0, "down": 0}}
            ours_default = None
            for n in list(LINK_NS) + [None]:
                work = tempfile.mkdtemp(prefix="bench-link-")
                tag = f"l{rtt}-{n or 'default'}"
                mine = ours_small(work, LINK_N, size, f"{url}/ours-{tag}/", n)
                if n is None:
                    ours_default = mine
                    remove_later(work)
                    continue
                c = curl_small(work, mine["files"], url, n, f"curl-{tag}")
                peers_here = [("curl", c, f"curl --parallel-max {n}")]
                if RCLONE:
                    peers_here.append(("rclone", rclone_small(work, mine["files"], rclone_webdav(url) + f"rclone-{tag}", n, tag),
                                       f"rclone --transfers {n}"))
                for name, theirs, what in peers_here:
                    best[name] = {k: max(best[name][k], theirs[k]) for k in ("up", "down")}
                    for way, word in (("up", "uploads"), ("down", "downloads")):
                        record(f"{link}: {LINK_N} x 16 KiB {word}, max_concurrency {n}, vs {name}", mine[way], theirs[way],
                               "files/s", f">= 1.0x {what}" if name == "rclone" else f">= 0.9x {what}")
                remove_later(work)
            for name in ("curl", "rclone") if RCLONE else ("curl",):
                for way, word in (("up", "uploads"), ("down", "downloads")):
                    record(f"{link}: {LINK_N} x 16 KiB {word}, default config, vs best {name}", ours_default[way],
                           best[name][way], "files/s", f">= 0.8x best {name} of {'/'.join(map(str, LINK_NS))}")
            figures[f"link{rtt}"] = ours_default
            # One big file.
            work = tempfile.mkdtemp(prefix="bench-link-big-", dir=os.environ.get("BENCH_TMP"))
            src = os.path.join(work, "src.bin")
            with open(src, "wb") as f:
                for _ in range(LINK_MIB):
                    f.write(os.urandom(MiB))
            up_s, down_s = up_down(work, {"remote": f"{url}/big-{rtt}/"}, src, "big")
            theirs = [("curl", run(["curl", "-s", "-f", "-T", src, f"{url}/curl-big-{rtt}.bin"]),
                       run(["curl", "-s", "-f", "-o", os.path.join(work, "c.bin"), f"{url}/curl-big-{rtt}.bin"]))]
            if RCLONE:
                theirs.append(("rclone", rclone("copyto", src, rclone_webdav(url) + f"rclone-big-{rtt}.bin"),
                               rclone("copyto", rclone_webdav(url) + f"rclone-big-{rtt}.bin", os.path.join(work, "r.bin"))))
            for name, t_up, t_down in theirs:
                record(f"{link}: {LINK_MIB} MiB upload vs {name}", LINK_MIB / up_s, LINK_MIB / t_up, "MiB/s", ">= 0.9x")
                record(f"{link}: {LINK_MIB} MiB download vs {name}", LINK_MIB / down_s, LINK_MIB / t_down, "MiB/s", ">= 0.9x",
                       note="ours: + SHA-256 + fsync; theirs: no fsync")
            shutil.rmtree(work)
            # A smoke run tries PowerSync on the first link only (it moves one file at a time).
            ps, why = (None, "BENCH_QUICK: first RTT only") if QUICK and rtt != RTTS[0] else \
                powersync_baseline.transfers(url, LINK_N)
            if why:
                not_measured(f"{link}: PowerSync queue", why)
            else:
                record(f"{link}: {LINK_N} x 16 KiB uploads vs PowerSync queue", ours_default["up"], ps["upload_files_per_s"],
                       "files/s", ">= 10x PowerSync", note="ours: default config")
                record(f"{link}: {LINK_N} x 16 KiB downloads vs PowerSync queue", ours_default["down"],
                       ps["download_files_per_s"], "files/s", ">= 10x PowerSync", note="ours: default config")
        finally:
            proxy.stop()


APP_WRITER = r"""
import json, sqlite3, sys, threading, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE IF NOT EXISTS app_log(id INTEGER PRIMARY KEY, at REAL, note TEXT)")
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
print("ready", flush=True)
lat = []
nxt = time.perf_counter()
while not stop.is_set():
    t0 = time.perf_counter()
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO app_log(at, note) VALUES (?, 'tap')", (t0,))
    c.execute("COMMIT")
    lat.append(time.perf_counter() - t0)
    nxt += 0.010
    time.sleep(max(0, nxt - time.perf_counter()))
print(json.dumps(lat))
"""


def app_writes(db, during):
    """Latencies (ms) of an app's small write transactions, one every 10 ms, in another process, while during() runs."""
    p = subprocess.Popen(["/usr/bin/python3", "-c", APP_WRITER, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    try:
        during()
    finally:
        p.stdin.write("stop\n")
        p.stdin.flush()
    lat = sorted(x * 1000 for x in json.loads(p.stdout.readline()))
    p.wait()
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))], len(lat)


def responsive(nginx):
    """13.6: an app connection doing one small write transaction every 10 ms, idle and while files download."""
    work = tempfile.mkdtemp(prefix="bench-resp-")
    remote = f"{nginx.url}/resp/"
    a = device(os.path.join(work, "a.db"), "a", remote, None)
    a.execute("BEGIN IMMEDIATE")
    a.execute(f"INSERT INTO items SELECT value, attachment_save(randomblob({16 * 1024}), 'bin') FROM ({series(RESPONSIVE_N)})")
    a.execute("COMMIT")
    drain(a)
    db = os.path.join(work, "b.db")
    b = device(db, "b", remote, None)
    b.execute("BEGIN IMMEDIATE")
    b.executemany("INSERT INTO items VALUES (?, ?)", a.execute("SELECT id, file_id FROM items").fetchall())
    b.execute("COMMIT")
    secs = []
    idle = app_writes(db, lambda: time.sleep(3 if QUICK else 10))
    busy = app_writes(db, lambda: secs.append(drain(b)))
    a.close()
    b.close()
    remove_later(work)
    record(f"app write txn p50, while {RESPONSIVE_N:,} files download", busy[0], idle[0], "ms", "—", better="lower",
           note=f"baseline: the same app, no sync ({idle[2]} txns); with sync: {busy[2]} txns over {secs[0]:.1f} s")
    record(f"app write txn p99, while {RESPONSIVE_N:,} files download", busy[1], idle[1], "ms",
           ">= 0.5x idle p99 (p99 <= 2x idle)", better="lower", note="one BEGIN IMMEDIATE/INSERT/COMMIT every 10 ms, "
           "own process and connection (WAL, synchronous=FULL: SQLite's default), default worker config")


def reconcile_one_change():
    """Row-by-row refresh: one changed reference among 100,000 and 1,000,000 ids, and what
    the watch's triggers add to the app's UPDATE of one watched row."""
    sizes = [RECONCILE_N, 10 * RECONCILE_N]
    for n in sizes:
        work = tempfile.mkdtemp(prefix="bench-rec1-", dir=os.environ.get("BENCH_TMP"))
        c = connect(os.path.join(work, "a.db"), local_dir="files", remote=f"file://{work}/remote")
        c.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, file_id TEXT)")
        c.execute(f"INSERT INTO docs SELECT value, lower(hex(randomblob(16))) FROM ({series(n)})")
        c.execute("CREATE TABLE docs_plain(id INTEGER PRIMARY KEY, file_id TEXT)")
        c.execute("INSERT INTO docs_plain SELECT * FROM docs")
        c.execute("SELECT attachment_watch('docs', 'SELECT file_id AS id, ''pdf'' AS file_extension FROM docs')")
        t0 = time.perf_counter()
        queued = json.loads(one(c, "SELECT attachment_reconcile()"))["queued_downloads"]
        scratch = time.perf_counter() - t0
        assert queued == n, queued
        assert one(c, "SELECT incremental FROM attachment_watches") == 1
        change = []
        for i in range(max(REPEAT, 5)):
            c.execute("UPDATE docs SET file_id = ? WHERE id = ?", (f"changed-{i}", 1 + i * 7919 % n))
            t0 = time.perf_counter()
            r = json.loads(one(c, "SELECT attachment_reconcile()"))
            change.append(time.perf_counter() - t0)
            assert r["queued_downloads"] == 1 and r["archived"] == 1, r
        record(f"reconcile after one changed reference ({n:,} ids, row by row)", statistics.median(change) * 1000, None, "ms",
               "<= 10 ms", better="lower", note=f"from scratch {scratch * 1000:,.0f} ms")
        # The app's UPDATE of one watched row: with the watch's triggers, and on an identical
        # table without them. One transaction, so the statement is measured, not the commit.
        k = 2000
        per = {}
        for table in ("docs", "docs_plain"):
            times = []
            for _ in range(max(REPEAT, 3)):
                c.execute("BEGIN")
                t0 = time.perf_counter()
                for i in range(k):
                    c.execute(f"UPDATE {table} SET file_id = ? WHERE id = ?", (f"u{i}", 1 + i * 104729 % n))
                times.append(time.perf_counter() - t0)
                c.execute("ROLLBACK")
            per[table] = statistics.median(times) / k * 1e6
        record(f"UPDATE of one watched row ({n:,} rows), with triggers vs without", per["docs"], per["docs_plain"], "µs",
               "<= 2x its cost without triggers", better="lower")
        c.close()
        remove_later(work)


def idle_worker():
    """CPU used by a worker with nothing to do."""
    work = tempfile.mkdtemp(prefix="bench-idle-")
    script = f"""
import json, resource, sqlite3, time
c = sqlite3.connect({os.path.join(work, 'a.db')!r}, isolation_level=None)
c.enable_load_extension(True); c.load_extension({LIB!r})
c.execute("SELECT attachment_init(?)", (json.dumps({{"local_dir": "files", "remote": "file://{work}/r"}}),))
c.execute("SELECT attachment_start_sync()")
time.sleep(1)
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.monotonic()
time.sleep({IDLE_SECONDS})
r1 = resource.getrusage(resource.RUSAGE_SELF); t1 = time.monotonic()
print((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / (t1 - t0) * 100)
"""
    out = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True, check=True).stdout.decode()
    record(f"idle worker, {IDLE_SECONDS} s", float(out), None, "% core", "<= 1% of a core", better="lower")
    remove_later(work)


def up_down(work, remote, src, tag, encryption=None):
    """Seconds of one attachment_sync() that uploads `src` and of one on a second database
    that downloads it, each in a sqlite3 CLI process."""
    extra = {"encryption": encryption} if encryption else {}
    cfg_a = json.dumps({"local_dir": f"{tag}-a", **remote, **extra})
    cfg_b = json.dumps({"local_dir": f"{tag}-b", **remote, **extra})
    out, up_s, _ = cli(work, f"{tag}-a.db", f"""
        SELECT attachment_init('{cfg_a}') IS NOT NULL;
        CREATE TABLE items(id INTEGER PRIMARY KEY, file_id TEXT);
        INSERT INTO items VALUES (1, attachment_save_file('{src}', 'bin'));
        .timer on
        SELECT attachment_sync();
        .timer off
        SELECT 'ID ' || file_id FROM items;""")
    assert '"uploaded":1' in out, out
    file_id = re.search(r"ID (\S+)", out).group(1)
    out, down_s, _ = cli(work, f"{tag}-b.db", f"""
        SELECT attachment_init('{cfg_b}') IS NOT NULL;
        CREATE TABLE items(id INTEGER PRIMARY KEY, file_id TEXT);
        SELECT attachment_watch('w', 'SELECT file_id AS id, ''bin'' AS file_extension FROM items');
        INSERT INTO items VALUES (1, '{file_id}');
        .timer on
        SELECT attachment_sync();
        .timer off
        SELECT 'SHA ' || sha256 FROM attachments;""")
    assert '"downloaded":1' in out, out
    # Both databases are removed so the next pair starts with the same free page cache.
    for name in os.listdir(work):
        if name.startswith(tag):
            path = os.path.join(work, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return up_s, down_s


def encryption(nginx, s3_port):
    """The same big file up and down with and without end-to-end encryption, in one run."""
    mib = int(os.environ.get("BENCH_ENCRYPTION_MIB", "16" if QUICK else "1024"))
    os.environ.update(AWS_ACCESS_KEY_ID=servers.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=servers.SECRET_KEY)
    c = sqlite3.connect(":memory:")
    c.enable_load_extension(True)
    c.load_extension(LIB)
    os.environ["BENCH_ENCRYPTION_KEY"] = one(c, "SELECT attachment_generate_key()")
    remotes = {
        "HTTP": {"remote": f"{nginx.url}/enc/"},
        "S3": {"remote": f"s3://{servers.BUCKET}/enc", "s3_endpoint": f"http://127.0.0.1:{s3_port}"},
    }
    for label, remote in remotes.items():
        work = tempfile.mkdtemp(prefix="bench-enc-", dir=os.environ.get("BENCH_TMP"))
        src = os.path.join(work, "src.bin")
        with open(src, "wb") as f:
            chunk = os.urandom(MiB)
            for _ in range(mib):
                f.write(chunk)
        # Interleaved, the order alternating, so drift on a busy machine hits both alike.
        runs = {"plain": [], "enc": []}
        for i in range(REPEAT):
            for tag in (["plain", "enc"] if i % 2 == 0 else ["enc", "plain"]):
                enc = {"key_env": "BENCH_ENCRYPTION_KEY"} if tag == "enc" else None
                runs[tag].append(up_down(work, remote, src, tag, enc))
        plain_up, plain_down = (statistics.median(x) for x in zip(*runs["plain"]))
        enc_up, enc_down = (statistics.median(x) for x in zip(*runs["enc"]))
        record(f"{label} {mib} MiB encrypted upload", mib / enc_up, mib / plain_up, "MiB/s",
               ">= 0.8x unencrypted", note=f"median of {REPEAT}, interleaved; XChaCha20-Poly1305 STREAM, 64 KiB chunks; baseline: the same upload unencrypted")
        record(f"{label} {mib} MiB encrypted download", mib / enc_down, mib / plain_down, "MiB/s",
               ">= 0.8x unencrypted", note=f"median of {REPEAT}, interleaved; opened while streaming; baseline: the same download unencrypted")
        shutil.rmtree(work)


CAP_SECONDS = int(os.environ.get("BENCH_CAP_SECONDS", "5" if QUICK else "30"))
RESUME_MIB = int(os.environ.get("BENCH_RESUME_MIB", "64" if QUICK else "1024"))


def capped_transfer(nginx):
    """A download held to max_bytes_per_second for CAP_SECONDS: the rate it got against the cap."""
    cap = 4 * MiB
    size = cap * CAP_SECONDS
    work = tempfile.mkdtemp(prefix="bench-cap-", dir=os.environ.get("BENCH_TMP"))
    try:
        remote = f"{nginx.url}/cap/"
        a = device(os.path.join(work, "a.db"), "a", remote)
        src = os.path.join(work, "src.bin")
        with open(src, "wb") as f:
            f.write(os.urandom(size))
        a.execute("INSERT INTO items VALUES (1, attachment_save_file(?, 'bin'))", (src,))
        a.execute("SELECT attachment_sync()")
        b = device(os.path.join(work, "b.db"), "b", remote)
        b.execute("SELECT attachment_init(?)", (json.dumps(dict(local_dir="b", remote=remote, max_bytes_per_second=cap)),))
        b.execute("INSERT INTO items VALUES (1, ?)", (one(a, "SELECT file_id FROM items"),))
        t0 = time.perf_counter()
        b.execute("SELECT attachment_sync()")
        rate = size / (time.perf_counter() - t0) / MiB
        record(f"bandwidth cap: {size // MiB} MiB download at 4 MiB/s", rate, cap / MiB, "MiB/s", "within 10 %",
               note=f"{CAP_SECONDS} s at the cap; ratio = measured rate / cap")
    finally:
        shutil.rmtree(work, ignore_errors=True)


RESUME_CHILD = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.enable_load_extension(True); c.load_extension(sys.argv[2])
c.execute("SELECT attachment_sync()")
"""


def resumed_download(kind, storage_port):
    """A download killed (SIGKILL) at 50 %, then synced again: the share of the object fetched twice."""
    size = RESUME_MIB * MiB
    work = tempfile.mkdtemp(prefix="bench-resume-", dir=os.environ.get("BENCH_TMP"))
    proxy = servers.FaultProxy(storage_port, "pass")
    backend = None
    try:
        if kind == "http":
            remote = dict(remote=f"http://127.0.0.1:{proxy.port}/resume/")
        elif kind == "s3":
            remote = dict(remote=f"s3://{servers.BUCKET}/resume", s3_endpoint=f"http://127.0.0.1:{proxy.port}")
        else:
            backend = servers.SigningBackend(f"http://127.0.0.1:{proxy.port}")
            remote = dict(remote=f"signed+{backend.url}")
        a = connect(os.path.join(work, "a.db"), local_dir="a", **remote)
        a.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, file_id TEXT)")
        src = os.path.join(work, "src.bin")
        with open(src, "wb") as f:
            for _ in range(RESUME_MIB):
                f.write(os.urandom(MiB))
        a.execute("INSERT INTO items VALUES (1, attachment_save_file(?, 'bin'))", (src,))
        os.remove(src)
        a.execute("SELECT attachment_sync()")
        assert one(a, "SELECT state FROM attachments") == 3, a.execute("SELECT last_error FROM attachments").fetchall()
        fid = one(a, "SELECT file_id FROM items")
        # Capped so the kill lands near the middle: about 8 s for the whole object.
        b = connect(os.path.join(work, "b.db"), local_dir="b", max_bytes_per_second=size // 8, **remote)
        b.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, file_id TEXT)")
        b.execute("SELECT attachment_watch('items', 'SELECT file_id AS id, ''bin'' AS file_extension FROM items')")
        b.execute("INSERT INTO items VALUES (1, ?)", (fid,))
        partial = os.path.join(work, "b", f".{fid}.bin.partial")
        child = subprocess.Popen([sys.executable, "-c", RESUME_CHILD, os.path.join(work, "b.db"), LIB])
        while (os.path.getsize(partial) if os.path.exists(partial) else 0) < size // 2 and child.poll() is None:
            time.sleep(0.005)
        child.kill()
        child.wait()
        held = os.path.getsize(partial)
        b.execute("UPDATE attachments SET claimed_by = NULL, claimed_until = NULL")
        b.execute("SELECT attachment_init(?)", (json.dumps(dict(local_dir="b", **remote)),))  # uncapped
        b.execute("SELECT attachment_sync()")
        assert one(b, "SELECT state FROM attachments") == 3, b.execute("SELECT last_error FROM attachments").fetchall()
        status, last, asked = [(st, n, r) for m, st, n, r in proxy.answers() if m == "GET" and st in (200, 206)][-1]
        # What the second attempt fetched beyond the part missing on disk (0 for a perfect resume,
        # 50 % for starting over).
        refetched = last - (size - held)
        share = 100.0 * refetched / size
        record(f"resume: {RESUME_MIB} MiB {kind} download killed at {100 * held // size} %", share, None, "% again",
               "<= 10 %", better="lower", note=f"second attempt: HTTP {status}, Range {asked}, {last:,} bytes; {held:,} kept on disk")
    finally:
        if backend:
            backend.stop()
        proxy.stop()
        shutil.rmtree(work, ignore_errors=True)


def steering(nginx, s3_port):
    os.environ.update(AWS_ACCESS_KEY_ID=servers.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=servers.SECRET_KEY,
                      ATTACHMENTS_HTTP_TOKEN=servers.TOKEN)  # the signing backend's
    capped_transfer(nginx)
    resumed_download("http", nginx.port)
    resumed_download("s3", s3_port)
    resumed_download("signed", s3_port)


def met(r):
    t = r["target"]
    if t == "within 10 %":
        return r["ratio"] is not None and abs(r["ratio"] - 1) <= 0.10
    if t == "<= 10 %":
        return r["ours"] <= 10
    if r["unit"] == "MiB" and r["case"].endswith(("upload", "download")) and "RSS" in r["case"]:
        return r["ours"] <= 32
    if t.startswith(">= "):
        return r["ratio"] is not None and r["ratio"] >= float(t[3:].split("x")[0])
    if "PowerSync" in t:
        return r["ratio"] is not None and r["ratio"] >= 5
    if r["unit"] == "% core":
        return r["ours"] <= 1
    if "<= 2x its cost" in t:
        return r["ratio"] is not None and r["ratio"] >= 0.5
    if "<= 10 ms" in t:
        return r["ours"] <= 10
    if "<= 1 s" in t:
        return r["ours"] <= 1000 and r["ratio"] is not None and r["ratio"] >= 1 / 3
    return None


def wanted_links():
    return not ONLY or "links" in ONLY


def write_results(machine, started, tools):
    lines = [
        "# Benchmark results",
        "",
        f"One run of `make bench` on {started}: {machine}. Each figure is the median of {REPEAT} runs "
        "(big files: one run per size). Ratio > 1 means sqlite-attachments did better than the baseline measured "
        "in the same run. Servers: nginx WebDAV and s3s-fs on 127.0.0.1"
        + (f"; real-link rows through bench/latency_proxy.py (RTT as stated, 4 MiB window per connection"
           + (f", {LINK_MBIT} Mbit/s" if LINK_MBIT not in ("", "0") else ", no bandwidth cap") + ")" if wanted_links() else "")
        + ".",
        "",
        "Peers: " + "; ".join(f"{k} {v}" for k, v in tools.items()) + "."
        + (f" Row groups: {', '.join(ONLY)} (BENCH_ONLY)." if ONLY else "")
        + (" BENCH_QUICK=1: small sizes, a smoke run, not figures to quote." if QUICK else ""),
        "",
        "| case | sqlite-attachments | baseline | ratio | target | met | note |",
        "| --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in results:
        ok = met(r)
        lines.append(
            f"| {r['case']} | {r['ours']:,.1f} {r['unit']} | "
            + (f"{r['baseline']:,.1f} {r['unit']}" if r["baseline"] else "—")
            + f" | {(str(round(r['ratio'], 2)) + 'x') if r['ratio'] else '—'} | {r['target']} | "
            + ("yes" if ok else "no" if ok is not None else "—") + f" | {r['note']} |"
        )
    lines += ["", "![ratios](ratios.svg)", ""]
    with open(os.path.join(HERE, "results.md"), "w") as f:
        f.write("\n".join(lines))
    write_svg([r for r in results if r["ratio"]])


def write_svg(rows):
    """A bar chart of the ratios against their baselines, with the 1.0 line."""
    w, bar, gap, left = 900, 22, 10, 420
    h = 40 + len(rows) * (bar + gap)
    top = max([r["ratio"] for r in rows] + [1.5])
    scale = (w - left - 60) / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<text x="10" y="20" font-size="14">sqlite-attachments vs baseline (ratio, higher is better)</text>']
    for i, r in enumerate(rows):
        y = 35 + i * (bar + gap)
        color = "#3a7" if r["ratio"] >= 1 else "#d84"
        parts.append(f'<text x="10" y="{y + 15}">{r["case"][:60]}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{r["ratio"] * scale:.1f}" height="{bar}" fill="{color}"/>')
        parts.append(f'<text x="{left + r["ratio"] * scale + 5:.1f}" y="{y + 15}">{r["ratio"]:.2f}x</text>')
    x1 = left + scale
    parts.append(f'<line x1="{x1:.1f}" y1="30" x2="{x1:.1f}" y2="{h}" stroke="#000" stroke-dasharray="4"/>')
    parts.append("</svg>")
    with open(os.path.join(HERE, "ratios.svg"), "w") as f:
        f.write("\n".join(parts))


def version(args, pattern=r"(.*)"):
    try:
        out = subprocess.run(args, capture_output=True, text=True, env=PEER_ENV, timeout=30)
        m = re.search(pattern, (out.stdout + out.stderr).strip())
        return m.group(1).strip() if m else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def versions():
    import powersync_baseline  # noqa: E402
    return {
        "curl": version(["curl", "--version"], r"curl (\S+)"),
        "rclone": version([RCLONE or "rclone", "version"], r"rclone (\S+)"),
        "AWS CLI": version([AWS, "--version"], r"aws-cli/(\S+)"),
        "PowerSync": powersync_baseline.version() + ", Node " + version(["node", "--version"]),
        "nginx": version([servers.NGINX, "-v"], r"nginx/(\S+)"),
        "s3s-fs": os.path.basename(os.path.dirname(os.path.dirname(servers.S3S_FS))),
        "SQLite": sqlite3.sqlite_version,
    }


def main():
    unknown = [g for g in ONLY if g not in GROUPS]
    if unknown:
        sys.exit(f"BENCH_ONLY: unknown row group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    wanted = lambda g: not ONLY or g in ONLY  # noqa: E731
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
    machine = f"{platform.system()} {platform.release()}, {os.cpu_count()} x {cpu}, {int(mem) // 1024 // 1024} GiB RAM, SQLite {sqlite3.sqlite_version}"
    tools = versions()
    print(f"sqlite-attachments benchmarks, {started}\n{machine}")
    print("peers: " + "; ".join(f"{k} {v}" for k, v in tools.items()))
    print(f"row groups: {', '.join(g for g in GROUPS if wanted(g))}{' (BENCH_QUICK)' if QUICK else ''}\n")
    www, s3root = tempfile.mkdtemp(prefix="bench-www-"), tempfile.mkdtemp(prefix="bench-s3-")
    nginx, s3 = servers.Nginx(www, propfind=os.path.exists(servers.DAV_EXT)), servers.S3(s3root)
    os.environ.update(AWS_ACCESS_KEY_ID=servers.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=servers.SECRET_KEY)
    try:
        if wanted("small"):
            small_files(nginx)
        if wanted("saves"):
            saves()
        if wanted("reconcile"):
            reconcile()
        if wanted("reconcile_one_change"):
            reconcile_one_change()
        if wanted("big"):
            big_files(nginx, s3.port)
        if wanted("encryption"):
            encryption(nginx, s3.port)
        if wanted("idle"):
            idle_worker()
        if wanted("steering"):
            steering(nginx, s3.port)
        if wanted("peers"):
            peers(nginx, s3.port, s3root)
        if wanted("links"):
            links(nginx)
        if wanted("responsive"):
            responsive(nginx)
        if wanted("powersync"):
            if "small_up" not in figures:
                small_files(nginx)
            if "reconcile_ms" not in figures:
                reconcile()
            import powersync_baseline  # noqa: E402
            powersync_baseline.run(record, figures, nginx, SMALL_N, RECONCILE_N)
    finally:
        nginx.stop()
        s3.stop()
        for path in [www, s3root, *TO_REMOVE]:
            shutil.rmtree(path, ignore_errors=True)
    if ONLY:
        print("\nBENCH_ONLY: results.md left alone")
        return
    write_results(machine, started, tools)
    print(f"\nwrote {os.path.join(HERE, 'results.md')} and ratios.svg")


if __name__ == "__main__":
    main()
