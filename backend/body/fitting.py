"""Refine body parameters so the body's silhouette matches the person's mask.

The starting parameters come from a params file (often made for real SMPL, so shape and
translation do not quite fit the open body) or from an artist's rough pose. We optimise
global orientation, translation, body pose and shape against a soft silhouette, coarse to
fine (a low resolution first: the body's edges are then wide and the basin of attraction
large), with priors that keep the body plausible.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import torch

from backend.body.body_model import BodyModel
from backend.render.raster import camera_tensors, hard_silhouette, soft_silhouette
from shared.camera import PinholeCamera
from shared.smpl import JOINT_INDEX


@dataclasses.dataclass(frozen=True)
class FitStage:
    resolution: int        # long side of the working image, pixels
    iterations: int
    lr: float
    optimise_pose: bool    # body pose (global orientation + translation are always optimised)
    optimise_shape: bool
    sigma: float = 1.0     # soft-edge width, pixels at this resolution


@dataclasses.dataclass(frozen=True)
class BodyFitConfig:
    stages: tuple[FitStage, ...]
    pose_prior: float = 1e-3      # keeps the body pose near the given one (an artist's intent)
    # ... and with landmark guides, near the start they vouch for: 3e-2 against 1e-3 stopped the
    # refinement from raising MPJPE on any subject and gained 0.3 dB in every off-input view bin
    # of the photo-only avatars, for a few hundredths of IoU (docs/benchmark.md, "The body from
    # the photo alone"). Without guides the silhouette is the only evidence: the weak prior stays.
    guided_pose_prior: float = 3e-2
    joint_limit: float = 1.0      # knees and elbows bend one way only
    shape_prior: float = 1e-3     # betas are in phenotype steps; stay near the average body
    depth_prior: float = 1e-2     # a silhouette cannot tell "farther" from "bigger": keep the given depth
    # With landmark guides (backend/estimate): the silhouette may not trade the 3D pose for
    # overlap. Keypoints: squared reprojection error in units of the photo's long side; bones:
    # 1 - cos of the angle to the landmarks' 3D bone directions; orientation: the squared angle
    # (radians) by which the global rotation turns more than free_turn_deg from its start.
    # (weights chosen on the benchmark's 6 subjects: keypoint 10 / bone 0.3 beat 30 / 1 and
    # 3 / 0.1 on mean MPJPE, worst MPJPE, worst orientation and worst IoU; docs/benchmark.md)
    keypoint: float = 10.0
    bone_direction: float = 0.3
    orientation_prior: float = 10.0
    free_turn_deg: float = 10.0

    @classmethod
    def preset(cls, name: str) -> "BodyFitConfig":
        try:
            return FIT_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown fit preset {name!r}; choose one of {sorted(FIT_PRESETS)}") from None


FIT_PRESETS = {
    "quick": BodyFitConfig(stages=(
        FitStage(64, 60, 0.03, optimise_pose=False, optimise_shape=False),
        FitStage(128, 100, 0.02, optimise_pose=True, optimise_shape=True),
        FitStage(192, 60, 0.008, optimise_pose=True, optimise_shape=True),
    )),
    "full": BodyFitConfig(stages=(
        FitStage(64, 100, 0.03, optimise_pose=False, optimise_shape=False),
        FitStage(128, 200, 0.02, optimise_pose=True, optimise_shape=True),
        FitStage(256, 150, 0.008, optimise_pose=True, optimise_shape=True),
        FitStage(384, 80, 0.004, optimise_pose=True, optimise_shape=True),
    )),
}


@dataclasses.dataclass
class FitResult:
    pose: np.ndarray     # (72,)
    betas: np.ndarray    # (num_betas,)
    transl: np.ndarray   # (3,)
    iou_before: float
    iou_after: float
    history: list[dict]  # per logged iteration: stage, iteration, loss, soft_iou


def silhouette_iou(body: BodyModel, pose, betas, transl, mask: np.ndarray, camera: PinholeCamera) -> float:
    """IoU of the body's hard silhouette and mask > 0.5, at the mask's resolution."""
    with torch.no_grad():
        verts = body(pose, betas, transl).vertices
        K, R, t = camera_tensors(camera, verts.device, verts.dtype)
        sil = hard_silhouette(verts, body.faces, K, R, t, camera.height, camera.width)[0].cpu().numpy()
    target = mask > 0.5
    union = np.logical_or(sil, target).sum()
    return float(np.logical_and(sil, target).sum() / union) if union else 0.0


def soft_target(mask: np.ndarray, camera: PinholeCamera, long_side: int, sigma: float):
    """The mask as our soft silhouette would draw it at the stage's resolution:
    sigmoid(signed distance to the mask's outline / sigma), the distance measured on the
    full-resolution mask and expressed in working pixels. Comparing the soft render with an
    area-averaged mask instead is biased: for limbs a working pixel or two wide the two
    profiles differ, and the optimum drifts (we measured a body receding 6% from its true
    depth, IoU 1.0 -> 0.90). Against this target the truth is the exact minimum."""
    import cv2

    factor = min(1.0, long_side / max(camera.width, camera.height))
    cam = camera.scaled(factor)
    inside = (mask > 0.5).astype(np.uint8)
    # distance from each pixel centre to the nearest centre of the other label, minus half a
    # pixel: the outline runs between the two centres.
    d_in = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    d_out = cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    sdf = np.where(inside > 0, d_in - 0.5, 0.5 - d_out).astype(np.float32) * factor
    small = cv2.resize(sdf, (cam.width, cam.height), interpolation=cv2.INTER_LINEAR)
    return torch.sigmoid(torch.from_numpy(small) / sigma), cam


def joint_limit_penalty(body_pose: torch.Tensor) -> torch.Tensor:
    """Hinge joints (knees, elbows) rotate about one axis and one way only.

    SMPL frames at rest: a knee flexes with a positive rotation about +X; the left elbow with
    a negative rotation about +Y and the right elbow with a positive one. Rotation about the
    other axes of a hinge, and bending the wrong way, are penalised quadratically."""
    pose = body_pose.reshape(-1, 23, 3)  # body_pose starts at joint 1
    terms = []
    for name, axis, sign in (("left_knee", 0, 1.0), ("right_knee", 0, 1.0),
                             ("left_elbow", 1, -1.0), ("right_elbow", 1, 1.0)):
        r = pose[:, JOINT_INDEX[name] - 1]
        others = [a for a in range(3) if a != axis]
        terms.append(torch.relu(-sign * r[:, axis]) ** 2 + 0.5 * (r[:, others] ** 2).sum(-1))
    return torch.stack(terms, -1).sum(-1).mean()


def _rotation_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle between two axis-angle rotations (geodesic, radians)."""
    from smplx.lbs import batch_rodrigues

    R = batch_rodrigues(a[None])[0] @ batch_rodrigues(b[None])[0].T
    cos = ((R.diagonal().sum() - 1.0) / 2.0).clamp(-1.0 + 1e-6, 1.0 - 1e-6)
    return torch.acos(cos)


def guide_loss(joints: torch.Tensor, global_orient, guides, camera: PinholeCamera, config: "BodyFitConfig",
               global_orient0) -> torch.Tensor:
    """The landmark terms (keypoint reprojection, bone directions, orientation bound); joints (24, 3)."""
    from backend.estimate.body_init import direction_loss, keypoint_loss

    loss = config.keypoint * keypoint_loss(joints, guides, camera)
    loss = loss + config.bone_direction * direction_loss(joints, guides)
    turned = torch.relu(_rotation_angle(global_orient, global_orient0) - math.radians(config.free_turn_deg))
    return loss + config.orientation_prior * turned ** 2


def fit_body_to_mask(body: BodyModel, mask: np.ndarray, camera: PinholeCamera, pose0, betas0=None,
                     transl0=None, config: BodyFitConfig | None = None,
                     progress: Callable[[dict], None] | None = None, guides=None) -> FitResult:
    """Optimise global orientation, translation, body pose and shape to the mask (H, W) in [0, 1].
    `guides` (backend.estimate.body_init.PoseGuides for this camera) add the landmark terms of
    BodyFitConfig, so overlap is never bought with a wrong 3D pose."""
    config = config or BodyFitConfig.preset("quick")
    if mask.shape != (camera.height, camera.width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the camera is {camera.width}x{camera.height}")
    dtype = torch.float32
    pose0 = torch.as_tensor(np.asarray(pose0, dtype=np.float32).reshape(72))
    betas0 = torch.zeros(body.num_betas) if betas0 is None else torch.as_tensor(np.asarray(betas0, np.float32))
    transl0 = torch.zeros(3) if transl0 is None else torch.as_tensor(np.asarray(transl0, np.float32).reshape(3))
    iou_before = silhouette_iou(body, pose0, betas0, transl0, mask, camera)

    global_orient = pose0[:3].clone().requires_grad_(True)
    body_pose = pose0[3:].clone().requires_grad_(True)
    betas = betas0.clone().requires_grad_(True)
    transl = transl0.clone().requires_grad_(True)
    faces = body.faces
    history: list[dict] = []
    pose_prior = config.pose_prior if guides is None else config.guided_pose_prior

    for s, stage in enumerate(config.stages):
        target, cam = soft_target(mask, camera, stage.resolution, stage.sigma)
        target_area = target.sum().clamp(min=1.0)
        K, R, t = camera_tensors(cam, torch.device("cpu"), dtype)
        params = [global_orient, transl]
        if stage.optimise_pose:
            params.append(body_pose)
        if stage.optimise_shape:
            params.append(betas)
        opt = torch.optim.Adam(params, lr=stage.lr)
        for it in range(stage.iterations):
            opt.zero_grad(set_to_none=True)
            pose = torch.cat([global_orient, body_pose])
            out = body(pose, betas, transl)
            verts = out.vertices
            alpha = soft_silhouette(verts, faces, K, R, t, cam.height, cam.width, sigma=stage.sigma)[0]
            # squared error normalised by the person's area, so priors weigh the same at any size
            loss = ((alpha - target) ** 2).sum() / target_area
            with torch.no_grad():
                soft_iou = (alpha * target).sum() / (alpha + target - alpha * target).sum()
            loss = loss + pose_prior * ((body_pose - pose0[3:]) ** 2).sum()
            loss = loss + config.joint_limit * joint_limit_penalty(body_pose)
            loss = loss + config.shape_prior * (betas ** 2).sum()
            loss = loss + config.depth_prior * (transl[2] - transl0[2]) ** 2
            if guides is not None:
                loss = loss + guide_loss(out.joints[0], global_orient, guides, camera, config, pose0[:3])
            loss.backward()
            opt.step()
            if it % 10 == 0 or it == stage.iterations - 1:
                record = {"stage": s, "iteration": it, "loss": loss.item(), "soft_iou": float(soft_iou)}
                history.append(record)
                if progress:
                    progress(record)

    pose = torch.cat([global_orient, body_pose]).detach()
    iou_after = silhouette_iou(body, pose, betas.detach(), transl.detach(), mask, camera)
    return FitResult(pose.numpy().astype(np.float64), betas.detach().numpy().astype(np.float64),
                     transl.detach().numpy().astype(np.float64), iou_before, iou_after, history)


def wrap_angles(pose: np.ndarray) -> np.ndarray:
    """Axis-angle vectors with angle in [0, pi] (the same rotations), for tidy output files."""
    aa = np.asarray(pose, dtype=np.float64).reshape(-1, 3).copy()
    angle = np.linalg.norm(aa, axis=1)
    big = angle > math.pi
    aa[big] *= (1.0 - 2.0 * math.pi / angle[big])[:, None]
    return aa.reshape(-1)


def joint_error_mm(body: BodyModel, pose, betas, transl, true_pose, true_betas, true_transl) -> float:
    """Mean per-joint position error with the pelvis aligned (MPJPE, the usual pose metric:
    from one view the absolute depth, and so the body's size, is ambiguous)."""
    with torch.no_grad():
        def joints(p, b, t):
            j = body(p, b, t).joints[0]
            return j - j[0]
        return float((joints(pose, betas, transl) - joints(true_pose, true_betas, true_transl)).norm(dim=-1).mean()
                     * 1000)
