"""Motion of the avatar: learned skinning weights, pose correction and non-rigid offsets.

An observation-space point x maps to canonical space by inverse linear blend skinning,
x_c = (sum_i w_i T_i)^-1 x, with weights w from a learned volume over the canonical box
(initialised from the body model's weights, as HumanNeRF initialises its motion-weight
volume). The weights are looked up where the point lands in canonical space, which is what
we are solving for; one fixed-point step from a per-ray first guess (the weights of the body
surface the ray hits) is enough for points within a few centimetres of the body.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from backend.avatar.field import positional_encoding, to_unit_box
from shared.smpl import NUM_JOINTS, PARENTS

if TYPE_CHECKING:
    from backend.body.body_model import BodyModel


@dataclasses.dataclass(frozen=True)
class MotionConfig:
    weight_voxel: float = 0.03   # metres per skinning-weight cell (smooth by construction)
    pose_correction: bool = True
    pose_hidden: int = 128
    nonrigid: bool = False       # per-point offsets (clothing wrinkles); off for one image by default
    nonrigid_hidden: int = 64


class SkinningVolume(torch.nn.Module):
    """Per-joint weight logits on a coarse grid over the canonical box; softmax gives weights."""

    def __init__(self, box_min, box_max, rest_vertices: np.ndarray, vertex_weights: np.ndarray,
                 voxel: float = 0.03):
        super().__init__()
        box_min = np.asarray(box_min, dtype=np.float32)
        box_max = np.asarray(box_max, dtype=np.float32)
        res = [max(4, int(np.ceil((hi - lo) / voxel)) + 1) for lo, hi in zip(box_min, box_max)]
        axes = [np.linspace(lo, hi, n, dtype=np.float32) for lo, hi, n in zip(box_min, box_max, res)]
        zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        cells = np.stack([xx, yy, zz], -1).reshape(-1, 3)
        # every cell starts with the weights of its nearest body vertex
        _, nearest = cKDTree(rest_vertices).query(cells)
        w = np.asarray(vertex_weights, dtype=np.float32)[nearest]
        logits = np.log(np.clip(w, 1e-4, 1.0)).T.reshape(NUM_JOINTS, res[2], res[1], res[0])
        self.logits = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(logits))[None])
        self.register_buffer("box_min", torch.from_numpy(box_min))
        self.register_buffer("box_max", torch.from_numpy(box_max))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Canonical points (N, 3) -> weights (N, 24), each row summing to 1."""
        # grid_sample with align_corners=True: the first/last cells sit on the box faces
        p = to_unit_box(points, self.box_min, self.box_max)
        grid = p[None, :, None, None, :].to(self.logits.dtype)   # (1, N, 1, 1, 3) as (x, y, z)
        logits = F.grid_sample(self.logits, grid, mode="bilinear", padding_mode="border",
                               align_corners=True)[0, :, :, 0, 0].t()
        return torch.softmax(logits.float(), -1)


