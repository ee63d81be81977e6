"""Body parameters from BlazePose landmarks: the first guess the silhouette fit then refines,
and the guides (2D keypoints, 3D bone directions) that keep the refinement honest.

The world is the photo camera's frame (OpenCV: x right, y down, z forward; R = I, t = 0), as in
ELICIT's inputs. Three steps:

1. Global orientation in closed form from the torso: the hips' and shoulders' left-right axis
   and the hips -> shoulders axis of the metric 3D landmarks give the body's frame in the
   camera; SMPL's rest frame is (left = +x, up = +y).
2. Limb rotations by matching bone *directions* (unit vectors, so the person's size and the
   body's shape do not matter) of SMPL's joints to the 3D landmarks', with a small pull to the
   rest pose and the knee/elbow hinge limits.
3. Translation in closed form from the 2D landmarks (a linear least-squares problem once the
   posed joints are known: the body's metric size fixes the depth), then pose and translation
   together with the 2D reprojection added.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from backend.body.body_model import BodyModel
from backend.body.fitting import joint_limit_penalty
from backend.estimate.person import LANDMARKS, VISIBLE, PersonEstimate
from shared.camera import PinholeCamera
from shared.smpl import JOINT_INDEX as J

# SMPL bone (from joint, to joint) <- BlazePose bone (from landmark(s), to landmark(s)); a tuple
# of landmarks means their midpoint.
BONES = (
    ("left_shoulder", "left_elbow", "left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist", "left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow", "right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist", "right_elbow", "right_wrist"),
    ("left_wrist", "left_hand", "left_wrist", ("left_index", "left_pinky")),
    ("right_wrist", "right_hand", "right_wrist", ("right_index", "right_pinky")),
    ("left_hip", "left_knee", "left_hip", "left_knee"),
    ("left_knee", "left_ankle", "left_knee", "left_ankle"),
    ("right_hip", "right_knee", "right_hip", "right_knee"),
    ("right_knee", "right_ankle", "right_knee", "right_ankle"),
    ("left_ankle", "left_foot", "left_heel", "left_foot_index"),
    ("right_ankle", "right_foot", "right_heel", "right_foot_index"),
    ("right_hip", "left_hip", "right_hip", "left_hip"),
    ("right_shoulder", "left_shoulder", "right_shoulder", "left_shoulder"),
    ("pelvis", "neck", ("left_hip", "right_hip"), ("left_shoulder", "right_shoulder")),
    ("neck", "head", ("left_shoulder", "right_shoulder"), ("left_ear", "right_ear")),
)
# SMPL joints whose image position the landmark of the same name marks well
KEYPOINTS = ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
             "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")


@dataclasses.dataclass
class PoseGuides:
    """What the landmarks say, in the form the refinement uses."""
    keypoint_joints: np.ndarray   # (K,) SMPL joint indices
    keypoint_xy: np.ndarray       # (K, 2) pixels
    keypoint_weight: np.ndarray   # (K,) landmark visibility (0 where not seen)
    bone_joints: np.ndarray       # (B, 2) SMPL joint index pairs
    bone_dirs: np.ndarray         # (B, 3) unit directions in the world frame
    bone_weight: np.ndarray       # (B,)


@dataclasses.dataclass
class BodyInit:
    pose: np.ndarray      # (72,)
    transl: np.ndarray    # (3,)
    betas: np.ndarray     # (num_betas,)
    guides: PoseGuides


def _point(est_values: np.ndarray, spec) -> np.ndarray:
    names = spec if isinstance(spec, tuple) else (spec,)
    return np.mean([est_values[LANDMARKS[n]] for n in names], axis=0)


def _seen(est: PersonEstimate, spec) -> float:
    names = spec if isinstance(spec, tuple) else (spec,)
    return float(min(est.visibility[LANDMARKS[n]] for n in names))


def pose_guides(est: PersonEstimate, camera: PinholeCamera) -> PoseGuides:
    """The landmarks as guides in `camera`'s world (bone directions turned out of its frame)."""
    dirs, pairs, weights = [], [], []
    for a, b, la, lb in BONES:
        d = camera.R.T @ (_point(est.world, lb) - _point(est.world, la))
        n = np.linalg.norm(d)
        w = min(_seen(est, la), _seen(est, lb)) if n > 1e-6 else 0.0
        dirs.append(d / max(n, 1e-9))
        pairs.append((J[a], J[b]))
        weights.append(w if w >= VISIBLE else 0.0)
    kp = [J[name] for name in KEYPOINTS]
    kw = [est.visibility[LANDMARKS[name]] for name in KEYPOINTS]
    return PoseGuides(np.array(kp), np.array([est.image_xy[LANDMARKS[n]] for n in KEYPOINTS]),
                      np.array([w if w >= VISIBLE else 0.0 for w in kw]), np.array(pairs), np.array(dirs),
                      np.array(weights))


def _frame(left: np.ndarray, up: np.ndarray) -> np.ndarray:
    x = left / np.linalg.norm(left)
    y = up - (up @ x) * x
    y /= np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)], axis=1)   # columns: the body's left, up, front


def torso_rotation(est: PersonEstimate) -> np.ndarray:
    """The body's rotation in the camera frame (SMPL rest: left +x, up +y, front +z)."""
    W = est.world
    L = LANDMARKS
    left = (W[L["left_hip"]] - W[L["right_hip"]]) + (W[L["left_shoulder"]] - W[L["right_shoulder"]])
    up = _point(W, ("left_shoulder", "right_shoulder")) - _point(W, ("left_hip", "right_hip"))
    return _frame(left, up)


