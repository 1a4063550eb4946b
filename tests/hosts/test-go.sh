#!/usr/bin/env bash
# Builds examples/go with Debian's Go and mattn/go-sqlite3 and runs the flow.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if ! command -v go >/dev/null || [[ ! -d /usr/share/gocode/src/github.com/mattn/go-sqlite3 ]]; then
  echo "SKIP go: Go or mattn/go-sqlite3 is missing (Debian: apt-get install golang-go golang-github-mattn-go-sqlite3-dev)"; exit 0
fi
tmp=$(mktemp -d /tmp/att-hosts-go.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cd "$root/examples/go"
GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=${GOCACHE:-$HOME/.cache/go-build} go build -o "$tmp/flow" .
# Without arguments: the usage on stderr and exit status 2, not a panic.
set +e; "$tmp/flow" >"$tmp/out" 2>"$tmp/err"; status=$?; set -e
if [[ $status -ne 2 ]] || ! grep -q '^usage: flow LIBRARY WORKDIR' "$tmp/err" || grep -q panic "$tmp/err"; then
  echo "FAIL go: without arguments, expected the usage and exit status 2; got $status:"; cat "$tmp/out" "$tmp/err"; exit 1
fi
echo "ok   go: without arguments, the usage and exit status 2"
mkdir "$tmp/work"
"$tmp/flow" "$root/dist/attachments" "$tmp/work"