def blend(weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """weights (N, 24), transforms (24, 4, 4) -> blended 3x4 affine maps (N, 3, 4)."""
    return (weights @ transforms[:, :3, :].reshape(NUM_JOINTS, 12)).reshape(-1, 3, 4)


def apply_affine(affine: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """A x + b for affine (N, 3, 4) = [A | b] and points (N, 3)."""
    return (affine[:, :, :3] @ points[:, :, None])[:, :, 0] + affine[:, :, 3]


def apply_inverse(affine: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Solve A x_c + b = x for x_c, with affine (N, 3, 4) = [A | b].

    Closed form (Cramer's rule: A^-1 = adj(A) / det A, the adjugate's columns being cross
    products of A's rows) rather than a batched LU solve: a handful of elementwise kernels
    instead of a factorisation per point, which took over a third of a GPU frame. Blended
    rotations keep det A near 1; a degenerate blend is kept finite rather than raising."""
    a0, a1, a2 = affine[:, 0, :3], affine[:, 1, :3], affine[:, 2, :3]
    c0, c1, c2 = torch.linalg.cross(a1, a2), torch.linalg.cross(a2, a0), torch.linalg.cross(a0, a1)
    det = (a0 * c0).sum(-1, keepdim=True)
    det = torch.where(det < 0, det.clamp(max=-1e-8), det.clamp(min=1e-8))
    r = points - affine[:, :, 3]
    return (r[:, :1] * c0 + r[:, 1:2] * c1 + r[:, 2:] * c2) / det


class PoseCorrector(torch.nn.Module):
    """HumanNeRF's pose refinement: a small MLP predicts a correction of the 23 joint rotations
    from the body pose, starting at zero, so the fitted body pose can be refined by the photo."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        n = 3 * (NUM_JOINTS - 1)
        self.net = torch.nn.Sequential(torch.nn.Linear(n, hidden), torch.nn.ReLU(inplace=True),
                                       torch.nn.Linear(hidden, n))
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        """pose (B, 72) -> corrected pose (B, 72); the global orientation is left alone."""
        delta = self.net(pose[:, 3:])
        return torch.cat([pose[:, :3], pose[:, 3:] + delta], -1)


class NonRigidOffsets(torch.nn.Module):
    """Optional pose-conditioned offsets in canonical space (starts at zero)."""

    def __init__(self, box_min, box_max, hidden: int = 64, frequencies: int = 6):
        super().__init__()
        self.register_buffer("box_min", torch.as_tensor(box_min, dtype=torch.float32))
        self.register_buffer("box_max", torch.as_tensor(box_max, dtype=torch.float32))
        self.frequencies = frequencies
        width = 3 + 6 * frequencies + 3 * (NUM_JOINTS - 1)
        self.net = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.ReLU(inplace=True),
                                       torch.nn.Linear(hidden, hidden), torch.nn.ReLU(inplace=True),
                                       torch.nn.Linear(hidden, 3))
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def forward(self, points: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        enc = positional_encoding(to_unit_box(points, self.box_min, self.box_max), self.frequencies)
        code = pose[:, 3:].expand(points.shape[0], -1).to(enc.dtype)
        return points + self.net(torch.cat([enc, code], -1))


def bone_segments(body: BodyModel, betas) -> tuple[torch.Tensor, ...]:
    """The rest skeleton as segments for `nearest_bone_weights`: each end a rest point and the
    joint whose transform moves it, and the joint owning the segment (a bone from parent p to
    child j moves with p; leaves (head, feet, hands) get a short bone of their own, extending
    the one before them)."""
    with torch.no_grad():
        rest = body.rest(torch.as_tensor(np.asarray(betas, np.float32)).reshape(1, -1)
                         .to(body.smpl.v_template.device))[1][0].cpu()
    a, a_by, b, b_by, owner = [], [], [], [], []
    for j, p in enumerate(PARENTS):
        if p >= 0:
            a.append(rest[p]), a_by.append(p), b.append(rest[j]), b_by.append(j), owner.append(p)
        if j not in PARENTS:
            a.append(rest[j]), a_by.append(j), owner.append(j), b_by.append(j)
            b.append(rest[j] + 0.5 * (rest[j] - rest[PARENTS[j]]))
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return torch.stack(a), as_long(a_by), torch.stack(b), as_long(b_by), as_long(owner)


def nearest_bone_weights(points: torch.Tensor, transforms: torch.Tensor, a_rest, a_by, b_rest, b_by,
                         owner) -> torch.Tensor:
    """One-hot skinning weights (N, 24): the owner of the posed bone nearest each point."""
    dev = points.device

    def posed(rest, by):
        T = transforms[by.to(dev)]
        return (T[:, :3, :3] @ rest.to(dev, points.dtype)[..., None])[..., 0] + T[:, :3, 3]
    a, b = posed(a_rest, a_by), posed(b_rest, b_by)
    ab = b - a
    rel = points[:, None, :] - a
    t = ((rel * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-9)).clamp(0, 1)
    d = (rel - t[..., None] * ab).pow(2).sum(-1)
    return torch.nn.functional.one_hot(owner.to(dev)[d.argmin(1)], transforms.shape[0]).to(points.dtype)


def skin_points(points: np.ndarray, weights: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Linear blend skinning on the host: rest-pose points (N, 3) with weights (N, J) moved by
    per-joint transforms (J, 4, 4)."""
    blended = np.einsum("nj,jab->nab", weights, transforms)
    return np.einsum("nab,nb->na", blended[:, :3, :3], points) + blended[:, :3, 3]
