"""A small differentiable triangle rasteriser in pure torch (CPU and CUDA).

No maintained rasteriser installs here and runs on the CPU with our torch (pytorch3d,
nvdiffrast and kaolin need their own CUDA builds), so we keep this one. Body meshes have
~27k triangles that each cover a pixel or two, so instead of testing every pixel against
every triangle we enumerate (triangle, pixel) pairs inside each projected triangle's
bounding box (grown by a margin for the soft edge) and reduce per pixel with scatter.

Camera convention (shared/camera.py): x_cam = R X + t, +Z forward, +Y down; pixel (row i,
col j) is sampled at its centre (j + 0.5, i + 0.5).
"""
from __future__ import annotations

import math

import torch

from shared.camera import PinholeCamera

NEAR = 1e-3                # metres: triangles with a vertex nearer than this are skipped
PAIR_BUDGET = 4_000_000    # (triangle, pixel) pairs evaluated at once; bounds memory


def camera_tensors(cam: PinholeCamera, device=None, dtype=torch.float32):
    as_t = lambda a: torch.as_tensor(a, device=device, dtype=dtype)  # noqa: E731
    return as_t(cam.K), as_t(cam.R), as_t(cam.t)


def project(vertices: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor):
    """(B, V, 3) world points -> pixel coordinates (B, V, 2) and camera depth (B, V).
    K, R may be (3, 3) or (B, 3, 3); t (3,) or (B, 3)."""
    R = R if R.ndim == 3 else R[None]
    t = t if t.ndim == 2 else t[None]
    K = K if K.ndim == 3 else K[None]
    x = torch.einsum("bij,bvj->bvi", R, vertices) + t[:, None]
    z = x[..., 2]
    safe_z = torch.where(z.abs() < 1e-9, torch.full_like(z, 1e-9), z)
    u = (K[:, None, 0, 0] * x[..., 0] + K[:, None, 0, 1] * x[..., 1]) / safe_z + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * x[..., 1] / safe_z + K[:, None, 1, 2]
    return torch.stack([u, v], -1), z


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _triangles(vertices, faces, K, R, t):
    """Projected triangles flattened over the batch: tri (N, 3, 2), depth (N, 3), batch id (N,),
    face id (N,), and which are drawable (in front of the camera, non-degenerate)."""
    uv, z = project(vertices, K, R, t)
    B, F = vertices.shape[0], faces.shape[0]
    tri = uv[:, faces].reshape(B * F, 3, 2)
    depth = z[:, faces].reshape(B * F, 3)
    area = _cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    ok = (depth > NEAR).all(-1) & (area.abs() > 1e-12) & torch.isfinite(tri).all(-1).all(-1)
    batch = torch.arange(B, device=faces.device).repeat_interleave(F)
    face = torch.arange(F, device=faces.device).repeat(B)
    return tri, depth, area, batch, face, ok


_EDGE_CACHE: dict = {}


def _edge_slots(faces: torch.Tensor):
    """For each face's 3 edges (a->b, b->c, c->a): the id of the undirected mesh edge, and
    how many faces share each edge. Cached per faces tensor (a body's topology is fixed)."""
    key = (faces.data_ptr(), tuple(faces.shape), faces.device)
    if key not in _EDGE_CACHE:
        slots = torch.stack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], 1).reshape(-1, 2)
        edges, inverse, counts = torch.unique(slots.sort(-1).values, dim=0, return_inverse=True, return_counts=True)
        _EDGE_CACHE.clear()
        _EDGE_CACHE[key] = (inverse.reshape(-1, 3), counts, edges.shape[0])
    return _EDGE_CACHE[key]


def _contour_slots(area: torch.Tensor, faces: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B*F, 3) bool: which triangle edges lie on the view's contour: the edge is open (one
    face) or its faces face opposite ways (their projected areas differ in sign). Only these
    edges can be on the silhouette's outline."""
    inverse, counts, num_edges = _edge_slots(faces)
    F = faces.shape[0]
    facing = torch.sign(area.detach()).reshape(batch_size, F, 1).expand(-1, -1, 3)
    ids = (inverse[None] + num_edges * torch.arange(batch_size, device=faces.device)[:, None, None]).reshape(-1)
    lo = torch.full((batch_size * num_edges,), 2.0, device=area.device, dtype=area.dtype)
    hi = torch.full_like(lo, -2.0)
    lo = lo.scatter_reduce(0, ids, facing.reshape(-1), reduce="amin")
    hi = hi.scatter_reduce(0, ids, facing.reshape(-1), reduce="amax")
    contour = (lo != hi) | (counts.repeat(batch_size) == 1)
    return contour[ids].reshape(batch_size * F, 3)


