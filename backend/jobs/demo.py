"""The main job on the built-in default subject: photo -> avatar -> turntable, novel poses and
metrics against held-out views the fit never saw.

The subject (backend/jobs/sample_subject.py) is generated on first use; its true parameters give
ground-truth renders from 8 directions around the body and in new poses, lit as the photo is.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.avatar.metrics import boxed_metrics
from backend.body.body_model import BodyModel
from backend.jobs.sample_subject import render_flat
from shared.camera import PinholeCamera
from shared.orbit import body_up, orbit_from_camera, view_bin
from shared.smpl import JOINT_INDEX

HELD_OUT_YAWS = (0, 45, 90, 135, 180, 225, 270, 315)  # degrees from the body's front


def novel_poses(base: np.ndarray) -> dict[str, np.ndarray]:
    """A few poses unlike the photo's: one arm raised, a walking step, arms forward."""
    def with_joints(**joints):
        pose = base.copy()
        for name, rot in joints.items():
            j = JOINT_INDEX[name]
            pose[3 * j: 3 * j + 3] = rot
        return pose
    return {
        "left_arm_up": with_joints(left_shoulder=(0.0, 0.0, 0.9), left_elbow=(0.0, -0.3, 0.0)),
        "walking_step": with_joints(left_hip=(-0.6, 0.0, 0.05), left_knee=(0.5, 0.0, 0.0),
                                    right_hip=(0.4, 0.0, -0.05), right_knee=(0.2, 0.0, 0.0)),
        "arms_forward": with_joints(left_shoulder=(0.0, -1.2, -0.2), right_shoulder=(0.0, 1.2, 0.2),
                                    left_elbow=(0.0, 0.0, 0.0), right_elbow=(0.0, 0.0, 0.0)),
    }


def _save_pair(path: Path, pred: np.ndarray, truth: np.ndarray) -> None:
    both = np.concatenate([pred, truth], 1)
    Image.fromarray((np.clip(both, 0, 1) * 255).round().astype(np.uint8)).save(path)


def evaluate_demo(record, body: BodyModel, truth: dict, camera: PinholeCamera, out_dir: Path, scale: float = 0.5
                  ) -> dict:
    """Held-out views (8 directions) and novel poses: PSNR/SSIM inside the person box, on white."""
    avatar = record.avatar.eval()
    pose_t, betas_t, transl_t = truth["pose"], truth["betas"], truth["transl"]
    cam = camera.scaled(scale)
    white = np.ones((cam.height, cam.width, 3))

    def axis(pose, v):
        """Each body is turned about its own vertical axis: from one photo the depth (and so
        the size) of the body is ambiguous, and a fitted body 10 cm deeper would otherwise
        show up 10 cm sideways in a side view, which measures the depth guess, not the avatar."""
        return (v.min(0) + v.max(0)) / 2.0, body_up(np.asarray(pose)[:3])

    with torch.no_grad():
        true_v = body(pose_t, betas_t, transl_t).vertices[0].cpu().numpy()
        fitted_v = avatar.posed(record.pose, record.transl)[2].cpu().numpy()
    axes = {"truth": axis(pose_t, true_v), "avatar": axis(record.pose, fitted_v)}
    rows = []
    (out_dir / "held_out").mkdir(parents=True, exist_ok=True)
    for yaw in HELD_OUT_YAWS:
        views = {k: orbit_from_camera(cam, c, up, float(yaw)) for k, (c, up) in axes.items()}
        gt, gt_mask = render_flat(body, pose_t, betas_t, transl_t, views["truth"], white, light_from=camera.center)
        with torch.no_grad():
            pred = avatar.render(views["avatar"], record.pose, record.transl,
                                 background=(1.0, 1.0, 1.0)).rgb.cpu().numpy()
        _save_pair(out_dir / "held_out" / f"yaw_{yaw:03d}.png", pred, gt)
        rows.append({"view": f"yaw {yaw}", "bin": view_bin(yaw), **boxed_metrics(pred, gt, gt_mask)})
    (out_dir / "novel_poses").mkdir(parents=True, exist_ok=True)
    for name, pose in novel_poses(pose_t).items():
        # the avatar keeps its fitted global orientation; only the joints change
        pose_a = np.concatenate([record.pose[:3], pose[3:]])
        gt, gt_mask = render_flat(body, pose, betas_t, transl_t, cam, white, light_from=camera.center)
        with torch.no_grad():
            pred = avatar.render(cam, pose_a, record.transl, background=(1.0, 1.0, 1.0)).rgb.cpu().numpy()
        _save_pair(out_dir / "novel_poses" / f"{name}.png", pred, gt)
        rows.append({"view": f"pose {name}", "bin": "novel pose", **boxed_metrics(pred, gt, gt_mask)})
    summary = {}
    for b in ("front", "left", "right", "back", "novel pose"):
        sel = [r for r in rows if r["bin"] == b]
        if sel:
            summary[b] = {k: float(np.mean([r[k] for r in sel])) for k in ("psnr", "ssim")}
    return {"views": rows, "by_bin": summary}


def format_table(metrics: dict) -> str:
    lines = ["| views | PSNR (dB) | SSIM |", "|---|---|---|"]
    for b, m in metrics["by_bin"].items():
        lines.append(f"| {b} | {m['psnr']:.2f} | {m['ssim']:.3f} |")
    return "\n".join(lines)


def run_demo(sample: Path, out_dir: Path, body: BodyModel, preset: str = "quick", clip_spec=None,
             lpips_weights=None, device=None, log=print):
    """Returns (metrics, AvatarFitResult)."""
    from backend.jobs.avatar_fit import resolve_device, run_avatar_fit
    from backend.jobs.avatar_render import render_avatar
    from backend.progress import ProgressPrinter

    start = time.perf_counter()
    out_dir = Path(out_dir)
    device = resolve_device(device)
    progress = ProgressPrinter(every=50)
    # from the photo alone: its EXIF lens, the person's landmarks and mask, nothing else
    result = run_avatar_fit(photo=sample / "gt_image.png", body_spec="open_body", preset=preset,
                            out=out_dir / "avatar.avatar", clip_spec=clip_spec, lpips_weights=lpips_weights,
                            device=device, log=log, progress=progress)
    progress.close()
    fit_seconds = time.perf_counter() - start
    log("rendering a turntable")
    render_avatar(result.path, out_dir / "turntable", turntable=24, scale=0.5, device=device,
                  log=lambda m: None)
    truth_npz = np.load(sample / "true_params.npz")
    truth = {"pose": truth_npz["pose"][0], "betas": truth_npz["betas"][0], "transl": truth_npz["global_t"][0]}
    log("measuring held-out views and novel poses")
    metrics = evaluate_demo(result.record, body, truth, result.record.camera, out_dir)
    metrics["fit_seconds"] = fit_seconds
    metrics["total_seconds"] = time.perf_counter() - start
    metrics["warnings"] = result.report.get("warnings", [])
    metrics["stage_b"] = result.report.get("stage_b", {})
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "metrics.md").write_text(format_table(metrics) + "\n")
    return metrics, result
