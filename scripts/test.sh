#!/usr/bin/env bash
# The test suite (CPU only), in the pinned environment.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
exec bash scripts/env.sh python -m pytest -q tests "$@"
