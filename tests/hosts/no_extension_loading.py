"""With a sqlite3 module built without extension loading, load() says so and names the alternatives."""
import sqlite3

import sqlite_attachments

conn = sqlite3.connect(":memory:")
assert not hasattr(conn, "enable_load_extension"), "this check needs a Python without extension loading"
try:
    sqlite_attachments.load(conn)
except sqlite_attachments.ExtensionLoadingUnavailable as e:
    message = str(e)
    assert "apsw" in message and "sqlean.py" in message and "/usr/bin/python3" in message, message
    print("ok   python/no-extension-loading: a clear error naming apsw, sqlean.py and /usr/bin/python3")
else:
    raise AssertionError("expected ExtensionLoadingUnavailable")
