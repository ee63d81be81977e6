"""How closely a baked mesh follows the neural avatar: pose it with its own skinning weights and
compare silhouettes with the volume render's alpha (used by tests, the iso sweep and the
benchmark's "exported mesh" row)."""
from __future__ import annotations

import numpy as np
import torch

from backend.avatar.avatar import Avatar
from backend.render.raster import camera_tensors, rasterize
from shared.camera import PinholeCamera


@torch.no_grad()
def pose_vertices(avatar: Avatar, vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray,
                  pose, transl, correct_pose: bool = True) -> np.ndarray:
    """Linear blend skinning of rest `vertices` with (V, K) joints/weights by the avatar's body
    transforms for `pose` (with the avatar's learned pose correction when `correct_pose`)."""
    _, transforms, _ = avatar.posed(pose, transl, correct_pose)
    T = transforms.float().cpu().numpy()                              # (24, 4, 4)
    A = np.einsum("vk,vkij->vij", weights, T[joints.astype(np.int64)])  # (V, 4, 4)
    v = np.concatenate([vertices, np.ones((len(vertices), 1), np.float32)], 1)
    return np.einsum("vij,vj->vi", A, v)[:, :3].astype(np.float32)


def mesh_mask(vertices: np.ndarray, faces: np.ndarray, camera: PinholeCamera) -> np.ndarray:
    K, R, t = camera_tensors(camera)
    face_index, _, _ = rasterize(torch.from_numpy(vertices)[None], torch.from_numpy(faces.astype(np.int64)),
                                 K, R, t, camera.height, camera.width)
    return face_index[0].numpy() >= 0


def silhouette_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
