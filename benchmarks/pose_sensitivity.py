"""How much held-out PSNR a body-pose error costs, with the appearance held fixed: a table.

    bash scripts/env.sh python benchmarks/pose_sensitivity.py [--subjects 3] [--steps 5] [--json out.json]

For each of the quality benchmark's subjects the body is fitted from the rough parameters and
the true mask (the benchmark's fitted-body start), then bodies are placed on the straight line
from the true parameters to that fit (pose, shape and translation blended by t = 0 ... 1). On
each, the body-texture projection baseline is rebuilt from the photo and scored in the
benchmark's view bins against the Cycles ground truth. The projection reproduces the photo
exactly on any body that explains it, so what it loses along the line is what a body error of
that size costs any method that drapes the photo over the body: the price of the 3D pose
alone. MPJPE is pelvis-aligned, in mm, against the true joints.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def blended(truth, fitted, t: float):
    from backend.quality.run import StartBody

    mix = lambda a, b: np.asarray(a) + t * (np.asarray(b) - np.asarray(a))  # noqa: E731
    return StartBody(mix(truth.pose, fitted.pose), mix(truth.betas, fitted.betas), mix(truth.transl, fitted.transl))


def subject_rows(subject, body, size, work: Path, steps: int) -> list[dict]:
    from backend.body.fitting import joint_error_mm
    from backend.quality.projection import ProjectionBaseline
    from backend.quality.report import BINS, report_bin
    from backend.quality.run import StartBody, evaluate, fit_subject_body

    fit, fitted, _ = fit_subject_body(subject, body, size, work)
    truth = StartBody(subject.pose(), subject.betas, subject.transl)
    rows = []
    for t in np.linspace(0.0, 1.0, steps):
        start = blended(truth, fitted, float(t))
        model = ProjectionBaseline(body, fit.inputs.image, fit.mask, fit.inputs.camera,
                                   start.pose, start.betas, start.transl)
        views, _ = evaluate(lambda cam, pose, transl: (model.render(cam, pose, transl), None),
                            subject, start, body, size.eval_scale)
        psnr = {b: float(np.mean([v["psnr"] for v in views if report_bin(v["bin"]) == b])) for b in BINS}
        mpjpe = joint_error_mm(body, start.pose, start.betas, start.transl, truth.pose, truth.betas, truth.transl)
        rows.append({"subject": subject.name, "t": round(float(t), 3), "mpjpe_mm": float(mpjpe), "psnr": psnr})
    return rows


def table(rows: list[dict]) -> str:
    from backend.quality.report import BINS

    out = ["| t | MPJPE (mm) per subject | " + " | ".join(BINS) + " |", "|---|---|" + "---:|" * len(BINS)]
    for t in sorted({r["t"] for r in rows}):
        at = [r for r in rows if r["t"] == t]
        mp = " / ".join(f"{r['mpjpe_mm']:.0f}" for r in at)
        out.append(f"| {t:.2f} | {mp} | " + " | ".join(f"{np.mean([r['psnr'][b] for r in at]):.2f}" for b in BINS)
                   + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="bodies on the line from the truth to the fit")
    parser.add_argument("--set", default="v1", choices=("v1", "v2"))
    parser.add_argument("--work", type=Path, default=Path("out/pose_sensitivity"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.subjects < 1 or args.steps < 2:
        parser.error("--subjects must be at least 1 and --steps at least 2")

    from backend.body.body_model import load_body_model
    from backend.quality.run import SIZES
    from backend.quality.subjects import Subject, ensure_subjects

    size = SIZES["quick"]
    body = load_body_model("open_body")
    folders = ensure_subjects(body, args.subjects, 0, size.render_size, size.samples, None, print, args.set)
    rows = []
    for folder in folders:
        subject = Subject.load(folder)
        print(f"{subject.name}: fitting the body, then {args.steps} bodies from the truth to the fit", flush=True)
        rows += subject_rows(subject, body, size, args.work / subject.name, args.steps)
    print("\nProjection-baseline PSNR (dB, mean over subjects) on bodies from the truth (t = 0) to the fit (t = 1):")
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
