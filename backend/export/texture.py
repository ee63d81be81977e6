"""UV charts and a colour texture baked from the avatar's field.

xatlas cuts the mesh into charts and packs them into the texture square. Each texel covered by
a triangle is a point on the surface (rasterised in UV space by our rasteriser, barycentric
position and normal); its colour is what the volume renderer sees looking at that point along
its normal: a short ray from `depth` metres outside to `depth` inside, composited with the
field's densities and colours. Where the photo's camera sees the point (in front, facing it,
not hidden: its depth agrees with the volume render's there), the texel instead takes what the
avatar's render from the photo's view shows at that pixel, blended in by how squarely the surface
faces the camera: the field is only constrained to reproduce the photo along those rays, so this
is the view where its colour is right (+2 dB on the benchmark's input view over the normal rays
alone). Empty texels take the colour of the nearest covered one, so bilinear filtering and
mip-maps never pull the background into a chart's edge.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy import ndimage

from backend.avatar.avatar import Avatar
from backend.avatar.skinning import blend
from backend.render.raster import rasterize


@dataclasses.dataclass(frozen=True)
class TextureConfig:
    size: int = 2048          # texels per side
    padding: int = 4          # texels between charts
    samples: int = 12         # field samples along each texel's ray
    depth: float = 0.02       # metres the ray starts outside (and ends inside) the surface
    chunk: int = 1 << 15      # texels per batch of field queries
    photo_view: bool = True   # colours from the render of the photo's view where it sees the surface
    photo_side: int = 1024    # that render's longer side (pixels)
    facing: tuple[float, float] = (0.2, 0.5)   # cos(normal, view): blend from normal rays to the photo view
    visible_tolerance: float = 0.03           # metres between a point's depth and the render's


def unwrap(vertices: np.ndarray, faces: np.ndarray, cfg: TextureConfig):
    """Charts and packing: (vertex index into `vertices` per UV vertex (U,), faces (F, 3) into
    the UV vertices, uv (U, 2) in [0, 1], glTF's convention: v = 0 at the image's top row)."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = cfg.size
    pack.padding = cfg.padding
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, uv_faces, uvs = atlas[0]
    return vmapping.astype(np.int64), uv_faces.astype(np.int64), uvs.astype(np.float32)


def texel_surface(positions: np.ndarray, normals: np.ndarray, faces: np.ndarray, uvs: np.ndarray, size: int):
    """Rasterise the UV layout: flat indices of covered texels and their surface points and
    normals (per UV vertex `positions`/`normals`, faces into them)."""
    # UVs as screen points of an identity camera at depth 1: pixel (u * size, v * size)
    screen = torch.from_numpy(np.concatenate([uvs * size, np.ones((len(uvs), 1), np.float32)], 1))
    eye = torch.eye(3)
    face_index, _, bary = (a[0] for a in rasterize(screen[None], torch.from_numpy(faces), eye, eye,
                                                   torch.zeros(3), size, size))
    covered = torch.nonzero(face_index.reshape(-1) >= 0).squeeze(1)
    tri = torch.from_numpy(faces)[face_index.reshape(-1)[covered]]                   # (T, 3)
    lam = bary.reshape(-1, 3)[covered, :, None]                                     # (T, 3, 1)
    points = (lam * torch.from_numpy(positions)[tri]).sum(1)
    normals_t = (lam * torch.from_numpy(normals)[tri]).sum(1)
    normals_t = normals_t / normals_t.norm(dim=1, keepdim=True).clamp(min=1e-9)
    return covered.numpy(), points, normals_t


