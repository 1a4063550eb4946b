#!/usr/bin/env bash
# The Datasette plugin from dist/ in a real browser (Debian's chromium, headless,
# driven by Selenium): see datasette_browser.py. Datasette and Selenium come from
# PyPI into a virtual environment of Debian's Python (whose sqlite3 can load
# extensions), made once and kept in the cache; the two wheels from dist/ are
# installed afresh on every run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# The newest of each, should dist/ still hold an older release.
core=$(ls -t "$root"/dist/sqlite_attachments-*linux*_"$(uname -m)".whl | head -1)   # this machine's
plugin=$(ls -t "$root"/dist/datasette_attachments-*-py3-none-any.whl | head -1)
for tool in chromium chromedriver; do
  command -v $tool >/dev/null || { echo "$tool is missing: run tests/install-deps.sh" >&2; exit 1; }
done

venv=${DATASETTE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sqlite-attachments/datasette-venv}
if ! "$venv/bin/python" -c 'import datasette, selenium' 2>/dev/null; then
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'datasette>=0.64,<1.0' 'selenium>=4.10,<5'
fi
"$venv/bin/pip" install -q --no-index --no-deps --force-reinstall "$core" "$plugin"
# The plugin wheel's requirements (datasette, sqlite_attachments) are met by what is installed.
"$venv/bin/pip" check >/dev/null
"$venv/bin/datasette" plugins | grep -q '"datasette-attachments"'
# No telemetry or driver downloads from Selenium: the system chromedriver is given.
export SE_AVOID_STATS=true
exec "$venv/bin/python" "$here/datasette_browser.py" "$@"
