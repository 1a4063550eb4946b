#!/usr/bin/env bash
# Installs the peers `make bench` measures beside sqlite-attachments (not needed by `make test`):
# rclone and nginx's PROPFIND module (Debian packages), the AWS CLI (PyPI, in a venv), PowerSync's
# JS queue (npm, on first use by bench/powersync_baseline.py). Missing peers make rows "not measured".
set -euo pipefail
ROOT=${SQLITE_ATTACHMENTS_CACHE:-$HOME/.cache/sqlite-attachments}

need=()
command -v rclone >/dev/null 2>&1 || need+=(rclone)
[[ -e /usr/lib/nginx/modules/ngx_http_dav_ext_module.so ]] || need+=(libnginx-mod-http-dav-ext)
if [[ ${#need[@]} -gt 0 ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    "$(dirname "$0")/../tests/install-deps.sh" "${need[@]}"
  else
    echo "bench: missing ${need[*]} (Debian: apt-get install ${need[*]}); those rows will say not measured" >&2
  fi
fi

AWSCLI_VERSION=1.46.3
if [[ ! -x $ROOT/awscli-venv/bin/aws ]]; then
  echo "bench: installing awscli $AWSCLI_VERSION into $ROOT/awscli-venv"
  /usr/bin/python3 -m venv "$ROOT/awscli-venv"
  "$ROOT/awscli-venv/bin/pip" install -q "awscli==$AWSCLI_VERSION" || echo "bench: awscli install failed; its rows will say not measured" >&2
fi
