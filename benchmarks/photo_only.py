"""The photo-only body estimate on subjects with known truth: a table, not a timed test.

    bash scripts/env.sh python benchmarks/photo_only.py [--subjects 6] [--preset quick] [--json out.json]

For the quality benchmark's Cycles-rendered subjects, from the photo
alone: MediaPipe landmarks and mask -> body initialisation -> silhouette refinement, with and
without the landmark guides, against the rough parameters the benchmark hands the fit today.
Reports MPJPE (pelvis-aligned, mm) before and after refinement, the global orientation error
(degrees) and the silhouette IoU against the true mask. The lens is the subject's true one (as
EXIF would give it) and, in the "default lens" rows, the 50 mm-equivalent guess used when a
photo has no EXIF focal length.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def orientation_error_deg(pose, true_pose) -> float:
    from scipy.spatial.transform import Rotation

    return float(np.degrees((Rotation.from_rotvec(pose[:3]) * Rotation.from_rotvec(true_pose[:3]).inv()).magnitude()))


def evaluate(body, name, image, true_mask, camera, truth, rough=None, preset="quick") -> list[dict]:
    from backend.body.fitting import BodyFitConfig, fit_body_to_mask, joint_error_mm, silhouette_iou
    from backend.body.grabcut import sharpen_person_mask
    from backend.estimate.body_init import init_body
    from backend.estimate.person import estimate_person

    rows = []

    def row(label, pose, betas, transl, start=None, seconds=0.0):
        rows.append({"subject": name, "path": label,
                     "mpjpe_start_mm": None if start is None else joint_error_mm(body, *start, *truth),
                     "mpjpe_mm": joint_error_mm(body, pose, betas, transl, *truth),
                     "orientation_deg": orientation_error_deg(pose, truth[0]),
                     "iou": silhouette_iou(body, pose, betas, transl, true_mask, camera), "seconds": seconds})

    config = BodyFitConfig.preset(preset)
    if rough is not None:
        t = time.perf_counter()
        fit = fit_body_to_mask(body, true_mask, camera, *rough, config)
        row("rough params + silhouette (today)", fit.pose, fit.betas, fit.transl, rough, time.perf_counter() - t)
    t = time.perf_counter()
    est = estimate_person((np.clip(image, 0, 1) * 255).round().astype(np.uint8), name)
    init = init_body(body, est, camera)
    t_init = time.perf_counter() - t
    start = (init.pose, init.betas, init.transl)
    row("photo: landmarks only", *start, None, t_init)
    mask = sharpen_person_mask(image, est.mask)          # what the product fits to (backend/jobs/body_fit.py)
    for label, guides in (("photo: + silhouette", None), ("photo: + silhouette + guides", init.guides)):
        t = time.perf_counter()
        fit = fit_body_to_mask(body, mask, camera, *start, config, guides=guides)
        row(label, fit.pose, fit.betas, fit.transl, start, t_init + time.perf_counter() - t)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from backend.body.body_model import load_open_body
    from backend.inputs import load_elicit_folder
    from backend.quality.subjects import Subject, ensure_subjects
    from shared.camera import DEFAULT_FOCAL_35MM, PinholeCamera, focal_pixels

    body = load_open_body()
    rows = []
    for folder in ensure_subjects(body, args.subjects):
        subject = Subject.load(folder)
        inputs = load_elicit_folder(folder / "input")
        true_mask = (np.asarray(Image.open(folder / "masks" / "input.png").convert("L")) / 255.0 > 0.5).astype(np.float32)
        truth = (subject.pose(), subject.betas, subject.transl)
        rough = (inputs.params.pose, np.zeros(body.num_betas), inputs.params.transl)
        rows += evaluate(body, subject.name, inputs.image, true_mask, inputs.camera, truth, rough, args.preset)
        cam = inputs.camera
        default = PinholeCamera.from_focal(focal_pixels(DEFAULT_FOCAL_35MM, cam.width, cam.height), cam.width, cam.height)
        for r in evaluate(body, subject.name, inputs.image, true_mask, default, truth, None, args.preset)[-1:]:
            rows.append({**r, "path": r["path"] + " (default lens)", "iou": float("nan")})
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def print_table(rows: list[dict]) -> None:
    print("| subject | path | MPJPE start (mm) | MPJPE (mm) | orientation error (°) | IoU | s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        start = "" if r["mpjpe_start_mm"] is None else f"{r['mpjpe_start_mm']:.0f}"
        iou = "—" if r["iou"] != r["iou"] else f"{r['iou']:.3f}"
        print(f"| {r['subject']} | {r['path']} | {start} | {r['mpjpe_mm']:.0f} | {r['orientation_deg']:.1f} | {iou} "
              f"| {r['seconds']:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
