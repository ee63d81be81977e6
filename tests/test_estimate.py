"""The photo-only estimate on rendered people with a known body: MediaPipe landmarks and mask,
the body initialisation and the guided refinement, and the messages for photos it cannot use."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mediapipe", reason="the photo-only path needs mediapipe (scripts/env.sh installs it)")

from backend.body.fitting import BodyFitConfig, fit_body_to_mask, joint_error_mm, silhouette_iou  # noqa: E402
from backend.estimate.body_init import init_body  # noqa: E402
from backend.estimate.person import LANDMARKS, NoPersonError, estimate_person  # noqa: E402
from shared.camera import PinholeCamera  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = 256


@pytest.fixture(scope="module")
def person(open_body):
    """The sample person (natural pose, dressed in flat colours) at 256 px over a textured
    background, with the true parameters."""
    from backend.jobs.sample_subject import DISTANCE, FOCAL, frame_body, render_flat, subject_pose

    pose = subject_pose()
    betas = np.zeros(open_body.num_betas)
    betas[:2] = [0.8, -0.5]
    transl = frame_body(open_body, pose, betas, DISTANCE)
    cam = PinholeCamera.from_focal(FOCAL * SIZE / 512, SIZE, SIZE)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    background = np.stack([0.55 + 0.1 * np.sin(9 * xx), 0.6 + 0.1 * np.cos(7 * yy), 0.5 + 0 * xx], -1)
    rgb, mask = render_flat(open_body, pose, betas, transl, cam, background)
    with torch.no_grad():
        joints = open_body(pose, betas, transl).joints[0].numpy().astype(np.float64)
    return {"image": (rgb * 255).round().astype(np.uint8), "mask": mask, "pose": pose, "betas": betas,
            "transl": transl, "camera": cam, "joints_2d": cam.project(joints)}


def test_landmarks_and_mask_match_the_rendered_person(person):
    from shared.smpl import JOINT_INDEX

    est = estimate_person(person["image"])
    assert est.warnings == []
    for name in ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                 "left_knee", "right_knee", "left_ankle", "right_ankle"):
        error = np.linalg.norm(est.image_xy[LANDMARKS[name]] - person["joints_2d"][JOINT_INDEX[name]])
        assert error < 0.04 * SIZE, (name, error)       # within 10 px at 256 px
        assert est.seen(name)
    m, g = est.mask > 0.5, person["mask"] > 0.5
    iou = (m & g).sum() / (m | g).sum()
    assert iou >= 0.9
    from backend.body.grabcut import sharpen_person_mask

    sharp = sharpen_person_mask(person["image"] / 255.0, est.mask) > 0.5   # GrabCut around the outline
    sharp_iou = (sharp & g).sum() / (sharp | g).sum()
    print(f"mask IoU: estimator {iou:.3f}, sharpened {sharp_iou:.3f}")
    assert sharp_iou >= iou - 0.005 and sharp_iou >= 0.95
    # metric 3D landmarks: hip-centred, the person's left on the camera's +x, head up (-y)
    assert est.world[LANDMARKS["left_shoulder"], 0] > est.world[LANDMARKS["right_shoulder"], 0]
    assert est.world[LANDMARKS["nose"], 1] < -0.4 and np.abs(est.world[[23, 24]].mean(0)).max() < 0.05


def test_init_from_landmarks_then_guided_refinement(open_body, person):
    """From the photo alone: far closer to the true pose than rough parameters, and the guided
    silhouette refinement raises the overlap without moving away from the 3D pose."""
    from backend.jobs.sample_subject import rough_estimate

    truth = (person["pose"], person["betas"], person["transl"])
    est = estimate_person(person["image"])
    init = init_body(open_body, est, person["camera"])
    start = joint_error_mm(open_body, init.pose, init.betas, init.transl, *truth)
    rough = rough_estimate(person["pose"], np.random.default_rng(0))   # what the demo's params look like
    assert start < 80.0 and start < joint_error_mm(open_body, rough, None, person["transl"], *truth)
    depth_error = abs(init.transl[2] - person["transl"][2]) / person["transl"][2]
    assert depth_error < 0.1                             # the body's metric size fixes the depth

    config = BodyFitConfig.preset("quick")
    fit = fit_body_to_mask(open_body, est.mask, person["camera"], init.pose, init.betas, init.transl, config,
                           guides=init.guides)
    after = joint_error_mm(open_body, fit.pose, fit.betas, fit.transl, *truth)
    iou = silhouette_iou(open_body, fit.pose, fit.betas, fit.transl, person["mask"], person["camera"])
    print(f"MPJPE landmarks {start:.0f} mm -> refined {after:.0f} mm, IoU {fit.iou_before:.3f} -> {iou:.3f}")
    assert after <= start + 5.0 and iou > max(0.9, fit.iou_before)


def test_photos_it_cannot_use_say_why(person):
    rng = np.random.default_rng(0)
    with pytest.raises(NoPersonError, match="no person found in noise.png"):
        estimate_person((rng.uniform(0, 1, (SIZE, SIZE, 3)) * 255).astype(np.uint8), "noise.png")

    cropped = person["image"][: int(SIZE * 0.62)]       # cut above the knees
    est = estimate_person(np.ascontiguousarray(cropped), "cropped.png")
    assert any("feet" in w and "cut off at the bottom edge" in w for w in est.warnings), est.warnings

    pair = np.concatenate([person["image"], person["image"][:, ::-1]], axis=1)   # two people side by side
    est = estimate_person(pair, "two.png")
    assert any("2 people" in w for w in est.warnings), est.warnings


def test_missing_mediapipe_is_a_clear_message(monkeypatch, person):
    from backend.estimate.person import EstimatorUnavailable

    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(EstimatorUnavailable, match="mediapipe 0.10.21"):
        estimate_person(person["image"])


def test_fit_body_from_a_photo_alone_on_the_command_line(tmp_path, person):
    Image.fromarray(person["image"]).save(tmp_path / "me.png")
    proc = subprocess.run([sys.executable, "-m", "backend", "fit-body", "--photo", str(tmp_path / "me.png"),
                           "--out", str(tmp_path / "fit")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "estimating the person's pose and mask from the photo" in proc.stdout
    assert "lens: default (no EXIF focal length)" in proc.stdout
    import json

    report = json.loads((tmp_path / "fit" / "fit_report.json").read_text())
    assert report["start"] == "photo" and report["mask_source"] == "estimator" and report["landmark_guides"]
    assert report["silhouette_iou_after"] > 0.85
    assert (tmp_path / "fit" / "mask.png").is_file() and (tmp_path / "fit" / "fitted_params.json").is_file()


def test_init_drives_a_users_smpl_file_too(tmp_path, person):
    """The landmark initialisation works in any SMPL-layout body (here a tiny SMPL file loaded
    through smplx): its bones point along the landmarks' 3D bones and its joints land on the
    2D landmarks, at the person's depth."""
    from tiny_smpl import make_tiny_smpl_arrays, write_official_pkl

    from backend.body.body_model import load_body_model
    from backend.estimate.body_init import direction_loss, keypoint_loss

    write_official_pkl(tmp_path / "SMPL_NEUTRAL.pkl", make_tiny_smpl_arrays(num_betas=10))
    smpl = load_body_model(tmp_path / "SMPL_NEUTRAL.pkl")
    est = estimate_person(person["image"])
    init = init_body(smpl, est, person["camera"])
    assert init.pose.shape == (72,) and init.betas.shape == (10,)
    with torch.no_grad():
        joints = smpl(init.pose, init.betas, init.transl).joints[0].double()
        rest = smpl(np.zeros(72), init.betas, init.transl).joints[0].double()
    bones = direction_loss(joints, init.guides)           # mean (1 - cos) over seen bones
    reprojection = keypoint_loss(joints, init.guides, person["camera"]).sqrt() * SIZE   # RMS, pixels
    print(f"tiny SMPL init: bone 1-cos {bones:.4f} (rest pose {direction_loss(rest, init.guides):.4f}), "
          f"keypoints RMS {reprojection:.1f} px")
    assert bones < 0.05 and bones < 0.5 * direction_loss(rest, init.guides)
    assert reprojection < 0.06 * SIZE
    assert abs(init.transl[2] - person["transl"][2]) / person["transl"][2] < 0.15


