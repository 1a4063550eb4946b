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

$(LIB): Cargo.toml $(shell find src -name '*.rs')
	$(CARGO) build --$(PROFILE) --locked
	mkdir -p dist
	cp target/$(PROFILE)/libattachments.$(EXT) $(LIB)

demo: build deps-cli
	./sql/demo.sh

# Installs what the tests need when it is missing (Debian, as root).
deps: deps-cli
	./tests/install-deps.sh

deps-cli:
	@command -v sqlite3 >/dev/null || ./tests/install-deps.sh sqlite3

test: deps dist
	./tests/run-all.sh

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

# The Python wheel, the Datasette plugin wheel and the npm tarball, from the release build, into dist/.
dist: build
	python3 python/build_wheel.py $(LIB) dist
	python3 datasette-attachments/build_wheel.py dist
	rm -rf dist/npm && mkdir -p dist/npm/lib
	cp npm/package.json npm/index.js npm/index.d.ts README.md CHANGELOG.md dist/npm/
	cp -r docs dist/npm/
	python3 -c 'import json,re,sys; p="dist/npm/package.json"; d=json.load(open(p)); d["version"]=re.search(r"(?m)^version = \"([^\"]+)\"", open("Cargo.toml").read()).group(1); json.dump(d, open(p,"w"), indent=2)'
	cp $(LIB) dist/npm/lib/
	cd dist/npm && npm pack --silent --pack-destination .. >/dev/null
	@ls dist/*.whl dist/*.tgz
