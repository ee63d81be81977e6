"""The avatar's surface as a triangle mesh in its rest (canonical) space.

The canonical field's density is sampled on a grid over its box and contoured with
scikit-image's marching cubes. Only space the renderer can reach counts: the volume renderer
marches rays within a band of about `reach` metres around the body (RenderConfig.band_front,
margin), so density farther out is never seen and is dropped; cavities inside the body (the
renderer never samples deeper than band_back) are filled, and loose floaters smaller than
`min_component` of the body are removed. Quadric decimation (fast-simplification) then brings
the mesh to the target triangle count.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from backend.avatar.avatar import Avatar


@dataclasses.dataclass(frozen=True)
class SurfaceConfig:
    voxel: float = 0.006        # metres per marching-cubes cell
    iso: float = 20.0           # density (1/m) of the surface: docs/export.md has the sweep
    triangles: int = 100_000    # at most this many after decimation
    reach: float = 0.12         # metres around the rest body the renderer can see
    min_component: float = 0.01 # parts smaller than this fraction of the largest are floaters
    opening: int = 1            # cells of morphological opening: removes membranes the volume render
                                # sees through (a faint web between the thighs), keeps limbs
    chunk: int = 1 << 18        # field queries per batch


@torch.no_grad()
def density_grid(avatar: Avatar, cfg: SurfaceConfig) -> tuple[np.ndarray, np.ndarray]:
    """Density (X, Y, Z) on a grid with `cfg.voxel` spacing over the field's box, 0 beyond
    `cfg.reach` of the rest body; and the grid's origin (metres, canonical frame)."""
    box_min = avatar.field.box_min.cpu().numpy().astype(np.float64)
    box_max = avatar.field.box_max.cpu().numpy().astype(np.float64)
    shape = np.maximum(2, np.ceil((box_max - box_min) / cfg.voxel).astype(int) + 1)
    axes = [box_min[i] + cfg.voxel * np.arange(shape[i]) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    near = cKDTree(avatar.rest_vertices.cpu().numpy()).query(grid, distance_upper_bound=cfg.reach)[0] <= cfg.reach
    density = np.zeros(len(grid), np.float32)
    points = torch.from_numpy(grid[near].astype(np.float32))
    values = []
    for s in range(0, len(points), cfg.chunk):
        d, _ = avatar.field(points[s:s + cfg.chunk].to(avatar.device))
        values.append(d.float().cpu())
    if values:
        density[near] = torch.cat(values).numpy()
    return density.reshape(shape), box_min


def solid_occupancy(density: np.ndarray, iso: float, min_component: float, opening: int = 0) -> np.ndarray:
    """Inside-ness (bool grid): above the iso level, cavities filled, sheets thinner than about
    2 * `opening` cells opened away, floaters removed."""
    inside = ndimage.binary_fill_holes(density >= iso)
    if opening:
        inside = ndimage.binary_opening(inside, iterations=opening)
    labels, count = ndimage.label(inside)
    if count > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= min_component * sizes.max()) + 1
        inside = np.isin(labels, keep)
    return inside


def orient_outwards(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces wound counter-clockwise seen from outside (glTF's front faces) for a closed mesh:
    flipped when the signed volume is negative."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0
    return faces if volume >= 0 else faces[:, ::-1].copy()


def extract_surface(avatar: Avatar, cfg: SurfaceConfig = SurfaceConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Rest-pose vertices (V, 3) float32 in the canonical (SMPL) frame and faces (F, 3) int32."""
    import fast_simplification
    from skimage.measure import marching_cubes

    density, origin = density_grid(avatar, cfg)
    inside = solid_occupancy(density, cfg.iso, cfg.min_component, cfg.opening)
    if not inside.any():
        raise ValueError(f"the avatar's field has no density above {cfg.iso:g}/m near its body: "
                         "nothing to export (is the fit finished?)")
    # only cells whose side changed (filled cavities, removed floaters) are overwritten, so the
    # surface keeps the field's own smooth values; padding closes it where it meets the box
    volume = density.copy()
    volume[inside & (density < cfg.iso)] = cfg.iso * 1.5
    volume[~inside & (density >= cfg.iso)] = cfg.iso * 0.5
    volume = np.pad(volume, 1)
    verts, faces, _, _ = marching_cubes(volume, level=cfg.iso, spacing=(cfg.voxel,) * 3)
    verts = verts - cfg.voxel + origin
    if len(faces) > cfg.triangles:
        verts, faces = fast_simplification.simplify(verts, faces, target_count=cfg.triangles)
    verts, faces = _compact(np.asarray(verts, np.float64), np.asarray(faces, np.int64))
    faces = orient_outwards(verts, faces)
    return verts.astype(np.float32), faces.astype(np.int32)


def _compact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop degenerate faces (two equal corners) and vertices no face uses."""
    ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    faces = faces[ok]
    used, inverse = np.unique(faces, return_inverse=True)
    return vertices[used], inverse.reshape(-1, 3)
