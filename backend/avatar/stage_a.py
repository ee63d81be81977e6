"""Stage A: the field starts as the body, fitted directly in 3D.

ELICIT renders the SMPL mesh from many cameras and trains ~15k iterations on those images.
Regressing the field on the body's 3D occupancy at points sampled around the rest mesh reaches
the same starting point in seconds: no rays, no rendering. Its colour is the photo's where the
photo sees the body and the nearest seen colour of the same body part elsewhere
(photo_colours.py; issue 14: stage B then starts from what projection gets right instead of
grey), or a neutral grey when no vertex colours are given.
"""
from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.spatial import cKDTree

from backend.avatar.avatar import Avatar
from backend.avatar.photo_colours import vertex_normals

if TYPE_CHECKING:
    from backend.avatar.clothing import PhotoClothing


@dataclasses.dataclass(frozen=True)
class StageAConfig:
    # 300 left the quick fit's start under-fitted: streaky, 40-50 % see-through, 1.5 dB under 1500
    # iterations' start, 0.3-0.5 dB under it after stage B (docs/benchmark.md, "Stage A fitted longer")
    iterations: int = 1500
    batch: int = 8192
    table: int = 200_000          # points whose targets are precomputed once
    lr: float = 1e-2
    surface_width: float = 0.005  # metres: occupancy goes 0 -> 1 across about 4x this
    # The encoding blurs the surface over about a texel, and grazing rays integrate that blur
    # over a long chord, which fattens silhouettes; the target surface sits this far inside.
    inset: float = 0.75           # in field texels
    inside_density: float = 500.0  # 1/m target inside the body
    colour: tuple[float, float, float] = (0.5, 0.5, 0.5)  # neutral appearance (photo_colour off)
    photo_colour: bool = True     # ours: start from the photo's colours on the body (photo_colours.py)
    # ours: clothing the photo shows beyond the body starts occupied (clothing.py); off: on the
    # benchmark's v2 it made every held-out bin worse and the avatar twice as see-through
    clothing_fill: bool = False
    seed: int = 0


def occupancy_targets(points: np.ndarray, vertices: np.ndarray, normals: np.ndarray, width: float,
                      inset: float = 0.0, nearest: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Soft inside-ness of points: sigmoid(-signed distance / width), the sign from the normal
    of the nearest vertex (vertices are ~1 cm apart, far finer than the field's texels).
    `nearest`: each point's (distance, index) of its nearest vertex, when already known."""
    dist, idx = cKDTree(vertices).query(points) if nearest is None else nearest
    side = np.einsum("ij,ij->i", points - vertices[idx], normals[idx])
    sdf = np.where(side >= 0, dist, -dist) + inset
    return 1.0 / (1.0 + np.exp(np.clip(sdf / width, -50, 50)))


def sample_table(avatar: Avatar, cfg: StageAConfig, rng: np.random.Generator,
                 vertex_colours: np.ndarray | None = None, clothing: PhotoClothing | None = None):
    """Points around the rest body, their occupancy targets and colour targets (the nearest
    vertex's colour; the neutral colour without vertex colours). With `clothing`, a quarter of
    the points are spread as far as its reach, and those it marks start occupied, in the
    photo's colour (clothing.py)."""
    verts = avatar.rest_vertices.cpu().numpy()
    faces = avatar.body.faces.cpu().numpy()
    normals = vertex_normals(verts, faces)
    box_min = avatar.field.box_min.cpu().numpy()
    box_max = avatar.field.box_max.cpu().numpy()
    n_near = cfg.table * 3 // 4
    n_wide = cfg.table // 4 if clothing is not None else 0
    near = verts[rng.integers(0, len(verts), n_near - n_wide)] + rng.normal(0, 0.02, (n_near - n_wide, 3))
    uniform = rng.uniform(box_min, box_max, (cfg.table - n_near, 3))
    parts = [near, uniform]
    if n_wide:
        parts.append(verts[rng.integers(0, len(verts), n_wide)] + rng.normal(0, clothing.reach / 2, (n_wide, 3)))
    points = np.clip(np.concatenate(parts), box_min, box_max).astype(np.float32)
    texel = avatar.field.cfg.voxel if avatar.field.cfg.kind == "triplane" else 0.0
    distance, nearest = cKDTree(verts).query(points)
    occ = occupancy_targets(points, verts, normals, cfg.surface_width, cfg.inset * texel,
                            (distance, nearest)).astype(np.float32)
    if vertex_colours is None:
        colours = np.broadcast_to(np.asarray(cfg.colour, np.float32), (len(points), 3)).copy()
    else:
        colours = np.asarray(vertex_colours, np.float32)[nearest]
    if clothing is not None:
        worn, worn_colours = clothing.targets(points.astype(np.float64), nearest, distance)
        occ[worn] = 1.0
        if vertex_colours is not None:
            colours[worn] = worn_colours[worn]
    return points, occ, np.ascontiguousarray(colours)


def run_stage_a(avatar: Avatar, cfg: StageAConfig = StageAConfig(), progress=None,
                vertex_colours: np.ndarray | None = None, clothing: PhotoClothing | None = None) -> dict:
    """Fit avatar.field to the body's occupancy and colour (`vertex_colours` (V, 3) of the
    body's vertices, else the neutral colour). Returns a small report."""
    start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    points, occ, colours = sample_table(avatar, cfg, rng, vertex_colours, clothing)
    dev = avatar.device
    points_t = torch.from_numpy(points).to(dev)
    occ_t = torch.from_numpy(occ).to(dev)
    colour_t = torch.from_numpy(colours).to(dev)
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
            + (inside[:, None] * (rgb - colour_t[idx]).pow(2)).mean()
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
