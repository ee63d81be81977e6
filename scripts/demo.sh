#!/usr/bin/env bash
# The main job on the built-in default subject, in the pinned environment.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
exec bash scripts/env.sh python -m backend demo "$@"
