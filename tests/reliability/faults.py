"""Part 2, faults: uploads and a second device's downloads through a proxy that
injects a random fault into each request (resets, truncation with and without
Content-Length, redirects to a 200 HTML login page, 500/503 with Retry-After,
stalls, trickles), over WebDAV (nginx) and S3 (s3s-fs). While faults run, no
SYNCED row may hold anything but the saved bytes, locally and on the server;
once the proxy passes everything through, all must converge byte-identical."""
import collections
import json
import os
import random
import sys
import time

from common import (HERE, Failures, Remote, cleanup, content, file_sha, integrity, rows, servers, sha,
                    temp_files, workdir)
from child import connect, one

SYNCED = 3
FAULTY_PASSES = 4


class Proxy(servers.Server):
    def __init__(self, upstream_port, seed, folder):
        port = servers.free_port()
        self.log = os.path.join(folder, "proxy.log")
        self.control = os.path.join(folder, "proxy.control")
        self.set("faults")
        env = dict(os.environ, UPSTREAM_PORT=str(upstream_port), PORT=str(port), LOG=self.log,
                   CONTROL=self.control, SEED=str(seed))
        super().__init__([sys.executable, os.path.join(HERE, "fault_proxy.py")], port, env=env)

    def set(self, mode):
        with open(self.control + ".new", "w") as f:
            f.write(mode)
        os.replace(self.control + ".new", self.control)

    def causes(self, wrong):
        """For each wrongly SYNCED (filename, method): the fault the proxy put on that file's
        last request of that method, e.g. "GET redirect_302"."""
        last = {}
        with open(self.log) as f:
            for line in f:
                method, path, fault, _ = line.split()
                last[(os.path.basename(path), method)] = fault
        return collections.Counter(f"{m} {last.get((name, m), '?')}" for name, m in wrong)

    def counts(self):
        if not os.path.exists(self.log):
            return collections.Counter()
        with open(self.log) as f:
            return collections.Counter(line.split()[2] for line in f if line.strip())


def check_synced(fails, label, q, folder, expected, remote=None):
    """Every SYNCED row: local file == the saved bytes, and (uploads) the server's copy too."""
    bad = []
    for id_, r in q.items():
        if r["state"] != SYNCED:
            continue
        want = expected.get(id_)
        local = file_sha(os.path.join(folder, r["local_uri"] or "?"))
        if local != want:
            bad.append((r["filename"], "GET" if remote is None else "local"))
            with open(os.path.join(folder, r["local_uri"] or "?"), "rb") as f:
                head = f.read(60)
            fails.add(f"{label}: {id_} is SYNCED but its local file is not the saved bytes "
                      f"(size {r['size']}, starts {head!r})", key=(id_, folder, "local"))
        if remote is not None:
            stored = file_sha(remote.stored(r["filename"]))
            if stored != want:
                bad.append((r["filename"], "PUT"))
                fails.add(f"{label}: {id_} is SYNCED but the server's copy is {'missing' if stored is None else 'different'}",
                          key=(id_, "remote"))
    return bad


def drive(fails, label, conn, q_of, folder, expected, remote, passes, wrong):
    for i in range(passes):
        try:
            one(conn, "SELECT attachment_sync()")
        except Exception as e:
            # A failed transfer stays queued with its error; the network never makes the app's call fail.
            fails.add(f"{label}: attachment_sync() raised under faults: {e}", key=("raised", str(e)[:80]))
        wrong.update(check_synced(fails, f"{label} pass {i + 1}", q_of(), folder, expected, remote))
        conn.execute("UPDATE attachments SET next_attempt_at = 0 WHERE state IN (0, 1, 2)")  # time passes


def converge(fails, label, conn, limit=30):
    for i in range(limit):
        summary = json.loads(one(conn, "SELECT attachment_sync()"))
        if summary["pending"] == 0:
            return i + 1
        conn.execute("UPDATE attachments SET next_attempt_at = 0 WHERE state IN (0, 1, 2)")
    left = conn.execute("SELECT id, state, last_error FROM attachments WHERE state IN (0,1,2) LIMIT 3").fetchall()
    fails.add(f"{label}: not converged after {limit} fault-free passes: {left}")
    return limit