def _pair_chunks(tri: torch.Tensor, ok: torch.Tensor, margin: float, height: int, width: int):
    """Yield (triangle ids, pixel x, pixel y) for pixel centres within `margin` pixels of each
    triangle's bounding box, in chunks of about PAIR_BUDGET pairs."""
    # Plain detached tensors, not torch.no_grad(): a generator would keep grad mode off
    # while the caller computes between yields.
    tri = tri.detach()
    lo = tri.min(1).values - margin - 0.5
    hi = tri.max(1).values + margin - 0.5
    x0 = lo[:, 0].ceil().clamp(min=0)
    y0 = lo[:, 1].ceil().clamp(min=0)
    x1 = hi[:, 0].floor().clamp(max=width - 1)
    y1 = hi[:, 1].floor().clamp(max=height - 1)
    nx = (x1 - x0 + 1).clamp(min=0)
    ny = (y1 - y0 + 1).clamp(min=0)
    count = torch.where(ok, nx * ny, torch.zeros_like(nx)).long()
    ids = torch.nonzero(count).squeeze(1)
    if ids.numel() == 0:
        return
    count, x0, y0, nx = count[ids], x0[ids].long(), y0[ids].long(), nx[ids].long()
    ends = count.cumsum(0)
    start = 0
    while start < ids.numel():
        # take triangles until the chunk holds PAIR_BUDGET pairs (at least one triangle)
        base = int(ends[start - 1]) if start else 0
        stop = int(torch.searchsorted(ends, torch.tensor(base + PAIR_BUDGET, device=ends.device), right=True))
        stop = max(stop, start + 1)
        c = count[start:stop]
        local = torch.arange(int(c.sum()), device=tri.device)
        owner = torch.repeat_interleave(torch.arange(stop - start, device=tri.device), c)
        offset = local - (c.cumsum(0) - c)[owner]
        sel = owner + start
        yield ids[sel], x0[sel] + offset % nx[sel], y0[sel] + offset // nx[sel]
        start = stop


def soft_silhouette(vertices: torch.Tensor, faces: torch.Tensor, K, R, t, height: int, width: int,
                    sigma: float = 1.0, margin: float | None = None) -> torch.Tensor:
    """Differentiable silhouette (B, H, W) in [0, 1]: alpha = sigmoid(D / sigma), D the signed
    distance (pixels) from the pixel centre to the silhouette's outline.

    Per (triangle, pixel) pair: outside the triangle, D = -distance to the triangle; inside,
    D = +distance to the triangle's own contour edges (edges where the surface turns away from
    the camera, or open edges; +inf when it has none, so interiors are exactly 1). The pixel
    takes the largest value. A body mesh has dozens of sub-pixel triangles near every
    silhouette pixel: SoftRas's 1 - prod(1 - p) would dilate the outline and leave interiors
    near 0.75. Here the profile is symmetric, alpha(D) + alpha(-D) = 1, so fitting a hard mask
    is unbiased (an asymmetric profile systematically shrinks or grows the fitted body), and
    alpha > 0.5 is exactly the hard coverage of the pixel centre."""
    margin = 3.0 * sigma if margin is None else margin
    tri, _, area, batch, _, ok = _triangles(vertices, faces, K, R, t)
    B = vertices.shape[0]
    contour = _contour_slots(area, faces, B)
    alpha = torch.zeros(B * height * width, device=vertices.device, dtype=vertices.dtype)
    for tid, px, py in _pair_chunks(tri, ok, margin, height, width):
        p = torch.stack([px, py], -1).to(tri.dtype) + 0.5
        a, b, c = tri[tid, 0], tri[tid, 1], tri[tid, 2]
        sign = torch.sign(area[tid])
        inside = torch.ones_like(sign, dtype=torch.bool)
        far = torch.full_like(sign, 1e12)
        dist2, contour2 = far, far
        for k, (s, e) in enumerate(((a, b), (b, c), (c, a))):
            edge = e - s
            rel = p - s
            inside = inside & (sign * _cross(edge, rel) >= 0)
            along = ((rel * edge).sum(-1) / (edge * edge).sum(-1).clamp(min=1e-12)).clamp(0, 1)
            d2 = ((rel - along[:, None] * edge) ** 2).sum(-1)
            dist2 = torch.minimum(dist2, d2)
            contour2 = torch.where(contour[tid, k], torch.minimum(contour2, d2), contour2)
        # sqrt(x + eps): finite gradients on the edge itself
        signed = torch.where(inside, torch.sqrt(contour2 + 1e-12), -torch.sqrt(dist2 + 1e-12))
        key = (batch[tid] * height + py) * width + px
        alpha = alpha.scatter_reduce(0, key, torch.sigmoid(signed / sigma), reduce="amax")
    return alpha.reshape(B, height, width)


