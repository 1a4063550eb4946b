#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 600) each, one after another,
# and fails on the first crash (its input is left in fuzz/artifacts/<target>/).
# New inputs that reach new code are added to fuzz/corpus/<target>/.
# FUZZ_TARGETS="names config" runs only those. Needs the nightly toolchain;
# installs cargo-fuzz when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-600}
targets=${FUZZ_TARGETS:-names config watch_analysis watch_query retry_after s3_response encrypted_object}

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is needed: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# -O: optimised, -a: debug assertions (integer overflow panics count as crashes).
cargo +nightly fuzz build -O -a
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  log=$(mktemp)
  echo "fuzz: $t for ${seconds}s"
  if ! cargo +nightly fuzz run -O -a "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "FAIL fuzz: $t crashed; reproduce with: cargo +nightly fuzz run -O -a $t fuzz/artifacts/$t/<crash file>" >&2
    rm -f "$log"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  echo "ok   fuzz: $t: ${runs:-?} executions, 0 crashes"
  rm -f "$log"
done
