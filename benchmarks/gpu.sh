#!/usr/bin/env bash
# Every GPU number docs/speed.md reports, in one run on a lent GPU machine (issue 16):
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # tables and logs into OUT_DIR (default $OUT or out/gpu)
#
# Runs with $PYTHON (default python3) and the repository on PYTHONPATH: on the lent machines
# torch comes installed and our other pinned packages travel as wheels (they have no network,
# so scripts/env.sh cannot build its environment there). About
# 5 minutes on an H100/H200: the speed table (quick and full fits, renders at 256² and 512²,
# two rendering batch sizes), the profile of a full iteration and a 512² frame (kernel
# launches, host read-backs), the service's streaming rate over loopback, and the farm's.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-out/gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
status=0
run() { echo "+ $*"; "$@" || status=1; }
run $py -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee "$out/machine.txt"
run $py benchmarks/speed.py --device cuda --presets quick full --iterations 30 --chunk-rays 16384 65536 \
    --json "$out/speed.json" 2>&1 | tee "$out/speed.txt"
run $py benchmarks/profile_step.py --device cuda --preset full --iterations 10 --rows 25 2>&1 | tee "$out/profile.txt"
run $py benchmarks/service.py --device cuda 2>&1 | tee "$out/service.txt"
# the farm: one worker per GPU against `serve` (needs ray among the wheels)
run $py benchmarks/farm.py --device cuda --sizes 256 512 --configs serve farm:auto 2>&1 | tee "$out/farm.txt"
exit $status
