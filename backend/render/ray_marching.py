"""The volume renderer: ray marching around a posed body mesh.

Rendering is fast by construction: the posed body is rasterised first (cheap), and only rays
within `margin` metres of its silhouette are marched, with samples in a band around the body
surface they hit. Rays that miss cost nothing and no sample is wasted in empty space; the band
is wide enough for clothes and hair (`band_front`, `margin`). What sits in the volume is the
caller's: a `query` maps sample points to density and colour (the avatar's is inverse skinning
into its canonical field, backend/avatar/avatar.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from backend.render.raster import camera_tensors, rasterize_layers
from backend.render.silhouette import near_silhouette
from shared.camera import PinholeCamera


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    samples: int = 24           # per ray
    band_front: float = 0.12    # metres marched in front of the body surface (clothes, hair)
    band_back: float = 0.08     # and behind it (the field is opaque well before)
    margin: float = 0.08        # metres around the body silhouette whose rays are marched
    box_padding: float = 0.15   # canonical box around the rest body
    chunk_rays: int = 16384     # rays per batch when rendering without gradients
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Samples deeper than this (metres) behind the surface their ray hits first start inverse
    # skinning from their nearest bone, not from that surface's weights (which, for a ray
    # grazing an arm into the torso, are the arm's). 0: every sample starts from the surface's.
    nearest_bone_behind: float = 0.0
    # A ray whose next body surface facing the camera lies beyond its band (the thigh behind a
    # hand, the torso behind an arm) also marches this many samples in a second band around
    # that surface (behind_front in front of it to band_back behind), composited behind the
    # first: a faint first surface (fingers, hair) no longer shows the background through the
    # body behind it. 0: one band (docs/benchmark.md has the measured difference).
    behind_samples: int = 8
    behind_front: float = 0.04
    # metres: a sample whose canonical point, skinned forward again, lands farther than this from
    # where it was sampled is empty. Inverse skinning with one surface's weights sends a point
    # between spread legs into the other leg's rest volume, which then shows there as a ghost
    # (a tail below the crotch); the round trip catches it. 0: no test (docs/benchmark.md,
    # "A skinning round trip")
    skin_consistency: float = 0.03
    # ...unless the legs carried it and this is set (the fit sets it when the photo shows clothing
    # past the body, clothing.hang_for): then it moves with the pelvis, which keeps a skirt's hem
    # between the legs that emptying cut away
    hang_from_pelvis: bool = False


@dataclasses.dataclass
class Rendered:
    rgb: torch.Tensor        # (H, W, 3), composited over the background
    alpha: torch.Tensor      # (H, W)
    body_mask: torch.Tensor  # (H, W) bool: hard silhouette of the posed body model
    rays: int                # rays marched (for the speed report)
    depth: torch.Tensor | None = None  # (H, W) expected camera depth (z, metres) of the volume, 0 where alpha is 0


# query(points (n*S, 3) world, surface attributes (n, C) per ray, depth behind that surface
# (n, S) metres) -> density (n*S,) and colour (n*S, 3)
Query = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def render_volume(camera: PinholeCamera, vertices: torch.Tensor, faces: torch.Tensor,
                  vertex_attributes: torch.Tensor, query: Query, cfg: RenderConfig, *,
                  background=None, jitter: bool = False, generator: torch.Generator | None = None) -> Rendered:
    """Volume-render what `query` holds around the mesh (vertices (V, 3) world, detached;
    faces (F, 3)). Each marched ray carries the mesh's `vertex_attributes` (V, C) interpolated
    at the surface it borrows (the avatar's: skinning weights)."""
    dev = vertices.device
    bg = torch.as_tensor(cfg.background if background is None else background, dtype=torch.float32, device=dev)
    H, W = camera.height, camera.width
    K, R, t = camera_tensors(camera, device=dev)
    behind = cfg.behind_samples > 0
    first, second = rasterize_layers(vertices[None], faces, K, R, t, H, W,
                                     behind=cfg.band_back + cfg.behind_front if behind else None)
    face_index, depth, bary = (a[0] for a in first)
    covered = face_index >= 0
    rgb = bg.expand(H, W, 3).clone()
    alpha = torch.zeros(H, W, device=dev)
    ray_pix, src_pix = march_pixels(camera, covered, depth, cfg.margin)
    if ray_pix.numel() == 0:
        return Rendered(rgb, alpha, covered, 0, torch.zeros(H, W, device=dev))
    attr = surface_attributes(faces, vertex_attributes, face_index, bary, src_pix)
    z_surf = depth.reshape(-1)[src_pix]
    band = (cfg.band_front, cfg.band_back, cfg.samples)
    march = lambda sel, z0, a0, band: _march(camera, K, R, t, ray_pix[sel], z0[sel], a0[sel], band,  # noqa: E731
                                             query, bg, jitter, generator)
    chunk = ray_pix.numel() if torch.is_grad_enabled() else cfg.chunk_rays
    colours, alphas, depths = (torch.cat(v) for v in zip(*(
        march(slice(s, s + chunk), z_surf, attr, band) for s in range(0, ray_pix.numel(), chunk))))
    if behind:
        face2, depth2, bary2 = (a[0] for a in second)
        z_next = depth2.reshape(-1)[src_pix]
        two = torch.isfinite(z_next).nonzero()[:, 0]
        if two.numel():
            attr2 = surface_attributes(faces, vertex_attributes, face2, bary2, src_pix)
            band2 = (cfg.behind_front, cfg.band_back, cfg.behind_samples)
            c2, a2, d2 = (torch.cat(v) for v in zip(*(
                march(two[s:s + chunk], z_next, attr2, band2) for s in range(0, two.numel(), chunk))))
            # the second band lies wholly behind the first: "over" compositing
            c1, a1, d1 = colours[two], alphas[two], depths[two]
            a = a1 + (1.0 - a1) * a2
            colours = colours.index_put((two,), c1 + (1.0 - a1)[:, None] * (c2 - bg))
            alphas = alphas.index_put((two,), a)
            depths = depths.index_put((two,), (a1 * d1 + (1.0 - a1) * a2 * d2) / a.clamp(min=1e-6))
    rgb = rgb.reshape(-1, 3).index_put((ray_pix,), colours).reshape(H, W, 3)
    alpha = alpha.reshape(-1).index_put((ray_pix,), alphas).reshape(H, W)
    depth = torch.zeros(H * W, device=dev).index_put((ray_pix,), depths).reshape(H, W)
    return Rendered(rgb, alpha, covered, int(ray_pix.numel()), depth)


def march_pixels(camera: PinholeCamera, covered: torch.Tensor, depth: torch.Tensor, margin: float):
    """Flat indices of the pixels to march (the silhouette `covered` grown by `margin` metres)
    and, for each, the covered pixel whose surface depth and attributes it borrows. Stays on
    the device: one read-back (the silhouette's box and median depth, which size the search)
    before the pixels themselves are counted."""
    rows, cols = covered.any(1), covered.any(0)
    H, W = covered.shape
    z_med = torch.where(covered, depth, torch.full_like(depth, float("nan"))).nanmedian()
    stats = torch.stack([rows.sum(), rows.int().argmax(), H - rows.flip(0).int().argmax(),
                         cols.int().argmax(), W - cols.flip(0).int().argmax()]).double()
    n_rows, y0, y1, x0, x1, z = torch.cat([stats, z_med.double()[None]]).tolist()
    if n_rows == 0:
        empty = torch.zeros(0, dtype=torch.long, device=covered.device)
        return empty, empty
    grow = math.ceil(margin * float(camera.K[0, 0]) / max(z, 1e-3))
    return near_silhouette(covered, grow, (int(y0), int(y1), int(x0), int(x1)))


def surface_attributes(faces: torch.Tensor, vertex_attributes: torch.Tensor, face_index: torch.Tensor,
                       bary: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """The attributes (n, C) interpolated at the surface seen at pixels `pix` (0 where none)."""
    f = face_index.reshape(-1)[pix]
    w = (bary.reshape(-1, 3)[pix, :, None] * vertex_attributes[faces[f.clamp(min=0)]]).sum(1)
    return w * (f >= 0)[:, None]


def _march(camera, K, R, t, ray_pix, z_surf, attr, band, query: Query, bg, jitter, generator):
    """Volume-render rays `ray_pix` over (front, back, samples) = `band` around the depths
    z_surf: (rgb over bg, alpha, depth)."""
    dev = z_surf.device
    W = camera.width
    front, back, S = band
    n = ray_pix.numel()
    u = (ray_pix % W).float() + 0.5
    v = torch.div(ray_pix, W, rounding_mode="floor").float() + 0.5
    # K^-1 (u, v, 1) by back substitution (K is upper triangular): no solver, no host sync
    y = (v - K[1, 2]) / K[1, 1]
    d_cam = torch.stack([(u - K[0, 1] * y - K[0, 2]) / K[0, 0], y, torch.ones_like(u)], 1)  # (n, 3), z = 1
    steps = torch.linspace(-front, back, S + 1, device=dev)
    lo, width = steps[:-1], (front + back) / S
    if jitter:
        # drawn on the CPU generator (saved in checkpoints) whatever the device
        frac = torch.rand(n, S, generator=generator).to(dev)
    else:
        frac = torch.full((n, S), 0.5, device=dev)
    z = (z_surf[:, None] + lo[None] + frac * width).clamp(min=1e-3)     # (n, S) camera depth
    x_cam = d_cam[:, None, :] * z[..., None]
    x = ((x_cam - t) @ R).reshape(-1, 3)                                   # world points
    density, colour = query(x, attr, z - z_surf[:, None])
    density, colour = density.reshape(n, S), colour.reshape(n, S, 3)
    delta = width * d_cam.norm(dim=-1, keepdim=True)                      # metres per sample
    a = 1.0 - torch.exp(-density * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(a[:, :1]), 1.0 - a[:, :-1] + 1e-10], 1), 1)
    weight = a * trans
    acc = weight.sum(1)
    rgb = (weight[..., None] * colour).sum(1) + (1.0 - acc)[:, None] * bg
    # expected depth of what is seen (never a loss: kept out of the autograd graph)
    depth = (weight.detach() * z).sum(1) / acc.detach().clamp(min=1e-6)
    return rgb, acc, depth
