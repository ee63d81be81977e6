"""Where a stage-B iteration and a render spend their time: torch.profiler tables.

    bash scripts/env.sh python benchmarks/profile_step.py --device cuda --preset full

Prints, for N stage-B iterations and for 512² renders, the wall time, the summed GPU kernel
time (how busy the GPU was), the number of kernel launches, and the top operators by device
time and by CPU time. For finding bottlenecks, not for reporting speed (benchmarks/speed.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.avatar.config import preset  # noqa: E402
from backend.avatar.model import Avatar  # noqa: E402
from backend.avatar.stage_a import run_stage_a  # noqa: E402
from backend.avatar_fit_job import resolve_device  # noqa: E402
from backend.body.model import load_body_model  # noqa: E402
from benchmarks.speed import load_sample, sync, warm_stage_b  # noqa: E402


def report(name: str, prof, wall: float, dev, rows: int) -> None:
    events = prof.key_averages()
    device_key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    # kernels only: operator rows repeat their kernels' time
    kernel_us = sum(getattr(e, device_key) for e in events if str(e.device_type).endswith("CUDA"))
    launches = sum(e.count for e in events if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
    print(f"\n## {name}: wall {wall * 1000:.1f} ms, GPU kernels {kernel_us / 1000:.1f} ms "
          f"({100 * kernel_us / 1000 / max(wall * 1000, 1e-9):.0f}% busy), kernel launches {launches}")
    if dev.type == "cuda":
        print(events.table(sort_by=device_key, row_limit=rows))
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--rows", type=int, default=20)
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    body = load_body_model("open_body")
    inputs, truth = load_sample(body)
    pose, transl = truth["pose"], truth["transl"]
    cfg = preset(args.preset)
    cfg = dataclasses.replace(cfg, stage_a=dataclasses.replace(cfg.stage_a, iterations=100))  # speed only
    avatar = Avatar(body, truth["betas"], cfg.field, cfg.motion, cfg.render).to(dev)
    run_stage_a(avatar, cfg.stage_a)
    stage, state = warm_stage_b(avatar, inputs, truth, cfg, dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        start = time.perf_counter()
        for _ in range(args.iterations):
            stage.step(state)
        sync(dev)
        wall = (time.perf_counter() - start) / args.iterations
    report(f"stage-B iteration ({args.preset}, per iteration, {args.iterations} profiled; tables are totals)",
           prof, wall * args.iterations, dev, args.rows)
    cam = inputs.camera.scaled(args.size / inputs.camera.width)
    with torch.no_grad():
        avatar.render(cam, pose, transl)
        sync(dev)
        with profile(activities=acts) as prof:
            start = time.perf_counter()
            for _ in range(3):
                avatar.render(cam, pose, transl)
            sync(dev)
            wall = time.perf_counter() - start
    report(f"render {args.size}² (3 frames)", prof, wall, dev, args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
