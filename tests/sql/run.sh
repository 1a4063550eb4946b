#!/usr/bin/env bash
# SQL scenarios through the real sqlite3 CLI. Each scenario is NAME.1.sql,
# NAME.2.sql, ... run in order as separate sqlite3 processes (a new process is a
# restart, or another device) in one fresh directory; their output, errors
# included, is compared with NAME.out. UPDATE_GOLDENS=1 rewrites the .out files.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lib="$(cd "$here/../.." && pwd)/dist/attachments"
only=${1:-}
fail=0
for first in "$here"/*.1.sql; do
  name=$(basename "$first" .1.sql)
  [[ -n $only && $name != "$only" ]] && continue
  tmp=$(mktemp -d /tmp/att-sql.XXXXXX)
  actual="$tmp/actual.out"
  for step in "$here/$name".*.sql; do
    echo "-- $(basename "$step")" >>"$actual"
    (cd "$tmp" && sed -e "s|@TMP@|$tmp|g" -e "s|@LIB@|$lib|g" "$step" | sqlite3 -batch 2>&1) |
      sed "s|$tmp|@TMP@|g" >>"$actual"
  done
  [[ ${UPDATE_GOLDENS:-} == 1 ]] && cp "$actual" "$here/$name.out"
  if diff -u "$here/$name.out" "$actual"; then
    echo "ok   sql/$name"
  else
    echo "FAIL sql/$name"
    fail=1
  fi
  rm -rf "$tmp"
done
exit $fail