def run_remote(fails, kind, seed, uploads, totals):
    folder = workdir(f"faults-{kind}")
    remote = Remote(kind, folder)
    proxy = Proxy(remote.port, f"{seed}/{kind}", folder)
    try:
        rng = random.Random(f"{seed}/faults/{kind}")
        db_a, db_b = os.path.join(folder, "a.db"), os.path.join(folder, "b.db")
        cfg = {**remote.config(proxy.port), "max_attempts": 1000, "max_concurrency": 4}
        a, b = connect(db_a), connect(db_b)
        a.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files-a", **cfg}),))
        b.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files-b", **cfg}),))
        a.execute("CREATE TABLE photos(seq INTEGER PRIMARY KEY, id TEXT)")
        a.execute("SELECT attachment_watch('photos', 'SELECT id, ''bin'' AS file_extension FROM photos')")
        b.execute("CREATE TABLE refs(id TEXT PRIMARY KEY)")
        b.execute("SELECT attachment_watch('refs', 'SELECT id, ''bin'' AS file_extension FROM refs')")
        expected, wrong = {}, set()
        for seq in range(uploads):
            data = content(seed, f"{kind}-{seq}", rng.choice([1, 100, 4096]) if seq % 10 == 0 else rng.randrange(1, 300_000))
            a.execute("BEGIN IMMEDIATE")
            a.execute("INSERT INTO photos VALUES (?, attachment_save(?, 'bin'))", (seq, data))
            a.execute("COMMIT")
            expected[one(a, "SELECT id FROM photos WHERE seq = ?", seq)] = sha(data)
        files_a, files_b = os.path.join(folder, "files-a"), os.path.join(folder, "files-b")
        proxy.set("faults")
        drive(fails, f"{kind} uploads under faults", a, lambda: rows(db_a), files_a, expected, remote, FAULTY_PASSES, wrong)
        synced_under_faults = sum(1 for r in rows(db_a).values() if r["state"] == SYNCED)
        proxy.set("pass")
        converge(fails, f"{kind} uploads", a)
        check_synced(fails, f"{kind} uploads converged", rows(db_a), files_a, expected, remote)
        b.execute("BEGIN IMMEDIATE")
        b.executemany("INSERT INTO refs VALUES (?)", [(i,) for i in expected])
        b.execute("COMMIT")
        proxy.set("faults")
        drive(fails, f"{kind} downloads under faults", b, lambda: rows(db_b), files_b, expected, None, FAULTY_PASSES, wrong)
        synced_under_faults += sum(1 for r in rows(db_b).values() if r["state"] == SYNCED)
        proxy.set("pass")
        converge(fails, f"{kind} downloads", b)
        for label, db, files in (("A", db_a, files_a), ("B", db_b, files_b)):
            q = rows(db)
            not_synced = [i for i in expected if q.get(i, {}).get("state") != SYNCED]
            if not_synced:
                why = collections.Counter(f"state {q[i]['state']}: {(q[i]['last_error'] or '')[:60]}" if i in q else "no row"
                                          for i in not_synced)
                fails.add(f"{kind}: {len(not_synced)} of {len(expected)} not SYNCED on {label} after faults stopped "
                          f"({'; '.join(f'{v} x {k}' for k, v in why.most_common(3))})")
            check_synced(fails, f"{kind} {label} converged", q, files, expected, remote if label == "A" else None)
            if temp_files(files):
                fails.add(f"{kind}: temp files left in {label}'s local_dir after converging: {temp_files(files)[:3]}")
            if integrity(db) != "ok":
                fails.add(f"{kind}: integrity_check of {label}: {integrity(db)}")
        totals["transfers"] += 2 * uploads
        totals["synced_under_faults"] += synced_under_faults
        totals["faults"].update(proxy.counts())
        totals["causes"].update(proxy.causes(wrong))
        a.close()
        b.close()
    finally:
        proxy.stop()
        remote.stop()
        cleanup(folder)


def run(seed, transfers):
    fails = Failures("faults")
    totals = {"transfers": 0, "synced_under_faults": 0, "faults": collections.Counter(), "causes": collections.Counter()}
    t0 = time.time()
    per_remote = max(1, transfers // 4)  # half uploads, half downloads, over two remotes
    for kind in ("webdav", "s3"):
        run_remote(fails, kind, seed, per_remote, totals)
    f = totals["faults"]
    injected = sum(v for k, v in f.items() if k not in ("none", "login_page"))
    wrong = len([x for x in fails.items if "SYNCED but" in x])
    line = (f"faults: {totals['transfers']} transfers, {sum(f.values())} requests, {injected} faults injected "
            f"({', '.join(f'{k} {v}' for k, v in sorted(f.items()) if k != 'none')}), "
            f"{totals['synced_under_faults']} SYNCED under faults, {wrong} wrong SYNCED rows"
            f"{' (by last fault: ' + ', '.join(f'{k} {v}' for k, v in sorted(totals['causes'].items())) + ')' if totals['causes'] else ''}, "
            f"{'converged' if not any('not SYNCED' in x or 'not converged' in x for x in fails.items) else 'NOT converged'} "
            f"byte-identical; {time.time() - t0:.0f} s")
    return fails, line
