"""Where a stage-B iteration and a render spend their time: torch.profiler tables.

    bash scripts/env.sh python benchmarks/profile_step.py --device cuda --preset full

Prints, for N stage-B iterations and for 512² renders, the wall time, the summed GPU kernel
time (how busy the GPU was), the number of kernel launches, of compute operators (aten
operators that do work themselves: at least one kernel each on a GPU) and of host read-backs (each makes the host wait for a GPU) with where they
are, and the top operators by device time and by CPU time. Operators and read-backs are
counted on a CPU too: they are what a GPU run would launch and wait for. For finding bottlenecks, not for reporting speed (benchmarks/speed.py).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
import time
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.avatar.avatar import Avatar  # noqa: E402
from backend.avatar.config import preset  # noqa: E402
from backend.avatar.stage_a import run_stage_a  # noqa: E402
from backend.body.body_model import load_body_model  # noqa: E402
from backend.jobs.avatar_fit import resolve_device  # noqa: E402
from benchmarks.speed import load_sample, sync, warm_stage_b  # noqa: E402


class ReadBacks(TorchFunctionMode):
    """Counts the reads that make the host wait for the device: a tensor on `device` turned
    into Python numbers or host memory, or a count of selected elements (nonzero). On a CPU
    nothing waits, but the same calls are the syncs a GPU run would make; integer indexing by a
    0-d CPU tensor (smplx's kinematic chain, kept on the host) and an optimiser's step count
(kept on the host by torch) are not counted there."""
    CALLS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "nonzero", "cpu",
             "masked_select"}

    def __init__(self, device: torch.device):
        super().__init__()
        self.device, self.count, self.sites = device, 0, collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.CALLS and args and isinstance(args[0], torch.Tensor) and args[0].device == self.device \
                and not (name == "__index__" and self.device.type == "cpu"):
            stack = traceback.extract_stack()
            if any("/torch/optim/" in f.filename for f in stack):
                return func(*args, **(kwargs or {}))   # optimisers keep their step counts on the host
            self.count += 1
            site = next((f"{Path(f.filename).relative_to(ROOT)}:{f.lineno}" for f in reversed(stack)
                         if f.filename.startswith(str(ROOT)) and not f.filename.endswith("profile_step.py")), "?")
            self.sites[f"{name} at {site}"] += 1
        return func(*args, **(kwargs or {}))


# operators that only make a new view of memory (no kernel on any device)
VIEWS = {"aten::" + n for n in ("view", "as_strided", "reshape", "_reshape_alias", "expand", "slice", "select",
                                "unsqueeze", "squeeze", "permute", "transpose", "t", "resolve_conj", "resolve_neg",
                                "_unsafe_view", "detach", "alias", "unbind", "split", "narrow", "chunk",
                                "lift_fresh", "view_as", "expand_as", "numpy_T", "unfold", "split_with_sizes",
                                "empty", "empty_strided", "result_type", "is_nonzero", "item", "_local_scalar_dense")}


def compute_operators(prof) -> int:
    """aten operators that do work themselves (no aten operator under them, not a view): on a
    GPU each is at least one kernel launch, so this counts launches on a CPU too."""
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.name not in VIEWS
               and not any(c.name.startswith("aten::") for c in e.cpu_children))


def report(name: str, prof, wall: float, dev, rows: int, reads: ReadBacks, per: int) -> None:
    events = prof.key_averages()
    device_key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    # kernels only: operator rows repeat their kernels' time
    kernel_us = sum(getattr(e, device_key) for e in events if str(e.device_type).endswith("CUDA"))
    launches = sum(e.count for e in events if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
    operators = compute_operators(prof)
    print(f"\n## {name}: wall {wall * 1000:.1f} ms, GPU kernels {kernel_us / 1000:.1f} ms "
          f"({100 * kernel_us / 1000 / max(wall * 1000, 1e-9):.0f}% busy), kernel launches {launches}, "
          f"compute operators {operators}; per unit: {launches / per:.0f} launches, "
          f"{operators / per:.0f} compute operators, {reads.count / per:.1f} host read-backs")
    for site, n in reads.sites.most_common():
        print(f"   read-back {n / per:g} x {site}")
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
    reads = ReadBacks(dev)
    with profile(activities=acts) as prof, reads:
        start = time.perf_counter()
        for _ in range(args.iterations):
            stage.step(state)
        sync(dev)
        wall = (time.perf_counter() - start) / args.iterations
    report(f"stage-B iterations ({args.preset}, {args.iterations} profiled; tables are totals)",
           prof, wall * args.iterations, dev, args.rows, reads, args.iterations)
    cam = inputs.camera.scaled(args.size / inputs.camera.width)
    with torch.no_grad():
        avatar.render(cam, pose, transl)
        sync(dev)
        reads = ReadBacks(dev)
        with profile(activities=acts) as prof, reads:
            start = time.perf_counter()
            for _ in range(3):
                avatar.render(cam, pose, transl)
            sync(dev)
            wall = time.perf_counter() - start
    report(f"render {args.size}² (3 frames)", prof, wall, dev, args.rows, reads, 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
