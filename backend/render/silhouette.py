"""Which pixels the volume renderer marches: those within a radius of the posed body's
silhouette, each paired with its nearest covered pixel (whose surface depth and skinning
weights the ray borrows).

Computed on the tensors' own device, so a GPU frame makes no round trip through the host for
it (scipy's distance transform did, every frame): an exact Euclidean nearest-pixel search
limited to the radius, in two separable passes (nearest covered pixel along each row, then the
best row within the radius for each column), over the silhouette's bounding box only.
"""
from __future__ import annotations

import torch


def _windows(x: torch.Tensor, radius: int, dim: int, fill) -> torch.Tensor:
    """(h, w, 2r+1): for every pixel, the values `radius` pixels either side of it along
    `dim` (0: rows above/below, 1: columns left/right), `fill` beyond the edge."""
    pad = (radius, radius) if dim == 1 else (0, 0, radius, radius)
    padded = torch.nn.functional.pad(x[None], pad, value=fill)[0]
    return padded.unfold(dim, 2 * radius + 1, 1)


def near_silhouette(covered: torch.Tensor, radius: int, box: tuple[int, int, int, int] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """covered (H, W) bool -> (flat indices of the pixels within `radius` px (Euclidean, as
    scipy's distance_transform_edt counts) of a covered pixel, and for each the flat index of
    its nearest covered pixel). box: (y0, y1, x0, x1) bounding the covered pixels (end
    exclusive), if the caller has it; else found here."""
    H, W = covered.shape
    dev = covered.device
    if box is None:
        ys, xs = covered.any(1).nonzero()[:, 0], covered.any(0).nonzero()[:, 0]
        if ys.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=dev)
            return empty, empty
        box = (int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1)
    r = max(0, int(radius))
    y0, y1 = max(0, box[0] - r), min(H, box[1] + r)
    x0, x1 = max(0, box[2] - r), min(W, box[3] + r)
    crop = covered[y0:y1, x0:x1]
    h, w = crop.shape
    offsets = torch.arange(-r, r + 1, device=dev)
    far = (2 * r + 1) ** 2 + 1                       # farther than anything inside the radius
    # pass 1: the nearest covered pixel in each pixel's own row
    row_dist = torch.where(_windows(crop, r, 1, False), offsets.abs(), far)   # (h, w, 2r+1)
    dx, k = row_dist.min(-1)
    src_x = torch.arange(w, device=dev) + offsets[k]                          # (h, w)
    # pass 2: over the rows within the radius, the least dy^2 + dx^2
    total = _windows(dx.where(dx < far, far) ** 2, r, 0, far ** 2) + offsets ** 2
    best, j = total.min(-1)
    src_y = torch.arange(h, device=dev)[:, None] + offsets[j]
    src_x = _windows(src_x, r, 0, 0).gather(-1, j[..., None])[..., 0]
    march = best <= r * r
    ly, lx = march.nonzero(as_tuple=True)
    ray = (ly + y0) * W + (lx + x0)
    src = (src_y[ly, lx] + y0) * W + (src_x[ly, lx] + x0)
    return ray, src