def axis_angle(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def direction_loss(joints: torch.Tensor, guides: PoseGuides) -> torch.Tensor:
    """Weighted mean of 1 - cos(angle) between SMPL's bones and the landmarks' (joints: (24, 3))."""
    pairs = torch.as_tensor(guides.bone_joints)
    d = joints[pairs[:, 1]] - joints[pairs[:, 0]]
    d = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    target = torch.as_tensor(guides.bone_dirs, dtype=joints.dtype)
    w = torch.as_tensor(guides.bone_weight, dtype=joints.dtype)
    return (w * (1.0 - (d * target).sum(-1))).sum() / w.sum().clamp(min=1e-9)


def keypoint_loss(joints: torch.Tensor, guides: PoseGuides, camera: PinholeCamera) -> torch.Tensor:
    """Weighted mean squared reprojection error of the keypoint joints through `camera`, in
    units of the photo's long side."""
    like = dict(dtype=joints.dtype, device=joints.device)
    K, R, t = (torch.as_tensor(np.asarray(a), **like) for a in (camera.K, camera.R, camera.t))
    scale = float(max(camera.width, camera.height))
    p = joints[torch.as_tensor(guides.keypoint_joints)] @ R.T + t
    uvw = p @ K.T
    uv = uvw[:, :2] / uvw[:, 2:3].clamp(min=1e-6)
    target = torch.as_tensor(guides.keypoint_xy, dtype=joints.dtype)
    w = torch.as_tensor(guides.keypoint_weight, dtype=joints.dtype)
    return (w * ((uv - target) / scale).pow(2).sum(-1)).sum() / w.sum().clamp(min=1e-9)


def solve_translation(joints: np.ndarray, guides: PoseGuides, camera: PinholeCamera) -> np.ndarray:
    """The t that best projects joints + t onto the keypoints (linear least squares: for each
    point, x + tx = a (z + tz) with a = (u - cx) / fx, and likewise for y)."""
    K = camera.K
    rows, rhs = [], []
    for j, (u, v), w in zip(guides.keypoint_joints, guides.keypoint_xy, guides.keypoint_weight):
        if w <= 0:
            continue
        X, Y, Z = joints[j]
        a, b = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]
        rows += [[w, 0.0, -w * a], [0.0, w, -w * b]]
        rhs += [w * (a * Z - X), w * (b * Z - Y)]
    if len(rows) < 6:
        raise ValueError("too few landmarks seen to place the body")
    t, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return t


def init_body(body: BodyModel, est: PersonEstimate, camera: PinholeCamera, betas=None,
              iterations: int = 120) -> BodyInit:
    """Pose, translation and (given or average) shape of `body` matching the landmarks, in
    `camera`'s world (solved in the camera's own frame, then carried into its world)."""
    own = PinholeCamera(camera.K, np.eye(3), np.zeros(3), camera.width, camera.height)
    init = _init_in_camera_frame(body, est, own, betas, iterations)
    pose, transl = to_world(body, init.pose, init.betas, init.transl, camera)
    return BodyInit(pose, transl, init.betas, pose_guides(est, camera))


def to_world(body: BodyModel, pose, betas, transl, camera: PinholeCamera) -> tuple[np.ndarray, np.ndarray]:
    """A body posed in the camera's frame -> the same body in the camera's world. With
    x_cam = R0 (x - J0) + J0 + t_cam and x_world = R^T (x_cam - t): R0' = R^T R0 and
    J0 + t' = R^T (J0 + t_cam - t)."""
    from scipy.spatial.transform import Rotation

    R, t = camera.R, camera.t
    with torch.no_grad():
        J0 = body.rest(torch.as_tensor(np.asarray(betas, np.float32)))[1][0, 0].numpy().astype(np.float64)
    pose = np.array(pose, dtype=np.float64)
    pose[:3] = Rotation.from_matrix(R.T @ Rotation.from_rotvec(pose[:3]).as_matrix()).as_rotvec()
    return pose, R.T @ (J0 + np.asarray(transl) - t) - J0


def _init_in_camera_frame(body: BodyModel, est: PersonEstimate, camera: PinholeCamera, betas,
                          iterations: int) -> BodyInit:
    guides = pose_guides(est, camera)
    betas_t = torch.zeros(body.num_betas) if betas is None else torch.as_tensor(np.asarray(betas, np.float32))
    limit = joint_limit_penalty
    global_orient = torch.as_tensor(axis_angle(torso_rotation(est)), dtype=torch.float32).requires_grad_(True)
    body_pose = torch.zeros(69, requires_grad=True)
    opt = torch.optim.Adam([global_orient, body_pose], lr=0.05)
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        joints = body(torch.cat([global_orient, body_pose]), betas_t, None).joints[0]
        loss = direction_loss(joints, guides) + 1e-3 * (body_pose ** 2).sum() + limit(body_pose)
        loss.backward()
        opt.step()

    with torch.no_grad():
        joints = body(torch.cat([global_orient, body_pose]), betas_t, None).joints[0].numpy().astype(np.float64)
    transl = torch.as_tensor(solve_translation(joints, guides, camera), dtype=torch.float32).requires_grad_(True)
    opt = torch.optim.Adam([global_orient, body_pose, transl], lr=0.01)
    for _ in range(iterations // 2):
        opt.zero_grad(set_to_none=True)
        joints = body(torch.cat([global_orient, body_pose]), betas_t, transl).joints[0]
        loss = (direction_loss(joints, guides) + 100.0 * keypoint_loss(joints, guides, camera)
                + 1e-3 * (body_pose ** 2).sum() + limit(body_pose))
        loss.backward()
        opt.step()
    pose = torch.cat([global_orient, body_pose]).detach().numpy().astype(np.float64)
    return BodyInit(pose, transl.detach().numpy().astype(np.float64), betas_t.numpy().astype(np.float64), guides)
