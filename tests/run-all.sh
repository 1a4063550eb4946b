#!/usr/bin/env bash
# Every test, in order of speed. Used by `make test` (after deps and build).
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
step() {
  echo; echo "=== $1"; shift
  if ! "$@"; then status=1; echo "=== FAILED: $*"; fi
}
step "Rust unit tests" cargo test --locked --lib --quiet
step "Linkage" tests/test-linkage.sh
step "Binaries: x86_64 and aarch64 (glibc 2.17, qemu), macOS, manylinux wheels, npm per platform" /usr/bin/python3 tests/hosts/test_binaries.py
step "SQL scenarios (sqlite3 CLI)" tests/sql/run.sh
step "Python (stdlib sqlite3 driver)" tests/py/run.sh test_core
step "Remotes against real servers (nginx WebDAV, s3s-fs, signing backend)" tests/py/run.sh test_remotes
step "Background worker (real processes, nginx)" tests/py/run.sh test_worker
step "Claims, liveness, stopping (real processes, nginx)" tests/py/run.sh test_claims
step "Connections: VFS, one SQLite, result codes, config at the door" tests/py/run.sh test_connections
step "Local files: integrity, ownership, verify under the lock" tests/py/run.sh test_local_files
step "The file:// remote and downloads: missing roots, hostile files, known checksums, full disks" tests/py/run.sh test_dir_remote
step "Watches: untrusted queries, failures kept per watch, triggers repaired" tests/py/run.sh test_watches
step "Watch policies: download, priority, max_download_size (file:// remote)" tests/py/run.sh test_watch_policies
step "Row-by-row reconciliation: same end state as a full re-run (seeded property test)" tests/py/run.sh test_reconcile_incremental
step "Hostile servers: redirects, truncation, trickles, secrets (nginx, s3s-fs, fault proxy)" tests/py/run.sh test_hostile_servers
step "Queue state machine: one test per transition" tests/py/run.sh test_queue_states
step "Fetch now, progress feed, errors people can act on (nginx, s3s-fs, signing backend)" tests/py/run.sh test_fetch_progress
step "Archived cache: limits by rows and bytes, LRU, pinning, attachment_cache()" tests/py/run.sh test_cache
step "End-to-end encryption on every remote: ciphertext only, tampering, keys, rotation" tests/py/run.sh test_encryption
step "Upgrades: the 0.1.0 fixture migrated, a newer schema refused" tests/py/run.sh test_upgrade
step "Docs match the library (functions, config defaults, columns); README and docs links resolve in the repository and the packages" tests/py/run.sh test_docs
step "Hostile input catalogue (SQL, synced data, hand-edited tables, hostile servers)" tests/py/run.sh test_hostile_input
step "Transfers: resumable downloads, bandwidth cap, pause and resume, adaptive concurrency (nginx, s3s-fs, signing backend)" tests/py/run.sh test_transfers
step "Reliability at small counts (crash, faults, three processes, disk full)" /usr/bin/python3 tests/reliability/run.py --small
step "Host: Python package from dist/ (stdlib sqlite3, apsw, sqlean.py)" tests/hosts/test-python.sh
step "Host: Go example (mattn/go-sqlite3)" tests/hosts/test-go.sh
step "Host: Node package from dist/ (better-sqlite3)" tests/hosts/test-node.sh
step "Datasette plugin from dist/ in headless chromium (Selenium)" tests/hosts/test-datasette.sh
echo
if [[ $status -eq 0 ]]; then echo "ALL TESTS PASSED"; else echo "SOME TESTS FAILED"; fi
exit $status
