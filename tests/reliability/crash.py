"""Part 1, crash: SIGKILL a child at random instants while it saves, uploads
(S3 multipart too), downloads on a second device, deletes, expires the cache and
verifies; then restart, verify, sync until nothing is pending, and check that
nothing was lost, duplicated, half-written or wrongly SYNCED.

Ground truth is the app's own table (`photos`), written in the same transaction
as attachment_save: a save committed iff its photos row exists."""
import collections
import json
import os
import random
import signal
import subprocess
import time

from common import (PYTHON, HERE, Failures, Remote, age_files, cleanup, content, file_sha, integrity,
                    rows, run_child, sha, temp_files, workdir)
import child

SYNCED, ARCHIVED = 3, 4


class World:
    """Devices A and B over one remote kind; survives many kills."""

    def __init__(self, kind, seed):
        self.kind, self.seed = kind, seed
        self.dir = workdir(f"crash-{kind}")
        self.remote = Remote(kind, self.dir)
        self.db_a, self.db_b = os.path.join(self.dir, "a.db"), os.path.join(self.dir, "b.db")
        self.files_a, self.files_b = os.path.join(self.dir, "files-a"), os.path.join(self.dir, "files-b")
        self.journal = os.path.join(self.dir, "journal")
        cfg = self.remote.config()
        # archived_cache_limit 1: an unreferenced file is soon expired (local file and row go, remote stays).
        # max_attempts high: a download must never be given up because of a crash.
        for role, db, extra in (("a", self.db_a, {"archived_cache_limit": 1}), ("b", self.db_b, {})):
            config = json.dumps({"local_dir": f"files-{role}", "max_attempts": 1000, **cfg, **extra})
            rc, out, err = run_child([f"init-{role}", db, config])
            if rc:
                raise RuntimeError(f"init {role} failed: {err}")
        self.next_seq, self.duration = 0, {False: {}, True: {}}

    def start_cycle(self, large, saves=3):
        first = self.next_seq
        self.next_seq += 100
        with open(self.journal, "a") as f:
            f.write(f"cycle {first}\n")
        args = [PYTHON, os.path.join(HERE, "child.py"), "cycle", self.db_a, self.db_b, str(self.seed), str(first),
                str(saves), "1" if large else "0", self.journal]
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def phases(self, since):
        """(name, time) of the phase notes of the cycle that starts at byte `since` of the journal."""
        with open(self.journal) as f:
            f.seek(since)
            return [(p[1], float(p[2])) for p in (line.split() for line in f) if p and p[0] == "phase"]

    def last_phase(self, since):
        phases = self.phases(since)
        return phases[-1][0] if phases else "start"

    def measure(self, since):
        """How long each phase of an unkilled cycle took."""
        p = self.phases(since)
        return {name: max(0.01, p[i + 1][1] - t) for i, (name, t) in enumerate(p[:-1])}

    def recover(self):
        age_files(self.files_a)
        age_files(self.files_b)
        rc, out, err = run_child(["recover", self.db_a, self.db_b], timeout=600)
        return rc, out, err

    def check(self, fails, label):
        """Every invariant of part 1, after a recovery."""
        begun, deleted = {}, {}
        with open(self.journal) as f:
            for line in f:
                p = line.split()
                if p[0] == "begin":
                    begun[int(p[1])] = int(p[2])
                elif p[0] == "delete":
                    deleted[int(p[1])] = p[2]
        for db in (self.db_a, self.db_b):
            ok = integrity(db)
            if ok != "ok":
                fails.add(f"{label}: integrity_check of {os.path.basename(db)}: {ok}")
        import sqlite3
        conn = sqlite3.connect(self.db_a, timeout=30)
        photos = {seq: (id_, keep) for seq, id_, keep in conn.execute("SELECT seq, id, keep FROM photos")}
        conn.close()
        qa, qb = rows(self.db_a), rows(self.db_b)
        by_sha = {}
        for r in qa.values():
            by_sha.setdefault(r["sha256"], []).append(r)
        expected_sha = {seq: sha(content(self.seed, seq, size)) for seq, size in begun.items()}
        for seq, size in begun.items():
            want = expected_sha[seq]
            if seq in photos:
                id_, keep = photos[seq]
                row = qa.get(id_)
                remote = file_sha(self.remote.stored(f"{id_}.bin"))
                if keep:
                    if row is None or row["state"] != SYNCED:
                        fails.add(f"{label}: committed seq {seq} id {id_} is {row and row['state']} on A, not SYNCED")
                    elif file_sha(os.path.join(self.files_a, row["local_uri"] or "?")) != want:
                        fails.add(f"{label}: committed seq {seq} id {id_}: A's local file differs from the saved bytes")
                elif row is not None and row["state"] not in (SYNCED, ARCHIVED):
                    fails.add(f"{label}: unreferenced seq {seq} id {id_} is state {row['state']}")
                if remote != want:
                    fails.add(f"{label}: committed seq {seq} id {id_}: remote copy {'missing' if remote is None else 'differs'}")
                if seq % 5 != 0:
                    rb = qb.get(id_)
                    if rb is None or rb["state"] != SYNCED:
                        fails.add(f"{label}: B's download of seq {seq} id {id_} is {rb and rb['state']}, not SYNCED")
                    elif file_sha(os.path.join(self.files_b, rb["local_uri"] or "?")) != want:
                        fails.add(f"{label}: B's copy of seq {seq} id {id_} differs from the saved bytes")
            elif seq in deleted:
                id_ = deleted[seq]
                if id_ in qa:
                    fails.add(f"{label}: deleted seq {seq} id {id_} still has a row in state {qa[id_]['state']}")
                if os.path.exists(self.remote.stored(f"{id_}.bin")):
                    fails.add(f"{label}: deleted seq {seq} id {id_} still exists remotely (the delete committed)")
            else:
                # The save never committed: no row may carry its bytes.
                for r in by_sha.get(want, []):
                    fails.add(f"{label}: uncommitted save seq {seq} has a row {r['id']} in state {r['state']}")
        for name, folder, q in (("A", self.files_a, qa), ("B", self.files_b, qb)):
            temps = temp_files(folder)
            if temps:
                fails.add(f"{label}: {len(temps)} temp file(s) left in {name}'s local_dir: {temps[:3]}")
            owned = {r["filename"] for r in q.values()}
            orphans = [n for n in os.listdir(folder) if not n.startswith(".") and n not in owned]
            if orphans:
                fails.add(f"{label}: {len(orphans)} file(s) no row names left in {name}'s local_dir: {orphans[:3]}")
            pending = [r["id"] for r in q.values() if r["state"] in (0, 1, 2)]
            if pending:
                fails.add(f"{label}: {name} still has {len(pending)} pending row(s) after recovery")
        return sum(1 for seq in photos)

    def close(self):
        self.remote.stop()
        cleanup(self.dir)


