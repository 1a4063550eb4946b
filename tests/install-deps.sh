#!/usr/bin/env bash
# Installs what the tests need when it is missing. Debian/Ubuntu, as root.
# With arguments, installs just those Debian packages.
set -euo pipefail

need_pkgs=()
want() { # want COMMAND PACKAGE: queue PACKAGE when COMMAND is missing (also looked for in sbin)
  command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]] || need_pkgs+=("$2")
}

if [[ $# -gt 0 ]]; then
  need_pkgs=("$@")
else
  want sqlite3 sqlite3
  want nm binutils
  want nginx nginx-light
  want cc gcc
  want go golang-go
  want node nodejs
  want npm npm
  want qemu-aarch64-static qemu-user-static   # runs the aarch64 library (tests/hosts/test_binaries.py)
  want dpkg-deb dpkg
  want chromium chromium
  want chromedriver chromium-driver
  [[ -d /usr/share/gocode/src/github.com/mattn/go-sqlite3 ]] || need_pkgs+=(golang-github-mattn-go-sqlite3-dev)
  [[ -x /usr/bin/python3 ]] || need_pkgs+=(python3)
  /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
fi

if [[ ${#need_pkgs[@]} -gt 0 ]]; then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "missing: ${need_pkgs[*]}; install them with your package manager (Debian: apt-get install ${need_pkgs[*]})" >&2
    exit 1
  fi
  # Never let a package's service start during install (nginx would take port 80).
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
  fi
  echo "installing: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# s3s-fs: a real S3 server that checks SigV4 signatures (see README, "Test servers").
# 0.14.1 is the last release that builds with rustc 1.95. Built once, cached.
S3S_VERSION=0.14.1
S3S_ROOT=${S3S_ROOT:-$HOME/.cache/sqlite-attachments/s3s-fs-$S3S_VERSION}
if [[ $# -eq 0 && ! -x $S3S_ROOT/bin/s3s-fs ]]; then
  echo "building s3s-fs $S3S_VERSION (about 2 minutes, once)"
  cargo install s3s-fs --version "$S3S_VERSION" --features binary --locked --root "$S3S_ROOT" --quiet
fi

if [[ $# -eq 0 ]]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  # Cross-compiling (make dist): the Rust standard library of each target, and zig with
  # cargo-zigbuild and auditwheel from PyPI in a venv under ~/.cache/sqlite-attachments.
  for t in aarch64-unknown-linux-gnu x86_64-unknown-linux-gnu aarch64-apple-darwin x86_64-apple-darwin; do
    rustup target list --installed 2>/dev/null | grep -qx "$t" || rustup target add "$t" ||
      { [[ $t == *apple* ]] || exit 1; echo "NOTE: rustup target add $t failed: no macOS library for it"; }
  done
  "$root/scripts/build.sh" tools >/dev/null
  # A Debian arm64 sqlite3 CLI to load the aarch64 library under qemu.
  "$root/tests/hosts/arm64-sysroot.sh" >/dev/null
fi
