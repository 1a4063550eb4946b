# sqlite-attachments: `make` builds dist/attachments.so; see README.md.
SHELL := /bin/bash
CARGO ?= cargo
PROFILE ?= release
UNAME := $(shell uname -s)
EXT := $(if $(filter Darwin,$(UNAME)),dylib,so)
LIB := dist/attachments.$(EXT)

.PHONY: all build demo test test-unit test-sql test-py test-reliability fuzz deps clean bench dist

all: build

build: $(LIB)

# On Linux, linked against glibc 2.17 with cargo-zigbuild (installed once from PyPI into
# ~/.cache/sqlite-attachments/build-tools); plain cargo when that cannot be installed.
$(LIB): Cargo.toml Cargo.lock $(shell find src -name '*.rs')
	CARGO=$(CARGO) PROFILE=$(PROFILE) scripts/build.sh host

demo: build deps-cli
	./sql/demo.sh

# Installs what the tests need when it is missing (Debian, as root).
deps: deps-cli
	./tests/install-deps.sh

deps-cli:
	@command -v sqlite3 >/dev/null || ./tests/install-deps.sh sqlite3

# The cross-compiled Linux libraries are required here: the tests check each of them.
# The two macOS builds are left to `make dist` (they would add a third to a clean run);
# tests/hosts/test_binaries.py checks any that a `make dist` left in dist/.
test: deps
	REQUIRE_CROSS=1 CROSS_MACOS=0 $(MAKE) dist
	CROSS_MACOS=0 ./tests/run-all.sh

test-unit:
	$(CARGO) test --locked --lib

test-sql: build
	./tests/sql/run.sh

test-py: build
	./tests/py/run.sh

# Each cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 600); fails on any crash.
# Needs the nightly toolchain; installs cargo-fuzz when missing.
FUZZ_SECONDS ?= 600
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) ./fuzz/run.sh

# Crash, fault, three-process and disk-full suites at full counts (200 kills, 1,000
# transfers); `make test` runs them at small counts. RELIABILITY_ARGS="--seed N" replays.
test-reliability: build deps
	/usr/bin/python3 tests/reliability/run.py $(RELIABILITY_ARGS)

clean:
	$(CARGO) clean
	rm -rf dist

# Benchmarks against baselines measured in the same run; writes bench/results.md. Not part of `make test`.
bench: build deps
	cargo build --release --quiet --manifest-path bench/baseline-save/Cargo.toml
	./bench/install-peers.sh
	/usr/bin/python3 bench/run.py

# The other Linux architecture and macOS (dist/linux-aarch64/, dist/macos-*/), one Python
# wheel per library (manylinux2014 / macOS tags), the Datasette plugin wheel and the npm
# tarball carrying every library.
dist: build
	CARGO=$(CARGO) PROFILE=$(PROFILE) scripts/build.sh cross
	scripts/package.sh
