"""Part 3, three processes on one database over WebDAV: two processes each run
the background worker (attachment_start_sync) while a third, a plain writer,
saves files in long write transactions (seconds each). Each file must go up
exactly once (PUTs counted in nginx's access log), no SQLITE_BUSY may reach any
app connection, and every file ends SYNCED, byte-identical, integrity ok."""
import collections
import json
import os
import re
import sqlite3
import subprocess
import time

from common import (HERE, PYTHON, Failures, Remote, cleanup, content, file_sha, integrity, rows, run_child, sha,
                    workdir)
from child import size_for

SYNCED = 3
BUSY = re.compile(r"locked|busy", re.I)


def run(seed, files, per_txn=3, hold=2.0, gap=0.01):
    fails = Failures("three")
    t0 = time.time()
    folder = workdir("three")
    remote = Remote("webdav", folder)
    procs = []
    try:
        db = os.path.join(folder, "app.db")
        cfg = {"local_dir": "files", "sync_interval_ms": 500, **remote.config()}
        rc, _, err = run_child(["init-a", db, json.dumps(cfg)])
        if rc:
            fails.add(f"init failed: {err.strip()[-300:]}")
            return fails, "three: harness could not initialise the database"
        stop = os.path.join(folder, "stop")
        env = dict(os.environ, SQLITE_ATTACHMENTS_LOG="warn")
        logs = {}
        for name in ("worker1", "worker2"):
            logs[name] = open(os.path.join(folder, f"{name}.err"), "w+")
            procs.append((name, subprocess.Popen([PYTHON, os.path.join(HERE, "child.py"), "worker", db, stop],
                                                 stdout=subprocess.PIPE, stderr=logs[name], text=True, env=env)))
        journal = os.path.join(folder, "journal")
        logs["writer"] = open(os.path.join(folder, "writer.err"), "w+")
        txns = max(1, files // per_txn)
        writer = subprocess.Popen([PYTHON, os.path.join(HERE, "child.py"), "writer", db, str(seed), "0", str(txns),
                                   str(per_txn), str(hold), str(gap), journal],
                                  stdout=subprocess.PIPE, stderr=logs["writer"], text=True, env=env)
        procs.append(("writer", writer))
        writer.wait(timeout=txns * (hold + 30) + 60)
        if writer.returncode:
            fails.add(f"the writer failed (rc {writer.returncode})")
        total = txns * per_txn
        written = time.time()
        # Generous: a claim left behind by a failed pass lapses after 2 minutes (CLAIM_LEASE).
        deadline = written + 150
        while time.time() < deadline:
            q = rows(db)
            if len(q) >= total and all(r["state"] == SYNCED for r in q.values()):
                break
            time.sleep(0.25)
        converged_after = time.time() - written
        open(stop, "w").close()
        for name, p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                fails.add(f"{name} did not stop within 60 s of being asked")
                continue
            if p.returncode:
                fails.add(f"{name} exited with {p.returncode}")
        pass_busy = {}
        for name, log in logs.items():
            log.seek(0)
            text = log.read()
            # The extension's own log lines ("[sqlite-attachments WARN] sync pass ... failed") are a
            # worker pass that gave up waiting and will run again: counted, not an app error.
            logged = [line for line in text.splitlines() if line.startswith("[sqlite-attachments")]
            pass_busy[name] = len([line for line in logged if BUSY.search(line)])
            app = "\n".join(line for line in text.splitlines() if not line.startswith("[sqlite-attachments"))
            if BUSY.search(app):
                fails.add(f"{name}: SQLITE_BUSY reached the app: {app.strip()[-300:]}")
            elif app.strip():
                fails.add(f"{name}: the app saw an error: {app.strip()[-300:]}")
        # Expected bytes of each save, from the writer's journal.
        sizes = {}
        with open(journal) as f:
            for line in f:
                p = line.split()
                if p[0] == "begin":
                    sizes[int(p[1])] = int(p[2])
        conn = sqlite3.connect(db, timeout=30)
        photos = dict(conn.execute("SELECT seq, id FROM photos"))
        conn.close()
        q = rows(db)
        puts = collections.Counter()
        with open(remote.access_log()) as f:
            for line in f:
                m = re.search(r'"PUT (\S+) HTTP', line)
                if m and re.search(r'" 20[14] ', line):
                    puts[os.path.basename(m.group(1))] += 1
        once = 0
        for seq, id_ in photos.items():
            want = sha(content(seed, seq, sizes[seq]))
            r = q.get(id_)
            if r is None or r["state"] != SYNCED:
                fails.add(f"seq {seq} id {id_} is {r and r['state']}, not SYNCED after {converged_after:.0f} s")
                continue
            if file_sha(remote.stored(r["filename"])) != want:
                fails.add(f"seq {seq} id {id_}: the server's copy is not the saved bytes")
            n = puts[r["filename"]]
            if n != 1:
                fails.add(f"seq {seq} id {id_} was PUT {n} times (expected once)")
            else:
                once += 1
        if len(photos) != total:
            fails.add(f"{len(photos)} files committed, the writer saved {total}")
        ok = integrity(db)
        if ok != "ok":
            fails.add(f"integrity_check: {ok}")
        busy_hits = len([x for x in fails.items if "reached the app" in x])
        line = (f"three: 2 workers + 1 writer ({txns} transactions held {hold:.0f} s), {len(photos)} files, "
                f"{once} PUT exactly once, {sum(puts.values())} PUTs in all, "
                f"{busy_hits} app(s) saw SQLITE_BUSY ({sum(pass_busy.values())} worker pass(es) gave up on the lock and "
                f"ran again), integrity {ok}; all SYNCED {converged_after:.1f} s after the writer's last commit")
        return fails, line
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        remote.stop()
        cleanup(folder)
