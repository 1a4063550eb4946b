#!/usr/bin/env bash
# Installs the wheel from dist/ into fresh virtual environments and runs the
# host flow with the stdlib sqlite3 (Debian's Python), apsw and sqlean.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# The wheel for this machine (make dist also leaves the other architectures' and macOS's).
wheel=$(ls "$root"/dist/sqlite_attachments-*linux*_"$(uname -m)".whl | head -1)
tmp=$(mktemp -d /tmp/att-hosts-py.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# Debian's Python: its stdlib sqlite3 can load extensions.
/usr/bin/python3 -m venv "$tmp/debian"
"$tmp/debian/bin/pip" install -q --no-index "$wheel"
mkdir "$tmp/w1"; "$tmp/debian/bin/python" "$here/flow.py" sqlite3 "$tmp/w1"

# Another Python (pyenv's here) whose sqlite3 cannot: apsw and sqlean.py can.
other=$(command -v python3)
if [[ $other == /usr/bin/python3 ]]; then other=$(ls /root/.pyenv/versions/*/bin/python3 2>/dev/null | head -1 || true); fi
if [[ -n $other && $("$other" -c 'import sqlite3; print(hasattr(sqlite3.connect(":memory:"), "enable_load_extension"))') == False ]]; then
  "$other" -m venv "$tmp/other"
  "$tmp/other/bin/pip" install -q "$wheel" apsw sqlean.py
  "$tmp/other/bin/python" "$here/no_extension_loading.py"
  mkdir "$tmp/w2"; "$tmp/other/bin/python" "$here/flow.py" apsw "$tmp/w2"
  mkdir "$tmp/w3"; "$tmp/other/bin/python" "$here/flow.py" sqlean "$tmp/w3"
else
  "$tmp/debian/bin/pip" install -q apsw sqlean.py
  mkdir "$tmp/w2"; "$tmp/debian/bin/python" "$here/flow.py" apsw "$tmp/w2"
  mkdir "$tmp/w3"; "$tmp/debian/bin/python" "$here/flow.py" sqlean "$tmp/w3"
fi
