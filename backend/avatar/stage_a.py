"""Stage A: the field starts as the body, fitted directly in 3D.

ELICIT renders the SMPL mesh from many cameras and trains ~15k iterations on those images.
Regressing the field on the body's 3D occupancy (and a neutral colour) at points sampled
around the rest mesh reaches the same starting point in seconds: no rays, no rendering.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from scipy.spatial import cKDTree

from backend.avatar.model import Avatar


@dataclasses.dataclass(frozen=True)
class StageAConfig:
    iterations: int = 300
    batch: int = 8192
    table: int = 200_000          # points whose targets are precomputed once
    lr: float = 1e-2
    surface_width: float = 0.005  # metres: occupancy goes 0 -> 1 across about 4x this
    # The encoding blurs the surface over about a texel, and grazing rays integrate that blur
    # over a long chord, which fattens silhouettes; the target surface sits this far inside.
    inset: float = 0.75           # in field texels
    inside_density: float = 500.0  # 1/m target inside the body
    colour: tuple[float, float, float] = (0.5, 0.5, 0.5)  # neutral starting appearance
    seed: int = 0


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals, flipped if needed so that they point out of the body."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    # signed volume of the mesh: negative when the faces wind inward
    if np.einsum("ij,ij->", tri[:, 0], fn) < 0:
        fn = -fn
    vn = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def occupancy_targets(points: np.ndarray, vertices: np.ndarray, normals: np.ndarray, width: float,
                      inset: float = 0.0) -> np.ndarray:
    """Soft inside-ness of points: sigmoid(-signed distance / width), the sign from the normal
    of the nearest vertex (vertices are ~1 cm apart, far finer than the field's texels)."""
    dist, idx = cKDTree(vertices).query(points)
    side = np.einsum("ij,ij->i", points - vertices[idx], normals[idx])
    sdf = np.where(side >= 0, dist, -dist) + inset
    return 1.0 / (1.0 + np.exp(np.clip(sdf / width, -50, 50)))


def sample_table(avatar: Avatar, cfg: StageAConfig, rng: np.random.Generator):
    verts = avatar.rest_vertices.cpu().numpy()
    faces = avatar.body.faces.cpu().numpy()
    normals = vertex_normals(verts, faces)
    box_min = avatar.field.box_min.cpu().numpy()
    box_max = avatar.field.box_max.cpu().numpy()
    n_near = cfg.table * 3 // 4
    near = verts[rng.integers(0, len(verts), n_near)] + rng.normal(0, 0.02, (n_near, 3))
    uniform = rng.uniform(box_min, box_max, (cfg.table - n_near, 3))
    points = np.clip(np.concatenate([near, uniform]), box_min, box_max).astype(np.float32)
    texel = avatar.field.cfg.voxel if avatar.field.cfg.kind == "triplane" else 0.0
    occ = occupancy_targets(points, verts, normals, cfg.surface_width, cfg.inset * texel).astype(np.float32)
    return points, occ


def run_stage_a(avatar: Avatar, cfg: StageAConfig = StageAConfig(), progress=None) -> dict:
    """Fit avatar.field to the body's occupancy and a neutral colour. Returns a small report."""
    start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    points, occ = sample_table(avatar, cfg, rng)
    dev = avatar.device
    points_t = torch.from_numpy(points).to(dev)
    occ_t = torch.from_numpy(occ).to(dev)
    colour = torch.tensor(cfg.colour, device=dev)
    # Compare opacities over a whole ray's band, not one sample: a small density outside the
    # body is cheap per sample but adds up along a ray into a visible halo.
    delta = avatar.render_cfg.band_front + avatar.render_cfg.band_back
    target_alpha = 1.0 - torch.exp(-cfg.inside_density * occ_t * delta)
    opt = torch.optim.Adam(avatar.field.parameters(), lr=cfg.lr)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    loss_value = float("nan")
    for it in range(cfg.iterations):
        idx = torch.randint(0, len(points), (cfg.batch,), generator=gen).to(dev)
        density, rgb = avatar.field(points_t[idx])
        alpha = 1.0 - torch.exp(-density * delta)
        inside = occ_t[idx]
        loss = (alpha - target_alpha[idx]).pow(2).mean() \
            + (inside[:, None] * (rgb - colour).pow(2)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
        if progress is not None and (it % 50 == 0 or it == cfg.iterations - 1):
            progress({"stage": "A", "iteration": it + 1, "of": cfg.iterations, "loss": loss_value})
    with torch.no_grad():
        density, _ = avatar.field(points_t)
        pred_inside = (1.0 - torch.exp(-density * delta)) > 0.5
        agree = float((pred_inside == (occ_t > 0.5)).float().mean())
    return {"seconds": time.perf_counter() - start, "loss": loss_value, "occupancy_accuracy": agree}
