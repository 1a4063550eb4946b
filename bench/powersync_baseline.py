"""PowerSync's JavaScript attachment queue, run under Node on the same cases.
Installs the pinned packages into bench/powersync/node_modules on first use."""
import json
import os
import shutil
import subprocess
import tempfile

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "powersync")


def install():
    if os.path.isdir(os.path.join(HERE, "node_modules", "@powersync", "node")):
        return None
    if not shutil.which("npm"):
        return "npm is not installed"
    # better-sqlite3's prebuilt binary cannot be downloaded offline: it compiles against /usr/include/node.
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE,
                       env=dict(os.environ, npm_config_nodedir="/usr"), capture_output=True, text=True)
    return None if r.returncode == 0 else f"npm install failed: {r.stderr.strip()[-300:]}"


def version():
    try:
        with open(os.path.join(HERE, "node_modules", "@powersync", "node", "package.json")) as f:
            return "@powersync/node " + json.load(f)["version"]
    except OSError:
        return "@powersync/node not installed"


def transfers(url, n):
    """PowerSync's queue moving n x 16 KiB up and down through url: (figures, None) or (None, why not)."""
    why = install()
    if why:
        return None, why
    work = tempfile.mkdtemp(prefix="bench-ps-")
    r = subprocess.run(["node", "bench.mjs", url, work, str(n), "0"], cwd=HERE, capture_output=True, text=True, timeout=1800)
    shutil.rmtree(work, ignore_errors=True)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        return None, f"bench.mjs failed: {r.stderr.strip()[-300:]}"
    return json.loads(lines[-1]), None


def run(record, ours, nginx, small_n, reconcile_n):
    why = install()
    if why is None:
        work = tempfile.mkdtemp(prefix="bench-ps-")
        r = subprocess.run(["node", "bench.mjs", nginx.url, work, str(small_n), str(reconcile_n)], cwd=HERE,
                           capture_output=True, text=True, timeout=1800)
        shutil.rmtree(work, ignore_errors=True)
        lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
        why = None if (r.returncode == 0 and lines) else f"bench.mjs failed: {r.stderr.strip()[-300:]}"
    if why:
        print(f"  PowerSync JS attachment queue: not measured: {why}")
        record("PowerSync JS queue: not measured", 0, None, "", ">= 10x PowerSync", note=why)
        return
    ps = json.loads(lines[-1])
    note = "@powersync/node 1.1.0 (@powersync/common 2.x AttachmentQueue), Node " + subprocess.run(
        ["node", "--version"], capture_output=True, text=True).stdout.strip()
    record(f"vs PowerSync queue: {small_n:,} x 16 KiB uploads", ours["small_up"], ps["upload_files_per_s"],
           "files/s", ">= 10x PowerSync", note=note + "; its queue drained with syncStorage()")
    record(f"vs PowerSync queue: {small_n:,} x 16 KiB downloads", ours["small_down"], ps["download_files_per_s"],
           "files/s", ">= 10x PowerSync", note=note)
    record(f"vs PowerSync queue: reconcile {reconcile_n:,} ids from scratch", ours["reconcile_ms"], ps["reconcile_ms"],
           "ms", ">= 10x PowerSync", better="lower", note=note + "; until all rows are queued")
    record(f"vs PowerSync queue: one changed reference ({reconcile_n:,} ids)", ours["reconcile_change_ms"],
           ps["reconcile_one_change_ms"], "ms", ">= 10x PowerSync", better="lower", note=note)