def rasterize(vertices: torch.Tensor, faces: torch.Tensor, K, R, t, height: int, width: int):
    """Hard, z-buffered rasterisation (not differentiable). Returns face_index (B, H, W) long
    (-1 = background), depth (B, H, W) (inf on background) and perspective-correct
    barycentrics (B, H, W, 3) of the visible triangle at each pixel centre."""
    with torch.no_grad():
        tri, depth, area, batch, face, ok = _triangles(vertices, faces, K, R, t)
        B = vertices.shape[0]
        n = B * height * width
        dev, dt = vertices.device, vertices.dtype
        zbuf = torch.full((n,), math.inf, device=dev, dtype=dt)
        hits = []
        for tid, px, py in _pair_chunks(tri, ok, 0.0, height, width):
            p = torch.stack([px, py], -1).to(dt) + 0.5
            a, b, c = tri[tid, 0], tri[tid, 1], tri[tid, 2]
            # screen-space barycentrics from the edge functions (either winding)
            l0 = _cross(c - b, p - b) / area[tid]
            l1 = _cross(a - c, p - c) / area[tid]
            l2 = 1.0 - l0 - l1
            inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
            tid, px, py, l0, l1, l2 = tid[inside], px[inside], py[inside], l0[inside], l1[inside], l2[inside]
            inv = l0 / depth[tid, 0] + l1 / depth[tid, 1] + l2 / depth[tid, 2]  # 1/z is linear on screen
            z = 1.0 / inv
            key = (batch[tid] * height + py) * width + px
            zbuf.scatter_reduce_(0, key, z, reduce="amin")
            bary = torch.stack([l0 / depth[tid, 0], l1 / depth[tid, 1], l2 / depth[tid, 2]], -1) / inv[:, None]
            hits.append((key, z, face[tid], bary))
        face_index = torch.full((n,), -1, device=dev, dtype=torch.long)
        bary_img = torch.zeros(n, 3, device=dev, dtype=dt)
        for key, z, fid, bary in hits:
            win = z <= zbuf[key]
            face_index[key[win]] = fid[win]
            bary_img[key[win]] = bary[win]
        return (face_index.reshape(B, height, width), zbuf.reshape(B, height, width),
                bary_img.reshape(B, height, width, 3))


def hard_silhouette(vertices, faces, K, R, t, height: int, width: int) -> torch.Tensor:
    """(B, H, W) bool: pixel centres covered by the mesh."""
    return rasterize(vertices, faces, K, R, t, height, width)[0] >= 0


def part_masks(face_index: torch.Tensor, face_parts: torch.Tensor, num_parts: int) -> torch.Tensor:
    """Visible region of each part: (B, num_parts, H, W) bool from a face-index image."""
    covered = face_index >= 0
    parts = face_parts[face_index.clamp(min=0)]
    onehot = torch.arange(num_parts, device=face_index.device)[None, :, None, None] == parts[:, None]
    return onehot & covered[:, None]


def part_boxes(uv: torch.Tensor, vertex_parts: torch.Tensor, num_parts: int, height: int, width: int,
               min_size: float = 8.0):
    """Each part's box (x0, y0, x1, y1) in pixels, from its projected body vertices (as ELICIT
    crops parts), clipped to the image: (B, num_parts, 4), and whether each box is usable
    (the part is in the image and its clipped box is at least min_size on both sides)."""
    B = uv.shape[0]
    idx = vertex_parts.long()[None, :].expand(B, -1)
    init = lambda v: torch.full((B, num_parts), v, device=uv.device, dtype=uv.dtype)  # noqa: E731
    x0 = init(math.inf).scatter_reduce(1, idx, uv[..., 0], reduce="amin")
    y0 = init(math.inf).scatter_reduce(1, idx, uv[..., 1], reduce="amin")
    x1 = init(-math.inf).scatter_reduce(1, idx, uv[..., 0], reduce="amax")
    y1 = init(-math.inf).scatter_reduce(1, idx, uv[..., 1], reduce="amax")
    boxes = torch.stack([x0.clamp(0, width), y0.clamp(0, height), x1.clamp(0, width), y1.clamp(0, height)], -1)
    valid = ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)
    valid &= torch.isfinite(x0)
    return boxes, valid
