#!/usr/bin/env bash
# make dist, after the libraries are built (scripts/build.sh host + cross): one Python
# wheel per library, tagged from the library's own headers, the Datasette plugin's wheel,
# and one npm tarball carrying every library in lib/<process.platform>-<process.arch>/.
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
cp npm/package.json npm/index.js npm/index.d.ts README.md CHANGELOG.md dist/npm/
cp -r docs dist/npm/
# The release number is written once, in Cargo.toml.
"$PYTHON" -c 'import json,re; p="dist/npm/package.json"; d=json.load(open(p)); d["version"]=re.search(r"(?m)^version = \"([^\"]+)\"", open("Cargo.toml").read()).group(1); json.dump(d, open(p,"w"), indent=2)'
for lib in "${libs[@]}"; do
  "$PYTHON" python/build_wheel.py "$lib" dist >/dev/null
  plat=$(node_platform "$lib")
  [[ -e dist/npm/lib/$plat ]] && { echo "package: two libraries for $plat" >&2; exit 1; }
  mkdir -p "dist/npm/lib/$plat"
  cp "$lib" "dist/npm/lib/$plat/"
done
"$PYTHON" datasette-attachments/build_wheel.py dist >/dev/null
(cd dist/npm && npm pack --silent --pack-destination .. >/dev/null)
ls dist/*.whl dist/*.tgz
