"""Speed benchmark: stage A time, stage-B time per iteration, estimated fit time, render FPS and
peak memory, per preset and field encoding. Prints a Markdown table (and --json writes one).

    bash scripts/env.sh python benchmarks/speed.py                  # this machine, quick preset
    bash scripts/env.sh python benchmarks/speed.py --presets quick full --fields triplane mlp

On CPU the peak memory is the process's maximum resident set so far (it only grows, so read
each row as "at most"); on CUDA it is torch's peak allocation for that row.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.avatar.avatar import Avatar  # noqa: E402
from backend.avatar.config import preset  # noqa: E402
from backend.avatar.field import FieldConfig  # noqa: E402
from backend.avatar.optimiser import StageB, make_photo_target, new_state  # noqa: E402
from backend.avatar.stage_a import run_stage_a  # noqa: E402
from backend.body.body_model import load_body_model  # noqa: E402
from backend.inputs import load_elicit_folder  # noqa: E402
from backend.jobs.avatar_fit import resolve_device  # noqa: E402
from backend.jobs.sample_subject import write_sample_subject  # noqa: E402


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def load_sample(body):
    """The built-in sample subject: its photo inputs and true body parameters (pose, betas, transl)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_sample_subject(body, Path(tmp) / "subject")
        inputs = load_elicit_folder(folder)
        t = np.load(folder / "true_params.npz")
    return inputs, {"pose": t["pose"][0], "betas": t["betas"][0], "transl": t["global_t"][0]}


def warm_stage_b(avatar, inputs, truth, cfg, dev, clip=None):
    """Stage B on the photo after 3 warm-up iterations (allocator, kernels): (stage, state)."""
    target = make_photo_target(inputs.image, inputs.mask, inputs.camera, truth["pose"], truth["transl"],
                               cfg.render.background, dev)
    stage = StageB(avatar, target, cfg, clip=clip)
    state = new_state(avatar, cfg)
    for _ in range(3):
        stage.step(state)
    sync(dev)
    return stage, state


def _peak_mb(dev) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(body, inputs, truth, preset_name: str, field_kind: str, dev, iterations: int, sizes, clip=None,
          chunk_rays: int | None = None) -> dict:
    cfg = preset(preset_name)
    if chunk_rays:
        cfg = dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, chunk_rays=chunk_rays))
    if field_kind != cfg.field.kind:
        cfg = dataclasses.replace(cfg, field=dataclasses.replace(cfg.field, kind=field_kind)
                                  if field_kind == "triplane" else FieldConfig(kind="mlp"))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    torch.manual_seed(0)
    avatar = Avatar(body, truth["betas"], cfg.field, cfg.motion, cfg.render).to(dev)
    sync(dev)
    t = time.perf_counter()
    run_stage_a(avatar, cfg.stage_a)
    sync(dev)
    stage_a = time.perf_counter() - t
    with torch.no_grad():  # how well stage A reproduces the body: rendered alpha vs. its silhouette
        out = avatar.render(inputs.camera.scaled(0.25), truth["pose"], truth["transl"])
        a, b = out.alpha > 0.5, out.body_mask
        stage_a_iou = float((a & b).sum() / (a | b).sum())
    stage, state = warm_stage_b(avatar, inputs, truth, cfg, dev, clip)
    t = time.perf_counter()
    kinds = []
    for _ in range(iterations):
        kinds.append(stage.step(state)["view"])
        sync(dev)
    per_it = (time.perf_counter() - t) / iterations
    row = {"preset": preset_name, "field": field_kind, "device": str(dev), "chunk_rays": cfg.render.chunk_rays,
           "stage_a_s": stage_a,
           "stage_a_iou": stage_a_iou,
           "s_per_iteration": per_it, "iterations": cfg.stage_b.iterations,
           "est_fit_s": stage_a + per_it * cfg.stage_b.iterations,
           "params": sum(p.numel() for p in avatar.parameters())}
    for size in sizes:
        cam = inputs.camera.scaled(size / inputs.camera.width)
        with torch.no_grad():
            avatar.render(cam, truth["pose"], truth["transl"])
            sync(dev)
            n = 3
            t = time.perf_counter()
            for _ in range(n):
                avatar.render(cam, truth["pose"], truth["transl"])
            sync(dev)
        row[f"fps_{size}"] = n / (time.perf_counter() - t)
    row["peak_mb"] = _peak_mb(dev)
    return row


def table(rows) -> str:
    sizes = sorted({int(k[4:]) for r in rows for k in r if k.startswith("fps_")})
    head = ["preset", "field", "device", "rays / batch", "stage A (s)", "stage A IoU", "s / iteration", "iterations", "est. fit (s)"] + \
        [f"FPS {s}²" for s in sizes] + ["peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["preset"], r["field"], r["device"], str(r.get("chunk_rays", "")), f"{r['stage_a_s']:.1f}", f"{r['stage_a_iou']:.3f}",
                 f"{r['s_per_iteration']:.3f}",
                 str(r["iterations"]), f"{r['est_fit_s']:.0f}"] + [f"{r[f'fps_{s}']:.2f}" for s in sizes] + \
            [f"{r['peak_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["quick"])
    ap.add_argument("--fields", nargs="+", default=["triplane"], choices=["triplane", "mlp"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--iterations", type=int, default=20, help="timed stage-B iterations per row")
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    ap.add_argument("--chunk-rays", type=int, nargs="+", default=[0],
                    help="rays per rendering batch to compare (0: the preset's)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    body = load_body_model("open_body")
    inputs, truth = load_sample(body)
    print(f"device: {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'}); "
          f"torch {torch.__version__}; no CLIP in the timed loop (see docs/speed.md)")
    rows = []
    for p in args.presets:
        for f in args.fields:
            for chunk in args.chunk_rays:
                rows.append(bench(body, inputs, truth, p, f, dev, args.iterations, args.sizes, chunk_rays=chunk))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
