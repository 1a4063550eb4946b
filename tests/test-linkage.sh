#!/usr/bin/env bash
# One SQLite per process: the extension must not link or bundle its own SQLite.
# Every sqlite3_* call goes through the host's extension API routines.
set -euo pipefail
lib="$(cd "$(dirname "$0")/.." && pwd)/dist/attachments.so"
fail=0
if ldd "$lib" | grep -q libsqlite3; then
  echo "FAIL linkage: $lib links libsqlite3"; fail=1
fi
others=$(nm -D "$lib" | grep -E ' [UTW] sqlite3_' | grep -v ' T sqlite3_attachments_init$' || true)
if [[ -n $others ]]; then
  echo "FAIL linkage: $lib imports or defines sqlite3_* symbols:"; echo "$others" | head; fail=1
fi
exported=$(nm -D --defined-only "$lib" | grep -c ' T sqlite3_attachments_init' || true)
if [[ $exported -ne 1 ]]; then
  echo "FAIL linkage: entry point sqlite3_attachments_init not exported"; fail=1
fi
if nm "$lib" 2>/dev/null | grep -q 'sqlite3VdbeExec\|sqlite3BtreeOpen'; then
  echo "FAIL linkage: $lib contains SQLite's own code"; fail=1
fi
[[ $fail -eq 0 ]] && echo "ok   linkage: no libsqlite3, no sqlite3_* symbols but the entry point"
exit $fail