@torch.no_grad()
def surface_colours(avatar: Avatar, points: torch.Tensor, normals: torch.Tensor, cfg: TextureConfig) -> np.ndarray:
    """What the volume renderer shows at each surface point seen along its normal: (T, 3)."""
    S = cfg.samples
    offsets = torch.linspace(cfg.depth, -cfg.depth, S)          # outside -> inside
    delta = 2.0 * cfg.depth / S
    out = []
    for s in range(0, len(points), cfg.chunk):
        p, n = points[s:s + cfg.chunk], normals[s:s + cfg.chunk]
        x = (p[:, None, :] + offsets[None, :, None] * n[:, None, :]).reshape(-1, 3)
        density, rgb = avatar.field(x.to(avatar.device))
        density, rgb = density.float().cpu().reshape(-1, S), rgb.float().cpu().reshape(-1, S, 3)
        a = 1.0 - torch.exp(-density * delta)
        trans = torch.cumprod(torch.cat([torch.ones_like(a[:, :1]), 1.0 - a[:, :-1] + 1e-10], 1), 1)
        w = a * trans
        acc = w.sum(1, keepdim=True)
        mid = rgb[:, S // 2]                                    # the surface point's own colour
        colour = torch.where(acc > 1e-3, (w[..., None] * rgb).sum(1) / acc.clamp(min=1e-3), mid)
        out.append(colour.clamp(0, 1))
    return torch.cat(out).numpy() if out else np.zeros((0, 3), np.float32)


@torch.no_grad()
def photo_view_colours(avatar: Avatar, points: torch.Tensor, normals: torch.Tensor, view, cfg: TextureConfig):
    """What the render of the photo's view (camera, pose, transl) shows at each rest-pose surface
    point, and how much to trust it (0 where unseen or grazing, 1 where it faces the camera)."""
    camera, pose, transl = view
    camera = camera.scaled(min(1.0, cfg.photo_side / max(camera.width, camera.height)))
    rgba, depth = (a.float().cpu() for a in avatar.render_layers(camera, pose, transl))
    _, transforms, _ = avatar.posed(pose, transl)
    K, R, t = (torch.as_tensor(a, dtype=torch.float32) for a in (camera.K, camera.R, camera.t))
    centre = torch.as_tensor(camera.center, dtype=torch.float32)
    colours, trust = [], []
    for s in range(0, len(points), cfg.chunk):
        p, n = points[s:s + cfg.chunk], normals[s:s + cfg.chunk]
        A = blend(avatar.skin(p.to(avatar.device)), transforms).float().cpu()
        x = (A[:, :, :3] @ p[..., None])[..., 0] + A[:, :, 3]           # posed point
        nx = torch.nn.functional.normalize((A[:, :, :3] @ n[..., None])[..., 0], dim=1)
        cam = x @ R.T + t
        z = cam[:, 2].clamp(min=1e-6)
        u, v = (cam @ K.T)[:, 0] / z, (cam @ K.T)[:, 1] / z
        facing = (nx * torch.nn.functional.normalize(centre - x, dim=1)).sum(1)
        col, row = u.long(), v.long()
        inside = (cam[:, 2] > 0) & (col >= 0) & (row >= 0) & (col < camera.width) & (row < camera.height)
        col, row = col.clamp(0, camera.width - 1), row.clamp(0, camera.height - 1)
        seen = inside & (rgba[row, col, 3] > 0.5) & ((depth[row, col] - z).abs() < cfg.visible_tolerance)
        lo, hi = cfg.facing
        trust.append(seen * ((facing - lo) / (hi - lo)).clamp(0, 1))
        colours.append(_bilinear(rgba[..., :3], u, v))
    return torch.cat(colours), torch.cat(trust)


def _bilinear(image: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(H, W, C) sampled at pixel coordinates (pixel centres at +0.5), clamped at the border."""
    grid = torch.stack([u / image.shape[1] * 2 - 1, v / image.shape[0] * 2 - 1], -1)[None, None]
    out = torch.nn.functional.grid_sample(image.permute(2, 0, 1)[None], grid, mode="bilinear",
                                          padding_mode="border", align_corners=False)
    return out[0, :, 0].t()


def bake_texture(avatar: Avatar, positions: np.ndarray, normals: np.ndarray, faces: np.ndarray,
                 uvs: np.ndarray, cfg: TextureConfig, photo_view=None) -> np.ndarray:
    """(size, size, 3) uint8 colour texture (row 0 = v 0) for the UV layout. photo_view: the
    photo's (camera, pose, transl), whose render colours what it sees (cfg.photo_view)."""
    size = cfg.size
    covered, points, texel_normals = texel_surface(positions, normals, faces, uvs, size)
    image = np.zeros((size * size, 3), np.float32)
    colours = torch.from_numpy(surface_colours(avatar, points, texel_normals, cfg))
    if photo_view is not None and cfg.photo_view and len(points):
        seen, trust = photo_view_colours(avatar, points, texel_normals, photo_view, cfg)
        colours = colours + trust[:, None] * (seen - colours)
    image[covered] = colours.numpy()
    filled = np.zeros(size * size, bool)
    filled[covered] = True
    filled = filled.reshape(size, size)
    image = image.reshape(size, size, 3)
    if filled.any() and not filled.all():
        _, (iy, ix) = ndimage.distance_transform_edt(~filled, return_indices=True)
        image = image[iy, ix]
    return np.round(image * 255.0).astype(np.uint8)
