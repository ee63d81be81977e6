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


def _contour_slots(area: torch.Tensor, ok: torch.Tensor, faces: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B*F, 3) bool: which triangle edges can lie on the silhouette's outline. For a mesh,
    a point on an edge whose two faces face the same way is covered from both sides, so the
    outline is made only of edges that are open (one face) or where the surface turns away
    (the faces' projected areas differ in sign). Skipped triangles count as missing, so
    their neighbours' edges become open."""
    inverse, counts, num_edges = _edge_slots(faces)
    F = faces.shape[0]
    facing = (torch.sign(area.detach()) * ok).reshape(batch_size, F, 1).expand(-1, -1, 3)
    ids = (inverse[None] + num_edges * torch.arange(batch_size, device=faces.device)[:, None, None]).reshape(-1)
    lo = torch.full((batch_size * num_edges,), 2.0, device=area.device, dtype=area.dtype)
    hi = torch.full_like(lo, -2.0)
    lo = lo.scatter_reduce(0, ids, facing.reshape(-1), reduce="amin")
    hi = hi.scatter_reduce(0, ids, facing.reshape(-1), reduce="amax")
    contour = (lo != hi) | (counts.repeat(batch_size) == 1)
    return contour[ids].reshape(batch_size * F, 3) & ok[:, None]


def _pair_chunks(tri: torch.Tensor, ok: torch.Tensor, margin, height: int, width: int):
    """Yield (triangle ids, pixel x, pixel y) for pixel centres within `margin` pixels (a float
    or one per triangle) of each triangle's bounding box, in chunks of about PAIR_BUDGET pairs.
    A triangle larger than the budget makes a chunk of its own (at most the whole image)."""
    # Plain detached tensors, not torch.no_grad(): a generator would keep grad mode off
    # while the caller computes between yields.
    tri = tri.detach()
    margin = torch.as_tensor(margin, dtype=tri.dtype, device=tri.device)
    margin = margin[:, None] if margin.ndim else margin
    lo = tri.min(1).values - margin - 0.5
    hi = tri.max(1).values + margin - 0.5
    # clamp before converting: a vertex near the camera plane projects far outside
    x0 = lo[:, 0].clamp(-1, width).ceil().clamp(min=0)
    y0 = lo[:, 1].clamp(-1, height).ceil().clamp(min=0)
    x1 = hi[:, 0].clamp(-1, width).floor().clamp(max=width - 1)
    y1 = hi[:, 1].clamp(-1, height).floor().clamp(max=height - 1)
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


def _covered_pairs(tri, area, ok, height: int, width: int):
    """Yield (triangle ids, pixel x, pixel y, screen barycentrics (N, 3)) for every pixel
    centre inside a triangle (edges included, either winding)."""
    for tid, px, py in _pair_chunks(tri, ok, 0.0, height, width):
        p = torch.stack([px, py], -1).to(tri.dtype) + 0.5
        a, b, c = tri[tid, 0], tri[tid, 1], tri[tid, 2]
        l0 = _cross(c - b, p - b) / area[tid]
        l1 = _cross(a - c, p - c) / area[tid]
        l2 = 1.0 - l0 - l1
        inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
        yield tid[inside], px[inside], py[inside], torch.stack([l0, l1, l2], -1)[inside]


_FAR = 1e6  # pixels: "no outline within reach"; finite so that gradients stay finite


def soft_silhouette(vertices: torch.Tensor, faces: torch.Tensor, K, R, t, height: int, width: int,
                    sigma: float = 1.0, margin: float | None = None) -> torch.Tensor:
    """Differentiable silhouette (B, H, W) in [0, 1]: alpha = sigmoid(D / sigma), D the signed
    distance (pixels) from the pixel centre to the silhouette's outline, positive inside.
    Farther than `margin` (3 sigma) from the outline alpha may be rounded to 0 or 1.

    Why not SoftRas's 1 - prod(1 - sigmoid(d_triangle)): a body mesh has dozens of sub-pixel
    triangles near every pixel, so the product dilates the outline and leaves interiors near
    0.75. A signed distance to the outline is symmetric, alpha(D) + alpha(-D) = 1, so alpha
    > 0.5 is exactly the hard coverage, fitting it to a mask drawn the same way (sigmoid of
    the mask's signed distance) has the truth as its minimum, and it does not depend on how
    finely the mesh is tessellated.

    D: outside, minus the distance to the nearest triangle, which is always a triangle with
    an outline ("contour") edge; inside, the distance to the nearest contour edge seen from
    the side of its triangle, counted only for pixels near an uncovered pixel, so that
    occlusion contours inside the silhouette (an arm in front of the torso) stay at 1. Only
    contour triangles (a few thousand of a body's 27k) need the margin, which keeps the
    number of (triangle, pixel) pairs small."""
    margin = 3.0 * sigma if margin is None else float(margin)
    tri, _, area, batch, _, ok = _triangles(vertices, faces, K, R, t)
    B = vertices.shape[0]
    n = B * height * width
    dev = vertices.device
    contour = _contour_slots(area, ok, faces, B)
    with torch.no_grad():
        covered = torch.zeros(n, device=dev, dtype=torch.bool)
        for tid, px, py, _ in _covered_pairs(tri.detach(), area.detach(), ok, height, width):
            covered[(batch[tid] * height + py) * width + px] = True
        # inside pixels that may lie within `margin` of the outline
        r = int(math.ceil(margin)) + 1
        empty = (~covered).reshape(B, 1, height, width).to(vertices.dtype)
        near = torch.nn.functional.max_pool2d(empty, 2 * r + 1, stride=1, padding=r).reshape(n) > 0
        wanted = ~covered | near
    dist = torch.full((n,), _FAR, device=dev, dtype=vertices.dtype)
    # keep the result in the autograd graph even when no triangle is visible (zero gradient,
    # rather than an error in the caller's backward())
    dist = dist + 0.0 * vertices.sum()
    has_contour = contour.any(1)
    for tid, px, py in _pair_chunks(tri, has_contour, margin, height, width):
        key = (batch[tid] * height + py) * width + px
        keep = wanted[key]
        tid, px, py, key = tid[keep], px[keep], py[keep], key[keep]
        inside_px = covered[key]
        p = torch.stack([px, py], -1).to(tri.dtype) + 0.5
        a, b, c = tri[tid, 0], tri[tid, 1], tri[tid, 2]
        sign = torch.sign(area[tid])
        best = torch.full_like(sign, _FAR ** 2)
        for k, (s, e) in enumerate(((a, b), (b, c), (c, a))):
            edge = e - s
            rel = p - s
            on_triangle_side = sign * _cross(edge, rel) >= 0
            along = ((rel * edge).sum(-1) / (edge * edge).sum(-1).clamp(min=1e-12)).clamp(0, 1)
            d2 = ((rel - along[:, None] * edge) ** 2).sum(-1)
            use = contour[tid, k] & (on_triangle_side | ~inside_px)
            best = torch.where(use, torch.minimum(best, d2), best)
        # sqrt(x + eps): finite gradients when the pixel centre lies on the edge
        dist = dist.scatter_reduce(0, key, torch.sqrt(best + 1e-12), reduce="amin")
    signed = torch.where(covered, torch.where(near, dist, torch.full_like(dist, _FAR)), -dist)
    return torch.sigmoid(signed / sigma).reshape(B, height, width)


def _fragments(vertices, faces, K, R, t, height: int, width: int):
    """Every (pixel, triangle) fragment: flat pixel key, camera depth, face id, perspective-
    correct barycentrics, and whether the triangle faces the camera (lists, one entry per
    chunk of pairs)."""
    tri, depth, area, batch, face, ok = _triangles(vertices, faces, K, R, t)
    hits = []
    for tid, px, py, lam in _covered_pairs(tri, area, ok, height, width):
        w = lam / depth[tid]          # 1/z is linear in screen space
        inv = w.sum(-1)
        key = (batch[tid] * height + py) * width + px
        # body meshes wind counter-clockwise seen from outside, which is clockwise on our
        # y-down image: a front face has negative screen area
        hits.append((key, 1.0 / inv, face[tid], w / inv[:, None], area[tid] < 0))
    return hits


def _resolve(hits, n: int, dev, dt, eligible=None):
    """The nearest fragment per pixel among `eligible` ones (a function of a hit, or all):
    face_index (n,) (-1: none), depth (n,) (inf: none), barycentrics (n, 3)."""
    zbuf = torch.full((n,), math.inf, device=dev, dtype=dt)
    keep = []
    for hit in hits:
        use = None if eligible is None else eligible(hit)
        key, z = (hit[0], hit[1]) if use is None else (hit[0][use], hit[1][use])
        zbuf.scatter_reduce_(0, key, z, reduce="amin")
        keep.append(use)
    face_index = torch.full((n,), -1, device=dev, dtype=torch.long)
    bary_img = torch.zeros(n, 3, device=dev, dtype=dt)
    for (key, z, fid, bary, _), use in zip(hits, keep):
        if use is not None:
            key, z, fid, bary = key[use], z[use], fid[use], bary[use]
        win = z <= zbuf[key]
        face_index[key[win]] = fid[win]
        bary_img[key[win]] = bary[win]
    return face_index, zbuf, bary_img


def rasterize(vertices: torch.Tensor, faces: torch.Tensor, K, R, t, height: int, width: int):
    """Hard, z-buffered rasterisation (not differentiable). Returns face_index (B, H, W) long
    (-1 = background), depth (B, H, W) (inf on background) and perspective-correct
    barycentrics (B, H, W, 3) of the visible triangle at each pixel centre."""
    return rasterize_layers(vertices, faces, K, R, t, height, width)[0]


def rasterize_layers(vertices: torch.Tensor, faces: torch.Tensor, K, R, t, height: int, width: int,
                     behind: float | None = None):
    """rasterize's (face_index, depth, barycentrics), and with `behind` (metres) the same for a
    second layer: the nearest surface facing the camera at least `behind` behind the first
    (the torso behind an arm; a limb's own back faces do not count); else None."""
    with torch.no_grad():
        B = vertices.shape[0]
        n = B * height * width
        dev, dt = vertices.device, vertices.dtype
        hits = _fragments(vertices, faces, K, R, t, height, width)
        first = _resolve(hits, n, dev, dt)
        second = None
        if behind is not None:
            z1 = first[1]
            second = _resolve(hits, n, dev, dt, lambda h: h[4] & (h[1] >= z1[h[0]] + behind))
        shape = lambda layer: (layer[0].reshape(B, height, width), layer[1].reshape(B, height, width),  # noqa: E731
                               layer[2].reshape(B, height, width, 3))
        return shape(first), (shape(second) if second is not None else None)


def hard_silhouette(vertices, faces, K, R, t, height: int, width: int) -> torch.Tensor:
    """(B, H, W) bool: pixel centres covered by the mesh."""
    return rasterize(vertices, faces, K, R, t, height, width)[0] >= 0


def visible_vertices(vertices: torch.Tensor, faces: torch.Tensor, K, R, t, height: int, width: int,
                     tol: float = 0.03) -> torch.Tensor:
    """(B, V) bool: vertices in front of the camera that no other surface hides: their depth is
    within `tol` metres of the z-buffer at their pixel (a vertex on no covered pixel, at the
    silhouette's edge or outside the image, counts as seen)."""
    uv, z = project(vertices, K, R, t)
    depth = rasterize(vertices, faces, K, R, t, height, width)[1]
    col, row = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height) & (z > 0)
    batch = torch.arange(vertices.shape[0], device=z.device)[:, None].expand_as(col)
    zbuf = torch.full_like(z, math.inf)
    zbuf[inside] = depth[batch[inside], row[inside], col[inside]]
    return (z > 0) & (z <= zbuf + tol)


