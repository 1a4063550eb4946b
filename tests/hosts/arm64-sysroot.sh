#!/usr/bin/env bash
# A Debian arm64 root with the sqlite3 CLI and what it links (libc6, libsqlite3-0, ...),
# for running the aarch64 library under qemu-aarch64-static (tests/hosts/test_binaries.py).
# Downloads the .debs with apt-get under a private apt configuration (the system's dpkg
# architectures and package lists are left alone) and unpacks them. Cached; prints the root.
set -euo pipefail
cache=${SQLITE_ATTACHMENTS_CACHE:-$HOME/.cache/sqlite-attachments}/arm64
root=$cache/root
pkgs=(sqlite3 libsqlite3-0 libc6 libgcc-s1 libreadline8 libtinfo6 zlib1g)
if [[ -x $root/usr/bin/sqlite3 && -e $root/lib/ld-linux-aarch64.so.1 ]]; then echo "$root"; exit 0; fi
rm -rf "$cache"
mkdir -p "$cache/apt/state/lists/partial" "$cache/apt/cache/archives/partial" "$cache/debs" "$root"
touch "$cache/apt/state/status"
apt_opts=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64
  -o Dir::State="$cache/apt/state" -o Dir::State::status="$cache/apt/state/status"
  -o Dir::Cache="$cache/apt/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
echo "arm64 sysroot: downloading ${pkgs[*]} (Debian arm64, about 4 MB, once)" >&2
apt-get "${apt_opts[@]}" update -qq >/dev/null
(cd "$cache/debs" && apt-get "${apt_opts[@]}" download -qq "${pkgs[@]}" >/dev/null)
for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done
rm -rf "$cache/apt" "$cache/debs"   # the package lists (~30 MB) and .debs are not needed any more
[[ -x $root/usr/bin/sqlite3 ]] || { echo "arm64 sysroot: no usr/bin/sqlite3 after unpacking" >&2; exit 1; }
echo "$root"
