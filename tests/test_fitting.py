"""Fit refinement recovers a perturbed pose from a mask rendered of a known pose."""
import numpy as np
import pytest
import torch

from backend.body.fitting import BodyFitConfig, FitStage, fit_body_to_mask, joint_limit_penalty, silhouette_iou
from backend.jobs.body_fit import body_silhouette
from backend.jobs.sample_subject import FOCAL, subject_pose
from shared.camera import PinholeCamera
from shared.smpl import JOINT_INDEX as J

SIZE = 256


@pytest.fixture(scope="module")
def scene(open_body):
    camera = PinholeCamera.from_focal(FOCAL * SIZE / 512, SIZE, SIZE)
    pose = subject_pose()
    betas = np.array([0.6, -0.4, 0.5, 0.3, 0.5, -0.3])
    transl = np.array([0.0, 0.1, 2.9])
    mask = body_silhouette(open_body, pose, betas, transl, camera).astype(np.float32)
    return camera, pose, betas, transl, mask


def test_recovers_perturbed_pose(open_body, scene):
    camera, pose, betas, transl, mask = scene
    rng = np.random.default_rng(1)
    start = pose.copy()
    for name in ("left_shoulder", "right_shoulder", "left_elbow", "left_hip", "right_knee"):
        start[3 * J[name]: 3 * J[name] + 3] += rng.uniform(-0.3, 0.3, 3)
    start[:3] += [0.05, -0.05, 0.03]
    start_transl = transl + [0.04, -0.03, 0.1]
    result = fit_body_to_mask(open_body, mask, camera, start, None, start_transl, BodyFitConfig.preset("quick"))
    assert result.iou_before < 0.85
    assert result.iou_after >= 0.95, result.iou_after
    assert result.iou_after == pytest.approx(silhouette_iou(open_body, result.pose, result.betas, result.transl, mask, camera))
    assert result.history and result.history[-1]["soft_iou"] > result.history[0]["soft_iou"]


def test_joint_limits_penalise_backward_knees_only():
    pose = torch.zeros(69)
    assert float(joint_limit_penalty(pose)) == 0.0
    flexed = pose.clone(); flexed[3 * (J["left_knee"] - 1)] = 1.0   # a normal knee bend
    hyper = pose.clone(); hyper[3 * (J["left_knee"] - 1)] = -1.0    # bent backwards
    assert float(joint_limit_penalty(flexed)) == 0.0
    assert float(joint_limit_penalty(hyper)) > 0.5
    elbow_ok = pose.clone(); elbow_ok[3 * (J["left_elbow"] - 1) + 1] = -1.0
    elbow_bad = pose.clone(); elbow_bad[3 * (J["left_elbow"] - 1) + 1] = 1.0
    assert float(joint_limit_penalty(elbow_ok)) == 0.0 < float(joint_limit_penalty(elbow_bad))


def test_mask_size_must_match_camera(open_body, scene):
    camera, pose, betas, transl, mask = scene
    with pytest.raises(ValueError, match="mask is"):
        fit_body_to_mask(open_body, mask[:-1], camera, pose, None, transl,
                         BodyFitConfig(stages=(FitStage(64, 1, 0.01, False, False),)))


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="quick"):
        BodyFitConfig.preset("fastest")
