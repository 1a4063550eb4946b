#!/usr/bin/env bash
# Python tests. The pyenv python3 on PATH cannot load extensions; Debian's can.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON_WITH_EXTENSIONS:-/usr/bin/python3}
exec "$PY" -m unittest -v "$@" 2>&1