class Interrupted(Exception):
    pass


def test_a_resumed_photo_only_fit_keeps_its_body_and_checkpoint(tmp_path, person, monkeypatch):
    """A fit interrupted in stage B resumes from its checkpoint on the body the first run
    fitted (landmarks and masks need not come out bit for bit the same again)."""
    import backend.jobs.body_fit as body_fit_job
    from backend.avatar.avatar_file import load_avatar
    from backend.jobs.avatar_fit import run_avatar_fit

    Image.fromarray(person["image"]).save(tmp_path / "me.png")
    out = tmp_path / "me.avatar"

    def stop_in_stage_b(rec):
        if rec.get("stage", "B") == "B" and rec["iteration"] >= 14:   # tiny: checkpoints every 10
            raise Interrupted()
    with pytest.raises(Interrupted):
        run_avatar_fit(photo=tmp_path / "me.png", preset="tiny", out=out, log=lambda m: None,
                       progress=stop_in_stage_b)
    first = load_avatar(out)
    assert first.stage == "B" and first.iteration == 10 and (tmp_path / "me" / "mask.png").is_file()

    def no_refit(*a, **k):
        raise AssertionError("the body was fitted again on resume")
    monkeypatch.setattr(body_fit_job, "run_body_fit", no_refit)
    logs = []
    result = run_avatar_fit(photo=tmp_path / "me.png", preset="tiny", out=out, log=logs.append)
    assert any(m.startswith("resuming: the body fitted before the interruption is reused") for m in logs), logs
    assert any("resuming from" in m and "iteration 10" in m for m in logs), logs
    assert result.record.stage == "done" and result.record.iteration == 20
    np.testing.assert_allclose(result.record.pose, first.pose)
    np.testing.assert_allclose(result.record.transl, first.transl)
