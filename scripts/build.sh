#!/usr/bin/env bash
# Builds the release libraries into dist/. Used by the Makefile.
#
#   scripts/build.sh host    dist/attachments.so for this machine (.dylib on macOS)
#   scripts/build.sh cross   the other Linux architecture and macOS, into dist/<os>-<arch>/
#   scripts/build.sh tools   only installs the cross-compiling tools (prints their bin dir)
#
# On Linux the libraries are linked by zig (PyPI `ziglang`, driven by `cargo-zigbuild`)
# against glibc 2.17, so they load on every glibc Linux since 2014 (manylinux2014:
# CentOS 7, Debian 8, Ubuntu 14.04 and later), whatever glibc this machine has.
# The tools live in a virtual environment under ~/.cache/sqlite-attachments/ and are
# installed from PyPI the first time. Without them (offline), `host` falls back to plain
# `cargo build`, whose library needs this machine's glibc, and `cross` builds nothing,
# each saying so; with REQUIRE_CROSS=1 (set by `make test`) both fail instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
CARGO=${CARGO:-cargo}
PROFILE=${PROFILE:-release}
GLIBC=2.17
TOOLS=${SQLITE_ATTACHMENTS_BUILD_TOOLS:-$HOME/.cache/sqlite-attachments/build-tools}
# Versions known to work together here (zig 0.17 links glibc 2.17 and macOS without an SDK).
TOOL_PKGS=("ziglang==0.17.1" "cargo-zigbuild==0.24.1" "auditwheel==6.8.2")

say() { echo "build: $*" >&2; }

tools() { # prints the bin dir of the tools, installing them when missing; fails when it cannot
  if [[ ! -x $TOOLS/bin/cargo-zigbuild || ! -x $TOOLS/bin/auditwheel ]]; then
    local py=/usr/bin/python3
    [[ -x $py ]] || py=$(command -v python3)
    say "installing ${TOOL_PKGS[*]} into $TOOLS (once)"
    rm -rf "$TOOLS"
    "$py" -m venv "$TOOLS" >&2 && "$TOOLS/bin/pip" install -q "${TOOL_PKGS[@]}" >&2 || { rm -rf "$TOOLS"; return 1; }
  fi
  echo "$TOOLS/bin"
}

zigbuild() { # zigbuild TARGET: cargo zigbuild for one target (TARGET may carry a .glibc suffix)
  local bin=$1 target=$2
  # libsqlite3-sys asks pkg-config for the host's libsqlite3 even for a loadable extension;
  # zig's linker does not search the host's library folders, so it must not be asked for.
  # The extension never links SQLite: every call goes through the host's API table.
  PATH="$bin:$PATH" SQLITE3_NO_PKG_CONFIG=1 "$CARGO" zigbuild --"$PROFILE" --locked --target "$target"
}

linux_arch() { case $(uname -m) in x86_64|amd64) echo x86_64 ;; aarch64|arm64) echo aarch64 ;; *) uname -m ;; esac; }

host() {
  mkdir -p dist
  if [[ $(uname -s) == Linux ]] && bin=$(tools); then
    local arch; arch=$(linux_arch)
    zigbuild "$bin" "$arch-unknown-linux-gnu.$GLIBC"
    cp "target/$arch-unknown-linux-gnu/$PROFILE/libattachments.so" dist/.attachments.so.tmp
    mv dist/.attachments.so.tmp dist/attachments.so
    return
  fi
  local ext=so
  [[ $(uname -s) == Darwin ]] && ext=dylib
  if [[ $(uname -s) == Linux ]]; then
    [[ ${REQUIRE_CROSS:-0} == 1 ]] && { say "the cross-compiling tools could not be installed (offline?)"; exit 1; }
    say "WARNING: cargo-zigbuild/ziglang could not be installed (offline?): building with plain cargo;"
    say "         dist/attachments.so then needs this machine's glibc ($(ldd --version | head -1 | grep -o '[0-9.]*$')), not $GLIBC"
  fi
  "$CARGO" build --"$PROFILE" --locked
  cp "target/$PROFILE/libattachments.$ext" "dist/.attachments.$ext.tmp"
  mv "dist/.attachments.$ext.tmp" "dist/attachments.$ext"
}

installed_target() { rustup target list --installed 2>/dev/null | grep -qx "$1"; }

cross() {
  if [[ $(uname -s) != Linux ]]; then say "cross builds run on Linux only; skipped"; return; fi
  local bin
  if ! bin=$(tools); then
    [[ ${REQUIRE_CROSS:-0} == 1 ]] && { say "the cross-compiling tools could not be installed (offline?)"; exit 1; }
    say "WARNING: cargo-zigbuild/ziglang could not be installed (offline?): no aarch64 or macOS libraries"
    return
  fi
  local arch other
  arch=$(linux_arch)
  other=$([[ $arch == x86_64 ]] && echo aarch64 || echo x86_64)
  installed_target "$other-unknown-linux-gnu" || rustup target add "$other-unknown-linux-gnu" >&2
  zigbuild "$bin" "$other-unknown-linux-gnu.$GLIBC"
  mkdir -p "dist/linux-$other"
  cp "target/$other-unknown-linux-gnu/$PROFILE/libattachments.so" "dist/linux-$other/.attachments.so.tmp"
  mv "dist/linux-$other/.attachments.so.tmp" "dist/linux-$other/attachments.so"
  # macOS: zig links against its own copy of the system library stubs, no SDK needed.
  # The oldest macOS each is built for is Rust's own minimum for the target.
  # CROSS_MACOS=0 (set by `make test`, to keep a clean run within CI's time) skips macOS.
  if [[ ${CROSS_MACOS:-1} == 0 ]]; then say "CROSS_MACOS=0: no macOS libraries (make dist builds them)"; return; fi
  local t min
  for t in aarch64-apple-darwin:11.0 x86_64-apple-darwin:10.12; do
    min=${t#*:}; t=${t%%:*}
    if ! installed_target "$t"; then
      say "NOTE: Rust's standard library for $t is not installed (rustup target add $t): no ${t%%-*} macOS library"
      continue
    fi
    MACOSX_DEPLOYMENT_TARGET=$min zigbuild "$bin" "$t"
    mkdir -p "dist/macos-${t%%-*}"
    cp "target/$t/$PROFILE/libattachments.dylib" "dist/macos-${t%%-*}/.attachments.dylib.tmp"
    mv "dist/macos-${t%%-*}/.attachments.dylib.tmp" "dist/macos-${t%%-*}/attachments.dylib"
  done
}

case ${1:-} in
  host) host ;;
  cross) cross ;;
  tools) tools ;;
  *) echo "usage: $0 host|cross|tools" >&2; exit 2 ;;
esac
