#!/usr/bin/env bash
# Installs the npm tarball from dist/ into a fresh Node project with
# better-sqlite3 12 (built from source against the system's Node headers)
# and runs the host flow.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tarball=$(ls "$root"/dist/sqlite-attachments-*.tgz | head -1)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "SKIP node: node and npm are missing (Debian: apt-get install nodejs npm)"; exit 0
fi
tmp=$(mktemp -d /tmp/att-hosts-node.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm init -y >/dev/null
# better-sqlite3 12 supports Node 20; its prebuilt download is unreachable offline, so
# it compiles (about a minute) against /usr/include/node.
npm_config_nodedir=/usr npm install --no-audit --no-fund --loglevel=error "$tarball" better-sqlite3@12 >/dev/null
mkdir work
cp "$here/node/flow.js" .
node flow.js "$tmp/work"
