#!/usr/bin/env bash
# make dist, after the libraries are built (scripts/build.sh host + cross): one Python
# wheel per library, tagged from the library's own headers, and one npm tarball carrying
# every library in lib/<process.platform>-<process.arch>/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PYTHON=${PYTHON:-python3}

libs=()
for lib in dist/attachments.so dist/attachments.dylib dist/linux-*/attachments.so dist/macos-*/attachments.dylib; do
  [[ -f $lib ]] && libs+=("$lib")
done

node_platform() { # the lib/ folder name Node's index.js looks for: process.platform-process.arch
  "$PYTHON" - "$1" <<'PY'
import json, sys
sys.path.insert(0, "python")
import binary_info
info = binary_info.read(sys.argv[1])
os_ = "linux" if info["format"] == "ELF" else "darwin"
arch = {"x86_64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(info["machine"], info["machine"])
print(f"{os_}-{arch}")
PY
}

rm -f dist/sqlite_attachments-*.whl dist/sqlite-attachments-*.tgz
rm -rf dist/npm && mkdir -p dist/npm/lib
cp npm/package.json npm/index.js npm/index.d.ts README.md dist/npm/
for lib in "${libs[@]}"; do
  "$PYTHON" python/build_wheel.py "$lib" dist >/dev/null
  plat=$(node_platform "$lib")
  [[ -e dist/npm/lib/$plat ]] && { echo "package: two libraries for $plat" >&2; exit 1; }
  mkdir -p "dist/npm/lib/$plat"
  cp "$lib" "dist/npm/lib/$plat/"
done
(cd dist/npm && npm pack --silent --pack-destination .. >/dev/null)
ls dist/*.whl dist/*.tgz