def part_boxes(uv: torch.Tensor, vertex_parts: torch.Tensor, num_parts: int, height: int, width: int,
               visible_mask: torch.Tensor | None = None, min_size: float = 8.0):
    """Each part's box (x0, y0, x1, y1) in pixels, from its projected body vertices (as ELICIT
    crops parts), clipped to the image: (B, num_parts, 4), and whether each box is usable
    (the part has a vertex in the image and its clipped box is at least min_size on both
    sides). visible_mask (B, V) bool, optional: only these vertices count (e.g. vertices in
    front of the camera, or not occluded)."""
    B = uv.shape[0]
    idx = vertex_parts.long().to(uv.device)[None, :].expand(B, -1)
    keep = torch.ones(uv.shape[:2], dtype=torch.bool, device=uv.device) if visible_mask is None else visible_mask
    keep = keep & torch.isfinite(uv).all(-1)
    big = torch.tensor(math.inf, device=uv.device, dtype=uv.dtype)
    lo = torch.where(keep[..., None], uv, big)
    hi = torch.where(keep[..., None], uv, -big)
    init = lambda v: torch.full((B, num_parts), v, device=uv.device, dtype=uv.dtype)  # noqa: E731
    x0 = init(math.inf).scatter_reduce(1, idx, lo[..., 0], reduce="amin")
    y0 = init(math.inf).scatter_reduce(1, idx, lo[..., 1], reduce="amin")
    x1 = init(-math.inf).scatter_reduce(1, idx, hi[..., 0], reduce="amax")
    y1 = init(-math.inf).scatter_reduce(1, idx, hi[..., 1], reduce="amax")
    boxes = torch.stack([x0.clamp(0, width), y0.clamp(0, height), x1.clamp(0, width), y1.clamp(0, height)], -1)
    boxes = torch.where(torch.isfinite(x0)[..., None], boxes, torch.zeros_like(boxes))  # part absent
    inside = (lo[..., 0] >= 0) & (lo[..., 0] <= width) & (lo[..., 1] >= 0) & (lo[..., 1] <= height)
    any_inside = torch.zeros(B, num_parts, dtype=torch.long, device=uv.device).scatter_add(1, idx, inside.long()) > 0
    valid = ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)
    return boxes, valid & any_inside
