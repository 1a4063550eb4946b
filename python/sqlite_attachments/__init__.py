"""sqlite-attachments: offline-first file attachments as a SQLite extension.

    import sqlite3, sqlite_attachments
    conn = sqlite3.connect("app.db")
    sqlite_attachments.load(conn)

Works with the stdlib sqlite3 module (when it was built with extension loading),
with apsw, and with sqlean.py.
"""
import os

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
