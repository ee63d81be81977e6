#!/usr/bin/env bash
# Run a command inside the project's pinned environment, creating it first if needed.
#   bash scripts/env.sh python -m backend demo
# The virtual environment lives outside the clone, keyed by the hash of requirements.lock,
# so repeated runs (and fresh clones on the same machine) reuse it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${AVATAR_CACHE_DIR:-$HOME/.cache/one-shot-avatar}"
key="$(sha256sum "$root/requirements.lock" | cut -c1-12)"
venv="${AVATAR_VENV:-$cache/venv-$key}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -f "$venv/.complete" ]; then
    echo "[env] creating $venv (first run on this machine: a few minutes)" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    # (the grep hides pip noise about local mirror folders this machine does not have)
    "$venv/bin/python" -m pip install --quiet -r "$root/requirements.lock" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    "$venv/bin/python" -c "import torch, smplx, open_clip, cv2, zmq, msgpack" >&2
    touch "$venv/.complete"   # only a finished install is ever reused
fi

export PATH="$venv/bin:$PATH"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export ANNY_CACHE_DIR="${ANNY_CACHE_DIR:-$cache/anny}"
export AVATAR_CACHE_DIR="$cache"
exec "$@"
