"""sqlite-attachments: offline-first file attachments as a SQLite extension.

    import sqlite3, sqlite_attachments
    conn = sqlite3.connect("app.db")
    sqlite_attachments.load(conn)

Works with the stdlib sqlite3 module (when it was built with extension loading),
with apsw, and with sqlean.py.

A progress bar over every transfer on the database (this process's worker's and
any other process's), fed by attachment_progress():

    conn.execute("SELECT attachment_start_sync()")
    sqlite_attachments.progress_bar(conn)            # until the queue is empty
"""
import json
import os
import sys
import time

__version__ = "0.2.0"  # python/build_wheel.py writes Cargo.toml's version here
ENTRY_POINT = "sqlite3_attachments_init"


def loadable_path():
    """Path of the bundled extension without its suffix, as SQLite's load_extension takes it."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "attachments")


class ExtensionLoadingUnavailable(RuntimeError):
    """This Python's sqlite3 module cannot load extensions."""


def load(conn):
    """Loads the extension into `conn` (stdlib sqlite3, sqlean.py or apsw connection)."""
    path = loadable_path()
    if type(conn).__module__.startswith("apsw"):
        conn.enable_load_extension(True)
        conn.load_extension(path, ENTRY_POINT)
        return
    if not hasattr(conn, "enable_load_extension"):
        raise ExtensionLoadingUnavailable(
            "this Python's sqlite3 module was built without extension loading "
            "(common with pyenv and macOS builds), so it cannot load sqlite-attachments. "
            "Use a Python whose sqlite3 can (Debian/Ubuntu's /usr/bin/python3), "
            "or install a driver that always can: `pip install apsw` (import apsw) "
            "or `pip install sqlean.py` (import sqlean as sqlite3)."
        )
    conn.enable_load_extension(True)
    try:
        conn.load_extension(path)
    finally:
        conn.enable_load_extension(False)


def progress(conn):
    """attachment_progress() as a dict (see the README's "Progress" section)."""
    return json.loads(conn.execute("SELECT attachment_progress()").fetchone()[0])


def _size(n):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def progress_line(p, width=24):
    """One line for a terminal: a bar, percent, files, bytes, rate and time left.

    By bytes when every size is known (downloads learn theirs when they finish), else by files."""
    up, down = p["upload"], p["download"]
    files_done = up["files_done"] + down["files_done"]
    files_total = up["files_total"] + down["files_total"]
    moved = up["bytes_moved"] + down["bytes_moved"]
    total = up["bytes_total"] + down["bytes_total"]
    by_bytes = up["files_size_unknown"] + down["files_size_unknown"] == 0 and total > 0
    fraction = moved / total if by_bytes else (files_done / files_total if files_total else 1.0)
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(round(fraction * width))
    line = f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}% {files_done}/{files_total} files"
    if total:
        line += f", {_size(moved)}/{_size(total)}"
    if p.get("rate"):
        line += f", {_size(p['rate'])}/s"
    if p.get("eta_seconds") and p.get("active"):
        line += f", {p['eta_seconds']:.0f} s left"
    if p.get("files_failing"):
        line += f", {p['files_failing']} failing"
    return line


def progress_bar(conn, interval=0.2, file=None, use_tqdm=False, timeout=None):
    """Draws progress until nothing is queued or in flight (or `timeout` seconds pass), and
    returns the last attachment_progress() dict. Transfers run elsewhere: the worker
    (attachment_start_sync) or another process. With use_tqdm=True and tqdm installed, a
    tqdm bar counts files; otherwise a plain line is redrawn in place."""
    out = file or sys.stderr
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = None
    if use_tqdm:
        try:
            from tqdm import tqdm
            bar = tqdm(unit="file", file=out)
        except ImportError:
            bar = None
    while True:
        p = progress(conn)
        if bar is not None:
            bar.total = p["upload"]["files_total"] + p["download"]["files_total"]
            bar.n = p["upload"]["files_done"] + p["download"]["files_done"]
            bar.refresh()
        else:
            out.write("\r" + progress_line(p))
            out.flush()
        if not p["active"] or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(interval)
    if bar is not None:
        bar.close()
    else:
        out.write("\n")
        out.flush()
    return p
