#!/usr/bin/env bash
# Run a command inside the project's pinned environment, creating it first if needed.
#   bash scripts/env.sh python -m backend demo
# The virtual environment lives outside the clone, keyed by the hash of requirements.lock,
# so repeated runs (and fresh clones on the same machine) reuse it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${AVATAR_CACHE_DIR:-$HOME/.cache/one-shot-avatar}"
key="$(cat "$root/requirements.lock" "$root/requirements-nodeps.lock" | sha256sum | cut -c1-12)"
venv="${AVATAR_VENV:-$cache/venv-$key}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

mkdir -p "$cache"
exec 9>"$cache/.env.lock"
flock 9  # two runs at once (tests + demo) must not build the same environment together
if [ ! -f "$venv/.complete" ]; then
    echo "[env] creating $venv (first run on this machine: a few minutes)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    log="$cache/install-$key.log"
    if ! { "$venv/bin/python" -m pip install --upgrade pip &&
           "$venv/bin/python" -m pip install -r "$root/requirements.lock" &&
           "$venv/bin/python" -m pip install --no-deps -r "$root/requirements-nodeps.lock"; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "[env] installing the pinned environment failed; full log: $log" >&2
        exit 1
    fi
    touch "$venv/.complete"   # only a finished install is ever reused
fi
flock -u 9

export PATH="$venv/bin:$PATH"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export ANNY_CACHE_DIR="${ANNY_CACHE_DIR:-$cache/anny}"
export AVATAR_CACHE_DIR="$cache"
exec "$@"
