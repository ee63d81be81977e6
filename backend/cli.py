"""Command line of the backend: `avatar-backend <command>` (or `python -m backend <command>`).

  demo      the main job on the built-in default subject (generated on first use)
  fit-body  fit the body to a photo + mask + params (ELICIT folder or JSON) and write an
            overlay PNG and the fitted parameters, printing silhouette IoU before/after
  sample    write the built-in sample subject (ELICIT format) into a folder
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from backend.errors import AvatarError

DEFAULT_CACHE = Path(os.environ.get("AVATAR_CACHE_DIR", Path.home() / ".cache" / "one-shot-avatar"))


def _cmd_fit_body(args) -> int:
    from backend.body_fit_job import run_body_fit

    run_body_fit(photo=args.photo, mask=args.mask, params=args.params, elicit_dir=args.elicit,
                 body_spec=args.body, preset=args.preset, out_dir=args.out)
    return 0


def _cmd_sample(args) -> int:
    from backend.body.model import load_body_model
    from backend.sample_subject import write_sample_subject

    folder = write_sample_subject(load_body_model("open_body"), args.out, seed=args.seed)
    print(f"wrote the sample subject to {folder}")
    return 0


def _cmd_demo(args) -> int:
    from backend.body.model import load_body_model
    from backend.body_fit_job import run_body_fit
    from backend.sample_subject import write_sample_subject

    body = load_body_model("open_body")
    sample = DEFAULT_CACHE / "samples" / f"default-{body.identity}"
    if not (sample / "gt_params.npz").is_file():
        print(f"generating the built-in sample subject in {sample}")
        write_sample_subject(body, sample)
    start = time.perf_counter()
    result = run_body_fit(elicit_dir=sample, body_spec="open_body", preset=args.preset, out_dir=args.out)
    truth = np.load(sample / "true_params.npz")
    err = _joint_error_mm(body, result, truth)
    print(f"3D joint error (MPJPE, pelvis-aligned) against the true pose: {err['before']:.1f} mm before, {err['after']:.1f} mm after")
    print(f"demo finished in {time.perf_counter() - start:.1f} s; outputs in {args.out}")
    return 0


def _joint_error_mm(body, result, truth) -> dict:
    """Mean per-joint position error with the pelvis aligned (MPJPE, the usual pose metric:
    from one view the absolute depth, and so the body's size, is ambiguous)."""
    import torch

    with torch.no_grad():
        def joints(pose, betas, transl):
            j = body(pose, betas, transl).joints[0]
            return j - j[0]
        true_j = joints(truth["pose"][0], truth["betas"][0], truth["global_t"][0])
        def err(pose, betas, transl):
            return float((joints(pose, betas, transl) - true_j).norm(dim=-1).mean() * 1000)
        return {"before": err(result.initial_pose, result.initial_betas, result.initial_transl),
                "after": err(result.fit.pose, result.fit.betas, result.fit.transl)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar-backend", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit-body", help="fit the body model to a photo's person mask")
    src = fit.add_mutually_exclusive_group(required=True)
    src.add_argument("--elicit", type=Path, help="ELICIT folder: gt_image.png, gt_mask.png, gt_params.npz")
    src.add_argument("--photo", type=Path, help="photo (PNG/JPG; alpha is used as the mask)")
    fit.add_argument("--mask", type=Path, help="person mask image (with --photo)")
    fit.add_argument("--params", type=Path, help="body parameters: gt_params.npz or our JSON (with --photo)")
    fit.add_argument("--body", default="open_body", help="'open_body' (built in) or an SMPL .pkl/.npz file")
    fit.add_argument("--preset", default="quick", choices=["quick", "full"])
    fit.add_argument("--out", type=Path, default=Path("out/fit"))
    fit.set_defaults(func=_cmd_fit_body)

    demo = sub.add_parser("demo", help="run the main job on the built-in sample subject")
    demo.add_argument("--preset", default="quick", choices=["quick", "full"])
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.set_defaults(func=_cmd_demo)

    sample = sub.add_parser("sample", help="write the built-in sample subject (ELICIT format)")
    sample.add_argument("out", type=Path)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=_cmd_sample)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "photo", None) is not None and args.params is None:
        print("error: --photo needs --params (gt_params.npz or a params JSON)", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except AvatarError as exc:  # user-facing: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