SMALL_PHASES = ("save", "upload", "download", "delete", "expire", "worker", "verify")
LARGE_PHASES = ("save-large", "upload", "download")


def kill_in_phase(w, large, target, rng):
    """Starts a cycle, waits for `target` to begin, kills at a random instant within
    it. Returns the phase the kill hit, or None when the cycle finished first."""
    since = os.path.getsize(w.journal) if os.path.exists(w.journal) else 0
    p = w.start_cycle(large)
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline:
        if any(name == target for name, _ in w.phases(since)):
            break
        time.sleep(0.002)
    try:
        p.wait(rng.uniform(0, w.duration[large].get(target, 0.05)))
    except subprocess.TimeoutExpired:
        phase = w.last_phase(since)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        return phase, None
    return None, (p.returncode, p.stderr.read())


def run(seed, kills, large_kills):
    """`kills` SIGKILLs spread over file://, WebDAV and S3 and over every phase of a
    cycle; `large_kills` of the S3 ones during cycles with a >16 MiB (multipart) file."""
    fails = Failures("crash")
    rng = random.Random(f"{seed}/crash")
    worlds = {}
    killed = recovered = completed = 0
    hits = collections.Counter()
    t0 = time.time()
    try:
        for kind in ("file", "webdav", "s3"):
            worlds[kind] = w = World(kind, seed)
            # Two small calibration cycles: the first has nothing old to delete or expire.
            for large in ((False, False, True) if kind == "s3" and large_kills else (False, False)):
                # One unkilled cycle first: it measures each phase, so kills spread over all of it.
                since = os.path.getsize(w.journal) if os.path.exists(w.journal) else 0
                p = w.start_cycle(large)
                _, err = p.communicate(timeout=600)
                if p.returncode:
                    fails.add(f"{kind}: an unkilled cycle failed: {err.strip()[-500:]}")
                    return fails, "crash: harness could not run an unkilled cycle"
                w.duration[large] = w.measure(since)
                rc, out, err = w.recover()
                if rc:
                    fails.add(f"{kind}: recovery after an unkilled cycle failed: {err.strip()[-500:]}")
                w.check(fails, f"{kind} baseline")
        plan = [("s3", True, LARGE_PHASES[i % len(LARGE_PHASES)]) for i in range(large_kills)]
        small = kills - large_kills
        plan += [(("file", "webdav", "s3")[i % 3], False, SMALL_PHASES[(i // 3) % len(SMALL_PHASES)]) for i in range(small)]
        rng.shuffle(plan)
        for kind, large, target in plan:
            w = worlds[kind]
            for _ in range(5):
                phase, finished = kill_in_phase(w, large, target, rng)
                if phase:
                    break
                completed += 1
                if finished[0]:
                    fails.add(f"{kind}: a cycle failed on its own: {finished[1].strip()[-300:]}")
            if not phase:
                continue
            killed += 1
            hits[phase + (" (multipart)" if large else "")] += 1
            label = f"{kind} kill #{killed} in phase {phase}{' (multipart)' if large else ''} (seed {seed})"
            rc, out, err = w.recover()
            if rc:
                fails.add(f"{label}: recovery failed: {err.strip()[-500:]}")
                continue
            before = len(fails.items)
            w.check(fails, label)
            if len(fails.items) == before:
                recovered += 1
    finally:
        for w in worlds.values():
            w.close()
    phases = ", ".join(f"{k} {v}" for k, v in sorted(hits.items()))
    count = lambda word: len([f for f in fails.items if word in f])
    line = (f"crash: {killed} kills, {recovered} recovered, {count('not SYNCED') + count('missing')} lost, "
            f"{count('temp file')} with temp files left, {count('uncommitted')} uncommitted rows, "
            f"integrity {'FAILED' if count('integrity') else 'ok'}; phases hit: {phases}; "
            f"{completed} cycles ended before their kill; {time.time() - t0:.0f} s")
    return fails, line
